//! Fused operators with hand-written backward passes, as a burn backend extension.
//!
//! burn's autodiff differentiates LayerNorm and softmax-attention op by op (about ten graph
//! nodes each, with gradient accumulation on strided views). Here each is one node whose
//! backward is the closed form. Plain backends (flex, CUDA) use the forward only; the
//! autodiff wrapper adds the backward. `tests/suite/fused_ops.rs` checks both against the op-by-op
//! versions.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use super::gemm::{self, MatRef};
pub use super::kernels::PAD_SCORE;
use super::kernels::{self, softmax_rows, HeadMask};
use super::profile::{self, Class};

fn wrap<B: Backend, const D: usize>(p: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}
fn unwrap<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `(x̂, 1/σ)` of LayerNorm over the last dim of rows `x` `[r, d]`: `x̂ = (x − μ)/σ`, `σ = √(var + ε)`.
fn normalize<B: Backend>(x: Tensor<B, 2>, eps: f64) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (var, mean) = x.clone().var_mean_bias(1);
    let rstd = var.add_scalar(eps).sqrt().recip();
    ((x - mean) * rstd.clone(), rstd)
}

/// Which keys each query of an attention sees.
#[derive(Clone, Debug, PartialEq)]
pub enum AttnMask {
    /// Every key (bidirectional).
    None,
    /// Keys at or before the query's position (causal language models).
    Causal,
    /// Every key, padding keys with score [`PAD_SCORE`]: `pad[i·n + j]` marks key `j` of
    /// sequence `i` of `b` sequences of `n` tokens.
    Padding(std::sync::Arc<[bool]>),
}

impl AttnMask {
    /// The padding mask of `pad` (`[b·n]`, true = padding); [`AttnMask::None`] when nothing is padding.
    pub fn padding(pad: Vec<bool>) -> Self {
        if pad.iter().any(|&p| p) {
            AttnMask::Padding(pad.into())
        } else {
            AttnMask::None
        }
    }
}

/// Attention weights `softmax(s·w wᵀ + mask)` of every head, for `w` `[b, h, n, dh]`.
pub fn attention_weights<B: Backend>(w: Tensor<B, 4>, scale: f64, mask: &AttnMask) -> Tensor<B, 4> {
    let [b, h, n, _] = w.dims();
    let scores = w.clone().matmul(w.swap_dims(2, 3)).mul_scalar(scale);
    let scores = match mask {
        AttnMask::None => scores,
        AttnMask::Causal => {
            let future = Tensor::<B, 2, burn::tensor::Bool>::tril_mask([n, n], 0, &scores.device())
                .reshape([1, 1, n, n])
                .expand([b, h, n, n]);
            scores.mask_fill(future, f32::NEG_INFINITY)
        }
        AttnMask::Padding(pad) => {
            let add: Vec<f32> = pad
                .iter()
                .map(|&p| if p { PAD_SCORE } else { 0.0 })
                .collect();
            let add = Tensor::<B, 4>::from_data(
                burn::tensor::TensorData::new(add, [b, 1, 1, n]),
                &scores.device(),
            );
            scores + add
        }
    };
    softmax(scores, 3)
}

/// `softmax(s·w wᵀ + mask)` and `softmax(s·w wᵀ + mask) w` for `w` `[b, h, n, dh]`.
fn ssa_forward<B: Backend>(
    w: Tensor<B, 4>,
    scale: f64,
    mask: &AttnMask,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let attn = attention_weights(w.clone(), scale, mask);
    (attn.clone(), attn.matmul(w))
}

/// [`CrateBackend::crate_ssa_backward`] op by op (any backend).
fn ssa_backward_ops<B: Backend>(
    w: FloatTensor<B>,
    attn: FloatTensor<B>,
    d_out: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let (w, attn, d_out): (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) =
        (wrap(w), wrap(attn), wrap(d_out));
    // dSᵀ w is a GEMM on a transposed view; adding dS + dSᵀ first would need a strided copy
    let d_attn = d_out.clone().matmul(w.clone().swap_dims(2, 3));
    let row = (d_attn.clone() * attn.clone()).sum_dim(3);
    let d_s = (attn.clone() * (d_attn - row)).mul_scalar(scale);
    let dw = attn.swap_dims(2, 3).matmul(d_out)
        + d_s.clone().matmul(w.clone())
        + d_s.swap_dims(2, 3).matmul(w);
    unwrap(dw)
}

