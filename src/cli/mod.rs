//! The `whitebox` command line.

mod bench;
pub mod bert;
mod commands;
mod forward;
pub mod lm;
mod mae;
pub mod output;
mod pictures;
pub mod ssl;
mod values;

use clap::{Args, Parser, Subcommand};
use output::outln;
use std::path::PathBuf;

use values::{FormatChoice, OptimizerChoice, PrecisionChoice};
use whitebox::data::Format;
use whitebox::model::bf16::Precision;
use whitebox::train::{OptimizerKind, Recipe};

#[derive(Parser, Debug)]
#[command(name = "whitebox", version, about = "CRATE white-box transformers: train, evaluate, load official weights, run inference", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a CRATE classifier (default: the Fashion-MNIST model and recipe).
    Train(TrainArgs),
    /// Evaluate weights on the test split: top-1, top-5, loss.
    Eval(EvalArgs),
    /// Top-k labels for PNG/JPEG images.
    Predict(PredictArgs),
    /// Run a forward pass on a safetensors `input` tensor (NCHW f32; int64 `idx` for language
    /// models) and write `logits` (CRATE-MAE configs: `pred`, `mask`, `ids_restore`, `recon_img`,
    /// `loss`, using `noise` if given).
    Forward(ForwardArgs),
    /// Print a configuration and its parameter count.
    Info(InfoArgs),
    /// Time a training step and an inference forward on random data.
    Bench(BenchArgs),
    /// White-box measures per layer: coding rate R, compression R^c, sparsity.
    Measure(MeasureArgs),
    /// Cls-row attention of a layer, per head and averaged, over the images (PNG grid).
    Attention(pictures::AttentionArgs),
    /// PCA of a layer's subspace features U^T LN(Z) as RGB, fitted jointly over the images (PNG grid).
    Pca(pictures::PcaArgs),
    /// One self-contained HTML page for a run directory: curves, per-layer measures, attention maps.
    Report(pictures::ReportArgs),
    /// CRATE-MAE: masked-autoencoder pre-training and reconstructions.
    #[command(subcommand)]
    Mae(MaeCommand),
    /// Linear probe: a linear classifier on frozen features of a CRATE (classifier or `dino train`
    /// teacher: the head's LayerNorm output) or a CRATE-MAE encoder (cls feature).
    Probe(ProbeArgs),
    /// Self-supervised CRATE: DINO / SimDINO pre-training.
    #[command(subcommand)]
    Dino(ssl::DinoCommand),
    /// Weighted k-NN classification (DINO's) on frozen features: test split against train split.
    Knn(ssl::KnnArgs),
    /// Causal language models: prepare text, train, eval (loss, perplexity), generate.
    Lm(lm::LmArgs),
    /// CRATE-BERT: masked-LM pre-training and fill-mask.
    Bert(bert::BertArgs),
}

#[derive(Subcommand, Debug)]
pub enum MaeCommand {
    /// Pre-train a CRATE-MAE (default: the Fashion-MNIST MAE `mae-fmnist`, mask ratio 0.75).
    Train(MaeTrainArgs),
    /// Write a PNG grid: original / masked / reconstructed test images.
    Reconstruct(ReconstructArgs),
}

