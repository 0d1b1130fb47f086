//! Language-model training with the crate-lm recipe shape: AdamW β = (0.9, 0.95), weight decay on
//! ≥ 2-D parameters only, linear warm-up then cosine to `min_lr`, gradient clipping, gradient
//! accumulation, periodic validation loss, atomic checkpoints and exact resume (batches are a pure
//! function of seed and iteration, like the learning rate).

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::checkpoint::{self, read_state, write_checkpoint, Checkpoint, RunLock};
use super::engine::{self, Cancel, Evaluation, Fitted, Job, PeriodStats, Position, RunOptions};
use super::resume::{same_json, ResumeCheck};
use super::{parallel, schedule, OptimSettings, OptimizerKind, TrainOptimizer};
use crate::model::lm::{cross_entropy, CausalLm, LmConfig};
use crate::model::{Arch, CrateAutodiff, CrateBackend};
use crate::text::{self, TokenFile, Tokenizer};
use crate::weights::lm_state_dict as official_state_dict;
use crate::weights::write_safetensors;
use crate::TrainBackend;
use burn::optim::GradientsParams;

/// The device of [`TrainBackend`], which [`train`] runs on.
pub(crate) type TrainDevice = burn::tensor::Device<TrainBackend>;

/// Everything that decides the trajectory of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmRecipe {
    pub max_iters: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    pub optim: OptimSettings,
    /// Validation loss every this many iterations (and at the end).
    pub eval_interval: usize,
    /// Batches per validation estimate.
    pub eval_iters: usize,
    pub seed: u64,
}

impl LmRecipe {
    /// Values training can run with; each error names the flag.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--max-iters", self.max_iters),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
            ("--eval-interval", self.eval_interval),
            ("--eval-iters", self.eval_iters),
        ] {
            ensure!(v > 0, "{flag} must be at least 1");
        }
        super::optim::check_lr(self.lr, self.min_lr)?;
        self.optim.validate()
    }
}

/// Where a run on a token stream stands (language models, CRATE-BERT), saved as `state.json`
/// next to the weights; `R` is the trainer's recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRunState<R> {
    pub recipe: R,
    pub tokenizer: Tokenizer,
    /// Optimizer steps taken.
    pub step: usize,
    /// Training seconds so far.
    pub seconds: f64,
    pub data: String,
    pub best_val_loss: Option<f64>,
    /// Loss sum and iterations since the last evaluation when interrupted, so the resumed
    /// interval's `train_loss` covers all of it.
    #[serde(default)]
    pub interval_loss_sum: f64,
    #[serde(default)]
    pub interval_steps: usize,
}

impl<R> TokenRunState<R> {
    /// A run that has not started, on the prepared tokens in `data`.
    pub fn fresh(recipe: R, tokenizer: Tokenizer, data: &Path) -> Self {
        Self {
            recipe,
            tokenizer,
            step: 0,
            seconds: 0.0,
            data: data.display().to_string(),
            best_val_loss: None,
            interval_loss_sum: 0.0,
            interval_steps: 0,
        }
    }
}

impl<R> TokenRunState<R> {
    /// The engine's position; the interval's loss is kept as the sum of per-step mean losses
    /// and the steps (`per_step` samples each), as runs have always saved it.
    pub fn position(&self, per_step: usize) -> Position {
        Position {
            step: self.step,
            seconds: self.seconds,
            period_loss_sum: self.interval_loss_sum * per_step as f64,
            period_seen: self.interval_steps * per_step,
        }
    }

    pub fn set_position(&mut self, p: Position, per_step: usize) {
        (self.step, self.seconds) = (p.step, p.seconds);
        self.interval_loss_sum = p.period_loss_sum / per_step.max(1) as f64;
        self.interval_steps = p.period_seen / per_step.max(1);
    }

    /// Keep the best validation loss.
    pub fn record_val_loss(&mut self, v: f64) {
        self.best_val_loss = Some(self.best_val_loss.map_or(v, |b| b.min(v)));
    }
}

