//! Training: per-iteration warm-up + cosine, AdamW/Lion, clipping, per-epoch evaluation, JSONL
//! metrics, atomic checkpoints and exact resume, for any [`Task`] (the CRATE/CRATE-α classifier
//! with label smoothing, or CRATE-MAE's masked reconstruction).

pub mod bert;
pub mod checkpoint;
pub mod lion;
pub mod lm;
pub mod mae;
pub mod optim;
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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::{batch_rng, epoch_order, Augment, Batcher, ImageSet, Normalization};
use crate::measure::{measure_batch, LayerCurves, MeasureSettings};
use crate::model::{Crate, CrateAutodiff, CrateBackend, CrateConfig};
use crate::weights::OfficialKeys;
pub use checkpoint::{Checkpoint, TrainState};
pub use optim::{OptimSettings, OptimizerKind, TrainOptimizer};

/// Set by the Ctrl-C handler; the loop saves a checkpoint at the next batch and stops.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Make Ctrl-C, SIGTERM and SIGHUP set [`INTERRUPTED`]: the training loops save a checkpoint at
/// the next batch and stop (`kill PID` behaves like Ctrl-C; only `kill -9` loses the current epoch).
pub fn save_on_interrupt() {
    ctrlc::set_handler(|| INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst)).ok();
}

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
    evaluate_with(|x| model.forward(x), set, norm, batch_size, device)
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

pub struct TrainRun<'a> {
    pub run_dir: PathBuf,
    pub train: &'a ImageSet,
    pub test: &'a ImageSet,
    pub show_progress: bool,
    /// Return after this many epochs of this invocation.
    pub stop_after: Option<usize>,
    /// Measure R^c and sparsity per layer every this many epochs (0 = never).
    pub measure_every: usize,
    /// Number of test images the measures use.
    pub measure_images: usize,
}

impl<'a> TrainRun<'a> {
    /// Train on `train`, evaluate on `test` after every epoch, checkpoints in `run_dir`; no
    /// progress bar, no measures, every epoch of the recipe.
    pub fn new(run_dir: &Path, train: &'a ImageSet, test: &'a ImageSet) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            train,
            test,
            show_progress: false,
            stop_after: None,
            measure_every: 0,
            measure_images: 0,
        }
    }
}

/// The error of a run that diverged at `at`: the value, and the checkpoint it can go back to.
pub(crate) fn diverged(run_dir: &Path, at: &str, what: &str, value: f64) -> anyhow::Error {
    let back = match Checkpoint::find(run_dir) {
        Some(dir) => match checkpoint::read_state::<serde_json::Value>(&dir, "state") {
            Ok(s) => format!(
                "the last checkpoint, {} (step {}), is intact",
                dir.display(),
                s.get("step").and_then(|v| v.as_u64()).unwrap_or(0)
            ),
            Err(_) => format!("the last checkpoint is {}", dir.display()),
        },
        None => "no checkpoint was saved yet".to_string(),
    };
    anyhow::anyhow!(
        "training diverged: {what} became {value} at {at}; nothing was saved after it and {back}. \
         --resume would repeat the same steps: start a new run with a lower --lr"
    )
}

pub(crate) fn append_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(value)?)?;
    Ok(())
}