#[derive(Args, Debug)]
#[command(mut_arg("epochs", |a| a.default_value(PRETRAIN_EPOCHS)))]
#[command(mut_arg("run_dir", |a| a.default_value("runs/mae-fmnist")))]
pub struct MaeTrainArgs {
    /// The classifier's training flags (`--arch`, `--label-smoothing` and `--measure-every` do
    /// not apply); `--config` takes an MAE preset (mae-fmnist, mae-crate-tiny,
    /// mae-crate-small, mae-crate-base, mae-crate-large; `fmnist` = mae-fmnist) or a JSON config.
    #[command(flatten)]
    pub train: TrainArgs,
    /// Fraction of patches removed (default: the config's, 0.75).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Per-patch normalised pixel targets (official `norm_pix_loss`).
    #[arg(long)]
    pub norm_pix_loss: bool,
}

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of test images (columns).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Pixel scale factor of the grid.
    #[arg(long, default_value_t = 2)]
    pub scale: u32,
    /// Mask ratio (default: the config's).
    #[arg(long)]
    pub mask_ratio: Option<f64>,
    /// Seed of the random masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "reconstruction.png")]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// CRATE-MAE or CRATE weights (e.g. runs/mae-fmnist/checkpoint/model.safetensors).
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub train_limit: Option<usize>,
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MeasureArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// safetensors file with an `input` tensor (NCHW f32, already normalised).
    #[arg(long, conflicts_with = "data")]
    pub input: Option<PathBuf>,
    /// Data folder: the first --limit test images are measured (normalised as at training).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, value_parser = FormatChoice::parser(), default_value = "auto")]
    pub format: Format,
    /// Number of images measured from --data.
    #[arg(long, default_value_t = 256)]
    pub limit: usize,
    /// ε² of the paper's R and R^c.
    #[arg(long, default_value_t = 0.01)]
    pub eps_sq: f64,
    /// eps of the official CodingRate (enters un-squared, as in vis_utils/coding_rate.py).
    #[arg(long, default_value_t = 0.01)]
    pub official_eps: f64,
    /// Write the flat map of measures (golden key names) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the R^c and sparsity curves (mean ± std per layer) to PREFIX.png and PREFIX.svg.
    #[arg(long, value_name = "PREFIX")]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to time: the image classifier (--config), the causal language model (crate-lm
    /// overcomplete, char vocabulary, 4 layers, 4 heads, d 128) or CRATE-BERT (same size).
    #[arg(long, value_enum, default_value_t = bench::Task::Image)]
    pub task: bench::Task,
    /// Classifier config (preset or JSON) for --task image.
    #[arg(long, default_value = "fmnist")]
    pub config: String,
    /// Tokens per sequence for --task lm/bert.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
    /// Also print where a training step's time goes: per operation class, forward and
    /// backward, with the cores each kept busy, and the CPU's model and ISA flags.
    #[arg(long)]
    pub profile: bool,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Timed iterations (median reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long)]
    pub json: bool,
    /// Time CRATE (MSSA) against ToST (TSSA) at equal width/depth/heads over --sizes
    /// (RGB images, patch 8: size²/64 tokens); --config is not used.
    #[arg(long)]
    pub scaling: bool,
    /// Image sides of --scaling (64 → 64 tokens, 512 → 4,096 tokens).
    #[arg(long, value_delimiter = ',', default_value = "64,128,192,256,384,512")]
    pub sizes: Vec<usize>,
    /// Width d of both models in --scaling.
    #[arg(long, default_value_t = 192)]
    pub dim: usize,
    /// Depth of both models in --scaling (ToST adds its 2 class-attention blocks).
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Write the --scaling plot (PNG) here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// GEMM arithmetic: f32, or bf16 inputs with f32 accumulation (needs AVX512-BF16; see README).
    #[arg(long, value_parser = PrecisionChoice::parser(), default_value = "f32")]
    pub precision: Precision,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data folder (IDX, CIFAR binary, or ImageFolder with train/ and test/).
    #[arg(long, default_value = whitebox::data::DEFAULT_DATA)]
    pub data: PathBuf,
    /// Layout of the data folder.
    #[arg(long, value_parser = FormatChoice::parser(), default_value = "auto")]
    pub format: Format,
}

/// `--epochs` of `mae train` and `dino train` (the classifier's `train` has its own default).
pub(crate) const PRETRAIN_EPOCHS: &str = "14";

