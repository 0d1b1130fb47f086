//! ToST (`"arch": "tost"`) on the classifier commands: `train`, `eval`, `forward` and `info`
//! recognise a ToST config (preset or JSON) and come here; the training loop is `train::fit`.

use anyhow::{bail, Result};

use serde_json::json;

use super::commands::{fresh_state, init_weights, recipe_from, resume_check, run_classifier};
use super::TrainArgs;
use whitebox::model::tost::{self, TostConfig};
use whitebox::model::Arch;
use whitebox::train::image_run::{self, Saved};
use whitebox::train::resume::same_json;
use whitebox::train::tost::ClassifyTost;
use whitebox::train::Checkpoint;
use whitebox::weights::load::spec_arch;
use whitebox::weights::ModelConfig;
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
    // the run lock is held by the caller (`cli::train`)
    let saved = Saved {
        read_config: TostConfig::from_json_file,
        init: |c: &TostConfig, d| c.init::<TrainBackend>(d),
        read_weights: image_run::model_weights,
    };
    let started = if a.resume {
        saved.resume(&a.run_dir, |run, state| {
            let same = || matches!(ModelConfig::resolve(&a.config), Ok(ModelConfig::Tost(c)) if same_json(&c, run));
            resume_check(&a, recipe_from(&a, run.img_size)?, state)
                .fields(&json!({ "arch": a.arch }), &json!({ "arch": ARCH_TOST }), &[])
                .model(&a.config, same)
                .check(&a.run_dir)
        })?
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
        let init = init_weights(&a)?.map(|(p, sd)| (p, tost::prepare_state_dict(sd)));
        let state = fresh_state(recipe_from(&a, config.img_size)?, &a);
        saved.fresh(&a.run_dir, a.overwrite, config, state, init)?
    };
    let c = started.config.clone();
    let task = ClassifyTost::new(
        c.clone(),
        started.state.recipe.label_smoothing,
        &Default::default(),
    );
    run_classifier(
        &a,
        &task,
        started,
        c.input_shape(),
        c.num_classes,
        c.param_count(),
    )
}
