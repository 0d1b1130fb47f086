//! `whitebox bert train` (masked-LM pre-training of CRATE-BERT on a character corpus) and
//! `whitebox bert fill-mask` (top-k completions of `<mask>` tokens).
//!
//! Character ids are shifted by 3 to make room for RoBERTa's specials: 0 `<s>`, 1 `<pad>` (the
//! padding offset of the positions), 2 `<mask>`.

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::WeightArgs;
use whitebox::model::bert::{BertConfig, CrateBert};
use whitebox::model::CrateAutodiff;
use whitebox::text::{self, TokenFile, Tokenizer};
use whitebox::train::bert::{fit_bert, ids, restore, vocab_size, BertRecipe, BertRun, BertState};
pub use whitebox::train::bert::{FIRST_CHAR, MASK, PAD};
use whitebox::train::{Checkpoint, OptimSettings, OptimizerKind, TrainOptimizer};
use whitebox::weights::canonical_ids;
use whitebox::{InferBackend, TrainBackend};

#[derive(Args, Debug)]
pub struct BertArgs {
    #[command(subcommand)]
    pub command: BertCommand,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum BertCommand {
    /// Masked-LM pre-training (15 % of tokens; 80 % `<mask>`, 10 % random, 10 % kept).
    Train(BertTrainArgs),
    /// Top-k completions of each `<mask>` in a text, with probabilities.
    FillMask(FillMaskArgs),
}

#[derive(Args, Debug)]
pub struct BertTrainArgs {
    /// Prepared character-token folder (`whitebox lm prepare`); prepared from --corpus when missing.
    #[arg(long, default_value = "data/shakespeare-char")]
    pub data: PathBuf,
    #[arg(long, default_value = text::DEFAULT_CORPUS)]
    pub corpus: PathBuf,
    #[arg(long, default_value = "runs/bert")]
    pub run_dir: PathBuf,
    /// Continue the run in --run-dir from its last checkpoint (model and recipe flags, when
    /// given, must equal the run's).
    #[arg(long)]
    pub resume: bool,
    /// Start over in a --run-dir that holds a run: its checkpoint and metrics are removed first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// [default: 128]
    #[arg(long)]
    pub hidden_size: Option<usize>,
    /// [default: 4]
    #[arg(long)]
    pub layers: Option<usize>,
    /// [default: 4]
    #[arg(long)]
    pub heads: Option<usize>,
    /// Tokens per training sequence [default: 64].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// [default: 2000]
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// [default: 32]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (cosine to 10 % of it) [default: 0.001].
    #[arg(long)]
    pub lr: Option<f64>,
    /// [default: 100]
    #[arg(long)]
    pub warmup_iters: Option<usize>,
    /// [default: 0.01]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Fraction of tokens chosen for the loss [default: 0.15].
    #[arg(long)]
    pub mask_rate: Option<f64>,
    /// [default: 250]
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// [default: 10]
    #[arg(long)]
    pub eval_iters: Option<usize>,
    /// [default: 0]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop this invocation after N iterations (continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Stop when the run has trained this many seconds (validation and checkpoint first).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FillMaskArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// Text with one or more `<mask>` markers, e.g. "To be or not to <mask>e".
    pub text: String,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
}

pub fn run(a: BertArgs) -> Result<()> {
    match a.command {
        BertCommand::Train(a) => train(a),
        BertCommand::FillMask(a) => fill_mask(a),
    }
}

/// The model of a fresh run, from the flags (defaults where not given).
fn fresh_config(a: &BertTrainArgs, tokenizer: &Tokenizer) -> Result<BertConfig> {
    let cfg = BertConfig {
        vocab_size: vocab_size(tokenizer),
        hidden_size: a.hidden_size.unwrap_or(128),
        num_hidden_layers: a.layers.unwrap_or(4),
        num_attention_heads: a.heads.unwrap_or(4),
        max_position_embeddings: a.seq_len.unwrap_or(64) + PAD as usize + 1,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        pad_token_id: PAD as usize,
        initializer_range: 0.02,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The recipe of a fresh run, from the flags (defaults where not given).
fn fresh_recipe(a: &BertTrainArgs) -> BertRecipe {
    let lr = a.lr.unwrap_or(1e-3);
    BertRecipe {
        max_iters: a.max_iters.unwrap_or(2000),
        batch_size: a.batch_size.unwrap_or(32),
        seq_len: a.seq_len.unwrap_or(64),
        lr,
        min_lr: lr * 0.1,
        warmup_iters: a.warmup_iters.unwrap_or(100),
        optim: OptimSettings {
            kind: OptimizerKind::Adamw,
            weight_decay: a.weight_decay.unwrap_or(0.01),
            beta1: 0.9,
            beta2: 0.98,
            no_decay_norm_bias: true,
            clip_grad_norm: Some(1.0),
        },
        mask_rate: a.mask_rate.unwrap_or(0.15),
        eval_interval: a.eval_interval.unwrap_or(250),
        eval_iters: a.eval_iters.unwrap_or(10),
        seed: a.seed.unwrap_or(0),
    }
}

/// `--resume`: every model or recipe flag given must equal the run's value.
fn check_resume_flags(
    a: &BertTrainArgs,
    cfg: &BertConfig,
    r: &BertRecipe,
    dir: &Path,
) -> Result<()> {
    let given: [(&str, Option<String>, String); 13] = [
        (
            "--hidden-size",
            a.hidden_size.map(|v| v.to_string()),
            cfg.hidden_size.to_string(),
        ),
        (
            "--layers",
            a.layers.map(|v| v.to_string()),
            cfg.num_hidden_layers.to_string(),
        ),
        (
            "--heads",
            a.heads.map(|v| v.to_string()),
            cfg.num_attention_heads.to_string(),
        ),
        (
            "--seq-len",
            a.seq_len.map(|v| v.to_string()),
            r.seq_len.to_string(),
        ),
        (
            "--max-iters",
            a.max_iters.map(|v| v.to_string()),
            r.max_iters.to_string(),
        ),
        (
            "--batch-size",
            a.batch_size.map(|v| v.to_string()),
            r.batch_size.to_string(),
        ),
        ("--lr", a.lr.map(|v| v.to_string()), r.lr.to_string()),
        (
            "--warmup-iters",
            a.warmup_iters.map(|v| v.to_string()),
            r.warmup_iters.to_string(),
        ),
        (
            "--weight-decay",
            a.weight_decay.map(|v| v.to_string()),
            r.optim.weight_decay.to_string(),
        ),
        (
            "--mask-rate",
            a.mask_rate.map(|v| v.to_string()),
            r.mask_rate.to_string(),
        ),
        (
            "--eval-interval",
            a.eval_interval.map(|v| v.to_string()),
            r.eval_interval.to_string(),
        ),
        (
            "--eval-iters",
            a.eval_iters.map(|v| v.to_string()),
            r.eval_iters.to_string(),
        ),
        ("--seed", a.seed.map(|v| v.to_string()), r.seed.to_string()),
    ];
    super::commands::check_resume_flags(dir, given.into())
}

/// Model, optimizer and state of the last checkpoint of `a.run_dir`, checked against the flags
/// and the prepared data.
fn resume<B: CrateAutodiff>(
    a: &BertTrainArgs,
    tokenizer: &Tokenizer,
    device: &B::Device,
) -> Result<BertRun<B>> {
    let dir = whitebox::train::checkpoint::resume_dir(&a.run_dir)?;
    let (cfg, model, optim, state) = restore::<B>(&dir, device)?;
    check_resume_flags(a, &cfg, &state.recipe, &a.run_dir)?;
    ensure!(
        state.tokenizer == *tokenizer,
        "--resume: {} was prepared with another tokenizer than the run in {}",
        a.data.display(),
        a.run_dir.display()
    );
    tracing::info!(
        "resuming {} at iteration {}",
        a.run_dir.display(),
        state.step
    );
    Ok((cfg, model, optim, state))
}

pub fn train(a: BertTrainArgs) -> Result<()> {
    let meta = match text::read_meta(&a.data) {
        Ok(m) => m,
        Err(_) => text::prepare(&a.corpus, &a.data, None, 0.1)?,
    };
    let Tokenizer::Char { .. } = meta.tokenizer else {
        bail!(
            "{}: bert train needs character tokens (`whitebox lm prepare --tokenizer char`)",
            a.data.display()
        );
    };
    let device = Default::default();
    let _lock = whitebox::train::checkpoint::RunLock::acquire(&a.run_dir)?;
    let (cfg, model, optim, state) = if a.resume {
        resume::<TrainBackend>(&a, &meta.tokenizer, &device)?
    } else {
        let recipe = fresh_recipe(&a);
        recipe.validate()?;
        let cfg = fresh_config(&a, &meta.tokenizer)?;
        <TrainBackend as burn::tensor::backend::Backend>::seed(&device, recipe.seed);
        // parameter ids from the keys, so the saved optimizer state finds them again on resume
        let model = canonical_ids(cfg.init::<TrainBackend>(&device));
        let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
        let state = BertState::fresh(recipe, meta.tokenizer.clone(), &a.data);
        whitebox::train::checkpoint::start_fresh(&a.run_dir, a.overwrite)?;
        (cfg, model, optim, state)
    };
    let train_tok = TokenFile::open(&a.data.join("train.bin"))?;
    let val_tok = TokenFile::open(&a.data.join("val.bin"))?;
    for f in [&train_tok, &val_tok] {
        f.check_vocab(meta.tokenizer.vocab_size())?;
    }
    for (f, what) in [(&train_tok, "train"), (&val_tok, "validation")] {
        ensure!(
            f.len() > state.recipe.seq_len,
            "{}: the {what} tokens ({}) are fewer than --seq-len {} + 1",
            f.path().display(),
            f.len(),
            state.recipe.seq_len
        );
    }
    let run = whitebox::train::lm::TokenRun {
        options: super::lm::token_run_options(&a.run_dir, a.json, a.stop_after, a.max_seconds),
        train: &train_tok,
        val: &val_tok,
    };
    let t0 = Instant::now();
    let (_, last_val, iter) = fit_bert(&run, &cfg, model, optim, state)?;
    let weights = Checkpoint::dir(&a.run_dir).join("model.safetensors");
    println!(
        "validation masked-LM loss {last_val:.4} after {iter} iterations ({:.0} s); weights in {}",
        t0.elapsed().as_secs_f64(),
        weights.display()
    );
    if a.json {
        println!(
            "{}",
            json!({"val_loss": last_val, "iters": iter, "seconds": t0.elapsed().as_secs_f64(), "weights": weights})
        );
    }
    Ok(())
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

/// CRATE-BERT weights and the character tokenizer stored with them.
fn load(w: &WeightArgs) -> Result<(CrateBert<InferBackend>, Tokenizer)> {
    let l = super::commands::load(w)?.into_bert()?;
    let tok = l.stored_tokenizer()?.with_context(|| {
        format!(
            "{}: no tokenizer metadata (weights written by `whitebox bert train` carry it)",
            l.path.display()
        )
    })?;
    Ok((l.model, tok))
}

pub fn fill_mask(a: FillMaskArgs) -> Result<()> {
    let (model, tok) = load(&a.weights)?;
    let x = encode_masked(&tok, &a.text)?;
    let masks: Vec<usize> = (0..x.len()).filter(|&i| x[i] == MASK).collect();
    ensure!(!masks.is_empty(), "the text has no <mask>");
    let max = model.position_embeddings.weight.dims()[0] - PAD as usize - 1;
    ensure!(
        x.len() <= max,
        "the text is {} tokens long; this model reads at most {max}",
        x.len()
    );
    let t = x.len();
    let h = model.encode(ids(x.clone(), 1, t));
    let rows = Tensor::<InferBackend, 1, Int>::from_data(
        TensorData::new(
            masks.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [masks.len()],
        ),
        &Default::default(),
    );
    let probs = softmax(model.mlm_logits(h.select(0, rows)), 1);
    let p: Vec<f32> = probs.into_data().to_vec().unwrap();
    let v = p.len() / masks.len();
    let mut filled = x.clone();
    for (k, &pos) in masks.iter().enumerate() {
        let row = &p[k * v..(k + 1) * v];
        let mut order: Vec<usize> = (FIRST_CHAR as usize..v).collect();
        order.sort_by(|&i, &j| row[j].total_cmp(&row[i]));
        let show = |id: usize| -> Result<String> {
            Ok(format!(
                "{:?}",
                tok.decode(&[(id as i64 - FIRST_CHAR) as u32])?
            ))
        };
        let top: Vec<String> = order
            .iter()
            .take(a.top_k.max(1))
            .map(|&i| Ok(format!("{} {:.1}%", show(i)?, 100.0 * row[i])))
            .collect::<Result<_>>()?;
        println!("<mask> {}: {}", k + 1, top.join(", "));
        filled[pos] = order[0] as i64;
    }
    let text: Vec<u32> = filled.iter().map(|&i| (i - FIRST_CHAR) as u32).collect();
    println!("{}", tok.decode(&text)?);
    Ok(())
}