/// The defaults of the training flags: the main job's recipe.
const R: Recipe = Recipe::MAIN_JOB;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Preset name (fmnist, crate-tiny, crate-small, crate-base, crate-large, crate-alpha-B/16, …,
    /// ToST: tost-fmnist, tost-cab-tiny-12-p16, …) or a JSON config (`"arch": "tost"` for ToST).
    #[arg(long, default_value = "fmnist")]
    pub config: String,
    /// Override the config's architecture: `crate` or `crate-alpha` (same shape, CRATE-α layers);
    /// `tost` only confirms a ToST config.
    #[arg(long)]
    pub arch: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Run folder: checkpoint/, metrics.jsonl.
    #[arg(long, default_value = "runs/fmnist")]
    pub run_dir: PathBuf,
    /// Continue the run in --run-dir from its last checkpoint (same schedule, optimizer state and
    /// data order; flags that define the run, when given, must equal the run's).
    #[arg(long)]
    pub resume: bool,
    /// Start over in a --run-dir that holds a run: its checkpoint and metrics are removed first.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Flags given on the command line (filled in after parsing; `--resume` checks them).
    #[arg(skip)]
    pub given: Vec<String>,
    /// Start from these weights (safetensors or .pth); keys that don't fit (e.g. a new head) are reported and skipped.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Epochs of the schedule (`whitebox train`: the main job's 40; `mae train` and `dino
    /// train`: 14).
    #[arg(long, default_value_t = R.epochs)]
    pub epochs: usize,
    #[arg(long, default_value_t = R.batch_size)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = R.lr)]
    pub lr: f64,
    /// Final learning rate of the cosine.
    #[arg(long, default_value_t = R.min_lr)]
    pub min_lr: f64,
    /// Linear warm-up length in epochs (stepped per iteration).
    #[arg(long, default_value_t = R.warmup_epochs)]
    pub warmup_epochs: f64,
    #[arg(long, value_parser = OptimizerChoice::parser(), default_value = "adamw")]
    pub optimizer: OptimizerKind,
    #[arg(long, default_value_t = R.optim.weight_decay)]
    pub weight_decay: f64,
    /// Adam/Lion β₁.
    #[arg(long, default_value_t = R.optim.beta1)]
    pub beta1: f64,
    /// Adam/Lion β₂ (Lion's usual value is 0.99).
    #[arg(long, default_value_t = R.optim.beta2)]
    pub beta2: f64,
    /// Do not decay LayerNorm weights, biases, the cls token and position embedding
    /// (the official code decays everything).
    #[arg(long)]
    pub no_decay_norm_bias: bool,
    #[arg(long, default_value_t = R.label_smoothing)]
    pub label_smoothing: f64,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub clip_grad_norm: f64,
    /// Zero padding for the random crop (0 = no crop).
    #[arg(long, default_value_t = R.augment.crop_padding)]
    pub crop_padding: usize,
    /// Random horizontal flip (off by default: it slowed convergence within the 14-epoch budget).
    #[arg(long)]
    pub hflip: bool,
    #[arg(long, default_value_t = R.seed)]
    pub seed: u64,
    /// Stop this invocation after N epochs (the schedule still spans --epochs; continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// Use only the first N training images (quick runs).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Record R^c and sparsity per layer into metrics.jsonl every N epochs (0 = off).
    #[arg(long, default_value_t = 0)]
    pub measure_every: usize,
    /// Number of test images the per-epoch measures use.
    #[arg(long, default_value_t = 64)]
    pub measure_images: usize,
    /// GEMM arithmetic: f32, or bf16 inputs with f32 accumulation (needs AVX512-BF16; see README).
    #[arg(long, value_parser = PrecisionChoice::parser(), default_value = "f32")]
    pub precision: Precision,
    /// End by printing one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WeightArgs {
    /// Weights: whitebox/official safetensors, or a torch .pth / .pth.tar (any usual container).
    #[arg(long)]
    pub weights: PathBuf,
    /// Preset or JSON config; defaults to the one stored with the weights (metadata or config.json beside them).
    #[arg(long)]
    pub config: Option<String>,
    /// Refuse missing, unexpected or wrongly shaped keys (like PyTorch's load_state_dict).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
    /// GEMM arithmetic: f32, or bf16 inputs with f32 accumulation (needs AVX512-BF16; see README).
    #[arg(long, value_parser = PrecisionChoice::parser(), default_value = "f32")]
    pub precision: Precision,
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// How many labels to print per image.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// PNG or JPEG files; resized to the model's input size.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// safetensors file with an `input` tensor, NCHW f32.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write `logits` (safetensors).
    #[arg(long)]
    pub output: PathBuf,
    /// Also write every per-layer activation under the golden names (act.layer{i}.mssa, …).
    #[arg(long)]
    pub activations: bool,
    /// GEMM arithmetic: f32, or bf16 inputs with f32 accumulation (needs AVX512-BF16; see README).
    #[arg(long, value_parser = PrecisionChoice::parser(), default_value = "f32")]
    pub precision: Precision,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[arg(long, default_value = "fmnist")]
    pub config: String,
}

