//! A run interrupted mid-epoch (Ctrl-C/SIGTERM set the same kind of cancel handle) and resumed
//! from its checkpoint ends with the straight run's weights, byte for byte, and the same metrics:
//! the resumed epoch's train loss covers the whole epoch, and no line is duplicated.

use burn::tensor::{Int, Tensor};
use rand::rngs::StdRng;
use std::cell::Cell;
use std::path::Path;
use whitebox::data::{Augment, ImageSet, Normalization};
use whitebox::model::{Crate, CrateAutodiff, CrateConfig};
use whitebox::train::checkpoint::{self, Checkpoint};
use whitebox::train::{
    fit, Cancel, Classify, EvalResult, OptimSettings, Progress, Recipe, RunOptions, Task,
    TrainOptimizer, TrainRun, TrainState,
};
use whitebox::weights::{apply_state_dict, canonical_ids, read_state_dict};
use whitebox::CpuAutodiff;

type B = CpuAutodiff;

/// The classifier, cancelling the run during its `at`-th batch.
struct InterruptAt<A: CrateAutodiff> {
    inner: Classify<A>,
    calls: Cell<usize>,
    at: usize,
    cancel: Cancel,
}

impl<A: CrateAutodiff> Task<A> for InterruptAt<A> {
    type Model = Crate<A>;
    type Valid = Crate<A::InnerBackend>;
    type Config = CrateConfig;
    fn config(&self) -> &CrateConfig {
        &self.inner.config
    }
    fn loss(
        &self,
        model: &Crate<A>,
        x: Tensor<A, 4>,
        y: Tensor<A, 1, Int>,
        rng: &mut StdRng,
        at: Progress,
    ) -> Tensor<A, 1> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() == self.at {
            self.cancel.cancel();
        }
        self.inner.loss(model, x, y, rng, at)
    }
    fn evaluate(
        &self,
        model: &Crate<A::InnerBackend>,
        set: &ImageSet,
        norm: &Normalization,
        device: &A::Device,
    ) -> anyhow::Result<EvalResult> {
        self.inner.evaluate(model, set, norm, device)
    }
}

fn images(n: usize, seed: u8) -> ImageSet {
    ImageSet {
        pixels: (0..n * 64)
            .map(|i| ((i / 64) * 37 + (i % 64) * 11 + seed as usize) as u8)
            .collect(),
        labels: (0..n).map(|i| (i % 3) as u32).collect(),
        channels: 1,
        height: 8,
        width: 8,
        class_names: vec!["a".into(), "b".into(), "c".into()],
    }
}

fn fresh_state(train: &ImageSet) -> TrainState {
    TrainState {
        recipe: Recipe {
            epochs: 2,
            batch_size: 8,
            lr: 3e-3,
            warmup_epochs: 0.5,
            seed: 3,
            optim: OptimSettings {
                clip_grad_norm: Some(1.0),
                ..Recipe::MAIN_JOB.optim
            },
            augment: Augment {
                crop_padding: 1,
                hflip: true,
            },
            ..Recipe::MAIN_JOB
        },
        normalization: Normalization::from_set(train),
        class_names: train.class_names.clone(),
        epoch: 0,
        batch: 0,
        step: 0,
        seconds: 0.0,
        data: "memory".into(),
        epoch_loss_sum: 0.0,
        epoch_seen: 0,
        train_limit: None,
        test_limit: None,
        precision: Default::default(),
    }
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn interrupted_and_resumed_run_equals_the_straight_run() {
    let _serial = crate::serial();
    let device = Default::default();
    let config: CrateConfig = serde_json::from_str(
        r#"{"image_size": 8, "patch_size": 4, "num_classes": 3, "dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "channels": 1}"#,
    )
    .unwrap();
    let (train, test) = (images(40, 0), images(12, 5));
    let dir = tempfile::tempdir().unwrap();
    let model0 = canonical_ids(config.init::<B>(&device));
    let start = |run: &Path, cancel: &Cancel| {
        let options = RunOptions {
            cancel: cancel.clone(),
            ..RunOptions::in_dir(run)
        };
        TrainRun::with_options(options, &train, &test)
    };
    let state = fresh_state(&train);
    let optim = |m: &Crate<B>| TrainOptimizer::new(state.recipe.optim.clone(), m);

    // straight: 2 epochs of 5 batches
    let straight = dir.path().join("straight");
    std::fs::create_dir_all(&straight).unwrap();
    let task = Classify::<B>::new(config.clone(), 0.1, &device);
    let m = model0.clone();
    fit(
        &start(&straight, &Cancel::new()),
        &task,
        m.clone(),
        optim(&m),
        state.clone(),
        &device,
    )
    .unwrap();

    // interrupted during batch 3 of epoch 1: the checkpoint is saved before batch 4
    let split = dir.path().join("split");
    std::fs::create_dir_all(&split).unwrap();
    let cancel = Cancel::new();
    let task = InterruptAt {
        inner: Classify::new(config.clone(), 0.1, &device),
        calls: Cell::new(0),
        at: 3,
        cancel: cancel.clone(),
    };
    let e = fit(
        &start(&split, &cancel),
        &task,
        m.clone(),
        optim(&m),
        state.clone(),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("interrupted at epoch 1 batch 3"), "{e}");
    assert!(!split.join("metrics.jsonl").exists() || metrics(&split).is_empty());

    // resume from the checkpoint, as `train --resume` does
    let ckpt = checkpoint::recover(&split).unwrap().unwrap();
    let st = Checkpoint::load_state(&ckpt).unwrap();
    assert_eq!((st.epoch, st.batch, st.step, st.epoch_seen), (0, 3, 3, 24));
    let sd = read_state_dict(&ckpt.join("model.safetensors")).unwrap();
    let (m2, _) = apply_state_dict(config.init::<B>(&device), &sd, true).unwrap();
    let o2 = TrainOptimizer::new(st.recipe.optim.clone(), &m2)
        .load(&ckpt, &device)
        .unwrap();
    let task = Classify::<B>::new(config.clone(), 0.1, &device);
    fit(&start(&split, &Cancel::new()), &task, m2, o2, st, &device).unwrap();

    // the weights, byte for byte (sorted metadata included), and the optimizer state
    for f in ["model.safetensors", "config.json", "optimizer.mpk"] {
        let a = std::fs::read(straight.join("checkpoint").join(f)).unwrap();
        let b = std::fs::read(split.join("checkpoint").join(f)).unwrap();
        assert!(
            a == b,
            "{f} differs between the straight and the resumed run"
        );
    }
    let (a, b) = (metrics(&straight), metrics(&split));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2, "{b:?}");
    for (x, y) in a.iter().zip(&b) {
        for k in [
            "epoch",
            "step",
            "train_loss",
            "test_loss",
            "test_acc",
            "test_top5",
        ] {
            assert_eq!(x[k], y[k], "{k}: straight {x} vs resumed {y}");
        }
    }
}
