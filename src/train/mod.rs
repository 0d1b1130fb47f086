//! Training. Every trainer runs on the one step-based loop of [`engine`]; this module holds the
//! image tasks' side of it: the [`Recipe`] (per-iteration warm-up + cosine, AdamW/Lion, clipping),
//! the [`Task`] trait (the CRATE/CRATE-α classifier with label smoothing, CRATE-MAE's masked
//! reconstruction, ToST, DINO/SimDINO) and [`fit`], which runs a task epoch by epoch with
//! per-epoch evaluation, JSONL metrics, atomic checkpoints and exact resume.

pub mod adamw;
pub mod bert;
pub mod checkpoint;
pub mod classifier;
pub mod dino;
pub mod engine;
pub mod image_run;
pub mod lion;
pub mod lm;
pub mod mae;
pub mod optim;
pub mod parallel;
pub mod probe;
pub mod resume;
pub mod schedule;
pub mod ssl;
pub mod tost;

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use rand::rngs::StdRng;

use burn::tensor::{ElementConversion, Int, Tensor};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

use crate::data::{batch_rng, epoch_order, Augment, Batcher, ImageSet, Normalization};
use crate::measure::{measure_batch, LayerCurves, MeasureSettings};
use crate::model::{Crate, CrateAutodiff, CrateBackend, CrateConfig};
use crate::weights::OfficialKeys;
pub use checkpoint::{Checkpoint, TrainState};
pub use classifier::train_classifier;
pub use engine::{Cancel, Fitted, RunOptions};
pub use optim::{OptimSettings, OptimizerKind, TrainOptimizer};

/// The recipe: everything that decides the trajectory of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipe {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub label_smoothing: f64,
    pub seed: u64,
    pub optim: OptimSettings,
    pub augment: Augment,
    /// Learning-rate curve (absent in older runs = [`LrSchedule::WarmupCosine`]).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Weight decay goes from `optim.weight_decay` to this along DINO's cosine (None = constant).
    #[serde(default)]
    pub weight_decay_end: Option<f64>,
}

/// The learning-rate curve over the iterations of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// [`schedule::warmup_cosine`]: warm-up to the peak from its first step, cosine to `min_lr`.
    #[default]
    WarmupCosine,
    /// DINO's `cosine_scheduler` ([`schedule::cosine_scheduler`], warm-up from 0).
    Dino,
}

impl Recipe {
    /// The main job's recipe (`whitebox train`'s defaults): 40 epochs of batch 128, AdamW at
    /// 2e-3 with one warm-up epoch and a cosine to 1e-5, weight decay 0.05, label smoothing 0.1,
    /// a random crop with 2 pixels of padding.
    pub const MAIN_JOB: Self = Self {
        epochs: 40,
        batch_size: 128,
        lr: 2e-3,
        min_lr: 1e-5,
        warmup_epochs: 1.0,
        label_smoothing: 0.1,
        seed: 0,
        optim: OptimSettings {
            kind: OptimizerKind::Adamw,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.999,
            no_decay_norm_bias: false,
            clip_grad_norm: None,
        },
        augment: Augment {
            crop_padding: 2,
            hflip: false,
        },
        schedule: LrSchedule::WarmupCosine,
        weight_decay_end: None,
    };

    /// Values training can run with, for images of `image_size` pixels; each error names the flag.
    pub fn validate(&self, image_size: usize) -> Result<()> {
        ensure!(self.epochs > 0, "--epochs must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        optim::check_lr(self.lr, self.min_lr)?;
        ensure!(
            self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0,
            "--warmup-epochs must be a finite number ≥ 0, got {}",
            self.warmup_epochs
        );
        ensure!(
            (0.0..1.0).contains(&self.label_smoothing),
            "--label-smoothing must be in [0, 1), got {}",
            self.label_smoothing
        );
        ensure!(
            self.augment.crop_padding < image_size,
            "--crop-padding {} must be smaller than the image size {image_size}",
            self.augment.crop_padding
        );
        self.optim.validate()
    }
    pub fn steps_per_epoch(&self, n: usize) -> usize {
        n.div_ceil(self.batch_size)
    }

    /// Learning rate of iteration `step` of a run of `total` iterations with `warmup` of warm-up.
    pub fn lr_at(&self, step: usize, warmup: usize, total: usize) -> f64 {
        match self.schedule {
            LrSchedule::WarmupCosine => {
                schedule::warmup_cosine(step, warmup, total, self.lr, self.min_lr)
            }
            LrSchedule::Dino => {
                schedule::cosine_scheduler(self.lr, self.min_lr, total, warmup, 0.0, step)
            }
        }
    }
}

/// Loss and accuracy on a data split.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EvalResult {
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
}

