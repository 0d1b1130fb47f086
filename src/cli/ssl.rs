//! Self-supervised CRATE commands: `dino train` (DINO / SimDINO) and `knn`.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;

use super::{DataArgs, TrainArgs};
use whitebox::model::ssl::SslLoss;
use whitebox::train::dino::{self, DinoTrainSettings};
use whitebox::train::ssl::{FeatureSource, SslOptions};

#[derive(Subcommand, Debug)]
pub enum DinoCommand {
    /// Self-supervised pre-training of a CRATE backbone (DINO or SimDINO self-distillation);
    /// the checkpoint's model.safetensors is the teacher backbone under the official CRATE keys.
    Train(DinoTrainArgs),
}

#[derive(Args, Debug)]
#[command(mut_arg("epochs", |a| a.default_value(super::PRETRAIN_EPOCHS)))]
#[command(mut_arg("run_dir", |a| a.default_value("runs/dino")))]
pub struct DinoTrainArgs {
    /// The classifier's training flags (`--label-smoothing`, `--crop-padding`, `--hflip` and
    /// `--measure-every` do not apply; the views are the multi-crop ones).
    #[command(flatten)]
    pub train: TrainArgs,
    /// Objective: SimDINO (coding rate) or DINO (centring and sharpening).
    #[arg(long, value_parser = super::values::SslLossChoice::parser(), default_value = "simdino")]
    pub loss: SslLoss,
    /// Number of local crops (the references use 8).
    #[arg(long, default_value_t = 6)]
    pub local_crops: usize,
    /// Pixel size of the local crops (default: 96/224 of the image, in whole patches).
    #[arg(long)]
    pub local_size: Option<usize>,
    /// Head MLP: hidden width, bottleneck width and number of linear layers (references: 2048, 256, 3).
    #[arg(long, default_value_t = 512)]
    pub head_hidden: usize,
    #[arg(long, default_value_t = 128)]
    pub head_bottleneck: usize,
    #[arg(long, default_value_t = 3)]
    pub head_layers: usize,
    /// DINO: number of prototypes (reference 65536).
    #[arg(long, default_value_t = 1024)]
    pub out_dim: usize,
    /// Base EMA momentum of the teacher (cosine to 1 over the run).
    #[arg(long, default_value_t = 0.996)]
    pub momentum_teacher: f64,
    /// Final weight decay of the cosine from --weight-decay.
    #[arg(long, default_value_t = 0.4)]
    pub weight_decay_end: f64,
    /// DINO: teacher temperature at the start of its linear warm-up.
    #[arg(long, default_value_t = 0.04)]
    pub warmup_teacher_temp: f64,
    /// DINO: teacher temperature after the warm-up.
    #[arg(long, default_value_t = 0.04)]
    pub teacher_temp: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_teacher_temp_epochs: usize,
    #[arg(long, default_value_t = 0.1)]
    pub student_temp: f64,
    #[arg(long, default_value_t = 0.9)]
    pub center_momentum: f64,
    /// DINO: epochs during which the prototype layer is frozen.
    #[arg(long, default_value_t = 1)]
    pub freeze_last_layer: usize,
    /// SimDINO: ε of the coding rate.
    #[arg(long, default_value_t = 0.5)]
    pub eps: f64,
    /// SimDINO: weight of the compression (cosine) term.
    #[arg(long, default_value_t = 1.0)]
    pub coeff: f64,
    /// SimDINO: expansion on the student's global views (0) or their mean with the teacher's (1).
    #[arg(long, default_value_t = 1)]
    pub expa_type: u8,
    /// k-NN evaluation after each epoch: neighbours, temperature, number of train images as neighbours.
    #[arg(long, default_value_t = 20)]
    pub knn_k: usize,
    #[arg(long, default_value_t = 0.07)]
    pub knn_temperature: f64,
    #[arg(long, default_value_t = 10000)]
    pub knn_bank: usize,
}

#[derive(Args, Debug)]
pub struct KnnArgs {
    /// CRATE weights (a classifier, a `dino train` checkpoint, or a CRATE-MAE encoder).
    #[arg(long, conflicts_with = "pixels")]
    pub weights: Option<PathBuf>,
    /// Preset or JSON config; without --weights, a randomly initialised CRATE of this shape.
    #[arg(long)]
    pub config: Option<String>,
    /// Use the normalised pixels as the features (the raw-pixel baseline).
    #[arg(long)]
    pub pixels: bool,
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of neighbours.
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    /// Temperature of the exp(sim/T) votes.
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    /// Seed of the random initialisation (without --weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub train_limit: Option<usize>,
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: DinoCommand) -> Result<()> {
    match c {
        DinoCommand::Train(a) => train(a),
    }
}

/// `whitebox dino train`: DINO / SimDINO on the classifier's training engine.
pub fn train(d: DinoTrainArgs) -> Result<()> {
    let options = SslOptions {
        loss: d.loss,
        local_crops: d.local_crops,
        local_size: d.local_size,
        head_hidden: d.head_hidden,
        head_bottleneck: d.head_bottleneck,
        head_layers: d.head_layers,
        out_dim: d.out_dim,
        momentum_teacher: d.momentum_teacher,
        warmup_teacher_temp: d.warmup_teacher_temp,
        teacher_temp: d.teacher_temp,
        warmup_teacher_temp_epochs: d.warmup_teacher_temp_epochs,
        student_temp: d.student_temp,
        center_momentum: d.center_momentum,
        freeze_last_layer: d.freeze_last_layer,
        eps: d.eps,
        coeff: d.coeff,
        expa_type: d.expa_type,
        knn_k: d.knn_k,
        knn_temperature: d.knn_temperature,
        knn_bank: d.knn_bank,
        epochs: d.train.epochs,
    };
    let settings = DinoTrainSettings {
        image: d.train.settings()?,
        options,
        weight_decay_end: d.weight_decay_end,
    };
    super::print_outcome(&dino::train(&settings)?, d.train.json)
}

/// `whitebox knn`: DINO's weighted k-NN on cosine similarity of frozen features; the train split
/// is the neighbours, the test split the queries.
pub fn knn(a: KnnArgs) -> Result<()> {
    let source = match (&a.weights, &a.config, a.pixels) {
        (None, None, true) => FeatureSource::Pixels,
        (None, Some(spec), false) => FeatureSource::RandomInit {
            config: spec.clone(),
            seed: a.seed,
        },
        (Some(p), _, false) => FeatureSource::Weights {
            path: p.clone(),
            config: a.config.clone(),
        },
        (None, Some(_), true) => bail!("--pixels takes no --config"),
        (None, None, false) => bail!("give --weights W, --config C (random init) or --pixels"),
        (Some(_), _, true) => unreachable!("clap refuses --weights with --pixels"),
    };
    let limits = (a.train_limit, a.test_limit);
    let r = source.knn(&a.data.data, a.data.format, limits, a.k, a.temperature)?;
    super::print_outcome(&r, a.json)
}
