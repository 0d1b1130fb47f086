//! `whitebox.load`, `from_state_dict`, `create`, `read_tensors` and the `Model` class.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use pyo3::exceptions::PyFileNotFoundError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use whitebox::infer::forward::forward_tensors;
use whitebox::weights::load::{create as create_model, from_state_dict as build};
use whitebox::weights::{read_safetensors_all, read_safetensors_metadata, read_state_dict};
use whitebox::weights::{Loaded, ModelConfig, StateDict};

use crate::arrays::{json_to_py, py_to_json, to_dict, to_tensor};
use crate::errors::{bad, compute};

pub type B = whitebox::InferBackend;

/// A model of any whitebox kind with its weights, on the CPU.
#[pyclass(module = "whitebox._whitebox", frozen)]
pub struct Model {
    pub(crate) inner: Mutex<Loaded<B>>,
}

impl Model {
    fn new(l: Loaded<B>) -> Self {
        Self {
            inner: Mutex::new(l),
        }
    }

    /// Run `f` on the loaded model with the GIL released.
    pub(crate) fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Loaded<B>) -> anyhow::Result<T> + Send,
    ) -> PyResult<T> {
        compute(py, || {
            let l = self
                .inner
                .lock()
                .map_err(|_| anyhow::anyhow!("the model was poisoned by an earlier failure"))?;
            f(&l)
        })
    }

    /// The model's outputs on `x` (and `noise` for CRATE-MAE) under the golden names.
    fn run(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        noise: Option<&Bound<'_, PyAny>>,
        activations: bool,
    ) -> PyResult<StateDict> {
        let t = to_tensor("x", x)?;
        let lm = matches!(self.inner.lock().as_deref(), Ok(Loaded::Lm(_)));
        let name = if lm { "idx" } else { "input" };
        let mut tensors = HashMap::from([(name.to_string(), t)]);
        if let Some(n) = noise {
            tensors.insert("noise".into(), to_tensor("noise", n)?);
        }
        let device = Default::default();
        self.with(py, |l| {
            forward_tensors(l, &tensors, Path::new("x"), activations, &device)
        })
    }
}

#[pymethods]
impl Model {
    /// The model kind: `crate`, `crate-alpha`, `crate-mae`, `tost`, `crate-lm`, `gpt`, `crate-bert`, …
    #[getter]
    fn kind(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |l| Ok(l.arch().name().to_string()))
    }

    /// The config as a dict (the official constructor's argument names where there is one).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.with(py, |l| Ok(l.config().to_json_pretty()))?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;
        json_to_py(py, &v)
    }

    /// Number of parameters.
    #[getter]
    fn num_params(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |l| Ok(l.config().param_count()))
    }

    /// Logits of `x`: NCHW float32 images → `[N, classes]`; int64 token ids `[B, T]` →
    /// `[B, T, vocab]`. CRATE-MAE returns the dict of `outputs(x)`.
    fn forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let mut out = self.run(py, x, None, false)?;
        match out.remove("logits") {
            Some(t) if out.is_empty() => crate::arrays::to_numpy(py, t),
            Some(t) => {
                out.insert("logits".into(), t);
                Ok(to_dict(py, out)?.into_any())
            }
            None => Ok(to_dict(py, out)?.into_any()),
        }
    }

    /// Every output of `x` as `whitebox forward` writes it (CRATE-MAE: `pred`, `mask`,
    /// `ids_restore`, …, `loss`, with the official masking `noise` `[N, L]` if given).
    #[pyo3(signature = (x, noise=None, activations=false))]
    fn outputs<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        noise: Option<&Bound<'py, PyAny>>,
        activations: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        to_dict(py, self.run(py, x, noise, activations)?)
    }

    /// The per-layer activations of `x` under the golden names (`act.embed`,
    /// `act.layer0.mssa`, `act.layer0.attn`, `act.layer0.ista`, …, `act.final_norm`).
    fn activations<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let out = self.run(py, x, None, true)?;
        to_dict(py, out.into_iter().filter(|(k, _)| k.starts_with("act.")))
    }

    /// The weights under the official PyTorch keys, as a dict of numpy arrays.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        to_dict(py, self.with(py, |l| Ok(l.state_dict()))?)
    }

    /// Write the weights to `path` (safetensors, official keys, the config in the metadata),
    /// atomically; `whitebox.load(path)` and the CLI read it back.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        self.with(py, |l| l.save(&path))
    }

    /// The text a language model generates after `prompt` (without the prompt), with its stored
    /// tokenizer, as `whitebox lm generate` does: `temperature` 0 is greedy, `top_k` 0 samples
    /// among all tokens.
    #[pyo3(signature = (prompt="\n", max_new_tokens=500, temperature=0.8, top_k=200, seed=1337))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        max_new_tokens: usize,
        temperature: f64,
        top_k: usize,
        seed: u64,
    ) -> PyResult<String> {
        let opts = whitebox::model::lm::Sampling {
            max_new_tokens,
            temperature,
            top_k: (top_k > 0).then_some(top_k),
        };
        self.with(py, |l| {
            let Loaded::Lm(w) = l else {
                anyhow::bail!("generate needs a language model, not {}", l.arch().name());
            };
            let mut text = String::new();
            w.generate_text(prompt, &opts, seed, |t| {
                text.push_str(t);
                Ok(())
            })?;
            Ok(text)
        })
    }

    /// CRATE-BERT's fill-in of each `<mask>` of `text`: `{"filled": text, "top": [[(char, p),
    /// …] per mask]}` with the `top_k` most likely characters, as `whitebox bert fill-mask`.
    #[pyo3(signature = (text, top_k=5))]
    fn fill_mask<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        top_k: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        if top_k == 0 {
            return Err(bad("top_k must be at least 1, got 0"));
        }
        let fill = self.with(py, |l| {
            let Loaded::Bert(w) = l else {
                anyhow::bail!(
                    "fill_mask needs a CRATE-BERT model, not {}",
                    l.arch().name()
                );
            };
            let tok = w.stored_tokenizer()?.with_context(|| {
                format!(
                    "{}: no tokenizer metadata (weights written by `whitebox bert train` carry it)",
                    w.path.display()
                )
            })?;
            whitebox::train::bert::fill_mask(&w.model, &tok, text, top_k)
        })?;
        let d = PyDict::new(py);
        d.set_item("filled", fill.filled)?;
        d.set_item("top", fill.top)?;
        Ok(d)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |l| {
            Ok(format!(
                "Model(kind={:?}, num_params={}, source={:?})",
                l.arch().name(),
                l.config().param_count(),
                l.path().display().to_string()
            ))
        })
    }
}