/// Top-1/top-5 accuracy and mean cross-entropy of `model` on `set` (no augmentation).
pub fn evaluate<B: CrateBackend>(
    model: &Crate<B>,
    set: &ImageSet,
    norm: &Normalization,
    batch_size: usize,
    device: &B::Device,
) -> Result<EvalResult> {
    let forward = |x| parallel::forward_slices(x, |x| model.forward(x));
    evaluate_with(forward, set, norm, batch_size, device)
}

/// [`evaluate`] for any classifier given as its inference `forward` (NCHW batch → logits).
pub fn evaluate_with<B: CrateBackend>(
    forward: impl Fn(Tensor<B, 4>) -> Tensor<B, 2>,
    set: &ImageSet,
    norm: &Normalization,
    batch_size: usize,
    device: &B::Device,
) -> Result<EvalResult> {
    ensure!(!set.is_empty(), "cannot evaluate on an empty split");
    ensure!(
        batch_size > 0,
        "the evaluation batch size must be at least 1"
    );
    let batcher = Batcher {
        norm: norm.clone(),
        augment: Augment::none(),
    };
    let ce = CrossEntropyLossConfig::new().init::<B>(device);
    let (mut loss_sum, mut c1, mut c5) = (0.0f64, 0usize, 0usize);
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut rng = batch_rng(0, 0, 0);
    for chunk in idx.chunks(batch_size) {
        let (x, y) = batcher.batch::<B>(set, chunk, &mut rng, device);
        let logits = forward(x);
        let loss: f64 = ce.forward(logits.clone(), y.clone()).into_scalar().elem();
        loss_sum += loss * chunk.len() as f64;
        let (a1, a5) = topk_hits(logits, y);
        c1 += a1;
        c5 += a5;
    }
    let n = set.len() as f64;
    Ok(EvalResult {
        loss: loss_sum / n,
        top1: c1 as f64 / n,
        top5: c5 as f64 / n,
        n: set.len(),
    })
}

/// Number of rows whose label is the arg-max (top-1) and among the 5 largest logits (top-5).
pub fn topk_hits<B: CrateBackend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> (usize, usize) {
    let [b, k] = logits.dims();
    let labels: Vec<i64> = labels.into_data().convert::<i64>().to_vec().unwrap();
    let vals: Vec<f32> = logits.into_data().convert::<f32>().to_vec().unwrap();
    let (mut t1, mut t5) = (0, 0);
    for r in 0..b {
        let row = &vals[r * k..(r + 1) * k];
        if row.iter().any(|v| !v.is_finite()) {
            continue; // no class wins on NaN logits: a miss (the loss reports it as non-finite)
        }
        let target = row[labels[r] as usize];
        // rank = number of classes strictly better than the target (ties count in its favour)
        let rank = row.iter().filter(|&&v| v > target).count();
        t1 += (rank == 0) as usize;
        t5 += (rank < 5) as usize;
    }
    (t1, t5)
}

/// One finished epoch, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub step: usize,
    pub lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// NaN (written as JSON `null`) where the task's evaluation has no loss (k-NN).
    #[serde(deserialize_with = "nan_if_null")]
    pub test_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_top5: f64,
    pub train_img_s: f64,
    pub seconds: f64,
    /// Per-layer white-box measures on the first test images (`--measure-every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measures: Option<LayerCurves>,
    /// Epoch means of a task's loss terms (e.g. SimDINO's compression and expansion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<std::collections::BTreeMap<String, f64>>,
}

