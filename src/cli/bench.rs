//! `whitebox bench`: time a training step (forward, backward, AdamW) and an inference forward
//! on random data, and report images (or tokens) per second and peak memory; `--profile` adds
//! where a training step's time goes; `--scaling` times CRATE against ToST over a range of token
//! counts. The timing is `whitebox::bench`; this file prints it.

use crate::cli::output::{out, outln};
use anyhow::Result;
use serde_json::json;

use super::BenchArgs;
use whitebox::bench::{self, peak_rss_bytes, Scaling};
use whitebox::model::CrateConfig;

/// What `whitebox bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// The image classifier of --config (images per second).
    Image,
    /// Causal CRATE (crate-lm-overcomplete) at the char-level size of `lm train` (tokens per second).
    Lm,
    /// CRATE-BERT at the size of `bert train` (tokens per second).
    Bert,
    /// Each kernel class on the models' shapes: GEMM GFLOP/s in f32 and bf16, row kernels in GB/s.
    Kernels,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let settings = bench::Settings {
        batch_size: a.batch_size,
        steps: a.steps,
        warmup: a.warmup,
        context: a.context,
    };
    settings.validate()?;
    if a.scaling {
        return scaling(&a, &settings);
    }
    let task = match a.task {
        Task::Image => bench::Task::Image(CrateConfig::resolve(&a.config)?),
        Task::Lm => bench::Task::Lm,
        Task::Bert => bench::Task::Bert,
        Task::Kernels => {
            out!("{}", bench::kernels::table())?;
            return Ok(());
        }
    };
    let report = bench::Report::measure(task, settings, a.profile)?;
    if a.json {
        outln!("{}", report.json())?;
    } else {
        out!("{report}")?;
    }
    Ok(())
}

/// `whitebox bench --scaling`: a table of milliseconds per image for the inference forward and the
/// training step of CRATE and ToST, and optionally a log-log plot.
fn scaling(a: &BenchArgs, settings: &bench::Settings) -> Result<()> {
    let s = Scaling {
        dim: a.dim,
        depth: a.depth,
        heads: a.heads,
        sizes: a.sizes.clone(),
    };
    s.validate()?;
    outln!("{}", s.header(settings))?;
    let rows = bench::scaling(settings, &s, |r| outln!("{r}"))?;
    let (d, depth, heads) = (a.dim, a.depth, a.heads);
    if let Some(path) = &a.plot {
        let title = format!("Time per image vs tokens (d = {d}, depth {depth}, {heads} heads)");
        whitebox::viz::curves::save_scaling(path, &title, &bench::scaling_series(&rows))?;
        outln!("wrote {}", path.display())?;
    }
    if a.json {
        outln!(
            "{}",
            json!({"dim": d, "depth": depth, "heads": heads, "batch_size": a.batch_size, "rows": rows,
            "peak_rss_bytes": peak_rss_bytes()})
        )?;
    }
    Ok(())
}
