//! What each subcommand does; argument parsing lives in `cli/mod.rs`.

use anyhow::{bail, ensure, Context, Result};

use serde_json::json;
use std::path::Path;
use std::time::Instant;

use super::{EvalArgs, InfoArgs, MeasureArgs, PredictArgs, TrainArgs, WeightArgs};
use whitebox::data::{self, Augment, Normalization, Split};
use whitebox::model::CrateConfig;
pub(super) use whitebox::train::image_run::check_shape;
use whitebox::train::image_run::{self, ImageRun, Saved, Started};
use whitebox::train::resume::{same_json, ResumeCheck};
use whitebox::train::{self, OptimSettings, Recipe, TrainState};
use whitebox::weights::forward::read_images;
use whitebox::weights::{self, read_state_dict, write_atomic, Loaded, ModelConfig, StateDict};
use whitebox::{InferBackend, TrainBackend};

pub fn info(a: InfoArgs) -> Result<()> {
    let config = ModelConfig::resolve(&a.config)?;
    println!("{}", config.to_json_pretty());
    println!("{}", config.tokens_line());
    println!("parameters: {}", config.param_count());
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

/// The normalisation stored with weights, else (with a warning) the training split's statistics.
pub(super) fn norm_or_train(
    stored: Option<Normalization>,
    d: &super::DataArgs,
) -> Result<Normalization> {
    Ok(match stored {
        Some(n) => n,
        None => {
            tracing::warn!(
                "no normalisation stored with the weights; using the train split's statistics"
            );
            Normalization::from_set(&load_split(d, Split::Train, None)?)
        }
    })
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

/// The recipe given by the training flags, checked for images of `image_size` pixels.
pub(super) fn recipe_from(a: &TrainArgs, image_size: usize) -> Result<Recipe> {
    let recipe = Recipe {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        // the default final rate never exceeds a small --lr; a given --min-lr above it is an error
        min_lr: if a.given.iter().any(|g| g == "min_lr") {
            a.min_lr
        } else {
            a.min_lr.min(a.lr)
        },
        warmup_epochs: a.warmup_epochs,
        label_smoothing: a.label_smoothing,
        seed: a.seed,
        optim: OptimSettings {
            kind: a.optimizer,
            weight_decay: a.weight_decay,
            beta1: a.beta1,
            beta2: a.beta2,
            no_decay_norm_bias: a.no_decay_norm_bias,
            clip_grad_norm: whitebox::train::optim::clip_setting(a.clip_grad_norm)?,
        },
        augment: Augment {
            crop_padding: a.crop_padding,
            hflip: a.hflip,
        },
        schedule: Default::default(),
        weight_decay_end: None,
    };
    recipe.validate(image_size)?;
    Ok(recipe)
}

/// The state a fresh run of `recipe` starts from, with the flags' data and limits.
pub(super) fn fresh_state(recipe: Recipe, a: &TrainArgs) -> TrainState {
    image_run::fresh_state(recipe, &a.data.data, a.train_limit, a.test_limit)
}

/// The image run the flags describe: a progress bar unless `--json`, Ctrl-C saves and stops.
pub(super) fn image_run(a: &TrainArgs) -> ImageRun {
    ImageRun {
        data: a.data.data.clone(),
        format: a.data.format,
        run_dir: a.run_dir.clone(),
        options: train::RunOptions {
            show_progress: !a.json,
            stop_after: a.stop_after,
            cancel: train::Cancel::on_signals(),
            precision: Some(a.precision),
            ..Default::default()
        },
        measure_every: a.measure_every,
        measure_images: a.measure_images,
    }
}

/// `--resume`: the given training flags against the run's state (`wanted`: the recipe the flags
/// would start a run with).
pub(super) fn resume_check<'a>(
    a: &'a TrainArgs,
    wanted: Recipe,
    run: &TrainState,
) -> ResumeCheck<'a> {
    ResumeCheck::new(&a.given)
        .fields(&fresh_state(wanted, a), run, &[("optimizer", "kind")])
        .refuse("init_from", "no --init-from on resume")
}

/// `--init-from` weights, read once for a fresh run.
pub(super) fn init_weights(a: &TrainArgs) -> Result<Option<(&Path, StateDict)>> {
    a.init_from
        .as_deref()
        .map(|p| Ok((p, read_state_dict(p)?)))
        .transpose()
}

/// Refuse the training flags `ids` (clap ids) given to a command they do not apply to (`what`).
pub(super) fn refuse_flags(a: &TrainArgs, ids: &[&str], what: &str) -> Result<()> {
    let given: Vec<String> = ids
        .iter()
        .filter(|id| a.given.iter().any(|g| g == *id))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    ensure!(
        given.is_empty(),
        "{} does not apply to {what}",
        given.join(", ")
    );
    Ok(())
}

