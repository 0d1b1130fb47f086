//! CRATE-BERT (no golden vectors exist for it): HF key names, tied-weight loading, padding and
//! bidirectionality, BERT's 80/10/10 masking, a finite-difference gradient check and a short
//! masked-LM training run whose loss must fall; `bert train` and `bert fill-mask` end to end.

use crate::common;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use common::{fails, ok};
use std::path::Path;
use whitebox::model::bert::{mask_tokens, position_ids, CrateBert, IGNORE};
use whitebox::text::{self, Tokenizer};
use whitebox::train::bert::{
    encode_masked, fill_mask, train, BertModelSettings, BertRecipeSettings, BertState,
    BertTrainSettings, MASK,
};
use whitebox::train::lm::TokenRunSettings;
use whitebox::weights::{apply_state_dict, collect_gradients, collect_state_dict, StateDict};
use whitebox::{CpuAutodiff, CpuBackend};

use common::tiny_bert as tiny;

fn ids<B: burn::tensor::backend::Backend>(v: &[i64], b: usize, t: usize) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [b, t]), &Default::default())
}

#[test]
fn parameters_carry_the_hf_port_keys() {
    let m = tiny().init::<CpuBackend>(&Default::default());
    let mut keys: Vec<String> = collect_state_dict(&m).keys().cloned().collect();
    keys.sort();
    let mut want = vec![
        "crate.embeddings.word_embeddings.weight".to_string(),
        "crate.embeddings.position_embeddings.weight".into(),
        "crate.embeddings.token_type_embeddings.weight".into(),
        "crate.embeddings.LayerNorm.weight".into(),
        "crate.embeddings.LayerNorm.bias".into(),
        "lm_head.dense.weight".into(),
        "lm_head.dense.bias".into(),
        "lm_head.layer_norm.weight".into(),
        "lm_head.layer_norm.bias".into(),
        "lm_head.bias".into(),
    ];
    for i in 0..2 {
        for k in [
            "attention.self.prenorm.weight",
            "attention.self.prenorm.bias",
            "attention.self.qkv.weight",
            "attention.output.dense.weight",
            "output.prenorm.weight",
            "output.prenorm.bias",
            "output.weight",
        ] {
            want.push(format!("crate.encoder.layer.{i}.{k}"));
        }
    }
    want.sort();
    assert_eq!(keys, want);
    let sd = collect_state_dict(&m);
    assert_eq!(
        sd["crate.encoder.layer.0.attention.self.qkv.weight"]
            .shape
            .to_vec(),
        [16, 16]
    );
    assert_eq!(
        sd["crate.embeddings.position_embeddings.weight"]
            .shape
            .to_vec(),
        [34, 16]
    );
}

#[test]
fn hf_checkpoints_with_tied_decoder_load() {
    let m = tiny().init::<CpuBackend>(&Default::default());
    let mut sd = collect_state_dict(&m);
    sd.insert(
        "lm_head.decoder.weight".into(),
        sd["crate.embeddings.word_embeddings.weight"].clone(),
    );
    sd.insert("lm_head.decoder.bias".into(), sd["lm_head.bias"].clone());
    let clean = whitebox::model::bert::untie_state_dict(sd.clone()).unwrap();
    let (m2, report) =
        apply_state_dict(tiny().init::<CpuBackend>(&Default::default()), &clean, true).unwrap();
    assert!(report.is_clean());
    let x = ids::<CpuBackend>(&[5, 6, 7, 8], 1, 4);
    let a: Vec<f32> = m.encode(x.clone()).into_data().to_vec().unwrap();
    let b: Vec<f32> = m2.encode(x).into_data().to_vec().unwrap();
    assert_eq!(a, b);
    // a decoder that is not the embedding is refused
    let mut bad = sd;
    bad.insert(
        "lm_head.decoder.weight".into(),
        TensorData::new(vec![0.5f32; 20 * 16], [20, 16]),
    );
    let e = whitebox::model::bert::untie_state_dict(bad).err().unwrap();
    assert!(e.to_string().contains("does not tie"), "{e}");
}

