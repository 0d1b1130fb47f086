//! `whitebox bench`: time a training step (forward, backward, AdamW) and an inference forward
//! on random data, and report images per second and peak memory; `--scaling` times CRATE
//! against ToST over a range of token counts.

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use serde_json::json;
use std::time::Instant;

use super::BenchArgs;
use crate::model::tost::TostConfig;
use crate::model::CrateConfig;
use crate::train::{OptimSettings, OptimizerKind, TrainOptimizer};
use crate::viz::curves::ScalingSeries;
use crate::{InferBackend, TrainBackend};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// AdamW as the benchmarks run it.
fn bench_optim() -> OptimSettings {
    OptimSettings {
        kind: OptimizerKind::Adamw,
        weight_decay: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        no_decay_norm_bias: false,
        clip_grad_norm: None,
    }
}

/// Median seconds of a training step (forward, backward, AdamW) and of an inference forward of
/// a classifier on the batch `(x, y)`, after `warmup` untimed iterations each. `sync` reads a
/// parameter back so an asynchronous backend has finished the step.
#[allow(clippy::too_many_arguments)]
fn time_classifier<M>(
    mut model: M,
    train_logits: impl Fn(&M, Tensor<TrainBackend, 4>) -> Tensor<TrainBackend, 2>,
    infer_logits: impl Fn(&M::InnerModule, Tensor<InferBackend, 4>) -> Tensor<InferBackend, 2>,
    sync: impl Fn(&M),
    x: &Tensor<TrainBackend, 4>,
    y: &Tensor<TrainBackend, 1, Int>,
    warmup: usize,
    steps: usize,
) -> (f64, f64)
where
    M: AutodiffModule<TrainBackend> + crate::weights::OfficialKeys,
{
    let device = x.device();
    let mut optim = TrainOptimizer::new(bench_optim(), &model);
    let ce = CrossEntropyLossConfig::new().init::<TrainBackend>(&device);
    let mut train_times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let loss = ce.forward(train_logits(&model, x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        sync(&model);
        if i >= warmup {
            train_times.push(t.elapsed().as_secs_f64());
        }
    }
    let inf = model.valid();
    let xi = x.clone().inner();
    let mut infer_times = Vec::new();
    for i in 0..warmup + steps {
        let t = Instant::now();
        let _ = infer_logits(&inf, xi.clone()).into_data();
        if i >= warmup {
            infer_times.push(t.elapsed().as_secs_f64());
        }
    }
    (median(train_times), median(infer_times))
}

/// A random NCHW batch and random labels.
fn random_batch(
    shape: [usize; 4],
    classes: usize,
) -> (Tensor<TrainBackend, 4>, Tensor<TrainBackend, 1, Int>) {
    let device = Default::default();
    TrainBackend::seed(&device, 0);
    let x = Tensor::<TrainBackend, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<TrainBackend, 1, Int>::random(
        [shape[0]],
        Distribution::Uniform(0.0, classes as f64),
        &device,
    );
    (x, y)
}

pub fn bench(a: BenchArgs) -> Result<()> {
    ensure!(
        a.steps >= 1 && a.batch_size >= 1,
        "--steps and --batch-size must be positive"
    );
    if a.scaling {
        return scaling(&a);
    }
    let cfg = CrateConfig::resolve(&a.config)?;
    let device = Default::default();
    let b = a.batch_size;
    let (x, y) = random_batch(
        [b, cfg.channels, cfg.image_size, cfg.image_size],
        cfg.num_classes,
    );
    let (ts, is) = time_classifier(
        cfg.init::<TrainBackend>(&device),
        |m, x| m.forward(x),
        |m, x| m.forward(x),
        |m| {
            let _ = m.head.bias.as_ref().map(|p| p.val().into_data());
        },
        &x,
        &y,
        a.warmup,
        a.steps,
    );
    let out = json!({
        "config": cfg, "batch_size": b, "steps": a.steps,
        "train_step_s": ts, "train_img_s": b as f64 / ts,
        "infer_s": is, "infer_img_s": b as f64 / is,
        "peak_rss_bytes": peak_rss_bytes(),
        "backend": std::any::type_name::<InferBackend>(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "train {:.1} img/s ({:.3} s/step)  infer {:.1} img/s  peak RSS {:.0} MiB",
            b as f64 / ts,
            ts,
            b as f64 / is,
            peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0
        );
    }
    Ok(())
}

/// `whitebox bench --scaling`: CRATE (MSSA, quadratic in the tokens) against ToST (TSSA, linear)
/// at equal width, depth and heads, on RGB images of growing size with patch 8 (both models see
/// the same images and the same number of tokens); a table of milliseconds per image for the
/// inference forward and the training step, and optionally a log-log plot.
fn scaling(a: &BenchArgs) -> Result<()> {
    let (d, depth, heads) = (a.dim, a.depth, a.heads);
    ensure!(
        d > 0 && depth > 0 && heads > 0 && d.is_multiple_of(heads) && d.is_multiple_of(4),
        "--dim must be a positive multiple of --heads and of 4"
    );
    ensure!(!a.sizes.is_empty(), "--sizes is empty");
    let device = Default::default();
    let b = a.batch_size;
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
    let mut rows = Vec::new();
    let mut series: Vec<ScalingSeries> = [
        "CRATE forward",
        "ToST forward",
        "CRATE train step",
        "ToST train step",
    ]
    .iter()
    .map(|l| ScalingSeries {
        label: l.to_string(),
        points: vec![],
    })
    .collect();
    for &size in &a.sizes {
        ensure!(
            size >= 8 && size.is_multiple_of(8),
            "--sizes: {size} is not a positive multiple of the patch size 8"
        );
        let crate_cfg = CrateConfig {
            image_size: size,
            patch_size: 8,
            num_classes: 10,
            dim_head: d / heads,
            ..CrateConfig::factory(d, depth, heads)
        };
        let tost_cfg = TostConfig {
            img_size: size,
            patch_size: 8,
            num_classes: 10,
            ..TostConfig::factory(d, depth, heads, 1.0)
        };
        let n = crate_cfg.num_patches();
        let (x, y) = random_batch([b, 3, size, size], 10);
        let (ct, ci) = time_classifier(
            crate_cfg.init::<TrainBackend>(&device),
            |m, x| m.forward(x),
            |m, x| m.forward(x),
            |m| {
                let _ = m.head.bias.as_ref().map(|p| p.val().into_data());
            },
            &x,
            &y,
            a.warmup,
            a.steps,
        );
        let (tt, ti) = time_classifier(
            tost_cfg.init::<TrainBackend>(&device),
            |m, x| m.forward_mode(x, true),
            |m, x| m.forward(x),
            |m| {
                let _ = m.head.bias.as_ref().map(|p| p.val().into_data());
            },
            &x,
            &y,
            a.warmup,
            a.steps,
        );
        let ms = |s: f64| 1e3 * s / b as f64;
        println!(
            "{:>7} {:>6} | {:>12.2} {:>12.2} {:>5.2}× | {:>12.2} {:>12.2} {:>5.2}×",
            n,
            format!("{size}²"),
            ms(ci),
            ms(ti),
            ci / ti,
            ms(ct),
            ms(tt),
            ct / tt
        );
        for (s, v) in series.iter_mut().zip([ci, ti, ct, tt]) {
            s.points.push((n as f64, ms(v)));
        }
        rows.push(
            json!({"tokens": n, "image_size": size, "crate_forward_ms": ms(ci),
            "tost_forward_ms": ms(ti), "crate_train_ms": ms(ct), "tost_train_ms": ms(tt)}),
        );
    }
    if let Some(path) = &a.plot {
        let title = format!("Time per image vs tokens (d = {d}, depth {depth}, {heads} heads)");
        crate::viz::curves::save_scaling(path, &title, &series)?;
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