/// Parse the command line and run it; errors come back to `main` for a clean exit code.
pub fn run() -> anyhow::Result<()> {
    let matches = values::with_ranges(<Cli as clap::CommandFactory>::command()).get_matches();
    let mut cli =
        <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // the training commands' `--resume` checks the flags given on the command line
    let (given, leaf) = given_flags(&matches);
    match &mut cli.command {
        Some(Command::Train(a))
        | Some(Command::Mae(MaeCommand::Train(MaeTrainArgs { train: a, .. })))
        | Some(Command::Dino(ssl::DinoCommand::Train(ssl::DinoTrainArgs { train: a, .. }))) => {
            a.given = given
        }
        Some(Command::Lm(lm::LmArgs {
            command: lm::LmCommand::Train(lm::LmTrainArgs { run: a, .. }),
        }))
        | Some(Command::Bert(bert::BertArgs {
            command: bert::BertCommand::Train(bert::BertTrainArgs { run: a, .. }),
        })) => a.given = given,
        _ => {}
    }
    let precision = leaf.try_get_one::<Precision>("precision");
    let precision = precision.ok().flatten().copied().unwrap_or(Precision::F32);
    whitebox::model::bf16::set_precision(precision).map_err(|e| {
        anyhow::anyhow!(
            "--precision {}: {e}",
            format!("{precision:?}").to_lowercase()
        )
    })?;
    match cli.command {
        None => commands::train(TrainArgs::default_args()),
        Some(Command::Train(a)) => commands::train(a),
        Some(Command::Eval(a)) => commands::eval(a),
        Some(Command::Predict(a)) => commands::predict(a),
        Some(Command::Forward(a)) => forward::forward(a),
        Some(Command::Info(a)) => commands::info(a),
        Some(Command::Bench(a)) => bench::bench(a),
        Some(Command::Measure(a)) => commands::measure(a),
        Some(Command::Attention(a)) => pictures::attention(a),
        Some(Command::Pca(a)) => pictures::pca(a),
        Some(Command::Report(a)) => pictures::report(a),
        Some(Command::Mae(MaeCommand::Train(a))) => mae::train(a),
        Some(Command::Mae(MaeCommand::Reconstruct(a))) => mae::reconstruct(a),
        Some(Command::Probe(a)) => mae::probe(a),
        Some(Command::Lm(a)) => lm::run(a),
        Some(Command::Bert(a)) => bert::run(a),
        Some(Command::Dino(c)) => ssl::run(c),
        Some(Command::Knn(a)) => ssl::knn(a),
    }
}

/// Print a run's summary line, and with `--json` its JSON object on the last line.
fn print_outcome<T: std::fmt::Display + serde::Serialize>(
    out: &T,
    json: bool,
) -> anyhow::Result<()> {
    outln!("{out}")?;
    if json {
        outln!("{}", serde_json::to_value(out)?)?;
    }
    Ok(())
}

/// Ids of the arguments of the innermost subcommand that were given on the command line, and
/// that subcommand's matches.
fn given_flags(m: &clap::ArgMatches) -> (Vec<String>, &clap::ArgMatches) {
    let mut m = m;
    while let Some((_, sub)) = m.subcommand() {
        m = sub;
    }
    let given = m
        .ids()
        .filter(|id| m.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect();
    (given, m)
}

impl TrainArgs {
    /// `whitebox` with no subcommand = `whitebox train` with every default.
    pub(crate) fn default_args() -> Self {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: TrainArgs,
        }
        Wrap::parse_from(["whitebox"]).a
    }
}
