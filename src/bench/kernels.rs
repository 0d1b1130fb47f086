//! `whitebox bench --task kernels`: the speed of each kernel class on the model's own shapes —
//! GEMMs in f32 (the `gemm` crate) and bf16 (the AVX512-BF16 kernel, where the CPU has it) in
//! GFLOP/s, the row kernels (LayerNorm forward and backward, softmax) in GB/s — printed beside the
//! CPU model and its ISA flags, so that figures from different machines can be told apart.

use crate::model::bf16::{self, Kernel};
use crate::model::gemm::{self, MatRef};
use crate::model::kernels::{self, HeadMask};
use crate::model::profile;
use std::fmt::Write;
use std::time::Instant;

/// A GEMM shape of the models: `m×k · k×n`, each operand stored transposed or not.
struct Product {
    m: usize,
    k: usize,
    n: usize,
    a_t: bool,
    b_t: bool,
    what: &'static str,
}

const fn product(
    m: usize,
    k: usize,
    n: usize,
    a_t: bool,
    b_t: bool,
    what: &'static str,
) -> Product {
    Product {
        m,
        k,
        n,
        a_t,
        b_t,
        what,
    }
}

/// Large products, split over every thread (the d 384 model at batch 64 and the main job's).
const LARGE: [Product; 7] = [
    product(4160, 384, 384, false, false, "x·W (d384 q/out, ISTA)"),
    product(4160, 384, 1536, false, false, "x·W (d384, 4× wide)"),
    product(4160, 384, 384, false, true, "dP·Wᵀ (d384)"),
    product(384, 4160, 384, true, false, "xᵀ·dP (d384 weight grad)"),
    product(384, 4160, 1536, true, false, "xᵀ·dP (d384, 4× wide)"),
    product(2176, 96, 96, false, false, "x·W (fmnist, batch 128)"),
    product(96, 2176, 96, true, false, "xᵀ·dP (fmnist weight grad)"),
];

/// Per-head and head products, on one thread (each thread runs its own heads).
const SMALL: [Product; 8] = [
    product(65, 64, 65, false, true, "S = w·wᵀ (d384 head)"),
    product(65, 65, 64, false, false, "O = A·w (d384 head)"),
    product(65, 65, 64, true, false, "Aᵀ·dO (d384 head)"),
    product(17, 24, 17, false, true, "S = w·wᵀ (fmnist head)"),
    product(17, 17, 24, false, false, "O = A·w (fmnist head)"),
    product(128, 96, 10, false, false, "classifier (fmnist)"),
    product(64, 384, 10, false, false, "classifier (d384)"),
    product(128, 10, 96, false, true, "classifier dX"),
];

/// Deterministic values in [-2, 2).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f64 / (1u64 << 24) as f64 * 4.0 - 2.0) as f32
        })
        .collect()
}

/// The median seconds of `reps` runs of `f` after one warm-up run.
fn median_seconds(reps: usize, f: impl FnMut()) -> f64 {
    median_seconds_cold(reps, false, f)
}