/// [`CrateBackend::crate_layer_norm`] op by op (any backend): `[x̂γ + β, x̂, 1/σ]`.
fn layer_norm_ops<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f64,
) -> [FloatTensor<B>; 3] {
    let (xhat, rstd) = normalize::<B>(wrap(x), eps);
    let d = xhat.dims()[1];
    let out =
        xhat.clone() * wrap::<B, 1>(gamma).reshape([1, d]) + wrap::<B, 1>(beta).reshape([1, d]);
    [unwrap(out), unwrap(xhat), unwrap(rstd)]
}

/// [`CrateBackend::crate_layer_norm_backward`] op by op (any backend).
fn layer_norm_backward_ops<B: Backend>(
    g: FloatTensor<B>,
    xhat: FloatTensor<B>,
    rstd: FloatTensor<B>,
    gamma: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let g: Tensor<B, 2> = wrap(g);
    let (xhat, rstd): (Tensor<B, 2>, Tensor<B, 2>) = (wrap(xhat), wrap(rstd));
    let d = xhat.dims()[1];
    let dbeta = g.clone().sum_dim(0).reshape([d]);
    let dgamma = (g.clone() * xhat.clone()).sum_dim(0).reshape([d]);
    let gh = g * wrap::<B, 1>(gamma).reshape([1, d]);
    let mean_g = gh.clone().mean_dim(1);
    let mean_gx = (gh.clone() * xhat.clone()).mean_dim(1);
    let dx = (gh - mean_g - xhat * mean_gx) * rstd;
    [unwrap(dx), unwrap(dgamma), unwrap(dbeta)]
}

/// [`CrateBackend::crate_gemm`] op by op (any backend).
fn gemm_ops<B: Backend>(
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    ep: Epilogue,
) -> FloatTensor<B> {
    let mut y: Tensor<B, 2> = wrap(B::float_matmul(a, b));
    if let Some(bias) = bias {
        y = y + wrap::<B, 1>(bias).unsqueeze();
    }
    if ep.shift != 0.0 {
        y = y.add_scalar(ep.shift);
    }
    if ep.relu {
        y = burn::tensor::activation::relu(y);
    }
    unwrap(y)
}

/// What [`CrateBackend::crate_gemm`] applies to `a·b + bias` before returning it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epilogue {
    /// A scalar added to every entry.
    pub shift: f32,
    /// Whether a ReLU follows.
    pub relu: bool,
}

impl Epilogue {
    /// The plain product.
    pub const NONE: Self = Self {
        shift: 0.0,
        relu: false,
    };
}

pub trait CrateBackend: Backend {
    /// `act(a·b + bias + shift)` for matrices `a` `[m, k]`, `b` `[k, n]` (either may be a
    /// transposed view), an optional row vector `bias` `[n]` and the epilogue `ep`.
    fn crate_gemm(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        ep: Epilogue,
    ) -> FloatTensor<Self> {
        gemm_ops::<Self>(a, b, bias, ep)
    }

