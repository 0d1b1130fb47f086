//! The training engine used as a library: a classifier and a causal language model fit without a
//! run folder (nothing is written; the trained model comes back), and a cancel handle stops a run.

use std::path::Path;
use whitebox::data::{Augment, ImageSet, Normalization};
use whitebox::model::lm::LmConfig;
use whitebox::model::CrateConfig;
use whitebox::text::{self, TokenFile};
use whitebox::train::lm::{fit_lm, LmRecipe, LmState, TokenRun};
use whitebox::train::{
    evaluate, fit, Cancel, Classify, OptimSettings, OptimizerKind, Recipe, RunOptions,
    TrainOptimizer, TrainRun, TrainState,
};
use whitebox::weights::canonical_ids;
use whitebox::CpuAutodiff;

type B = CpuAutodiff;

/// `n` 8×8 images of 3 classes: class `c` lights row band `c` (learnable in a few steps).
fn images(n: usize, seed: usize) -> ImageSet {
    let mut pixels = Vec::with_capacity(n * 64);
    for i in 0..n {
        let c = i % 3;
        for p in 0..64 {
            let band = (p / 8) / 3 == c;
            let noise = (i * 31 + p * 7 + seed) % 40;
            pixels.push(if band { 200 + noise % 50 } else { noise } as u8);
        }
    }
    ImageSet {
        pixels,
        labels: (0..n).map(|i| (i % 3) as u32).collect(),
        channels: 1,
        height: 8,
        width: 8,
        class_names: vec!["a".into(), "b".into(), "c".into()],
    }
}

fn optim_settings() -> OptimSettings {
    OptimSettings {
        kind: OptimizerKind::Adamw,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        no_decay_norm_bias: false,
        clip_grad_norm: Some(1.0),
    }
}

fn classifier_state(train: &ImageSet) -> TrainState {
    let recipe = Recipe {
        epochs: 6,
        batch_size: 10,
        lr: 1e-2,
        min_lr: 1e-4,
        warmup_epochs: 0.0,
        label_smoothing: 0.0,
        seed: 1,
        optim: optim_settings(),
        augment: Augment::none(),
        schedule: Default::default(),
        weight_decay_end: None,
    };
    let mut state = TrainState::new(recipe, Path::new("memory"));
    state.fill_from(train);
    state
}

/// A one-layer CRATE of width `dim` (2 heads) for 8×8 grey images of 3 classes.
fn tiny_crate(dim: usize) -> CrateConfig {
    let json = format!(
        r#"{{"image_size": 8, "patch_size": 4, "num_classes": 3, "dim": {dim}, "depth": 1, "heads": 2, "dim_head": {}, "channels": 1}}"#,
        dim / 2
    );
    serde_json::from_str(&json).unwrap()
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

#[test]
fn classifier_fits_without_a_run_folder() {
    let device = Default::default();
    let config = tiny_crate(16);
    let (train, test) = (images(60, 0), images(30, 7));
    let state = classifier_state(&train);
    let norm: Normalization = state.normalization.clone();
    let model = canonical_ids(config.init::<B>(&device));
    let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model);
    let before = evaluate(
        &burn::module::AutodiffModule::valid(&model),
        &test,
        &norm,
        30,
        &device,
    )
    .unwrap();
    let run = TrainRun::with_options(RunOptions::default(), &train, &test);
    let task = Classify::<B>::new(config, 0.0, &device);
    let fitted = fit(&run, &task, model, optim, state, &device).unwrap();
    let last = fitted.last.expect("six epochs evaluated");
    assert_eq!((last.epoch, last.step, fitted.step), (6, 36, 36));
    // the model returned is the trained one: its evaluation is the last metrics line's
    let after = evaluate(
        &burn::module::AutodiffModule::valid(&fitted.model),
        &test,
        &norm,
        30,
        &device,
    )
    .unwrap();
    assert_eq!((after.loss, after.top1), (last.test_loss, last.test_acc));
    assert!(
        after.loss < before.loss - 0.3 && after.top1 >= 0.9,
        "test loss {} → {}, top-1 {} → {}",
        before.loss,
        after.loss,
        before.top1,
        after.top1
    );
}

