//! One image run — a classifier (CRATE, CRATE-α, ToST), CRATE-MAE pre-training or DINO/SimDINO —
//! in its run folder: resume the last checkpoint or start fresh, load the splits checked against
//! the model, [`fit`], and read back the final checkpoint. Every image command runs through it:
//! [`ImageTrainSettings`] is what a training command says, [`train_classifier`] the classifier's
//! whole run (`whitebox train`); `mae::train` and `ssl::train` are the pre-training ones.

use anyhow::{bail, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::resume::ResumeCheck;
use super::{
    checkpoint, fit, Checkpoint, EpochMetrics, EvalResult, Recipe, RunOptions, Task,
    TrainOptimizer, TrainRun, TrainState,
};
use crate::data::{self, Format, ImageSet, Split};
use crate::model::{mae, Arch, CrateConfig};
use crate::weights::{
    apply_state_dict, canonical_ids, read_state_dict, ModelConfig, OfficialKeys, StateDict,
};
use crate::TrainBackend;

/// Where an image run reads and writes, and how this invocation runs.
#[derive(Clone)]
pub struct ImageRun {
    pub data: PathBuf,
    pub format: Format,
    /// `checkpoint/` and `metrics.jsonl`; the caller holds its [`checkpoint::RunLock`].
    pub run_dir: PathBuf,
    /// The engine's options (progress bar, stop, cancellation, precision); `run_dir` is ours.
    pub options: RunOptions,
    /// Record R^c and sparsity per layer every this many epochs (0 = never), on this many images.
    pub measure_every: usize,
    pub measure_images: usize,
}

/// A run ready to train: its model's config, state, model and optimizer.
pub struct Started<C, M: AutodiffModule<TrainBackend>> {
    pub config: C,
    pub state: TrainState,
    pub model: M,
    pub optim: TrainOptimizer<M, TrainBackend>,
}

/// The end of [`ImageRun::fit`]: the last epoch's metrics (`None` when no epoch ran in this
/// invocation), the final model's evaluation on the test split (the last epoch's, else the
/// task's evaluation of the weights as saved), and the final checkpoint's state and weights.
pub struct Finished {
    pub last: Option<EpochMetrics>,
    pub eval: EvalResult,
    pub state: TrainState,
    pub weights: PathBuf,
}

/// How a kind of model lives in a checkpoint folder: its `config.json`, a fresh model of a
/// config, and its weights (default `model.safetensors`).
pub struct Saved<C, M> {
    pub read_config: fn(&Path) -> Result<C>,
    pub init: fn(&C, &burn::tensor::Device<TrainBackend>) -> M,
    pub read_weights: fn(&Path) -> Result<StateDict>,
}

/// The weights of a checkpoint folder saved by [`Checkpoint::save`].
pub fn model_weights(dir: &Path) -> Result<StateDict> {
    read_state_dict(&dir.join("model.safetensors"))
}

impl<C, M: AutodiffModule<TrainBackend> + OfficialKeys> Saved<C, M> {
    /// `--resume`: bring `run_dir` back to its last complete checkpoint and restore the run;
    /// `check` sees the run's config and state first (the flags against the run).
    pub fn resume(
        &self,
        run_dir: &Path,
        check: impl FnOnce(&C, &TrainState) -> Result<()>,
    ) -> Result<Started<C, M>> {
        let device = Default::default();
        let dir = checkpoint::resume_dir(run_dir)?;
        let state = Checkpoint::load_state(&dir)?;
        let config = (self.read_config)(&dir.join("config.json"))?;
        check(&config, &state)?;
        let (model, _) = apply_state_dict(
            (self.init)(&config, &device),
            &(self.read_weights)(&dir)?,
            true,
        )?;
        let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model).load(&dir, &device)?;
        tracing::info!(
            "resuming {} at epoch {} batch {} (step {})",
            run_dir.display(),
            state.epoch + 1,
            state.batch,
            state.step
        );
        Ok(Started {
            config,
            state,
            model,
            optim,
        })
    }

    /// A fresh run of `config` with `recipe` (`state` from [`fresh_state`]): the model seeded
    /// with the recipe's seed, then `init_from` weights where their keys fit (the others are
    /// reported). `run_dir` must not hold a run unless `overwrite`.
    pub fn fresh(
        &self,
        run_dir: &Path,
        overwrite: bool,
        config: C,
        state: TrainState,
        init_from: Option<(&Path, StateDict)>,
    ) -> Result<Started<C, M>> {
        let device = Default::default();
        <TrainBackend as Backend>::seed(&device, state.recipe.seed);
        let mut model = canonical_ids((self.init)(&config, &device));
        if let Some((path, sd)) = init_from {
            let (m, report) = apply_state_dict(model, &sd, false)?;
            let unused = report.unexpected.len() + report.mismatched.len();
            ensure!(
                unused < sd.len(),
                "--init-from {}: none of its {} tensors fits this model (e.g. {}); it takes \
                 weights of the family being trained (CRATE, CRATE-α or a CRATE-MAE encoder for \
                 a CRATE classifier, ToST for ToST)",
                path.display(),
                sd.len(),
                sd.keys().next().map_or("no keys", String::as_str)
            );
            if !report.is_clean() {
                tracing::warn!("--init-from {}: {}", path.display(), report.describe());
            }
            model = m;
        }
        // the run folder changes only once the start cannot fail any more
        checkpoint::start_fresh(run_dir, overwrite)?;
        let optim = TrainOptimizer::new(state.recipe.optim.clone(), &model);
        Ok(Started {
            config,
            state,
            model,
            optim,
        })
    }
}

