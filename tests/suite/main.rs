//! The integration tests in one binary: built, linked and monomorphised once (a release build
//! shares no generic code between test binaries, and each costs tens of seconds on CI's two
//! cores), run in parallel. They share no process-wide state: none seeds burn-flex's one random
//! generator and then compares two draws (runs compared bit for bit go through the `whitebox`
//! binary, one process each, or live in `tests/exact_runs/`), and none switches the precision
//! (`tests/bf16.rs` does, in its own binary).

#[path = "../common/mod.rs"]
mod common;

mod golden;

mod bert;
mod cli;
mod data_readers;
mod engine;
mod fused_ops;
mod helpers;
mod kernels;
mod lm_cli;
mod load;
mod optimizers;
mod parallel_step;
mod pickle_scan;
mod pictures;
mod reliability;
mod ssl;
mod text;
mod tost_cli;
mod train_parts;
mod weights_io;