/// Train from `state` (fresh or resumed) until `state.recipe.epochs`; returns the last metrics.
pub fn fit<B: CrateAutodiff, T: Task<B>>(
    run: &TrainRun,
    task: &T,
    mut model: T::Model,
    mut optim: TrainOptimizer<T::Model, B>,
    mut state: TrainState,
    device: &B::Device,
) -> Result<Option<EpochMetrics>> {
    let recipe = state.recipe.clone();
    let n = run.train.len();
    let spe = recipe.steps_per_epoch(n);
    let total = spe * recipe.epochs;
    let warmup = ((recipe.warmup_epochs * spe as f64).round() as usize).min(total);
    let batcher = Batcher {
        norm: state.normalization.clone(),
        augment: recipe.augment,
    };
    let mut last = None;
    let stop_at = run
        .stop_after
        .map_or(recipe.epochs, |k| (state.epoch + k).min(recipe.epochs));
    while state.epoch < stop_at {
        let epoch = state.epoch;
        let order = epoch_order(n, recipe.seed, epoch);
        let bar = progress_bar(run.show_progress, spe as u64, epoch, recipe.epochs);
        bar.set_position(state.batch as u64);
        let t0 = Instant::now();
        // an epoch resumed after an interrupt carries the loss of its first batches
        let (mut loss_sum, mut seen) = (state.epoch_loss_sum, state.epoch_seen);
        let seen_before = seen;
        let mut lr = 0.0;
        while state.batch < spe {
            if INTERRUPTED.load(Ordering::SeqCst) {
                bar.abandon_with_message("interrupted: checkpoint saved");
                (state.epoch_loss_sum, state.epoch_seen) = (loss_sum, seen);
                task.save_checkpoint(&run.run_dir, &model, &optim, &state, None)?;
                anyhow::bail!(
                    "interrupted at epoch {} batch {}; resume with --resume",
                    epoch + 1,
                    state.batch
                );
            }
            let b = state.batch;
            let idx = &order[b * recipe.batch_size..((b + 1) * recipe.batch_size).min(n)];
            let mut rng = batch_rng(recipe.seed, epoch, b);
            let (x, y) = batcher.batch::<B>(run.train, idx, &mut rng, device);
            let at = Progress {
                epoch,
                step: state.step,
                steps_per_epoch: spe,
                total_steps: total,
            };
            let loss = task.loss(&model, x, y, &mut rng, at);
            let loss_val: f64 = loss.clone().into_scalar().elem();
            if !loss_val.is_finite() {
                bar.abandon();
                return Err(diverged(
                    &run.run_dir,
                    &format!(
                        "step {} (epoch {}, batch {})",
                        state.step,
                        epoch + 1,
                        state.batch
                    ),
                    "loss",
                    loss_val,
                ));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            lr = recipe.lr_at(state.step, warmup, total);
            if let Some(end) = recipe.weight_decay_end {
                let wd = recipe.optim.weight_decay;
                optim.set_weight_decay(schedule::cosine_scheduler(
                    wd, end, total, 0, 0.0, state.step,
                ));
            }
            model = optim.step(lr, model, grads);
            model = task.after_step(model, at);
            state.step += 1;
            state.batch += 1;
            loss_sum += loss_val * idx.len() as f64;
            seen += idx.len();
            let secs = t0.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} img/s",
                loss_sum / seen as f64,
                lr,
                (seen - seen_before) as f64 / secs
            ));
            bar.inc(1);
        }
        let train_secs = t0.elapsed().as_secs_f64();
        bar.finish_and_clear();
        state.epoch += 1;
        state.batch = 0;
        (state.epoch_loss_sum, state.epoch_seen) = (0.0, 0);
        let eval = task.evaluate(&model.valid(), run.test, &state.normalization, device)?;
        if !eval.loss.is_finite() && (task.has_eval_loss() || !eval.loss.is_nan()) {
            return Err(diverged(
                &run.run_dir,
                &format!("the end of epoch {} (step {})", state.epoch, state.step),
                "test loss",
                eval.loss,
            ));
        }
        let measures = if run.measure_every > 0 && state.epoch.is_multiple_of(run.measure_every) {
            task.measure(
                &model.valid(),
                run.test,
                &state.normalization,
                run.measure_images,
                device,
            )?
        } else {
            None
        };
        state.seconds += t0.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch: state.epoch,
            step: state.step,
            lr,
            train_loss: if seen > 0 {
                loss_sum / seen as f64
            } else {
                f64::NAN
            },
            test_loss: eval.loss,
            test_acc: eval.top1,
            test_top5: eval.top5,
            train_img_s: (seen - seen_before) as f64 / train_secs,
            seconds: state.seconds,
            measures,
            terms: task.epoch_terms(),
        };
        tracing::info!(
            "epoch {}/{}  train loss {:.4}  {}  {:.0} img/s  {:.0}s",
            m.epoch,
            recipe.epochs,
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
        task.save_checkpoint(&run.run_dir, &model, &optim, &state, Some(&m))?;
        last = Some(m);
    }
    Ok(last)
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

fn progress_bar(show: bool, len: u64, epoch: usize, epochs: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}

#[cfg(test)]
mod tests {
    use super::EpochMetrics;

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
}