#[test]
fn padding_is_invisible_and_attention_is_bidirectional() {
    assert_eq!(
        position_ids(&[5, 6, 1, 1, 1, 7, 8, 9], 4, 1),
        vec![2, 3, 1, 1, 1, 2, 3, 4]
    );
    let m = tiny().init::<CpuBackend>(&Default::default());
    let short: Vec<f32> = m
        .encode(ids(&[5, 6, 7], 1, 3))
        .into_data()
        .to_vec()
        .unwrap();
    let padded: Vec<f32> = m
        .encode(ids(&[5, 6, 7, 1, 1], 1, 5))
        .into_data()
        .to_vec()
        .unwrap();
    let d = 16;
    let diff = common::max_abs_diff(&short, &padded[..3 * d]);
    assert!(diff < 1e-5, "padding changed the outputs by {diff}");
    // a later token changes the first position's output (no causal mask)
    let other: Vec<f32> = m
        .encode(ids(&[5, 6, 9], 1, 3))
        .into_data()
        .to_vec()
        .unwrap();
    let d0 = common::max_abs_diff(&short[..d], &other[..d]);
    assert!(d0 > 1e-4, "position 0 ignored position 2 ({d0})");
}

#[test]
fn masking_follows_bert_80_10_10() {
    let vocab = 50;
    let special = [0i64, 1, 2, 3];
    let ids: Vec<i64> = (0..200_000).map(|i| (i % 60) as i64 % vocab).collect();
    let (out, labels) = mask_tokens(&ids, &special, 3, vocab as usize, 0.15, 7);
    let eligible = ids.iter().filter(|i| !special.contains(i)).count() as f64;
    let chosen: Vec<usize> = (0..ids.len()).filter(|&i| labels[i] != IGNORE).collect();
    for &i in &chosen {
        assert!(!special.contains(&ids[i]), "special token chosen");
        assert_eq!(labels[i], ids[i]);
    }
    for i in 0..ids.len() {
        if labels[i] == IGNORE {
            assert_eq!(out[i], ids[i], "unchosen token changed");
        }
    }
    let n = chosen.len() as f64;
    assert!((n / eligible - 0.15).abs() < 0.005, "rate {}", n / eligible);
    let masked = chosen.iter().filter(|&&i| out[i] == 3).count() as f64 / n;
    let kept = chosen.iter().filter(|&&i| out[i] == ids[i]).count() as f64 / n;
    let random = 1.0 - masked - kept;
    assert!((masked - 0.8).abs() < 0.01, "mask {masked}");
    // a random replacement hits the original token 1 time in 46
    assert!((kept - (0.1 + 0.1 / 46.0)).abs() < 0.01, "kept {kept}");
    assert!((random - 0.1 * 45.0 / 46.0).abs() < 0.01, "random {random}");
}

fn loss_of(sd: &StateDict, x: &[i64], labels: &[i64]) -> f64 {
    let (m, _) =
        apply_state_dict(tiny().init::<CpuBackend>(&Default::default()), sd, true).unwrap();
    m.mlm_loss(ids(x, 2, 6), labels).into_scalar().elem::<f64>()
}

/// The tiny model's parameters drawn from a fixed seed, so the finite-difference test is the same
/// on every run (the backend's own generator is shared by the tests running in parallel): matrices
/// uniform in ±1/√fan-in, norm weights 1 ± 0.2, biases ±0.1.
fn fixed_weights() -> StateDict {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let sd = collect_state_dict(&tiny().init::<CpuBackend>(&Default::default()));
    sd.into_iter()
        .map(|(k, t)| {
            let n = t.num_elements();
            let norm = k.contains("LayerNorm.weight") || k.contains("norm.weight");
            let v: Vec<f32> = (0..n)
                .map(|_| match t.shape.len() {
                    2 => {
                        let a = 1.0 / (t.shape[1] as f32).sqrt();
                        rng.random_range(-a..a)
                    }
                    _ if norm => 1.0 + rng.random_range(-0.2f32..0.2),
                    _ => rng.random_range(-0.1f32..0.1),
                })
                .collect();
            (k, TensorData::new(v, t.shape.clone()))
        })
        .collect()
}

