//! ToST (`"arch": "tost"`) on the classifier commands: `train`, `eval`, `forward` and `info`
//! recognise a ToST config (preset or JSON) and come here; the training loop is `train::fit`.

use anyhow::{bail, Result};

use super::commands::{fresh_state, recipe_from, resume_run, run_classifier, Classifier};
use super::TrainArgs;
use whitebox::model::tost::{self, TostConfig};
use whitebox::model::Arch;
use whitebox::train::tost::ClassifyTost;
use whitebox::train::{Checkpoint, TrainOptimizer};
use whitebox::weights::load::spec_arch;
use whitebox::weights::{apply_state_dict, canonical_ids, read_state_dict, ModelConfig};
use whitebox::TrainBackend;

const ARCH_TOST: &str = Arch::Tost.name();

/// Whether `whitebox train` is asked for ToST: a ToST `--config`, `--arch tost`, or `--resume`
/// of a run whose checkpoint holds a ToST config.
pub fn wants_tost(a: &TrainArgs) -> bool {
    if a.resume {
        if let Some(dir) = Checkpoint::find(&a.run_dir) {
            return spec_arch(&dir.join("config.json").to_string_lossy()) == Some(Arch::Tost);
        }
    }
    a.arch.as_deref() == Some(ARCH_TOST) || spec_arch(&a.config) == Some(Arch::Tost)
}

/// `whitebox train` of a ToST classifier (fresh, `--init-from` weights, or `--resume`).
pub fn train(a: TrainArgs) -> Result<()> {
    let device = Default::default();
    // the run lock is held by the caller (`cli::train`)
    let arch_flag = |_: &TostConfig| -> Result<Vec<(&'static str, Option<String>, String)>> {
        Ok(vec![("--arch", a.arch.clone(), ARCH_TOST.to_string())])
    };
    let resumed = resume_run(&a, TostConfig::from_json_file, arch_flag, |c| {
        c.init::<TrainBackend>(&device)
    })?;
    let (config, state, model, optim) = if let Some(r) = resumed {
        r
    } else {
        let ModelConfig::Tost(config) = ModelConfig::resolve(&a.config)? else {
            bail!(
                "--config {:?} is not a ToST config: give a preset ({}) or a JSON file with \"arch\": \"{ARCH_TOST}\"",
                a.config,
                tost::PRESETS.join(", ")
            );
        };
        if let Some(arch) = a.arch.as_deref().filter(|&x| x != ARCH_TOST) {
            bail!(
                "--arch {arch:?} contradicts the ToST --config {:?}",
                a.config
            );
        }
        <TrainBackend as burn::tensor::backend::Backend>::seed(&device, a.seed);
        let mut model = canonical_ids(config.init::<TrainBackend>(&device));
        if let Some(p) = &a.init_from {
            let sd = tost::prepare_state_dict(read_state_dict(p)?);
            let (m, report) = apply_state_dict(model, &sd, false)?;
            if !report.is_clean() {
                tracing::warn!("--init-from {}: {}", p.display(), report.describe());
            }
            model = m;
        }
        let recipe = recipe_from(&a, config.img_size)?;
        let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
        (config, fresh_state(recipe, &a), model, optim)
    };
    let shape = Classifier {
        input: config.input_shape(),
        num_classes: config.num_classes,
        params: config.param_count(),
    };
    let task = ClassifyTost::new(config, state.recipe.label_smoothing, &device);
    run_classifier(&a, &task, model, optim, state, shape)
}
