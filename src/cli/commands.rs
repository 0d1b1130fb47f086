//! What each subcommand does; argument parsing lives in `cli/mod.rs`.

use crate::cli::output::{out, outln};
use anyhow::{bail, Result};

use serde_json::json;
use std::time::Instant;

use super::{EvalArgs, InfoArgs, MeasureArgs, PredictArgs, TrainArgs, WeightArgs};
use whitebox::data::{self, Augment, Normalization, Split};
use whitebox::infer::forward::read_images;
use whitebox::model::CrateConfig;
pub(super) use whitebox::train::image_run::check_shape;
use whitebox::train::image_run::{self, ImageTrainSettings};
use whitebox::train::{self, OptimSettings, Recipe};
use whitebox::weights::{self, write_atomic, Loaded, ModelConfig};
use whitebox::InferBackend;

pub fn info(a: InfoArgs) -> Result<()> {
    let config = ModelConfig::resolve(&a.config)?;
    outln!("{}", config.to_json_pretty())?;
    outln!("{}", config.tokens_line())?;
    outln!("parameters: {}", config.param_count())?;
    Ok(())
}

/// The model in `--weights` with its config (`--config`, else the one stored with the weights).
pub(super) fn load(w: &WeightArgs) -> Result<Loaded<InferBackend>> {
    weights::load(
        &w.weights,
        w.config.as_deref(),
        w.strict,
        &Default::default(),
    )
}

/// `split` of `--data`, its first `limit` images only.
pub(super) fn load_split(
    d: &super::DataArgs,
    split: Split,
    limit: Option<usize>,
) -> Result<data::ImageSet> {
    image_run::load_split(&d.data, d.format, split, limit)
}

/// `[channels, height, width]` of a CRATE classifier's input.
pub(super) fn input_shape(cfg: &CrateConfig) -> [usize; 3] {
    [cfg.channels, cfg.image_size, cfg.image_size]
}

impl TrainArgs {
    /// The library's settings of the training flags: a progress bar unless `--json`, Ctrl-C
    /// saves and stops.
    pub(super) fn settings(&self) -> Result<ImageTrainSettings> {
        let a = self;
        let recipe = Recipe {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            min_lr: a.min_lr,
            warmup_epochs: a.warmup_epochs,
            label_smoothing: a.label_smoothing,
            seed: a.seed,
            optim: OptimSettings {
                kind: a.optimizer,
                weight_decay: a.weight_decay,
                beta1: a.beta1,
                beta2: a.beta2,
                no_decay_norm_bias: a.no_decay_norm_bias,
                clip_grad_norm: train::optim::clip_setting(a.clip_grad_norm)?,
            },
            augment: Augment {
                crop_padding: a.crop_padding,
                hflip: a.hflip,
            },
            ..Recipe::MAIN_JOB
        };
        let options = train::RunOptions {
            show_progress: !a.json,
            stop_after: a.stop_after,
            cancel: train::Cancel::on_signals(),
            precision: Some(a.precision),
            ..Default::default()
        };
        let mut s = ImageTrainSettings::new(&a.config, &a.data.data, &a.run_dir, recipe);
        s.run.format = a.data.format;
        (s.run.options, s.run.measure_every) = (options, a.measure_every);
        s.run.measure_images = a.measure_images;
        s.arch = a.arch.as_deref().map(str::parse).transpose()?;
        (s.resume, s.overwrite, s.given) = (a.resume, a.overwrite, a.given.clone());
        (s.init_from, s.train_limit, s.test_limit) =
            (a.init_from.clone(), a.train_limit, a.test_limit);
        Ok(s)
    }
}

/// `whitebox train`: a CRATE, CRATE-α or ToST classifier.
pub fn train(a: TrainArgs) -> Result<()> {
    let out = whitebox::train::train_classifier(&a.settings()?)?;
    super::print_outcome(&out, a.json)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let l = load(&a.weights)?.into_image_classifier()?;
    let t0 = Instant::now();
    let (data, format, limit) = (&a.data.data, a.data.format, a.test_limit);
    let r = l.evaluate_test_split(data, format, limit, a.batch_size, &Default::default())?;
    outln!(
        "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  ({} images)",
        100.0 * r.top1,
        100.0 * r.top5,
        r.loss,
        r.n
    )?;
    if a.json {
        outln!(
            "{}",
            json!({"test_acc": r.top1, "test_top5": r.top5, "test_loss": r.loss, "n": r.n, "epochs": 0, "seconds": t0.elapsed().as_secs_f64()})
        )?;
    }
    Ok(())
}

/// Top-k labels of a classifier (CRATE or ToST) per image.
pub fn predict(a: PredictArgs) -> Result<()> {
    let l = load(&a.weights)?.into_image_classifier()?;
    let norm = l.normalization_or_half(l.config.input[0])?;
    for path in &a.images {
        let top = l.predict_file(path, &norm, a.top_k, &Default::default())?;
        let top: Vec<String> = top
            .iter()
            .map(|(class, p)| format!("{class} {:.1}%", 100.0 * p))
            .collect();
        outln!("{}: {}", path.display(), top.join(", "))?;
    }
    Ok(())
}

pub fn measure(a: MeasureArgs) -> Result<()> {
    let device = Default::default();
    let l = load(&a.weights)?.into_crate()?;
    let cfg = &l.config;
    let x = match (&a.input, &a.data) {
        (Some(p), _) => read_images::<InferBackend>(p, input_shape(cfg), &device)?,
        (None, Some(dir)) => {
            let mut set = data::load(dir, a.format, Split::Test)?;
            set.truncate(a.limit.max(1));
            check_shape(input_shape(cfg), &set, dir)?;
            let norm = l
                .normalization(cfg.channels)?
                .unwrap_or_else(|| Normalization::from_set(&set));
            norm.batch_all::<InferBackend>(&set, &device)
        }
        (None, None) => bail!("give --input X.safetensors or --data DIR"),
    };
    let s = whitebox::measure::MeasureSettings {
        eps_sq: a.eps_sq,
        official_eps: a.official_eps,
    };
    let m = whitebox::measure::measure_batch(&l.model, x, s)?;
    out!("{}", whitebox::measure::table(&m, cfg.depth))?;
    if let Some(path) = &a.json {
        write_atomic(path, serde_json::to_string_pretty(&m)?.as_bytes())?;
        outln!("wrote {} measures to {}", m.len(), path.display())?;
    }
    if let Some(prefix) = &a.plot {
        let curves = whitebox::measure::LayerCurves::from_measures(&m, cfg.depth)?;
        let (png, svg) =
            whitebox::viz::curves::save_layer_curves(prefix, &[(String::new(), &curves)])?;
        outln!("wrote {} and {}", png.display(), svg.display())?;
    }
    Ok(())
}