/// A config given as a preset name, a JSON file's path or a dict.
fn config_arg(config: &Bound<'_, PyAny>) -> PyResult<ModelConfig> {
    if let Ok(s) = config.cast::<PyString>() {
        let s = s.to_cow()?;
        return ModelConfig::resolve(&s).map_err(crate::errors::to_py);
    }
    if config.cast::<PyDict>().is_ok() {
        return ModelConfig::from_json(&py_to_json(config)?)
            .context("config dict")
            .map_err(crate::errors::to_py);
    }
    Err(bad(
        "config must be a preset name, a JSON file's path or a dict of constructor arguments",
    ))
}

fn exists(path: &Path) -> PyResult<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(PyFileNotFoundError::new_err(format!(
            "{}: no such file",
            path.display()
        )))
    }
}

/// Load a weights file of any kind (official `.pth`/`.pth.tar`, safetensors).
#[pyfunction]
#[pyo3(signature = (path, config=None, strict=true))]
fn load(
    py: Python<'_>,
    path: PathBuf,
    config: Option<&Bound<'_, PyAny>>,
    strict: bool,
) -> PyResult<Model> {
    exists(&path)?;
    let device = Default::default();
    let spec = match config {
        Some(c) if c.cast::<PyString>().is_ok() => Some(c.extract::<String>()?),
        _ => None,
    };
    let dict_config = match config {
        Some(c) if spec.is_none() => Some(config_arg(c)?),
        _ => None,
    };
    let l = compute(py, || match dict_config {
        Some(cfg) => {
            let sd = read_state_dict(&path)?;
            let meta = read_safetensors_metadata(&path)?;
            build::<B>(cfg, sd, meta, &path, strict, &device)
        }
        None => whitebox::weights::load::<B>(&path, spec.as_deref(), strict, &device),
    })?;
    Ok(Model::new(l))
}

/// A model of `config` with the weights of `state` (official keys → numpy arrays).
#[pyfunction]
#[pyo3(signature = (state, config, strict=true))]
fn from_state_dict(
    py: Python<'_>,
    state: &Bound<'_, PyDict>,
    config: &Bound<'_, PyAny>,
    strict: bool,
) -> PyResult<Model> {
    let cfg = config_arg(config)?;
    let mut sd = StateDict::new();
    for (k, v) in state.iter() {
        let k: String = k.extract()?;
        let t: TensorData = to_tensor(&format!("state[{k:?}]"), &v)?;
        sd.insert(k, t);
    }
    let device = Default::default();
    let l = compute(py, || {
        build::<B>(
            cfg,
            sd,
            HashMap::new(),
            Path::new("state dict"),
            strict,
            &device,
        )
    })?;
    Ok(Model::new(l))
}

/// A freshly initialised model of `config`, its initial weights drawn from `seed`.
#[pyfunction]
#[pyo3(signature = (config, seed=0))]
fn create(py: Python<'_>, config: &Bound<'_, PyAny>, seed: u64) -> PyResult<Model> {
    let cfg = config_arg(config)?;
    let device = Default::default();
    let l = compute(py, || {
        B::seed(&device, seed);
        Ok(create_model::<B>(cfg, &device))
    })?;
    Ok(Model::new(l))
}

/// Every tensor of a safetensors file as numpy arrays, and its metadata.
#[pyfunction]
fn read_tensors<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<(Bound<'py, PyDict>, HashMap<String, String>)> {
    exists(&path)?;
    let (tensors, meta) = compute(py, || read_safetensors_all(&path))?;
    Ok((to_dict(py, tensors)?, meta))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(from_state_dict, m)?)?;
    m.add_function(wrap_pyfunction!(create, m)?)?;
    m.add_function(wrap_pyfunction!(read_tensors, m)?)?;
    Ok(())
}
