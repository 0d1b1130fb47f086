//! The linear probe: softmax regression on frozen features (standardised with the training
//! split's statistics), trained by AdamW on the engine, epoch by epoch, with a cosine learning
//! rate to 0 and no checkpoints.

use anyhow::{ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use std::path::Path;

use super::engine::{self, Evaluation, Job, PeriodStats, Position, RunOptions};
use super::image_run::{check_shape, load_split};
use super::ssl::extract_features;
use super::{schedule, OptimSettings, OptimizerKind, TrainOptimizer};
use crate::data::{epoch_order, Format, ImageSet, Normalization, Split};
use crate::model::{CrateAutodiff, CrateBackend};
use crate::weights::Weights;
use crate::InferBackend;

/// Everything that decides a probe's training.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRecipe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl ProbeRecipe {
    /// Values a probe can train with; each error names the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.epochs > 0 && self.batch_size > 0,
            "--epochs and --batch-size must be at least 1"
        );
        super::optim::check_lr(self.lr, 0.0)?;
        ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "--weight-decay must be a finite number ≥ 0, got {}",
            self.weight_decay
        );
        Ok(())
    }
}

/// Row-major features `[n, d]` with their labels.
pub struct Features<'a> {
    pub values: &'a [f32],
    pub labels: &'a [u32],
    pub dim: usize,
}

impl Features<'_> {
    fn len(&self) -> usize {
        self.labels.len()
    }

    /// Rows `idx` as a batch `(x [b, d], y [b])`.
    fn batch<B: Backend>(
        &self,
        idx: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
        let d = self.dim;
        let xs: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.values[i * d..(i + 1) * d].iter().copied())
            .collect();
        let ys: Vec<i64> = idx.iter().map(|&i| self.labels[i] as i64).collect();
        let b = idx.len();
        (
            Tensor::from_data(TensorData::new(xs, [b, d]), device),
            Tensor::from_data(TensorData::new(ys, [b]), device),
        )
    }
}

/// `(train, test)` standardised per dimension with the training rows' mean and variance
/// (`(v − μ_j)/√(σ_j² + 1e-6)`).
pub fn standardise(train: &[f32], test: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = train.len() / d;
    let mut mean = vec![0f64; d];
    let mut var = vec![0f64; d];
    for row in train.chunks(d) {
        for j in 0..d {
            mean[j] += row[j] as f64 / n as f64;
        }
    }
    for row in train.chunks(d) {
        for j in 0..d {
            var[j] += (row[j] as f64 - mean[j]).powi(2) / n as f64;
        }
    }
    let apply = |f: &[f32]| -> Vec<f32> {
        f.chunks(d)
            .flat_map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(j, &v)| ((v as f64 - mean[j]) / (var[j] + 1e-6).sqrt()) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    (apply(train), apply(test))
}

/// The probe as a job of the engine: one period per epoch, batches in [`epoch_order`].
struct ProbeJob<'a, B: CrateAutodiff> {
    train: &'a Features<'a>,
    recipe: &'a ProbeRecipe,
    ce: CrossEntropyLoss<B>,
    pos: Position,
    spe: usize,
    order: (usize, Vec<usize>),
    device: B::Device,
}

/// One epoch of the probe (kept in memory only: the probe writes no run folder).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeEpoch {
    pub epoch: usize,
    pub train_loss: f64,
}

impl<B: CrateAutodiff> Job<B> for ProbeJob<'_, B> {
    type Model = Linear<B>;
    type Metrics = ProbeEpoch;

    fn position(&self) -> Position {
        self.pos
    }
    fn set_position(&mut self, p: Position) {
        self.pos = p;
    }
    fn total_steps(&self) -> usize {
        self.spe * self.recipe.epochs
    }
    fn period(&self) -> usize {
        self.spe
    }
    fn lr(&self, step: usize) -> f64 {
        let total = self.spe * self.recipe.epochs;
        schedule::warmup_cosine(step, 0, total, self.recipe.lr, 0.0)
    }
    fn loss(&mut self, head: &Linear<B>, step: usize, _micro: usize) -> (Tensor<B, 1>, usize) {
        let (epoch, b, bs) = (step / self.spe, step % self.spe, self.recipe.batch_size);
        if self.order.0 != epoch || self.order.1.is_empty() {
            self.order = (
                epoch,
                epoch_order(self.train.len(), self.recipe.seed, epoch),
            );
        }
        let idx = &self.order.1[b * bs..((b + 1) * bs).min(self.train.len())];
        let (x, y) = self.train.batch::<B>(idx, &self.device);
        (self.ce.forward(head.forward(x), y), idx.len())
    }
    fn describe_step(&self, step: usize) -> String {
        format!(
            "probe epoch {} batch {}",
            step / self.spe + 1,
            step % self.spe
        )
    }
    fn bar_prefix(&self, step: usize) -> String {
        format!("probe epoch {}/{}", step / self.spe + 1, self.recipe.epochs)
    }
    fn evaluate(
        &mut self,
        _head: &Linear<B>,
        step: usize,
        stats: &PeriodStats,
    ) -> Result<Evaluation<ProbeEpoch>> {
        let m = ProbeEpoch {
            epoch: step.div_ceil(self.spe),
            train_loss: stats.mean_loss(),
        };
        tracing::debug!("probe epoch {}: train loss {:.4}", m.epoch, m.train_loss);
        Ok(Evaluation {
            metrics: m,
            diverged: None,
        })
    }
    fn save(
        &self,
        _run_dir: &Path,
        _head: &Linear<B>,
        _optim: &TrainOptimizer<Linear<B>, B>,
        _metrics: Option<&ProbeEpoch>,
    ) -> Result<()> {
        anyhow::bail!("the linear probe keeps no checkpoints")
    }
}

