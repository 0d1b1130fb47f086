//! Self-supervised CRATE commands: `dino train` (DINO / SimDINO) and `knn`.

use anyhow::{bail, ensure, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

use super::commands::{
    fresh_state, image_run, init_weights, input_shape, load_split, recipe_from, refuse_flags,
    resume_check,
};
use super::{DataArgs, TrainArgs};
use whitebox::data::{Augment, Split};
use whitebox::model::ssl::{SslLoss, STUDENT_PREFIX};
use whitebox::model::CrateConfig;
use whitebox::train::image_run::Saved;
use whitebox::train::resume::same_json;
use whitebox::train::ssl::{
    knn_eval, read_checkpoint_weights, FeatureSource, SelfDistillTask, SslOptions, SslRunConfig,
};
use whitebox::train::{self, LrSchedule, Recipe};
use whitebox::TrainBackend;

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

/// Refuse classifier flags that have no meaning for self-distillation (set away from their defaults).
fn check_flags(d: &DinoTrainArgs) -> Result<()> {
    refuse_flags(
        &d.train,
        &["label_smoothing", "crop_padding", "hflip", "measure_every"],
        "`dino train` (the views are DINO's multi-crop ones)",
    )?;
    ensure!(
        d.weight_decay_end >= 0.0,
        "--weight-decay-end must not be negative"
    );
    Ok(())
}

/// The model and settings of a fresh run from the flags.
fn fresh_config(d: &DinoTrainArgs) -> Result<SslRunConfig> {
    let a = &d.train;
    let mut backbone = CrateConfig::resolve(&a.config)?;
    if let Some(arch) = &a.arch {
        backbone = backbone.with_arch(arch.parse()?)?;
    }
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
        epochs: a.epochs,
    };
    SslRunConfig::new(backbone, &options)
}

/// The recipe of the flags with DINO's schedule: weight decay along a cosine to
/// `--weight-decay-end`, no augmentation or label smoothing, no decay of biases and norms (as in
/// the references).
fn ssl_recipe(d: &DinoTrainArgs, image_size: usize) -> Result<Recipe> {
    let mut recipe = Recipe {
        schedule: LrSchedule::Dino,
        weight_decay_end: Some(d.weight_decay_end),
        augment: Augment::none(),
        label_smoothing: 0.0,
        ..recipe_from(&d.train, image_size)?
    };
    recipe.optim.no_decay_norm_bias = true;
    Ok(recipe)
}

/// `whitebox dino train`: DINO / SimDINO on the classifier's training engine.
pub fn train(d: DinoTrainArgs) -> Result<()> {
    check_flags(&d)?;
    let a = &d.train;
    let t_start = Instant::now();
    let _lock = train::checkpoint::RunLock::acquire(&a.run_dir)?;
    let saved = Saved {
        read_config: SslRunConfig::from_json_file,
        init: |c: &SslRunConfig, dev| c.model.init::<TrainBackend>(dev),
        read_weights: read_checkpoint_weights,
    };
    let mut started = if a.resume {
        saved.resume(&a.run_dir, |run, state| {
            let wanted = fresh_config(&d)?;
            let aliases = [
                ("head_hidden", "hidden_dim"),
                ("head_bottleneck", "bottleneck_dim"),
                ("head_layers", "nlayers"),
                ("knn_temperature", "knn_t"),
            ];
            resume_check(a, ssl_recipe(&d, run.model.backbone.image_size)?, state)
                .fields(&wanted, run, &aliases)
                .model(&a.config, || {
                    same_json(&wanted.model.backbone, &run.model.backbone)
                })
                .check(&a.run_dir)
        })?
    } else {
        let config = fresh_config(&d)?;
        // the same backbone weights for teacher (official keys) and student
        let init = init_weights(a)?.map(|(p, sd)| {
            let student = sd
                .iter()
                .map(|(k, v)| (format!("{STUDENT_PREFIX}{k}"), v.clone()));
            let both = sd.clone().into_iter().chain(student).collect();
            (p, both)
        });
        let state = fresh_state(ssl_recipe(&d, config.model.backbone.image_size)?, a);
        saved.fresh(&a.run_dir, a.overwrite, config, state, init)?
    };
    let config = started.config.clone();
    let run = image_run(a);
    let input = input_shape(&config.model.backbone);
    let (train_set, test_set) = run.splits(&mut started.state, input, None)?;
    let s = &config.settings;
    tracing::info!(
        "{:?} pre-training of a {}-parameter CRATE on {} images of {} ({} test): 2 global {}px + {} local {}px views, {} epochs",
        config.model.loss,
        config.model.backbone.param_count(),
        train_set.len(),
        a.data.data.display(),
        test_set.len(),
        s.crops.global_size,
        s.crops.local_crops,
        s.crops.local_size,
        started.state.recipe.epochs
    );
    let (k, t, bank) = (s.knn_k, s.knn_t, s.knn_bank);
    let norm = started.state.normalization.clone();
    let task = SelfDistillTask::<TrainBackend>::new(config.clone(), norm, &train_set);
    let end = run.fit(&task, started, &train_set, &test_set)?;
    let (top1, top5) = (end.eval.top1, end.eval.top5);
    let (terms, loss) = end
        .last
        .map_or((None, None), |m| (m.terms, Some(m.train_loss)));
    println!(
        "teacher k-NN top-1 {:.2}%  top-5 {:.2}%  (k = {k}, {} train images as neighbours; {} epochs, teacher backbone in {})",
        100.0 * top1,
        100.0 * top5,
        bank.min(train_set.len()),
        end.state.epoch,
        end.weights.display()
    );
    if a.json {
        println!(
            "{}",
            json!({"loss": config.model.loss, "knn_top1": top1, "knn_top5": top5, "knn_k": k, "knn_T": t,
                   "train_loss": loss.filter(|l: &f64| l.is_finite()), "terms": terms,
                   "epochs": end.state.epoch, "steps": end.state.step,
                   "seconds": t_start.elapsed().as_secs_f64(), "train_seconds": end.state.seconds,
                   "weights": end.weights})
        );
    }
    Ok(())
}

/// `whitebox knn`: DINO's weighted k-NN on cosine similarity of frozen features; the train split
/// is the neighbours, the test split the queries.
pub fn knn(a: KnnArgs) -> Result<()> {
    let device = Default::default();
    let t0 = Instant::now();
    let train_set = load_split(&a.data, Split::Train, a.train_limit)?;
    let test_set = load_split(&a.data, Split::Test, a.test_limit)?;
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
    let (source, norm, what) = source.open(&train_set, &a.data.data)?;
    let r = knn_eval(
        &train_set,
        &test_set,
        &norm,
        a.k,
        a.temperature,
        &device,
        |x| source.extract(x),
    )?;
    println!(
        "k-NN (k = {}, T = {}) on {}: top-1 {:.2}%  top-5 {:.2}%  ({} test images, {} neighbours, {:.0}s)",
        a.k,
        a.temperature,
        what,
        100.0 * r.top1,
        100.0 * r.top5,
        r.n,
        train_set.len(),
        t0.elapsed().as_secs_f64()
    );
    if a.json {
        println!(
            "{}",
            json!({"top1": r.top1, "top5": r.top5, "k": a.k, "T": a.temperature, "n": r.n,
                   "train": train_set.len(), "seconds": t0.elapsed().as_secs_f64()})
        );
    }
    Ok(())
}
