//! Row kernels on f32 slices behind the flex backend's fused operators: masked softmax,
//! LayerNorm forward and backward. Each is compiled three times — for AVX-512, for AVX2 + FMA
//! and for plain x86-64 (or the build target elsewhere) — and the CPU picks at run time, so the
//! loops (exp included, see [`exp`]) vectorise to the widest registers it has.

/// Define `fn name(args) -> ret` whose body runs compiled for the best ISA this CPU has.
macro_rules! best_isa {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])* $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has every feature `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

/// Lanes of the partial sums (a multiple of every vector width, so sums vectorise).
const LANES: usize = 16;

/// `Σ v` with `LANES` partial sums.
#[inline(always)]
pub fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `Σ a·b` with `LANES` partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..LANES {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `max v` (−∞ for an empty slice) with `LANES` partial maxima.
#[inline(always)]
pub fn max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for j in 0..LANES {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

/// `eˣ` for the softmax (x ≤ 0 after the max is subtracted) in straight-line code that
/// vectorises: `eˣ = 2ᵏ·e^r`, `k = round(x·log₂e)`, `r = x − k·ln 2` (two-part ln 2), `e^r` by
/// the Cephes `expf` polynomial (≤ 2 ulp on the reduced range); 0 below −87 (the scores of
/// masked keys), NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding and subtracting it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let k = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let e = (p * (r * r) + r + 1.0) * f32::from_bits(((k as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        e
    }
}

/// Score of a padding key, added to `s·w_i·w_j` (the additive mask of the CRATE-BERT port).
pub const PAD_SCORE: f32 = -1e9;

/// The mask of one attention head, as [`softmax_rows`] applies it.
#[derive(Clone, Copy)]
pub enum HeadMask<'a> {
    None,
    /// Query `i` sees keys `0..=i`.
    Causal,
    /// `true` = padding key of this sequence.
    Padding(&'a [bool]),
}

best_isa! {
    /// `A ← softmax(s·A + mask)` row by row, in place, for `A` `[n, n]`.
    pub fn softmax_rows(a: &mut [f32], n: usize, scale: f32, mask: HeadMask) {
        for (i, row) in a.chunks_exact_mut(n).enumerate() {
            let seen = match mask {
                HeadMask::Causal => i + 1, // keys after the query get weight 0
                _ => n,
            };
            let (row, future) = row.split_at_mut(seen);
            future.fill(0.0);
            // with s > 0 the max of s·a is s times the max of a; padding is added after scaling
            let s = match mask {
                HeadMask::Padding(pad) => {
                    for (v, &p) in row.iter_mut().zip(pad) {
                        *v = *v * scale + if p { PAD_SCORE } else { 0.0 };
                    }
                    1.0
                }
                _ => scale,
            };
            let m = max(row);
            for v in row.iter_mut() {
                *v = exp((*v - m) * s);
            }
            let inv = 1.0 / sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

best_isa! {
    /// LayerNorm of the rows of `x` (each `gamma.len()` long) into `out`, with `x̂` and `1/σ` per
    /// row into `xhat` and `rstd` when they are not empty: `x̂ = (x − μ)/σ`, `σ = √(var + ε)`
    /// (biased variance), `out = x̂ γ + β`.
    pub fn layer_norm_rows(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [f32],
        xhat: &mut [f32],
        rstd: &mut [f32],
    ) {
        let d = gamma.len();
        let keep = !xhat.is_empty();
        for (i, (x, out)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let mean = sum(x) / d as f32;
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v - mean;
            }
            let r = 1.0 / (dot(out, out) / d as f32 + eps).sqrt();
            if keep {
                rstd[i] = r;
                let xh = &mut xhat[i * d..(i + 1) * d];
                for (h, o) in xh.iter_mut().zip(out.iter()) {
                    *h = o * r;
                }
            }
            for ((o, g), b) in out.iter_mut().zip(gamma).zip(beta) {
                *o = *o * r * g + b;
            }
        }
    }
}

best_isa! {
    /// LayerNorm's backward on rows: `dx = (1/σ)(ĝ − mean(ĝ) − x̂·mean(ĝ x̂))` with `ĝ = g γ`
    /// into `dx`, and `Σ g x̂`, `Σ g` over these rows added onto `dgamma`, `dbeta`.
    pub fn layer_norm_backward_rows(
        g: &[f32],
        xhat: &[f32],
        rstd: &[f32],
        gamma: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let d = gamma.len();
        let rows = g.chunks_exact(d).zip(xhat.chunks_exact(d)).zip(dx.chunks_exact_mut(d));
        for (i, ((g, xh), dx)) in rows.enumerate() {
            for (j, (&gj, &hj)) in g.iter().zip(xh).enumerate() {
                dgamma[j] += gj * hj;
                dbeta[j] += gj;
            }
            for ((o, &gj), &c) in dx.iter_mut().zip(g).zip(gamma) {
                *o = gj * c; // ĝ
            }
            let mean_g = sum(dx) / d as f32;
            let mean_gx = dot(dx, xh) / d as f32;
            let r = rstd[i];
            for (o, &h) in dx.iter_mut().zip(xh) {
                *o = (*o - mean_g - h * mean_gx) * r;
            }
        }
    }
}
