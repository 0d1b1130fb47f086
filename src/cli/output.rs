//! Standard output that never panics: `outln!` / `out!` are `println!` / `print!` that return the
//! write error. A closed pipe (`whitebox predict … | head -c0`) becomes [`StdoutClosed`], which
//! `main` turns into a quiet exit with status 141, as other Unix tools end on SIGPIPE; any other
//! failure (a full device) is an error naming standard output.

use std::io::{self, Write};

/// The reader of standard output went away.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// The error of a failed write to standard output.
pub fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

/// Write `args` to standard output and flush it (so that a full device is seen here).
pub fn write(args: std::fmt::Arguments) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// `println!` returning `anyhow::Result<()>`.
macro_rules! outln {
    () => { $crate::cli::output::write(format_args!("\n")) };
    ($($t:tt)*) => { $crate::cli::output::write(format_args!("{}\n", format_args!($($t)*))) };
}

/// `print!` returning `anyhow::Result<()>`.
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::output::write(format_args!($($t)*)) };
}

pub(crate) use {out, outln};
