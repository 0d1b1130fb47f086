//! What each subcommand does; argument parsing lives in `cli/mod.rs`.

use anyhow::{bail, ensure, Context, Result};

use burn::tensor::{Tensor, TensorData};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

use super::{EvalArgs, InfoArgs, MeasureArgs, PredictArgs, TrainArgs, WeightArgs};
use whitebox::data::{self, Augment, Normalization, Split};
use whitebox::model::{Activations, CrateBackend, CrateConfig};
use whitebox::train::{
    self, Checkpoint, OptimSettings, Recipe, TrainOptimizer, TrainRun, TrainState,
};
use whitebox::weights::{
    self, apply_state_dict, canonical_ids, read_input_tensor, read_state_dict, safetensors_bytes,
    write_atomic, Loaded, ModelConfig, StateDict,
};
use whitebox::{InferBackend, TrainBackend};

pub fn info(a: InfoArgs) -> Result<()> {
    let config = ModelConfig::resolve(&a.config)?;
    println!("{}", config.to_json_pretty());
    match &config {
        ModelConfig::Mae(mae) => println!(
            "tokens: {} patches + cls ({} visible at mask ratio {}), patch dim {}",
            mae.num_patches(),
            mae.len_keep(),
            mae.mask_ratio,
            mae.patch_dim()
        ),
        ModelConfig::Tost(cfg) => println!(
            "tokens: {} ({}×{} grid after the conv stem) + cls in the class-attention blocks",
            cfg.num_patches(),
            cfg.grid(),
            cfg.grid()
        ),
        ModelConfig::Crate(cfg) => println!(
            "tokens: {} patches + cls, patch dim {}",
            cfg.num_patches(),
            cfg.patch_dim()
        ),
        ModelConfig::Lm(cfg) => println!(
            "context: {} tokens, vocabulary {}",
            cfg.block_size, cfg.vocab_size
        ),
        ModelConfig::Bert(cfg) => println!(
            "context: {} tokens, vocabulary {}",
            cfg.max_len(),
            cfg.vocab_size
        ),
    }
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

pub(super) fn load_split(
    d: &super::DataArgs,
    split: Split,
    limit: Option<usize>,
) -> Result<data::ImageSet> {
    let mut set = data::load(&d.data, d.format, split)?;
    if let Some(n) = limit {
        set.truncate(n);
    }
    Ok(set)
}

/// `[channels, height, width]` of a CRATE classifier's input.
pub(super) fn input_shape(cfg: &CrateConfig) -> [usize; 3] {
    [cfg.channels, cfg.image_size, cfg.image_size]
}

/// The images of `set` must have the model's input shape `want` `[channels, height, width]`.
pub(super) fn check_shape(want: [usize; 3], set: &data::ImageSet, what: &Path) -> Result<()> {
    ensure!(
        [set.channels, set.height, set.width] == want,
        "{}: images are {}×{}×{} but the model expects {}×{}×{} (channels × height × width)",
        what.display(),
        set.channels,
        set.height,
        set.width,
        want[0],
        want[1],
        want[2]
    );
    Ok(())
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

/// A run that has not started (normalisation is filled in from the training split).
pub(super) fn fresh_state(recipe: Recipe, a: &TrainArgs) -> TrainState {
    TrainState {
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        ..TrainState::new(recipe, &a.data.data)
    }
}

/// The train and test splits of a run (the state's limits), each checked by `check`; the state's
/// normalisation is filled in from the training split and the run folder exists.
pub(super) fn run_splits(
    a: &TrainArgs,
    state: &mut TrainState,
    check: impl Fn(&data::ImageSet) -> Result<()>,
) -> Result<(data::ImageSet, data::ImageSet)> {
    let train_set = load_split(&a.data, Split::Train, state.train_limit)?;
    let test_set = load_split(&a.data, Split::Test, state.test_limit)?;
    check(&train_set)?;
    check(&test_set).context("the test split differs from the model")?;
    state.fill_from(&train_set);
    std::fs::create_dir_all(&a.run_dir)
        .with_context(|| format!("cannot create {}", a.run_dir.display()))?;
    Ok((train_set, test_set))
}

/// What `train::fit` needs of the flags, for the splits of [`run_splits`]: checkpoints in
/// `--run-dir`, a progress bar unless `--json`, Ctrl-C saves and stops.
pub(super) fn train_run<'a>(
    a: &TrainArgs,
    train_set: &'a data::ImageSet,
    test_set: &'a data::ImageSet,
) -> TrainRun<'a> {
    let options = train::RunOptions {
        show_progress: !a.json,
        stop_after: a.stop_after,
        cancel: train::Cancel::on_signals(),
        precision: Some(a.precision),
        ..train::RunOptions::in_dir(&a.run_dir)
    };
    TrainRun {
        measure_every: a.measure_every,
        measure_images: a.measure_images,
        ..TrainRun::with_options(options, train_set, test_set)
    }
}

