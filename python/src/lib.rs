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

// the allocator of the CLI: the library's kernels are tuned with it (freed pages kept for reuse)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _whitebox(m: &Bound<'_, PyModule>) -> PyResult<()> {
    whitebox::alloc::keep_freed_pages();
    m.add("WhiteboxError", m.py().get_type::<WhiteboxError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    model::register(m)?;
    measure::register(m)?;
    train::register(m)?;
    Ok(())
}
