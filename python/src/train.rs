//! `whitebox.train` (the classifier run of `whitebox train`, keyword arguments named after its
//! flags) and `whitebox.data.load`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use numpy::ndarray::Array4;
use numpy::IntoPyArray;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use whitebox::data::{self, Format, Split};
use whitebox::model::bf16::Precision;
use whitebox::train::image_run::ImageTrainSettings;
use whitebox::train::{optim, train_classifier, Cancel, OptimizerKind, Recipe};

use crate::arrays::json_to_py;
use crate::errors::{bad, guarded, to_py};

/// The settings `whitebox.train` takes (the flags of `whitebox train`, `-` as `_`).
const SETTINGS: &[&str] = &[
    "config",
    "arch",
    "data",
    "format",
    "run_dir",
    "resume",
    "overwrite",
    "init_from",
    "epochs",
    "batch_size",
    "lr",
    "min_lr",
    "warmup_epochs",
    "optimizer",
    "weight_decay",
    "beta1",
    "beta2",
    "no_decay_norm_bias",
    "label_smoothing",
    "clip_grad_norm",
    "crop_padding",
    "hflip",
    "seed",
    "stop_after",
    "max_seconds",
    "train_limit",
    "test_limit",
    "measure_every",
    "measure_images",
    "precision",
    "progress",
];

fn format_of(name: &str) -> PyResult<Format> {
    Ok(match name {
        "auto" => Format::Auto,
        "idx" => Format::Idx,
        "cifar10" => Format::Cifar10,
        "cifar100" => Format::Cifar100,
        "folder" => Format::Folder,
        other => {
            return Err(bad(format!(
                "format {other:?} is not one of auto, idx, cifar10, cifar100, folder"
            )))
        }
    })
}

