//! Checkpoints: `<run>/checkpoint/` holds `model.safetensors` (official keys, loadable by the
//! official class with `load_state_dict`), `config.json` (constructor arguments), `state.json`
//! (step, epoch, recipe, normalisation) and the optimizer state. The folder is written as
//! `checkpoint.tmp/` and swapped in by renames, so a crash keeps the previous checkpoint whole.

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Recipe, TrainOptimizer};
use crate::data::Normalization;
use crate::weights::{collect_state_dict, write_atomic, write_safetensors, OfficialKeys};

/// Where a run stands, saved next to the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    pub recipe: Recipe,
    pub normalization: Normalization,
    pub class_names: Vec<String>,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches of the current epoch already done (non-zero only after an interrupt).
    pub batch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    /// Training seconds so far.
    pub seconds: f64,
    pub data: String,
}

/// Metadata stored in a whitebox safetensors file so `eval`/`predict` need nothing else.
pub fn model_metadata(
    config: &impl Serialize,
    norm: &Normalization,
    classes: &[String],
) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("config".to_string(), serde_json::to_string(config).unwrap()),
        (
            "normalization".to_string(),
            serde_json::to_string(norm).unwrap(),
        ),
        (
            "class_names".to_string(),
            serde_json::to_string(classes).unwrap(),
        ),
    ])
}

/// Save model weights (official keys) with metadata, atomically.
pub fn save_model<B: Backend, M: Module<B> + OfficialKeys>(
    path: &Path,
    config: &impl Serialize,
    model: &M,
    norm: &Normalization,
    classes: &[String],
) -> Result<()> {
    write_safetensors(
        path,
        &collect_state_dict(model),
        Some(model_metadata(config, norm, classes)),
    )
}

pub struct Checkpoint;

impl Checkpoint {
    pub fn dir(run_dir: &Path) -> PathBuf {
        run_dir.join("checkpoint")
    }

    /// The newest complete checkpoint folder of a run, if any.
    pub fn find(run_dir: &Path) -> Option<PathBuf> {
        [run_dir.join("checkpoint"), run_dir.join("checkpoint.old")]
            .into_iter()
            .find(|d| d.join("state.json").exists())
    }

    pub fn save<B: AutodiffBackend, M: AutodiffModule<B> + OfficialKeys>(
        run_dir: &Path,
        config: &impl Serialize,
        model: &M,
        optim: &TrainOptimizer<M, B>,
        state: &TrainState,
    ) -> Result<()>
    where
        M::InnerModule: OfficialKeys,
    {
        write_checkpoint(run_dir, config, optim, state, |path| {
            save_model(
                path,
                config,
                &model.valid(),
                &state.normalization,
                &state.class_names,
            )
        })
    }

    pub fn load_state(dir: &Path) -> Result<TrainState> {
        read_state(dir, "training state")
    }
}

/// `<run>/checkpoint/` of any trainer: `model.safetensors` (written by `write_model`),
/// `config.json`, the optimizer state and `state.json`, swapped in atomically.
pub fn write_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>>(
    run_dir: &Path,
    config: &impl Serialize,
    optim: &TrainOptimizer<M, B>,
    state: &impl Serialize,
    write_model: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    write_checkpoint_dir(run_dir, |tmp| {
        write_model(&tmp.join("model.safetensors"))?;
        write_atomic(
            &tmp.join("config.json"),
            serde_json::to_string_pretty(config)?.as_bytes(),
        )?;
        optim.save(tmp)?;
        write_atomic(
            &tmp.join("state.json"),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )
    })
}

/// `state.json` of a checkpoint folder; `what` names the expected kind in the error
/// (e.g. "language-model training state").
pub fn read_state<S: DeserializeOwned>(dir: &Path, what: &str) -> Result<S> {
    let p = dir.join("state.json");
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a valid {what}", p.display()))
}

/// Fill `<run>/checkpoint.tmp/` with `write`, then swap it in for `<run>/checkpoint/` by renames,
/// so a crash at any point leaves one complete checkpoint (`checkpoint/` or `checkpoint.old/`).
pub fn write_checkpoint_dir(run_dir: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = run_dir.join("checkpoint.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write(&tmp)?;
    let (cur, old) = (run_dir.join("checkpoint"), run_dir.join("checkpoint.old"));
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if cur.exists() {
        std::fs::rename(&cur, &old)?;
    }
    std::fs::rename(&tmp, &cur)?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}
