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
use std::path::Path;

use super::checkpoint::{read_state, write_checkpoint};
use super::engine::{self, Evaluation, Fitted, Job, PeriodStats, Position, RunOptions};
use super::{schedule, OptimSettings, TrainOptimizer};
use crate::model::lm::{cross_entropy, official_state_dict, CausalLm, LmConfig};
use crate::model::{CrateAutodiff, CrateBackend};
use crate::text::{TokenFile, Tokenizer};
use crate::weights::write_safetensors;

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
    let model = crate::model::lm::load_official(config.init::<B>(device), sd)?;
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
    let mut job = LmJob {
        config,
        train: run.train,
        val: run.val,
        t: context_len(config, run.train)?,
        tv: context_len(config, run.val)?,
        state,
        device: device.clone(),
    };
    engine::run(&mut job, model, optim, &run.options)
}
