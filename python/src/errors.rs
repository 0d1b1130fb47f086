//! Library errors as Python exceptions, compute with the GIL released, and no panic into Python.

use pyo3::exceptions::{PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    whitebox,
    WhiteboxError,
    PyValueError,
    "An error of the whitebox library (bad input, a file that cannot be used, a run that failed)."
);

/// `e` as a Python exception with the library's whole message: `FileNotFoundError` when a file
/// is missing, else `WhiteboxError` (a `ValueError`).
pub fn to_py(e: anyhow::Error) -> PyErr {
    let msg = format!("{e:#}");
    let missing = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    });
    if missing {
        PyFileNotFoundError::new_err(msg)
    } else {
        WhiteboxError::new_err(msg)
    }
}

/// Run `f`, turning a panic into an error (a panic must not unwind into Python).
pub fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow::anyhow!("internal error in whitebox: {what}"))
    })
}

/// Run `f` with the GIL released (other Python threads go on), as a Python result.
pub fn compute<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| guarded(f)).map_err(to_py)
}

/// A `WhiteboxError` with `msg`.
pub fn bad(msg: impl Into<String>) -> PyErr {
    WhiteboxError::new_err(msg.into())
}
