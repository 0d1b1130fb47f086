//! `whitebox.measure`: the white-box measures on any array, and per layer of a CRATE model.

use std::collections::BTreeMap;

use anyhow::ensure;
use burn::tensor::Tensor;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use whitebox::measure::{self, MeasureSettings};
use whitebox::weights::Loaded;

use crate::arrays::{to_f64, to_tensor};
use crate::errors::{bad, compute};
use crate::model::Model;

/// `z` as samples of `[n, d]` rows: a 2-D array is one sample, a 3-D `[B, N, d]` array B of them;
/// every value finite.
fn samples(z: &Bound<'_, PyAny>) -> PyResult<(Vec<f64>, usize, usize, usize, bool)> {
    let (v, shape) = to_f64("Z", z)?;
    let (b, n, d, batched) = match shape[..] {
        [n, d] => (1, n, d, false),
        [b, n, d] => (b, n, d, true),
        _ => {
            return Err(bad(format!(
                "Z must be [N, d] or [B, N, d], got shape {shape:?}"
            )))
        }
    };
    if b == 0 || n == 0 || d == 0 {
        return Err(bad(format!("Z is empty (shape {shape:?})")));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(format!(
            "Z holds a non-finite value ({}) at flat index {i}",
            v[i]
        )));
    }
    Ok((v, b, n, d, batched))
}

fn check_eps(name: &str, eps: f64) -> PyResult<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(bad(format!(
            "{name} must be a finite number > 0, got {eps}"
        )))
    }
}

/// One value per sample: a float for a 2-D `Z`, a float64 array of B values for `[B, N, d]`.
fn per_sample<'py>(
    py: Python<'py>,
    values: Vec<f64>,
    batched: bool,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(if batched {
        values.into_pyarray(py).into_any()
    } else {
        values[0].into_pyobject(py)?.into_any()
    })
}

/// `R(Z) = ½ logdet(I + d/(Nε²) ZᵀZ)` of `N` tokens of width `d`.
#[pyfunction]
#[pyo3(signature = (z, eps_sq=0.01))]
fn coding_rate<'py>(
    py: Python<'py>,
    z: &Bound<'py, PyAny>,
    eps_sq: f64,
) -> PyResult<Bound<'py, PyAny>> {
    check_eps("eps_sq", eps_sq)?;
    let (v, _b, n, d, batched) = samples(z)?;
    let r = compute(py, || {
        Ok(v.chunks_exact(n * d)
            .map(|s| measure::coding_rate(s, n, d, eps_sq))
            .collect())
    })?;
    per_sample(py, r, batched)
}

/// `U` as the official `[K·p, d]` weight whose rows `k·p..(k+1)·p` are `U_kᵀ`, and K.
fn bases(u: &Bound<'_, PyAny>, d: usize) -> PyResult<(Vec<f64>, usize)> {
    let mats: Vec<(Vec<f64>, Vec<usize>)> = if let Ok(list) = u.cast::<PyList>() {
        list.iter()
            .enumerate()
            .map(|(k, m)| to_f64(&format!("U[{k}]"), &m))
            .collect::<PyResult<_>>()?
    } else {
        let (v, shape) = to_f64("U", u)?;
        match shape[..] {
            [k, dd, p] => v
                .chunks_exact(dd * p.max(1))
                .take(k)
                .map(|c| (c.to_vec(), vec![dd, p]))
                .collect(),
            _ => {
                return Err(bad(format!(
                    "U must be a list of [d, p] arrays or a [K, d, p] array, got shape {shape:?}"
                )))
            }
        }
    };
    if mats.is_empty() {
        return Err(bad("U holds no subspace (K = 0)"));
    }
    let p = mats[0].1.get(1).copied().unwrap_or(0);
    let mut qkv = Vec::with_capacity(mats.len() * p * d);
    for (k, (m, shape)) in mats.iter().enumerate() {
        if shape.len() != 2 || shape[0] != d || shape[1] != p || p == 0 {
            return Err(bad(format!(
                "U[{k}] has shape {shape:?}; every basis must be [d, p] = [{d}, {p}] with p ≥ 1 (d = Z's width)"
            )));
        }
        if m.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!("U[{k}] holds a non-finite value")));
        }
        for j in 0..p {
            qkv.extend((0..d).map(|i| m[i * p + j]));
        }
    }
    Ok((qkv, mats.len()))
}

