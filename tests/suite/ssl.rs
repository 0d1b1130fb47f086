//! Self-supervised CRATE behaviour: the EMA teacher step, multi-crop view statistics and
//! determinism, position embeddings at the local-crop grid, `dino train` resuming exactly (both
//! objectives), its checkpoint read by `eval`, `knn` and `probe`, and clear errors on bad flags.

use crate::common;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use common::{fails, ok, write_idx_classes};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::Path;
use whitebox::data::multicrop::{random_resized_crop, Image, MultiCrop};
use whitebox::model::ssl::HeadConfig;
use whitebox::train::ssl::ema_update;
use whitebox::weights::{collect_state_dict, read_safetensors_all};
use whitebox::CpuAutodiff as B;

const TINY: &str = r#"{"image_size": 28, "patch_size": 7, "num_classes": 10, "dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "channels": 1}"#;

fn tiny_data(dir: &Path) -> (String, String) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx_classes(&data, "train", 64, 0);
    write_idx_classes(&data, "t10k", 24, 5);
    let cfg = dir.join("tiny.json");
    std::fs::write(&cfg, TINY).unwrap();
    (data.display().to_string(), cfg.display().to_string())
}

fn head_cfg() -> HeadConfig {
    HeadConfig {
        in_dim: 6,
        out_dim: 5,
        hidden_dim: 7,
        bottleneck_dim: 4,
        nlayers: 2,
    }
}

#[test]
fn ema_moves_the_teacher_by_one_minus_m_towards_the_student() {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 1);
    let teacher = head_cfg().init::<B>(&device);
    let student = head_cfg().init::<B>(&device);
    let (t0, s0) = (collect_state_dict(&teacher), collect_state_dict(&student));
    let moved = collect_state_dict(&ema_update(teacher.clone(), &student, 0.9));
    assert_eq!(moved.len(), t0.len());
    let mut changed = 0;
    for (k, t) in &t0 {
        let (t, s, m) = (
            t.to_vec::<f32>().unwrap(),
            s0[k].to_vec::<f32>().unwrap(),
            moved[k].to_vec::<f32>().unwrap(),
        );
        for ((t, s), m) in t.iter().zip(&s).zip(&m) {
            let want = t + 0.1 * (s - t);
            assert!((m - want).abs() <= 1e-6, "{k}: {m} vs {want}");
            changed += (m != t) as usize;
        }
    }
    assert!(changed > 0, "the student differs, so the teacher moves");
    // m = 1 keeps the teacher, m = 0 copies the student
    let kept = collect_state_dict(&ema_update(teacher.clone(), &student, 1.0));
    let copied = collect_state_dict(&ema_update(teacher, &student, 0.0));
    for k in t0.keys() {
        assert_eq!(
            kept[k].to_vec::<f32>().unwrap(),
            t0[k].to_vec::<f32>().unwrap()
        );
        let (c, s) = (
            copied[k].to_vec::<f32>().unwrap(),
            s0[k].to_vec::<f32>().unwrap(),
        );
        assert!(c.iter().zip(&s).all(|(a, b)| (a - b).abs() <= 1e-7), "{k}");
    }
}

#[test]
fn random_resized_crop_respects_scale_and_ratio() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(h, w, scale) in &[
        (28usize, 28usize, (0.4, 1.0)),
        (28, 28, (0.05, 0.4)),
        (32, 32, (0.4, 1.0)),
    ] {
        let mut fractions = Vec::new();
        for _ in 0..4000 {
            let (top, left, ch, cw) = random_resized_crop(h, w, scale, &mut rng);
            assert!(top + ch <= h && left + cw <= w && ch > 0 && cw > 0);
            let f = (ch * cw) as f64 / (h * w) as f64;
            // rounding the sides to whole pixels moves the area by at most about one row and column
            let slack = (ch + cw + 1) as f64 / (h * w) as f64;
            assert!(
                f >= scale.0 - slack && f <= scale.1 + slack,
                "area fraction {f} outside {scale:?}"
            );
            let ratio = cw as f64 / ch as f64;
            assert!(
                (ratio >= 0.75 - 1.0 / ch as f64 - 0.05)
                    && (ratio <= 4.0 / 3.0 + 1.0 / ch as f64 + 0.05),
                "aspect ratio {ratio} ({cw}×{ch})"
            );
            fractions.push(f);
        }
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        let mid = (scale.0 + scale.1) / 2.0;
        assert!(
            (mean - mid).abs() < 0.06,
            "mean area fraction {mean} for scale {scale:?} (uniform draw, mid {mid})"
        );
        let spread = fractions.iter().cloned().fold(f64::MIN, f64::max)
            - fractions.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            spread > 0.6 * (scale.1 - scale.0),
            "crops cover the scale range"
        );
    }
}

