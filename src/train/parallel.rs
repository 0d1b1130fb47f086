//! Data parallelism within a training step: the batch is cut into one contiguous slice per core,
//! each slice's forward and backward run on its own thread (a one-thread rayon pool, so every
//! kernel inside runs serially there), and the slices' gradients are summed.
//!
//! Why it works with burn-autodiff 0.21: its graphs are kept per connected component, each under
//! its own mutex (`GraphMutexClient`), so two backward passes over disjoint graphs run at the same
//! time. Sharing the parameters would join the two graphs into one (a parameter is a registered
//! leaf), so each slice gets its own replica of the model (`from_inner(valid())`: the same
//! tensors and [`ParamId`]s, fresh autodiff leaves).
//!
//! The result: `L = Σₛ (nₛ/n)·Lₛ` with `Lₛ` the mean loss of slice `s`, and `∇L = Σₛ ∇((nₛ/n)·Lₛ)`
//! summed in slice order — the same quantity as one pass over the batch for a loss that is a mean
//! over examples (cross-entropy), rounded differently, and deterministic (fixed slices, fixed order).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Smallest slice worth a thread of its own: below it the step is too short to split.
pub const MIN_SLICE: usize = 16;

/// `n` single-thread rayon pools, one per slice (made as needed, then kept); None if the system
/// cannot start the threads.
fn pools(n: usize) -> Option<Vec<Arc<rayon::ThreadPool>>> {
    static POOLS: Mutex<Vec<Arc<rayon::ThreadPool>>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    while pools.len() < n {
        let i = pools.len();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(move |_| format!("whitebox-slice-{i}"))
            .build()
            .ok()?;
        pools.push(Arc::new(pool));
    }
    Some(pools[..n].to_vec())
}

/// The slices a batch of `n` examples is cut into: one per core, each at least [`MIN_SLICE`]
/// long (a single slice — no splitting — on one core or for a small batch).
pub fn slices(n: usize) -> Vec<Range<usize>> {
    cut(n, n / MIN_SLICE)
}

/// Smallest slice of a batch of token sequences worth a thread of its own, in tokens.
pub const MIN_SLICE_TOKENS: usize = 256;

/// The slices a batch of `n` sequences of `t` tokens is cut into: one per core, each at least
/// [`MIN_SLICE_TOKENS`] tokens (whole sequences).
pub fn sequence_slices(n: usize, t: usize) -> Vec<Range<usize>> {
    cut(n, (n * t / MIN_SLICE_TOKENS).min(n))
}

/// `0..n` in at most `most` near-equal consecutive slices, at most one per core.
fn cut(n: usize, most: usize) -> Vec<Range<usize>> {
    let parts = rayon::current_num_threads().min(most).max(1);
    (0..parts)
        .map(|s| s * n / parts..(s + 1) * n / parts)
        .collect()
}

/// `f` of each job, each on its own pool, results in job order.
fn run_on<J: Send, T: Send>(
    pools: &[Arc<rayon::ThreadPool>],
    jobs: Vec<J>,
    f: impl Fn(J) -> T + Sync,
) -> Vec<T> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .zip(pools)
            .map(|(job, pool)| s.spawn(move || pool.install(move || f(job))))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// `f` of each slice of `parts` (consecutive rows of a batch), the slices on separate cores when
/// there are several: inference over a batch cut like a training step's.
pub fn map_slices<T: Send>(
    parts: Vec<Range<usize>>,
    f: impl Fn(Range<usize>) -> T + Sync,
) -> Vec<T> {
    match pools(parts.len()) {
        Some(pools) if parts.len() > 1 => run_on(&pools, parts, f),
        _ => parts.into_iter().map(f).collect(),
    }
}

/// Adds each parameter's gradient of `from` into `into`.
struct AddGrads<'a> {
    into: &'a mut GradientsParams,
    from: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for AddGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(g) = self.from.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let sum = match self.into.remove::<B::InnerBackend, D>(param.id) {
            Some(a) => a + g,
            None => g,
        };
        self.into.register::<B::InnerBackend, D>(param.id, sum);
    }
}

/// Loss value and gradients of a step over the examples `parts` (consecutive slices of a batch,
/// e.g. [`slices`]): `loss(model, rows)` is the mean loss of the examples `rows`. With more than
/// one slice each runs on its own core against its own replica of `model`; with one it is the
/// plain single pass.
pub fn loss_and_grads<B, M, F>(
    model: &M,
    parts: Vec<Range<usize>>,
    loss: F,
) -> (f64, GradientsParams)
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send,
    F: Fn(&M, Range<usize>) -> Tensor<B, 1> + Sync,
{
    weighted_loss_and_grads(model, by_rows(parts), loss)
}

/// Each slice of `parts` weighted by its share of the rows (a loss that is a mean over examples).
pub fn by_rows(parts: Vec<Range<usize>>) -> Vec<(Range<usize>, f64)> {
    let n: usize = parts.iter().map(|r| r.len()).sum();
    let weighted = parts.into_iter().map(|r| {
        let w = r.len() as f64 / n as f64;
        (r, w)
    });
    weighted.collect()
}

/// [`loss_and_grads`] of a loss that is a mean over something else than the examples (BERT's
/// masked tokens): slice `s` enters as `wₛ·Lₛ`, its weight its share of what the mean counts.
pub fn weighted_loss_and_grads<B, M, F>(
    model: &M,
    parts: Vec<(Range<usize>, f64)>,
    loss: F,
) -> (f64, GradientsParams)
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send,
    F: Fn(&M, Range<usize>) -> Tensor<B, 1> + Sync,
{
    let pools = match pools(parts.len()) {
        Some(p) if parts.len() > 1 => p,
        _ => {
            let all = parts.first().map_or(0, |p| p.0.start)..parts.last().map_or(0, |p| p.0.end);
            let l = loss(model, all);
            let v: f64 = l.clone().into_scalar().elem();
            return (v, GradientsParams::from_grads(l.backward(), model));
        }
    };
    let replicas: Vec<M> = parts.iter().map(|_| M::from_inner(model.valid())).collect();
    let jobs: Vec<_> = replicas.into_iter().zip(parts).collect();
    let results = run_on(&pools, jobs, |(replica, (rows, w))| {
        let l = loss(&replica, rows);
        let v: f64 = l.clone().into_scalar().elem();
        let g = GradientsParams::from_grads(l.mul_scalar(w).backward(), &replica);
        (v * w, g)
    });
    let mut total = 0.0;
    let mut grads = GradientsParams::new();
    for (v, mut g) in results {
        total += v;
        model.visit(&mut AddGrads {
            into: &mut grads,
            from: &mut g,
        });
    }
    (total, grads)
}

/// `f` of the batch `x` (NCHW) computed slice by slice on separate cores ([`slices`],
/// [`map_slices`]), the outputs concatenated along the batch: an inference forward on every core.
pub fn forward_slices<B: Backend, const D: usize>(
    x: Tensor<B, 4>,
    f: impl Fn(Tensor<B, 4>) -> Tensor<B, D> + Sync,
) -> Tensor<B, D> {
    let parts = slices(x.dims()[0]);
    if parts.len() == 1 {
        return f(x);
    }
    let x = &x;
    let outs = map_slices(parts, |r| f(x.clone().narrow(0, r.start, r.len())));
    Tensor::cat(outs, 0)
}
