//! `whitebox bench`: time a training step (forward, backward, AdamW) and an inference forward
//! on random data, and report images (or tokens) per second and peak memory; `--profile` adds
//! where a training step's time goes; `--scaling` times CRATE against ToST over a range of token
//! counts. The timing is `whitebox::bench`; this file prints it.

use anyhow::Result;
use serde_json::json;

use super::BenchArgs;
use whitebox::bench::{self, peak_rss_bytes, profile_json, Scaling};
use whitebox::model::profile;
use whitebox::model::CrateConfig;
use whitebox::InferBackend;

/// What `whitebox bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// The image classifier of --config (images per second).
    Image,
    /// Causal CRATE (crate-lm-overcomplete) at the char-level size of `lm train` (tokens per second).
    Lm,
    /// CRATE-BERT at the size of `bert train` (tokens per second).
    Bert,
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
    };
    let (config, r) = bench::run(&task, &settings, a.profile)?;
    let unit = if a.task == Task::Image { "img" } else { "tok" };
    let (train_rate, infer_rate) = (r.items as f64 / r.train_s, r.items as f64 / r.infer_s);
    let threads = rayon::current_num_threads();
    let mut out = json!({
        "task": format!("{:?}", a.task).to_lowercase(),
        "config": config, "batch_size": a.batch_size, "steps": a.steps,
        "train_step_s": r.train_s, format!("train_{unit}_s"): train_rate,
        "infer_s": r.infer_s, format!("infer_{unit}_s"): infer_rate,
        "train_cores_busy": r.train_cores,
        "peak_rss_bytes": peak_rss_bytes(),
        "backend": std::any::type_name::<InferBackend>(),
        "threads": threads,
        "precision": format!("{:?}", whitebox::model::bf16::precision()).to_lowercase(),
    });
    if a.task != Task::Image {
        out["context"] = json!(a.context);
    }
    let (cpu, flags) = profile::cpu_summary();
    if a.profile {
        out["profile"] = profile_json(&r.profile);
        out["cpu"] = json!(cpu);
        out["isa"] = json!(flags);
    }
    if a.json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "train {train_rate:.1} {unit}/s ({:.3} s/step, {:.2} cores busy)  infer {infer_rate:.1} {unit}/s  peak RSS {:.0} MiB",
        r.train_s,
        r.train_cores,
        peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0
    );
    if a.profile {
        println!(
            "CPU: {cpu}; {threads} threads; ISA: {}",
            if flags.is_empty() {
                "none of avx2/avx512/amx".to_string()
            } else {
                flags.join(" ")
            }
        );
        print!("{}", bench::profile_table(&r.profile));
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
    let (d, depth, heads, b) = (a.dim, a.depth, a.heads, a.batch_size);
    println!(
        "CRATE (MSSA + ISTA) vs ToST (TSSA + MLP, 2 class-attention blocks): d = {d}, depth {depth}, \
         {heads} heads, patch 8, batch {b}, median of {} steps, {} threads",
        a.steps,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:>7} {:>6} | {:>12} {:>12} {:>6} | {:>12} {:>12} {:>6}",
        "tokens", "image", "CRATE fwd", "ToST fwd", "ratio", "CRATE train", "ToST train", "ratio"
    );
    let rows = bench::scaling(settings, &s, |r| {
        println!(
            "{:>7} {:>6} | {:>12.2} {:>12.2} {:>5.2}× | {:>12.2} {:>12.2} {:>5.2}×",
            r.tokens,
            format!("{}²", r.image_size),
            r.crate_forward_ms,
            r.tost_forward_ms,
            r.crate_forward_ms / r.tost_forward_ms,
            r.crate_train_ms,
            r.tost_train_ms,
            r.crate_train_ms / r.tost_train_ms
        );
    })?;
    if let Some(path) = &a.plot {
        let title = format!("Time per image vs tokens (d = {d}, depth {depth}, {heads} heads)");
        whitebox::viz::curves::save_scaling(path, &title, &bench::scaling_series(&rows))?;
        println!("wrote {}", path.display());
    }
    if a.json {
        println!(
            "{}",
            json!({"dim": d, "depth": depth, "heads": heads, "batch_size": b, "rows": rows,
            "peak_rss_bytes": peak_rss_bytes()})
        );
    }
    Ok(())
}