#[test]
fn a_cancelled_run_without_a_folder_stops_at_its_next_step() {
    let device = Default::default();
    let config = tiny_crate(8);
    let (train, test) = (images(30, 0), images(9, 7));
    let state = classifier_state(&train);
    let model = canonical_ids(config.init::<B>(&device));
    let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model);
    let cancel = Cancel::new();
    cancel.cancel();
    let options = RunOptions {
        cancel: cancel.clone(),
        ..RunOptions::default()
    };
    let run = TrainRun::with_options(options, &train, &test);
    let task = Classify::<B>::new(config, 0.0, &device);
    let e = fit(&run, &task, model, optim, state, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("interrupted at epoch 1 batch 0"), "{e}");
}

#[test]
fn causal_lm_fits_without_a_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "to be or not to be, that is the question. ".repeat(60),
    )
    .unwrap();
    let data = dir.path().join("tok");
    let meta = text::prepare(&corpus, &data, None, 0.1).unwrap();
    let written = files(dir.path());
    let (train, val) = (
        TokenFile::open(&data.join("train.bin")).unwrap(),
        TokenFile::open(&data.join("val.bin")).unwrap(),
    );
    let config = LmConfig {
        arch: whitebox::model::Arch::CrateLm,
        vocab_size: meta.tokenizer.vocab_size(),
        block_size: 16,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        bias: true,
    };
    let recipe = LmRecipe {
        max_iters: 40,
        batch_size: 8,
        grad_accum: 2,
        lr: 1e-2,
        min_lr: 1e-3,
        warmup_iters: 4,
        optim: OptimSettings {
            weight_decay: 0.1,
            beta2: 0.95,
            no_decay_norm_bias: true,
            ..optim_settings()
        },
        eval_interval: 20,
        eval_iters: 4,
        seed: 3,
    };
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 3);
    let model = canonical_ids(config.init::<B>(&device));
    let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
    let state = LmState::fresh(recipe, meta.tokenizer.clone(), &data);
    let run = TokenRun {
        options: RunOptions::default(),
        train: &train,
        val: &val,
    };
    let fitted = fit_lm(&run, &config, model, optim, state, &device).unwrap();
    let last = fitted.last.expect("validation at 20 and 40");
    assert_eq!((last.step, fitted.step), (40, 40));
    let ln_v = (config.vocab_size as f64).ln();
    assert!(
        last.val_loss < ln_v - 0.5 && last.train_loss < ln_v - 0.5,
        "val loss {}, train loss {}, ln V {ln_v}",
        last.val_loss,
        last.train_loss
    );
    // the returned model is the trained one; the fit wrote nothing next to its data
    let (val_loss, _) = whitebox::train::lm::sequential_loss(
        &burn::module::AutodiffModule::valid(&fitted.model),
        &(0..val.len())
            .map(|i| val.get(i) as i64)
            .collect::<Vec<_>>(),
        8,
        &device,
    )
    .unwrap();
    assert!(val_loss < ln_v - 0.5, "{val_loss} vs ln V {ln_v}");
    assert_eq!(files(dir.path()), written);
}

#[test]
fn an_empty_training_split_is_an_error_not_a_panic() {
    let device = Default::default();
    let config = tiny_crate(8);
    let (full, test) = (images(9, 0), images(9, 7));
    let state = classifier_state(&full);
    let mut train = full.clone();
    train.truncate(0);
    let model = canonical_ids(config.init::<B>(&device));
    let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model);
    let run = TrainRun::with_options(RunOptions::default(), &train, &test);
    let task = Classify::<B>::new(config, 0.0, &device);
    let e = fit(&run, &task, model, optim, state, &device)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty training split"), "{e}");
}
