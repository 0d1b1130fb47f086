//! bf16 mixed precision: the AVX512-BF16 GEMM kernel against an f64 reference and the portable
//! emulation, and a CRATE forward and gradient in bf16 against f32, with tolerances derived from
//! bf16's 8-bit mantissa. On a CPU without AVX512-BF16 the kernel checks are skipped (and say so);
//! the emulated path is checked everywhere.
//!
//! `whitebox bench --task kernels` prints the kernel's speed against f32 on the model's GEMM
//! shapes (a measurement, not a test).

use std::sync::Mutex;
use whitebox::model::bf16::{self, Kernel, Precision};
use whitebox::model::gemm::{self, MatRef};

/// bf16's unit roundoff (8-bit significand, round to nearest): each rounded input is within
/// a relative `U` of its f32 value.
const U: f64 = 1.0 / 256.0;
/// f32's unit roundoff (accumulation).
const U32: f64 = 1.0 / (1u64 << 24) as f64;

/// The process-wide precision is shared by the tests of this file: they take turns.
static SETTING: Mutex<()> = Mutex::new(());

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

fn at(m: &MatRef, i: usize, j: usize) -> f64 {
    m.data[i * m.rs + j * m.cs] as f64
}

/// `(Σ a b, Σ |a||b|)` in f64 for entry `(i, j)`.
fn exact(a: &MatRef, b: &MatRef, i: usize, j: usize) -> (f64, f64) {
    (0..a.cols).fold((0.0, 0.0), |(s, t), p| {
        let x = at(a, i, p) * at(b, p, j);
        (s + x, t + x.abs())
    })
}

/// The four layouts of an `m×k` matrix from `data`: row-major, transposed, and a general
/// strided view (every other element) in both orientations.
fn layouts(data: &[f32], m: usize, k: usize) -> Vec<MatRef<'_>> {
    vec![
        MatRef::rows(data, m, k),
        MatRef::rows(data, k, m).t(),
        MatRef {
            data,
            rows: m,
            cols: k,
            rs: 2 * k,
            cs: 2,
        },
        MatRef {
            data,
            rows: m,
            cols: k,
            rs: 2,
            cs: 2 * m,
        },
    ]
}

/// Every entry of `got` (computed from bf16-rounded inputs, f32 accumulation) within
/// `(2U + U² + (k+1)·U32·(1+U)²)·Σ|a||b|` of the exact product, `base` added to each.
fn check_bf16_bound(a: &MatRef, b: &MatRef, got: &[f32], base: f32, what: &str) {
    let k = a.cols as f64;
    let rel = 2.0 * U + U * U + (k + 1.0) * U32 * (1.0 + U) * (1.0 + U);
    for i in 0..a.rows {
        for j in 0..b.cols {
            let (want, mag) = exact(a, b, i, j);
            let g = got[i * b.cols + j] as f64;
            let tol = rel * mag + (base.abs() as f64 + want.abs()) * U32 * 2.0;
            assert!(
                (g - base as f64 - want).abs() <= tol,
                "{what}: ({i}, {j}) of {}×{}×{}: {g} vs {want} + {base} (tolerance {tol:e})",
                a.rows,
                a.cols,
                b.cols
            );
        }
    }
}

const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 1),
    (13, 7, 33),
    (65, 64, 65),
    (130, 67, 90),
    (97, 300, 70),
    (200, 513, 40),
    (20, 40, 800),
    (40, 1000, 40), // the inner dimension split over the threads
];

fn kernels() -> Vec<Kernel> {
    if bf16::kernel_available() {
        vec![Kernel::Bf16, Kernel::Bf16Emulated]
    } else {
        eprintln!("no AVX512-BF16 on this CPU: skipping the kernel, checking the emulation only");
        vec![Kernel::Bf16Emulated]
    }
}

