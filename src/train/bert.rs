//! Masked-LM pre-training of CRATE-BERT on a character stream: AdamW, weight decay on ≥ 2-D
//! parameters only, linear warm-up then cosine, gradient clipping, periodic validation loss, atomic
//! checkpoints and exact resume (each iteration's windows *and* masks are a pure function of seed
//! and iteration, like the learning rate). State and checkpoint layout are the language model's.
//!
//! Character ids are shifted by 3 to make room for RoBERTa's specials: 0 `<s>`, 1 `<pad>` (the
//! padding offset of the positions), 2 `<mask>`.

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::checkpoint::{read_state, write_checkpoint};
use super::lm::{progress_bar, step_rng, TokenRun, TokenRunState};
use super::{append_jsonl, schedule, OptimSettings, TrainOptimizer, INTERRUPTED};
use crate::model::bert::{mask_tokens, BertConfig, CrateBert};
use crate::model::{CrateAutodiff, CrateBackend};
use crate::text::{TokenFile, Tokenizer};
use crate::weights::{collect_state_dict, write_safetensors};

/// Ids of RoBERTa's special tokens; characters start at [`FIRST_CHAR`].
pub const PAD: i64 = 1;
pub const MASK: i64 = 2;
pub const FIRST_CHAR: i64 = 3;
const SPECIAL: [i64; 3] = [0, PAD, MASK];

/// Everything that decides the trajectory of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertRecipe {
    pub max_iters: usize,
    pub batch_size: usize,
    /// Tokens per training sequence.
    pub seq_len: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    pub optim: OptimSettings,
    /// Fraction of tokens chosen for the loss.
    pub mask_rate: f64,
    /// Validation loss every this many iterations (and at the end).
    pub eval_interval: usize,
    /// Batches per validation estimate.
    pub eval_iters: usize,
    pub seed: u64,
}

impl BertRecipe {
    /// Values training can run with; each error names the flag.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--max-iters", self.max_iters),
            ("--batch-size", self.batch_size),
            ("--seq-len", self.seq_len),
            ("--eval-interval", self.eval_interval),
            ("--eval-iters", self.eval_iters),
        ] {
            ensure!(v > 0, "{flag} must be at least 1");
        }
        ensure!(
            self.mask_rate > 0.0 && self.mask_rate < 1.0,
            "--mask-rate must be in (0, 1), got {}",
            self.mask_rate
        );
        super::optim::check_lr(self.lr, self.min_lr)?;
        self.optim.validate()
    }
}

/// Where a CRATE-BERT run stands, saved as `state.json` next to the weights.
pub type BertState = TokenRunState<BertRecipe>;

/// Vocabulary of the model: the characters plus the three specials.
pub fn vocab_size(tokenizer: &Tokenizer) -> usize {
    tokenizer.vocab_size() + FIRST_CHAR as usize
}

/// One random window of `t` tokens per row, characters shifted past the specials.
fn sample_windows(tokens: &TokenFile, b: usize, t: usize, rng: &mut StdRng) -> Vec<i64> {
    (0..b)
        .flat_map(|_| {
            let start = rng.random_range(0..tokens.len() - t);
            tokens.window(start, t).into_iter().map(|v| v + FIRST_CHAR)
        })
        .collect()
}

/// Masked inputs and labels of iteration `step`: windows and masks both drawn from
/// `step_rng(seed, step)`, so a resumed run sees exactly the batches of a straight run.
pub fn train_batch(
    tokens: &TokenFile,
    r: &BertRecipe,
    vocab: usize,
    step: usize,
) -> (Vec<i64>, Vec<i64>) {
    let mut rng = step_rng(r.seed, step, 0);
    let x = sample_windows(tokens, r.batch_size, r.seq_len, &mut rng);
    mask_tokens(&x, &SPECIAL, MASK, vocab, r.mask_rate, rng.random())
}

pub fn ids<B: burn::tensor::backend::Backend>(
    v: Vec<i64>,
    b: usize,
    t: usize,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v, [b, t]), &Default::default())
}

/// Mean masked-LM loss over `eval_iters` fixed batches (same windows and masks every time).
pub fn val_loss<B: CrateBackend>(
    m: &CrateBert<B>,
    val: &TokenFile,
    r: &BertRecipe,
    vocab: usize,
) -> f64 {
    let mut rng = StdRng::seed_from_u64(0xbe27);
    let mut sum = 0.0;
    for i in 0..r.eval_iters {
        let x = sample_windows(val, r.batch_size, r.seq_len, &mut rng);
        let (x, y) = mask_tokens(&x, &SPECIAL, MASK, vocab, r.mask_rate, i as u64);
        sum += m
            .mlm_loss(ids(x, r.batch_size, r.seq_len), &y)
            .into_scalar()
            .elem::<f64>();
    }
    sum / r.eval_iters.max(1) as f64
}