#[test]
fn views_have_the_reference_sizes_and_follow_the_seed() {
    let crops = MultiCrop::for_image(28, 7, 3);
    assert_eq!((crops.global_size, crops.local_size), (28, 14));
    assert_eq!(MultiCrop::for_image(224, 16, 8).local_size, 96);
    let px: Vec<Vec<f32>> = (0..4)
        .map(|i| {
            (0..784)
                .map(|j| ((i * 37 + j * 13) % 256) as f32 / 255.0)
                .collect()
        })
        .collect();
    let images: Vec<Image> = px
        .iter()
        .map(|p| Image {
            px: p,
            c: 1,
            h: 28,
            w: 28,
        })
        .collect();
    let a = crops.views(&images, &mut StdRng::seed_from_u64(9));
    let b = crops.views(&images, &mut StdRng::seed_from_u64(9));
    let c = crops.views(&images, &mut StdRng::seed_from_u64(10));
    assert_eq!(a.0.len(), 2 * 4 * 784);
    assert_eq!(a.1.len(), 3 * 4 * 196);
    assert_eq!(a, b, "same seed, same views");
    assert_ne!(a.0, c.0, "another seed, other views");
    assert!(a.0.iter().chain(&a.1).all(|v| (0.0..=1.0).contains(v)));
    // the two global views of an image differ (independent crops)
    assert_ne!(a.0[..784], a.0[4 * 784..5 * 784]);
}

#[test]
fn position_embedding_follows_the_local_grid() {
    // the bicubic resample matrix keeps constants
    let m = whitebox::model::posembed::resample_matrix(4, 2);
    for row in m.chunks(16) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // it matches the weight-level resample used for other resolutions
    let v: Vec<f32> = (0..16 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
    let want = whitebox::model::posembed::bicubic_grid(&v, 4, 2, 3);
    for o in 0..4 {
        for c in 0..3 {
            let got: f32 = (0..16).map(|i| m[o * 16 + i] * v[i * 3 + c]).sum();
            assert!((got - want[o * 3 + c]).abs() < 1e-5);
        }
    }
    // a CRATE runs on 14-px local crops (2×2 patches) and the gradient reaches the positions
    let cfg: whitebox::model::CrateConfig = serde_json::from_str(TINY).unwrap();
    let model = cfg.init::<B>(&Default::default());
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(vec![0.5f32; 2 * 196], [2, 1, 14, 14]),
        &Default::default(),
    );
    let f = model.features(x);
    assert_eq!(f.dims(), [2, 16]);
    let grads = f.sum().backward();
    let g = model.pos_embedding.grad(&grads).expect("position gradient");
    assert!(g
        .into_data()
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .any(|v| *v != 0.0));
    // patch LN 49·2 + Linear 49·16+16 + LN 16·2, positions 17·16, cls 16; one layer: LN 32,
    // qkv 16·16, out 16·16+16, LN 32, ISTA 16·16; head LN 32 + Linear 16·10+10
    assert_eq!(model.num_params(), 2268);
}

fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().expect("output")).expect("last line is JSON")
}

fn assert_same_files(a: &Path, b: &Path, name: &str) {
    let (x, _) = read_safetensors_all(&a.join("checkpoint").join(name)).unwrap();
    let (y, _) = read_safetensors_all(&b.join("checkpoint").join(name)).unwrap();
    assert_eq!(x.len(), y.len(), "{name}");
    for (k, v) in &x {
        assert_eq!(
            v.as_bytes(),
            y[k].as_bytes(),
            "{name}: {k} differs after resume"
        );
    }
}

