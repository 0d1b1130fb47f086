//! `whitebox bench`: time a training step (forward, backward, AdamW) and an inference forward
//! on random data, and report images (or tokens) per second and peak memory; `--profile` adds
//! where a training step's time goes; `--scaling` times CRATE against ToST over a range of token
//! counts.

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use serde_json::{json, Value};
use std::time::Instant;

use super::BenchArgs;
use crate::model::bert::{mask_tokens, BertConfig};
use crate::model::lm::{cross_entropy, LmConfig};
use crate::model::profile::{self, Class, Usage};
use crate::model::tost::TostConfig;
use crate::model::CrateConfig;
use crate::train::{OptimSettings, OptimizerKind, TrainOptimizer};
use crate::viz::curves::ScalingSeries;
use crate::{InferBackend, TrainBackend};

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

const N_CLASSES: usize = Class::ALL.len();

/// Time spent per phase of the timed steps, and per class within the forward and backward.
#[derive(Default)]
struct StepProfile {
    steps: usize,
    forward: Usage,
    backward: Usage,
    optimizer: Usage,
    class_fwd: [Usage; N_CLASSES],
    class_bwd: [Usage; N_CLASSES],
}

fn class_delta(after: &[Usage; N_CLASSES], before: &[Usage; N_CLASSES]) -> [Usage; N_CLASSES] {
    std::array::from_fn(|i| after[i].minus(before[i]))
}

fn add_all(acc: &mut [Usage; N_CLASSES], d: &[Usage; N_CLASSES]) {
    for (a, d) in acc.iter_mut().zip(d) {
        a.wall += d.wall;
        a.cpu += d.cpu;
        a.calls += d.calls;
    }
}

fn plus(a: Usage, b: Usage) -> Usage {
    Usage {
        wall: a.wall + b.wall,
        cpu: a.cpu + b.cpu,
        calls: a.calls + b.calls,
    }
}

fn sum(u: &[Usage]) -> Usage {
    u.iter().fold(Usage::default(), |a, &b| plus(a, b))
}

/// Timings of the training and inference loops.
struct Timed {
    /// Examples (images or tokens) per step.
    items: usize,
    train_s: f64,
    infer_s: f64,
    /// CPU / wall over the timed training steps.
    train_cores: f64,
    profile: StepProfile,
}

/// Run `warmup + steps` training steps (forward `loss`, backward, optimizer) and as many
/// inference forwards (`infer`), timing each phase.
fn time_steps<B, M>(
    a: &BenchArgs,
    items: usize,
    mut model: M,
    mut optim: TrainOptimizer<M, B>,
    loss: impl Fn(&M) -> Tensor<B, 1>,
    infer: impl Fn(&M::InnerModule),
) -> Timed
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let mut p = StepProfile::default();
    let (mut times, mut train_cpu) = (Vec::new(), 0.0);
    for i in 0..a.warmup + a.steps {
        let (t, cpu0) = (Instant::now(), profile::process_cpu_seconds());
        let c0 = profile::totals();
        let (l, fwd) = profile::measure(|| {
            let l = loss(&model);
            let _: f64 = l.clone().into_scalar().elem(); // what the training loops read
            l
        });
        let c1 = profile::totals();
        let (grads, bwd) = profile::measure(|| GradientsParams::from_grads(l.backward(), &model));
        let c2 = profile::totals();
        let (m, opt) =
            profile::measure(|| profile::time(Class::Optimizer, || optim.step(1e-4, model, grads)));
        model = m;
        if i >= a.warmup {
            times.push(t.elapsed().as_secs_f64());
            train_cpu += profile::process_cpu_seconds() - cpu0;
            p.steps += 1;
            p.forward = plus(p.forward, fwd);
            p.backward = plus(p.backward, bwd);
            p.optimizer = plus(p.optimizer, opt);
            add_all(&mut p.class_fwd, &class_delta(&c1, &c0));
            add_all(&mut p.class_bwd, &class_delta(&c2, &c1));
        }
    }
    let train_wall: f64 = times.iter().sum();
    let inf = model.valid();
    let mut infer_times = Vec::new();
    for i in 0..a.warmup + a.steps {
        let t = Instant::now();
        infer(&inf);
        if i >= a.warmup {
            infer_times.push(t.elapsed().as_secs_f64());
        }
    }
    Timed {
        items,
        train_s: median(times),
        infer_s: median(infer_times),
        train_cores: train_cpu / train_wall,
        profile: p,
    }
}

