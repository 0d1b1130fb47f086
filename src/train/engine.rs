//! The one training engine: a step-based loop that every trainer runs on (image classifiers, MAE,
//! ToST, DINO/SimDINO through [`super::fit`]; the causal LM, CRATE-BERT and the linear probe).
//!
//! A [`Job`] says what one step computes (the loss of a micro-batch drawn for that step, so
//! batches are a pure function of the step and a resumed run sees the straight run's batches),
//! the learning rate of each step, where the evaluation periods end (an epoch, an
//! `--eval-interval`), how to evaluate and how to save. The engine owns the rest: gradient
//! accumulation, the gradient hook ([`GradSync`]), clipping and parameter groups (through
//! [`TrainOptimizer`]), the evaluation cadence, NaN/Inf detection, `metrics.jsonl`, the progress
//! bar, atomic checkpoints in the run folder and cancellation ([`Cancel`]).

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{ElementConversion, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::checkpoint::{self, Checkpoint, METRICS};
use super::TrainOptimizer;
use crate::model::bf16::{Precision, PrecisionScope};
use crate::model::CrateAutodiff;

/// A cancellation handle: clones share one flag; the engine saves a checkpoint at the next step
/// once it is set and stops with "interrupted at …; resume with --resume".
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A handle nothing sets but [`Cancel::cancel`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle that Ctrl-C, SIGTERM and SIGHUP set (`kill PID` behaves like Ctrl-C; only
    /// `kill -9` loses the steps since the last checkpoint). The signal handler is installed once
    /// per process; every call returns a clone of the same handle.
    pub fn on_signals() -> Self {
        static SIGNALS: OnceLock<Cancel> = OnceLock::new();
        SIGNALS
            .get_or_init(|| {
                let c = Cancel::new();
                let set = c.clone();
                if let Err(e) = ctrlc::set_handler(move || set.cancel()) {
                    tracing::warn!("cannot catch Ctrl-C ({e}); an interrupt loses the run's steps since its last checkpoint");
                }
                c
            })
            .clone()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Where a data-parallel gradient all-reduce goes: the engine hands every step's gradients
/// (after accumulation, before clipping and the update) to this hook. With burn 0.21's
/// `distributed` feature (`DistributedBackend`, NCCL on CUDA) an implementation averages them over
/// the workers, each of which draws its own micro-batches; [`LocalSync`] (one process) keeps them.
pub trait GradSync {
    fn all_reduce(&self, grads: GradientsParams) -> GradientsParams;
}

/// One process, one replica: the gradients are already the global ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalSync;

impl GradSync for LocalSync {
    fn all_reduce(&self, grads: GradientsParams) -> GradientsParams {
        grads
    }
}

/// How the engine runs a job: where it writes, when it stops, what cancels it.
#[derive(Clone)]
pub struct RunOptions {
    /// Checkpoints and `metrics.jsonl` go here (the caller holds its [`checkpoint::RunLock`]);
    /// `None`: nothing is written (a library fit that only wants the trained model).
    pub run_dir: Option<PathBuf>,
    pub show_progress: bool,
    /// Return after this many of the job's units (epochs; iterations) of this invocation.
    pub stop_after: Option<usize>,
    /// Stop once the run has spent this many seconds in steps and evaluations (an evaluation and
    /// a checkpoint come first).
    pub max_seconds: Option<f64>,
    pub cancel: Cancel,
    pub grad_sync: Arc<dyn GradSync + Send + Sync>,
    /// The mixed-precision policy of the run's GEMMs (`model::bf16`: f32 master weights and
    /// optimizer state, bf16 GEMM inputs with f32 accumulation), set for the run and restored
    /// after it; `None` keeps the process's setting.
    pub precision: Option<Precision>,
    /// Called with each period's metrics line once its checkpoint is written; `false` ends this
    /// invocation there, as a `stop_after` would (a library caller's progress callback).
    pub on_period: Option<PeriodHook>,
}

/// See [`RunOptions::on_period`].
pub type PeriodHook = Arc<dyn Fn(&serde_json::Value) -> bool + Send + Sync>;

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            run_dir: None,
            show_progress: false,
            stop_after: None,
            max_seconds: None,
            cancel: Cancel::new(),
            grad_sync: Arc::new(LocalSync),
            precision: None,
            on_period: None,
        }
    }
}

impl RunOptions {
    /// Checkpoints in `run_dir`; no progress bar, no stop, a cancel handle nothing sets.
    pub fn in_dir(run_dir: &Path) -> Self {
        Self {
            run_dir: Some(run_dir.to_path_buf()),
            ..Self::default()
        }
    }
}

/// Where a run stands, as the engine counts it; each job keeps it in its own `state.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Position {
    /// Optimizer steps taken.
    pub step: usize,
    /// Seconds spent in steps and evaluations so far.
    pub seconds: f64,
    /// Σ loss × samples and the samples of the current period's steps so far (an interrupted
    /// period's mean then covers the whole period).
    pub period_loss_sum: f64,
    pub period_seen: usize,
}

