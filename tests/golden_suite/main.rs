//! The golden tests against the official PyTorch outputs (`tests/golden/`, see its README), one
//! module per model family, in one test binary (they share no state: no seeding, no precision
//! switch), so the build links and monomorphises them once.

#[path = "../common/mod.rs"]
mod common;

mod alpha;
#[path = "crate.rs"]
mod crate_;
mod lm;
mod mae;
mod measures;
mod ssl;
mod tost;