#[test]
fn gradients_match_finite_differences() {
    let (m, _) = apply_state_dict(
        tiny().init::<CpuAutodiff>(&Default::default()),
        &fixed_weights(),
        true,
    )
    .unwrap();
    let x = [5i64, 3, 7, 9, 3, 11, 12, 3, 6, 1, 1, 1];
    let labels = [
        IGNORE, 8, IGNORE, IGNORE, 10, IGNORE, IGNORE, 4, IGNORE, IGNORE, IGNORE, IGNORE,
    ];
    let loss = m.mlm_loss(ids(&x, 2, 6), &labels);
    let grads = collect_gradients(&m, &loss.backward());
    let sd = collect_state_dict(&m.valid());
    let h = 1e-2f32;
    let mut nonzero = 0;
    for (key, idx) in [
        ("crate.encoder.layer.0.output.weight", 5usize),
        ("crate.encoder.layer.1.output.weight", 17),
        ("crate.encoder.layer.0.attention.self.qkv.weight", 40),
        ("crate.encoder.layer.1.attention.output.dense.weight", 3),
        ("crate.embeddings.word_embeddings.weight", 8 * 16 + 2),
        ("crate.embeddings.LayerNorm.weight", 4),
        ("lm_head.dense.weight", 21),
        ("lm_head.bias", 8),
        ("crate.encoder.layer.1.output.prenorm.bias", 9),
    ] {
        let g = grads[key].to_vec::<f32>().unwrap()[idx] as f64;
        let shift = |s: f32| {
            let mut sd = sd.clone();
            let t = &sd[key];
            let mut v = t.to_vec::<f32>().unwrap();
            v[idx] += s;
            sd.insert(key.to_string(), TensorData::new(v, t.shape.clone()));
            loss_of(&sd, &x, &labels)
        };
        let fd = (shift(h) - shift(-h)) / (2.0 * h as f64);
        assert!(
            (fd - g).abs() <= 2e-3 + 0.05 * g.abs(),
            "{key}[{idx}]: autodiff {g:e}, finite difference {fd:e}"
        );
        nonzero += (g.abs() > 1e-4) as usize;
    }
    // the comparisons are not 0 = 0: almost every chosen entry has a real gradient
    assert!(nonzero >= 8, "only {nonzero} of 9 gradients are non-zero");
}

#[test]
fn masked_lm_training_lowers_the_loss() {
    // one fixed 15-token text: every masked token is predictable from its position and context
    let (b, t) = (8usize, 15usize);
    let motif = [4i64, 9, 13, 6, 17, 5, 11];
    let batch: Vec<i64> = (0..b * t).map(|i| motif[(i % t) * 3 % 7]).collect();
    let special = [0i64, 1, 2, 3];
    let eval_loss = |m: &CrateBert<CpuBackend>| -> f64 {
        (0..4)
            .map(|s| {
                let (x, y) = mask_tokens(&batch, &special, 3, 20, 0.15, 1000 + s);
                m.mlm_loss(ids(&x, b, t), &y).into_scalar().elem::<f64>()
            })
            .sum::<f64>()
            / 4.0
    };
    let mut m = tiny().init::<CpuAutodiff>(&Default::default());
    let before = eval_loss(&m.valid());
    let mut opt = AdamWConfig::new().with_weight_decay(0.01).init();
    for step in 0..200 {
        let (x, y) = mask_tokens(&batch, &special, 3, 20, 0.15, step);
        let loss = m.mlm_loss(ids(&x, b, t), &y);
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        m = opt.step(5e-3, m, grads);
    }
    let after = eval_loss(&m.valid());
    assert!(
        after < 0.3 * before,
        "masked-LM loss {before:.3} → {after:.3}: should fall below 30 %"
    );
}