/// The steps of one evaluation period, for the metrics line.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeriodStats {
    /// Σ loss × samples and samples over the whole period (an interrupted part included).
    pub loss_sum: f64,
    pub seen: usize,
    /// The last micro-batch's loss and the last step's learning rate.
    pub last_loss: f64,
    pub lr: f64,
    /// Samples and seconds of the period's steps in this invocation (throughput).
    pub new_samples: usize,
    pub train_secs: f64,
}

impl PeriodStats {
    /// The period's mean training loss (NaN without steps).
    pub fn mean_loss(&self) -> f64 {
        if self.seen > 0 {
            self.loss_sum / self.seen as f64
        } else {
            f64::NAN
        }
    }

    fn add_step(&mut self, loss_sum: f64, seen: usize, lr: f64, secs: f64) {
        self.loss_sum += loss_sum;
        self.seen += seen;
        self.last_loss = loss_sum / seen.max(1) as f64;
        self.lr = lr;
        self.new_samples += seen;
        self.train_secs += secs;
    }

    /// Samples per second of this invocation's steps.
    pub fn rate(&self) -> f64 {
        self.new_samples as f64 / self.train_secs
    }
}

/// An evaluation at the end of a period: the metrics line and, when the evaluation found a
/// non-finite value, its name and value (the run stops as diverged).
pub struct Evaluation<M> {
    pub metrics: M,
    pub diverged: Option<(&'static str, f64)>,
}

/// What the engine trains.
pub trait Job<B: CrateAutodiff> {
    type Model: AutodiffModule<B>;
    /// One line of `metrics.jsonl`.
    type Metrics: Serialize;