    /// LayerNorm of rows `x` `[r, d]` with affine `gamma`, `beta` `[d]`.
    fn crate_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        Self::layer_norm(x, gamma, Some(beta), eps)
    }

    /// `(out, x̂, 1/σ)` of LayerNorm of rows `x` `[r, d]` (`1/σ` as `[r, 1]`): what the backward needs.
    fn crate_layer_norm_parts(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> [FloatTensor<Self>; 3] {
        layer_norm_ops::<Self>(x, gamma, beta, eps)
    }

    /// `(dx, dγ, dβ)` of LayerNorm from the output gradient `g` `[r, d]`, `x̂`, `1/σ` `[r, 1]` and `γ`:
    /// `dx = (1/σ)(ĝ − mean(ĝ) − x̂·mean(ĝ x̂))` with `ĝ = g γ`, `dγ = Σ g x̂`, `dβ = Σ g`.
    fn crate_layer_norm_backward(
        g: FloatTensor<Self>,
        xhat: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        layer_norm_backward_ops::<Self>(g, xhat, rstd, gamma)
    }

    /// Self-attention with q = k = v = `w` `[b, h, n, dh]`: `softmax(s·w wᵀ + mask) w`.
    fn crate_ssa(w: FloatTensor<Self>, scale: f64, mask: &AttnMask) -> FloatTensor<Self> {
        Self::crate_ssa_parts(w, scale, mask).1
    }

    /// `(softmax(s·w wᵀ + mask), softmax(s·w wᵀ + mask) w)`: the weights are what the backward needs.
    fn crate_ssa_parts(
        w: FloatTensor<Self>,
        scale: f64,
        mask: &AttnMask,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (a, o) = ssa_forward::<Self>(wrap(w), scale, mask);
        (unwrap(a), unwrap(o))
    }

    /// `dw` of `O = softmax(s·w wᵀ + mask) w`, from `w`, the weights `A` and `dO`:
    /// `dA = dO wᵀ`, `dS = s·A ⊙ (dA − rowsum(dA ⊙ A))`, `dw = Aᵀ dO + (dS + dSᵀ) w`
    /// (a masked key has `A = 0`, hence `dS = 0`: the mask needs no term of its own).
    fn crate_ssa_backward(
        w: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        ssa_backward_ops::<Self>(w, attn, d_out, scale)
    }

    /// Token rows `[b·n, h·dh]` → contiguous heads `[b, h, n, dh]`.
    fn crate_split_heads(x: FloatTensor<Self>, b: usize, n: usize, h: usize) -> FloatTensor<Self> {
        let t: Tensor<Self, 2> = wrap(x);
        let dh = t.dims()[1] / h;
        unwrap(t.reshape([b, n, h, dh]).swap_dims(1, 2))
    }

    /// Heads `[b, h, n, dh]` → token rows `[b·n, h·dh]`.
    fn crate_merge_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let t: Tensor<Self, 4> = wrap(x);
        let [b, h, n, dh] = t.dims();
        unwrap(t.swap_dims(1, 2).reshape([b * n, h * dh]))
    }
}

/// Swap the `h` and `n` axes of `[b, h, n, dh]` ↔ `[b, n, h, dh]` by copying `dh`-long runs
/// (flex's generic strided copy walks 4-D permutes element by element).
fn swap_heads_f32(src: &[f32], b: usize, outer: usize, inner: usize, dh: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let per = outer * inner * dh;
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(per).enumerate().for_each(|(bi, out)| {
        let src = &src[bi * per..(bi + 1) * per];
        for o in 0..outer {
            for i in 0..inner {
                let from = (o * inner + i) * dh;
                let to = (i * outer + o) * dh;
                out[to..to + dh].copy_from_slice(&src[from..from + dh]);
            }
        }
    });
    debug_assert_eq!(dst.len(), b * per);
    dst
}

/// One head `w` `[n, dh]`: `A = softmax(s·w wᵀ + mask)` into `a`, `O = A w` into `o`.
fn ssa_head(
    w: &[f32],
    (n, dh): (usize, usize),
    scale: f32,
    mask: HeadMask,
    a: &mut [f32],
    o: &mut [f32],
) {
    let w = MatRef::rows(w, n, dh);
    gemm::matmul_into(w, w.t(), a, false); // S = w wᵀ
    softmax_rows(a, n, scale, mask);
    gemm::matmul_into(MatRef::rows(a, n, n), w, o, false); // O = A w
}

/// One head's `dw` (see [`CrateBackend::crate_ssa_backward`]); `ds` is `[n, n]` scratch.
fn ssa_head_backward(
    w: &[f32],
    a: &[f32],
    d_o: &[f32],
    dims: (usize, usize),
    scale: f32,
    dw: &mut [f32],
    ds: &mut [f32],
) {
    let (n, dh) = dims;
    let (w, d_o, a_m) = (
        MatRef::rows(w, n, dh),
        MatRef::rows(d_o, n, dh),
        MatRef::rows(a, n, n),
    );
    gemm::matmul_into(d_o, w.t(), ds, false); // dA = dO wᵀ
    for (ds, a) in ds.chunks_exact_mut(n).zip(a.chunks_exact(n)) {
        let r: f32 = ds.iter().zip(a).map(|(x, y)| x * y).sum();
        ds.iter_mut()
            .zip(a)
            .for_each(|(x, y)| *x = scale * y * (*x - r)); // dS
    }
    for i in 0..n {
        for j in 0..=i {
            let s = ds[i * n + j] + ds[j * n + i]; // dS + dSᵀ
            ds[i * n + j] = s;
            ds[j * n + i] = s;
        }
    }
    gemm::matmul_into(a_m.t(), d_o, dw, false); // Aᵀ dO
    gemm::matmul_into(MatRef::rows(ds, n, n), w, dw, true); // + (dS + dSᵀ) w
}