/// `R^c(Z; U) = Σ_k ½ logdet(I + p/(Nε²) (ZU_k)ᵀ(ZU_k))` over the K subspaces `U_k` `[d, p]`.
#[pyfunction]
#[pyo3(signature = (z, u, eps_sq=0.01))]
fn compression<'py>(
    py: Python<'py>,
    z: &Bound<'py, PyAny>,
    u: &Bound<'py, PyAny>,
    eps_sq: f64,
) -> PyResult<Bound<'py, PyAny>> {
    check_eps("eps_sq", eps_sq)?;
    let (v, _b, n, d, batched) = samples(z)?;
    let (qkv, heads) = bases(u, d)?;
    let r = compute(py, || {
        Ok(v.chunks_exact(n * d)
            .map(|s| measure::compression(s, n, d, &qkv, heads, eps_sq))
            .collect())
    })?;
    per_sample(py, r, batched)
}

/// The fraction of zero entries of `Z` (per sample for `[B, N, d]`).
#[pyfunction]
fn sparsity<'py>(py: Python<'py>, z: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let (v, _b, n, d, batched) = samples(z)?;
    let r = v
        .chunks_exact(n * d)
        .map(|s| s.iter().filter(|x| **x == 0.0).count() as f64 / s.len() as f64)
        .collect();
    per_sample(py, r, batched)
}

/// Every measure of a CRATE model on the images `x` (`whitebox measure`'s flat map, under the
/// names of `tests/golden/crate_A_measures.json`).
fn model_measures(
    py: Python<'_>,
    model: &Model,
    x: &Bound<'_, PyAny>,
    s: MeasureSettings,
) -> PyResult<(BTreeMap<String, f64>, usize)> {
    check_eps("eps_sq", s.eps_sq)?;
    check_eps("official_eps", s.official_eps)?;
    let x = to_tensor("x", x)?;
    let device = Default::default();
    model.with(py, |l| {
        let Loaded::Crate(w) = l else {
            anyhow::bail!(
                "the layer measures need a CRATE or CRATE-α classifier, not {}",
                l.arch().name()
            );
        };
        let c = &w.config;
        let want = [c.channels, c.image_size, c.image_size];
        let shape = x.shape.to_vec();
        ensure!(
            shape.len() == 4 && shape[1..] == want && shape[0] > 0,
            "x has shape {shape:?}, expected [N, {}, {}, {}] float32 images",
            want[0],
            want[1],
            want[2]
        );
        let t = Tensor::from_data(x.convert::<f32>(), &device);
        Ok((measure::measure_batch(&w.model, t, s)?, c.depth))
    })
}

/// The flat dict of every measure of `model` on `x` (see `whitebox measure --json`).
#[pyfunction]
#[pyo3(signature = (model, x, eps_sq=0.01, official_eps=0.01))]
fn measures(
    py: Python<'_>,
    model: &Model,
    x: &Bound<'_, PyAny>,
    eps_sq: f64,
    official_eps: f64,
) -> PyResult<BTreeMap<String, f64>> {
    Ok(model_measures(
        py,
        model,
        x,
        MeasureSettings {
            eps_sq,
            official_eps,
        },
    )?
    .0)
}

/// The per-layer table of `whitebox measure` as a list of dicts, one per layer (`layer`, then
/// the `official.*` and `paper.*` measures of that layer without the layer in their names).
#[pyfunction]
#[pyo3(signature = (model, x, eps_sq=0.01, official_eps=0.01))]
fn layers<'py>(
    py: Python<'py>,
    model: &Model,
    x: &Bound<'py, PyAny>,
    eps_sq: f64,
    official_eps: f64,
) -> PyResult<Bound<'py, PyList>> {
    let (m, depth) = model_measures(
        py,
        model,
        x,
        MeasureSettings {
            eps_sq,
            official_eps,
        },
    )?;
    let out = PyList::empty(py);
    for i in 0..depth {
        let row = PyDict::new(py);
        row.set_item("layer", i)?;
        let tag = format!(".layer{i}.");
        for (k, v) in &m {
            if let Some(pos) = k.find(&tag) {
                row.set_item(format!("{}.{}", &k[..pos], &k[pos + tag.len()..]), v)?;
            }
        }
        out.append(row)?;
    }
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for f in [
        wrap_pyfunction!(coding_rate, m)?,
        wrap_pyfunction!(compression, m)?,
        wrap_pyfunction!(sparsity, m)?,
        wrap_pyfunction!(measures, m)?,
        wrap_pyfunction!(layers, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