/// serde_json writes a non-finite f64 as `null`; read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Where the training loop stands when a batch is processed.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Epoch of the batch (0-based).
    pub epoch: usize,
    /// Global iteration (optimizer steps taken before this batch).
    pub step: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

/// What [`fit`] trains: a model, the loss of one training batch and a held-out evaluation.
pub trait Task<B: CrateAutodiff> {
    type Model: AutodiffModule<B, InnerModule = Self::Valid> + OfficialKeys;
    type Valid: burn::module::Module<B::InnerBackend> + OfficialKeys;
    /// Constructor arguments saved as `config.json` and in the weights' metadata.
    type Config: Serialize;
    fn config(&self) -> &Self::Config;
    /// Loss of one batch; `rng` is the batch's own generator (after augmentation), so any
    /// randomness of the loss (e.g. MAE masking, multi-crop views) repeats exactly on resume.
    fn loss(
        &self,
        model: &Self::Model,
        x: Tensor<B, 4>,
        y: Tensor<B, 1, Int>,
        rng: &mut StdRng,
        at: Progress,
    ) -> Tensor<B, 1>;
    /// The batch loss as a mean of per-example losses that needs only the model and the examples,
    /// where the task has one: [`fit`] then cuts each batch over the cores ([`parallel`]).
    fn mean_loss(&self) -> Option<MeanLoss<'_, B, Self::Model>> {
        None
    }
    /// Called with the model after each optimizer step (self-distillation's EMA teacher).
    fn after_step(&self, model: Self::Model, _at: Progress) -> Self::Model {
        model
    }
    /// Epoch means of the loss terms since the last call, for `metrics.jsonl`.
    fn epoch_terms(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        None
    }
    /// Write the checkpoint folder (default: every parameter under its official key) with the
    /// epoch's metrics line (`None` after an interrupt).
    fn save_checkpoint(
        &self,
        run_dir: &Path,
        model: &Self::Model,
        optim: &TrainOptimizer<Self::Model, B>,
        state: &TrainState,
        metrics: Option<&EpochMetrics>,
    ) -> Result<()> {
        Checkpoint::save(run_dir, self.config(), model, optim, state, metrics)
    }
    fn evaluate(
        &self,
        model: &Self::Valid,
        set: &ImageSet,
        norm: &Normalization,
        device: &B::Device,
    ) -> Result<EvalResult>;
    /// Per-layer white-box measures on the first `limit` images of `set`, where the model has them.
    fn measure(
        &self,
        _model: &Self::Valid,
        _set: &ImageSet,
        _norm: &Normalization,
        _limit: usize,
        _device: &B::Device,
    ) -> Result<Option<LayerCurves>> {
        Ok(None)
    }
    /// Whether [`Task::evaluate`] computes a loss (k-NN evaluation has none and reports NaN).
    fn has_eval_loss(&self) -> bool {
        true
    }
    /// One line for the log after an evaluation.
    fn describe(&self, r: &EvalResult) -> String {
        format!(
            "test loss {:.4}  top-1 {:.2}%  top-5 {:.2}%",
            r.loss,
            100.0 * r.top1,
            100.0 * r.top5
        )
    }
}

/// A loss that [`parallel::loss_and_grads`] can run on several slices of a batch at once.
pub type MeanLoss<'a, B, M> =
    Box<dyn Fn(&M, Tensor<B, 4>, Tensor<B, 1, Int>) -> Tensor<B, 1> + Sync + 'a>;

/// The CRATE / CRATE-α classifier: cross-entropy with optional label smoothing.
pub struct Classify<B: CrateAutodiff> {
    pub config: CrateConfig,
    ce: CrossEntropyLoss<B>,
}

impl<B: CrateAutodiff> Classify<B> {
    pub fn new(config: CrateConfig, label_smoothing: f64, device: &B::Device) -> Self {
        Self {
            config,
            ce: smoothed_cross_entropy(label_smoothing, device),
        }
    }
}