/// The state of a run that has not started: `recipe` on the first `train_limit` / `test_limit`
/// images of `data` (normalisation is filled in from the training split).
pub fn fresh_state(
    recipe: Recipe,
    data: &Path,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
) -> TrainState {
    TrainState {
        train_limit,
        test_limit,
        ..TrainState::new(recipe, data)
    }
}

/// `split` of the data in `dir`, its first `limit` images only.
pub fn load_split(
    dir: &Path,
    format: Format,
    split: Split,
    limit: Option<usize>,
) -> Result<ImageSet> {
    let mut set = data::load(dir, format, split)?;
    if let Some(n) = limit {
        set.truncate(n);
    }
    Ok(set)
}

/// The images of `set` (read from `what`) must have the model's input `[channels, height, width]`.
pub fn check_shape(want: [usize; 3], set: &ImageSet, what: &Path) -> Result<()> {
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

impl ImageRun {
    /// The train and test splits of the run (the state's limits) for a model whose input is
    /// `[channels, height, width]` (`classes`: labels must be below it); fills the state's
    /// normalisation from the training split and creates the run folder.
    pub fn splits(
        &self,
        state: &mut TrainState,
        input: [usize; 3],
        classes: Option<usize>,
    ) -> Result<(ImageSet, ImageSet)> {
        let load = |split, limit| load_split(&self.data, self.format, split, limit);
        let train_set = load(Split::Train, state.train_limit)?;
        let test_set = load(Split::Test, state.test_limit)?;
        check_shape(input, &train_set, &self.data)?;
        check_shape(input, &test_set, &self.data)
            .context("the test split differs from the model")?;
        if let Some(k) = classes {
            ensure!(
                train_set.num_classes() <= k,
                "{}: {} classes but the model has num_classes = {k}",
                self.data.display(),
                train_set.num_classes()
            );
            for (set, split) in [(&train_set, "train"), (&test_set, "test")] {
                set.check_labels(k)
                    .with_context(|| format!("{}: {split} split", self.data.display()))?;
            }
        }
        state.fill_from(&train_set);
        state
            .normalization
            .validate(input[0])
            .context("the run's normalisation")?;
        std::fs::create_dir_all(&self.run_dir)
            .with_context(|| format!("cannot create {}", self.run_dir.display()))?;
        Ok((train_set, test_set))
    }

    /// Train `task` from `started` on the splits of [`ImageRun::splits`] with [`fit`].
    pub fn fit<T: Task<TrainBackend>>(
        &self,
        task: &T,
        started: Started<impl Sized, T::Model>,
        train_set: &ImageSet,
        test_set: &ImageSet,
    ) -> Result<Finished> {
        let run = TrainRun {
            measure_every: self.measure_every,
            measure_images: self.measure_images,
            ..TrainRun::with_options(
                RunOptions {
                    run_dir: Some(self.run_dir.clone()),
                    ..self.options.clone()
                },
                train_set,
                test_set,
            )
        };
        let Started {
            mut state,
            model,
            optim,
            ..
        } = started;
        // a resumed run keeps its arithmetic (a different `--precision` was refused by its
        // resume check); a fresh one records the one it runs in
        let mut run = run;
        if state.step > 0 {
            run.options.precision = Some(state.precision);
        } else {
            state.precision = run.options.precision.unwrap_or_default();
        }
        let device = Default::default();
        let fitted = fit(&run, task, model, optim, state, &device)?;
        let dir = Checkpoint::dir(&self.run_dir);
        let state = Checkpoint::load_state(&dir)?;
        let eval = match &fitted.last {
            Some(m) => EvalResult {
                loss: m.test_loss,
                top1: m.test_acc,
                top5: m.test_top5,
                n: test_set.len(),
            },
            // a resumed run that had already finished: its weights as saved
            None => task.evaluate(
                &fitted.model.valid(),
                test_set,
                &state.normalization,
                &device,
            )?,
        };
        Ok(Finished {
            last: fitted.last,
            eval,
            state,
            weights: dir.join("model.safetensors"),
        })
    }
}

/// `--init-from` weights `sd` (read from `path`) for a classifier of `config`: a CRATE-MAE
/// checkpoint gives its encoder, and the classifier takes the encoder's shape with `config`'s
/// classes (a new head); other weights are used as they are.
pub fn classifier_init(
    config: CrateConfig,
    path: &Path,
    sd: &mut StateDict,
) -> Result<CrateConfig> {
    if !mae::is_mae_state_dict(sd) {
        return Ok(config);
    }
    let ModelConfig::Mae(encoder) = crate::weights::load::config_of(path, None)? else {
        bail!(
            "{}: CRATE-MAE keys but no CRATE-MAE config stored with them",
            path.display()
        );
    };
    let config = encoder.encoder_classifier(config.num_classes);
    *sd = mae::encoder_state_dict(sd);
    tracing::info!(
        "--init-from {}: CRATE-MAE encoder → {} classifier",
        path.display(),
        config.arch
    );
    Ok(config)
}

/// An image training run as a command gives it (`whitebox train`, `mae train`, `dino train`):
/// the model, where the run reads and writes, its recipe, and how this invocation runs.
#[derive(Clone)]
pub struct ImageTrainSettings {
    /// Preset name or JSON config file.
    pub config: String,
    /// Override the config's architecture (`crate` ↔ `crate-alpha`; `tost` only confirms a ToST
    /// config).
    pub arch: Option<Arch>,
    /// Data, run folder, engine options and the per-epoch measures.
    pub run: ImageRun,
    /// Continue the run in `run.run_dir` from its last checkpoint.
    pub resume: bool,
    /// Start over in a run folder that holds a run (its checkpoint and metrics are removed first).
    pub overwrite: bool,
    /// Ids of the settings given on the command line (clap ids: `weight_decay`); with `resume`
    /// each must equal the run's.
    pub given: Vec<String>,
    /// Start a fresh run from these weights where their keys fit.
    pub init_from: Option<PathBuf>,
    pub recipe: Recipe,
    /// Use only the first this many training / test images.
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
}

/// The end of a classifier run: its test accuracy and loss (the last epoch's, or the saved
/// weights' when the run had already finished), where it stands and its weights.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierOutcome {
    pub test_acc: f64,
    pub test_loss: f64,
    pub epochs: usize,
    pub steps: usize,
    /// Wall time of the whole call, and the run's training time over all its invocations.
    pub seconds: f64,
    pub train_seconds: f64,
    pub weights: PathBuf,
}

