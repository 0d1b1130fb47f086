//! Library runs compared bit for bit with a straight run. burn-flex keeps one random generator
//! per process and each run seeds it and draws its initial weights from it, so these tests take
//! turns (`SERIAL`) in a binary of their own: no other test draws in between.

#[path = "../common/mod.rs"]
mod common;

mod image_run;
mod resume_exact;

/// Held by every test of this binary for its whole run.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Take this binary's turn (a test that panicked while holding it does not block the rest).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