fn adamw(weight_decay: f64, beta2: f64, clip: Option<f64>) -> OptimSettings {
    OptimSettings {
        kind: OptimizerKind::Adamw,
        weight_decay,
        beta1: 0.9,
        beta2,
        no_decay_norm_bias: clip.is_some(),
        clip_grad_norm: clip,
    }
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

fn image(a: &BenchArgs) -> Result<(Value, Timed)> {
    let cfg = CrateConfig::resolve(&a.config)?;
    let device = Default::default();
    let b = a.batch_size;
    let (x, y) = random_batch(
        [b, cfg.channels, cfg.image_size, cfg.image_size],
        cfg.num_classes,
    );
    let model = cfg.init::<TrainBackend>(&device);
    let optim = TrainOptimizer::new(adamw(0.05, 0.999, None), &model);
    let ce = CrossEntropyLossConfig::new().init::<TrainBackend>(&device);
    let xi = x.clone().inner();
    let timed = time_steps(
        a,
        b,
        model,
        optim,
        |m| ce.forward(m.forward(x.clone()), y.clone()),
        |m| {
            let _ = m.forward(xi.clone()).into_data();
        },
    );
    Ok((json!(cfg), timed))
}

/// Vocabulary of the char-level Shakespeare corpus (`whitebox lm prepare`).
const CHAR_VOCAB: usize = 89;

fn random_tokens(n: usize, lo: i64, hi: i64, seed: u64) -> Vec<i64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn lm(a: &BenchArgs) -> Result<(Value, Timed)> {
    let cfg = LmConfig {
        vocab_size: CHAR_VOCAB,
        block_size: a.context,
        ..LmConfig::char_default()
    };
    cfg.validate()?;
    let device = Default::default();
    TrainBackend::seed(&device, 0);
    let (b, t) = (a.batch_size, a.context);
    let ids = |seed| {
        let v = random_tokens(b * t, 0, CHAR_VOCAB as i64, seed);
        Tensor::<TrainBackend, 2, Int>::from_data(TensorData::new(v, [b, t]), &device)
    };
    let (x, y) = (ids(1), ids(2));
    let model = cfg.init::<TrainBackend>(&device);
    let optim = TrainOptimizer::new(adamw(0.1, 0.95, Some(1.0)), &model);
    let xi = x.clone().inner();
    let timed = time_steps(
        a,
        b * t,
        model,
        optim,
        |m| cross_entropy(m.forward(x.clone()), y.clone()),
        |m| {
            let _ = m.forward(xi.clone()).into_data();
        },
    );
    Ok((json!(cfg), timed))
}

fn bert(a: &BenchArgs) -> Result<(Value, Timed)> {
    // `bert train`'s default model: characters shifted past the 3 specials, pad id 1
    let cfg = BertConfig {
        vocab_size: CHAR_VOCAB + 3,
        hidden_size: 128,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        max_position_embeddings: a.context + 2,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        pad_token_id: 1,
        initializer_range: 0.02,
    };
    cfg.validate()?;
    let device = Default::default();
    TrainBackend::seed(&device, 0);
    let (b, t) = (a.batch_size, a.context);
    let text = random_tokens(b * t, 3, cfg.vocab_size as i64, 1);
    let (x, labels) = mask_tokens(&text, &[0, 1, 2], 2, cfg.vocab_size, 0.15, 2);
    let ids = Tensor::<TrainBackend, 2, Int>::from_data(TensorData::new(x, [b, t]), &device);
    let model = cfg.init::<TrainBackend>(&device);
    let optim = TrainOptimizer::new(adamw(0.01, 0.98, Some(1.0)), &model);
    let idi = ids.clone().inner();
    let timed = time_steps(
        a,
        b * t,
        model,
        optim,
        |m| m.mlm_loss(ids.clone(), &labels),
        |m| {
            let _ = m.mlm_loss(idi.clone(), &labels).into_data();
        },
    );
    Ok((json!(cfg), timed))
}

pub fn bench(a: BenchArgs) -> Result<()> {
    ensure!(
        a.steps >= 1 && a.batch_size >= 1,
        "--steps and --batch-size must be positive"
    );
    ensure!(a.context >= 1, "--context must be positive");
    if a.scaling {
        return scaling(&a);
    }
    profile::enable(a.profile);
    let (config, r) = match a.task {
        Task::Image => image(&a)?,
        Task::Lm => lm(&a)?,
        Task::Bert => bert(&a)?,
    };
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
        "precision": format!("{:?}", crate::model::bf16::precision()).to_lowercase(),
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
        print_profile(&r.profile);
    }
    Ok(())
}

