//! Benchmarks on random data: a training step (forward, backward, AdamW) and an inference
//! forward of the image classifier, the causal language model or CRATE-BERT, timed per phase and
//! per operation class (`whitebox bench`), and CRATE against ToST over a range of token counts
//! (`whitebox bench --scaling`), and each kernel class on its own (`whitebox bench --task kernels`).

pub mod kernels;

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData};
use serde_json::{json, Value};
use std::time::Instant;

use crate::model::bert::{mask_tokens, BertConfig};
use crate::model::lm::{cross_entropy, LmConfig};
use crate::model::profile::{self, Class, Usage};
use crate::model::tost::TostConfig;
use crate::model::CrateConfig;
use crate::train::bert::masked_slices;
use crate::train::{parallel, OptimSettings, OptimizerKind, TrainOptimizer};
use crate::viz::curves::ScalingSeries;
use crate::TrainBackend;
use std::ops::Range;

/// What [`run`] times.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// An image classifier (images per second).
    Image(CrateConfig),
    /// Causal CRATE (crate-lm-overcomplete) at the char-level size of `lm train` (tokens per second).
    Lm,
    /// CRATE-BERT at the size of `bert train` (tokens per second).
    Bert,
}

impl Task {
    /// `"image"`, `"lm"` or `"bert"` (as `whitebox bench --task` names it).
    pub fn name(&self) -> &'static str {
        match self {
            Task::Image(_) => "image",
            Task::Lm => "lm",
            Task::Bert => "bert",
        }
    }

    /// What a rate counts: images or tokens.
    pub fn unit(&self) -> &'static str {
        match self {
            Task::Image(_) => "img",
            _ => "tok",
        }
    }
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

/// How a benchmark runs: `warmup` untimed then `steps` timed iterations (median reported) of
/// `batch_size` images or sequences of `context` tokens.
#[derive(Clone, Debug)]
pub struct Settings {
    pub batch_size: usize,
    pub steps: usize,
    pub warmup: usize,
    /// Tokens per sequence (language models).
    pub context: usize,
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.steps >= 1 && self.batch_size >= 1,
            "--steps and --batch-size must be positive"
        );
        ensure!(self.context >= 1, "--context must be positive");
        Ok(())
    }
}