/// A 2-D f32 flex tensor as a strided matrix view (no copy).
fn mat_view(t: &burn_flex::FlexTensor) -> Option<MatRef<'_>> {
    let l = t.layout();
    if t.dtype() != burn::tensor::DType::F32 || l.num_dims() != 2 || !l.has_positive_strides() {
        return None;
    }
    let (s, st) = (l.shape(), l.strides());
    Some(MatRef {
        data: &t.storage::<f32>()[l.start_offset()..],
        rows: s[0],
        cols: s[1],
        rs: st[0] as usize,
        cs: st[1] as usize,
    })
}

fn flex_f32<const D: usize>(v: Vec<f32>, shape: [usize; D]) -> burn_flex::FlexTensor {
    burn_flex::FlexTensor::from_data(burn::tensor::TensorData::new(v, shape))
}

/// A 4-D f32 tensor's contiguous data and dims `[b, h, n, d]`.
fn heads_f32(t: &burn_flex::FlexTensor) -> Option<(&[f32], [usize; 4])> {
    let s = t.layout().shape();
    (s.num_dims() == 4).then_some(())?;
    Some((t.as_slice::<f32>()?, [s[0], s[1], s[2], s[3]]))
}

/// Rows per rayon task of the row kernels: about 16k floats.
fn rows_per_task(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

/// Contiguous f32 data of a flex tensor (None for another dtype).
fn f32_data(t: &burn_flex::FlexTensor) -> Option<&[f32]> {
    t.as_slice::<f32>()
}

type FlexLn = (burn_flex::FlexTensor, Option<[burn_flex::FlexTensor; 2]>);

/// LayerNorm of rows on flex, row blocks in parallel: `out` and, with `keep`, `[x̂, 1/σ]`
/// (None where the tensors are not f32 matrices).
fn flex_layer_norm(
    x: &burn_flex::FlexTensor,
    gamma: &burn_flex::FlexTensor,
    beta: &burn_flex::FlexTensor,
    eps: f64,
    keep: bool,
) -> Option<FlexLn> {
    use rayon::prelude::*;
    let (xs, gs, bs) = (f32_data(x)?, f32_data(gamma)?, f32_data(beta)?);
    let d = gs.len();
    if x.layout().num_dims() != 2 || bs.len() != d || d == 0 || xs.len() % d != 0 {
        return None;
    }
    let r = xs.len() / d;
    let mut out = vec![0f32; r * d];
    let (mut xhat, mut rstd) = if keep {
        (vec![0f32; r * d], vec![0f32; r])
    } else {
        (Vec::new(), Vec::new())
    };
    let k = rows_per_task(d);
    let (hk, rk) = if keep { (k * d, k) } else { (1, 1) };
    let mut xhat_chunks: Vec<&mut [f32]> = xhat.chunks_mut(hk).collect();
    let mut rstd_chunks: Vec<&mut [f32]> = rstd.chunks_mut(rk).collect();
    xhat_chunks.resize_with(r.div_ceil(k), Default::default);
    rstd_chunks.resize_with(r.div_ceil(k), Default::default);
    out.par_chunks_mut(k * d)
        .zip(xs.par_chunks(k * d))
        .zip(xhat_chunks.into_par_iter().zip(rstd_chunks))
        .for_each(|((out, x), (xh, rs))| {
            kernels::layer_norm_rows(x, gs, bs, eps as f32, out, xh, rs)
        });
    let parts = keep.then(|| [flex_f32(xhat, [r, d]), flex_f32(rstd, [r, 1])]);
    Some((flex_f32(out, [r, d]), parts))
}

impl CrateBackend for burn::backend::Flex {
    fn crate_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let _span = profile::span(Class::LayerNorm);
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        match flex_layer_norm(&x, &gamma, &beta, eps, false) {
            Some((out, _)) => out,
            None => {
                <Self as burn::tensor::ops::ModuleOps<Self>>::layer_norm(x, gamma, Some(beta), eps)
            }
        }
    }

    fn crate_layer_norm_parts(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> [FloatTensor<Self>; 3] {
        let _span = profile::span(Class::LayerNorm);
        let (x, gamma, beta) = (
            x.to_contiguous(),
            gamma.to_contiguous(),
            beta.to_contiguous(),
        );
        if let Some((out, Some([xhat, rstd]))) = flex_layer_norm(&x, &gamma, &beta, eps, true) {
            return [out, xhat, rstd];
        }
        layer_norm_ops::<Self>(x, gamma, beta, eps)
    }

    fn crate_layer_norm_backward(
        g: FloatTensor<Self>,
        xhat: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        use rayon::prelude::*;
        let _span = profile::span(Class::LayerNorm);
        let (g, xhat, rstd, gamma) = (
            g.to_contiguous(),
            xhat.to_contiguous(),
            rstd.to_contiguous(),
            gamma.to_contiguous(),
        );
        let (Some(gs), Some(hs), Some(rs), Some(cs)) = (
            f32_data(&g),
            f32_data(&xhat),
            f32_data(&rstd),
            f32_data(&gamma),
        ) else {
            return layer_norm_backward_ops::<Self>(g, xhat, rstd, gamma);
        };
        let d = cs.len();
        let r = rs.len();
        if gs.len() != r * d || hs.len() != r * d {
            return layer_norm_backward_ops::<Self>(g, xhat, rstd, gamma);
        }
        let k = rows_per_task(d);
        let mut dx = vec![0f32; r * d];
        // each task adds its rows' Σ g x̂, Σ g into its own pair of vectors; then they are summed
        let (dgamma, dbeta) = dx
            .par_chunks_mut(k * d)
            .zip(gs.par_chunks(k * d).zip(hs.par_chunks(k * d)))
            .zip(rs.par_chunks(k))
            .map(|((dx, (g, h)), rs)| {
                let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
                kernels::layer_norm_backward_rows(g, h, rs, cs, dx, &mut dg, &mut db);
                (dg, db)
            })
            .reduce(
                || (vec![0f32; d], vec![0f32; d]),
                |(mut a, mut b), (c, e)| {
                    a.iter_mut().zip(&c).for_each(|(a, c)| *a += c);
                    b.iter_mut().zip(&e).for_each(|(b, e)| *b += e);
                    (a, b)
                },
            );
        [
            flex_f32(dx, [r, d]),
            flex_f32(dgamma, [d]),
            flex_f32(dbeta, [d]),
        ]
    }

    fn crate_gemm(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        ep: Epilogue,
    ) -> FloatTensor<Self> {
        let _span = profile::span(Class::Gemm);
        use rayon::prelude::*;
        let bias_c = bias.as_ref().map(|t| t.to_contiguous());
        let bias_v = match &bias_c {
            Some(t) => t.as_slice::<f32>().map(Some),
            None => Some(None),
        };
        if let (Some(x), Some(y), Some(bias_v)) = (mat_view(&a), mat_view(&b), bias_v) {
            if x.cols == y.rows && bias_v.is_none_or(|v| v.len() == y.cols) {
                let n = y.cols;
                let mut c = if bias_v.is_none() && ep.shift == 0.0 {
                    gemm::matmul(x, y)
                } else {
                    // C starts as the bias rows (+ shift), and the product accumulates onto it
                    let mut c = vec![ep.shift; x.rows * n];
                    if let Some(v) = bias_v {
                        c.par_chunks_mut(n.max(1)).for_each(|row| {
                            row.iter_mut().zip(v).for_each(|(c, b)| *c += b);
                        });
                    }
                    gemm::matmul_onto(x, y, c, true)
                };
                if ep.relu {
                    // `if v < 0` rather than `v.max(0)`: NaN stays NaN, as in torch's relu
                    c.par_chunks_mut(1 << 14).for_each(|ch| {
                        ch.iter_mut().for_each(|v| {
                            if *v < 0.0 {
                                *v = 0.0
                            }
                        })
                    });
                }
                return flex_f32(c, [x.rows, n]);
            }
        }
        gemm_ops::<Self>(a, b, bias, ep)
    }

    fn crate_ssa_parts(
        w: FloatTensor<Self>,
        scale: f64,
        mask: &AttnMask,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let _span = profile::span(Class::Attention);
        use rayon::prelude::*;
        let w = w.to_contiguous();
        let Some((src, [b, h, n, dh])) = heads_f32(&w) else {
            let (a, o) = ssa_forward::<Self>(wrap(w), scale, mask);
            return (unwrap(a), unwrap(o));
        };
        if let AttnMask::Padding(pad) = mask {
            assert_eq!(
                pad.len(),
                b * n,
                "padding mask of {} keys for {b}×{n}",
                pad.len()
            );
        }
        let mut a = vec![0f32; b * h * n * n];
        let mut o = vec![0f32; b * h * n * dh];
        a.par_chunks_mut(n * n)
            .zip(o.par_chunks_mut(n * dh))
            .zip(src.par_chunks(n * dh))
            .enumerate()
            .for_each(|(head, ((a, o), w))| {
                let m = match mask {
                    AttnMask::None => HeadMask::None,
                    AttnMask::Causal => HeadMask::Causal,
                    AttnMask::Padding(pad) => {
                        let i = head / h; // the sequence of this head
                        HeadMask::Padding(&pad[i * n..(i + 1) * n])
                    }
                };
                ssa_head(w, (n, dh), scale as f32, m, a, o)
            });
        (flex_f32(a, [b, h, n, n]), flex_f32(o, [b, h, n, dh]))
    }

    fn crate_ssa_backward(
        w: FloatTensor<Self>,
        attn: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        let _span = profile::span(Class::Attention);
        use rayon::prelude::*;
        let (w, attn, d_out) = (
            w.to_contiguous(),
            attn.to_contiguous(),
            d_out.to_contiguous(),
        );
        let (Some((ws, [b, h, n, dh])), Some((a, _)), Some((g, _))) =
            (heads_f32(&w), heads_f32(&attn), heads_f32(&d_out))
        else {
            return ssa_backward_ops::<Self>(w, attn, d_out, scale);
        };
        let mut dw = vec![0f32; b * h * n * dh];
        dw.par_chunks_mut(n * dh)
            .zip(ws.par_chunks(n * dh))
            .zip(a.par_chunks(n * n).zip(g.par_chunks(n * dh)))
            .for_each_init(
                || vec![0f32; n * n],
                |ds, ((dw, w), (a, g))| ssa_head_backward(w, a, g, (n, dh), scale as f32, dw, ds),
            );
        flex_f32(dw, [b, h, n, dh])
    }

    fn crate_split_heads(x: FloatTensor<Self>, b: usize, n: usize, h: usize) -> FloatTensor<Self> {
        let _span = profile::span(Class::Copies);
        let x = x.to_contiguous();
        let dh = x.layout().shape()[1] / h;
        match x.as_slice::<f32>() {
            Some(src) => {
                let v = swap_heads_f32(src, b, n, h, dh);
                burn_flex::FlexTensor::from_data(burn::tensor::TensorData::new(v, [b, h, n, dh]))
            }
            None => unwrap(wrap::<Self, 2>(x).reshape([b, n, h, dh]).swap_dims(1, 2)),
        }
    }

    fn crate_merge_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let _span = profile::span(Class::Copies);
        let x = x.to_contiguous();
        let s = x.layout().shape();
        let (b, h, n, dh) = (s[0], s[1], s[2], s[3]);
        match x.as_slice::<f32>() {
            Some(src) => {
                let v = swap_heads_f32(src, b, h, n, dh);
                burn_flex::FlexTensor::from_data(burn::tensor::TensorData::new(v, [b * n, h * dh]))
            }
            None => unwrap(wrap::<Self, 4>(x).swap_dims(1, 2).reshape([b * n, h * dh])),
        }
    }
}

