//! `whitebox lm …` (prepare, train, eval, generate) and the language-model path of `whitebox forward`.

use crate::cli::output::{out, outln};
use anyhow::Result;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

use super::WeightArgs;
use whitebox::model::lm::{CausalLm, LmConfig, Sampling};
use whitebox::text::{self};
use whitebox::train::lm::{LmModelSettings, LmRecipeSettings, LmTrainSettings, TokenRunSettings};
use whitebox::train::Cancel;
use whitebox::weights::Weights;
use whitebox::InferBackend;

#[derive(Args, Debug)]
pub struct LmArgs {
    #[command(subcommand)]
    pub command: LmCommand,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum LmCommand {
    /// Tokenize a corpus once into train.bin / val.bin / meta.json.
    Prepare(PrepareArgs),
    /// Train a causal language model (default: character-level CRATE on Shakespeare).
    Train(LmTrainArgs),
    /// Loss and perplexity of weights on a text file.
    Eval(LmEvalArgs),
    /// Sample text from weights, streaming tokens to the terminal.
    Generate(GenerateArgs),
}

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    /// Text file or folder of text files (default: the Shakespeare corpus of scripts/setup.sh).
    #[arg(long, default_value = text::DEFAULT_CORPUS)]
    pub corpus: PathBuf,
    /// Output folder for the token files.
    #[arg(long, default_value = "data/shakespeare-char")]
    pub out: PathBuf,
    /// char (vocabulary from the corpus) or gpt2 (BPE, 50257 tokens).
    #[arg(long, default_value = "char")]
    pub tokenizer: String,
    /// Fraction of the tokens (the end of the corpus) held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
}

/// Where `lm train` and `bert train` read and write, and how this invocation runs.
#[derive(Args, Debug)]
pub struct TokenRunArgs {
    /// Prepared token folder (`whitebox lm prepare`); prepared from --corpus when missing.
    #[arg(long, default_value = "data/shakespeare-char")]
    pub data: PathBuf,
    /// Corpus used when --data has not been prepared yet (character tokenizer).
    #[arg(long, default_value = text::DEFAULT_CORPUS)]
    pub corpus: PathBuf,
    /// Run folder: checkpoint/, metrics.jsonl and the final model.safetensors.
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Continue the run in --run-dir from its last checkpoint (flags that define the run, when
    /// given, must equal the run's).
    #[arg(long)]
    pub resume: bool,
    /// Start over in a --run-dir that holds a run: its checkpoint and metrics are removed first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Stop this invocation after N iterations (continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Stop when the run has trained this many seconds (validation and checkpoint first).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// GEMM arithmetic: f32, or bf16 inputs with f32 accumulation (needs AVX512-BF16; see README).
    #[arg(long, value_parser = super::values::PrecisionChoice::parser(), default_value = "f32")]
    pub precision: whitebox::model::bf16::Precision,
    /// End by printing one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// Flags given on the command line (filled in after parsing; `--resume` checks them).
    #[arg(skip)]
    pub given: Vec<String>,
}

impl TokenRunArgs {
    /// The library's settings of these flags: a progress bar on a terminal unless `--json`,
    /// Ctrl-C saves and stops.
    pub fn settings(&self) -> TokenRunSettings {
        TokenRunSettings {
            given: self.given.clone(),
            resume: self.resume,
            overwrite: self.overwrite,
            stop_after: self.stop_after,
            max_seconds: self.max_seconds,
            show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()) && !self.json,
            cancel: Cancel::on_signals(),
            precision: Some(self.precision),
            ..TokenRunSettings::new(&self.data, &self.corpus, &self.run_dir)
        }
    }
}

/// The defaults of `lm train`'s recipe flags.
const R: LmRecipeSettings = LmRecipeSettings::DEFAULT;

#[derive(Args, Debug)]
#[command(mut_arg("run_dir", |a| a.default_value("runs/lm").required(false)))]
pub struct LmTrainArgs {
    #[command(flatten)]
    pub run: TokenRunArgs,
    /// Preset (char, crate-1l, crate, crate-medium, crate-large, crate-xl) or a JSON config.
    #[arg(long, default_value = "char")]
    pub config: String,
    /// crate-lm (complete dictionary), crate-lm-overcomplete (crate-lm's train.py; the default
    /// unless a JSON --config names another), gpt (baseline) or tost-lm (ToST causal TSSA).
    #[arg(long)]
    pub arch: Option<String>,
    /// Override the preset's layers / heads / width / context.
    #[arg(long)]
    pub n_layer: Option<usize>,
    #[arg(long)]
    pub n_head: Option<usize>,
    #[arg(long)]
    pub n_embd: Option<usize>,
    #[arg(long)]
    pub block_size: Option<usize>,
    #[arg(long, default_value_t = R.max_iters)]
    pub max_iters: usize,
    #[arg(long, default_value_t = R.batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = R.grad_accum)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = R.lr)]
    pub lr: f64,
    /// Final learning rate (default: 10 % of the peak).
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long, default_value_t = R.warmup_iters)]
    pub warmup_iters: usize,
    #[arg(long, default_value_t = R.weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = R.beta1)]
    pub beta1: f64,
    #[arg(long, default_value_t = R.beta2)]
    pub beta2: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = R.clip_grad_norm)]
    pub clip_grad_norm: f64,
    #[arg(long, default_value_t = R.eval_interval)]
    pub eval_interval: usize,
    #[arg(long, default_value_t = R.eval_iters)]
    pub eval_iters: usize,
    #[arg(long, default_value_t = R.seed)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct LmEvalArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// Text file scored with the model's tokenizer.
    #[arg(long)]
    pub text: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    #[arg(long, default_value = "\n")]
    pub prompt: String,
    #[arg(long, default_value_t = 500)]
    pub max_new_tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only (0 = among all tokens).
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

