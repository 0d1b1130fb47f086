//! `whitebox bench`: time a training step (forward, backward, AdamW) and an inference forward
//! on random data, and report images per second and peak memory.

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use serde_json::json;
use std::time::Instant;

use super::BenchArgs;
use crate::model::CrateConfig;
use crate::train::{OptimSettings, OptimizerKind, TrainOptimizer};
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

pub fn bench(a: BenchArgs) -> Result<()> {
    ensure!(
        a.steps >= 1 && a.batch_size >= 1,
        "--steps and --batch-size must be positive"
    );
    let cfg = CrateConfig::resolve(&a.config)?;
    let device = Default::default();
    TrainBackend::seed(&device, 0);
    let b = a.batch_size;
    let shape = [b, cfg.channels, cfg.image_size, cfg.image_size];
    let x = Tensor::<TrainBackend, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<TrainBackend, 1, Int>::random(
        [b],
        Distribution::Uniform(0.0, cfg.num_classes as f64),
        &device,
    );
    let mut model = cfg.init::<TrainBackend>(&device);
    let settings = OptimSettings {
        kind: OptimizerKind::Adamw,
        weight_decay: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        no_decay_norm_bias: false,
        clip_grad_norm: None,
    };
    let mut optim = TrainOptimizer::new(settings, &model);
    let ce = CrossEntropyLossConfig::new().init::<TrainBackend>(&device);
    let mut train_times = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        let loss = ce.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        let _ = model.head.bias.as_ref().map(|p| p.val().into_data());
        if i >= a.warmup {
            train_times.push(t.elapsed().as_secs_f64());
        }
    }
    let inf = model.valid();
    let xi = x.inner();
    let mut infer_times = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        let _ = inf.forward(xi.clone()).into_data();
        if i >= a.warmup {
            infer_times.push(t.elapsed().as_secs_f64());
        }
    }
    let (ts, is) = (median(train_times), median(infer_times));
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