/// An autodiff backend whose inner backend also has the fused ops: what training needs.
pub trait CrateAutodiff:
    burn::tensor::backend::AutodiffBackend<InnerBackend: CrateBackend> + CrateBackend
{
}
impl<B: burn::tensor::backend::AutodiffBackend<InnerBackend: CrateBackend> + CrateBackend>
    CrateAutodiff for B
{
}
#[cfg(feature = "cuda")]
impl CrateBackend for burn::backend::Cuda {}
#[cfg(feature = "wgpu")]
impl CrateBackend for burn::backend::Wgpu {}

#[derive(Debug)]
struct LayerNormBackward;

impl<B: CrateBackend> Backward<B, 3> for LayerNormBackward {
    /// (x̂, 1/σ, γ)
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _span = profile::span(Class::LayerNorm);
        let [node_x, node_gamma, node_beta] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (xhat, rstd, gamma) = ops.state;
        let [dx, dgamma, dbeta] = B::crate_layer_norm_backward(g, xhat, rstd, gamma);
        for (node, grad) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct SsaBackward;

impl<B: CrateBackend> Backward<B, 1> for SsaBackward {
    /// (w, softmax weights A, scale)
    type State = (FloatTensor<B>, FloatTensor<B>, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _span = profile::span(Class::Attention);
        let [node_w] = ops.parents;
        let d_out = grads.consume::<B>(&ops.node);
        let Some(node) = node_w else { return };
        let (w, attn, scale) = ops.state;
        grads.register::<B>(node.id, B::crate_ssa_backward(w, attn, d_out, scale));
    }
}

/// Gradients of `C = act(A·B + bias + shift)`: `(dA, dB, dbias)` for the parents that need them.
/// `dP = dC ⊙ [C > 0]` (ReLU) or `dC`;  `dA = dP·Bᵀ`,  `dB = Aᵀ·dP`,  `dbias = Σ_rows dP`.
fn gemm_grads<B: CrateBackend>(
    g: FloatTensor<B>,
    (a, b, out): GemmState<B>,
    need: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let dp = match out {
        Some(out) => B::relu_backward(out, g),
        None => g,
    };
    let da =
        need[0].then(|| B::crate_gemm(dp.clone(), B::float_transpose(b), None, Epilogue::NONE));
    let dbias = need[2].then(|| {
        let d: Tensor<B, 2> = wrap(dp.clone());
        let n = d.dims()[1];
        unwrap(d.sum_dim(0).reshape([n]))
    });
    let db = need[1].then(|| B::crate_gemm(B::float_transpose(a), dp, None, Epilogue::NONE));
    [da, db, dbias]
}

/// `(A, B, C if a ReLU follows)`.
type GemmState<B> = (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>);

#[derive(Debug)]
struct GemmBackward;

impl<B: CrateBackend> Backward<B, 2> for GemmBackward {
    type State = GemmState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _span = profile::span(Class::Gemm);
        let [node_a, node_b] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let need = [node_a.is_some(), node_b.is_some(), false];
        let [da, db, _] = gemm_grads::<B>(g, ops.state, need);
        for (node, grad) in [(node_a, da), (node_b, db)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct GemmBiasBackward;

impl<B: CrateBackend> Backward<B, 3> for GemmBiasBackward {
    type State = GemmState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _span = profile::span(Class::Gemm);
        let [node_a, node_b, node_bias] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let need = [node_a.is_some(), node_b.is_some(), node_bias.is_some()];
        let [da, db, dbias] = gemm_grads::<B>(g, ops.state, need);
        for (node, grad) in [(node_a, da), (node_b, db), (node_bias, dbias)] {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

#[derive(Debug)]
struct SplitHeadsBackward;

impl<B: CrateBackend> Backward<B, 1> for SplitHeadsBackward {
    type State = ();
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _span = profile::span(Class::Copies);
        let g = grads.consume::<B>(&ops.node);
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, B::crate_merge_heads(g));
        }
    }
}

#[derive(Debug)]
struct MergeHeadsBackward;

impl<B: CrateBackend> Backward<B, 1> for MergeHeadsBackward {
    /// (b, n, h)
    type State = (usize, usize, usize);
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _span = profile::span(Class::Copies);
        let g = grads.consume::<B>(&ops.node);
        let (b, n, h) = ops.state;
        if let [Some(node)] = ops.parents {
            grads.register::<B>(node.id, B::crate_split_heads(g, b, n, h));
        }
    }
}

impl<B: CrateBackend, C: CheckpointStrategy> CrateBackend for Autodiff<B, C> {
    fn crate_gemm(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        ep: Epilogue,
    ) -> FloatTensor<Self> {
        let _span = profile::span(Class::Gemm);
        let run = |bias: Option<FloatTensor<B>>| {
            B::crate_gemm(a.primitive.clone(), b.primitive.clone(), bias, ep)
        };
        let state = |out: &FloatTensor<B>| -> GemmState<B> {
            let relu_out = ep.relu.then(|| out.clone());
            (a.primitive.clone(), b.primitive.clone(), relu_out)
        };
        let Some(bias) = bias else {
            return match GemmBackward
                .prepare::<C>([a.node.clone(), b.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let out = run(None);
                    prep.finish(state(&out), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(run(None)),
            };
        };
        match GemmBiasBackward
            .prepare::<C>([a.node.clone(), b.node.clone(), bias.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = run(Some(bias.primitive));
                prep.finish(state(&out), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(run(Some(bias.primitive))),
        }
    }

    fn crate_split_heads(x: FloatTensor<Self>, b: usize, n: usize, h: usize) -> FloatTensor<Self> {
        let _span = profile::span(Class::Copies);
        match SplitHeadsBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((), B::crate_split_heads(x.primitive, b, n, h)),
            OpsKind::UnTracked(prep) => prep.finish(B::crate_split_heads(x.primitive, b, n, h)),
        }
    }

    fn crate_merge_heads(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let _span = profile::span(Class::Copies);
        let s = wrap::<B, 4>(x.primitive.clone()).dims();
        match MergeHeadsBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((s[0], s[2], s[1]), B::crate_merge_heads(x.primitive))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::crate_merge_heads(x.primitive)),
        }
    }

    fn crate_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let _span = profile::span(Class::LayerNorm);
        match LayerNormBackward
            .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let [out, xhat, rstd] = B::crate_layer_norm_parts(
                    x.primitive,
                    gamma.primitive.clone(),
                    beta.primitive,
                    eps,
                );
                prep.finish((xhat, rstd, gamma.primitive), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::crate_layer_norm(
                x.primitive,
                gamma.primitive,
                beta.primitive,
                eps,
            )),
        }
    }

