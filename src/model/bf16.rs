//! bf16 mixed precision for the GEMMs of the fused operators.
//!
//! The policy is one process-wide setting, [`set_precision`] (the CLI's `--precision`): in
//! [`Precision::Bf16`] the large GEMMs of [`super::gemm`] round their inputs to bf16 (round to
//! nearest even, 8-bit mantissa) and accumulate in f32 with `vdpbf16ps`; master weights, optimizer
//! state, activations and every other operator (LayerNorm, softmax, elementwise) stay f32, and
//! so do the products too small to gain, by measurement ([`bf16_wins`]: every dimension ≥ 128;
//! the per-head attention products and the fmnist model's 96-wide products stay f32). A CPU
//! without AVX512-BF16 gets an error from [`set_precision`], not a silent fallback. [`emulate_bf16`] runs the same routing with a portable
//! emulation (inputs rounded to bf16, then the f32 GEMM): the reference the tests compare the
//! kernel against, and the way the bf16 tests stay meaningful on AVX2-only machines.
//!
//! No AMX kernel: the development machine (AMD EPYC Zen 4) has no AMX tiles to run one on.

use std::sync::atomic::{AtomicU8, Ordering};

use super::matref::MatRef;

/// The arithmetic of the GEMMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision throughout (the default and the tested reference).
    #[default]
    F32,
    /// GEMM inputs rounded to bf16, f32 accumulation (AVX512-BF16 kernel).
    Bf16,
}

/// How a GEMM is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The `gemm` crate in f32.
    F32,
    /// The packed AVX512-BF16 kernel of this module.
    Bf16,
    /// Inputs rounded to bf16, then the f32 GEMM (portable reference).
    Bf16Emulated,
}

const MODE_F32: u8 = 0;
const MODE_BF16: u8 = 1;
const MODE_EMULATED: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_F32);

/// Whether this CPU runs the bf16 kernel (x86-64 with AVX-512 F/BW and AVX512-BF16).
pub fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Set the process-wide GEMM precision. `Bf16` on a CPU without AVX512-BF16 is an error.
pub fn set_precision(p: Precision) -> anyhow::Result<()> {
    let mode = match p {
        Precision::F32 => MODE_F32,
        Precision::Bf16 => {
            anyhow::ensure!(
                kernel_available(),
                "bf16 precision needs a CPU with AVX512-BF16 (and AVX-512 F/BW); this CPU has none: \
                 use f32"
            );
            MODE_BF16
        }
    };
    MODE.store(mode, Ordering::Relaxed);
    Ok(())
}

/// The setting for a scope: [`set_precision`] now, the previous setting back on drop.
pub struct PrecisionScope(u8);

impl PrecisionScope {
    pub fn set(p: Precision) -> anyhow::Result<Self> {
        let previous = MODE.load(Ordering::Relaxed);
        set_precision(p)?;
        Ok(Self(previous))
    }
}

impl Drop for PrecisionScope {
    fn drop(&mut self) {
        MODE.store(self.0, Ordering::Relaxed);
    }
}

/// Route the bf16-class GEMMs through the portable emulation (inputs rounded to bf16, f32 GEMM)
/// instead of the kernel: for tests and comparisons; slower than f32.
pub fn emulate_bf16() {
    MODE.store(MODE_EMULATED, Ordering::Relaxed);
}

/// The current setting (the emulation counts as bf16).
pub fn precision() -> Precision {
    match MODE.load(Ordering::Relaxed) {
        MODE_F32 => Precision::F32,
        _ => Precision::Bf16,
    }
}

/// Whether an `m×k · k×n` product takes the bf16 kernel under the bf16 setting: every dimension
/// at least 128. Measured on AMD EPYC (AVX512-BF16, 2 threads; README, "bf16 mixed precision"):
/// the d 384 model's token-row products and weight gradients gain 1.1–1.8× from the kernel and
/// its training step 1.24×; its per-head products (65×64) gain nothing inside the step (the
/// attention class took the same time), and the fmnist model, whose products are all 96 wide,
/// trained 25 % slower with every GEMM in bf16 (packing costs more than it saves at k = 96).
pub fn bf16_wins(m: usize, k: usize, n: usize) -> bool {
    m.min(k).min(n) >= 128
}