#[test]
fn bf16_gemm_is_within_the_bf16_bound_of_the_exact_product_for_every_layout() {
    for kernel in kernels() {
        for (m, k, n) in SHAPES {
            let (x, y) = (values(2 * m * k, 1), values(2 * k * n, 2));
            for (la, a) in layouts(&x, m, k).into_iter().enumerate() {
                for (lb, b) in layouts(&y, k, n).into_iter().enumerate() {
                    let what = format!("{kernel:?} layouts {la}/{lb}");
                    check_bf16_bound(&a, &b, &gemm::matmul_with(a, b, kernel), 0.0, &what);
                    // the calling-thread form, accumulating onto 0.5
                    let mut c = vec![0.5f32; m * n];
                    gemm::matmul_into_with(a, b, &mut c, true, kernel);
                    check_bf16_bound(&a, &b, &c, 0.5, &format!("{what} onto 0.5"));
                }
            }
        }
    }
}

#[test]
fn bf16_kernel_matches_the_emulation_up_to_f32_summation_order() {
    if !bf16::kernel_available() {
        eprintln!("no AVX512-BF16 on this CPU: skipping the kernel-vs-emulation check");
        return;
    }
    // both multiply the same bf16 values exactly in f32; only the order of the f32 sums differs
    for (m, k, n) in [(130, 67, 90), (64, 1000, 96), (300, 384, 200)] {
        let (x, y) = (values(m * k, 3), values(k * n, 4));
        let (a, b) = (MatRef::rows(&x, m, k), MatRef::rows(&y, k, n));
        let fast = gemm::matmul_with(a, b, Kernel::Bf16);
        let emul = gemm::matmul_with(a, b, Kernel::Bf16Emulated);
        for i in 0..m {
            for j in 0..n {
                let (_, mag) = exact(&a, &b, i, j);
                let tol = 2.0 * (k as f64 + 1.0) * U32 * mag * (1.0 + U).powi(2);
                let d = (fast[i * n + j] as f64 - emul[i * n + j] as f64).abs();
                assert!(d <= tol, "({i}, {j}) of {m}×{k}×{n}: {d:e} > {tol:e}");
            }
        }
    }
}

#[test]
fn bf16_rounding_is_to_nearest_even_and_the_kernel_rounds_the_same() {
    let one = 1.0f32;
    let ulp = 2f32.powi(-7); // bf16 spacing in [1, 2)
    assert_eq!(bf16::round_bf16(one + ulp / 2.0), one); // tie → even (1.0)
    assert_eq!(bf16::round_bf16(one + 1.5 * ulp), one + 2.0 * ulp); // tie → even
    assert_eq!(bf16::round_bf16(one + 0.51 * ulp), one + ulp);
    assert_eq!(bf16::round_bf16(-3.0e-39), -0.0); // subnormal → signed zero
    assert!(bf16::round_bf16(f32::NAN).is_nan());
    assert_eq!(bf16::round_bf16(f32::INFINITY), f32::INFINITY);
    // A·I picks A's entries: the kernel's rounding of every one equals the scalar rounding
    let k = 64;
    let mut x = values(k, 5);
    x[0] = one + ulp / 2.0;
    x[1] = one + 1.5 * ulp;
    x[2] = -(one + ulp / 2.0 + 1e-6);
    let id: Vec<f32> = (0..k * k)
        .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
        .collect();
    let (a, b) = (MatRef::rows(&x, 1, k), MatRef::rows(&id, k, k));
    for kernel in kernels() {
        let got = gemm::matmul_with(a, b, kernel);
        for j in 0..k {
            assert_eq!(got[j], bf16::round_bf16(x[j]), "{kernel:?} entry {j}");
        }
    }
}

#[test]
fn bf16_precision_setting_is_refused_without_the_kernel_and_f32_is_the_default() {
    let _turn = SETTING.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(bf16::precision(), Precision::F32);
    let r = bf16::set_precision(Precision::Bf16);
    assert_eq!(r.is_ok(), bf16::kernel_available());
    if let Err(e) = r {
        assert!(e.to_string().contains("AVX512-BF16"), "{e}");
    } else {
        assert_eq!(bf16::precision(), Precision::Bf16);
    }
    bf16::set_precision(Precision::F32).unwrap();
    assert_eq!(bf16::precision(), Precision::F32);
}