    fn crate_ssa(w: FloatTensor<Self>, scale: f64, mask: &AttnMask) -> FloatTensor<Self> {
        let _span = profile::span(Class::Attention);
        match SsaBackward
            .prepare::<C>([w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (attn, out) = B::crate_ssa_parts(w.primitive.clone(), scale, mask);
                prep.finish((w.primitive, attn, scale), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::crate_ssa(w.primitive, scale, mask)),
        }
    }
}

/// `a · b` of two matrices through the fused GEMM (no output copy on flex).
pub fn matmul<B: CrateBackend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    wrap(B::crate_gemm(unwrap(a), unwrap(b), None, Epilogue::NONE))
}

/// `act(a · b + shift)` through the fused GEMM (the ISTA step's `relu(x·M − ηλ)`).
pub fn matmul_epilogue<B: CrateBackend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    ep: Epilogue,
) -> Tensor<B, 2> {
    wrap(B::crate_gemm(unwrap(a), unwrap(b), None, ep))
}

/// `x·W + b` of a burn `Linear` (weight `[in, out]`), the bias added inside the fused GEMM.
pub fn linear<B: CrateBackend>(l: &burn::nn::Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let bias = l.bias.as_ref().map(|b| unwrap(b.val()));
    wrap(B::crate_gemm(
        unwrap(x),
        unwrap(l.weight.val()),
        bias,
        Epilogue::NONE,
    ))
}