/// A row of the profile table: forward and backward parts (none for the optimizer) and total.
struct Row {
    name: String,
    parts: Option<(Usage, Usage)>,
    total: Usage,
}

/// The rows of the profile table, summed over the timed steps.
fn profile_rows(p: &StepProfile) -> Vec<Row> {
    let split = |name: &str, f: Usage, b: Usage| Row {
        name: name.to_string(),
        parts: Some((f, b)),
        total: plus(f, b),
    };
    let mut rows: Vec<Row> = Class::ALL
        .iter()
        .filter(|c| **c != Class::Optimizer)
        .map(|&c| split(c.name(), p.class_fwd[c as usize], p.class_bwd[c as usize]))
        .collect();
    rows.push(Row {
        name: "optimizer (clipping, AdamW)".into(),
        parts: None,
        total: p.optimizer,
    });
    rows.push(split(
        "other (embeddings, elementwise, softmax/loss, autodiff graph and gradient bookkeeping)",
        p.forward.minus(sum(&p.class_fwd)),
        p.backward.minus(sum(&p.class_bwd)),
    ));
    rows
}

fn per_step(u: Usage, steps: usize) -> Usage {
    let s = steps.max(1) as f64;
    Usage {
        wall: u.wall / s,
        cpu: u.cpu / s,
        calls: u.calls / steps.max(1),
    }
}

fn print_profile(p: &StepProfile) {
    let total = per_step(plus(plus(p.forward, p.backward), p.optimizer), p.steps);
    println!(
        "training step, mean of {} steps: {:.1} ms wall, {:.1} ms CPU, {:.2} cores busy \
         (forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms)",
        p.steps,
        total.wall * 1e3,
        total.cpu * 1e3,
        total.cores(),
        per_step(p.forward, p.steps).wall * 1e3,
        per_step(p.backward, p.steps).wall * 1e3,
        per_step(p.optimizer, p.steps).wall * 1e3,
    );
    println!("| class | forward ms | backward ms | total ms | share of step | cores busy |");
    println!("|---|---|---|---|---|---|");
    let ms = |u: Usage| format!("{:.2}", per_step(u, p.steps).wall * 1e3);
    for r in profile_rows(p) {
        let (f, b) = r
            .parts
            .map_or(("–".into(), "–".into()), |(f, b)| (ms(f), ms(b)));
        println!(
            "| {} | {f} | {b} | {} | {:.1} % | {:.2} |",
            r.name,
            ms(r.total),
            100.0 * per_step(r.total, p.steps).wall / total.wall.max(1e-12),
            r.total.cores()
        );
    }
}

fn profile_json(p: &StepProfile) -> Value {
    let rows: Vec<Value> = profile_rows(p)
        .into_iter()
        .map(|r| {
            let t = per_step(r.total, p.steps);
            json!({"class": r.name, "wall_s": t.wall, "cpu_s": t.cpu, "cores_busy": t.cores()})
        })
        .collect();
    json!({"steps": p.steps, "forward_s": per_step(p.forward, p.steps).wall,
           "backward_s": per_step(p.backward, p.steps).wall,
           "optimizer_s": per_step(p.optimizer, p.steps).wall, "classes": rows})
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
    let ce = CrossEntropyLossConfig::new().init::<TrainBackend>(&device);
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
        let xi = x.clone().inner();
        let crate_model = crate_cfg.init::<TrainBackend>(&device);
        let r = time_steps(
            a,
            b,
            crate_model.clone(),
            TrainOptimizer::new(adamw(0.05, 0.999, None), &crate_model),
            |m| ce.forward(m.forward(x.clone()), y.clone()),
            |m| {
                let _ = m.forward(xi.clone()).into_data();
            },
        );
        let (ct, ci) = (r.train_s, r.infer_s);
        let tost_model = tost_cfg.init::<TrainBackend>(&device);
        let r = time_steps(
            a,
            b,
            tost_model.clone(),
            TrainOptimizer::new(adamw(0.05, 0.999, None), &tost_model),
            |m| ce.forward(m.forward_mode(x.clone(), true), y.clone()),
            |m| {
                let _ = m.forward(xi.clone()).into_data();
            },
        );
        let (tt, ti) = (r.train_s, r.infer_s);
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
