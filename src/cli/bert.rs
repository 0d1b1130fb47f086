//! `whitebox bert train` (masked-LM pre-training of CRATE-BERT on a character corpus) and
//! `whitebox bert fill-mask` (top-k completions of `<mask>` tokens); the work is
//! `whitebox::train::bert`'s.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

use super::WeightArgs;
use whitebox::model::bert::CrateBert;
use whitebox::text::{self, Tokenizer};
use whitebox::train::bert::{BertModelSettings, BertRecipeSettings, BertTrainSettings};
use whitebox::train::lm::TokenRunSettings;
use whitebox::train::Cancel;
use whitebox::InferBackend;

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

/// The ids of the model and recipe flags given (each is `None` unless given).
fn given(a: &BertTrainArgs) -> Vec<String> {
    let ids = [
        ("hidden_size", a.hidden_size.is_some()),
        ("layers", a.layers.is_some()),
        ("heads", a.heads.is_some()),
        ("seq_len", a.seq_len.is_some()),
        ("max_iters", a.max_iters.is_some()),
        ("batch_size", a.batch_size.is_some()),
        ("lr", a.lr.is_some()),
        ("warmup_iters", a.warmup_iters.is_some()),
        ("weight_decay", a.weight_decay.is_some()),
        ("mask_rate", a.mask_rate.is_some()),
        ("eval_interval", a.eval_interval.is_some()),
        ("eval_iters", a.eval_iters.is_some()),
        ("seed", a.seed.is_some()),
    ];
    ids.into_iter()
        .filter(|&(_, given)| given)
        .map(|(id, _)| id.to_string())
        .collect()
}

/// The library's settings of `bert train`'s flags (its defaults where not given).
fn train_settings(a: BertTrainArgs) -> BertTrainSettings {
    let (m, r) = (BertModelSettings::default(), BertRecipeSettings::default());
    BertTrainSettings {
        run: TokenRunSettings {
            given: given(&a),
            resume: a.resume,
            overwrite: a.overwrite,
            stop_after: a.stop_after,
            max_seconds: a.max_seconds,
            show_progress: super::lm::progress(a.json),
            cancel: Cancel::on_signals(),
            ..TokenRunSettings::new(&a.data, &a.corpus, &a.run_dir)
        },
        model: BertModelSettings {
            hidden_size: a.hidden_size.unwrap_or(m.hidden_size),
            layers: a.layers.unwrap_or(m.layers),
            heads: a.heads.unwrap_or(m.heads),
        },
        recipe: BertRecipeSettings {
            seq_len: a.seq_len.unwrap_or(r.seq_len),
            max_iters: a.max_iters.unwrap_or(r.max_iters),
            batch_size: a.batch_size.unwrap_or(r.batch_size),
            lr: a.lr.unwrap_or(r.lr),
            warmup_iters: a.warmup_iters.unwrap_or(r.warmup_iters),
            weight_decay: a.weight_decay.unwrap_or(r.weight_decay),
            mask_rate: a.mask_rate.unwrap_or(r.mask_rate),
            eval_interval: a.eval_interval.unwrap_or(r.eval_interval),
            eval_iters: a.eval_iters.unwrap_or(r.eval_iters),
            seed: a.seed.unwrap_or(r.seed),
        },
    }
}

pub fn train(a: BertTrainArgs) -> Result<()> {
    let json = a.json;
    let out = whitebox::train::bert::train(&train_settings(a))?;
    println!(
        "validation masked-LM loss {:.4} after {} iterations ({:.0} s); weights in {}",
        out.val_loss,
        out.iters,
        out.seconds,
        out.weights.display()
    );
    if json {
        println!(
            "{}",
            json!({"val_loss": out.val_loss, "iters": out.iters, "seconds": out.seconds, "weights": out.weights})
        );
    }
    Ok(())
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
    let fill = whitebox::train::bert::fill_mask(&model, &tok, &a.text, a.top_k)?;
    for (k, top) in fill.top.iter().enumerate() {
        let top: Vec<String> = top
            .iter()
            .map(|(c, p)| format!("{c:?} {:.1}%", 100.0 * p))
            .collect();
        println!("<mask> {}: {}", k + 1, top.join(", "));
    }
    println!("{}", fill.filled);
    Ok(())
}