/// LayerNorm of token rows through the fused op (same parameters as `burn::nn::LayerNorm`).
pub fn layer_norm<B: CrateBackend>(
    ln: &burn::nn::LayerNorm<B>,
    x: Tensor<B, 2>,
    eps: f64,
) -> Tensor<B, 2> {
    let beta = ln.beta.as_ref().expect("CRATE LayerNorms are affine").val();
    wrap(B::crate_layer_norm(
        unwrap(x),
        unwrap(ln.gamma.val()),
        unwrap(beta),
        eps,
    ))
}

/// `softmax(s·w wᵀ + mask) w` through the fused op.
pub fn ssa<B: CrateBackend>(w: Tensor<B, 4>, scale: f64, mask: &AttnMask) -> Tensor<B, 4> {
    wrap(B::crate_ssa(unwrap(w), scale, mask))
}

/// Token rows `[b·n, h·dh]` → contiguous heads `[b, h, n, dh]`.
pub fn split_heads<B: CrateBackend>(x: Tensor<B, 2>, b: usize, n: usize, h: usize) -> Tensor<B, 4> {
    wrap(B::crate_split_heads(unwrap(x), b, n, h))
}

/// Heads `[b, h, n, dh]` → token rows `[b·n, h·dh]`.
pub fn merge_heads<B: CrateBackend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    wrap(B::crate_merge_heads(unwrap(x)))
}