/// Metadata of a CRATE-BERT safetensors file (so `fill-mask` needs nothing else).
pub fn bert_metadata(
    config: &BertConfig,
    tokenizer: &Tokenizer,
) -> Result<HashMap<String, String>> {
    Ok(HashMap::from([
        ("arch".to_string(), "crate-bert".to_string()),
        ("config".to_string(), serde_json::to_string(config)?),
        ("tokenizer".to_string(), serde_json::to_string(tokenizer)?),
    ]))
}

/// `<run>/checkpoint/`: `model.safetensors` (HF port keys), `config.json`, `state.json`,
/// optimizer state.
pub fn save_checkpoint<B: CrateAutodiff>(
    run_dir: &Path,
    config: &BertConfig,
    model: &CrateBert<B>,
    optim: &TrainOptimizer<CrateBert<B>, B>,
    state: &BertState,
    metrics: Option<&serde_json::Value>,
) -> Result<()> {
    write_checkpoint(run_dir, config, optim, state, metrics, |path| {
        write_safetensors(
            path,
            &collect_state_dict(&model.valid()),
            Some(bert_metadata(config, &state.tokenizer)?),
        )
    })
}

pub fn load_state(dir: &Path) -> Result<BertState> {
    read_state(dir, "CRATE-BERT training state")
}

/// Train from `state` (fresh or resumed) until `recipe.max_iters`; returns the last validation
/// loss and the iterations done. A fresh run (step 0) logs the initial validation loss as iteration 0.
pub fn fit_bert<B: CrateAutodiff>(
    run: &TokenRun,
    config: &BertConfig,
    mut model: CrateBert<B>,
    mut optim: TrainOptimizer<CrateBert<B>, B>,
    mut state: BertState,
) -> Result<(f64, usize)> {
    let r = state.recipe.clone();
    let vocab = config.vocab_size;
    let metrics = run.run_dir.join("metrics.jsonl");
    let t0 = Instant::now();
    let secs_at_t0 = state.seconds;
    let mut last_val = None;
    if state.step == 0 {
        let _ = std::fs::remove_file(&metrics);
        let v = val_loss(&model.valid(), run.val, &r, vocab);
        append_jsonl(&metrics, &json!({"iter": 0, "val_loss": v, "seconds": 0.0}))?;
        tracing::info!("iter 0: val masked-LM loss {v:.4}");
        state.best_val_loss = Some(v);
        last_val = Some(v);
    }
    let stop_at = run
        .stop_after
        .map_or(r.max_iters, |k| (state.step + k).min(r.max_iters));
    let bar = progress_bar(run.show_progress, r.max_iters as u64);
    bar.set_position(state.step as u64);
    while state.step < stop_at {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bar.abandon_with_message("interrupted: checkpoint saved");
            save_checkpoint(&run.run_dir, config, &model, &optim, &state, None)?;
            anyhow::bail!(
                "interrupted at iteration {}; resume with --resume",
                state.step
            );
        }
        let (x, y) = train_batch(run.train, &r, vocab, state.step);
        let loss = model.mlm_loss(ids(x, r.batch_size, r.seq_len), &y);
        let loss_val: f64 = loss.clone().into_scalar().elem();
        if !loss_val.is_finite() {
            bar.abandon();
            let at = format!("iteration {}", state.step);
            return Err(super::diverged(&run.run_dir, &at, "loss", loss_val));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = schedule::warmup_cosine(state.step, r.warmup_iters, r.max_iters, r.lr, r.min_lr);
        model = optim.step(lr, model, grads); // clips to the recipe's norm first
        state.step += 1;
        state.seconds = secs_at_t0 + t0.elapsed().as_secs_f64();
        bar.set_message(format!("loss {loss_val:.4}  lr {lr:.2e}"));
        bar.inc(1);
        let out_of_time = run.max_seconds.is_some_and(|s| state.seconds >= s);
        let end = state.step == stop_at || out_of_time;
        if state.step.is_multiple_of(r.eval_interval.max(1)) || end {
            let v = val_loss(&model.valid(), run.val, &r, vocab);
            let (iter, secs) = (state.step, state.seconds);
            bar.suspend(|| {
                tracing::info!(
                    "iter {iter}: train loss {loss_val:.4}  val masked-LM loss {v:.4}  {secs:.0}s"
                )
            });
            if !v.is_finite() {
                return Err(super::diverged(
                    &run.run_dir,
                    &format!("iteration {iter}"),
                    "validation loss",
                    v,
                ));
            }
            let m = json!({"iter": iter, "train_loss": loss_val, "val_loss": v, "lr": lr, "seconds": secs});
            state.best_val_loss = Some(state.best_val_loss.map_or(v, |b| b.min(v)));
            save_checkpoint(&run.run_dir, config, &model, &optim, &state, Some(&m))?;
            last_val = Some(v);
        }
        if out_of_time {
            break;
        }
    }
    bar.finish_and_clear();
    let v = last_val.unwrap_or_else(|| val_loss(&model.valid(), run.val, &r, vocab));
    Ok((v, state.step))
}
