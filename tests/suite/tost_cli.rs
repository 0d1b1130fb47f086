//! ToST end to end: BatchNorm training statistics as torch updates them, `whitebox forward` on
//! the official golden weights (vision and language model), and `train`/`eval`/`info` with
//! `"arch": "tost"` on a tiny IDX data set, with clear errors on bad configs.

use crate::common;

use burn::tensor::{Tensor, TensorData};
use common::{assert_close, fails, ok, write_idx, Golden};
use whitebox::model::tost::{BatchNorm2d, BN_EPS};
use whitebox::weights::{read_safetensors_all, write_safetensors, StateDict};
use whitebox::CpuAutodiff as B;

#[test]
fn batchnorm_training_uses_batch_stats_and_updates_running_stats_like_torch() {
    let device = Default::default();
    let bn = BatchNorm2d::<B>::new(2, &device);
    // rows [m = 4, c = 2]: channel 0 holds 1, 2, 3, 6; channel 1 holds 0, 0, 4, 4
    let x = Tensor::<B, 2>::from_data(
        TensorData::new(vec![1.0f32, 0.0, 2.0, 0.0, 3.0, 4.0, 6.0, 4.0], [4, 2]),
        &device,
    );
    let y = bn
        .forward(x.clone(), true)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    // channel 0: mean 3, biased var 3.5, unbiased 14/3; channel 1: mean 2, var 4, unbiased 16/3
    let n0 = |v: f32| (v - 3.0) / (3.5f32 + BN_EPS as f32).sqrt();
    let n1 = |v: f32| (v - 2.0) / (4.0f32 + BN_EPS as f32).sqrt();
    let want = [
        n0(1.0),
        n1(0.0),
        n0(2.0),
        n1(0.0),
        n0(3.0),
        n1(4.0),
        n0(6.0),
        n1(4.0),
    ];
    for (g, w) in y.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{y:?} vs {want:?}");
    }
    let rm = bn.running_mean.value().into_data().to_vec::<f32>().unwrap();
    let rv = bn.running_var.value().into_data().to_vec::<f32>().unwrap();
    let close = |a: &[f32], b: [f32; 2]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(&rm, [0.3, 0.2]), "running_mean {rm:?}");
    assert!(
        close(&rv, [0.9 + 0.1 * 14.0 / 3.0, 0.9 + 0.1 * 16.0 / 3.0]),
        "running_var {rv:?}"
    );
    // evaluation then normalises with the running statistics
    let e = bn.forward(x, false).into_data().to_vec::<f32>().unwrap();
    let want0 = (1.0 - rm[0]) / (rv[0] + BN_EPS as f32).sqrt();
    assert!((e[0] - want0).abs() < 1e-5, "{} vs {want0}", e[0]);
}

/// Write `prefix.param.*` of the golden file as a weights file with `config` beside it.
fn golden_weights(dir: &std::path::Path, g: &Golden, prefix: &str, config: &str) -> String {
    let sd: StateDict = g.with_prefix(&format!("{prefix}param."));
    let w = dir.join(format!("{prefix}safetensors"));
    write_safetensors(&w, &sd, None).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    w.display().to_string()
}

fn golden_vision_config(g: &Golden) -> String {
    let c: serde_json::Value = serde_json::from_str(&g.meta["cases"]).unwrap();
    let mut v = c["vision"].clone();
    let o = v.as_object_mut().unwrap();
    for k in ["norm_eps", "attn_layer", "mode"] {
        o.remove(k);
    }
    o.insert("arch".into(), "tost".into());
    v.to_string()
}