#[test]
fn bert_train_and_fill_mask_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "to be or not to be that is the question ".repeat(200),
    )
    .unwrap();
    let (data, run) = (dir.path().join("tokens"), dir.path().join("run"));
    let s = |p: &std::path::Path| p.display().to_string();
    let out = ok(&[
        "bert",
        "train",
        "--corpus",
        &s(&corpus),
        "--data",
        &s(&data),
        "--run-dir",
        &s(&run),
        "--max-iters",
        "150",
        "--eval-interval",
        "50",
        "--eval-iters",
        "4",
        "--hidden-size",
        "32",
        "--layers",
        "2",
        "--heads",
        "2",
        "--seq-len",
        "24",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--warmup-iters",
        "10",
        "--json",
    ]);
    let last: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(last["iters"], 150);
    let log: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 4, "iterations 0, 50, 100, 150");
    let (first, end) = (
        log[0]["val_loss"].as_f64().unwrap(),
        log[3]["val_loss"].as_f64().unwrap(),
    );
    assert!(end < 0.8 * first, "validation loss {first:.3} → {end:.3}");

    let w = s(&run.join("checkpoint/model.safetensors"));
    let out = ok(&[
        "bert",
        "fill-mask",
        "--weights",
        &w,
        "to be or not <mask>o be",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("<mask> 1: "), "{out}");
    let probs = common::percentages(lines[0]);
    assert_eq!(probs.len(), 5);
    assert!(probs.windows(2).all(|p| p[0] >= p[1]) && probs.iter().sum::<f64>() <= 100.01);
    assert!(
        lines[1].starts_with("to be or not ") && lines[1].ends_with("o be"),
        "{out}"
    );

    let e = fails(&["bert", "fill-mask", "--weights", &w, "to be"]);
    assert!(e.contains("no <mask>"), "{e}");
    let e = fails(&["bert", "fill-mask", "--weights", &w, "Zebra <mask>"]);
    assert!(e.contains("not in the model's character vocabulary"), "{e}");
    let long = format!("{} <mask>", "to be ".repeat(10));
    let e = fails(&["bert", "fill-mask", "--weights", &w, &long]);
    assert!(e.contains("reads at most 24"), "{e}");
}

/// Arguments of a tiny `bert train` run of 12 iterations (validation every 4).
fn tiny_train_args(corpus: &str, data: &str, run: &str) -> Vec<String> {
    [
        "bert",
        "train",
        "--corpus",
        corpus,
        "--data",
        data,
        "--run-dir",
        run,
        "--max-iters",
        "12",
        "--eval-interval",
        "4",
        "--eval-iters",
        "2",
        "--hidden-size",
        "16",
        "--layers",
        "2",
        "--heads",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--warmup-iters",
        "3",
        "--seed",
        "7",
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

fn run_json(args: &[String]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&args);
    serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
}

fn metrics(run: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 12 iterations straight equal 5 iterations, then `--resume` to 12: the same final weights
/// (bit for bit), the same final validation loss and the same metrics at iterations 8 and 12.
#[test]
fn bert_resume_equals_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "to be or not to be that is the question ".repeat(50),
    )
    .unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    let data = s(&dir.path().join("tokens"));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let straight = run_json(&tiny_train_args(&s(&corpus), &data, &s(&a)));
    assert_eq!(straight["iters"], 12);

    let mut first = tiny_train_args(&s(&corpus), &data, &s(&b));
    first.extend(["--stop-after".to_string(), "5".to_string()]);
    assert_eq!(run_json(&first)["iters"], 5);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 5);
    let w = |run: &std::path::Path| {
        whitebox::weights::read_safetensors_all(&run.join("checkpoint/model.safetensors"))
            .unwrap()
            .0
    };
    let at5 = w(&b);
    let resumed = run_json(
        &[
            "bert",
            "train",
            "--data",
            &data,
            "--run-dir",
            &s(&b),
            "--resume",
            "--json",
        ]
        .map(String::from),
    );
    assert_eq!(resumed["iters"], 12);
    let (va, vb) = (
        straight["val_loss"].as_f64().unwrap(),
        resumed["val_loss"].as_f64().unwrap(),
    );
    assert!(va.is_finite() && va > 0.5, "val loss {va}");
    assert_eq!(va, vb, "final validation loss after resume");
    let (wa, wb) = (w(&a), w(&b));
    assert_eq!(wa.len(), wb.len());
    let key = "crate.encoder.layer.0.output.weight";
    assert_ne!(wa[key], at5[key], "the resumed run did not train");
    for (k, v) in &wa {
        assert_eq!(v, &wb[k], "{k} differs after resume");
    }
    // the logs are the straight run's: the same evaluations (iteration 0, 4, 8, 12), no extra
    // line at the stop (5), each period's train loss over all its iterations (issue #28)
    let (ma, mb) = (metrics(&a), metrics(&b));
    let iters = |m: &[serde_json::Value]| m.iter().map(|e| e["iter"].clone()).collect::<Vec<_>>();
    assert_eq!(iters(&ma), [0, 4, 8, 12].map(serde_json::Value::from));
    assert_eq!(iters(&mb), iters(&ma));
    for (ea, eb) in ma.iter().zip(&mb) {
        for f in ["val_loss", "train_loss", "lr"] {
            assert_eq!(ea[f], eb[f], "{f} at iteration {}", ea["iter"]);
        }
    }
}