/// The classifier config the flags `--config` and `--arch` describe.
fn config_from_flags(a: &TrainArgs) -> Result<CrateConfig> {
    let mut config = CrateConfig::resolve(&a.config)?;
    if let Some(arch) = &a.arch {
        config = config.with_arch(arch.parse()?)?;
    }
    Ok(config)
}

/// `whitebox train` of a CRATE / CRATE-α classifier (the run lock is held by `cli::train`).
pub fn train(a: TrainArgs) -> Result<()> {
    let saved = Saved {
        read_config: CrateConfig::from_json_file,
        init: |c: &CrateConfig, d| c.init::<TrainBackend>(d),
        read_weights: image_run::model_weights,
    };
    let started = if a.resume {
        saved.resume(&a.run_dir, |run, state| {
            let wanted = config_from_flags(&a)?;
            resume_check(&a, recipe_from(&a, run.image_size)?, state)
                .fields(&wanted, run, &[])
                .model(&a.config, || same_json(&wanted, run))
                .check(&a.run_dir)
        })?
    } else {
        let (mut config, mut init) = (config_from_flags(&a)?, init_weights(&a)?);
        if let Some((p, sd)) = &mut init {
            config = image_run::classifier_init(config, p, sd)?;
        }
        let state = fresh_state(recipe_from(&a, config.image_size)?, &a);
        saved.fresh(&a.run_dir, a.overwrite, config, state, init)?
    };
    let config = started.config.clone();
    let task = train::Classify::new(
        config.clone(),
        started.state.recipe.label_smoothing,
        &Default::default(),
    );
    let input = input_shape(&config);
    run_classifier(
        &a,
        &task,
        started,
        input,
        config.num_classes,
        config.param_count(),
    )
}

/// Train a classifier `task` (CRATE, CRATE-α or ToST) and print its test accuracy (a resumed
/// run that had already finished is evaluated as saved).
pub(super) fn run_classifier<T: train::Task<TrainBackend>, C>(
    a: &TrainArgs,
    task: &T,
    mut started: Started<C, T::Model>,
    input: [usize; 3],
    num_classes: usize,
    params: usize,
) -> Result<()> {
    let t_start = Instant::now();
    let run = image_run(a);
    let (train_set, test_set) = run.splits(&mut started.state, input, Some(num_classes))?;
    tracing::info!(
        "training {params} params on {} images ({} test) from {}, {} epochs",
        train_set.len(),
        test_set.len(),
        a.data.data.display(),
        started.state.recipe.epochs
    );
    let end = run.fit(task, started, &train_set, &test_set)?;
    let (acc, loss) = (end.eval.top1, end.eval.loss);
    println!(
        "test accuracy {:.2}%  (test loss {:.4}, {} epochs, weights in {})",
        100.0 * acc,
        loss,
        end.state.epoch,
        end.weights.display()
    );
    if a.json {
        println!(
            "{}",
            json!({"test_acc": acc, "test_loss": loss, "epochs": end.state.epoch, "steps": end.state.step,
                   "seconds": t_start.elapsed().as_secs_f64(), "train_seconds": end.state.seconds,
                   "weights": end.weights})
        );
    }
    Ok(())
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let l = load(&a.weights)?.into_image_classifier()?;
    let device = Default::default();
    let t0 = Instant::now();
    ensure!(a.batch_size > 0, "--batch-size must be at least 1");
    let shape = l.config.input;
    let test = load_split(&a.data, Split::Test, a.test_limit)?;
    check_shape(shape, &test, &a.data.data)?;
    test.check_labels(l.config.num_classes)
        .with_context(|| format!("{}: test split", a.data.data.display()))?;
    let norm = norm_or_train(l.normalization(shape[0])?, &a.data)?;
    let r = train::evaluate_with(|x| l.model.forward(x), &test, &norm, a.batch_size, &device)?;
    println!(
        "top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  ({} images)",
        100.0 * r.top1,
        100.0 * r.top5,
        r.loss,
        r.n
    );
    if a.json {
        println!(
            "{}",
            json!({"test_acc": r.top1, "test_top5": r.top5, "test_loss": r.loss, "n": r.n, "epochs": 0, "seconds": t0.elapsed().as_secs_f64()})
        );
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
        println!("{}: {}", path.display(), top.join(", "));
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
    print!("{}", whitebox::measure::table(&m, cfg.depth));
    if let Some(path) = &a.json {
        write_atomic(path, serde_json::to_string_pretty(&m)?.as_bytes())?;
        println!("wrote {} measures to {}", m.len(), path.display());
    }
    if let Some(prefix) = &a.plot {
        let curves = whitebox::measure::LayerCurves::from_measures(&m, cfg.depth)?;
        let (png, svg) =
            whitebox::viz::curves::save_layer_curves(prefix, &[(String::new(), &curves)])?;
        println!("wrote {} and {}", png.display(), svg.display());
    }
    Ok(())
}
