//! Checkpoints: `<run>/checkpoint/` holds `model.safetensors` (official keys, loadable by the
//! official class with `load_state_dict`), `config.json` (constructor arguments), `state.json`
//! (step, epoch, recipe, normalisation), the optimizer state and `metrics.jsonl` (the run's metrics
//! up to this checkpoint). The folder is written as `checkpoint.tmp/` (`state.json` last, so its
//! presence marks a complete folder) and swapped in by renames; [`recover`] finishes or undoes an
//! interrupted swap, so a kill at any moment, even twice in a row, loses nothing beyond the last
//! complete checkpoint. A run folder is owned by one process at a time ([`RunLock`]).

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Recipe, TrainOptimizer};
use crate::data::{ImageSet, Normalization};
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
    /// Sum of the per-image losses and images seen in the current epoch before an interrupt,
    /// so the resumed epoch's `train_loss` covers the whole epoch.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    #[serde(default)]
    pub epoch_seen: usize,
    /// `--train-limit` / `--test-limit` of the run (the data a resume must use again).
    #[serde(default)]
    pub train_limit: Option<usize>,
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// The GEMM arithmetic of the run (`--precision`; runs from before it was kept: f32): a
    /// resume continues in it.
    #[serde(default)]
    pub precision: crate::model::bf16::Precision,
}

impl TrainState {
    /// A run that has not started, on the data in `data`; the normalisation and class names
    /// come from the training split ([`TrainState::fill_from`]).
    pub fn new(recipe: Recipe, data: &Path) -> Self {
        Self {
            recipe,
            normalization: Normalization {
                mean: vec![],
                std: vec![],
            },
            class_names: vec![],
            epoch: 0,
            batch: 0,
            step: 0,
            seconds: 0.0,
            data: data.display().to_string(),
            epoch_loss_sum: 0.0,
            epoch_seen: 0,
            train_limit: None,
            test_limit: None,
            precision: Default::default(),
        }
    }

    /// Normalisation and class names from the training split, where the run has none yet (a
    /// resumed run keeps its own).
    pub fn fill_from(&mut self, train: &ImageSet) {
        if self.normalization.mean.is_empty() {
            self.normalization = Normalization::from_set(train);
            self.class_names = train.class_names.clone();
        }
    }
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

    /// The newest complete checkpoint folder of a run, if any, without changing the folder: a
    /// finished `checkpoint.tmp/` whose swap was interrupted, else `checkpoint/`, else
    /// `checkpoint.old/`.
    pub fn find(run_dir: &Path) -> Option<PathBuf> {
        ["checkpoint.tmp", "checkpoint", "checkpoint.old"]
            .into_iter()
            .map(|d| run_dir.join(d))
            .find(|d| is_complete(d))
    }

