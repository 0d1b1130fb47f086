//! `whitebox lm …` (prepare, train, eval, generate) and the language-model path of `whitebox forward`.

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use rand::{rngs::StdRng, SeedableRng};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::commands::{check_resume_flags, flag, given};
use super::WeightArgs;
use whitebox::model::lm::{self, CausalLm, LmConfig, Sampling};
use whitebox::text::{self, StreamDecoder, TokenFile, Tokenizer};
use whitebox::train::checkpoint::{self, RunLock};
use whitebox::train::lm::{fit_lm, fresh, restore, sequential_loss, LmRecipe, LmState, TokenRun};
use whitebox::train::{Cancel, Checkpoint, OptimSettings, OptimizerKind, RunOptions};
use whitebox::weights::Weights;
use whitebox::{InferBackend, TrainBackend};

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

#[derive(Args, Debug)]
pub struct LmTrainArgs {
    /// Prepared token folder (`whitebox lm prepare`); prepared from --corpus when missing.
    #[arg(long, default_value = "data/shakespeare-char")]
    pub data: PathBuf,
    /// Corpus used when --data has not been prepared yet (character tokenizer).
    #[arg(long, default_value = text::DEFAULT_CORPUS)]
    pub corpus: PathBuf,
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
    #[arg(long, default_value = "runs/lm")]
    pub run_dir: PathBuf,
    /// Continue the run in --run-dir from its last checkpoint (flags that define the run, when
    /// given, must equal the run's).
    #[arg(long)]
    pub resume: bool,
    /// Start over in a --run-dir that holds a run: its checkpoint and metrics are removed first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Flags given on the command line (filled in after parsing; `--resume` checks them).
    #[arg(skip)]
    pub given: Vec<String>,
    #[arg(long, default_value_t = 2000)]
    pub max_iters: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Final learning rate (default: 10 % of the peak).
    #[arg(long)]
    pub min_lr: Option<f64>,
    #[arg(long, default_value_t = 100)]
    pub warmup_iters: usize,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.95)]
    pub beta2: f64,
    /// Global gradient-norm clip (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip_grad_norm: f64,
    #[arg(long, default_value_t = 250)]
    pub eval_interval: usize,
    #[arg(long, default_value_t = 20)]
    pub eval_iters: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop this invocation after N iterations (continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Stop when the run has trained this many seconds (validation and checkpoint first).
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// End by printing one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
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
    /// Sample among the k most likely tokens only.
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

pub fn run(a: LmArgs) -> Result<()> {
    match a.command {
        LmCommand::Prepare(a) => prepare(a).map(|_| ()),
        LmCommand::Train(a) => train(a),
        LmCommand::Eval(a) => eval(a),
        LmCommand::Generate(a) => generate(a),
    }
}

fn parse_tokenizer(name: &str) -> Result<Option<Tokenizer>> {
    match name {
        "char" => Ok(None),
        "gpt2" => Ok(Some(Tokenizer::Gpt2)),
        other => bail!("--tokenizer {other:?}: expected char or gpt2"),
    }
}

pub fn prepare(a: PrepareArgs) -> Result<text::DataMeta> {
    let meta = text::prepare(
        &a.corpus,
        &a.out,
        parse_tokenizer(&a.tokenizer)?,
        a.val_fraction,
    )
    .with_context(|| format!("preparing {}", a.corpus.display()))?;
    println!(
        "{}: {} train + {} val tokens, vocabulary {} ({})",
        a.out.display(),
        meta.train_tokens,
        meta.val_tokens,
        meta.tokenizer.vocab_size(),
        match meta.tokenizer {
            Tokenizer::Char { .. } => "char",
            Tokenizer::Gpt2 => "gpt2",
        }
    );
    Ok(meta)
}

fn train_config(a: &LmTrainArgs, tokenizer: &Tokenizer) -> Result<LmConfig> {
    let mut c = LmConfig::resolve(&a.config)?;
    if let Some(arch) = &a.arch {
        c.arch = arch.parse()?;
    }
    c.vocab_size = tokenizer.vocab_size();
    c.n_layer = a.n_layer.unwrap_or(c.n_layer);
    c.n_head = a.n_head.unwrap_or(c.n_head);
    c.n_embd = a.n_embd.unwrap_or(c.n_embd);
    c.block_size = a.block_size.unwrap_or(c.block_size);
    c.validate()?;
    Ok(c)
}

/// The flags of `a` that define a run, against the resumed run's config and state.
fn resume_flags(
    a: &LmTrainArgs,
    c: &LmConfig,
    s: &LmState,
) -> Vec<(&'static str, Option<String>, String)> {
    let (g, r) = (&a.given, &s.recipe);
    let mut v = vec![
        ("--data", given(g, "data", a.data.display()), s.data.clone()),
        ("--arch", a.arch.clone(), c.arch.to_string()),
        (
            "--n-layer",
            a.n_layer.map(|v| v.to_string()),
            c.n_layer.to_string(),
        ),
        (
            "--n-head",
            a.n_head.map(|v| v.to_string()),
            c.n_head.to_string(),
        ),
        (
            "--n-embd",
            a.n_embd.map(|v| v.to_string()),
            c.n_embd.to_string(),
        ),
        (
            "--block-size",
            a.block_size.map(|v| v.to_string()),
            c.block_size.to_string(),
        ),
        flag(g, "--max-iters", a.max_iters, r.max_iters),
        flag(g, "--batch-size", a.batch_size, r.batch_size),
        flag(g, "--grad-accum", a.grad_accum, r.grad_accum),
        flag(g, "--lr", a.lr, r.lr),
        (
            "--min-lr",
            a.min_lr.map(|v| v.to_string()),
            r.min_lr.to_string(),
        ),
        flag(
            g,
            "--warmup-iters",
            a.warmup_iters.min(r.max_iters),
            r.warmup_iters,
        ),
        flag(g, "--weight-decay", a.weight_decay, r.optim.weight_decay),
        flag(g, "--beta1", a.beta1, r.optim.beta1),
        flag(g, "--beta2", a.beta2, r.optim.beta2),
        flag(
            g,
            "--clip-grad-norm",
            a.clip_grad_norm,
            r.optim.clip_grad_norm.unwrap_or(0.0),
        ),
        flag(g, "--eval-interval", a.eval_interval, r.eval_interval),
        flag(g, "--eval-iters", a.eval_iters, r.eval_iters),
        flag(g, "--seed", a.seed, r.seed),
    ];
    if g.iter().any(|f| f == "config") {
        let same = LmConfig::resolve(&a.config).is_ok_and(|mut p| {
            (p.arch, p.vocab_size) = (c.arch, c.vocab_size);
            p.n_layer = a.n_layer.unwrap_or(p.n_layer);
            p.n_head = a.n_head.unwrap_or(p.n_head);
            p.n_embd = a.n_embd.unwrap_or(p.n_embd);
            p.block_size = a.block_size.unwrap_or(p.block_size);
            serde_json::to_value(&p).ok() == serde_json::to_value(c).ok()
        });
        if !same {
            v.push((
                "--config",
                Some(a.config.clone()),
                "another model (its checkpoint/config.json)".into(),
            ));
        }
    }
    v
}

pub fn train(a: LmTrainArgs) -> Result<()> {
    let device = Default::default();
    if !a.data.join("meta.json").exists() {
        tracing::info!(
            "{} is not prepared: tokenizing {} (character level)",
            a.data.display(),
            a.corpus.display()
        );
        prepare(PrepareArgs {
            corpus: a.corpus.clone(),
            out: a.data.clone(),
            tokenizer: "char".into(),
            val_fraction: 0.1,
        })?;
    }
    let meta = text::read_meta(&a.data)?;
    let train_tokens = TokenFile::open(&a.data.join("train.bin"))?;
    let val_tokens = TokenFile::open(&a.data.join("val.bin"))?;
    for f in [&train_tokens, &val_tokens] {
        f.check_vocab(meta.tokenizer.vocab_size())?;
    }
    ensure!(
        val_tokens.len() >= 2,
        "{}: the validation split is empty; prepare with a larger --val-fraction",
        a.data.display()
    );
    let _lock = RunLock::acquire(&a.run_dir)?;
    let (config, model, optim, state) = if a.resume {
        let dir = checkpoint::resume_dir(&a.run_dir)?;
        let (config, model, optim, state) = restore::<TrainBackend>(&dir, &device)?;
        ensure!(
            state.tokenizer == meta.tokenizer,
            "--resume: {} was prepared with another tokenizer than the run",
            a.data.display()
        );
        check_resume_flags(&a.run_dir, resume_flags(&a, &config, &state))?;
        tracing::info!(
            "resuming {} at iteration {}",
            a.run_dir.display(),
            state.step
        );
        (config, model, optim, state)
    } else {
        let config = train_config(&a, &meta.tokenizer)?;
        let recipe = LmRecipe {
            max_iters: a.max_iters,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            lr: a.lr,
            min_lr: a.min_lr.unwrap_or(a.lr / 10.0),
            warmup_iters: a.warmup_iters.min(a.max_iters),
            optim: OptimSettings {
                kind: OptimizerKind::Adamw,
                weight_decay: a.weight_decay,
                beta1: a.beta1,
                beta2: a.beta2,
                // LayerNorm weights and biases are the only < 2-D parameters: decay ≥ 2-D only
                no_decay_norm_bias: true,
                clip_grad_norm: whitebox::train::optim::clip_setting(a.clip_grad_norm)?,
            },
            eval_interval: a.eval_interval,
            eval_iters: a.eval_iters,
            seed: a.seed,
        };
        let fresh =
            fresh::<TrainBackend>(config, recipe, meta.tokenizer.clone(), &a.data, &device)?;
        checkpoint::start_fresh(&a.run_dir, a.overwrite)?;
        fresh
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
        options: token_run_options(&a.run_dir, a.json, a.stop_after, a.max_seconds),
        train: &train_tokens,
        val: &val_tokens,
    };
    let last = fit_lm(&run, &config, model, optim, state, &device)?.last;
    let final_path = a.run_dir.join("model.safetensors");
    if let Some(dir) = Checkpoint::find(&a.run_dir) {
        std::fs::copy(dir.join("model.safetensors"), &final_path)?;
    }
    if let Some(m) = &last {
        println!(
            "iteration {}: val loss {:.4} (perplexity {:.2}), weights {}",
            m.step,
            m.val_loss,
            m.val_loss.exp(),
            final_path.display()
        );
        if a.json {
            println!("{}", serde_json::to_string(m)?);
        }
    }
    Ok(())
}

/// The engine's options of `lm train` and `bert train`: checkpoints in `run_dir`, a progress bar
/// on a terminal unless `--json`, Ctrl-C saves and stops.
pub(super) fn token_run_options(
    run_dir: &Path,
    json: bool,
    stop_after: Option<usize>,
    max_seconds: Option<f64>,
) -> RunOptions {
    RunOptions {
        show_progress: std::io::IsTerminal::is_terminal(&std::io::stderr()) && !json,
        stop_after,
        max_seconds,
        cancel: Cancel::on_signals(),
        ..RunOptions::in_dir(run_dir)
    }
}

/// The language model in `--weights` (config and tokenizer from the weights, or `--config`).
fn load_for_inference(w: &WeightArgs) -> Result<Weights<LmConfig, CausalLm<InferBackend>>> {
    super::commands::load(w)?.into_lm()
}

pub fn eval(a: LmEvalArgs) -> Result<()> {
    let l = load_for_inference(&a.weights)?;
    let tok = l.tokenizer()?;
    let text = text::read_corpus(&a.text)?;
    let ids: Vec<i64> = tok
        .encode(&text)
        .with_context(|| format!("{}", a.text.display()))?
        .into_iter()
        .map(i64::from)
        .collect();
    lm::check_tokens(&ids, l.config.vocab_size)?;
    let (loss, n) = sequential_loss(&l.model, &ids, a.batch_size, &Default::default())?;
    println!(
        "{}: loss {:.4}, perplexity {:.2} over {} predicted tokens",
        a.text.display(),
        loss,
        loss.exp(),
        n
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({"loss": loss, "perplexity": loss.exp(), "tokens": n})
        );
    }
    Ok(())
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let l = load_for_inference(&a.weights)?;
    let tok = l.tokenizer()?;
    let prompt: Vec<i64> = tok
        .encode(&a.prompt)
        .context("--prompt")?
        .into_iter()
        .map(i64::from)
        .collect();
    ensure!(!prompt.is_empty(), "--prompt is empty");
    ensure!(
        prompt.len() <= l.config.block_size,
        "--prompt is {} tokens, longer than the model's context of {} (block_size)",
        prompt.len(),
        l.config.block_size
    );
    let opts = Sampling {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: (a.top_k > 0).then_some(a.top_k),
    };
    opts.validate()?;
    let mut rng = StdRng::seed_from_u64(a.seed);
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    let mut dec = StreamDecoder::default();
    l.model.generate(&prompt, &opts, &mut rng, |t| {
        write!(out, "{}", dec.push(&tok, t as u32)?)?;
        out.flush()?;
        Ok(())
    })?;
    writeln!(out)?;
    Ok(())
}