impl std::fmt::Display for ClassifierOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "test accuracy {:.2}%  (test loss {:.4}, {} epochs, weights in {})",
            100.0 * self.test_acc,
            self.test_loss,
            self.epochs,
            self.weights.display()
        )
    }
}

impl ImageTrainSettings {
    /// A fresh run of `config` on the data in `data` with `recipe`, in `run_dir`: quiet, every
    /// image, nothing given.
    pub fn new(config: &str, data: &Path, run_dir: &Path, recipe: Recipe) -> Self {
        Self {
            config: config.into(),
            arch: None,
            run: ImageRun {
                data: data.to_path_buf(),
                format: Format::Auto,
                run_dir: run_dir.to_path_buf(),
                options: RunOptions::default(),
                measure_every: 0,
                measure_images: 64,
            },
            resume: false,
            overwrite: false,
            given: Vec::new(),
            init_from: None,
            recipe,
            train_limit: None,
            test_limit: None,
        }
    }

    /// Whether the setting with clap id `id` was given.
    pub fn was_given(&self, id: &str) -> bool {
        self.given.iter().any(|g| g == id)
    }

    /// The recipe, checked for images of `image_size` pixels; the final rate defaults to at most
    /// the peak (a `min_lr` given above `lr` is an error).
    pub fn recipe_for(&self, image_size: usize) -> Result<Recipe> {
        let mut recipe = self.recipe.clone();
        if !self.was_given("min_lr") {
            recipe.min_lr = recipe.min_lr.min(recipe.lr);
        }
        recipe.validate(image_size)?;
        Ok(recipe)
    }

