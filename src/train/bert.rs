//! Masked-LM pre-training of CRATE-BERT on a character stream: AdamW, weight decay on ≥ 2-D
//! parameters only, linear warm-up then cosine, gradient clipping, periodic validation loss, atomic
//! checkpoints and exact resume (each iteration's windows *and* masks are a pure function of seed
//! and iteration, like the learning rate). State and checkpoint layout are the language model's.
//!
//! Character ids are shifted by 3 to make room for RoBERTa's specials: 0 `<s>`, 1 `<pad>` (the
//! padding offset of the positions), 2 `<mask>`.

use anyhow::{bail, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::activation::softmax;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::checkpoint::{read_state, resume_dir, start_fresh, write_checkpoint, RunLock};
use super::engine::{self, Evaluation, Job, PeriodStats, Position};
use super::lm::{open_splits, step_rng, TokenRun, TokenRunSettings, TokenRunState, TrainDevice};
use super::resume::ResumeCheck;
use super::{parallel, schedule, Checkpoint, OptimSettings, OptimizerKind, TrainOptimizer};
use crate::model::bert::{mask_tokens, untie_state_dict, BertConfig, CrateBert, IGNORE};
use crate::model::{CrateAutodiff, CrateBackend};
use crate::text::{self, TokenFile, Tokenizer};
use crate::weights::{
    apply_state_dict, canonical_ids, collect_state_dict, read_state_dict, write_safetensors,
};
use crate::TrainBackend;
use burn::optim::GradientsParams;
use std::ops::Range;

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

/// The slices `parts` of a batch of sequences of `t` tokens with `labels` ([`IGNORE`] where not
/// masked), each weighted by its share of the masked tokens; `None` when there are no slices or
/// a slice has no masked token.
pub fn masked_slices(
    labels: &[i64],
    parts: Vec<Range<usize>>,
    t: usize,
) -> Option<Vec<(Range<usize>, f64)>> {
    let masked = |rows: &Range<usize>| {
        let l = &labels[rows.start * t..rows.end * t];
        l.iter().filter(|&&l| l != IGNORE).count()
    };
    let total: usize = parts.iter().map(masked).sum();
    if parts.is_empty() || parts.iter().any(|p| masked(p) == 0) {
        return None;
    }
    let weighted = parts.into_iter().map(|p| {
        let w = masked(&p) as f64 / total as f64;
        (p, w)
    });
    Some(weighted.collect())
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
    /// The batch's sequences over the cores ([`parallel::sequence_slices`]): the same batch as
    /// [`Job::loss`], each slice weighted by its share of the masked tokens (the loss is their
    /// mean); one pass when a slice has none.
    fn loss_and_grads(
        &mut self,
        model: &CrateBert<B>,
        step: usize,
    ) -> Option<(f64, GradientsParams, usize)> {
        let r = &self.state.recipe;
        let (b, t) = (r.batch_size, r.seq_len);
        let parts = parallel::sequence_slices(b, t);
        if parts.len() < 2 {
            return None;
        }
        let (x, y) = train_batch(self.train, r, self.config.vocab_size, step);
        let weighted = masked_slices(&y, parts, t)?;
        let labels = |rows: &Range<usize>| &y[rows.start * t..rows.end * t];
        let x = ids::<B>(x, b, t);
        let (loss, grads) = parallel::weighted_loss_and_grads(model, weighted, |m, rows| {
            m.mlm_loss(x.clone().narrow(0, rows.start, rows.len()), labels(&rows))
        });
        Some((loss, grads, b))
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

/// The model of a CRATE-BERT run (its positions follow the recipe's `seq_len`).
#[derive(Debug, Clone)]
pub struct BertModelSettings {
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
}

impl BertModelSettings {
    /// `bert train`'s defaults.
    pub const DEFAULT: Self = Self {
        hidden_size: 128,
        layers: 4,
        heads: 4,
    };
}

impl Default for BertModelSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl BertModelSettings {
    /// The model on `tokenizer`'s characters for sequences of `seq_len` (not yet validated).
    pub fn config(&self, tokenizer: &Tokenizer, seq_len: usize) -> BertConfig {
        BertConfig {
            vocab_size: vocab_size(tokenizer),
            hidden_size: self.hidden_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            max_position_embeddings: seq_len + PAD as usize + 1,
            type_vocab_size: 1,
            layer_norm_eps: 1e-12,
            pad_token_id: PAD as usize,
            initializer_range: 0.02,
        }
    }
}

/// The recipe of a CRATE-BERT run as given (AdamW β = (0.9, 0.98), clipping 1, cosine to 10 %
/// of `lr`).
#[derive(Debug, Clone)]
pub struct BertRecipeSettings {
    pub seq_len: usize,
    pub max_iters: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_iters: usize,
    pub weight_decay: f64,
    pub mask_rate: f64,
    pub eval_interval: usize,
    pub eval_iters: usize,
    pub seed: u64,
}

impl BertRecipeSettings {
    /// `bert train`'s defaults.
    pub const DEFAULT: Self = Self {
        seq_len: 64,
        max_iters: 2000,
        batch_size: 32,
        lr: 1e-3,
        warmup_iters: 100,
        weight_decay: 0.01,
        mask_rate: 0.15,
        eval_interval: 250,
        eval_iters: 10,
        seed: 0,
    };
}

impl Default for BertRecipeSettings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl BertRecipeSettings {
    /// The recipe of a fresh run (not yet validated).
    pub fn recipe(&self) -> BertRecipe {
        BertRecipe {
            max_iters: self.max_iters,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            lr: self.lr,
            min_lr: self.lr * 0.1,
            warmup_iters: self.warmup_iters,
            optim: OptimSettings {
                kind: OptimizerKind::Adamw,
                weight_decay: self.weight_decay,
                beta1: 0.9,
                beta2: 0.98,
                no_decay_norm_bias: true,
                clip_grad_norm: Some(1.0),
            },
            mask_rate: self.mask_rate,
            eval_interval: self.eval_interval,
            eval_iters: self.eval_iters,
            seed: self.seed,
        }
    }
}

/// A CRATE-BERT run (`whitebox bert train`): where, which model, which recipe.
#[derive(Debug, Clone)]
pub struct BertTrainSettings {
    pub run: TokenRunSettings,
    pub model: BertModelSettings,
    pub recipe: BertRecipeSettings,
}

/// The end of [`train`]: the last validation loss, the iterations done, the seconds training
/// took in this invocation and the weights of the last checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BertOutcome {
    pub val_loss: f64,
    pub iters: usize,
    pub seconds: f64,
    pub weights: PathBuf,
}

impl std::fmt::Display for BertOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "validation masked-LM loss {:.4} after {} iterations ({:.0} s); weights in {}",
            self.val_loss,
            self.iters,
            self.seconds,
            self.weights.display()
        )
    }
}

