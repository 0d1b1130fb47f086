//! Language-model training with the crate-lm recipe shape: AdamW β = (0.9, 0.95), weight decay on
//! ≥ 2-D parameters only, linear warm-up then cosine to `min_lr`, gradient clipping, gradient
//! accumulation, periodic validation loss, atomic checkpoints and exact resume (batches are a pure
//! function of seed and iteration, like the learning rate).

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::checkpoint::{read_state, write_checkpoint};
use super::{schedule, OptimSettings, TrainOptimizer, INTERRUPTED};
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

pub struct TokenRun<'a> {
    pub run_dir: PathBuf,
    pub train: &'a TokenFile,
    pub val: &'a TokenFile,
    pub show_progress: bool,
    /// Return after this many iterations of this invocation (the schedule still spans max_iters).
    pub stop_after: Option<usize>,
    /// Stop once the run reaches this many seconds (the LM loop counts training time, the
    /// BERT loop the whole run, evaluations included).
    pub max_seconds: Option<f64>,
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

/// Train from `state` (fresh or resumed) until `recipe.max_iters`; returns the last validation point.
pub fn fit_lm<B: CrateAutodiff>(
    run: &TokenRun,
    config: &LmConfig,
    mut model: CausalLm<B>,
    mut optim: TrainOptimizer<CausalLm<B>, B>,
    mut state: LmState,
    device: &B::Device,
) -> Result<Option<LmMetrics>> {
    let r = state.recipe.clone();
    ensure!(
        r.batch_size > 0 && r.grad_accum > 0,
        "batch size and gradient accumulation must be positive"
    );
    let t = context_len(config, run.train)?;
    let tv = context_len(config, run.val)?;
    let stop_at = run
        .stop_after
        .map_or(r.max_iters, |k| (state.step + k).min(r.max_iters));
    let bar = progress_bar(run.show_progress, r.max_iters as u64);
    bar.set_position(state.step as u64);
    // an interval resumed after an interrupt carries the loss of its first iterations
    let (mut loss_sum, mut loss_n, mut tokens) = (state.interval_loss_sum, state.interval_steps, 0);
    let mut t0 = Instant::now();
    let mut secs_at_t0 = state.seconds;
    let mut last = None;
    while state.step < stop_at {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bar.abandon_with_message("interrupted: checkpoint saved");
            (state.interval_loss_sum, state.interval_steps) = (loss_sum, loss_n);
            save_checkpoint(&run.run_dir, config, &model, &optim, &state, None)?;
            anyhow::bail!(
                "interrupted at iteration {}; resume with --resume",
                state.step
            );
        }
        let mut acc = GradientsAccumulator::<CausalLm<B>>::new();
        let mut step_loss = 0.0;
        for micro in 0..r.grad_accum {
            let mut rng = step_rng(r.seed, state.step, micro);
            let (x, y) = get_batch::<B>(run.train, r.batch_size, t, &mut rng, device);
            let loss = cross_entropy(model.forward(x), y);
            let l: f64 = loss.clone().into_scalar().elem();
            if !l.is_finite() {
                bar.abandon();
                let at = format!("iteration {}", state.step);
                return Err(super::diverged(&run.run_dir, &at, "loss", l));
            }
            step_loss += l / r.grad_accum as f64;
            let grads = loss.div_scalar(r.grad_accum as f64).backward();
            acc.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        let lr = schedule::warmup_cosine(state.step, r.warmup_iters, r.max_iters, r.lr, r.min_lr);
        model = optim.step(lr, model, acc.grads());
        state.step += 1;
        state.seconds = secs_at_t0 + t0.elapsed().as_secs_f64();
        loss_sum += step_loss;
        loss_n += 1;
        tokens += r.batch_size * r.grad_accum * t;
        let tok_s = tokens as f64 / t0.elapsed().as_secs_f64();
        bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s",
            loss_sum / loss_n as f64,
            lr,
            tok_s
        ));
        bar.inc(1);
        let out_of_time = run.max_seconds.is_some_and(|m| state.seconds >= m);
        let end = state.step == stop_at || out_of_time;
        if state.step.is_multiple_of(r.eval_interval.max(1)) || end {
            let val_loss = estimate_loss(
                &model.valid(),
                run.val,
                r.batch_size,
                tv,
                r.eval_iters,
                device,
            );
            let m = LmMetrics {
                step: state.step,
                lr,
                train_loss: loss_sum / loss_n as f64,
                val_loss,
                tokens_per_s: tok_s,
                seconds: state.seconds,
            };
            bar.suspend(|| {
                tracing::info!(
                    "iter {}/{}  train loss {:.4}  val loss {:.4}  {:.0} tok/s  {:.0}s",
                    m.step,
                    r.max_iters,
                    m.train_loss,
                    m.val_loss,
                    m.tokens_per_s,
                    m.seconds
                )
            });
            if !val_loss.is_finite() {
                let at = format!("iteration {}", state.step);
                return Err(super::diverged(
                    &run.run_dir,
                    &at,
                    "validation loss",
                    val_loss,
                ));
            }
            state.best_val_loss = Some(state.best_val_loss.map_or(val_loss, |b| b.min(val_loss)));
            (state.interval_loss_sum, state.interval_steps) = (0.0, 0);
            save_checkpoint(&run.run_dir, config, &model, &optim, &state, Some(&m))?;
            last = Some(m);
            // evaluation and saving are not training time
            (loss_sum, loss_n, tokens) = (0.0, 0, 0);
            t0 = Instant::now();
            secs_at_t0 = state.seconds;
        }
        if out_of_time {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(last)
}

pub(crate) fn progress_bar(show: bool, len: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "iter [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar
}