pub type LmState = TokenRunState<LmRecipe>;

/// One validation point, as written to `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmMetrics {
    pub step: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

/// A run on token streams (language models, CRATE-BERT): the splits and the engine's options
/// (`stop_after` counts iterations; the schedule still spans `max_iters`).
pub struct TokenRun<'a> {
    pub options: RunOptions,
    pub train: &'a TokenFile,
    pub val: &'a TokenFile,
}

/// Random windows `(x, y)` of `t + 1` tokens: `y` is `x` shifted by one (`train.py::get_batch`).
pub fn get_batch<B: CrateBackend>(
    tokens: &TokenFile,
    b: usize,
    t: usize,
    rng: &mut StdRng,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    let span = tokens.len() - t;
    let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    for _ in 0..b {
        let start = rng.random_range(0..span);
        let w = tokens.window(start, t + 1);
        x.extend_from_slice(&w[..t]);
        y.extend_from_slice(&w[1..]);
    }
    let to = |v: Vec<i64>| Tensor::from_data(TensorData::new(v, [b, t]), device);
    (to(x), to(y))
}

/// The batch RNG of micro-batch `micro` of iteration `step`: batches are a pure function of
/// (seed, step), so a resumed run draws the same ones as a straight run.
pub fn step_rng(seed: u64, step: usize, micro: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((step as u64) << 16)
            .wrapping_add(micro as u64),
    )
}

/// Context length used for training: the model's block size, capped by the data.
pub fn context_len(config: &LmConfig, tokens: &TokenFile) -> Result<usize> {
    ensure!(
        tokens.len() >= 2,
        "{}: needs at least 2 tokens",
        tokens.path().display()
    );
    Ok(config.block_size.min(tokens.len() - 1))
}

/// Mean loss over `iters` batches drawn with a fixed seed (the same windows at every evaluation).
pub fn estimate_loss<B: CrateBackend>(
    model: &CausalLm<B>,
    tokens: &TokenFile,
    batch_size: usize,
    t: usize,
    iters: usize,
    device: &B::Device,
) -> f64 {
    let mut rng = StdRng::seed_from_u64(0xE7A1);
    let mut sum = 0.0;
    for _ in 0..iters.max(1) {
        let (x, y) = get_batch::<B>(tokens, batch_size, t, &mut rng, device);
        let l: f64 = cross_entropy(model.forward(x), y).into_scalar().elem();
        sum += l;
    }
    sum / iters.max(1) as f64
}

/// Mean next-token loss over consecutive windows covering every token of `tokens` once.
pub fn sequential_loss<B: CrateBackend>(
    model: &CausalLm<B>,
    tokens: &[i64],
    batch_size: usize,
    device: &B::Device,
) -> Result<(f64, usize)> {
    ensure!(tokens.len() >= 2, "need at least 2 tokens to score");
    let t = model.block_size;
    let starts: Vec<usize> = (0..tokens.len() - 1).step_by(t).collect();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in starts.chunks(batch_size.max(1)) {
        // windows of equal length per batch: the short tail window goes alone
        for group in
            chunk.chunk_by(|a, b| (tokens.len() - 1 - a).min(t) == (tokens.len() - 1 - b).min(t))
        {
            let n = (tokens.len() - 1 - group[0]).min(t);
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for &s in group {
                x.extend_from_slice(&tokens[s..s + n]);
                y.extend_from_slice(&tokens[s + 1..s + n + 1]);
            }
            let b = group.len();
            let xs = Tensor::from_data(TensorData::new(x, [b, n]), device);
            let ys = Tensor::from_data(TensorData::new(y, [b, n]), device);
            let l: f64 = cross_entropy(model.forward(xs), ys).into_scalar().elem();
            sum += l * (b * n) as f64;
            count += b * n;
        }
    }
    Ok((sum / count as f64, count))
}