/// Train a linear head `d → classes` on `train` (standardised features) with AdamW (no weight
/// decay exclusions, no clipping); `B::seed(seed)` draws its initial weights.
pub fn fit_probe<B: CrateAutodiff>(
    train: &Features,
    classes: usize,
    recipe: &ProbeRecipe,
    options: &RunOptions,
    device: &B::Device,
) -> Result<Linear<B>> {
    recipe.validate()?;
    ensure!(train.len() > 0, "the linear probe needs training features");
    ensure!(
        options.run_dir.is_none(),
        "the linear probe keeps no checkpoints: give it no run folder"
    );
    B::seed(device, recipe.seed);
    let head = LinearConfig::new(train.dim, classes).init::<B>(device);
    let settings = OptimSettings {
        kind: OptimizerKind::Adamw,
        weight_decay: recipe.weight_decay,
        beta1: 0.9,
        beta2: 0.999,
        no_decay_norm_bias: false,
        clip_grad_norm: None,
    };
    let optim = TrainOptimizer::new(settings, &head);
    let mut job = ProbeJob {
        train,
        recipe,
        ce: CrossEntropyLossConfig::new().init::<B>(device),
        pos: Position::default(),
        spe: train.len().div_ceil(recipe.batch_size),
        order: (0, Vec::new()),
        device: device.clone(),
    };
    Ok(engine::run(&mut job, head, optim, options)?.model)
}

/// Top-1 accuracy of a trained `head` on `f`.
pub fn accuracy<B: CrateBackend>(head: &Linear<B>, f: &Features, device: &B::Device) -> f64 {
    let idx: Vec<usize> = (0..f.len()).collect();
    let (x, y) = f.batch::<B>(&idx, device);
    super::topk_hits(head.forward(x), y).0 as f64 / f.len().max(1) as f64
}

/// [`fit_probe`] then the accuracies `(train, test)` of the head, measured without a graph.
pub fn linear_probe<B: CrateAutodiff>(
    train: &Features,
    test: &Features,
    classes: usize,
    recipe: &ProbeRecipe,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let head = fit_probe::<B>(train, classes, recipe, &RunOptions::default(), device)?.valid();
    Ok((
        accuracy(&head, train, device),
        accuracy(&head, test, device),
    ))
}

/// What [`probe_frozen`] measured: accuracies of the linear head and the feature width.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    pub train_acc: f64,
    pub test_acc: f64,
    pub dim: usize,
}

/// The linear probe of a frozen model: `extract` maps a normalised batch (`norm`) to features,
/// which are standardised with the training split's statistics; a softmax regression trained by
/// AdamW on `train_set` is scored on both splits. The classes are those either split names.
pub fn probe_frozen<B: Backend, T: CrateAutodiff>(
    train_set: &ImageSet,
    test_set: &ImageSet,
    norm: &Normalization,
    recipe: &ProbeRecipe,
    device: &B::Device,
    extract: impl Fn(Tensor<B, 4>) -> Tensor<B, 2>,
) -> Result<ProbeResult> {
    recipe.validate()?;
    let (ftr, dim) = extract_features(train_set, norm, device, &extract);
    let (fte, _) = extract_features(test_set, norm, device, &extract);
    let (ftr, fte) = standardise(&ftr, &fte, dim);
    let max_label = train_set.labels.iter().copied().max().unwrap_or(0) as usize;
    let classes = train_set
        .num_classes()
        .max(test_set.num_classes())
        .max(max_label + 1);
    let (train, test) = (
        Features {
            values: &ftr,
            labels: &train_set.labels,
            dim,
        },
        Features {
            values: &fte,
            labels: &test_set.labels,
            dim,
        },
    );
    let (train_acc, test_acc) =
        linear_probe::<T>(&train, &test, classes, recipe, &Default::default())?;
    Ok(ProbeResult {
        train_acc,
        test_acc,
        dim,
    })
}

/// What [`probe_weights`] measured: [`ProbeResult`] with the run's epochs and wall time.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub test_acc: f64,
    pub train_acc: f64,
    pub dim: usize,
    pub epochs: usize,
    pub seconds: f64,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "linear probe on frozen cls features: test accuracy {:.2}%  (train {:.2}%, d = {}, {} epochs, {:.0}s)",
            100.0 * self.test_acc,
            100.0 * self.train_acc,
            self.dim,
            self.epochs,
            self.seconds
        )
    }
}

/// `whitebox probe`: the linear probe ([`probe_frozen`]) of the frozen features of `weights` on
/// the images of `data` (the first `train_limit` / `test_limit` of each split), normalised as the
/// weights were trained, else with the training split's statistics.
pub fn probe_weights(
    weights: &Weights<[usize; 3], crate::model::features::Features<InferBackend>>,
    data: &Path,
    format: Format,
    (train_limit, test_limit): (Option<usize>, Option<usize>),
    recipe: &ProbeRecipe,
) -> Result<ProbeReport> {
    recipe.validate()?;
    let t0 = std::time::Instant::now();
    let train_set = load_split(data, format, Split::Train, train_limit)?;
    let test_set = load_split(data, format, Split::Test, test_limit)?;
    check_shape(weights.config, &train_set, data)?;
    check_shape(weights.config, &test_set, data).context("test split")?;
    let norm = weights.normalization_or_train(weights.config[0], data, format)?;
    let r = probe_frozen::<InferBackend, crate::TrainBackend>(
        &train_set,
        &test_set,
        &norm,
        recipe,
        &Default::default(),
        |x| weights.model.extract(x),
    )?;
    Ok(ProbeReport {
        test_acc: r.test_acc,
        train_acc: r.train_acc,
        dim: r.dim,
        epochs: recipe.epochs,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
