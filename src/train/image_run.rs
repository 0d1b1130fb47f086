//! One image run — a classifier (CRATE, CRATE-α, ToST), CRATE-MAE pre-training or DINO/SimDINO —
//! in its run folder: resume the last checkpoint or start fresh, load the splits checked against
//! the model, [`fit`], and read back the final checkpoint. Every image command runs through it.

use anyhow::{bail, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};

use super::{
    checkpoint, fit, Checkpoint, EpochMetrics, EvalResult, Recipe, RunOptions, Task,
    TrainOptimizer, TrainRun, TrainState,
};
use crate::data::{self, Format, ImageSet, Split};
use crate::model::{mae, CrateConfig};
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
        checkpoint::start_fresh(run_dir, overwrite)?;
        let device = Default::default();
        <TrainBackend as Backend>::seed(&device, state.recipe.seed);
        let mut model = canonical_ids((self.init)(&config, &device));
        if let Some((path, sd)) = init_from {
            let (m, report) = apply_state_dict(model, &sd, false)?;
            if !report.is_clean() {
                tracing::warn!("--init-from {}: {}", path.display(), report.describe());
            }
            model = m;
        }
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
            state,
            model,
            optim,
            ..
        } = started;
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