// ---- the fused operators and a model under the process-wide setting ----

use burn::module::Param;
use burn::tensor::{Distribution, Tensor, TensorData};
use whitebox::model::{fused, CrateConfig};
use whitebox::CpuAutodiff as B;

/// Holds the setting in `kernel`'s mode for the guard's life, then puts f32 back.
struct Mode<'a>(#[allow(dead_code)] std::sync::MutexGuard<'a, ()>);

impl Mode<'_> {
    fn set(kernel: Kernel) -> Self {
        let turn = SETTING.lock().unwrap_or_else(|e| e.into_inner());
        match kernel {
            Kernel::F32 => bf16::set_precision(Precision::F32).unwrap(),
            Kernel::Bf16 => bf16::set_precision(Precision::Bf16).unwrap(),
            Kernel::Bf16Emulated => bf16::emulate_bf16(),
        }
        Mode(turn)
    }
}

impl Drop for Mode<'_> {
    fn drop(&mut self) {
        bf16::set_precision(Precision::F32).unwrap();
    }
}

fn vec_of<C: burn::tensor::backend::Backend, const D: usize>(t: Tensor<C, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[test]
fn bf16_fused_linear_forward_and_gradients_are_within_the_bf16_bound() {
    let device = Default::default();
    let (r, i, o) = (130, 128, 136); // every dimension ≥ 128: the bf16 path (bf16_wins)
    let xs = values(r * i, 11);
    let ws = values(i * o, 12);
    let gs = values(r * o, 13);
    let mut lin = burn::nn::LinearConfig::new(i, o).init::<B>(&device);
    lin.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(ws.clone(), [i, o]),
        &device,
    ));
    let bias = vec_of(lin.bias.as_ref().unwrap().val());
    for kernel in kernels() {
        let _mode = Mode::set(kernel);
        let x =
            Tensor::<B, 2>::from_data(TensorData::new(xs.clone(), [r, i]), &device).require_grad();
        let y = fused::linear(&lin, x.clone());
        let g = Tensor::<B, 2>::from_data(TensorData::new(gs.clone(), [r, o]), &device);
        let grads = (y.clone() * g).sum().backward();
        let (xm, wm, gm) = (
            MatRef::rows(&xs, r, i),
            MatRef::rows(&ws, i, o),
            MatRef::rows(&gs, r, o),
        );
        // y = x·W + b: the product's bound, with b added exactly before the f32 accumulation
        let y = vec_of(y.inner());
        for (row, chunk) in y.chunks(o).enumerate() {
            let got: Vec<f32> = chunk.iter().zip(&bias).map(|(y, b)| y - b).collect();
            let x1 = MatRef::rows(&xs[row * i..(row + 1) * i], 1, i);
            check_bf16_bound(&x1, &wm, &got, 0.0, &format!("{kernel:?} y row {row}"));
        }
        let dx = vec_of(x.grad(&grads).unwrap());
        check_bf16_bound(&gm, &wm.t(), &dx, 0.0, &format!("{kernel:?} dX = dY·Wᵀ"));
        let dw = vec_of(lin.weight.val().grad(&grads).unwrap());
        check_bf16_bound(&xm.t(), &gm, &dw, 0.0, &format!("{kernel:?} dW = Xᵀ·dY"));
        // not the f32 result: the inputs really were rounded
        let y32: Vec<f32> = (0..r * o)
            .map(|e| exact(&xm, &wm, e / o, e % o).0 as f32 + bias[e % o])
            .collect();
        assert!(
            y.iter().zip(&y32).any(|(a, b)| (a - b).abs() > 1e-3),
            "{kernel:?}: no rounding seen"
        );
    }
}

/// A 2-layer CRATE on 28×28 grey images and a batch of them, wide enough (d 128, 8 × 17 = 136
/// token rows) for its token-row products to take the bf16 path; the per-head ones stay f32.
fn tiny_model() -> (whitebox::model::Crate<B>, Tensor<B, 4>) {
    let cfg = CrateConfig {
        dim: 128,
        depth: 2,
        heads: 2,
        dim_head: 64,
        ..CrateConfig::fmnist()
    };
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 7);
    let model = cfg.init::<B>(&device);
    let x = Tensor::<B, 4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    (model, x)
}