/// Time spent per phase of the timed steps, and per class within the forward and backward.
#[derive(Default)]
pub struct StepProfile {
    pub steps: usize,
    /// Batch slices whose forward and backward ran at once, one per core (`train::parallel`).
    pub slices: usize,
    pub forward: Usage,
    pub backward: Usage,
    pub optimizer: Usage,
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

pub fn plus(a: Usage, b: Usage) -> Usage {
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
pub struct Timed {
    /// Examples (images or tokens) per step.
    pub items: usize,
    /// Median seconds of a training step and of an inference forward.
    pub train_s: f64,
    pub infer_s: f64,
    /// CPU / wall over the timed training steps.
    pub train_cores: f64,
    pub profile: StepProfile,
}

/// Run `warmup + steps` training steps (forward `loss`, backward, optimizer) and as many
/// inference forwards (`infer`), timing each phase.
fn time_steps<B, M>(
    a: &Settings,
    items: usize,
    mut model: M,
    mut optim: TrainOptimizer<M, B>,
    parts: Vec<(Range<usize>, f64)>,
    loss: impl Fn(&M, Range<usize>) -> Tensor<B, 1> + Sync,
    infer: impl Fn(&M::InnerModule),
) -> Timed
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send,
{
    let mut p = StepProfile {
        slices: parts.len(),
        ..StepProfile::default()
    };
    let (mut times, mut train_cpu) = (Vec::new(), 0.0);
    for i in 0..a.warmup + a.steps {
        let (t, cpu0) = (Instant::now(), profile::process_cpu_seconds());
        let c0 = profile::totals();
        let (grads, fwd, bwd, c1) = if parts.len() > 1 {
            // forward and backward run together on every slice: all of it counts as forward
            let ((_, g), fb) = profile::measure(|| {
                parallel::weighted_loss_and_grads(&model, parts.clone(), &loss)
            });
            (g, fb, Usage::default(), profile::totals())
        } else {
            let (l, fwd) = profile::measure(|| {
                let l = loss(&model, 0..a.batch_size);
                let _: f64 = l.clone().into_scalar().elem(); // what the training loops read
                l
            });
            let c1 = profile::totals();
            let (g, bwd) = profile::measure(|| GradientsParams::from_grads(l.backward(), &model));
            (g, fwd, bwd, c1)
        };
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
            // slices ran at once: their threads' class times, averaged, are each core's
            let per_core = |mut d: [Usage; N_CLASSES]| {
                for u in &mut d {
                    (u.wall, u.cpu) = (u.wall / parts.len() as f64, u.cpu / parts.len() as f64);
                }
                d
            };
            add_all(&mut p.class_fwd, &per_core(class_delta(&c1, &c0)));
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

fn image(a: &Settings, cfg: &CrateConfig) -> Result<(Value, Timed)> {
    let device = Default::default();
    let b = a.batch_size;
    crate::alloc::check_fits(
        "this benchmark",
        cfg.train_step_bytes(b),
        "--batch-size or the config's size",
    )?;
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
        parallel::by_rows(parallel::slices(b)),
        |m, r| {
            let rows = |t: Tensor<TrainBackend, 4>| t.narrow(0, r.start, r.len());
            ce.forward(
                m.forward(rows(x.clone())),
                y.clone().narrow(0, r.start, r.len()),
            )
        },
        |m| {
            let _ = parallel::forward_slices(xi.clone(), |x| m.forward(x)).into_data();
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

fn lm(a: &Settings) -> Result<(Value, Timed)> {
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
        parallel::by_rows(parallel::sequence_slices(b, t)),
        |m, r| {
            let rows = |t: Tensor<TrainBackend, 2, Int>| t.narrow(0, r.start, r.len());
            cross_entropy(m.forward(rows(x.clone())), rows(y.clone()))
        },
        |m| {
            let _ = m.forward(xi.clone()).into_data();
        },
    );
    Ok((json!(cfg), timed))
}

fn bert(a: &Settings) -> Result<(Value, Timed)> {
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
        // as `bert train` cuts it: slices weighted by their share of the masked tokens
        masked_slices(&labels, parallel::sequence_slices(b, t), t)
            .unwrap_or_else(|| vec![(0..b, 1.0)]),
        |m, r| {
            let rows = ids.clone().narrow(0, r.start, r.len());
            m.mlm_loss(rows, &labels[r.start * t..r.end * t])
        },
        |m| {
            let _ = m.mlm_loss(idi.clone(), &labels).into_data();
        },
    );
    Ok((json!(cfg), timed))
}

/// Time `task` (an image classifier, or the language models at the size of `lm train` and
/// `bert train`): the model's config as JSON and the timings. With `profile`, the operation
/// classes are timed too (see [`profile_rows`]).
pub fn run(task: &Task, a: &Settings, profile: bool) -> Result<(Value, Timed)> {
    a.validate()?;
    profile::enable(profile);
    match task {
        Task::Image(cfg) => image(a, cfg),
        Task::Lm => lm(a),
        Task::Bert => bert(a),
    }
}

/// A row of the profile table: forward and backward parts (none for the optimizer) and total.
pub struct Row {
    pub name: String,
    pub parts: Option<(Usage, Usage)>,
    pub total: Usage,
}

/// The rows of the profile table, summed over the timed steps.
pub fn profile_rows(p: &StepProfile) -> Vec<Row> {
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

pub fn per_step(u: Usage, steps: usize) -> Usage {
    let s = steps.max(1) as f64;
    Usage {
        wall: u.wall / s,
        cpu: u.cpu / s,
        calls: u.calls / steps.max(1),
    }
}

pub fn profile_json(p: &StepProfile) -> Value {
    let rows: Vec<Value> = profile_rows(p)
        .into_iter()
        .map(|r| {
            let t = per_step(r.total, p.steps);
            json!({"class": r.name, "wall_s": t.wall, "cpu_s": t.cpu, "cores_busy": t.cores()})
        })
        .collect();
    json!({"steps": p.steps, "slices": p.slices, "forward_s": per_step(p.forward, p.steps).wall,
           "backward_s": per_step(p.backward, p.steps).wall,
           "optimizer_s": per_step(p.optimizer, p.steps).wall, "classes": rows})
}

/// The CRATE-vs-ToST comparison of [`scaling`]: both models at width `dim`, `depth` layers and
/// `heads` heads, on RGB images of each side in `sizes` with patch 8 (`size²/64` tokens).
#[derive(Clone, Debug)]
pub struct Scaling {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub sizes: Vec<usize>,
}

impl Scaling {
    pub fn validate(&self) -> Result<()> {
        let (d, depth, heads) = (self.dim, self.depth, self.heads);
        ensure!(
            d > 0 && depth > 0 && heads > 0 && d.is_multiple_of(heads) && d.is_multiple_of(4),
            "--dim must be a positive multiple of --heads and of 4"
        );
        ensure!(!self.sizes.is_empty(), "--sizes is empty");
        for &size in &self.sizes {
            ensure!(
                size >= 8 && size.is_multiple_of(8),
                "--sizes: {size} is not a positive multiple of the patch size 8"
            );
        }
        Ok(())
    }
}

/// Milliseconds per image of one image size in [`scaling`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScalingRow {
    pub tokens: usize,
    pub image_size: usize,
    pub crate_forward_ms: f64,
    pub tost_forward_ms: f64,
    pub crate_train_ms: f64,
    pub tost_train_ms: f64,
}

/// CRATE (MSSA, quadratic in the tokens) against ToST (TSSA, linear) at equal width, depth and
/// heads: milliseconds per image of the inference forward and the training step for each image
/// size (`on_row` sees each row as it is measured).
pub fn scaling(
    a: &Settings,
    s: &Scaling,
    mut on_row: impl FnMut(&ScalingRow) -> Result<()>,
) -> Result<Vec<ScalingRow>> {
    a.validate()?;
    s.validate()?;
    let (d, depth, heads) = (s.dim, s.depth, s.heads);
    let device = Default::default();
    let b = a.batch_size;
    let ce = CrossEntropyLossConfig::new().init::<TrainBackend>(&device);
    let mut rows = Vec::new();
    for &size in &s.sizes {
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
        let (x, y) = random_batch([b, 3, size, size], 10);
        let xi = x.clone().inner();
        let crate_model = crate_cfg.init::<TrainBackend>(&device);
        let c = time_steps(
            a,
            b,
            crate_model.clone(),
            TrainOptimizer::new(adamw(0.05, 0.999, None), &crate_model),
            vec![(0..b, 1.0)],
            |m, _| ce.forward(m.forward(x.clone()), y.clone()),
            |m| {
                let _ = m.forward(xi.clone()).into_data();
            },
        );
        let tost_model = tost_cfg.init::<TrainBackend>(&device);
        let t = time_steps(
            a,
            b,
            tost_model.clone(),
            TrainOptimizer::new(adamw(0.05, 0.999, None), &tost_model),
            vec![(0..b, 1.0)],
            |m, _| ce.forward(m.forward_mode(x.clone(), true), y.clone()),
            |m| {
                let _ = m.forward(xi.clone()).into_data();
            },
        );
        let ms = |s: f64| 1e3 * s / b as f64;
        let row = ScalingRow {
            tokens: crate_cfg.num_patches(),
            image_size: size,
            crate_forward_ms: ms(c.infer_s),
            tost_forward_ms: ms(t.infer_s),
            crate_train_ms: ms(c.train_s),
            tost_train_ms: ms(t.train_s),
        };
        on_row(&row)?;
        rows.push(row);
    }
    Ok(rows)
}

/// The four curves of a [`scaling`] plot: milliseconds per image against tokens.
pub fn scaling_series(rows: &[ScalingRow]) -> Vec<ScalingSeries> {
    let curve = |label: &str, v: fn(&ScalingRow) -> f64| ScalingSeries {
        label: label.to_string(),
        points: rows.iter().map(|r| (r.tokens as f64, v(r))).collect(),
    };
    vec![
        curve("CRATE forward", |r| r.crate_forward_ms),
        curve("ToST forward", |r| r.tost_forward_ms),
        curve("CRATE train step", |r| r.crate_train_ms),
        curve("ToST train step", |r| r.tost_train_ms),
    ]
}

/// Where a training step's time goes, as text: the step's wall and CPU time, then a Markdown
/// table of the operation classes (forward, backward, total, share, cores busy).
pub fn profile_table(p: &StepProfile) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let total = per_step(plus(plus(p.forward, p.backward), p.optimizer), p.steps);
    writeln!(
        out,
        "training step, mean of {} steps: {:.1} ms wall, {:.1} ms CPU, {:.2} cores busy \
         (forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms)",
        p.steps,
        total.wall * 1e3,
        total.cpu * 1e3,
        total.cores(),
        per_step(p.forward, p.steps).wall * 1e3,
        per_step(p.backward, p.steps).wall * 1e3,
        per_step(p.optimizer, p.steps).wall * 1e3,
    )
    .unwrap();
    if p.slices > 1 {
        writeln!(
        out,
            "forward and backward ran on {} batch slices at once, one per core (the forward column \
             holds both): a class's ms is the mean over the slices' threads, its cores are the \
             process's while it ran",
            p.slices
        )
        .unwrap();
    }
    writeln!(
        out,
        "| class | forward ms | backward ms | total ms | share of step | cores busy |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|").unwrap();
    let ms = |u: Usage| format!("{:.2}", per_step(u, p.steps).wall * 1e3);
    for r in profile_rows(p) {
        let (f, b) = r
            .parts
            .map_or(("–".into(), "–".into()), |(f, b)| (ms(f), ms(b)));
        writeln!(
            out,
            "| {} | {f} | {b} | {} | {:.1} % | {:.2} |",
            r.name,
            ms(r.total),
            100.0 * per_step(r.total, p.steps).wall / total.wall.max(1e-12),
            r.total.cores()
        )
        .unwrap();
    }
    out
}

/// A timing run as `whitebox bench` reports it: one line of rates (with `profile`, the CPU and
/// the profile table after it) and the same as JSON.
pub struct Report {
    pub task: Task,
    /// The timed model's config.
    pub config: Value,
    pub settings: Settings,
    pub timed: Timed,
    pub profile: bool,
}

impl Report {
    /// Time `task` with `settings` ([`run`]).
    pub fn measure(task: Task, settings: Settings, profile: bool) -> Result<Self> {
        let (config, timed) = run(&task, &settings, profile)?;
        Ok(Self {
            task,
            config,
            settings,
            timed,
            profile,
        })
    }

    /// Training and inference rates (items per second).
    fn rates(&self) -> (f64, f64) {
        let t = &self.timed;
        (t.items as f64 / t.train_s, t.items as f64 / t.infer_s)
    }

    /// Everything [`Report`] prints, with the backend, threads, precision and peak memory.
    pub fn json(&self) -> Value {
        let (t, s, unit) = (&self.timed, &self.settings, self.task.unit());
        let (train_rate, infer_rate) = self.rates();
        let mut out = json!({
            "task": self.task.name(),
            "config": self.config, "batch_size": s.batch_size, "steps": s.steps,
            "train_step_s": t.train_s, format!("train_{unit}_s"): train_rate,
            "infer_s": t.infer_s, format!("infer_{unit}_s"): infer_rate,
            "train_cores_busy": t.train_cores,
            "peak_rss_bytes": peak_rss_bytes(),
            "backend": std::any::type_name::<crate::InferBackend>(),
            "threads": rayon::current_num_threads(),
            "precision": format!("{:?}", crate::model::bf16::precision()).to_lowercase(),
        });
        if self.task.unit() == "tok" {
            out["context"] = json!(s.context);
        }
        if self.profile {
            let (cpu, flags) = profile::cpu_summary();
            out["profile"] = profile_json(&t.profile);
            out["cpu"] = json!(cpu);
            out["isa"] = json!(flags);
        }
        out
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let (t, unit) = (&self.timed, self.task.unit());
        let (train_rate, infer_rate) = self.rates();
        writeln!(
            f,
            "train {train_rate:.1} {unit}/s ({:.3} s/step, {:.2} cores busy)  infer {infer_rate:.1} {unit}/s  peak RSS {:.0} MiB",
            t.train_s,
            t.train_cores,
            peak_rss_bytes().unwrap_or(0) as f64 / 1048576.0
        )?;
        if self.profile {
            let (cpu, flags) = profile::cpu_summary();
            let isa = if flags.is_empty() {
                "none of avx2/avx512/amx".to_string()
            } else {
                flags.join(" ")
            };
            let threads = rayon::current_num_threads();
            writeln!(f, "CPU: {cpu}; {threads} threads; ISA: {isa}")?;
            write!(f, "{}", profile_table(&t.profile))?;
        }
        Ok(())
    }
}

impl Scaling {
    /// The header of the `--scaling` table for `settings` (batch and steps).
    pub fn header(&self, settings: &Settings) -> String {
        let (d, depth, heads) = (self.dim, self.depth, self.heads);
        format!(
            "CRATE (MSSA + ISTA) vs ToST (TSSA + MLP, 2 class-attention blocks): d = {d}, depth {depth}, \
             {heads} heads, patch 8, batch {}, median of {} steps, {} threads\n{:>7} {:>6} | {:>12} {:>12} {:>6} | {:>12} {:>12} {:>6}",
            settings.batch_size,
            settings.steps,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "tokens", "image", "CRATE fwd", "ToST fwd", "ratio", "CRATE train", "ToST train", "ratio"
        )
    }
}

impl std::fmt::Display for ScalingRow {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{:>7} {:>6} | {:>12.2} {:>12.2} {:>5.2}× | {:>12.2} {:>12.2} {:>5.2}×",
            self.tokens,
            format!("{}²", self.image_size),
            self.crate_forward_ms,
            self.tost_forward_ms,
            self.crate_forward_ms / self.tost_forward_ms,
            self.crate_train_ms,
            self.tost_train_ms,
            self.crate_train_ms / self.tost_train_ms
        )
    }
}