fn resume_equals_straight(loss: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_data(dir.path());
    let straight = dir.path().join("straight");
    let split = dir.path().join("split");
    let common = [
        "--loss",
        loss,
        "--config",
        &cfg,
        "--data",
        &data,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--local-crops",
        "2",
        "--head-hidden",
        "16",
        "--head-bottleneck",
        "8",
        "--out-dim",
        "12",
        "--knn-k",
        "5",
        "--json",
        "--seed",
        "4",
        "--clip-grad-norm",
        "3",
    ];
    let run = |dir: &Path, extra: &[&str]| {
        ok(&[
            &["dino", "train", "--run-dir", dir.to_str().unwrap()][..],
            extra,
            &common,
        ]
        .concat())
    };
    let out = last_json(&run(&straight, &[]));
    run(&split, &["--stop-after", "1"]);
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(split.join("checkpoint/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (state["epoch"].as_u64(), state["step"].as_u64()),
        (Some(1), Some(4))
    );
    // a DINO setting that differs from the run's is refused on --resume (issue #11)
    let e = fails(
        &[
            &["dino", "train", "--run-dir", split.to_str().unwrap()][..],
            &["--resume", "--knn-temperature", "0.5"],
            &common,
        ]
        .concat(),
    );
    assert!(
        e.contains("--knn-temperature 0.5 (the run has 0.07)"),
        "{e}"
    );
    run(&split, &["--resume"]);
    assert_same_files(&straight, &split, "model.safetensors");
    assert_same_files(&straight, &split, "ssl_state.safetensors");
    // metrics carry the loss terms and the k-NN accuracy each epoch
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    // the summary's k-NN accuracy is the last epoch's evaluation
    let number = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .filter(|x| x.is_finite())
            .unwrap_or_else(|| panic!("{what} is not a finite number: {v}"))
    };
    let (top1, top5) = (
        number(&out["knn_top1"], "knn_top1"),
        number(&out["knn_top5"], "knn_top5"),
    );
    assert_eq!(number(&lines[1]["test_acc"], "test_acc"), top1);
    assert_eq!(number(&lines[1]["test_top5"], "test_top5"), top5);
    assert!(top5 >= top1, "top-5 {top5} below top-1 {top1}");
    assert!(lines[1]["terms"]["momentum"].as_f64().unwrap() > 0.996);
    if loss == "simdino" {
        assert!(lines[1]["terms"]["expa"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn simdino_resume_equals_straight_run() {
    resume_equals_straight("simdino");
}

#[test]
fn dino_resume_equals_straight_run() {
    resume_equals_straight("dino");
}

#[test]
fn teacher_checkpoint_is_a_crate_for_knn_and_probe_not_eval() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_data(dir.path());
    let run = dir.path().join("run");
    ok(&[
        "dino",
        "train",
        "--run-dir",
        run.to_str().unwrap(),
        "--config",
        &cfg,
        "--data",
        &data,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--local-crops",
        "1",
        "--head-hidden",
        "16",
        "--head-bottleneck",
        "8",
        "--json",
    ]);
    let w = run.join("checkpoint/model.safetensors");
    let (sd, meta) = read_safetensors_all(&w).unwrap();
    assert!(sd.contains_key("transformer.layers.0.0.fn.qkv.weight"));
    assert!(
        sd.keys().all(|k| !k.starts_with("student")),
        "only the teacher backbone"
    );
    assert!(meta["config"].contains("\"patch_size\":7"));
    let w = w.to_str().unwrap();
    // its classifier head was never trained: eval refuses it and says what it is for (#28)
    let e = fails(&["eval", "--weights", w, "--data", &data]);
    assert!(e.contains("self-supervised backbone"), "{e}");
    let k = last_json(&ok(&[
        "knn",
        "--weights",
        w,
        "--data",
        &data,
        "--k",
        "5",
        "--json",
    ]));
    assert_eq!(k["k"].as_u64(), Some(5));
    // the teacher's features are far better than chance (0.1) on the stripe classes
    assert!(k["top1"].as_f64().unwrap() >= 0.4, "{k}");
    assert!(k["top5"].as_f64().unwrap() >= k["top1"].as_f64().unwrap());
    let p = last_json(&ok(&[
        "probe",
        "--weights",
        w,
        "--data",
        &data,
        "--epochs",
        "2",
        "--json",
    ]));
    assert_eq!(p["dim"].as_u64(), Some(16));
    // the baselines: pixels and a random initialisation
    // the stripe classes are told apart by raw pixels (chance is 0.1)
    let px = last_json(&ok(&["knn", "--pixels", "--data", &data, "--json"]));
    assert!(px["top1"].as_f64().unwrap() >= 0.9, "{px}");
    ok(&["knn", "--config", &cfg, "--data", &data, "--json"]);
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_data(dir.path());
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let base = [
        "dino",
        "train",
        "--run-dir",
        r,
        "--config",
        &cfg,
        "--data",
        &data,
        "--epochs",
        "1",
    ];
    for (extra, want) in [
        (&["--label-smoothing", "0.2"][..], "--label-smoothing"),
        (&["--hflip"][..], "--hflip"),
        (&["--expa-type", "2"][..], "--expa-type"),
        (&["--eps", "0"][..], "--eps"),
        (&["--momentum-teacher", "1.5"][..], "--momentum-teacher"),
        (&["--loss", "byol"][..], "byol"),
        (&["--local-size", "10"][..], "--local-size"),
        (&["--resume"][..], "no checkpoint"),
    ] {
        let e = fails(&[&base[..], extra].concat());
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    assert!(!run.join("checkpoint").exists());
    let e = fails(&["knn", "--data", &data]);
    assert!(e.contains("--pixels"), "{e}");
    let e = fails(&["knn", "--pixels", "--data", &data, "--k", "0"]);
    assert!(
        e.contains("'--k <K>'") && e.contains("an integer ≥ 1"),
        "{e}"
    );
    let e = fails(&[
        "knn",
        "--weights",
        "/nonexistent.safetensors",
        "--data",
        &data,
    ]);
    assert!(e.contains("nonexistent"), "{e}");
}

#[test]
fn teacher_starts_as_a_copy_of_the_student() {
    // burn initialises parameters lazily: a plain clone of a fresh module draws other weights
    let cfg = whitebox::model::ssl::SslConfig {
        backbone: serde_json::from_str(TINY).unwrap(),
        head: HeadConfig {
            in_dim: 16,
            ..head_cfg()
        },
        loss: whitebox::model::ssl::SslLoss::Dino,
    };
    let m = whitebox::weights::canonical_ids(cfg.init::<B>(&Default::default()));
    for (t, s) in [
        (
            collect_state_dict(&m.teacher),
            collect_state_dict(&m.student),
        ),
        (
            collect_state_dict(&m.teacher_head),
            collect_state_dict(&m.student_head),
        ),
    ] {
        assert!(!t.is_empty());
        for (k, v) in &t {
            assert_eq!(v.as_bytes(), s[k].as_bytes(), "{k}");
        }
    }
    // DINO's head: zero biases, weight_g = 1
    let head = collect_state_dict(&m.student_head);
    assert!(head["mlp.0.bias"]
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|v| *v == 0.0));
    assert!(head["last_layer.weight_g"]
        .to_vec::<f32>()
        .unwrap()
        .iter()
        .all(|v| *v == 1.0));
}

/// Test `[1, 0]` (label 1) against three neighbours: label 1 at similarity 1, label 0 at 0.9 and
/// 0.8 (an overflowing vote, ∞ = ∞, would fall to the lower class: 0).
fn knn_votes(t: f64) -> anyhow::Result<whitebox::train::ssl::KnnResult> {
    let train = [1.0, 0.0, 0.9, 0.19f32.sqrt(), 0.8, 0.6];
    whitebox::train::ssl::knn_classifier(&train, &[1, 0, 0], &[1.0, 0.0], &[1], 2, 3, t, 2)
}

/// Votes `exp(s/T)` are computed relative to the best similarity: at a tiny temperature the vote
/// is the nearest neighbour's (it used to overflow to ∞ = ∞, a tie), at T = 1 the two label-0
/// neighbours outvote it (e^0.9 + e^0.8 > e^1); a NaN feature or a bad temperature is an error.
#[test]
fn knn_temperature_is_stable_and_bad_inputs_are_errors() {
    assert_eq!(knn_votes(1e-4).unwrap().top1, 1.0);
    assert_eq!(knn_votes(1.0).unwrap().top1, 0.0);
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = knn_votes(t)
            .expect_err("bad temperature accepted")
            .to_string();
        assert!(e.contains("temperature"), "{e}");
    }
    let e = whitebox::train::ssl::knn_classifier(
        &[1.0, f32::NAN],
        &[0],
        &[1.0, 0.0],
        &[0],
        2,
        1,
        0.07,
        2,
    )
    .expect_err("NaN feature accepted")
    .to_string();
    assert!(e.contains("train features are not finite"), "{e}");
}

/// A DINO teacher backbone's classifier head was never trained: `eval` and `predict` refuse it
/// and name what it is for, `knn` and `train --init-from` take it; `dino train` with a ToST
/// preset says that ToST is not a CRATE config (issue #28).
#[test]
fn a_self_supervised_backbone_is_not_used_as_a_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let (data, cfg) = tiny_data(dir.path());
    let run = dir.path().join("dino");
    let small = [
        "--config",
        &cfg,
        "--data",
        &data,
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ];
    let dino = [
        "--local-crops",
        "2",
        "--head-hidden",
        "16",
        "--head-bottleneck",
        "8",
    ];
    ok(&[
        &["dino", "train", "--run-dir", run.to_str().unwrap()][..],
        &small,
        &dino,
        &["--out-dim", "12", "--knn-k", "5"],
    ]
    .concat());
    let w = run
        .join("checkpoint/model.safetensors")
        .display()
        .to_string();
    let e = fails(&["eval", "--weights", &w, "--data", &data]);
    assert!(
        e.contains("self-supervised backbone") && e.contains("knn"),
        "{e}"
    );
    let ft = dir.path().join("ft").display().to_string();
    ok(&[&["train", "--run-dir", &ft, "--init-from", &w][..], &small].concat());
    let e = fails(&[
        "dino",
        "train",
        "--config",
        "tost-fmnist",
        "--data",
        &data,
        "--run-dir",
        &ft,
    ]);
    assert!(e.contains("is a ToST preset"), "{e}");
}