/// A run restored for `--resume`: config, state, weights and optimizer.
pub type Resumed<C, M> = (C, TrainState, M, TrainOptimizer<M, TrainBackend>);

/// A flag as given on the command line (`None` when it was left at its default).
pub(super) fn given<T: ToString>(a: &[String], id: &str, v: T) -> Option<String> {
    a.iter().any(|g| g == id).then(|| v.to_string())
}

/// A run-defining flag for `--resume`: `name` (clap id: `--weight-decay` → `weight_decay`) with
/// its command-line value `cli` when it was given, against the run's value `run`.
pub(super) fn flag(
    g: &[String],
    name: &'static str,
    cli: impl ToString,
    run: impl ToString,
) -> (&'static str, Option<String>, String) {
    let id = name.trim_start_matches("--").replace('-', "_");
    (name, given(g, &id, cli), run.to_string())
}

/// `--resume`: every run-defining flag given on the command line must equal the run's value
/// (`(flag, given value, the run's value)`); a run continues only as it was started.
pub fn check_resume_flags(
    run_dir: &Path,
    items: Vec<(&str, Option<String>, String)>,
) -> Result<()> {
    let differ: Vec<String> = items
        .into_iter()
        .filter_map(|(flag, g, run)| {
            g.filter(|g| *g != run)
                .map(|g| format!("{flag} {g} (the run has {run})"))
        })
        .collect();
    ensure!(
        differ.is_empty(),
        "--resume: the run in {} was started with other settings: {}; drop these flags \
         to continue it, or start a new run in another --run-dir",
        run_dir.display(),
        differ.join(", ")
    );
    Ok(())
}

/// The training flags of `a` against a resumed run's state.
fn recipe_flags(a: &TrainArgs, s: &TrainState) -> Vec<(&'static str, Option<String>, String)> {
    let (g, r) = (&a.given, &s.recipe);
    let limit = |v: Option<usize>| v.map_or("all".to_string(), |n| n.to_string());
    vec![
        (
            "--data",
            given(g, "data", a.data.data.display()),
            s.data.clone(),
        ),
        (
            "--init-from",
            a.init_from.as_ref().map(|p| p.display().to_string()),
            "no --init-from on resume".into(),
        ),
        flag(g, "--epochs", a.epochs, r.epochs),
        flag(g, "--batch-size", a.batch_size, r.batch_size),
        flag(g, "--lr", a.lr, r.lr),
        flag(g, "--min-lr", a.min_lr, r.min_lr),
        flag(g, "--warmup-epochs", a.warmup_epochs, r.warmup_epochs),
        (
            "--optimizer",
            given(g, "optimizer", format!("{:?}", a.optimizer)),
            format!("{:?}", r.optim.kind),
        ),
        flag(g, "--weight-decay", a.weight_decay, r.optim.weight_decay),
        flag(g, "--beta1", a.beta1, r.optim.beta1),
        flag(g, "--beta2", a.beta2, r.optim.beta2),
        flag(
            g,
            "--no-decay-norm-bias",
            a.no_decay_norm_bias,
            r.optim.no_decay_norm_bias,
        ),
        flag(g, "--label-smoothing", a.label_smoothing, r.label_smoothing),
        flag(
            g,
            "--clip-grad-norm",
            a.clip_grad_norm,
            r.optim.clip_grad_norm.unwrap_or(0.0),
        ),
        flag(g, "--crop-padding", a.crop_padding, r.augment.crop_padding),
        flag(g, "--hflip", a.hflip, r.augment.hflip),
        flag(g, "--seed", a.seed, r.seed),
        (
            "--train-limit",
            given(g, "train_limit", limit(a.train_limit)),
            limit(s.train_limit),
        ),
        (
            "--test-limit",
            given(g, "test_limit", limit(a.test_limit)),
            limit(s.test_limit),
        ),
    ]
}