/// Metadata of a whitebox language-model safetensors file (so `eval`/`generate` need nothing else).
pub fn lm_metadata(config: &LmConfig, tokenizer: &Tokenizer) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("config".to_string(), serde_json::to_string(config).unwrap()),
        (
            "tokenizer".to_string(),
            serde_json::to_string(tokenizer).unwrap(),
        ),
    ])
}

/// Save weights under official keys (tied `lm_head.weight` included) with metadata, atomically.
pub fn save_lm<B: CrateBackend>(
    path: &Path,
    config: &LmConfig,
    model: &CausalLm<B>,
    tokenizer: &Tokenizer,
) -> Result<()> {
    write_safetensors(
        path,
        &official_state_dict(model),
        Some(lm_metadata(config, tokenizer)),
    )
}

/// `<run>/checkpoint/`: `model.safetensors`, `config.json`, `state.json`, optimizer state.
pub fn save_checkpoint<B: CrateAutodiff>(
    run_dir: &Path,
    config: &LmConfig,
    model: &CausalLm<B>,
    optim: &TrainOptimizer<CausalLm<B>, B>,
    state: &LmState,
    metrics: Option<&LmMetrics>,
) -> Result<()> {
    write_checkpoint(run_dir, config, optim, state, metrics, |path| {
        save_lm(path, config, &model.valid(), &state.tokenizer)
    })
}

pub fn load_state(dir: &Path) -> Result<LmState> {
    read_state(dir, "language-model training state")
}

/// A language-model run ready for [`fit_lm`]: config, model, optimizer and state.
pub type LmRun<B> = (
    LmConfig,
    CausalLm<B>,
    TrainOptimizer<CausalLm<B>, B>,
    LmState,
);

/// A language-model run as its checkpoint folder `dir` saved it, ready for [`fit_lm`] to
/// continue it exactly.
pub fn restore<B: CrateAutodiff>(dir: &Path, device: &B::Device) -> Result<LmRun<B>> {
    let state = load_state(dir)?;
    let config = LmConfig::from_json_file(&dir.join("config.json"))?;
    let sd = crate::weights::read_state_dict(&dir.join("model.safetensors"))?;
    let model = crate::weights::load_official_lm(config.init::<B>(device), sd)?;
    let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model).load(dir, device)?;
    Ok((config, model, optim, state))
}

/// A fresh language-model run: the model initialised from `B::seed(recipe.seed)` with parameter
/// ids from its keys (so a resumed optimizer finds them again), its optimizer and state.
pub fn fresh<B: CrateAutodiff>(
    config: LmConfig,
    recipe: LmRecipe,
    tokenizer: Tokenizer,
    data: &Path,
    device: &B::Device,
) -> Result<LmRun<B>> {
    recipe.validate()?;
    B::seed(device, recipe.seed);
    let model = crate::weights::canonical_ids(config.init::<B>(device));
    let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
    Ok((
        config,
        model,
        optim,
        LmState::fresh(recipe, tokenizer, data),
    ))
}

/// A causal language model as a job of the engine: `grad_accum` micro-batches of random windows
/// per step ([`step_rng`]), validation every `eval_interval` iterations.
struct LmJob<'a, B: CrateAutodiff> {
    config: &'a LmConfig,
    train: &'a TokenFile,
    val: &'a TokenFile,
    state: LmState,
    /// Training and validation context lengths.
    t: usize,
    tv: usize,
    device: B::Device,
}

