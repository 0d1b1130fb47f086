//! numpy arrays ↔ burn's `TensorData`, and JSON ↔ Python objects.

use burn::tensor::{DType, TensorData};
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::bad;

/// The dtype of `x` in words, for errors (`float64`, or the Python type of a non-array).
fn describe(x: &Bound<'_, PyAny>) -> String {
    match x.getattr("dtype") {
        Ok(d) => format!("an array of {d}"),
        Err(_) => x
            .get_type()
            .name()
            .map_or_else(|_| "an object".into(), |n| format!("a {n}")),
    }
}

/// A float32 or int64 numpy array as `TensorData` (its logical order, any strides).
pub fn to_tensor(name: &str, x: &Bound<'_, PyAny>) -> PyResult<TensorData> {
    if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        let shape = a.shape().to_vec();
        return Ok(TensorData::new(
            a.as_array().iter().copied().collect(),
            shape,
        ));
    }
    if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'_, i64>>() {
        let shape = a.shape().to_vec();
        return Ok(TensorData::new(
            a.as_array().iter().copied().collect(),
            shape,
        ));
    }
    Err(bad(format!(
        "{name} must be a numpy array of float32 (images) or int64 (token ids), got {} \
         (convert with .astype(numpy.float32) or .astype(numpy.int64))",
        describe(x)
    )))
}

/// A float array (float32 or float64) as f64 values and its shape.
pub fn to_f64(name: &str, x: &Bound<'_, PyAny>) -> PyResult<(Vec<f64>, Vec<usize>)> {
    if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'_, f64>>() {
        return Ok((a.as_array().iter().copied().collect(), a.shape().to_vec()));
    }
    if let Ok(a) = x.extract::<PyReadonlyArrayDyn<'_, f32>>() {
        let v = a.as_array().iter().map(|v| *v as f64).collect();
        return Ok((v, a.shape().to_vec()));
    }
    Err(bad(format!(
        "{name} must be a numpy array of float32 or float64, got {}",
        describe(x)
    )))
}

/// `TensorData` as a numpy array: integers as int64, everything else as float32.
pub fn to_numpy<'py>(py: Python<'py>, t: TensorData) -> PyResult<Bound<'py, PyAny>> {
    let shape = IxDyn(&t.shape.to_vec());
    let int = matches!(
        t.dtype,
        DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U64 | DType::U32 | DType::U8
    );
    let err = |e: numpy::ndarray::ShapeError| bad(format!("internal shape error: {e}"));
    Ok(if int {
        let v: Vec<i64> = t
            .convert::<i64>()
            .to_vec()
            .map_err(|e| bad(format!("{e:?}")))?;
        ArrayD::from_shape_vec(shape, v)
            .map_err(err)?
            .into_pyarray(py)
            .into_any()
    } else {
        let v: Vec<f32> = t
            .convert::<f32>()
            .to_vec()
            .map_err(|e| bad(format!("{e:?}")))?;
        ArrayD::from_shape_vec(shape, v)
            .map_err(err)?
            .into_pyarray(py)
            .into_any()
    })
}

/// Named tensors as a dict of numpy arrays.
pub fn to_dict<'py>(
    py: Python<'py>,
    tensors: impl IntoIterator<Item = (String, TensorData)>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, t) in tensors {
        d.set_item(k, to_numpy(py, t)?)?;
    }
    Ok(d)
}

/// A JSON value as the Python object `json.loads` would give.
pub fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (v.to_string(),))
}

/// A Python object (dict, list, number, string) as JSON text, through `json.dumps`.
pub fn py_to_json(x: &Bound<'_, PyAny>) -> PyResult<String> {
    x.py()
        .import("json")?
        .call_method1("dumps", (x,))?
        .extract()
}