pub fn run(a: LmArgs) -> Result<()> {
    match a.command {
        LmCommand::Prepare(a) => prepare(a),
        LmCommand::Train(a) => train(a),
        LmCommand::Eval(a) => eval(a),
        LmCommand::Generate(a) => generate(a),
    }
}

pub fn prepare(a: PrepareArgs) -> Result<()> {
    let tokenizer = text::tokenizer_named(&a.tokenizer)?;
    let meta = text::prepare_corpus(&a.corpus, &a.out, tokenizer, a.val_fraction)?;
    print_prepared(&a.out, &meta)
}

/// The summary line of prepared token data.
fn print_prepared(out: &Path, meta: &text::DataMeta) -> Result<()> {
    outln!(
        "{}: {} train + {} val tokens, vocabulary {} ({})",
        out.display(),
        meta.train_tokens,
        meta.val_tokens,
        meta.tokenizer.vocab_size(),
        meta.tokenizer.name()
    )
}

/// The library's settings of `lm train`'s flags.
fn train_settings(a: LmTrainArgs) -> Result<LmTrainSettings> {
    let arch = a.arch.as_deref().map(str::parse).transpose()?;
    Ok(LmTrainSettings {
        run: a.run.settings(),
        model: LmModelSettings {
            config: a.config,
            arch,
            n_layer: a.n_layer,
            n_head: a.n_head,
            n_embd: a.n_embd,
            block_size: a.block_size,
        },
        recipe: LmRecipeSettings {
            max_iters: a.max_iters,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            lr: a.lr,
            min_lr: a.min_lr,
            warmup_iters: a.warmup_iters,
            weight_decay: a.weight_decay,
            beta1: a.beta1,
            beta2: a.beta2,
            clip_grad_norm: a.clip_grad_norm,
            eval_interval: a.eval_interval,
            eval_iters: a.eval_iters,
            seed: a.seed,
        },
    })
}

pub fn train(a: LmTrainArgs) -> Result<()> {
    if let Some(meta) = text::prepare_missing(&a.run.data, &a.run.corpus)? {
        print_prepared(&a.run.data, &meta)?;
    }
    let json = a.run.json;
    let out = whitebox::train::lm::train(&train_settings(a)?)?;
    if out.last.as_ref().is_none_or(|m| m.step != out.steps) {
        outln!(
            "stopped at iteration {} between evaluations; `--resume` continues it",
            out.steps
        )?;
    }
    if let Some(m) = &out.last {
        outln!(
            "iteration {}: val loss {:.4} (perplexity {:.2}), weights {}",
            m.step,
            m.val_loss,
            m.val_loss.exp(),
            out.weights.display()
        )?;
        if json {
            outln!("{}", serde_json::to_string(m)?)?;
        }
    }
    Ok(())
}

/// The language model in `--weights` (config and tokenizer from the weights, or `--config`).
fn load_for_inference(w: &WeightArgs) -> Result<Weights<LmConfig, CausalLm<InferBackend>>> {
    super::commands::load(w)?.into_lm()
}

pub fn eval(a: LmEvalArgs) -> Result<()> {
    let (loss, n) = load_for_inference(&a.weights)?.text_loss(&a.text, a.batch_size)?;
    outln!(
        "{}: loss {:.4}, perplexity {:.2} over {} predicted tokens",
        a.text.display(),
        loss,
        loss.exp(),
        n
    )?;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"loss": loss, "perplexity": loss.exp(), "tokens": n})
        )?;
    }
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let l = load_for_inference(&a.weights)?;
    let opts = Sampling {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: (a.top_k > 0).then_some(a.top_k),
    };
    out!("{}", a.prompt)?;
    l.generate_text(&a.prompt, &opts, a.seed, |piece| out!("{piece}"))?;
    outln!()
}
