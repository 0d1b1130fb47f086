//! Masked-LM pre-training of CRATE-BERT on a character stream: AdamW, weight decay on ≥ 2-D
//! parameters only, linear warm-up then cosine, gradient clipping, periodic validation loss, atomic
//! checkpoints and exact resume (each iteration's windows *and* masks are a pure function of seed
//! and iteration, like the learning rate). State and checkpoint layout are the language model's.
//!
//! Character ids are shifted by 3 to make room for RoBERTa's specials: 0 `<s>`, 1 `<pad>` (the
//! padding offset of the positions), 2 `<mask>`.

use anyhow::{ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

use super::checkpoint::{read_state, write_checkpoint};
use super::engine::{self, Evaluation, Job, PeriodStats, Position};
use super::lm::{step_rng, TokenRun, TokenRunState};
use super::{schedule, OptimSettings, TrainOptimizer};
use crate::model::bert::{mask_tokens, untie_state_dict, BertConfig, CrateBert};
use crate::model::{CrateAutodiff, CrateBackend};
use crate::text::{TokenFile, Tokenizer};
use crate::weights::{apply_state_dict, collect_state_dict, read_state_dict, write_safetensors};

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

/// A CRATE-BERT run ready for [`fit_bert`]: config, model, optimizer and state.
pub type BertRun<B> = (
    BertConfig,
    CrateBert<B>,
    TrainOptimizer<CrateBert<B>, B>,
    BertState,
);

/// A CRATE-BERT run as its checkpoint folder `dir` saved it (the config checked against the
/// state's vocabulary and sequence length), ready for [`fit_bert`] to continue it exactly.
pub fn restore<B: CrateAutodiff>(dir: &Path, device: &B::Device) -> Result<BertRun<B>> {
    let state = load_state(dir)?;
    let cfg_path = dir.join("config.json");
    let cfg: BertConfig = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("cannot read {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{}: not a CRATE-BERT config", cfg_path.display()))?;
    cfg.validate()
        .with_context(|| format!("{}", cfg_path.display()))?;
    ensure!(
        cfg.vocab_size == vocab_size(&state.tokenizer)
            && cfg.max_position_embeddings == state.recipe.seq_len + PAD as usize + 1,
        "--resume: {} (vocabulary {}, {} positions) does not fit the run's state.json \
         (vocabulary {}, sequences of {})",
        cfg_path.display(),
        cfg.vocab_size,
        cfg.max_position_embeddings,
        vocab_size(&state.tokenizer),
        state.recipe.seq_len
    );
    let w = dir.join("model.safetensors");
    let sd = untie_state_dict(read_state_dict(&w)?)?;
    let (model, _) = apply_state_dict(cfg.init::<B>(device), &sd, true)
        .with_context(|| format!("loading {}", w.display()))?;
    let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model).load(dir, device)?;
    Ok((cfg, model, optim, state))
}

/// CRATE-BERT as a job of the engine: one masked batch per step ([`train_batch`]), the
/// validation loss before the first step of a fresh run and every `eval_interval` iterations.
struct BertJob<'a> {
    config: &'a BertConfig,
    train: &'a TokenFile,
    val: &'a TokenFile,
    state: BertState,
}

impl BertJob<'_> {
    fn val_loss<B: CrateAutodiff>(&self, model: &CrateBert<B>) -> f64 {
        val_loss(
            &model.valid(),
            self.val,
            &self.state.recipe,
            self.config.vocab_size,
        )
    }
}

impl<B: CrateAutodiff> Job<B> for BertJob<'_> {
    type Model = CrateBert<B>;
    type Metrics = serde_json::Value;

    fn position(&self) -> Position {
        self.state.position(self.state.recipe.batch_size)
    }
    fn set_position(&mut self, p: Position) {
        let per_step = self.state.recipe.batch_size;
        self.state.set_position(p, per_step);
    }
    fn total_steps(&self) -> usize {
        self.state.recipe.max_iters
    }
    fn period(&self) -> usize {
        self.state.recipe.eval_interval
    }
    fn lr(&self, step: usize) -> f64 {
        let r = &self.state.recipe;
        schedule::warmup_cosine(step, r.warmup_iters, r.max_iters, r.lr, r.min_lr)
    }
    fn loss(&mut self, model: &CrateBert<B>, step: usize, _micro: usize) -> (Tensor<B, 1>, usize) {
        let r = &self.state.recipe;
        let (x, y) = train_batch(self.train, r, self.config.vocab_size, step);
        (
            model.mlm_loss(ids(x, r.batch_size, r.seq_len), &y),
            r.batch_size,
        )
    }
    fn describe_step(&self, step: usize) -> String {
        format!("iteration {step}")
    }
    fn bar_prefix(&self, step: usize) -> String {
        let r = &self.state.recipe;
        super::lm::interval_prefix(step, r.eval_interval, r.max_iters)
    }
    fn unit(&self) -> (&'static str, usize) {
        ("tok", self.state.recipe.seq_len)
    }
    fn initial(&mut self, model: &CrateBert<B>) -> Result<Option<serde_json::Value>> {
        let v = self.val_loss(model);
        tracing::info!("iter 0: val masked-LM loss {v:.4}");
        self.state.best_val_loss = Some(v);
        Ok(Some(json!({"iter": 0, "val_loss": v, "seconds": 0.0})))
    }
    fn evaluate(
        &mut self,
        model: &CrateBert<B>,
        iter: usize,
        stats: &PeriodStats,
    ) -> Result<Evaluation<serde_json::Value>> {
        let v = self.val_loss(model);
        let (loss, secs) = (stats.last_loss, self.state.seconds);
        tracing::info!("iter {iter}: train loss {loss:.4}  val masked-LM loss {v:.4}  {secs:.0}s");
        self.state.record_val_loss(v);
        Ok(Evaluation {
            metrics: json!({"iter": iter, "train_loss": loss, "val_loss": v, "lr": stats.lr, "seconds": secs}),
            diverged: (!v.is_finite()).then_some(("validation loss", v)),
        })
    }
    fn save(
        &self,
        run_dir: &Path,
        model: &CrateBert<B>,
        optim: &TrainOptimizer<CrateBert<B>, B>,
        metrics: Option<&serde_json::Value>,
    ) -> Result<()> {
        save_checkpoint(run_dir, self.config, model, optim, &self.state, metrics)
    }
}

/// Train from `state` (fresh or resumed) until `recipe.max_iters`; returns the model, the last
/// validation loss and the iterations done. A fresh run (step 0) logs the initial validation loss
/// as iteration 0.
pub fn fit_bert<B: CrateAutodiff>(
    run: &TokenRun,
    config: &BertConfig,
    model: CrateBert<B>,
    optim: TrainOptimizer<CrateBert<B>, B>,
    state: BertState,
) -> Result<(CrateBert<B>, f64, usize)> {
    let mut job = BertJob {
        config,
        train: run.train,
        val: run.val,
        state,
    };
    let fitted = engine::run(&mut job, model, optim, &run.options)?;
    let v = match fitted.last.as_ref().and_then(|m| m["val_loss"].as_f64()) {
        Some(v) => v,
        None => job.val_loss(&fitted.model),
    };
    Ok((fitted.model, v, fitted.step))
}