/// The kernel of an `m×k · k×n` GEMM under the current setting.
pub(crate) fn kernel(m: usize, k: usize, n: usize) -> Kernel {
    match MODE.load(Ordering::Relaxed) {
        MODE_F32 => Kernel::F32,
        _ if !bf16_wins(m, k, n) => Kernel::F32,
        MODE_BF16 => Kernel::Bf16,
        _ => Kernel::Bf16Emulated,
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as f32; like AVX512-BF16's conversion,
/// subnormal inputs become signed zero and NaN stays NaN.
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16_bits(x) as u32) << 16)
}

/// The bf16 bit pattern of `x` (see [`round_bf16`]).
fn to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16; // quiet NaN
    }
    if b & 0x7f80_0000 == 0 {
        return ((b >> 16) & 0x8000) as u16; // zero or subnormal → signed zero
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// A strided view copied into a row-major matrix of bf16-rounded values.
pub(crate) fn rounded_copy(a: MatRef) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.rows * a.cols);
    for i in 0..a.rows {
        out.extend((0..a.cols).map(|j| round_bf16(a.data[i * a.rs + j * a.cs])));
    }
    out
}

/// `C = A·B` or `C += A·B` with the bf16 kernel on the calling thread; `C` row-major with row
/// stride `ldc`.
///
/// # Safety
/// [`kernel_available`] must hold; `c` must be valid for the `m × n` block (row stride `ldc`)
/// and not alias `a`, `b`; the views must lie within their slices.
pub(crate) unsafe fn gemm_serial(a: MatRef, b: MatRef, c: *mut f32, ldc: usize, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        x86::gemm(a, b, c, ldc, accumulate)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (a, b, c, ldc, accumulate);
        unreachable!("the bf16 kernel exists only on x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The packed AVX512-BF16 kernel: `vdpbf16ps` adds the products of a pair of consecutive
    //! `k` (bf16) to an f32 lane, so both operands are packed as pairs `(x[2p], x[2p+1])` in one
    //! u32: B in panels of `NR` columns (`[p][j]`), A in micro-panels of `MR` rows (`[i][p]`,
    //! row stride `KCP`). A `MR × NR` tile of C lives in 24 zmm accumulators.
    use super::MatRef;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    const MR: usize = 12;
    const NR: usize = 32;
    /// k values per packed block (even) and the pairs they make: 384 covers the d 384 model's
    /// products in one block (a B micro-panel of 24 KiB stays in L1 beside the A micro-panel).
    const KC: usize = 384;
    const KCP: usize = KC / 2;
    /// Rows of A and columns of B per packed block.
    const MC: usize = 96;
    const NC: usize = 768;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }

    thread_local! {
        /// Packing buffers of this thread (A block, B block), reused between products.
        static BUFS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// `m, k, n > 0` (the caller handles empty products).
    pub unsafe fn gemm(a: MatRef, b: MatRef, c: *mut f32, ldc: usize, accumulate: bool) {
        let (mut pa, mut pb) = BUFS.with(|b| b.take());
        pa.resize(MC * KCP, 0);
        pb.resize(NC * KCP, 0);
        blocked(a, b, c, ldc, accumulate, &mut pa, &mut pb);
        BUFS.with(|b| b.replace((pa, pb)));
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn blocked(
        a: MatRef,
        b: MatRef,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        pa: &mut [u32],
        pb: &mut [u32],
    ) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let kp = kc.div_ceil(2);
                pack_b(b, pc, kc, jc, nc, pb);
                let load_c = accumulate || pc > 0;
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    pack_a(a, ic, mc, pc, kc, pa);
                    for jr in (0..nc).step_by(NR) {
                        let nr = NR.min(nc - jr);
                        let bp = pb.as_ptr().add(jr * KCP);
                        for ir in (0..mc).step_by(MR) {
                            let mr = MR.min(mc - ir);
                            let ap = pa.as_ptr().add(ir * KCP);
                            let cp = c.add((ic + ir) * ldc + jc + jr);
                            micro(kp, ap, bp, cp, ldc, mr, nr, load_c);
                        }
                    }
                }
            }
        }
    }

    /// The bf16 pair of `(x0, x1)`: `x0` in the low half (the even `k`), as f32 bits.
    fn pair(x0: f32, x1: f32) -> u32 {
        super::to_bf16_bits(x0) as u32 | (super::to_bf16_bits(x1) as u32) << 16
    }

    /// Lane `j` of the result: bf16(`x0[j]`) | bf16(`x1[j]`) << 16.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn interleave(x0: __m512, x1: __m512) -> __m512i {
        let t: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0)) };
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        _mm512_permutexvar_epi16(idx, t)
    }

    /// The 16 pairs of up to 32 contiguous floats at `p` (`count` of them, the rest zero).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pairs32(p: *const f32, count: usize) -> __m512i {
        let (lo, hi) = (lanes(count), lanes(count.saturating_sub(16)));
        let x_lo = _mm512_maskz_loadu_ps(lo, p);
        let x_hi = if hi != 0 {
            _mm512_maskz_loadu_ps(hi, p.add(16))
        } else {
            _mm512_setzero_ps()
        };
        std::mem::transmute(_mm512_cvtne2ps_pbh(x_hi, x_lo))
    }

    fn lanes(count: usize) -> __mmask16 {
        if count >= 16 {
            0xffff
        } else {
            ((1u32 << count) - 1) as __mmask16
        }
    }

    /// Pack rows `pc..pc+kc`, columns `jc..jc+nc` of B into `NR`-column panels of pairs, zero-padded.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_b(b: MatRef, pc: usize, kc: usize, jc: usize, nc: usize, pb: &mut [u32]) {
        let kp = kc.div_ceil(2);
        let d = b.data.as_ptr();
        for jr in (0..nc).step_by(NR) {
            let panel = pb.as_mut_ptr().add(jr * KCP);
            let nr = NR.min(nc - jr);
            if b.cs == 1 {
                // rows are contiguous: two rows give 16 pairs per vector
                for p in 0..kp {
                    let r0 = pc + 2 * p;
                    let has1 = 2 * p + 1 < kc;
                    for h in 0..NR / 16 {
                        let cnt = nr.saturating_sub(16 * h);
                        let out = panel.add(p * NR + 16 * h) as *mut __m512i;
                        if cnt == 0 {
                            _mm512_storeu_si512(out, _mm512_setzero_si512());
                            continue;
                        }
                        let (mask, j) = (lanes(cnt), jc + jr + 16 * h);
                        let x0 = _mm512_maskz_loadu_ps(mask, d.add(r0 * b.rs + j));
                        let x1 = if has1 {
                            _mm512_maskz_loadu_ps(mask, d.add((r0 + 1) * b.rs + j))
                        } else {
                            _mm512_setzero_ps()
                        };
                        _mm512_storeu_si512(out, interleave(x0, x1));
                    }
                }
            } else if b.rs == 1 {
                // columns are contiguous: 32 k of one column give 16 pairs, scattered by NR
                if nr < NR {
                    std::ptr::write_bytes(panel, 0, kp * NR);
                }
                let idx = _mm512_mullo_epi32(
                    _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                    _mm512_set1_epi32(NR as i32),
                );
                for jj in 0..nr {
                    let col = d.add((jc + jr + jj) * b.cs + pc);
                    for p0 in (0..kp).step_by(16) {
                        let v = pairs32(col.add(2 * p0), kc - 2 * p0);
                        let base = panel.add(p0 * NR + jj) as *mut i32;
                        _mm512_mask_i32scatter_epi32::<4>(base, lanes(kp - p0), idx, v);
                    }
                }
            } else {
                for p in 0..kp {
                    for jj in 0..NR {
                        let v = if jj < nr {
                            let at = |r: usize| b.data[r * b.rs + (jc + jr + jj) * b.cs];
                            let r0 = pc + 2 * p;
                            pair(at(r0), if 2 * p + 1 < kc { at(r0 + 1) } else { 0.0 })
                        } else {
                            0
                        };
                        *panel.add(p * NR + jj) = v;
                    }
                }
            }
        }
    }

    /// Pack rows `ic..ic+mc`, columns `pc..pc+kc` of A into `MR`-row micro-panels of pairs
    /// (row stride `KCP`), zero-padded.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_a(a: MatRef, ic: usize, mc: usize, pc: usize, kc: usize, pa: &mut [u32]) {
        let kp = kc.div_ceil(2);
        let d = a.data.as_ptr();
        for ir in (0..mc).step_by(MR) {
            let panel = pa.as_mut_ptr().add(ir * KCP);
            let mr = MR.min(mc - ir);
            if a.cs == 1 {
                // rows are contiguous: 32 k of a row are 16 consecutive pairs
                for i in 0..MR {
                    let out = panel.add(i * KCP);
                    if i >= mr {
                        std::ptr::write_bytes(out, 0, kp);
                        continue;
                    }
                    let row = d.add((ic + ir + i) * a.rs + pc);
                    for p0 in (0..kp).step_by(16) {
                        let v = pairs32(row.add(2 * p0), kc - 2 * p0);
                        _mm512_mask_storeu_epi32(out.add(p0) as *mut i32, lanes(kp - p0), v);
                    }
                }
            } else if a.rs == 1 {
                // columns are contiguous: two columns give the pairs of 16 rows, scattered by KCP
                let idx = _mm512_mullo_epi32(
                    _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                    _mm512_set1_epi32(KCP as i32),
                );
                let mask = lanes(mr);
                for p in 0..kp {
                    let k0 = pc + 2 * p;
                    let x0 = _mm512_maskz_loadu_ps(mask, d.add(k0 * a.cs + ic + ir));
                    let x1 = if 2 * p + 1 < kc {
                        _mm512_maskz_loadu_ps(mask, d.add((k0 + 1) * a.cs + ic + ir))
                    } else {
                        _mm512_setzero_ps()
                    };
                    let v = interleave(x0, x1);
                    _mm512_mask_i32scatter_epi32::<4>(panel.add(p) as *mut i32, lanes(MR), idx, v);
                }
            } else {
                for i in 0..MR {
                    for p in 0..kp {
                        let v = if i < mr {
                            let at = |kk: usize| a.data[(ic + ir + i) * a.rs + kk * a.cs];
                            let k0 = pc + 2 * p;
                            pair(at(k0), if 2 * p + 1 < kc { at(k0 + 1) } else { 0.0 })
                        } else {
                            0
                        };
                        *panel.add(i * KCP + p) = v;
                    }
                }
            }
        }
    }

    /// One `MR × NR` tile: `C (+)= A·B` over `kp` pairs; only `mr × nr` of it is written.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn micro(
        kp: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        mr: usize,
        nr: usize,
        load_c: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kp {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a.add(i * KCP + p) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
            }
        }
        if mr == MR && nr == NR {
            for (i, acc) in acc.iter().enumerate() {
                let row = c.add(i * ldc);
                for (h, &x) in acc.iter().enumerate() {
                    let at = row.add(16 * h);
                    let x = if load_c {
                        _mm512_add_ps(x, _mm512_loadu_ps(at))
                    } else {
                        x
                    };
                    _mm512_storeu_ps(at, x);
                }
            }
            return;
        }
        let masks = [lanes(nr), lanes(nr.saturating_sub(16))];
        for (i, acc) in acc.iter().enumerate() {
            if i >= mr {
                break;
            }
            let row = c.add(i * ldc);
            for h in 0..2 {
                if masks[h] == 0 {
                    continue;
                }
                let at = row.add(16 * h);
                let mut x = acc[h];
                if load_c {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(masks[h], at));
                }
                _mm512_mask_storeu_ps(at, masks[h], x);
            }
        }
    }
}