    /// The state a fresh run of `recipe` starts from, on the settings' data and limits.
    pub fn fresh_state(&self, recipe: Recipe) -> TrainState {
        TrainState {
            precision: self.run.options.precision.unwrap_or_default(),
            ..fresh_state(recipe, &self.run.data, self.train_limit, self.test_limit)
        }
    }

    /// `resume`: the given settings against the run's state (`wanted`: the recipe a fresh run
    /// would take); callers add their model's checks.
    pub fn resume_check(&self, wanted: Recipe, run: &TrainState) -> ResumeCheck<'_> {
        ResumeCheck::new(&self.given)
            .fields(&self.fresh_state(wanted), run, &[("optimizer", "kind")])
            .refuse("init_from", "no --init-from on resume")
    }

    /// The `init_from` weights, read once for a fresh run.
    pub fn init_weights(&self) -> Result<Option<(&Path, StateDict)>> {
        self.init_from
            .as_deref()
            .map(|p| Ok((p, read_state_dict(p)?)))
            .transpose()
    }

    /// Refuse the settings `ids` (clap ids) given to a run they do not apply to (`what`).
    pub fn refuse(&self, ids: &[&str], what: &str) -> Result<()> {
        let given: Vec<String> = ids
            .iter()
            .filter(|id| self.was_given(id))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        ensure!(
            given.is_empty(),
            "{} does not apply to {what}",
            given.join(", ")
        );
        Ok(())
    }

    /// The CRATE config of `config` with `arch` applied.
    pub fn crate_config(&self) -> Result<CrateConfig> {
        let config = CrateConfig::resolve(&self.config)?;
        match self.arch {
            Some(arch) => config.with_arch(arch),
            None => Ok(config),
        }
    }

    /// Start the run: resume it (`check` sees the run's config and state) or start it fresh
    /// with `config()` and the `init_from` weights as `prepare` leaves them; `image_size` gives
    /// the pixels a config's recipe is checked for.
    pub fn start<C, M: AutodiffModule<TrainBackend> + OfficialKeys>(
        &self,
        saved: &Saved<C, M>,
        image_size: fn(&C) -> usize,
        config: impl FnOnce() -> Result<C>,
        prepare: impl FnOnce(&mut C, &Path, &mut StateDict) -> Result<()>,
        check: impl FnOnce(&C, ResumeCheck) -> Result<()>,
    ) -> Result<Started<C, M>> {
        let run_dir = &self.run.run_dir;
        if self.resume {
            return saved.resume(run_dir, |run, state| {
                check(
                    run,
                    self.resume_check(self.recipe_for(image_size(run))?, state),
                )
            });
        }
        let (mut config, mut init) = (config()?, self.init_weights()?);
        if let Some((p, sd)) = &mut init {
            prepare(&mut config, p, sd)?;
        }
        let state = self.fresh_state(self.recipe_for(image_size(&config))?);
        saved.fresh(run_dir, self.overwrite, config, state, init)
    }
}

/// Train a classifier `task` (CRATE, CRATE-α or ToST) of `(input, classes, parameters)`; the
/// outcome's `seconds` count from here (the run started or resumed).
pub(super) fn run_classifier<T: Task<TrainBackend>, C>(
    s: &ImageTrainSettings,
    task: &T,
    mut started: Started<C, T::Model>,
    (input, classes, params): ([usize; 3], usize, usize),
) -> Result<ClassifierOutcome> {
    let t_start = Instant::now();
    let (train_set, test_set) = s.run.splits(&mut started.state, input, Some(classes))?;
    tracing::info!(
        "training {params} params on {} images ({} test) from {}, {} epochs",
        train_set.len(),
        test_set.len(),
        s.run.data.display(),
        started.state.recipe.epochs
    );
    let end = s.run.fit(task, started, &train_set, &test_set)?;
    Ok(ClassifierOutcome {
        test_acc: end.eval.top1,
        test_loss: end.eval.loss,
        epochs: end.state.epoch,
        steps: end.state.step,
        seconds: t_start.elapsed().as_secs_f64(),
        train_seconds: end.state.seconds,
        weights: end.weights,
    })
}
