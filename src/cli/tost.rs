//! ToST (`"arch": "tost"`) on the classifier commands: `train`, `eval`, `forward` and `info`
//! recognise a ToST config (preset or JSON) and come here; the training loop is `train::fit`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

use super::commands::{fresh_state, recipe_from, resume_run, run_classifier, Classifier};
use super::{TrainArgs, WeightArgs};
use crate::model::tost::{self, Tost, TostConfig};
use crate::model::Arch;

const ARCH_TOST: &str = Arch::Tost.name();
use crate::model::CrateBackend;
use crate::train::tost::ClassifyTost;
use crate::train::{Checkpoint, TrainOptimizer};
use crate::weights::{apply_state_dict, canonical_ids, read_safetensors_all, read_state_dict};
use crate::TrainBackend;

/// Whether a JSON text has `"arch": "tost"`.
fn is_tost_json(v: &serde_json::Value) -> bool {
    v["arch"] == ARCH_TOST
}

/// `Some` config when `spec` is a ToST preset or a JSON file with `"arch": "tost"`.
pub fn config_spec(spec: &str) -> Result<Option<TostConfig>> {
    if let Some(c) = TostConfig::preset(spec) {
        return Ok(Some(c));
    }
    let path = Path::new(spec);
    Ok(if super::commands::json_file_has_arch(path, Arch::Tost) {
        Some(TostConfig::from_json_file(path)?)
    } else {
        None
    })
}

/// Whether `whitebox train` is asked for ToST: a ToST `--config`, `--arch tost`, or `--resume`
/// of a run whose checkpoint holds a ToST config.
pub fn wants_tost(a: &TrainArgs) -> Result<bool> {
    if a.resume {
        if let Some(dir) = Checkpoint::find(&a.run_dir) {
            return Ok(super::commands::json_file_has_arch(
                &dir.join("config.json"),
                Arch::Tost,
            ));
        }
    }
    Ok(a.arch.as_deref() == Some(ARCH_TOST) || config_spec(&a.config)?.is_some())
}

pub struct LoadedTost<B: CrateBackend> {
    pub config: TostConfig,
    pub model: Tost<B>,
    pub meta: HashMap<String, String>,
}

/// Load `--weights` as a ToST classifier when its config (`--config`, the safetensors metadata
/// or `config.json` beside it) is one; `None` for any other model.
pub fn load_if_tost<B: CrateBackend>(w: &WeightArgs) -> Result<Option<LoadedTost<B>>> {
    let config = match &w.config {
        Some(spec) => match config_spec(spec)? {
            Some(c) => c,
            None => return Ok(None),
        },
        None => match super::mae::config_json(w) {
            Some(v) if is_tost_json(&v) => TostConfig::from_json(&v.to_string())
                .with_context(|| format!("config of {}", w.weights.display()))?,
            _ => return Ok(None),
        },
    };
    let meta = if super::commands::is_safetensors(&w.weights) {
        read_safetensors_all(&w.weights)?.1
    } else {
        HashMap::new()
    };
    let sd = tost::prepare_state_dict(read_state_dict(&w.weights)?);
    let (model, report) = apply_state_dict(config.init::<B>(&Default::default()), &sd, w.strict)
        .with_context(|| format!("loading {}", w.weights.display()))?;
    if !report.is_clean() {
        tracing::warn!(
            "non-strict load of {}: {}",
            w.weights.display(),
            report.describe()
        );
    }
    Ok(Some(LoadedTost {
        config,
        model,
        meta,
    }))
}

/// `whitebox train` of a ToST classifier (fresh, `--init-from` weights, or `--resume`).
pub fn train(a: TrainArgs) -> Result<()> {
    let device = Default::default();
    // the run lock is held by the caller (`commands::train`)
    let arch_flag = |_: &TostConfig| -> Result<Vec<(&'static str, Option<String>, String)>> {
        Ok(vec![("--arch", a.arch.clone(), ARCH_TOST.to_string())])
    };
    let resumed = resume_run(&a, TostConfig::from_json_file, arch_flag, |c| {
        c.init::<TrainBackend>(&device)
    })?;
    let (config, state, model, optim) = if let Some(r) = resumed {
        r
    } else {
        let Some(config) = config_spec(&a.config)? else {
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