#[test]
fn bert_resume_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "to be or not to be ".repeat(40)).unwrap();
    let s = |p: &std::path::Path| p.display().to_string();
    let data = s(&dir.path().join("tokens"));
    let run = dir.path().join("run");
    // nothing to resume
    let e = fails(&[
        "bert",
        "train",
        "--corpus",
        &s(&corpus),
        "--data",
        &data,
        "--run-dir",
        &s(&run),
        "--resume",
    ]);
    assert!(
        e.contains(&format!("no checkpoint in {}", run.display())),
        "{e}"
    );
    // a run of 16-wide sequences resumed with other model and recipe flags
    let mut args = tiny_train_args(&s(&corpus), &data, &s(&run));
    args.extend(["--stop-after".to_string(), "1".to_string()]);
    run_json(&args);
    // a second fresh run into the folder is refused, not overwritten
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = fails(&a);
    assert!(
        e.contains("already holds a checkpoint") && e.contains("--overwrite"),
        "{e}"
    );
    let e = fails(&[
        "bert",
        "train",
        "--data",
        &data,
        "--run-dir",
        &s(&run),
        "--resume",
        "--hidden-size",
        "32",
        "--seq-len",
        "16",
        "--lr",
        "0.01",
    ]);
    assert!(e.contains(&run.display().to_string()), "{e}");
    assert!(
        e.contains("--hidden-size 32 (the run has 16)")
            && e.contains("--lr 0.01 (the run has 0.003)"),
        "{e}"
    );
    assert!(!e.contains("--seq-len"), "an equal flag was reported: {e}");
    // a config.json that no longer fits the run's state
    let cfg = run.join("checkpoint/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "\"max_position_embeddings\": 18",
            "\"max_position_embeddings\": 40",
        ),
    )
    .unwrap();
    let e = fails(&[
        "bert",
        "train",
        "--data",
        &data,
        "--run-dir",
        &s(&run),
        "--resume",
    ]);
    assert!(
        e.contains("config.json") && e.contains("does not fit the run's state.json"),
        "{e}"
    );
}

fn abc() -> Tokenizer {
    Tokenizer::Char {
        chars: "abc".into(),
    }
}

#[test]
fn masks_become_the_mask_id_and_characters_shift_past_the_specials() {
    assert_eq!(encode_masked(&abc(), "a<mask>c").unwrap(), [3, MASK, 5]);
    assert_eq!(encode_masked(&abc(), "<mask><mask>").unwrap(), [MASK, MASK]);
    assert!(encode_masked(&abc(), "a<mask>z").is_err());
}

