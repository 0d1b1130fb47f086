//! Self-supervised CRATE against the official DINO and SimDINO code
//! (tests/golden/ssl.safetensors, or the file named by `WHITEBOX_GOLDEN_SSL`): SimDINO's
//! `MCRLoss` and DINO's `DINOLoss` (losses, terms, centre, gradients), both heads (outputs and
//! every parameter gradient), DINO's k-NN classifier and `cosine_scheduler`. Sizes and settings
//! come from the file's `cases` metadata.

use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use whitebox::model::ssl::HeadConfig;
use whitebox::train::schedule::cosine_scheduler;
use whitebox::train::ssl::{dino_loss, knn_classifier, mcr_loss, DinoSettings, McrSettings};
use whitebox::weights::{apply_state_dict, collect_gradients, read_safetensors_all};
use whitebox::CpuAutodiff as B;

struct Golden {
    tensors: HashMap<String, TensorData>,
    cases: Value,
}

fn golden() -> Golden {
    let path = std::env::var_os("WHITEBOX_GOLDEN_SSL").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ssl.safetensors"),
        PathBuf::from,
    );
    let (tensors, meta) = read_safetensors_all(&path).expect("golden file");
    let cases = serde_json::from_str(&meta["cases"]).expect("`cases` metadata is JSON");
    Golden { tensors, cases }
}

impl Golden {
    fn get(&self, k: &str) -> TensorData {
        self.tensors
            .get(k)
            .unwrap_or_else(|| panic!("golden tensor {k} missing"))
            .clone()
    }
    fn f32(&self, k: &str) -> Vec<f32> {
        self.get(k).convert::<f32>().to_vec().unwrap()
    }
    fn scalar(&self, k: &str) -> f64 {
        self.f32(k)[0] as f64
    }
    fn usize(&self, case: &str, k: &str) -> usize {
        self.cases[case][k]
            .as_u64()
            .unwrap_or_else(|| panic!("cases.{case}.{k}")) as usize
    }
    fn float(&self, case: &str, k: &str) -> f64 {
        self.cases[case][k]
            .as_f64()
            .unwrap_or_else(|| panic!("cases.{case}.{k}"))
    }
    fn tensor<const D: usize>(&self, k: &str) -> Tensor<B, D> {
        Tensor::from_data(self.get(k).convert::<f32>(), &Default::default())
    }
    /// Every tensor under `prefix`, prefix removed.
    fn with_prefix(&self, prefix: &str) -> whitebox::weights::StateDict {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }
}

fn assert_rel(name: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-5 * want.abs().max(1e-30),
        "{name}: {got} vs {want} (relative {:e})",
        (got - want).abs() / want.abs()
    );
}

fn assert_abs(name: &str, got: &[f32], want: &[f32], tol: f32) {
    crate::common::assert_all_close(name, got, want, tol);
}