#[test]
fn forward_runs_the_official_tost_weights() {
    let g = Golden::load("tost.safetensors");
    let dir = tempfile::tempdir().unwrap();
    // vision: `input` NCHW f32 → logits
    let vdir = dir.path().join("vision");
    std::fs::create_dir_all(&vdir).unwrap();
    let w = golden_weights(&vdir, &g, "vision.", &golden_vision_config(&g));
    let input = vdir.join("in.safetensors");
    let sd = StateDict::from([("input".to_string(), g.get("vision.input").clone())]);
    write_safetensors(&input, &sd, None).unwrap();
    let out = vdir.join("out.safetensors");
    let args = |i: &std::path::Path, o: &std::path::Path| {
        vec![
            "forward".to_string(),
            "--weights".into(),
            w.clone(),
            "--input".into(),
            i.display().to_string(),
            "--output".into(),
            o.display().to_string(),
        ]
    };
    let a = args(&input, &out);
    ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let (t, _) = read_safetensors_all(&out).unwrap();
    assert_close("vision logits", &t["logits"], g.get("vision.logits"), 1e-4);
    let info = ok(&[
        "info",
        "--config",
        vdir.join("config.json").to_str().unwrap(),
    ]);
    assert!(
        info.contains("\"arch\": \"tost\"") && info.contains("parameters:"),
        "{info}"
    );

    // language model: `idx` int64 → logits at every position; the tied head given once
    let ldir = dir.path().join("lm");
    std::fs::create_dir_all(&ldir).unwrap();
    let c: serde_json::Value = serde_json::from_str(&g.meta["cases"]).unwrap();
    let w = golden_weights(&ldir, &g, "lm.", &c["lm"].to_string());
    let mut sd = read_safetensors_all(std::path::Path::new(&w)).unwrap().0;
    sd.remove("lm_head.weight");
    write_safetensors(std::path::Path::new(&w), &sd.into_iter().collect(), None).unwrap();
    let input = ldir.join("in.safetensors");
    let sd = StateDict::from([("idx".to_string(), g.get("lm.idx").clone())]);
    write_safetensors(&input, &sd, None).unwrap();
    let out = ldir.join("out.safetensors");
    let a = args(&input, &out);
    let mut a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    a[2] = &w;
    ok(&a);
    let (t, _) = read_safetensors_all(&out).unwrap();
    assert_close("lm logits", &t["logits"], g.get("lm.logits"), 1e-4);
}

const TINY_TOST: &str = r#"{"arch": "tost", "img_size": 28, "patch_size": 8, "in_chans": 1, "num_classes": 10, "embed_dim": 16, "depth": 1, "num_heads": 2, "eta": 1.0, "tokens_norm": true}"#;