/// `(logits, ∂loss/∂(layer 0's qkv weight))` of the tiny model under `kernel`.
fn logits_and_grad(
    (model, x): &(whitebox::model::Crate<B>, Tensor<B, 4>),
    kernel: Kernel,
) -> (Vec<f32>, Vec<f32>) {
    let _mode = Mode::set(kernel);
    let logits = model.forward(x.clone());
    let loss = (logits.clone() * logits.clone()).sum(); // ∂/∂logits = 2·logits
    let grads = loss.backward();
    let w = model.layers[0].mssa.qkv.weight.val();
    (vec_of(logits), vec_of(w.grad(&grads).unwrap()))
}

/// The largest `|v_i|`, or NaN when any element is not finite (so every bound check fails).
fn max_abs(v: &[f32]) -> f64 {
    let mut m = 0.0f64;
    for x in v {
        if !x.is_finite() {
            return f64::NAN;
        }
        m = m.max(x.abs() as f64);
    }
    m
}

/// The largest `|a_i − b_i|`, or NaN when any element of either side is not finite.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut m = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f64::NAN;
        }
        m = m.max((x - y).abs() as f64);
    }
    m
}

#[test]
fn bf16_crate_forward_and_gradient_stay_within_the_bf16_bound_of_f32() {
    let m = tiny_model();
    let (l32, g32) = logits_and_grad(&m, Kernel::F32);
    // Each GEMM's inputs carry a relative error ≤ U each (2U per product term). A logit passes
    // through at most `GEMMS` bf16 GEMMs in sequence (per layer: qkv, w·wᵀ, A·w, out, ISTA; the
    // head; fewer in fact, as the per-head and head products stay f32),
    // which LayerNorms keep at unit scale: |Δ| ≤ 2U·GEMMS·max|logit|. The gradient passes through
    // them twice (forward and backward), again at most ~2U per product.
    const GEMMS: f64 = 2.0 * 5.0 + 1.0;
    for kernel in kernels() {
        let (l, g) = logits_and_grad(&m, kernel);
        let (dl, dg) = (max_abs_diff(&l, &l32), max_abs_diff(&g, &g32));
        let (tl, tg) = (
            2.0 * U * GEMMS * max_abs(&l32),
            2.0 * U * 2.0 * GEMMS * max_abs(&g32),
        );
        eprintln!(
            "{kernel:?}: logits |Δ| {dl:.2e} (bound {tl:.2e}), grad |Δ| {dg:.2e} (bound {tg:.2e})"
        );
        assert!(
            dl > 0.0 && dg > 0.0,
            "{kernel:?}: identical to f32, nothing was rounded"
        );
        assert!(dl <= tl, "{kernel:?}: logits differ by {dl:e} > {tl:e}");
        assert!(dg <= tg, "{kernel:?}: gradient differs by {dg:e} > {tg:e}");
    }
    // f32 after a bf16 run is f32 again, bit for bit
    assert_eq!(logits_and_grad(&m, Kernel::F32), (l32, g32));
}

#[test]
fn bf16_setting_routes_only_products_with_every_dimension_at_least_128() {
    for kernel in kernels() {
        let _mode = Mode::set(kernel);
        for ((m, k, n), bf) in [
            ((300, 96, 96), false),
            ((64, 384, 65), false),
            ((130, 128, 136), true),
        ] {
            let (x, y) = (values(m * k, 21), values(k * n, 22));
            let (a, b) = (MatRef::rows(&x, m, k), MatRef::rows(&y, k, n));
            assert_eq!(bf16::bf16_wins(m, k, n), bf);
            let f32 = gemm::matmul_with(a, b, Kernel::F32);
            let got = gemm::matmul(a, b);
            assert_eq!(
                got != f32,
                bf,
                "{kernel:?} {m}×{k}×{n}: bf16 path taken = {}",
                got != f32
            );
        }
    }
}