impl BertTrainSettings {
    /// `--resume`: every model or recipe setting given must equal the run's.
    pub fn check_resume(&self, run_config: &BertConfig, run: &BertState) -> Result<()> {
        let config = self.model.config(&run.tokenizer, self.recipe.seq_len);
        ResumeCheck::new(&self.run.given)
            .fields(
                &config,
                run_config,
                &[
                    ("layers", "num_hidden_layers"),
                    ("heads", "num_attention_heads"),
                ],
            )
            .fields(&self.recipe.recipe(), &run.recipe, &[])
            .check(&self.run.run_dir)
    }

    /// The run in `run_dir` from its last checkpoint, checked against the settings given and
    /// the prepared data's tokenizer.
    fn resume(&self, tokenizer: &Tokenizer, device: &TrainDevice) -> Result<BertRun<TrainBackend>> {
        let (data, run_dir) = (&self.run.data, &self.run.run_dir);
        let (cfg, model, optim, state) = restore::<TrainBackend>(&resume_dir(run_dir)?, device)?;
        self.check_resume(&cfg, &state)?;
        ensure!(
            state.tokenizer == *tokenizer,
            "--resume: {} was prepared with another tokenizer than the run in {}",
            data.display(),
            run_dir.display()
        );
        tracing::info!("resuming {} at iteration {}", run_dir.display(), state.step);
        Ok((cfg, model, optim, state))
    }

    /// A fresh run on `tokenizer`'s data; `run_dir` must not hold one unless `overwrite`.
    fn start(&self, tokenizer: &Tokenizer, device: &TrainDevice) -> Result<BertRun<TrainBackend>> {
        let recipe = self.recipe.recipe();
        recipe.validate()?;
        let cfg = self.model.config(tokenizer, recipe.seq_len);
        cfg.validate()?;
        <TrainBackend as burn::tensor::backend::Backend>::seed(device, recipe.seed);
        // parameter ids from the keys, so the saved optimizer state finds them again on resume
        let model = canonical_ids(cfg.init::<TrainBackend>(device));
        let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
        let state = BertState::fresh(recipe, tokenizer.clone(), &self.run.data);
        start_fresh(&self.run.run_dir, self.run.overwrite)?;
        Ok((cfg, model, optim, state))
    }
}

/// The data's token files, each longer than a training sequence.
fn open_sequences(
    data: &Path,
    tokenizer: &Tokenizer,
    seq_len: usize,
) -> Result<(TokenFile, TokenFile)> {
    let (train, val) = open_splits(data, tokenizer)?;
    for (f, what) in [(&train, "train"), (&val, "validation")] {
        ensure!(
            f.len() > seq_len,
            "{}: the {what} tokens ({}) are fewer than --seq-len {seq_len} + 1",
            f.path().display(),
            f.len(),
        );
    }
    Ok((train, val))
}