    fn position(&self) -> Position;
    fn set_position(&mut self, p: Position);
    /// Optimizer steps of the whole run (the schedule spans them).
    fn total_steps(&self) -> usize;
    /// Steps per evaluation period (an epoch; an `--eval-interval`).
    fn period(&self) -> usize;
    /// The step at which an invocation that starts at `step` stops after `n` units.
    fn stop_step(&self, step: usize, n: usize) -> usize {
        step + n
    }
    /// Micro-batches per optimizer step (gradient accumulation).
    fn micro_batches(&self) -> usize {
        1
    }
    fn lr(&self, step: usize) -> f64;
    /// Adjust the optimizer before step `step` (e.g. a weight-decay schedule).
    fn before_step(&self, _optim: &mut TrainOptimizer<Self::Model, B>, _step: usize) {}
    /// Loss of micro-batch `micro` of step `step` and the samples it holds; its data and any
    /// randomness come from generators seeded by (step, micro), so a resumed run repeats them.
    fn loss(&mut self, model: &Self::Model, step: usize, micro: usize) -> (Tensor<B, 1>, usize);
    /// Loss value, gradients and samples of step `step` (one micro-batch), where the job computes
    /// them itself — the classifier cuts its batch over the cores ([`super::parallel`]); None =
    /// [`Job::loss`] and one backward pass.
    fn loss_and_grads(
        &mut self,
        _model: &Self::Model,
        _step: usize,
    ) -> Option<(f64, GradientsParams, usize)> {
        None
    }
    /// The model after step `step`'s update (self-distillation's EMA teacher).
    fn after_step(&mut self, model: Self::Model, _step: usize) -> Self::Model {
        model
    }
    /// Step `step` in the job's words ("epoch 1 batch 3", "iteration 12").
    fn describe_step(&self, step: usize) -> String;
    /// The end of the period that step `step` (1-based count) closes, for messages.
    fn describe_end(&self, step: usize) -> String {
        self.describe_step(step)
    }
    /// The progress bar's prefix for the period holding step `step` ("epoch 2/10").
    fn bar_prefix(&self, step: usize) -> String;
    /// Name of a sample in the throughput shown (`img`, `tok`) and its count per sample.
    fn unit(&self) -> (&'static str, usize) {
        ("sample", 1)
    }
    /// A metrics line before the first step of a fresh run (e.g. the initial validation loss).
    fn initial(&mut self, _model: &Self::Model) -> Result<Option<Self::Metrics>> {
        Ok(None)
    }
    /// Evaluate after step `step` (the end of a period, of the invocation or of the time); the
    /// job's position is already `step`, with the period's seconds.
    fn evaluate(
        &mut self,
        model: &Self::Model,
        step: usize,
        stats: &PeriodStats,
    ) -> Result<Evaluation<Self::Metrics>>;
    /// Write the checkpoint folder with `metrics` appended (`None` after an interrupt).
    fn save(
        &self,
        run_dir: &Path,
        model: &Self::Model,
        optim: &TrainOptimizer<Self::Model, B>,
        metrics: Option<&Self::Metrics>,
    ) -> Result<()>;
}

/// What a fit gives back: the trained model, the last metrics line of this invocation and the
/// steps the run has taken.
#[derive(Debug)]
pub struct Fitted<M, X> {
    pub model: M,
    pub last: Option<X>,
    pub step: usize,
}

/// The error of a run that diverged at `at`: the value, and the checkpoint it can go back to.
pub fn diverged(run_dir: Option<&Path>, at: &str, what: &str, value: f64) -> anyhow::Error {
    let back = match run_dir.and_then(Checkpoint::find) {
        Some(dir) => match checkpoint::read_state::<serde_json::Value>(&dir, "state") {
            Ok(s) => format!(
                "the last checkpoint, {} (step {}), is intact",
                dir.display(),
                s.get("step").and_then(|v| v.as_u64()).unwrap_or(0)
            ),
            Err(_) => format!("the last checkpoint is {}", dir.display()),
        },
        None if run_dir.is_none() => "the run has no folder to go back to".to_string(),
        None => "no checkpoint was saved yet".to_string(),
    };
    anyhow::anyhow!(
        "training diverged: {what} became {value} at {at}; nothing was saved after it and {back}. \
         --resume would repeat the same steps: start a new run with a lower --lr"
    )
}

/// Run `job` from its position until its last step (or the stop, the time limit, a cancel).
pub fn run<B: CrateAutodiff, J: Job<B>>(
    job: &mut J,
    mut model: J::Model,
    mut optim: TrainOptimizer<J::Model, B>,
    opts: &RunOptions,
) -> Result<Fitted<J::Model, J::Metrics>> {
    let run_dir = opts.run_dir.as_deref();
    let _precision = opts.precision.map(PrecisionScope::set).transpose()?;
    let mut pos = job.position();
    let (total, period) = (job.total_steps(), job.period().max(1));
    let stop = opts
        .stop_after
        .map_or(total, |n| job.stop_step(pos.step, n).min(total));
    let mut last = initial_metrics(job, &model, pos.step, run_dir)?;
    let clock = Clock::start(pos.seconds);
    let mut stats = PeriodStats {
        loss_sum: pos.period_loss_sum,
        seen: pos.period_seen,
        ..Default::default()
    };
    let mut bar = None;
    while pos.step < stop {
        let b = bar
            .get_or_insert_with(|| period_bar(job, opts.show_progress, pos.step, period, total))
            .clone();
        if opts.cancel.is_cancelled() {
            b.abandon_with_message("interrupted: checkpoint saved");
            (pos.period_loss_sum, pos.period_seen) = (stats.loss_sum, stats.seen);
            return Err(interrupted(job, &model, &optim, pos, run_dir));
        }
        let ts = Instant::now();
        let (loss_sum, seen, lr);
        (model, loss_sum, seen, lr) =
            train_step(job, model, &mut optim, pos.step, opts).inspect_err(|_| b.abandon())?;
        pos.step += 1;
        pos.seconds = clock.seconds();
        stats.add_step(loss_sum, seen, lr, ts.elapsed().as_secs_f64());
        show_step(job, &b, &stats);
        let out_of_time = opts.max_seconds.is_some_and(|m| pos.seconds >= m);
        let period_ends = pos.step.is_multiple_of(period) || pos.step == total;
        if pos.step == stop && !period_ends && !out_of_time {
            // a stop between evaluations (`--stop-after` in iterations): checkpoint the period
            // so far, as an interrupt does, so that the resumed run writes the straight run's
            // metrics lines
            b.finish_and_clear();
            bar = None;
            (pos.period_loss_sum, pos.period_seen) = (stats.loss_sum, stats.seen);
            job.set_position(pos);
            if let Some(dir) = run_dir {
                job.save(dir, &model, &optim, None)?;
            }
            break;
        }
        if period_ends || out_of_time {
            b.finish_and_clear();
            bar = None;
            let m = end_period(job, &model, &optim, &mut pos, &stats, &clock, run_dir)?;
            let go_on = opts
                .on_period
                .as_ref()
                .is_none_or(|hook| serde_json::to_value(&m).map_or(true, |line| hook(&line)));
            last = Some(m);
            stats = PeriodStats::default();
            if !go_on {
                break;
            }
        }
        if out_of_time {
            break;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    job.set_position(pos);
    Ok(Fitted {
        model,
        last,
        step: pos.step,
    })
}

/// The run's seconds: those before this invocation plus the time since it started.
struct Clock {
    start: Instant,
    before: f64,
}

impl Clock {
    fn start(before: f64) -> Self {
        Self {
            start: Instant::now(),
            before,
        }
    }
    fn seconds(&self) -> f64 {
        self.before + self.start.elapsed().as_secs_f64()
    }
}

/// The job's metrics line before the first step of a fresh run, appended to `metrics.jsonl`.
fn initial_metrics<B: CrateAutodiff, J: Job<B>>(
    job: &mut J,
    model: &J::Model,
    step: usize,
    run_dir: Option<&Path>,
) -> Result<Option<J::Metrics>> {
    if step > 0 {
        return Ok(None);
    }
    let m = job.initial(model)?;
    if let (Some(m), Some(dir)) = (&m, run_dir) {
        std::fs::create_dir_all(dir)?;
        super::append_jsonl(&dir.join(METRICS), m)?;
    }
    Ok(m)
}

/// Save the run as it stands at `pos` (mid-period) and the error that says so.
fn interrupted<B: CrateAutodiff, J: Job<B>>(
    job: &mut J,
    model: &J::Model,
    optim: &TrainOptimizer<J::Model, B>,
    pos: Position,
    run_dir: Option<&Path>,
) -> anyhow::Error {
    job.set_position(pos);
    if let Some(dir) = run_dir {
        if let Err(e) = job.save(dir, model, optim, None) {
            return e.context("interrupted, and the checkpoint could not be saved");
        }
    }
    anyhow::anyhow!(
        "interrupted at {}; resume with --resume",
        job.describe_step(pos.step)
    )
}

/// One optimizer step: the gradients of its micro-batches, the update at the step's learning
/// rate, the job's after-step; returns the model, Σ loss × samples, the samples and the rate.
fn train_step<B: CrateAutodiff, J: Job<B>>(
    job: &mut J,
    model: J::Model,
    optim: &mut TrainOptimizer<J::Model, B>,
    step: usize,
    opts: &RunOptions,
) -> Result<(J::Model, f64, usize, f64)> {
    let (grads, loss_sum, seen) =
        step_gradients(job, &model, step, opts).map_err(|(what, v)| {
            diverged(opts.run_dir.as_deref(), &job.describe_step(step), what, v)
        })?;
    job.before_step(optim, step);
    let lr = job.lr(step);
    let model = optim.step(lr, model, grads);
    Ok((job.after_step(model, step), loss_sum, seen, lr))
}

fn show_step<B: CrateAutodiff, J: Job<B>>(job: &J, bar: &indicatif::ProgressBar, s: &PeriodStats) {
    let (unit, per) = job.unit();
    bar.set_message(format!(
        "loss {:.4}  lr {:.2e}  {:.0} {unit}/s",
        s.mean_loss(),
        s.lr,
        s.rate() * per as f64
    ));
    bar.inc(1);
}

/// Evaluate at the end of a period (a non-finite value stops the run as diverged), then save
/// the checkpoint with the metrics line; returns the line.
fn end_period<B: CrateAutodiff, J: Job<B>>(
    job: &mut J,
    model: &J::Model,
    optim: &TrainOptimizer<J::Model, B>,
    pos: &mut Position,
    stats: &PeriodStats,
    clock: &Clock,
    run_dir: Option<&Path>,
) -> Result<J::Metrics> {
    (pos.period_loss_sum, pos.period_seen) = (0.0, 0);
    job.set_position(*pos);
    let e = job.evaluate(model, pos.step, stats)?;
    if let Some((what, v)) = e.diverged {
        return Err(diverged(run_dir, &job.describe_end(pos.step), what, v));
    }
    pos.seconds = clock.seconds();
    job.set_position(*pos);
    if let Some(dir) = run_dir {
        job.save(dir, model, optim, Some(&e.metrics))?;
    }
    Ok(e.metrics)
}

/// The gradients of step `step` (its micro-batches accumulated, then [`GradSync`]) with Σ loss ×
/// samples and the samples; a non-finite micro-batch loss is returned as `("loss", value)`.
/// A job's own split of the step over the cores is [`Job::loss_and_grads`]; gradients of
/// several devices meet in [`GradSync`].
fn step_gradients<B: CrateAutodiff, J: Job<B>>(
    job: &mut J,
    model: &J::Model,
    step: usize,
    opts: &RunOptions,
) -> std::result::Result<(GradientsParams, f64, usize), (&'static str, f64)> {
    let n = job.micro_batches().max(1);
    if n == 1 {
        if let Some((l, grads, samples)) = job.loss_and_grads(model, step) {
            if !l.is_finite() {
                return Err(("loss", l));
            }
            return Ok((
                opts.grad_sync.all_reduce(grads),
                l * samples as f64,
                samples,
            ));
        }
    }
    let (mut loss_sum, mut seen) = (0.0, 0);
    let mut acc = GradientsAccumulator::<J::Model>::new();
    let mut single = None;
    for micro in 0..n {
        let (loss, samples) = job.loss(model, step, micro);
        let l: f64 = loss.clone().into_scalar().elem();
        if !l.is_finite() {
            return Err(("loss", l));
        }
        loss_sum += l * samples as f64;
        seen += samples;
        if n == 1 {
            single = Some(GradientsParams::from_grads(loss.backward(), model));
        } else {
            let grads = loss.div_scalar(n as f64).backward();
            acc.accumulate(model, GradientsParams::from_grads(grads, model));
        }
    }
    let grads = single.unwrap_or_else(|| acc.grads());
    Ok((opts.grad_sync.all_reduce(grads), loss_sum, seen))
}

/// The progress bar of the period holding step `step` (hidden without `show`).
fn period_bar<B: CrateAutodiff, J: Job<B>>(
    job: &J,
    show: bool,
    step: usize,
    period: usize,
    total: usize,
) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let start = step - step % period;
    let bar = indicatif::ProgressBar::new(period.min(total - start) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_prefix(job.bar_prefix(step));
    bar.set_position((step - start) as u64);
    bar
}
