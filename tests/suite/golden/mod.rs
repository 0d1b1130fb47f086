//! The golden tests against the official PyTorch outputs (`tests/golden/`, see its README), one
//! module per model family.

mod alpha;
#[path = "crate.rs"]
mod crate_;
mod lm;
mod mae;
mod measures;
mod ssl;
mod tost;