/// `whitebox train`'s settings with `kwargs` applied; the keys given go to `given` (the resume
/// check compares them with the run's).
fn settings(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<(ImageTrainSettings, bool)> {
    let mut s = ImageTrainSettings::new(
        "fmnist",
        &PathBuf::from(data::DEFAULT_DATA),
        &PathBuf::from("runs/fmnist"),
        Recipe::MAIN_JOB,
    );
    let mut progress = None;
    let Some(kwargs) = kwargs else {
        return Ok((s, true));
    };
    for (k, v) in kwargs.iter() {
        let key: String = k.extract()?;
        let r = &mut s.recipe;
        let typed = |what: &str| bad(format!("{key} must be {what}, got {v}"));
        macro_rules! get {
            ($t:ty, $what:expr) => {
                v.extract::<$t>().map_err(|_| typed($what))?
            };
        }
        match key.as_str() {
            "config" => s.config = get!(String, "a preset name or a JSON file's path"),
            "arch" => s.arch = Some(get!(String, "an arch name").parse().map_err(to_py)?),
            "data" => s.run.data = get!(PathBuf, "a folder"),
            "format" => s.run.format = format_of(&get!(String, "a format name"))?,
            "run_dir" => s.run.run_dir = get!(PathBuf, "a folder"),
            "resume" => s.resume = get!(bool, "True or False"),
            "overwrite" => s.overwrite = get!(bool, "True or False"),
            "init_from" => s.init_from = Some(get!(PathBuf, "a weights file")),
            "epochs" => r.epochs = get!(usize, "a count ≥ 1"),
            "batch_size" => r.batch_size = get!(usize, "a count ≥ 1"),
            "lr" => r.lr = get!(f64, "a number"),
            "min_lr" => r.min_lr = get!(f64, "a number"),
            "warmup_epochs" => r.warmup_epochs = get!(f64, "a number"),
            "optimizer" => {
                r.optim.kind = match get!(String, "\"adamw\" or \"lion\"").as_str() {
                    "adamw" => OptimizerKind::Adamw,
                    "lion" => OptimizerKind::Lion,
                    _ => return Err(typed("\"adamw\" or \"lion\"")),
                }
            }
            "weight_decay" => r.optim.weight_decay = get!(f64, "a number"),
            "beta1" => r.optim.beta1 = get!(f64, "a number"),
            "beta2" => r.optim.beta2 = get!(f64, "a number"),
            "no_decay_norm_bias" => r.optim.no_decay_norm_bias = get!(bool, "True or False"),
            "label_smoothing" => r.label_smoothing = get!(f64, "a number"),
            "clip_grad_norm" => {
                r.optim.clip_grad_norm =
                    optim::clip_setting(get!(f64, "a number")).map_err(to_py)?
            }
            "crop_padding" => r.augment.crop_padding = get!(usize, "a count"),
            "hflip" => r.augment.hflip = get!(bool, "True or False"),
            "seed" => r.seed = get!(u64, "an integer ≥ 0"),
            "stop_after" => {
                s.run.options.stop_after = Some(positive(get!(usize, "a count ≥ 1"), &key)?)
            }
            "max_seconds" => {
                let m = get!(f64, "a number of seconds");
                if !(m.is_finite() && m > 0.0) {
                    return Err(typed("a finite number of seconds > 0"));
                }
                s.run.options.max_seconds = Some(m)
            }
            "train_limit" => s.train_limit = Some(positive(get!(usize, "a count ≥ 1"), &key)?),
            "test_limit" => s.test_limit = Some(positive(get!(usize, "a count ≥ 1"), &key)?),
            "measure_every" => s.run.measure_every = get!(usize, "a count"),
            "measure_images" => s.run.measure_images = positive(get!(usize, "a count ≥ 1"), &key)?,
            "precision" => {
                s.run.options.precision = Some(match get!(String, "\"f32\" or \"bf16\"").as_str() {
                    "f32" => Precision::F32,
                    "bf16" => Precision::Bf16,
                    _ => return Err(typed("\"f32\" or \"bf16\"")),
                })
            }
            "progress" => progress = Some(get!(bool, "True or False")),
            _ => {
                return Err(PyTypeError::new_err(format!(
                    "train() got an unexpected keyword argument {key:?}; the settings are: {}",
                    SETTINGS.join(", ")
                )))
            }
        }
        s.given.push(key);
    }
    Ok((s, progress.unwrap_or(true)))
}

fn positive(n: usize, key: &str) -> PyResult<usize> {
    if n == 0 {
        Err(bad(format!("{key} must be at least 1, got 0")))
    } else {
        Ok(n)
    }
}

/// Train a classifier as `whitebox train` does (run folder, checkpoints, exact resume) and
/// return its outcome; `callback(metrics)` after each epoch, `False` stops after the checkpoint.
#[pyfunction]
#[pyo3(signature = (callback=None, **settings_))]
fn train<'py>(
    py: Python<'py>,
    callback: Option<Py<PyAny>>,
    settings_: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (mut s, progress) = settings(settings_)?;
    let tty = py
        .import("sys")?
        .getattr("stderr")?
        .call_method0("isatty")
        .and_then(|t| t.extract::<bool>())
        .unwrap_or(false);
    s.run.options.show_progress = progress && tty;
    let cancel = Cancel::new();
    s.run.options.cancel = cancel.clone();
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
    if let Some(cb) = callback {
        let raised = raised.clone();
        s.run.options.on_period = Some(Arc::new(move |line: &serde_json::Value| {
            Python::attach(|py| {
                let r = json_to_py(py, line).and_then(|m| cb.call1(py, (m,)));
                match r {
                    Ok(v) => !v.bind(py).is(&*pyo3::types::PyBool::new(py, false)),
                    Err(e) => {
                        *raised.lock().unwrap() = Some(e);
                        false
                    }
                }
            })
        }));
    }
    let run = std::thread::spawn(move || guarded(|| train_classifier(&s)));
    // wait with the GIL released, looking at Python's signals (Ctrl-C) every 50 ms
    let mut interrupt = None;
    while !run.is_finished() {
        py.detach(|| std::thread::sleep(Duration::from_millis(50)));
        if interrupt.is_none() {
            if let Err(e) = py.check_signals() {
                cancel.cancel();
                interrupt = Some(e);
            }
        }
    }
    let result = run.join().unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "internal error: the training thread panicked"
        ))
    });
    if let Some(e) = interrupt {
        return Err(e);
    }
    if let Some(e) = raised.lock().unwrap().take() {
        return Err(e);
    }
    let outcome = result.map_err(to_py)?;
    let v = serde_json::to_value(&outcome).map_err(|e| bad(e.to_string()))?;
    json_to_py(py, &v)
}

/// The splits of a data folder as numpy arrays: `{"train": (images, labels), "test": (...),
/// "class_names": [...]}` with uint8 images `[N, C, H, W]` and int64 labels.
#[pyfunction]
#[pyo3(name = "load_data", signature = (dir, format="auto"))]
fn load_data<'py>(py: Python<'py>, dir: PathBuf, format: &str) -> PyResult<Bound<'py, PyDict>> {
    let format = format_of(format)?;
    if !dir.exists() {
        return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!(
            "{}: no such folder",
            dir.display()
        )));
    }
    let sets = crate::errors::compute(py, || {
        Ok((
            data::load(&dir, format, Split::Train)?,
            data::load(&dir, format, Split::Test)?,
        ))
    })?;
    let out = PyDict::new(py);
    let names = sets.0.class_names.clone();
    for (name, set) in [("train", sets.0), ("test", sets.1)] {
        let shape = (set.len(), set.channels, set.height, set.width);
        let images = Array4::from_shape_vec(shape, set.pixels)
            .map_err(|e| bad(format!("internal shape error: {e}")))?;
        let labels: Vec<i64> = set.labels.iter().map(|l| *l as i64).collect();
        out.set_item(name, (images.into_pyarray(py), labels.into_pyarray(py)))?;
    }
    out.set_item("class_names", names)?;
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(load_data, m)?)?;
    Ok(())
}
