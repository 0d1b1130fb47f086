//! Single-precision GEMM for the fused operators, on strided views and into buffers we own,
//! with the `gemm` crate (the kernels burn-flex uses). burn-flex's own matmul allocates its
//! output twice (a zeroed byte buffer, then an aligned copy); writing into a `Vec<f32>` that
//! becomes the tensor saves that pass. Large products are split into one block per rayon
//! thread; per-head products run on the calling thread.
//!
//! OpenBLAS 0.3.21 (Debian) was measured against this crate on the project machine: within
//! the machine's noise on the 4160×384×384 products, and 25 % slower on 65×65×64 heads.
//!
//! Under `--precision bf16` ([`super::bf16`]) the products where it wins take the packed
//! AVX512-BF16 kernel instead, split over the threads the same way.

use super::bf16::{self, Kernel};

pub use super::matref::MatRef;

/// `C = A·B` (or `C += A·B` with `accumulate`) on one thread with `kernel` (f32 or the bf16
/// kernel; the emulation rounds its inputs before it gets here); `C` is row-major `[m, n]` with
/// row stride `ldc`.
///
/// # Safety
/// `c` must be valid for writes of the `m × n` block with row stride `ldc`, and not alias `a`, `b`.
unsafe fn gemm_serial(
    a: MatRef,
    b: MatRef,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    kernel: Kernel,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::ptr::write_bytes(c.add(i * ldc), 0, n);
            }
        }
        return;
    }
    if kernel == Kernel::Bf16 {
        return bf16::gemm_serial(a, b, c, ldc, accumulate);
    }
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        ldc as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// A `*mut f32` that may cross to another rayon thread (each thread writes a disjoint block).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the whole `SendPtr`, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Products below this many multiply-adds run on one thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// Split `C = A·B` into `parts` row or column blocks, whichever dimension is longer.
unsafe fn gemm_split(
    a: MatRef,
    b: MatRef,
    c: SendPtr,
    ldc: usize,
    (accumulate, kernel): (bool, Kernel),
    parts: usize,
) {
    let how = (accumulate, kernel);
    if parts <= 1 {
        return gemm_serial(a, b, c.0, ldc, accumulate, kernel);
    }
    let (m, n) = (a.rows, b.cols);
    let left = parts / 2;
    if m >= n {
        let m0 = m * left / parts;
        let c1 = SendPtr(c.0.add(m0 * ldc));
        rayon::join(
            || gemm_split(a.row_block(0, m0), b, c, ldc, how, left),
            || gemm_split(a.row_block(m0, m - m0), b, c1, ldc, how, parts - left),
        );
    } else {
        let n0 = n * left / parts;
        let c1 = SendPtr(c.0.add(n0));
        rayon::join(
            || gemm_split(a, b.col_block(0, n0), c, ldc, how, left),
            || gemm_split(a, b.col_block(n0, n - n0), c1, ldc, how, parts - left),
        );
    }
}

/// `A·B` as a new row-major `[m, n]` buffer, using every rayon thread for large products
/// (in bf16 under the bf16 setting where the shape gains, [`bf16::bf16_wins`]).
pub fn matmul(a: MatRef, b: MatRef) -> Vec<f32> {
    matmul_with(a, b, bf16::kernel(a.rows, a.cols, b.cols))
}

/// [`matmul`] with a given kernel (`Kernel::Bf16` needs [`bf16::kernel_available`]).
pub fn matmul_with(a: MatRef, b: MatRef, kernel: Kernel) -> Vec<f32> {
    let len = a.rows * b.cols;
    let mut c = Vec::<f32>::with_capacity(len);
    // SAFETY: the product writes all `len` entries (gemm with `read_dst = false` never reads C),
    // and only then is the length set.
    unsafe {
        let ptr = SendPtr(c.as_mut_ptr());
        run_split(a, b, ptr, false, kernel);
        c.set_len(len);
    }
    c
}

/// `C = A·B` or, with `accumulate`, `C + A·B`, into the row-major `[m, n]` buffer `c`,
/// using every rayon thread for large products.
pub fn matmul_onto(a: MatRef, b: MatRef, mut c: Vec<f32>, accumulate: bool) -> Vec<f32> {
    assert_eq!(c.len(), a.rows * b.cols, "matmul: output size");
    let kernel = bf16::kernel(a.rows, a.cols, b.cols);
    // SAFETY: `c` holds exactly the m × n output, row stride n, disjoint from `a` and `b`.
    unsafe { run_split(a, b, SendPtr(c.as_mut_ptr()), accumulate, kernel) };
    c
}