/// Without `--resume`: refuse a run folder that holds a checkpoint (unless `--overwrite`). With
/// it: bring the run folder back to its last complete checkpoint and restore the run from it,
/// after checking every flag given against the run (`config_flags` adds the model's flags;
/// `read_config` reads its `config.json`, `init` builds the model). Hold the run's lock.
pub fn resume_run<
    C,
    M: burn::module::AutodiffModule<TrainBackend> + whitebox::weights::OfficialKeys,
>(
    a: &TrainArgs,
    read_config: impl Fn(&Path) -> Result<C>,
    config_flags: impl Fn(&C) -> Result<Vec<(&'static str, Option<String>, String)>>,
    init: impl Fn(&C) -> M,
) -> Result<Option<Resumed<C, M>>> {
    resume_run_with(a, read_config, config_flags, init, |dir| {
        read_state_dict(&dir.join("model.safetensors"))
    })
}

/// [`resume_run`] for a checkpoint whose weights `read_weights` gathers from its folder.
pub fn resume_run_with<
    C,
    M: burn::module::AutodiffModule<TrainBackend> + whitebox::weights::OfficialKeys,
>(
    a: &TrainArgs,
    read_config: impl Fn(&Path) -> Result<C>,
    config_flags: impl Fn(&C) -> Result<Vec<(&'static str, Option<String>, String)>>,
    init: impl Fn(&C) -> M,
    read_weights: impl Fn(&Path) -> Result<StateDict>,
) -> Result<Option<Resumed<C, M>>> {
    if !a.resume {
        train::checkpoint::start_fresh(&a.run_dir, a.overwrite)?;
        return Ok(None);
    }
    let device = Default::default();
    let dir = train::checkpoint::recover(&a.run_dir)?
        .with_context(|| format!("--resume: no checkpoint in {}", a.run_dir.display()))?;
    let state = Checkpoint::load_state(&dir)?;
    let config = read_config(&dir.join("config.json"))?;
    let mut flags = recipe_flags(a, &state);
    flags.extend(config_flags(&config)?);
    check_resume_flags(&a.run_dir, flags)?;
    let sd = read_weights(&dir)?;
    let (model, _) = apply_state_dict(init(&config), &sd, true)?;
    let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model).load(&dir, &device)?;
    tracing::info!(
        "resuming {} at epoch {} batch {} (step {})",
        a.run_dir.display(),
        state.epoch + 1,
        state.batch,
        state.step
    );
    Ok(Some((config, state, model, optim)))
}

/// The classifier config the flags `--config` and `--arch` describe.
fn config_from_flags(a: &TrainArgs) -> Result<CrateConfig> {
    let mut config = CrateConfig::resolve(&a.config)?;
    if let Some(arch) = &a.arch {
        config = config.with_arch(arch.parse()?)?;
    }
    Ok(config)
}

pub fn train(a: TrainArgs) -> Result<()> {
    // the run lock is held by the caller (`cli::train`)
    let device = Default::default();
    let config_flags = |run: &CrateConfig| -> Result<Vec<(&'static str, Option<String>, String)>> {
        let same = |c: &CrateConfig| serde_json::to_value(c).ok() == serde_json::to_value(run).ok();
        let mut v = vec![("--arch", a.arch.clone(), run.arch.to_string())];
        if a.given.iter().any(|g| g == "config") && !same(&config_from_flags(&a)?) {
            v.push((
                "--config",
                Some(a.config.clone()),
                "another model (its checkpoint/config.json)".into(),
            ));
        }
        Ok(v)
    };
    let resumed = resume_run(&a, CrateConfig::from_json_file, config_flags, |c| {
        c.init::<TrainBackend>(&device)
    })?;
    let (config, state, model, optim) = if let Some(r) = resumed {
        r
    } else {
        let mut config = config_from_flags(&a)?;
        let mut init = match &a.init_from {
            Some(p) => Some((p, read_state_dict(p)?)),
            None => None,
        };
        if let Some((p, sd)) = init.as_mut() {
            if whitebox::model::mae::is_mae_state_dict(sd) {
                // fine-tune from a CRATE-MAE encoder: its shape, a new head of --config's classes
                let ModelConfig::Mae(mae) = weights::load::config_of(p, None)? else {
                    bail!(
                        "{}: CRATE-MAE keys but no CRATE-MAE config stored with them",
                        p.display()
                    );
                };
                config = mae.encoder_classifier(config.num_classes);
                *sd = whitebox::model::mae::encoder_state_dict(sd);
                tracing::info!(
                    "--init-from {}: CRATE-MAE encoder → {} classifier",
                    p.display(),
                    config.arch
                );
            }
        }
        <TrainBackend as burn::tensor::backend::Backend>::seed(&device, a.seed);
        let mut model = canonical_ids(config.init::<TrainBackend>(&device));
        if let Some((p, sd)) = &init {
            let (m, report) = apply_state_dict(model, sd, false)?;
            if !report.is_clean() {
                tracing::warn!("--init-from {}: {}", p.display(), report.describe());
            }
            model = m;
        }
        let recipe = recipe_from(&a, config.image_size)?;
        let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
        let state = fresh_state(recipe, &a);
        (config, state, model, optim)
    };
    let shape = Classifier {
        input: input_shape(&config),
        num_classes: config.num_classes,
        params: config.param_count(),
    };
    let task = train::Classify::new(config, state.recipe.label_smoothing, &device);
    run_classifier(&a, &task, model, optim, state, shape)
}

/// What the training command checks the data against and logs.
pub(super) struct Classifier {
    /// `[channels, height, width]`.
    pub input: [usize; 3],
    pub num_classes: usize,
    pub params: usize,
}

/// Load the data, train `task` from `state` with [`train::fit`] and print the result
/// (a resumed run that had already finished is evaluated as saved).
pub(super) fn run_classifier<T: train::Task<TrainBackend>>(
    a: &TrainArgs,
    task: &T,
    model: T::Model,
    optim: TrainOptimizer<T::Model, TrainBackend>,
    mut state: TrainState,
    shape: Classifier,
) -> Result<()> {
    use burn::module::AutodiffModule;
    let device = Default::default();
    let t_start = Instant::now();
    let (train_set, test_set) = run_splits(a, &mut state, |set| {
        check_shape(shape.input, set, &a.data.data)
    })?;
    ensure!(
        train_set.num_classes() <= shape.num_classes,
        "{}: {} classes but the model has num_classes = {}",
        a.data.data.display(),
        train_set.num_classes(),
        shape.num_classes
    );
    for (set, split) in [(&train_set, "train"), (&test_set, "test")] {
        set.check_labels(shape.num_classes)
            .with_context(|| format!("{}: {split} split", a.data.data.display()))?;
    }
    state
        .normalization
        .validate(shape.input[0])
        .context("the run's normalisation")?;
    tracing::info!(
        "training {} params on {} images ({} test) from {}, {} epochs",
        shape.params,
        train_set.len(),
        test_set.len(),
        a.data.data.display(),
        state.recipe.epochs
    );
    let run = train_run(a, &train_set, &test_set);
    // a resumed run that has already finished trains no further: evaluate the weights as saved
    let no_epoch = a.stop_after == Some(0) || state.epoch >= state.recipe.epochs;
    let finished = no_epoch.then(|| model.valid());
    let last = train::fit(&run, task, model, optim, state.clone(), &device)?.last;
    let dir = Checkpoint::dir(&a.run_dir);
    let final_state = Checkpoint::load_state(&dir)?;
    let (acc, loss) = match (&last, finished) {
        (Some(m), _) => (m.test_acc, m.test_loss),
        (None, Some(saved)) => {
            let r = task.evaluate(&saved, &test_set, &final_state.normalization, &device)?;
            (r.top1, r.loss)
        }
        (None, None) => bail!("training stopped before an epoch finished"),
    };
    println!(
        "test accuracy {:.2}%  (test loss {:.4}, {} epochs, weights in {})",
        100.0 * acc,
        loss,
        final_state.epoch,
        dir.join("model.safetensors").display()
    );
    if a.json {
        println!(
            "{}",
            json!({"test_acc": acc, "test_loss": loss, "epochs": final_state.epoch, "steps": final_state.step,
                   "seconds": t_start.elapsed().as_secs_f64(), "train_seconds": final_state.seconds,
                   "weights": dir.join("model.safetensors")})
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
    let device = Default::default();
    let [c, s, _] = l.config.input;
    let norm = l.normalization(c)?.unwrap_or_else(|| {
        tracing::warn!("no normalisation stored with the weights; using mean 0.5, std 0.5");
        Normalization {
            mean: vec![0.5; c],
            std: vec![0.5; c],
        }
    });
    let classes: Vec<String> = l
        .meta_json("class_names")?
        .unwrap_or_else(|| (0..l.config.num_classes).map(|i| i.to_string()).collect());
    for path in &a.images {
        let px = norm.apply_chw(&data::folder::read_image(path, c, s)?);
        let x = Tensor::<InferBackend, 4>::from_data(TensorData::new(px, [1, c, s, s]), &device);
        let probs = burn::tensor::activation::softmax(l.model.forward(x), 1);
        let p: Vec<f32> = probs.into_data().to_vec().unwrap();
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&i, &j| p[j].total_cmp(&p[i]));
        let top: Vec<String> = order
            .iter()
            .take(a.top_k.max(1))
            .map(|&i| {
                format!(
                    "{} {:.1}%",
                    classes.get(i).cloned().unwrap_or_else(|| i.to_string()),
                    100.0 * p[i]
                )
            })
            .collect();
        println!("{}: {}", path.display(), top.join(", "));
    }
    Ok(())
}

/// The `input` tensor (NCHW f32) of a safetensors file, checked against the model's input shape
/// `want` `[channels, height, width]`.
pub(super) fn read_input<B: CrateBackend>(
    path: &Path,
    want: [usize; 3],
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let input = read_input_tensor(path, "input", &want)?;
    Ok(Tensor::from_data(input.convert::<f32>(), device))
}

/// Write `logits` and any captured activations (golden names) as one safetensors file.
pub(super) fn write_forward<B: burn::tensor::backend::Backend>(
    path: &Path,
    logits: TensorData,
    acts: Activations<B>,
) -> Result<()> {
    let mut out = StateDict::new();
    out.insert("logits".into(), logits.convert::<f32>());
    for c in acts.into_vec() {
        out.insert(c.name, TensorData::new(c.values, c.shape));
    }
    write_atomic(path, &safetensors_bytes(out.iter(), None)?)?;
    println!("wrote {} tensors to {}", out.len(), path.display());
    Ok(())
}

pub fn measure(a: MeasureArgs) -> Result<()> {
    let device = Default::default();
    let l = load(&a.weights)?.into_crate()?;
    let cfg = &l.config;
    let x = match (&a.input, &a.data) {
        (Some(p), _) => read_input::<InferBackend>(p, input_shape(cfg), &device)?,
        (None, Some(dir)) => {
            let mut set = data::load(dir, a.format, Split::Test)?;
            set.truncate(a.limit.max(1));
            check_shape(input_shape(cfg), &set, dir)?;
            let norm = l
                .normalization(cfg.channels)?
                .unwrap_or_else(|| Normalization::from_set(&set));
            let batcher = data::Batcher {
                norm,
                augment: Augment::none(),
            };
            let idx: Vec<usize> = (0..set.len()).collect();
            batcher
                .batch::<InferBackend>(&set, &idx, &mut data::batch_rng(0, 0, 0), &device)
                .0
        }
        (None, None) => bail!("give --input X.safetensors or --data DIR"),
    };
    let s = whitebox::measure::MeasureSettings {
        eps_sq: a.eps_sq,
        official_eps: a.official_eps,
    };
    let m = whitebox::measure::measure_batch(&l.model, x, s)?;
    println!(
        "{:<8} {:>14} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "layer", "official R^c", "R(Z½)", "R^c(Z½)", "R(Z')", "R^c(Z')", "zeros"
    );
    println!(
        "{:<8} {:>14} {:>12} {:>12} {:>12.3} {:>12.3} {:>10}",
        "embed", "", "", "", m["paper.embed.R.batch_mean"], m["paper.embed.Rc.batch_mean"], ""
    );
    for i in 0..cfg.depth {
        let g = |k: &str| m[k];
        println!(
            "{:<8} {:>8.3}±{:<5.3} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>9.1}%",
            i,
            g(&format!("official.layer{i}.Rc_qkv_normalized.batch_mean")),
            g(&format!("official.layer{i}.Rc_qkv_normalized.batch_std")),
            g(&format!("paper.layer{i}.attn.R.batch_mean")),
            g(&format!("paper.layer{i}.attn.Rc.batch_mean")),
            g(&format!("paper.layer{i}.ista.R.batch_mean")),
            g(&format!("paper.layer{i}.ista.Rc.batch_mean")),
            100.0 * g(&format!("paper.layer{i}.ista.fraction_zero.batch_mean")),
        );
    }
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
