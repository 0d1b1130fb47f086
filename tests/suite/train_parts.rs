//! Pieces of the training engine: the warm-up + cosine schedule, `metrics.jsonl` lines, the
//! resume check that names the flags which differ from the run's, and a causal LM run that
//! stops, is refused a fresh start, and resumes only with the run's own settings.

use serde_json::json;
use std::path::Path;
use whitebox::model::Arch;
use whitebox::train::checkpoint::Checkpoint;
use whitebox::train::lm::{
    load_state, train, LmModelSettings, LmRecipeSettings, LmTrainSettings, TokenRunSettings,
};
use whitebox::train::resume::{same_json, ResumeCheck};
use whitebox::train::schedule::warmup_cosine;
use whitebox::train::EpochMetrics;

#[test]
fn warmup_then_cosine() {
    assert!((warmup_cosine(0, 10, 110, 1.0, 0.0) - 0.1).abs() < 1e-12);
    assert!((warmup_cosine(9, 10, 110, 1.0, 0.0) - 1.0).abs() < 1e-12);
    assert!((warmup_cosine(10, 10, 110, 1.0, 0.0) - 1.0).abs() < 1e-12);
    assert!((warmup_cosine(60, 10, 110, 1.0, 0.0) - 0.5).abs() < 1e-12);
    assert!((warmup_cosine(110, 10, 110, 1.0, 1e-3) - 1e-3).abs() < 1e-12);
}

#[test]
fn metrics_without_test_loss_read_back() {
    let m = EpochMetrics {
        epoch: 1,
        step: 4,
        lr: 1e-3,
        train_loss: 0.5,
        test_loss: f64::NAN,
        test_acc: 0.75,
        test_top5: 1.0,
        train_img_s: 10.0,
        seconds: 2.0,
        measures: None,
        terms: None,
    };
    let line = serde_json::to_string(&m).unwrap();
    assert!(line.contains("\"test_loss\":null"), "{line}");
    let back: EpochMetrics = serde_json::from_str(&line).unwrap();
    assert!(back.test_loss.is_nan());
    assert_eq!((back.test_acc, back.train_loss, back.step), (0.75, 0.5, 4));
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn reports_only_given_fields_that_differ() {
    let run = json!({"lr": 0.002, "optim": {"kind": "Adamw", "beta1": 0.9}, "train_limit": 64});
    let wanted = json!({"lr": 0.1, "optim": {"kind": "Lion", "beta1": 0.9}, "train_limit": null});
    let given = ids(&["lr", "beta1", "optimizer", "json"]);
    let e = ResumeCheck::new(&given)
        .fields(&wanted, &run, &[("optimizer", "kind")])
        .check(Path::new("runs/x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--lr 0.1 (the run has 0.002)"), "{e}");
    assert!(e.contains("--optimizer Lion (the run has Adamw)"), "{e}");
    assert!(!e.contains("beta1") && !e.contains("train-limit"), "{e}");
    assert!(e.contains("runs/x"), "{e}");
    // the limit differs but was not given: the run keeps its own
    let given = ids(&["train_limit"]);
    let e = ResumeCheck::new(&given)
        .fields(&wanted, &run, &[])
        .check(Path::new("r"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--train-limit none (the run has 64)"), "{e}");
    assert!(ResumeCheck::new(&ids(&["beta1"]))
        .fields(&wanted, &run, &[])
        .check(Path::new("r"))
        .is_ok());
}

#[test]
fn model_and_refused_flags() {
    let given = ids(&["config", "init_from"]);
    let e = ResumeCheck::new(&given)
        .model("crate-tiny", || false)
        .refuse("init_from", "no --init-from on resume")
        .check(Path::new("r"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--config crate-tiny (the run has another model"),
        "{e}"
    );
    assert!(
        e.contains("--init-from (the run has no --init-from on resume)"),
        "{e}"
    );
    assert!(ResumeCheck::new(&given)
        .model("x", || true)
        .check(Path::new("r"))
        .is_ok());
    assert!(same_json(&json!({"a": 1}), &json!({"a": 1})));
    assert!(!same_json(&json!({"a": 1}), &json!({"a": 2})));
}

/// A one-layer crate-lm on a tiny corpus in `dir`: 4 iterations, validation every 2.
fn tiny(dir: &Path) -> LmTrainSettings {
    let corpus = dir.join("corpus.txt");
    std::fs::write(
        &corpus,
        "to be or not to be, that is the question. ".repeat(20),
    )
    .unwrap();
    LmTrainSettings {
        run: TokenRunSettings::new(&dir.join("tokens"), &corpus, &dir.join("run")),
        model: LmModelSettings {
            arch: Some(Arch::CrateLm),
            n_layer: Some(1),
            n_head: Some(2),
            n_embd: Some(16),
            block_size: Some(8),
            ..Default::default()
        },
        recipe: LmRecipeSettings {
            max_iters: 4,
            batch_size: 4,
            warmup_iters: 10,
            eval_interval: 2,
            eval_iters: 1,
            ..Default::default()
        },
    }
}

#[test]
fn resume_refuses_other_settings_and_continues_with_the_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = tiny(dir.path());
    s.run.stop_after = Some(2);
    let first = train(&s).unwrap();
    assert_eq!(first.last.as_ref().map(|m| m.step), Some(2));
    assert_eq!(first.weights, dir.path().join("run/model.safetensors"));
    assert!(first.weights.exists());
    let state = load_state(&Checkpoint::dir(&s.run.run_dir)).unwrap();
    assert_eq!((state.step, state.recipe.warmup_iters), (2, 4));
    // a fresh run into the folder is refused
    let e = train(&s).unwrap_err().to_string();
    assert!(e.contains("already holds a checkpoint"), "{e}");

    let mut r = s.clone();
    (r.run.resume, r.run.stop_after) = (true, None);
    let other = dir.path().join("other");
    (r.run.data, r.recipe.lr, r.model.n_layer) = (other.clone(), 0.01, Some(2));
    r.run.given = ids(&["data", "lr", "batch_size", "warmup_iters", "corpus", "json"]);
    let e = train(&r).unwrap_err().to_string();
    let tokens = s.run.data.display();
    assert!(e.contains("--lr 0.01 (the run has 0.001)"), "{e}");
    assert!(
        e.contains(&format!(
            "--data {} (the run has {tokens})",
            other.display()
        )),
        "{e}"
    );
    // equal, not given, or capped by the run's max_iters as when it started: not reported
    for quiet in [
        "--batch-size",
        "--n-layer",
        "--warmup-iters",
        "--corpus",
        "--json",
    ] {
        assert!(!e.contains(quiet), "{quiet}: {e}");
    }
    r.run.given = ids(&["n_layer", "config"]);
    let e = train(&r).unwrap_err().to_string();
    assert!(e.contains("--n-layer 2 (the run has 1)"), "{e}");
    assert!(
        e.contains("--config char (the run has another model"),
        "{e}"
    );

    // the run's own settings continue it to max_iters
    let mut r = s.clone();
    (r.run.resume, r.run.stop_after) = (true, None);
    r.run.given = ids(&["lr", "batch_size", "n_layer", "warmup_iters"]);
    let done = train(&r).unwrap();
    let last = done.last.unwrap();
    assert_eq!(last.step, 4);
    assert!(last.val_loss.is_finite() && last.val_loss > 0.0, "{last:?}");
    assert_eq!(
        load_state(&Checkpoint::dir(&s.run.run_dir)).unwrap().step,
        4
    );
}