/// Cross-entropy with label smoothing `label_smoothing` (0 = none), the classifiers' loss.
pub fn smoothed_cross_entropy<B: CrateAutodiff>(
    label_smoothing: f64,
    device: &B::Device,
) -> CrossEntropyLoss<B> {
    let smoothing = (label_smoothing > 0.0).then_some(label_smoothing as f32);
    CrossEntropyLossConfig::new()
        .with_smoothing(smoothing)
        .init::<B>(device)
}

impl<B: CrateAutodiff> Task<B> for Classify<B> {
    type Model = Crate<B>;
    type Valid = Crate<B::InnerBackend>;
    type Config = CrateConfig;
    fn config(&self) -> &CrateConfig {
        &self.config
    }
    fn loss(
        &self,
        model: &Crate<B>,
        x: Tensor<B, 4>,
        y: Tensor<B, 1, Int>,
        _rng: &mut StdRng,
        _at: Progress,
    ) -> Tensor<B, 1> {
        self.ce.forward(model.forward(x), y)
    }
    fn mean_loss(&self) -> Option<MeanLoss<'_, B, Crate<B>>> {
        let ce = &self.ce;
        Some(Box::new(move |model: &Crate<B>, x, y| {
            ce.forward(model.forward(x), y)
        }))
    }
    fn evaluate(
        &self,
        model: &Crate<B::InnerBackend>,
        set: &ImageSet,
        norm: &Normalization,
        device: &B::Device,
    ) -> Result<EvalResult> {
        evaluate(model, set, norm, 500, device)
    }
    fn measure(
        &self,
        model: &Crate<B::InnerBackend>,
        set: &ImageSet,
        norm: &Normalization,
        limit: usize,
        device: &B::Device,
    ) -> Result<Option<LayerCurves>> {
        measure_curves(model, set, norm, limit, device).map(Some)
    }
}

/// An image run: the splits, the engine's options and the white-box measures to log.
pub struct TrainRun<'a> {
    pub options: RunOptions,
    pub train: &'a ImageSet,
    pub test: &'a ImageSet,
    /// Measure R^c and sparsity per layer every this many epochs (0 = never).
    pub measure_every: usize,
    /// Number of test images the measures use.
    pub measure_images: usize,
}

impl<'a> TrainRun<'a> {
    /// Train on `train`, evaluate on `test` after every epoch, checkpoints in `run_dir`; no
    /// progress bar, no measures, every epoch of the recipe.
    pub fn new(run_dir: &Path, train: &'a ImageSet, test: &'a ImageSet) -> Self {
        Self::with_options(RunOptions::in_dir(run_dir), train, test)
    }

    /// [`TrainRun::new`] with the engine's options given (`run_dir: None` writes nothing).
    pub fn with_options(options: RunOptions, train: &'a ImageSet, test: &'a ImageSet) -> Self {
        Self {
            options,
            train,
            test,
            measure_every: 0,
            measure_images: 0,
        }
    }
}

pub(crate) fn append_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

/// An image [`Task`] as a job of the engine: epochs of `batch_size` images in the order
/// [`epoch_order`] draws, batch `b` of epoch `e` augmented by `batch_rng(seed, e, b)`.
struct ImageJob<'a, 'r, B: CrateAutodiff, T: Task<B>> {
    task: &'a T,
    run: &'a TrainRun<'r>,
    state: TrainState,
    batcher: Batcher,
    /// Steps per epoch, total steps, warm-up steps.
    spe: usize,
    total: usize,
    warmup: usize,
    /// The epoch whose order is cached.
    order: (usize, Vec<usize>),
    device: B::Device,
}

impl<B: CrateAutodiff, T: Task<B>> ImageJob<'_, '_, B, T> {
    /// Images and labels of step `step`'s batch, with the batch's generator after augmentation.
    fn batch(&mut self, step: usize) -> (Tensor<B, 4>, Tensor<B, 1, Int>, StdRng) {
        let (seed, bs, n) = (
            self.state.recipe.seed,
            self.state.recipe.batch_size,
            self.run.train.len(),
        );
        let (epoch, b) = (step / self.spe, step % self.spe);
        if self.order.0 != epoch || self.order.1.is_empty() {
            self.order = (epoch, epoch_order(n, seed, epoch));
        }
        let idx = &self.order.1[b * bs..((b + 1) * bs).min(n)];
        let mut rng = batch_rng(seed, epoch, b);
        let (x, y) = self
            .batcher
            .batch::<B>(self.run.train, idx, &mut rng, &self.device);
        (x, y, rng)
    }
    fn progress(&self, step: usize) -> Progress {
        Progress {
            epoch: step / self.spe,
            step,
            steps_per_epoch: self.spe,
            total_steps: self.total,
        }
    }
}