/// Gradients within `1e-4·max|g| + 1e-7`.
fn assert_grad(name: &str, got: &[f32], want: &[f32]) {
    crate::common::assert_finite(name, want);
    assert_abs(name, got, want, 1e-4 * crate::common::max_abs(want) + 1e-7);
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn simdino_mcr_loss_matches_official() {
    let g = golden();
    let s = McrSettings {
        ncrops: g.usize("simdino", "ncrops"),
        eps: g.float("simdino", "eps"),
        coeff: g.float("simdino", "coeff"),
        expa_type: g.usize("simdino", "expa_type") as u8,
        reduce_cov: g.usize("simdino", "reduce_cov") as u8,
    };
    assert_eq!(g.usize("simdino", "world_size"), 1, "world size 1 only");
    let student = g.tensor::<2>("simdino.student_feat").require_grad();
    assert_eq!(
        student.dims(),
        [
            s.ncrops * g.usize("simdino", "batch"),
            g.usize("simdino", "dim")
        ]
    );
    let teacher = g.tensor::<2>("simdino.teacher_feat");
    let out = mcr_loss(student.clone(), teacher, &s).unwrap();
    assert_rel("simdino.comp_loss", out.comp, g.scalar("simdino.comp_loss"));
    assert_rel("simdino.expa_loss", out.expa, g.scalar("simdino.expa_loss"));
    let loss = values(out.loss.clone())[0] as f64;
    assert_rel("simdino.loss", loss, g.scalar("simdino.loss"));
    let grads = out.loss.backward();
    let got = student.grad(&grads).expect("student gradient");
    assert_grad(
        "simdino.grad.student_feat",
        &got.into_data().to_vec::<f32>().unwrap(),
        &g.f32("simdino.grad.student_feat"),
    );
}

#[test]
fn dino_loss_matches_official() {
    let g = golden();
    let s = DinoSettings {
        ncrops: g.usize("dino", "ncrops"),
        warmup_teacher_temp: g.float("dino", "warmup_teacher_temp"),
        teacher_temp: g.float("dino", "teacher_temp"),
        warmup_teacher_temp_epochs: g.usize("dino", "warmup_teacher_temp_epochs"),
        nepochs: g.usize("dino", "nepochs"),
        student_temp: g.float("dino", "student_temp"),
        center_momentum: g.float("dino", "center_momentum"),
    };
    let epoch = g.usize("dino", "epoch");
    let temp = s.teacher_temp_at(epoch);
    let want_temp = g.float("dino", "teacher_temp_at_epoch");
    assert!((temp - want_temp).abs() < 1e-12, "{temp} vs {want_temp}");
    let student = g.tensor::<2>("dino.student_output").require_grad();
    assert_eq!(
        student.dims(),
        [
            s.ncrops * g.usize("dino", "batch"),
            g.usize("dino", "out_dim")
        ]
    );
    let (loss, center) = dino_loss(
        student.clone(),
        g.tensor("dino.teacher_output"),
        g.tensor("dino.center_before"),
        epoch,
        &s,
    );
    assert_rel(
        "dino.loss",
        values(loss.clone())[0] as f64,
        g.scalar("dino.loss"),
    );
    assert_abs(
        "dino.center_after",
        &values(center),
        &g.f32("dino.center_after"),
        1e-6,
    );
    let grads = loss.backward();
    assert_grad(
        "dino.grad.student_output",
        &student
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap(),
        &g.f32("dino.grad.student_output"),
    );
}

/// A head from `cases.<case>` with the golden parameters; output and every gradient of
/// `sum(output · arange(width))`.
fn check_head(case: &str) {
    let g = golden();
    let cfg = HeadConfig {
        in_dim: g.usize(case, "in_dim"),
        out_dim: g.usize(case, "out_dim"),
        hidden_dim: g.usize(case, "hidden_dim"),
        bottleneck_dim: g.usize(case, "bottleneck_dim"),
        nlayers: g.usize(case, "nlayers"),
    };
    let (head, report) = apply_state_dict(
        cfg.init::<B>(&Default::default()),
        &g.with_prefix(&format!("{case}.param.")),
        true,
    )
    .unwrap();
    assert!(report.is_clean(), "{case}: {}", report.describe());
    let input = g.tensor::<2>(&format!("{case}.input")).require_grad();
    let out = head.forward(input.clone());
    let want = g.f32(&format!("{case}.output"));
    let got = values(out.clone());
    assert_abs(&format!("{case}.output"), &got, &want, 1e-5);
    let [rows, width] = out.dims();
    let ramp = Tensor::<B, 1, Int>::arange(0..width as i64, &Default::default())
        .float()
        .reshape([1, width])
        .expand([rows, width]);
    let grads = (out * ramp).sum().backward();
    let got = collect_gradients(&head, &grads);
    let want = g.with_prefix(&format!("{case}.grad."));
    let mut want_keys: Vec<&String> = want.keys().filter(|k| *k != "input").collect();
    want_keys.sort();
    let mut got_keys: Vec<&String> = got.keys().collect();
    got_keys.sort();
    assert_eq!(
        got_keys, want_keys,
        "{case}: exactly the official parameters get gradients (weight_g is frozen)"
    );
    for k in want_keys {
        assert_grad(
            &format!("{case}.grad.{k}"),
            &got[k].to_vec::<f32>().unwrap(),
            &want[k].to_vec::<f32>().unwrap(),
        );
    }
    assert_grad(
        &format!("{case}.grad.input"),
        &input
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap(),
        &want["input"].to_vec::<f32>().unwrap(),
    );
}

#[test]
fn dino_head_matches_official() {
    check_head("dino_head");
}

#[test]
fn simdino_head_matches_official() {
    check_head("simdino_head");
}

#[test]
fn knn_classifier_matches_official() {
    let g = golden();
    let labels = |k: &str| -> Vec<usize> {
        g.get(k)
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as usize)
            .collect()
    };
    let train = g.f32("knn.train_features");
    let test = g.f32("knn.test_features");
    let d = g.get("knn.train_features").shape[1];
    let test_labels = labels("knn.test_labels");
    let r = knn_classifier(
        &train,
        &labels("knn.train_labels"),
        &test,
        &test_labels,
        d,
        g.usize("knn", "k"),
        g.float("knn", "T"),
        g.usize("knn", "num_classes"),
    )
    .unwrap();
    // the reference reports percentages of the same count
    let n = test_labels.len() as f64;
    for (name, got, want) in [
        ("top1", r.top1, g.scalar("knn.top1")),
        ("top5", r.top5, g.scalar("knn.top5")),
    ] {
        assert_eq!(
            (got * n).round() as i64,
            (want * n / 100.0).round() as i64,
            "knn.{name}: {:.4}% vs {want}%",
            100.0 * got
        );
    }
}

/// `cosine_scheduler(base, final, epochs=E, niter_per_ep=N[, warmup_epochs=W][, start_warmup_value=S])`.
fn parse_schedule(spec: &str) -> (f64, f64, usize, usize, usize, f64) {
    let inner = spec
        .strip_prefix("cosine_scheduler(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected schedule spec {spec}"));
    let mut pos = Vec::new();
    let mut kw = HashMap::new();
    for part in inner.split(',').map(str::trim) {
        match part.split_once('=') {
            Some((k, v)) => {
                kw.insert(k.trim().to_string(), v.trim().parse::<f64>().unwrap());
            }
            None => pos.push(part.parse::<f64>().unwrap()),
        }
    }
    let arg = |i: usize, name: &str, default: Option<f64>| {
        pos.get(i)
            .copied()
            .or_else(|| kw.get(name).copied())
            .or(default)
            .unwrap_or_else(|| panic!("{spec}: no {name}"))
    };
    (
        arg(0, "base_value", None),
        arg(1, "final_value", None),
        arg(2, "epochs", None) as usize,
        arg(3, "niter_per_ep", None) as usize,
        arg(4, "warmup_epochs", Some(0.0)) as usize,
        arg(5, "start_warmup_value", Some(0.0)),
    )
}

#[test]
fn cosine_scheduler_matches_official() {
    let g = golden();
    for name in ["schedule.lr", "schedule.momentum"] {
        let spec = g.cases[name].as_str().expect("schedule spec string");
        let (base, fin, epochs, niter, warm, start) = parse_schedule(spec);
        let want = g.f32(name);
        let total = epochs * niter;
        assert_eq!(want.len(), total, "{name}: length");
        let got: Vec<f32> = (0..total)
            .map(|it| cosine_scheduler(base, fin, total, warm * niter, start, it) as f32)
            .collect();
        assert_abs(name, &got, &want, 1e-6);
    }
}