#[test]
fn fill_mask_ranks_characters_and_fills_the_best() {
    let cfg = BertModelSettings {
        hidden_size: 8,
        layers: 1,
        heads: 2,
    }
    .config(&abc(), 8);
    let model = cfg.init::<CpuBackend>(&Default::default());
    let f = fill_mask(&model, &abc(), "a<mask>b<mask>", 2).unwrap();
    assert_eq!(f.top.len(), 2);
    for top in &f.top {
        assert_eq!(top.len(), 2);
        assert!(top[0].1 >= top[1].1 && top[1].1 > 0.0 && top[0].1 + top[1].1 <= 1.0);
    }
    let best: Vec<&str> = f.top.iter().map(|t| t[0].0.as_str()).collect();
    assert_eq!(f.filled, format!("a{}b{}", best[0], best[1]));
    let e = fill_mask(&model, &abc(), "abc", 2).unwrap_err().to_string();
    assert_eq!(e, "the text has no <mask>");
    let long = format!("{}<mask>", "a".repeat(8));
    let e = fill_mask(&model, &abc(), &long, 2).unwrap_err().to_string();
    assert_eq!(e, "the text is 9 tokens long; this model reads at most 8");
}

#[test]
fn train_stops_resumes_and_refuses_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "to be or not to be ".repeat(40)).unwrap();
    let (data, run_dir) = (dir.path().join("tokens"), dir.path().join("run"));
    let mut s = BertTrainSettings {
        run: TokenRunSettings::new(&data, &corpus, &run_dir),
        model: BertModelSettings {
            hidden_size: 16,
            layers: 1,
            heads: 2,
        },
        recipe: BertRecipeSettings {
            seq_len: 8,
            max_iters: 4,
            batch_size: 4,
            warmup_iters: 1,
            eval_interval: 2,
            eval_iters: 1,
            ..Default::default()
        },
    };
    s.run.stop_after = Some(2);
    let first = train(&s).unwrap();
    assert_eq!(first.iters, 2);
    assert_eq!(first.weights, run_dir.join("checkpoint/model.safetensors"));
    assert!(first.val_loss.is_finite() && first.weights.exists());
    // t, o, b, e, r, n and the space
    assert_eq!(text::read_meta(&data).unwrap().tokenizer.vocab_size(), 7);
    let e = train(&s).unwrap_err().to_string();
    assert!(e.contains("already holds a checkpoint"), "{e}");

    (s.run.resume, s.run.stop_after) = (true, None);
    s.run.given = ["heads", "layers", "mask_rate"].map(String::from).into();
    (s.model.layers, s.recipe.mask_rate) = (3, 0.2);
    let e = train(&s).unwrap_err().to_string();
    assert!(e.contains("--layers 3 (the run has 1)"), "{e}");
    assert!(e.contains("--mask-rate 0.2 (the run has 0.15)"), "{e}");
    assert!(!e.contains("--heads"), "{e}");
    (s.model.layers, s.recipe.mask_rate) = (1, 0.15);
    let done = train(&s).unwrap();
    assert_eq!(done.iters, 4);
    assert!(done.val_loss.is_finite());
}

#[test]
fn resume_check_names_the_flags_by_their_fields() {
    let s = BertTrainSettings {
        run: TokenRunSettings::new(Path::new("tok"), Path::new("c.txt"), Path::new("runs/b")),
        model: BertModelSettings::default(),
        recipe: BertRecipeSettings::default(),
    };
    let state = BertState::fresh(s.recipe.recipe(), abc(), &s.run.data);
    let cfg = s.model.config(&abc(), s.recipe.seq_len);
    let mut r = s.clone();
    (r.model.layers, r.model.heads, r.recipe.lr) = (2, 4, 0.01);
    r.recipe.seq_len = 32;
    r.run.given = ["layers", "heads", "lr", "data", "seq_len"]
        .map(String::from)
        .into();
    let e = r.check_resume(&cfg, &state).unwrap_err().to_string();
    assert!(e.contains("--layers 2 (the run has 4)"), "{e}");
    assert!(e.contains("--lr 0.01 (the run has 0.001)"), "{e}");
    assert!(e.contains("--seq-len 32 (the run has 64)"), "{e}");
    assert!(
        e.contains("runs/b") && !e.contains("--heads") && !e.contains("--data"),
        "{e}"
    );
    assert!(s.check_resume(&cfg, &state).is_ok());
}