impl<B: CrateAutodiff> Job<B> for LmJob<'_, B> {
    type Model = CausalLm<B>;
    type Metrics = LmMetrics;

    fn position(&self) -> Position {
        let r = &self.state.recipe;
        self.state.position(r.batch_size * r.grad_accum)
    }
    fn set_position(&mut self, p: Position) {
        let r = &self.state.recipe;
        let per_step = r.batch_size * r.grad_accum;
        self.state.set_position(p, per_step);
    }
    fn total_steps(&self) -> usize {
        self.state.recipe.max_iters
    }
    fn period(&self) -> usize {
        self.state.recipe.eval_interval
    }
    fn micro_batches(&self) -> usize {
        self.state.recipe.grad_accum
    }
    fn lr(&self, step: usize) -> f64 {
        let r = &self.state.recipe;
        schedule::warmup_cosine(step, r.warmup_iters, r.max_iters, r.lr, r.min_lr)
    }
    fn loss(&mut self, model: &CausalLm<B>, step: usize, micro: usize) -> (Tensor<B, 1>, usize) {
        let r = &self.state.recipe;
        let mut rng = step_rng(r.seed, step, micro);
        let (x, y) = get_batch::<B>(self.train, r.batch_size, self.t, &mut rng, &self.device);
        (cross_entropy(model.forward(x), y), r.batch_size)
    }
    /// The batch's sequences over the cores ([`parallel::sequence_slices`]): the same batch as
    /// [`Job::loss`], its mean loss as a row-weighted sum of the slices' means.
    fn loss_and_grads(
        &mut self,
        model: &CausalLm<B>,
        step: usize,
    ) -> Option<(f64, GradientsParams, usize)> {
        let r = &self.state.recipe;
        let parts = parallel::sequence_slices(r.batch_size, self.t);
        if parts.len() < 2 {
            return None;
        }
        let mut rng = step_rng(r.seed, step, 0);
        let (x, y) = get_batch::<B>(self.train, r.batch_size, self.t, &mut rng, &self.device);
        let (loss, grads) = parallel::loss_and_grads(model, parts, |m, rows| {
            let rows = |t: Tensor<B, 2, Int>| t.narrow(0, rows.start, rows.len());
            cross_entropy(m.forward(rows(x.clone())), rows(y.clone()))
        });
        Some((loss, grads, r.batch_size))
    }
    fn describe_step(&self, step: usize) -> String {
        format!("iteration {step}")
    }
    fn bar_prefix(&self, step: usize) -> String {
        let r = &self.state.recipe;
        interval_prefix(step, r.eval_interval, r.max_iters)
    }
    fn unit(&self) -> (&'static str, usize) {
        ("tok", self.t)
    }
    fn evaluate(
        &mut self,
        model: &CausalLm<B>,
        step: usize,
        stats: &PeriodStats,
    ) -> Result<Evaluation<LmMetrics>> {
        let r = &self.state.recipe;
        let val_loss = estimate_loss(
            &model.valid(),
            self.val,
            r.batch_size,
            self.tv,
            r.eval_iters,
            &self.device,
        );
        let m = LmMetrics {
            step,
            lr: stats.lr,
            train_loss: stats.mean_loss(),
            val_loss,
            tokens_per_s: stats.rate() * self.t as f64,
            seconds: self.state.seconds,
        };
        tracing::info!(
            "iter {}/{}  train loss {:.4}  val loss {:.4}  {:.0} tok/s  {:.0}s",
            m.step,
            r.max_iters,
            m.train_loss,
            m.val_loss,
            m.tokens_per_s,
            m.seconds
        );
        self.state.record_val_loss(val_loss);
        Ok(Evaluation {
            metrics: m,
            diverged: (!val_loss.is_finite()).then_some(("validation loss", val_loss)),
        })
    }
    fn save(
        &self,
        run_dir: &Path,
        model: &CausalLm<B>,
        optim: &TrainOptimizer<CausalLm<B>, B>,
        metrics: Option<&LmMetrics>,
    ) -> Result<()> {
        save_checkpoint(run_dir, self.config, model, optim, &self.state, metrics)
    }
}

/// The progress bar's prefix for the evaluation interval holding `step`: "iter 251–500/2000".
pub(crate) fn interval_prefix(step: usize, interval: usize, max_iters: usize) -> String {
    let start = step - step % interval.max(1);
    let end = (start + interval).min(max_iters);
    format!("iter {}–{end}/{max_iters}", start + 1)
}