#[test]
fn train_eval_and_errors_with_arch_tost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, "train", 64, true);
    write_idx(&data, "t10k", 32, true);
    let data = data.display().to_string();
    let cfg = dir.path().join("tost.json");
    std::fs::write(&cfg, TINY_TOST).unwrap();
    let run = dir.path().join("run");
    let out = ok(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--data",
        &data,
        "--run-dir",
        run.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let acc = j["test_acc"].as_f64().unwrap();
    let weights = run.join("checkpoint/model.safetensors");
    // the stem's running statistics were trained (torch initialises them to 0 and 1)
    let (t, meta) = read_safetensors_all(&weights).unwrap();
    assert!(meta["config"].contains("\"tost\""));
    let rm = t["patch_embed.proj.0.1.running_mean"]
        .to_vec::<f32>()
        .unwrap();
    assert!(
        rm.iter().any(|v| v.abs() > 1e-4),
        "running_mean not updated: {rm:?}"
    );
    // eval of the saved weights (running statistics) reproduces the last epoch's accuracy
    let e = ok(&[
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        &data,
        "--json",
    ]);
    let e: serde_json::Value = serde_json::from_str(e.lines().last().unwrap()).unwrap();
    assert!(
        (e["test_acc"].as_f64().unwrap() - acc).abs() < 1e-9,
        "{e} vs {acc}"
    );

    // predict on a PNG; the CRATE-only measures refuse ToST weights with a clear error
    let img = dir.path().join("x.png");
    image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * 9 + y) as u8]))
        .save(&img)
        .unwrap();
    let w = weights.to_str().unwrap();
    let p = ok(&[
        "predict",
        "--weights",
        w,
        "--top-k",
        "2",
        img.to_str().unwrap(),
    ]);
    // two labels, most likely first, probabilities of a softmax
    let probs = common::percentages(&p);
    assert!(p.starts_with(img.to_str().unwrap()), "{p}");
    assert_eq!(probs.len(), 2, "{p}");
    assert!(
        probs[0] >= probs[1] && probs[0] + probs[1] <= 100.05 && probs[1] > 0.0,
        "{p}"
    );
    let e = fails(&["measure", "--weights", w, "--data", &data]);
    assert!(e.contains("ToST"), "{e}");

    // bad configs are errors that name the field
    for (json, needle) in [
        (TINY_TOST.replace("\"eta\": 1.0, ", ""), "eta"),
        (
            TINY_TOST.replace("\"patch_size\": 8", "\"patch_size\": 7"),
            "patch_size",
        ),
        (
            TINY_TOST.replace("\"num_heads\": 2", "\"num_heads\": 3"),
            "num_heads",
        ),
        (TINY_TOST.replace("\"depth\": 1", "\"depht\": 1"), "depht"),
    ] {
        std::fs::write(&cfg, json).unwrap();
        let r = dir.path().join("bad");
        let e = fails(&[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            &data,
            "--run-dir",
            r.to_str().unwrap(),
        ]);
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

/// `whitebox lm train --arch tost-lm` trains (validation loss falls), and `lm eval`/`generate`
/// run on the written weights, whose stored config reads back as tost-lm.
#[test]
fn lm_train_eval_generate_with_arch_tost_lm() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "To be, or not to be, that is the question:\n".repeat(60),
    )
    .unwrap();
    let (corpus, data) = (corpus.display().to_string(), dir.path().join("tok"));
    let run = dir.path().join("run");
    let (data, run_s) = (data.display().to_string(), run.display().to_string());
    #[rustfmt::skip]
    ok(&["lm", "train", "--corpus", &corpus, "--data", &data, "--run-dir", &run_s, "--arch", "tost-lm",
         "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "8",
         "--max-iters", "40", "--warmup-iters", "4", "--lr", "1e-2", "--eval-interval", "20",
         "--eval-iters", "4", "--seed", "3"]);
    let m: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (
        m[0]["val_loss"].as_f64().unwrap(),
        m[1]["val_loss"].as_f64().unwrap(),
    );
    assert!(last < first, "val loss {first} → {last} did not fall");
    let w = run.join("model.safetensors");
    let (t, meta) = read_safetensors_all(&w).unwrap();
    assert!(meta["config"].contains("tost-lm"), "{}", meta["config"]);
    assert_eq!(
        t["transformer.h.0.attn.denom_bias"].shape.to_vec(),
        [2, 16, 1]
    );
    let out = ok(&[
        "lm",
        "eval",
        "--weights",
        w.to_str().unwrap(),
        "--text",
        &corpus,
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let (loss, ppl) = (
        j["loss"].as_f64().unwrap(),
        j["perplexity"].as_f64().unwrap(),
    );
    // the trained model scores its own (repetitive) corpus far below a uniform guess
    let vocab = "To be, or not to be, that is the question:\n"
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len() as f64;
    assert!(loss < vocab.ln() - 0.5, "loss {loss}, vocabulary {vocab}");
    assert!((ppl - loss.exp()).abs() < 1e-9 * ppl, "{out}");
    #[rustfmt::skip]
    let text = ok(&["lm", "generate", "--weights", w.to_str().unwrap(), "--prompt", "To be", "--max-new-tokens", "20"]);
    assert!(
        text.starts_with("To be") && text.trim_end().chars().count() >= 20,
        "{text:?}"
    );
}