/// `whitebox bert train`: prepare character tokens when `data` has none, resume the run in
/// `run_dir` or start it, and train it with [`fit_bert`].
pub fn train(s: &BertTrainSettings) -> Result<BertOutcome> {
    let (data, run_dir) = (&s.run.data, &s.run.run_dir);
    text::prepare_missing(data, &s.run.corpus)?;
    let meta = text::read_meta(data)?;
    let Tokenizer::Char { .. } = meta.tokenizer else {
        bail!(
            "{}: bert train needs character tokens (`whitebox lm prepare --tokenizer char`)",
            data.display()
        );
    };
    let device = TrainDevice::default();
    let _lock = RunLock::acquire(run_dir)?;
    let (cfg, model, optim, state) = if s.run.resume {
        s.resume(&meta.tokenizer, &device)?
    } else {
        s.start(&meta.tokenizer, &device)?
    };
    let (train_tok, val_tok) = open_sequences(data, &meta.tokenizer, state.recipe.seq_len)?;
    let run = TokenRun {
        options: s.run.options(),
        train: &train_tok,
        val: &val_tok,
    };
    let t0 = Instant::now();
    let (_, val_loss, iters) = fit_bert(&run, &cfg, model, optim, state)?;
    Ok(BertOutcome {
        val_loss,
        iters,
        seconds: t0.elapsed().as_secs_f64(),
        weights: Checkpoint::dir(run_dir).join("model.safetensors"),
    })
}

/// Token ids of a text whose `<mask>` markers become [`MASK`].
pub fn encode_masked(tok: &Tokenizer, text: &str) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    for (i, piece) in text.split("<mask>").enumerate() {
        if i > 0 {
            out.push(MASK);
        }
        out.extend(
            tok.encode(piece)?
                .into_iter()
                .map(|t| t as i64 + FIRST_CHAR),
        );
    }
    Ok(out)
}

/// The completions of each `<mask>` of a text, most likely first.
#[derive(Debug, Clone)]
pub struct MaskFill {
    /// Per `<mask>`, in order: the `k` most likely characters with their probabilities.
    pub top: Vec<Vec<(String, f32)>>,
    /// The text with each `<mask>` replaced by its most likely character.
    pub filled: String,
}

/// The character of token id `id` (past the specials).
fn char_of(tok: &Tokenizer, id: usize) -> Result<String> {
    tok.decode(&[(id as i64 - FIRST_CHAR) as u32])
}

/// Softmax rows `[masks, vocab]` of the masked-LM head at positions `masks` of `x`.
fn mask_probabilities<B: CrateBackend>(
    model: &CrateBert<B>,
    x: &[i64],
    masks: &[usize],
) -> Vec<f32> {
    let h = model.encode(ids(x.to_vec(), 1, x.len()));
    let rows = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            masks.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [masks.len()],
        ),
        &Default::default(),
    );
    softmax(model.mlm_logits(h.select(0, rows)), 1)
        .into_data()
        .to_vec()
        .expect("f32 probabilities")
}

/// The `k` (at least 1) most likely characters at each `<mask>` of `text` and the text filled
/// with the most likely ones (`whitebox bert fill-mask`).
pub fn fill_mask<B: CrateBackend>(
    model: &CrateBert<B>,
    tok: &Tokenizer,
    text: &str,
    k: usize,
) -> Result<MaskFill> {
    let x = encode_masked(tok, text)?;
    let masks: Vec<usize> = (0..x.len()).filter(|&i| x[i] == MASK).collect();
    ensure!(!masks.is_empty(), "the text has no <mask>");
    let max = model.position_embeddings.weight.dims()[0] - PAD as usize - 1;
    ensure!(
        x.len() <= max,
        "the text is {} tokens long; this model reads at most {max}",
        x.len()
    );
    let p = mask_probabilities(model, &x, &masks);
    let v = p.len() / masks.len();
    let (mut filled, mut top) = (x.clone(), Vec::new());
    for (row, &pos) in p.chunks(v).zip(&masks) {
        let mut order: Vec<usize> = (FIRST_CHAR as usize..v).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
        let best: Vec<(String, f32)> = order
            .iter()
            .take(k.max(1))
            .map(|&i| Ok((char_of(tok, i)?, row[i])))
            .collect::<Result<_>>()?;
        top.push(best);
        filled[pos] = order[0] as i64;
    }
    let text: Vec<u32> = filled.iter().map(|&i| (i - FIRST_CHAR) as u32).collect();
    Ok(MaskFill {
        top,
        filled: tok.decode(&text)?,
    })
}