/// `C (+)= A·B` over the rayon threads, for a row-major `[m, n]` output at `c`.
///
/// # Safety
/// `c` must be valid for writes of `m·n` floats (and reads if `accumulate`), disjoint from `a`, `b`.
unsafe fn run_split(a: MatRef, b: MatRef, c: SendPtr, accumulate: bool, kernel: Kernel) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    check_bounds(&a);
    check_bounds(&b);
    if let Some((ar, br)) = emulated_inputs(a, b, kernel) {
        let (a, b) = (a.with_data(&ar), b.with_data(&br));
        return run_split(a, b, c, accumulate, Kernel::F32);
    }
    let (m, n) = (a.rows, b.cols);
    let parts = if m * n * a.cols < PARALLEL_MIN_FLOPS {
        1
    } else {
        rayon::current_num_threads().min(m.max(n) / 16).max(1)
    };
    if kernel == Kernel::Bf16 && parts > 1 && a.cols >= 4 * m.max(n) {
        return split_k(a, b, c, accumulate, parts);
    }
    gemm_split(a, b, c, n, (accumulate, kernel), parts)
}

/// `C (+)= A·B` in bf16 with the inner dimension split over `parts` threads, the partial
/// products summed after: for weight gradients (`k` = all tokens ≫ `m`, `n`), where a row or
/// column split would make every thread pack the whole of one operand.
///
/// # Safety
/// As [`run_split`].
unsafe fn split_k(a: MatRef, b: MatRef, c: SendPtr, accumulate: bool, parts: usize) {
    use rayon::prelude::*;
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let bound = |t: usize| k * t / parts;
    let partial: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|t| {
            let (k0, len) = (bound(t), bound(t + 1) - bound(t));
            let (a, b) = (a.col_block(k0, len), b.row_block(k0, len));
            // SAFETY: part 0 writes C, the others their own m × n buffers, each fully
            unsafe {
                if t == 0 {
                    gemm_serial(a, b, c.get(), n, accumulate, Kernel::Bf16);
                    return Vec::new();
                }
                let mut p = Vec::with_capacity(m * n);
                gemm_serial(a, b, p.as_mut_ptr(), n, false, Kernel::Bf16);
                p.set_len(m * n);
                p
            }
        })
        .collect();
    let c = std::slice::from_raw_parts_mut(c.0, m * n);
    const CHUNK: usize = 1 << 14;
    c.par_chunks_mut(CHUNK).enumerate().for_each(|(i, ch)| {
        for p in &partial[1..] {
            ch.iter_mut()
                .zip(&p[i * CHUNK..])
                .for_each(|(c, p)| *c += p);
        }
    });
}

/// `C = A·B` or `C += A·B` into a row-major `c` `[m, n]`, on the calling thread (for per-head
/// products that are already spread over the threads).
pub fn matmul_into(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool) {
    let kernel = bf16::kernel(a.rows, a.cols, b.cols);
    matmul_into_with(a, b, c, accumulate, kernel)
}

/// [`matmul_into`] with a given kernel (`Kernel::Bf16` needs [`bf16::kernel_available`]).
pub fn matmul_into_with(a: MatRef, b: MatRef, c: &mut [f32], accumulate: bool, kernel: Kernel) {
    assert_eq!(a.cols, b.rows, "matmul: inner dimensions differ");
    assert_eq!(c.len(), a.rows * b.cols, "matmul: output size");
    check_bounds(&a);
    check_bounds(&b);
    if let Some((ar, br)) = emulated_inputs(a, b, kernel) {
        let (a, b) = (a.with_data(&ar), b.with_data(&br));
        return matmul_into_with(a, b, c, accumulate, Kernel::F32);
    }
    // SAFETY: `c` is a distinct, exactly sized row-major buffer.
    unsafe { gemm_serial(a, b, c.as_mut_ptr(), b.cols, accumulate, kernel) }
}

/// For the bf16 emulation, row-major copies of `a` and `b` rounded to bf16 (None for the other
/// kernels, after checking that this CPU runs the bf16 one if asked).
fn emulated_inputs(a: MatRef, b: MatRef, kernel: Kernel) -> Option<(Vec<f32>, Vec<f32>)> {
    assert!(
        kernel != Kernel::Bf16 || bf16::kernel_available(),
        "matmul: the bf16 kernel needs AVX512-BF16"
    );
    (kernel == Kernel::Bf16Emulated).then(|| (bf16::rounded_copy(a), bf16::rounded_copy(b)))
}

fn check_bounds(m: &MatRef) {
    if m.rows > 0 && m.cols > 0 {
        let last = (m.rows - 1) * m.rs + (m.cols - 1) * m.cs;
        assert!(last < m.data.len(), "matmul: strided view out of bounds");
    }
}