    /// Save the run; `metrics` is the line this checkpoint adds to `metrics.jsonl`, if any.
    pub fn save<B: AutodiffBackend, M: AutodiffModule<B> + OfficialKeys>(
        run_dir: &Path,
        config: &impl Serialize,
        model: &M,
        optim: &TrainOptimizer<M, B>,
        state: &TrainState,
        metrics: Option<&impl Serialize>,
    ) -> Result<()>
    where
        M::InnerModule: OfficialKeys,
    {
        write_checkpoint(run_dir, config, optim, state, metrics, |path| {
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
/// `config.json`, the optimizer state, `metrics.jsonl` (with `metrics` appended) and `state.json`,
/// swapped in atomically; then `<run>/metrics.jsonl` is rewritten from the checkpoint's copy.
pub fn write_checkpoint<B: AutodiffBackend, M: AutodiffModule<B>>(
    run_dir: &Path,
    config: &impl Serialize,
    optim: &TrainOptimizer<M, B>,
    state: &impl Serialize,
    metrics: Option<&impl Serialize>,
    write_model: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let metrics = metrics.map(serde_json::to_string).transpose()?;
    write_checkpoint_dir(run_dir, metrics.as_deref(), |tmp| {
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

/// Name of the metrics file, in the run folder and in each checkpoint.
pub const METRICS: &str = "metrics.jsonl";

/// Whether `dir` is a finished checkpoint folder: `state.json` is written last and removed first.
fn is_complete(dir: &Path) -> bool {
    dir.join("state.json").is_file()
}

/// Remove a checkpoint folder, `state.json` first, so a kill half-way never leaves a folder that
/// looks complete.
fn remove_checkpoint_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join("state.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
    fault::point()?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    Ok(())
}

/// Swap a complete `tmp` in as `cur`: remove `old`, rename `cur` → `old`, `tmp` → `cur`, remove
/// `old`. A kill between any two steps leaves a state that [`recover`] completes.
fn swap_in(tmp: &Path, cur: &Path, old: &Path) -> Result<()> {
    remove_checkpoint_dir(old)?;
    fault::point()?;
    if cur.exists() {
        std::fs::rename(cur, old)
            .with_context(|| format!("cannot move {} to {}", cur.display(), old.display()))?;
    }
    fault::point()?;
    std::fs::rename(tmp, cur)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), cur.display()))?;
    fault::point()?;
    remove_checkpoint_dir(old)
}

/// Bring a run folder back to one complete `checkpoint/` after a kill at any point of a save
/// (or of an earlier recovery): a finished `checkpoint.tmp/` is the newest and is swapped in;
/// else `checkpoint/`, else `checkpoint.old/` is kept. Leftovers are removed, and `metrics.jsonl`
/// is restored from the checkpoint's copy (so no line is lost or duplicated). Returns the
/// checkpoint folder, or `None` when the run has none. Call it only while holding the run's lock.
pub fn recover(run_dir: &Path) -> Result<Option<PathBuf>> {
    let (tmp, cur, old) = (
        run_dir.join("checkpoint.tmp"),
        run_dir.join("checkpoint"),
        run_dir.join("checkpoint.old"),
    );
    if is_complete(&tmp) {
        tracing::info!(
            "{}: finishing a checkpoint swap that was interrupted",
            run_dir.display()
        );
        swap_in(&tmp, &cur, &old)?;
    } else {
        remove_checkpoint_dir(&tmp)?;
        if !is_complete(&cur) && is_complete(&old) {
            remove_checkpoint_dir(&cur)?;
            fault::point()?;
            std::fs::rename(&old, &cur)
                .with_context(|| format!("cannot move {} to {}", old.display(), cur.display()))?;
        }
        remove_checkpoint_dir(&old)?;
    }
    fault::point()?;
    if !is_complete(&cur) {
        remove_checkpoint_dir(&cur)?;
        return Ok(None);
    }
    let saved = cur.join(METRICS);
    if saved.is_file() {
        let bytes =
            std::fs::read(&saved).with_context(|| format!("cannot read {}", saved.display()))?;
        write_atomic(&run_dir.join(METRICS), &bytes)?;
    }
    Ok(Some(cur))
}

/// `--resume`: the run folder brought back to its last complete checkpoint ([`recover`]), whose
/// folder is returned; an error when the run has none. Call it only while holding the run's lock.
pub fn resume_dir(run_dir: &Path) -> Result<PathBuf> {
    recover(run_dir)?.with_context(|| format!("--resume: no checkpoint in {}", run_dir.display()))
}

/// Before a fresh run in `run_dir`: refuse a folder that holds a checkpoint unless `overwrite`
/// (then the checkpoints and metrics are removed); a stale `metrics.jsonl` is removed either way.
pub fn start_fresh(run_dir: &Path, overwrite: bool) -> Result<()> {
    if Checkpoint::find(run_dir).is_some() {
        anyhow::ensure!(
            overwrite,
            "{} already holds a checkpoint: pass --resume to continue it, --overwrite to start over, \
             or choose another --run-dir",
            run_dir.display()
        );
        tracing::info!("--overwrite: removing the run in {}", run_dir.display());
    }
    for d in ["checkpoint.tmp", "checkpoint", "checkpoint.old"] {
        remove_checkpoint_dir(&run_dir.join(d))?;
    }
    match std::fs::remove_file(run_dir.join(METRICS)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", run_dir.join(METRICS).display()))
        }
        _ => Ok(()),
    }
}

/// Fill `<run>/checkpoint.tmp/` with the run's metrics (plus `metrics_line`) and `write` (which
/// must write `state.json` last), swap it in for `<run>/checkpoint/` by renames, then rewrite
/// `<run>/metrics.jsonl` from the checkpoint's copy. A kill at any point leaves a complete
/// checkpoint that [`recover`] finds (the new one once its `state.json` is written, else the
/// previous one), and metrics that agree with it.
pub fn write_checkpoint_dir(
    run_dir: &Path,
    metrics_line: Option<&str>,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    recover(run_dir)?;
    let metrics_path = run_dir.join(METRICS);
    let mut lines = match std::fs::read_to_string(&metrics_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", metrics_path.display())),
    };
    if let Some(m) = metrics_line {
        lines.push_str(m);
        lines.push('\n');
    }
    let (tmp, cur, old) = (
        run_dir.join("checkpoint.tmp"),
        run_dir.join("checkpoint"),
        run_dir.join("checkpoint.old"),
    );
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_atomic(&tmp.join(METRICS), lines.as_bytes())?;
    fault::point()?;
    write(&tmp)?;
    anyhow::ensure!(
        is_complete(&tmp),
        "checkpoint writer did not write {}",
        tmp.join("state.json").display()
    );
    fault::point()?;
    swap_in(&tmp, &cur, &old)?;
    fault::point()?;
    write_atomic(&metrics_path, lines.as_bytes())
}

/// Fault injection for tests: the `n`-th fault point reached by this thread's next checkpoint
/// operations fails as if the process had been killed there (every later step is skipped).
#[doc(hidden)]
pub mod fault {
    use std::cell::Cell;
    thread_local! {
        static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    }
    /// Arm (`Some(n)`: the point after `n` passed ones fails) or disarm (`None`).
    pub fn kill_at(n: Option<usize>) {
        LEFT.with(|l| l.set(n));
    }
    /// Whether an armed fault is still waiting (it did not fire).
    pub fn armed() -> bool {
        LEFT.with(|l| l.get().is_some())
    }
    pub fn point() -> anyhow::Result<()> {
        LEFT.with(|l| match l.get() {
            Some(0) => {
                l.set(None);
                anyhow::bail!("injected fault (simulated kill)")
            }
            Some(n) => {
                l.set(Some(n - 1));
                Ok(())
            }
            None => Ok(()),
        })
    }
}

/// Holds a run folder for one process: `<run>/lock` is locked (advisory `flock`, released by the
/// OS when the process ends, however it ends) and holds the owner's pid. A lock file left by a
/// process that died is detected (its pid is reported) and taken over.
pub struct RunLock {
    file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create the run folder {}", run_dir.display()))?;
        let path = run_dir.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot write in the run folder {} (creating {})",
                    run_dir.display(),
                    path.display()
                )
            })?;
        let mut holder = String::new();
        file.read_to_string(&mut holder).ok();
        let holder = holder.trim().to_string();
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{} is in use by another training process (pid {}, lock file {}); wait for it \
                 to end or choose another --run-dir",
                run_dir.display(),
                if holder.is_empty() {
                    "unknown"
                } else {
                    &holder
                },
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        if !holder.is_empty() {
            tracing::warn!(
                "{}: process {holder} ended without releasing the run; taking it over",
                path.display()
            );
        }
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_all().ok();
        Ok(Self { file, path })
    }
}

impl Drop for RunLock {
    /// Empty the lock file (an empty file is a free run) and release the lock; the file itself
    /// stays, so no second process can lock a deleted file while a third creates a new one.
    fn drop(&mut self) {
        if self.file.set_len(0).is_err() {
            tracing::warn!("cannot clear {}", self.path.display());
        }
        self.file.unlock().ok();
    }
}