/// Train from `state` (fresh or resumed) until `recipe.max_iters`; returns the model and the last
/// validation point of this invocation.
pub fn fit_lm<B: CrateAutodiff>(
    run: &TokenRun,
    config: &LmConfig,
    model: CausalLm<B>,
    optim: TrainOptimizer<CausalLm<B>, B>,
    state: LmState,
    device: &B::Device,
) -> Result<Fitted<CausalLm<B>, LmMetrics>> {
    let r = &state.recipe;
    ensure!(
        r.batch_size > 0 && r.grad_accum > 0,
        "batch size and gradient accumulation must be positive"
    );
    let t = context_len(config, run.train)?;
    crate::alloc::check_fits(
        "this language-model run",
        config.train_step_bytes(r.batch_size, t),
        "--block-size or --batch-size",
    )?;
    let mut job = LmJob {
        config,
        train: run.train,
        val: run.val,
        t,
        tv: context_len(config, run.val)?,
        state,
        device: device.clone(),
    };
    engine::run(&mut job, model, optim, &run.options)
}

/// Where a run on token streams (`lm train`, `bert train`) reads and writes, and how this
/// invocation runs.
#[derive(Debug, Clone)]
pub struct TokenRunSettings {
    /// Prepared token folder (`text::prepare`); prepared from `corpus` when missing.
    pub data: PathBuf,
    /// Text file or folder tokenized at character level when `data` is missing.
    pub corpus: PathBuf,
    /// `checkpoint/`, `metrics.jsonl` and the final weights.
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir` from its last checkpoint.
    pub resume: bool,
    /// Start over in a `run_dir` that holds a run (its checkpoint and metrics are removed first).
    pub overwrite: bool,
    /// Ids of the settings given on the command line (clap ids: `weight_decay`); with `resume`
    /// each must equal the run's.
    pub given: Vec<String>,
    /// Stop this invocation after this many iterations (continue with `resume`).
    pub stop_after: Option<usize>,
    /// Stop once the run has trained this many seconds (validation and checkpoint first).
    pub max_seconds: Option<f64>,
    pub show_progress: bool,
    /// Once set, a checkpoint is saved at the next iteration and training stops.
    pub cancel: Cancel,
    /// GEMM arithmetic of the run (`model::bf16`); `None` keeps the process's setting.
    pub precision: Option<crate::model::bf16::Precision>,
}

impl TokenRunSettings {
    /// A fresh run in `run_dir` on `data` (prepared from `corpus`), quiet, with nothing given.
    pub fn new(data: &Path, corpus: &Path, run_dir: &Path) -> Self {
        Self {
            data: data.to_path_buf(),
            corpus: corpus.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            resume: false,
            overwrite: false,
            given: Vec::new(),
            stop_after: None,
            max_seconds: None,
            show_progress: false,
            cancel: Cancel::new(),
            precision: None,
        }
    }

    /// The engine's options: checkpoints in `run_dir`, progress, stops and cancellation as set.
    pub fn options(&self) -> RunOptions {
        RunOptions {
            show_progress: self.show_progress,
            stop_after: self.stop_after,
            max_seconds: self.max_seconds,
            cancel: self.cancel.clone(),
            precision: self.precision,
            ..RunOptions::in_dir(&self.run_dir)
        }
    }
}

/// The train and validation token files of `data`, their ids within `tokenizer`'s vocabulary.
pub fn open_splits(data: &Path, tokenizer: &Tokenizer) -> Result<(TokenFile, TokenFile)> {
    let train = TokenFile::open(&data.join("train.bin"))?;
    let val = TokenFile::open(&data.join("val.bin"))?;
    for f in [&train, &val] {
        f.check_vocab(tokenizer.vocab_size())?;
    }
    Ok((train, val))
}

/// The model of a language-model run: a preset or JSON config with its arch and sizes
/// overridden where given.
#[derive(Debug, Clone)]
pub struct LmModelSettings {
    /// Preset (`char`, `crate-1l`, `crate`, …) or JSON config file.
    pub config: String,
    pub arch: Option<Arch>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    pub block_size: Option<usize>,
}

impl Default for LmModelSettings {
    /// The character-level preset as it is.
    fn default() -> Self {
        Self {
            config: "char".into(),
            arch: None,
            n_layer: None,
            n_head: None,
            n_embd: None,
            block_size: None,
        }
    }
}

impl LmModelSettings {
    /// `c` with the arch and sizes that are given.
    fn apply(&self, mut c: LmConfig) -> LmConfig {
        c.arch = self.arch.unwrap_or(c.arch);
        c.n_layer = self.n_layer.unwrap_or(c.n_layer);
        c.n_head = self.n_head.unwrap_or(c.n_head);
        c.n_embd = self.n_embd.unwrap_or(c.n_embd);
        c.block_size = self.block_size.unwrap_or(c.block_size);
        c
    }

    /// The model of a fresh run on `tokenizer`'s vocabulary.
    pub fn config(&self, tokenizer: &Tokenizer) -> Result<LmConfig> {
        let mut c = self.apply(LmConfig::resolve(&self.config)?);
        c.vocab_size = tokenizer.vocab_size();
        c.validate()?;
        Ok(c)
    }

    /// Whether `config` with the given sizes is the model `run` (its arch and vocabulary aside).
    fn describes(&self, run: &LmConfig) -> bool {
        LmConfig::resolve(&self.config).is_ok_and(|p| {
            let mut p = self.apply(p);
            (p.arch, p.vocab_size) = (run.arch, run.vocab_size);
            same_json(&p, run)
        })
    }
}

/// The recipe of a language-model run as given: `min_lr` defaults to 10 % of `lr`,
/// `warmup_iters` is capped at `max_iters`, `clip_grad_norm` 0 is off.
#[derive(Debug, Clone)]
pub struct LmRecipeSettings {
    pub max_iters: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub min_lr: Option<f64>,
    pub warmup_iters: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub clip_grad_norm: f64,
    pub eval_interval: usize,
    pub eval_iters: usize,
    pub seed: u64,
}

impl LmRecipeSettings {
    /// `whitebox lm train`'s defaults.
    pub const DEFAULT: Self = Self {
        max_iters: 2000,
        batch_size: 32,
        grad_accum: 1,
        lr: 1e-3,
        min_lr: None,
        warmup_iters: 100,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        clip_grad_norm: 1.0,
        eval_interval: 250,
        eval_iters: 20,
        seed: 0,
    };
}

impl Default for LmRecipeSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl LmRecipeSettings {
    /// The recipe of a fresh run (checked when the run starts, by [`fresh`]).
    pub fn recipe(&self) -> Result<LmRecipe> {
        Ok(LmRecipe {
            max_iters: self.max_iters,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr / 10.0),
            warmup_iters: self.warmup_iters.min(self.max_iters),
            optim: OptimSettings {
                kind: OptimizerKind::Adamw,
                weight_decay: self.weight_decay,
                beta1: self.beta1,
                beta2: self.beta2,
                // LayerNorm weights and biases are the only < 2-D parameters: decay ≥ 2-D only
                no_decay_norm_bias: true,
                clip_grad_norm: super::optim::clip_setting(self.clip_grad_norm)?,
            },
            eval_interval: self.eval_interval,
            eval_iters: self.eval_iters,
            seed: self.seed,
        })
    }
}

/// A language-model run (`whitebox lm train`): where, which model, which recipe.
#[derive(Debug, Clone)]
pub struct LmTrainSettings {
    pub run: TokenRunSettings,
    pub model: LmModelSettings,
    pub recipe: LmRecipeSettings,
}

/// The end of [`train`]: the last validation point of this invocation (`None` when it reached
/// none) and the final weights, `run_dir/model.safetensors`.
#[derive(Debug, Clone)]
pub struct LmOutcome {
    /// The last evaluation of this invocation (`None` when it stopped before one).
    pub last: Option<LmMetrics>,
    /// Iterations the run has taken.
    pub steps: usize,
    pub weights: PathBuf,
}

impl LmTrainSettings {
    /// `--resume`: every setting given must equal the run's (its config and state). The wanted
    /// settings are a fresh run's; the model's fields are the run's with the given ones set.
    pub fn check_resume(&self, run_config: &LmConfig, run: &LmState) -> Result<()> {
        let mut recipe = self.recipe.recipe()?;
        // the run's own max_iters capped --warmup-iters when it started
        recipe.warmup_iters = self.recipe.warmup_iters.min(run.recipe.max_iters);
        let wanted = LmState::fresh(recipe, run.tokenizer.clone(), &self.run.data);
        ResumeCheck::new(&self.run.given)
            .fields(&self.model.apply(run_config.clone()), run_config, &[])
            .fields(&wanted, run, &[])
            .model(&self.model.config, || self.model.describes(run_config))
            .check(&self.run.run_dir)
    }

    /// The run in `run_dir` from its last checkpoint, on data of the run's tokenizer, checked
    /// against the settings given.
    fn resume(&self, tokenizer: &Tokenizer, device: &TrainDevice) -> Result<LmRun<TrainBackend>> {
        let dir = checkpoint::resume_dir(&self.run.run_dir)?;
        let (config, model, optim, state) = restore::<TrainBackend>(&dir, device)?;
        ensure!(
            state.tokenizer == *tokenizer,
            "--resume: {} was prepared with another tokenizer than the run",
            self.run.data.display()
        );
        self.check_resume(&config, &state)?;
        tracing::info!(
            "resuming {} at iteration {}",
            self.run.run_dir.display(),
            state.step
        );
        Ok((config, model, optim, state))
    }

    /// A fresh run on `tokenizer`'s data; `run_dir` must not hold one unless `overwrite`.
    fn start(&self, tokenizer: &Tokenizer, device: &TrainDevice) -> Result<LmRun<TrainBackend>> {
        let config = self.model.config(tokenizer)?;
        let recipe = self.recipe.recipe()?;
        let run = fresh::<TrainBackend>(config, recipe, tokenizer.clone(), &self.run.data, device)?;
        checkpoint::start_fresh(&self.run.run_dir, self.run.overwrite)?;
        Ok(run)
    }
}

/// `whitebox lm train`: prepare the data when missing, resume the run in `run_dir` or start it,
/// train it with [`fit_lm`] and copy its final weights to `run_dir/model.safetensors`.
pub fn train(s: &LmTrainSettings) -> Result<LmOutcome> {
    let device = TrainDevice::default();
    let run_dir = &s.run.run_dir;
    text::prepare_missing(&s.run.data, &s.run.corpus)?;
    let meta = text::read_meta(&s.run.data)?;
    let (train_tokens, val_tokens) = open_splits(&s.run.data, &meta.tokenizer)?;
    ensure!(
        val_tokens.len() >= 2,
        "{}: the validation split is empty; prepare with a larger --val-fraction",
        s.run.data.display()
    );
    let _lock = RunLock::acquire(run_dir)?;
    let (config, model, optim, state) = if s.run.resume {
        s.resume(&meta.tokenizer, &device)?
    } else {
        s.start(&meta.tokenizer, &device)?
    };
    tracing::info!(
        "{}: {} layers, {} heads, d {}, context {}, vocabulary {}, {} parameters; {} train tokens",
        config.arch,
        config.n_layer,
        config.n_head,
        config.n_embd,
        config.block_size,
        config.vocab_size,
        config.param_count(),
        train_tokens.len()
    );
    let run = TokenRun {
        options: s.run.options(),
        train: &train_tokens,
        val: &val_tokens,
    };
    let fitted = fit_lm(&run, &config, model, optim, state, &device)?;
    let (last, steps) = (fitted.last, fitted.step);
    let weights = run_dir.join("model.safetensors");
    if let Some(dir) = Checkpoint::find(run_dir) {
        std::fs::copy(dir.join("model.safetensors"), &weights)?;
    }
    Ok(LmOutcome {
        last,
        steps,
        weights,
    })
}
