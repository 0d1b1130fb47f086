//! `whitebox bert train` (masked-LM pre-training of CRATE-BERT on a character corpus) and
//! `whitebox bert fill-mask` (top-k completions of `<mask>` tokens); the work is
//! `whitebox::train::bert`'s.

use crate::cli::output::outln;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::WeightArgs;
use whitebox::model::bert::CrateBert;
use whitebox::text::Tokenizer;
use whitebox::train::bert::{BertModelSettings, BertRecipeSettings, BertTrainSettings};
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

/// The defaults of `bert train`'s model and recipe flags.
const M: BertModelSettings = BertModelSettings::DEFAULT;
const R: BertRecipeSettings = BertRecipeSettings::DEFAULT;

#[derive(Args, Debug)]
#[command(mut_arg("run_dir", |a| a.default_value("runs/bert").required(false)))]
pub struct BertTrainArgs {
    #[command(flatten)]
    pub run: super::lm::TokenRunArgs,
    #[arg(long, default_value_t = M.hidden_size)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = M.layers)]
    pub layers: usize,
    #[arg(long, default_value_t = M.heads)]
    pub heads: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = R.seq_len)]
    pub seq_len: usize,
    #[arg(long, default_value_t = R.max_iters)]
    pub max_iters: usize,
    #[arg(long, default_value_t = R.batch_size)]
    pub batch_size: usize,
    /// Peak learning rate (cosine to 10 % of it).
    #[arg(long, default_value_t = R.lr)]
    pub lr: f64,
    #[arg(long, default_value_t = R.warmup_iters)]
    pub warmup_iters: usize,
    #[arg(long, default_value_t = R.weight_decay)]
    pub weight_decay: f64,
    /// Fraction of tokens chosen for the loss.
    #[arg(long, default_value_t = R.mask_rate)]
    pub mask_rate: f64,
    #[arg(long, default_value_t = R.eval_interval)]
    pub eval_interval: usize,
    #[arg(long, default_value_t = R.eval_iters)]
    pub eval_iters: usize,
    #[arg(long, default_value_t = R.seed)]
    pub seed: u64,
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

/// The library's settings of `bert train`'s flags (its defaults where not given).
fn train_settings(a: BertTrainArgs) -> BertTrainSettings {
    BertTrainSettings {
        run: a.run.settings(),
        model: BertModelSettings {
            hidden_size: a.hidden_size,
            layers: a.layers,
            heads: a.heads,
        },
        recipe: BertRecipeSettings {
            seq_len: a.seq_len,
            max_iters: a.max_iters,
            batch_size: a.batch_size,
            lr: a.lr,
            warmup_iters: a.warmup_iters,
            weight_decay: a.weight_decay,
            mask_rate: a.mask_rate,
            eval_interval: a.eval_interval,
            eval_iters: a.eval_iters,
            seed: a.seed,
        },
    }
}

pub fn train(a: BertTrainArgs) -> Result<()> {
    let json = a.run.json;
    super::print_outcome(&whitebox::train::bert::train(&train_settings(a))?, json)
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
        outln!("<mask> {}: {}", k + 1, top.join(", "))?;
    }
    outln!("{}", fill.filled)?;
    Ok(())
}
