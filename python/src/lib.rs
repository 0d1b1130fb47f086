//! `whitebox._whitebox`: the Python face of the whitebox library. It converts numpy arrays and
//! Python values to the library's types, calls the library with the GIL released, and turns
//! every error into a Python exception; the package `whitebox` (python/whitebox) re-exports it.

use pyo3::prelude::*;

mod arrays;
mod errors;
mod measure;
mod model;
mod train;

pub use errors::WhiteboxError;

#[pymodule]
fn _whitebox(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("WhiteboxError", m.py().get_type::<WhiteboxError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    model::register(m)?;
    measure::register(m)?;
    train::register(m)?;
    Ok(())
}