/// [`median_seconds`]; with `cold`, 64 MiB are written before each run (untimed), so that the
/// inputs come from memory as in a training step.
fn median_seconds_cold(reps: usize, cold: bool, mut f: impl FnMut()) -> f64 {
    let mut junk = vec![0u8; if cold { 64 << 20 } else { 0 }];
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|r| {
            junk.iter_mut().for_each(|b| *b = b.wrapping_add(r as u8));
            std::hint::black_box(&junk);
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn operands<'a>(x: &'a [f32], y: &'a [f32], p: &Product) -> (MatRef<'a>, MatRef<'a>) {
    let a = if p.a_t {
        MatRef::rows(x, p.k, p.m).t()
    } else {
        MatRef::rows(x, p.m, p.k)
    };
    let b = if p.b_t {
        MatRef::rows(y, p.n, p.k).t()
    } else {
        MatRef::rows(y, p.k, p.n)
    };
    (a, b)
}

/// GFLOP/s of `p` with `kernel`: whole-machine for the large products (with `cold`, from
/// memory), one thread (200 products a repetition) for the small ones.
fn gemm_rate(p: &Product, kernel: Kernel, large: bool, cold: bool) -> f64 {
    let (x, y) = (values(p.m * p.k, 7), values(p.k * p.n, 8));
    let (a, b) = operands(&x, &y, p);
    let flop = 2.0 * (p.m * p.k * p.n) as f64;
    if large {
        let reps = (3e10 / flop).clamp(5.0, 200.0) as usize;
        let reps = if cold { reps.min(15) } else { reps };
        let run = || drop(std::hint::black_box(gemm::matmul_with(a, b, kernel)));
        flop / median_seconds_cold(reps, cold, run) / 1e9
    } else {
        let mut c = vec![0f32; p.m * p.n];
        let t = median_seconds(21, || {
            for _ in 0..200 {
                gemm::matmul_into_with(a, b, &mut c, false, kernel);
            }
        });
        200.0 * flop / t / 1e9
    }
}

/// GB/s (bytes read and written once) of the row kernels on `rows × d` (one thread).
fn row_kernel_rates(rows: usize, d: usize) -> [(String, f64); 3] {
    let x = values(rows * d, 11);
    let (gamma, beta) = (values(d, 12), values(d, 13));
    let (mut out, mut xhat, mut rstd) =
        (vec![0f32; rows * d], vec![0f32; rows * d], vec![0f32; rows]);
    let bytes = (rows * d * 4) as f64;
    let ln = median_seconds(51, || {
        kernels::layer_norm_rows(&x, &gamma, &beta, 1e-5, &mut out, &mut xhat, &mut rstd)
    });
    let (mut dx, mut dg, mut db) = (vec![0f32; rows * d], vec![0f32; d], vec![0f32; d]);
    let lnb = median_seconds(51, || {
        kernels::layer_norm_backward_rows(&x, &xhat, &rstd, &gamma, &mut dx, &mut dg, &mut db)
    });
    // softmax over 65×65 attention maps (the d 384 model's), as many as fill `rows × d`
    let n = 65;
    let maps = (rows * d / (n * n)).max(1);
    let scores = values(maps * n * n, 14);
    let mut a = scores.clone();
    let sm = median_seconds(51, || {
        a.copy_from_slice(&scores);
        for m in a.chunks_exact_mut(n * n) {
            kernels::softmax_rows(m, n, 0.125, HeadMask::None);
        }
    });
    [
        (
            format!("LayerNorm rows ({rows}×{d}), x̂ kept"),
            4.0 * bytes / ln / 1e9,
        ),
        (
            format!("LayerNorm backward rows ({rows}×{d})"),
            5.0 * bytes / lnb / 1e9,
        ),
        (
            format!("softmax rows ({maps} maps of {n}×{n})"),
            2.0 * (maps * n * n * 4) as f64 / sm / 1e9,
        ),
    ]
}

/// The whole table, as markdown, headed by the CPU model, thread count and ISA flags.
pub fn table() -> String {
    let (cpu, flags) = profile::cpu_summary();
    let threads = rayon::current_num_threads();
    let bf16 = bf16::kernel_available();
    let mut s = String::new();
    let _ = writeln!(s, "CPU: {cpu}; {threads} threads; ISA: {}", flags.join(" "));
    if !bf16 {
        let _ = writeln!(
            s,
            "no AVX512-BF16 on this CPU: bf16 columns are not measured"
        );
    }
    let _ = writeln!(
        s,
        "| product (m×k·k×n) | threads | f32 GFLOP/s | bf16 GFLOP/s | bf16/f32 | from memory: f32 | bf16 | bf16/f32 |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (list, large) in [(&LARGE[..], true), (&SMALL[..], false)] {
        for p in list {
            let mut cells = vec![];
            for cold in if large {
                vec![false, true]
            } else {
                vec![false]
            } {
                let f = gemm_rate(p, Kernel::F32, large, cold);
                cells.push(format!("{f:.0}"));
                if bf16 {
                    let b = gemm_rate(p, Kernel::Bf16, large, cold);
                    cells.extend([format!("{b:.0}"), format!("{:.2}", b / f)]);
                } else {
                    cells.extend(["–".to_string(), "–".to_string()]);
                }
            }
            let t = if large { threads } else { 1 };
            let (m, k, n, what) = (p.m, p.k, p.n, p.what);
            let _ = writeln!(
                s,
                "| {m}×{k}·{k}×{n} {what} | {t} | {} |",
                cells.join(" | ")
            );
        }
    }
    let _ = writeln!(s, "\n| row kernel | threads | GB/s |\n|---|---|---|");
    for (rows, d) in [(2176, 96), (4160, 384)] {
        for (what, rate) in row_kernel_rates(rows, d) {
            let _ = writeln!(s, "| {what} | 1 | {rate:.1} |");
        }
    }
    s
}