impl<B: CrateAutodiff, T: Task<B>> engine::Job<B> for ImageJob<'_, '_, B, T> {
    type Model = T::Model;
    type Metrics = EpochMetrics;

    fn position(&self) -> engine::Position {
        let s = &self.state;
        engine::Position {
            step: s.step,
            seconds: s.seconds,
            period_loss_sum: s.epoch_loss_sum,
            period_seen: s.epoch_seen,
        }
    }
    fn set_position(&mut self, p: engine::Position) {
        let s = &mut self.state;
        (s.step, s.epoch, s.batch) = (p.step, p.step / self.spe, p.step % self.spe);
        (s.seconds, s.epoch_loss_sum, s.epoch_seen) = (p.seconds, p.period_loss_sum, p.period_seen);
    }
    fn total_steps(&self) -> usize {
        self.total
    }
    fn period(&self) -> usize {
        self.spe
    }
    /// `n` epochs from the start of the current one.
    fn stop_step(&self, step: usize, n: usize) -> usize {
        (step / self.spe + n) * self.spe
    }
    fn lr(&self, step: usize) -> f64 {
        self.state.recipe.lr_at(step, self.warmup, self.total)
    }
    fn before_step(&self, optim: &mut TrainOptimizer<T::Model, B>, step: usize) {
        let r = &self.state.recipe;
        if let Some(end) = r.weight_decay_end {
            let wd = r.optim.weight_decay;
            optim.set_weight_decay(schedule::cosine_scheduler(
                wd, end, self.total, 0, 0.0, step,
            ));
        }
    }
    fn loss(&mut self, model: &T::Model, step: usize, _micro: usize) -> (Tensor<B, 1>, usize) {
        let (x, y, mut rng) = self.batch(step);
        let (at, n) = (self.progress(step), y.dims()[0]);
        (self.task.loss(model, x, y, &mut rng, at), n)
    }
    /// A classifier's batch over the cores: one slice per core ([`parallel`]).
    fn loss_and_grads(
        &mut self,
        model: &T::Model,
        step: usize,
    ) -> Option<(f64, GradientsParams, usize)> {
        let task = self.task;
        let f = task.mean_loss()?;
        let (x, y, _) = self.batch(step);
        let n = y.dims()[0];
        let (loss, grads) = parallel::loss_and_grads(model, parallel::slices(n), |m, r| {
            let rows = |t: Tensor<B, 4>| t.narrow(0, r.start, r.len());
            f(m, rows(x.clone()), y.clone().narrow(0, r.start, r.len()))
        });
        Some((loss, grads, n))
    }
    fn after_step(&mut self, model: T::Model, step: usize) -> T::Model {
        self.task.after_step(model, self.progress(step))
    }
    fn describe_step(&self, step: usize) -> String {
        let (e, b) = (step / self.spe, step % self.spe);
        format!("epoch {} batch {b} (step {step})", e + 1)
    }
    fn describe_end(&self, step: usize) -> String {
        format!("the end of epoch {} (step {step})", step.div_ceil(self.spe))
    }
    fn bar_prefix(&self, step: usize) -> String {
        format!("epoch {}/{}", step / self.spe + 1, self.state.recipe.epochs)
    }
    fn unit(&self) -> (&'static str, usize) {
        ("img", 1)
    }
    fn evaluate(
        &mut self,
        model: &T::Model,
        step: usize,
        stats: &engine::PeriodStats,
    ) -> Result<engine::Evaluation<EpochMetrics>> {
        let (run, task, norm) = (self.run, self.task, &self.state.normalization);
        let epoch = step.div_ceil(self.spe);
        let eval = task.evaluate(&model.valid(), run.test, norm, &self.device)?;
        if !eval.loss.is_finite() && (task.has_eval_loss() || !eval.loss.is_nan()) {
            let metrics = self.metrics(epoch, step, stats, &eval, None);
            return Ok(engine::Evaluation {
                metrics,
                diverged: Some(("test loss", eval.loss)),
            });
        }
        let measures = if run.measure_every > 0 && epoch.is_multiple_of(run.measure_every) {
            task.measure(
                &model.valid(),
                run.test,
                norm,
                run.measure_images,
                &self.device,
            )?
        } else {
            None
        };
        let m = self.metrics(epoch, step, stats, &eval, measures);
        tracing::info!(
            "epoch {}/{}  train loss {:.4}  {}  {:.0} img/s  {:.0}s",
            m.epoch,
            self.state.recipe.epochs,
            m.train_loss,
            task.describe(&eval),
            m.train_img_s,
            m.seconds
        );
        if let Some(c) = &m.measures {
            tracing::info!(
                "  R^c per layer {:.2?}  nonzero fraction {:.3?}",
                c.rc_mean,
                c.sparsity_mean
            );
        }
        Ok(engine::Evaluation {
            metrics: m,
            diverged: None,
        })
    }
    fn save(
        &self,
        run_dir: &Path,
        model: &T::Model,
        optim: &TrainOptimizer<T::Model, B>,
        metrics: Option<&EpochMetrics>,
    ) -> Result<()> {
        self.task
            .save_checkpoint(run_dir, model, optim, &self.state, metrics)
    }
}

impl<B: CrateAutodiff, T: Task<B>> ImageJob<'_, '_, B, T> {
    fn metrics(
        &self,
        epoch: usize,
        step: usize,
        stats: &engine::PeriodStats,
        eval: &EvalResult,
        measures: Option<LayerCurves>,
    ) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step,
            lr: stats.lr,
            train_loss: stats.mean_loss(),
            test_loss: eval.loss,
            test_acc: eval.top1,
            test_top5: eval.top5,
            train_img_s: stats.rate(),
            seconds: self.state.seconds,
            measures,
            terms: self.task.epoch_terms(),
        }
    }
}

/// Train `task` from `state` (fresh or resumed) until `state.recipe.epochs`, evaluating after
/// every epoch; returns the model, the last epoch's metrics of this invocation and the steps.
pub fn fit<B: CrateAutodiff, T: Task<B>>(
    run: &TrainRun,
    task: &T,
    model: T::Model,
    optim: TrainOptimizer<T::Model, B>,
    state: TrainState,
    device: &B::Device,
) -> Result<Fitted<T::Model, EpochMetrics>> {
    ensure!(
        !run.train.is_empty(),
        "cannot train on an empty training split"
    );
    let recipe = &state.recipe;
    let spe = recipe.steps_per_epoch(run.train.len());
    let total = spe * recipe.epochs;
    let mut job = ImageJob {
        task,
        run,
        batcher: Batcher {
            norm: state.normalization.clone(),
            augment: recipe.augment,
        },
        spe,
        total,
        warmup: ((recipe.warmup_epochs * spe as f64).round() as usize).min(total),
        order: (0, Vec::new()),
        device: device.clone(),
        state,
    };
    engine::run(&mut job, model, optim, &run.options)
}

/// The per-layer curves of `model` on the first `limit` images of `set`.
pub fn measure_curves<B: CrateBackend>(
    model: &Crate<B>,
    set: &ImageSet,
    norm: &Normalization,
    limit: usize,
    device: &B::Device,
) -> Result<LayerCurves> {
    let k = limit.min(set.len());
    ensure!(k > 0, "no images to measure on (empty test split)");
    let batcher = Batcher {
        norm: norm.clone(),
        augment: Augment::none(),
    };
    let idx: Vec<usize> = (0..k).collect();
    let (x, _) = batcher.batch::<B>(set, &idx, &mut batch_rng(0, 0, 0), device);
    let m = measure_batch(model, x, MeasureSettings::default())?;
    LayerCurves::from_measures(&m, model.layers.len())
}
