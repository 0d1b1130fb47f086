//! The operators every white-box variant is built from: MSSA (a gradient step on the
//! compression term R^c), one ISTA step (a proximal step on the sparse-coding term), the
//! overcomplete two-step ISTA of CRATE-α and crate-lm, the pre-norm CRATE layer made of them
//! (CRATE, CRATE-α, the CRATE-MAE encoder, crate-lm, CRATE-BERT), and ToST's
//! TSSA (a step on the variational form of R^c, linear in the number of tokens).

use super::fused::{self, layer_norm, AttnMask, CrateBackend};
use super::Recorder;
use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::activation::{gelu, relu, softmax};
use burn::tensor::Tensor;

/// ISTA step size η and sparsity λ, hard-coded to 0.1 in the official CRATE classifier, CRATE-α,
/// both crate-lm files and the BERT port; η is also CRATE-MAE's encoder step (`crate_encoder.FeedForward`
/// default), whose λ is 0.5 (`mae.rs`).
pub const ISTA_ETA: f64 = 0.1;
pub const ISTA_LAMBDA: f64 = 0.1;
/// Overcomplete ratio `s / d` of the sparse codes (4 in CRATE-α and crate-lm).
pub const OVERCOMPLETE: usize = 4;

/// Multi-head subspace self-attention with one shared projection `U = [U_1 … U_K]` for q, k and v.
#[derive(Module, Debug)]
pub struct Mssa<B: CrateBackend> {
    /// Shared q = k = v projection `[U_1 … U_K]ᵀ` (torch key `qkv.weight`, no bias).
    pub qkv: Linear<B>,
    /// Output projection (`to_out.0`), learned and untied from `qkv` as in the official code.
    pub to_out: Linear<B>,
    pub dropout: Dropout,
    pub heads: usize,
    pub dim_head: usize,
}

impl<B: CrateBackend> Mssa<B> {
    pub fn new(
        dim: usize,
        heads: usize,
        dim_head: usize,
        out_bias: bool,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        let inner = heads * dim_head;
        Self {
            qkv: LinearConfig::new(dim, inner).with_bias(false).init(device),
            to_out: LinearConfig::new(inner, dim)
                .with_bias(out_bias)
                .init(device),
            dropout: DropoutConfig::new(dropout).init(),
            heads,
            dim_head,
        }
    }

    /// Per-head subspace projections `w = U_kᵀ z` of token rows `x` `[b·n, d]`, as `[b, h, n, dh]`
    /// (one copy of `dh`-long runs).
    pub fn project(&self, x: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 4> {
        fused::split_heads(fused::linear(&self.qkv, x), b, n, self.heads)
    }

    /// The attention scale `1/√dh`.
    fn scale(&self) -> f64 {
        (self.dim_head as f64).powf(-0.5)
    }

    /// Attention weights `softmax(w wᵀ / √dh)` of every head, `[b, h, n, n]`.
    pub fn attention(&self, w: Tensor<B, 4>) -> Tensor<B, 4> {
        fused::attention_weights(w, self.scale(), &AttnMask::None)
    }

    /// `MSSA(Z) = W_out [SSA_1(Z); …; SSA_K(Z)] + b`, `SSA_k = U_kᵀZ · softmax((U_kᵀZ)ᵀ(U_kᵀZ)/√dh)`,
    /// on token rows `x` `[b·n, d]` of `b` sequences of `n` tokens, every token seeing every other.
    pub fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        self.forward_masked(x, b, n, &AttnMask::None)
    }

    /// [`Mssa::forward`] with `softmax(… + mask)`: causal (language models) or padding keys (BERT).
    pub fn forward_masked(
        &self,
        x: Tensor<B, 2>,
        b: usize,
        n: usize,
        mask: &AttnMask,
    ) -> Tensor<B, 2> {
        self.trace(x, b, n, mask).out
    }

    /// [`Mssa::forward_masked`] with its intermediate rows (what the language models record).
    pub fn trace(&self, x: Tensor<B, 2>, b: usize, n: usize, mask: &AttnMask) -> MssaTrace<B> {
        let qkv = fused::linear(&self.qkv, x);
        let w = fused::split_heads(qkv.clone(), b, n, self.heads);
        let heads_out = if self.dropout.prob > 0.0 {
            // attention dropout needs the weights themselves: the op-by-op path
            let attn = fused::attention_weights(w.clone(), self.scale(), mask);
            self.dropout.forward(attn).matmul(w)
        } else {
            fused::ssa(w, self.scale(), mask)
        };
        let heads = fused::merge_heads(heads_out);
        let out = self
            .dropout
            .forward(fused::linear(&self.to_out, heads.clone()));
        MssaTrace { qkv, heads, out }
    }

    /// The MSSA output of the first token (cls) of each sequence only, `[b, d]`, from the
    /// projections `w` `[b, h, n, dh]` of all tokens: the cls query against every key.
    pub fn forward_first(&self, w: Tensor<B, 4>) -> Tensor<B, 2> {
        let [b, h, _, dh] = w.dims();
        let q = w.clone().narrow(2, 0, 1);
        // softmax(s·w₀ wᵀ) w, [b, h, 1, dh]
        let attn = softmax(
            q.matmul(w.clone().swap_dims(2, 3)).mul_scalar(self.scale()),
            3,
        );
        let out = self.dropout.forward(attn).matmul(w).reshape([b, h * dh]);
        self.dropout.forward(fused::linear(&self.to_out, out))
    }
}

/// The rows of one MSSA forward, `[b·n, ·]` each.
pub struct MssaTrace<B: CrateBackend> {
    /// `U`ᵀz of every head side by side.
    pub qkv: Tensor<B, 2>,
    /// `[SSA_1; …; SSA_K]` before the output projection.
    pub heads: Tensor<B, 2>,
    /// The MSSA output.
    pub out: Tensor<B, 2>,
}

/// One non-negative ISTA step warm-started at the input, with a square dictionary `D` (torch `fn.weight`).
#[derive(Module, Debug)]
pub struct Ista<B: CrateBackend> {
    /// Dictionary `D`, `[d, d]`, kept in the official (torch) layout.
    pub weight: Param<Tensor<B, 2>>,
    pub step_size: f64,
    pub lambd: f64,
}

impl<B: CrateBackend> Ista<B> {
    pub fn new(dim: usize, step_size: f64, lambd: f64, device: &B::Device) -> Self {
        // torch `init.kaiming_uniform_` defaults (a = 0, gain √2): U(±√(6/d)).
        let bound = (6.0 / dim as f64).sqrt();
        let weight = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init([dim, dim], device);
        Self {
            weight,
            step_size,
            lambd,
        }
    }

    /// `M = I + η(W − WᵀW)`, so that `x + η(xW − xWᵀW) = x·M`.
    fn step_matrix(&self) -> Tensor<B, 2> {
        let w = self.weight.val();
        let [d, _] = w.dims();
        let wtw = fused::matmul(w.clone().transpose(), w.clone());
        Tensor::eye(d, &w.device()) + (w - wtw).mul_scalar(self.step_size)
    }

    /// `ista_step(x) = relu(x + η(xW − xWᵀW) − ηλ) = relu(x·M − ηλ)`.
    ///
    /// The official code spends three GEMMs over the tokens; folding the dictionary into the
    /// d×d matrix `M` once per forward costs one d³ product and leaves one token GEMM. It is
    /// algebraically identical and autodiff still trains `W` through `M` (checked by the golden tests).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let ep = fused::Epilogue {
            shift: -(self.step_size * self.lambd) as f32,
            relu: true,
        };
        fused::matmul_epilogue(x, self.step_matrix(), ep)
    }

    /// The argument of the ReLU, `x·M − ηλ` (recorded as `prerelu` by the language models).
    pub fn prerelu(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        fused::matmul(x, self.step_matrix()).sub_scalar(self.step_size * self.lambd)
    }
}

/// Two non-negative ISTA steps from `A⁰ = 0` on `min λ‖A‖₁ + ½‖y − D A‖²` with an overcomplete
/// dictionary `D` `[d, s]`, decoded by a separate `D₁` (CRATE-α) or by `D` itself (crate-lm).
#[derive(Module, Debug)]
pub struct OvercompleteIsta<B: CrateBackend> {
    /// The dictionary in its family's checkpoint layout: `D` `[d, s]` (CRATE-α `fn.D`) or,
    /// when `atoms_in_rows`, `W = Dᵀ` `[s, d]` (crate-lm `ista.weight`).
    pub weight: Param<Tensor<B, 2>>,
    /// Separate decoding dictionary `D₁` `[d, s]` (CRATE-α `fn.D1`); `None`: decoded by `D`.
    pub decoder: Option<Param<Tensor<B, 2>>>,
    /// `weight` holds `Dᵀ` (`[s, d]`, one atom per row) instead of `D`.
    pub atoms_in_rows: bool,
    pub step_size: f64,
    pub lambd: f64,
}

/// torch `kaiming_uniform_` (a = 0) of a `[rows, cols]` weight: U(±√(6/fan_in)), fan_in = cols.
fn kaiming_uniform<B: CrateBackend>(shape: [usize; 2], device: &B::Device) -> Param<Tensor<B, 2>> {
    let bound = (6.0 / shape[1] as f64).sqrt();
    Initializer::Uniform {
        min: -bound,
        max: bound,
    }
    .init(shape, device)
}

impl<B: CrateBackend> OvercompleteIsta<B> {
    /// CRATE-α (`crate_alpha.py` `OvercompleteISTABlock`): `D`, `D₁` `[d, s]`, s = 4d.
    pub fn separate(dim: usize, device: &B::Device) -> Self {
        let s = OVERCOMPLETE * dim;
        Self {
            weight: kaiming_uniform([dim, s], device),
            decoder: Some(kaiming_uniform([dim, s], device)),
            atoms_in_rows: false,
            step_size: ISTA_ETA,
            lambd: ISTA_LAMBDA,
        }
    }

    /// crate-lm (`crate_overcomplete.py`): one `W = Dᵀ` `[4d, d]`, the tied decode `A W`.
    pub fn tied(dim: usize, device: &B::Device) -> Self {
        Self {
            weight: kaiming_uniform([OVERCOMPLETE * dim, dim], device),
            decoder: None,
            atoms_in_rows: true,
            step_size: ISTA_ETA,
            lambd: ISTA_LAMBDA,
        }
    }

    /// `D` `[d, s]` (a transposed view of `weight` when `atoms_in_rows`).
    fn dictionary(&self) -> Tensor<B, 2> {
        let w = self.weight.val();
        if self.atoms_in_rows {
            w.transpose()
        } else {
            w
        }
    }

    /// The argument of the second ReLU on token rows `y` `[r, d]` (row form: `Dᵀy` is `y·D`),
    /// `A¹ = relu(η Dᵀy − ηλ)`, `A¹ + η(Dᵀy − DᵀD A¹) − ηλ`, `[r, s]` (crate-lm records it as `prerelu`).
    pub fn prerelu(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        let (eta, shrink) = (self.step_size, self.step_size * self.lambd);
        let d = self.dictionary();
        let dty = fused::matmul(y, d.clone()); // Dᵀy
        let a1 = relu(dty.clone().mul_scalar(eta).sub_scalar(shrink));
        let dtda1 = fused::matmul(fused::matmul(a1.clone(), d.clone().transpose()), d); // DᵀD A¹
        a1 + (dty - dtda1).mul_scalar(eta) - shrink
    }

    /// The decoded codes `D₁ A` (`D A` when tied), `[r, d]`.
    pub fn decode(&self, codes: Tensor<B, 2>) -> Tensor<B, 2> {
        let d1 = match &self.decoder {
            Some(d1) => d1.val(),
            None => self.dictionary(),
        };
        fused::matmul(codes, d1.transpose())
    }

    /// `D₁ A²`, `A² = relu(prerelu(y))` (CRATE-α adds the residual, crate-lm does not).
    pub fn forward(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        self.decode(relu(self.prerelu(y)))
    }
}

/// The sparse-coding half of a CRATE layer, on `y = LN₂ Z½`.
#[derive(Module, Debug)]
pub enum Sparsify<B: CrateBackend> {
    /// `Z' = ISTA(y)`, square dictionary (CRATE, CRATE-MAE's encoder, CRATE-BERT, crate-lm `crate.py`).
    Ista(Ista<B>),
    /// CRATE-α: `Z' = Z½ + D₁ A²`, separate decoder `D₁` and a residual.
    Overcomplete(OvercompleteIsta<B>),
    /// crate-lm `crate_overcomplete.py`: `Z' = D A²`, tied decode, no residual.
    Tied(OvercompleteIsta<B>),
}

/// One pre-norm CRATE layer: `Z½ = Z + MSSA(LN₁ Z)` (attention masked as asked), `Z' = sparsify(LN₂ Z½)`.
#[derive(Module, Debug)]
pub struct CrateLayer<B: CrateBackend> {
    pub norm1: LayerNorm<B>,
    pub mssa: Mssa<B>,
    pub norm2: LayerNorm<B>,
    pub ista: Sparsify<B>,
    /// eps of `norm1`/`norm2`: 1e-5 (CRATE, crate-lm, CRATE-BERT), 1e-6 in CRATE-α's PreNorm.
    pub ln_eps: f64,
}

impl<B: CrateBackend> CrateLayer<B> {
    /// A layer around `mssa` and `ista` with fresh affine norms of eps `ln_eps`.
    pub fn new(mssa: Mssa<B>, ista: Sparsify<B>, ln_eps: f64, device: &B::Device) -> Self {
        // the shape without initialising the lazy weight (which would reorder the RNG draws)
        let d = mssa.qkv.weight.lazy_shape()[0];
        let ln = || LayerNormConfig::new(d).with_epsilon(ln_eps).init(device);
        Self {
            norm1: ln(),
            mssa,
            norm2: ln(),
            ista,
            ln_eps,
        }
    }

    /// `MSSA(LN₁ Z)` on token rows `[b·n, d]`, every token seeing every other.
    pub fn mssa(&self, z: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        self.mssa
            .forward(layer_norm(&self.norm1, z, self.ln_eps), b, n)
    }

    /// `Z'` for token rows `z` `[b·n, d]` of `b` sequences of `n` tokens.
    pub fn forward(&self, z: Tensor<B, 2>, b: usize, n: usize, mask: &AttnMask) -> Tensor<B, 2> {
        self.forward_traced(z, b, n, mask, &mut Recorder::off())
    }

    /// [`CrateLayer::forward`], recording `ln1`, `qkv`, `attn_y`, `mssa`, `attn` (= `Z½`), `ln2`,
    /// `prerelu`, `codes` (overcomplete) and `ista` (= `Z'`) into `rec`.
    pub fn forward_traced(
        &self,
        z: Tensor<B, 2>,
        b: usize,
        n: usize,
        mask: &AttnMask,
        rec: &mut Recorder<B>,
    ) -> Tensor<B, 2> {
        let half = self.attend(z, b, n, mask, rec);
        let next = self.sparsify(half, rec);
        rec.push("ista", &next);
        next
    }

    /// `Z½ = Z + MSSA(LN₁ Z)`.
    fn attend(
        &self,
        z: Tensor<B, 2>,
        b: usize,
        n: usize,
        mask: &AttnMask,
        rec: &mut Recorder<B>,
    ) -> Tensor<B, 2> {
        let a = layer_norm(&self.norm1, z.clone(), self.ln_eps);
        rec.push("ln1", &a);
        let out = {
            let t = self.mssa.trace(a, b, n, mask);
            rec.push("qkv", &t.qkv);
            rec.push("attn_y", &t.heads);
            rec.push("mssa", &t.out);
            t.out
        };
        let half = z + out;
        rec.push("attn", &half);
        half
    }

    /// `Z'` from `Z½`: `ISTA(LN₂ Z½)`, CRATE-α `Z½ + D₁ A²`, crate-lm overcomplete `D A²`.
    fn sparsify(&self, half: Tensor<B, 2>, rec: &mut Recorder<B>) -> Tensor<B, 2> {
        match &self.ista {
            Sparsify::Ista(ista) => {
                let y = self.ln2(half, rec);
                if !rec.wants("prerelu") {
                    return ista.forward(y);
                }
                let pre = ista.prerelu(y);
                rec.push("prerelu", &pre);
                relu(pre)
            }
            // CRATE-α adds the residual around the sparse-coding block.
            Sparsify::Overcomplete(odl) => half.clone() + self.decode_codes(odl, half, rec),
            Sparsify::Tied(odl) => self.decode_codes(odl, half, rec),
        }
    }

    /// `y = LN₂ Z½`.
    fn ln2(&self, half: Tensor<B, 2>, rec: &mut Recorder<B>) -> Tensor<B, 2> {
        let y = layer_norm(&self.norm2, half, self.ln_eps);
        rec.push("ln2", &y);
        y
    }

    /// `D₁ A²` (`D A²` when tied), `A² = relu(prerelu(LN₂ Z½))`.
    fn decode_codes(
        &self,
        odl: &OvercompleteIsta<B>,
        half: Tensor<B, 2>,
        rec: &mut Recorder<B>,
    ) -> Tensor<B, 2> {
        let pre = odl.prerelu(self.ln2(half, rec));
        rec.push("prerelu", &pre);
        let codes = relu(pre);
        rec.push("codes", &codes);
        odl.decode(codes)
    }

    /// `Z'` of the first token (cls) of each sequence only, `[b, d]`: all that a cls-pooled
    /// head reads from the last layer. The keys are every token, but the output projection,
    /// LN₂ and the sparse-coding step run on `b` rows instead of `b·n`.
    pub fn forward_first(&self, z: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let [_, d] = z.dims();
        let z_first = z.clone().reshape([b, n, d]).narrow(1, 0, 1).reshape([b, d]);
        let w = self
            .mssa
            .project(layer_norm(&self.norm1, z, self.ln_eps), b, n);
        let half = z_first + self.mssa.forward_first(w);
        self.sparsify(half, &mut Recorder::off())
    }
}

/// Patch embedding by a convolution with kernel = stride = patch size (torch `Conv2d(C, d, P, P)`),
/// computed as patchify in `(c, p1, p2)` order followed by one GEMM with the flattened kernel.
#[derive(Module, Debug)]
pub struct PatchConv<B: CrateBackend> {
    /// Kernel `[d, C, P, P]`, the torch layout.
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
    pub patch_size: usize,
}

impl<B: CrateBackend> PatchConv<B> {
    /// torch `Conv2d` default init: U(±1/√fan_in) for kernel and bias, fan_in = C·P².
    pub fn new(channels: usize, dim: usize, patch: usize, device: &B::Device) -> Self {
        let bound = 1.0 / ((channels * patch * patch) as f64).sqrt();
        let u = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            weight: u.init([dim, channels, patch, patch], device),
            bias: u.init([dim], device),
            patch_size: patch,
        }
    }

    /// Patch tokens `[b, (h w), d]` of an NCHW batch: `conv(x)` flattened row-major over the grid.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, c, hh, ww] = x.dims();
        let p = self.patch_size;
        let (h, w) = (hh / p, ww / p);
        let cols = x
            .reshape([b, c, h, p, w, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * h * w, c * p * p]);
        let [d, ..] = self.weight.dims();
        let kernel = self.weight.val().reshape([d, c * p * p]);
        let out = fused::matmul(cols, kernel.transpose()) + self.bias.val().unsqueeze::<2>();
        out.reshape([b, h * w, d])
    }

    /// Tokens `[b, (h w), d]` back to the conv's NCHW feature map `[b, d, h, w]`.
    pub fn as_feature_map(&self, tokens: Tensor<B, 3>) -> Tensor<B, 4> {
        let [b, n, d] = tokens.dims();
        let g = (n as f64).sqrt().round() as usize;
        tokens.swap_dims(1, 2).reshape([b, d, g, n / g])
    }
}

/// Token Statistics Self-Attention (ToST, `AttentionTSSA` of `tost_vision/tost.py`): per head a
/// diagonal second-moment statistic of the projections `w = U_kᵀ z` weighted by a soft assignment
/// `Π` of tokens to heads; linear in the number of tokens.
#[derive(Module, Debug)]
pub struct Tssa<B: CrateBackend> {
    /// Shared projection `[U_1 … U_K]ᵀ` (torch key `qkv`, square, bias optional).
    pub qkv: Linear<B>,
    /// Per-head temperature τ_k of the assignment softmax, `[heads, 1]` (torch `temp`).
    pub temp: Param<Tensor<B, 2>>,
    /// Output projection (torch `to_out.0`, with bias).
    pub to_out: Linear<B>,
    pub heads: usize,
}

/// Reshape a per-head `[h, 1]` parameter for broadcasting over `[b, h, n, dh]`.
fn per_head<B: CrateBackend>(p: &Param<Tensor<B, 2>>) -> Tensor<B, 4> {
    let h = p.dims()[0];
    p.val().reshape([1, h, 1, 1])
}

/// `Π = softmax_k(τ_k · s_k)` over the head axis (dim 1) of per-token scores `s` `[b, h, n, 1]`.
fn assign_heads<B: CrateBackend>(s: Tensor<B, 4>, temp: &Param<Tensor<B, 2>>) -> Tensor<B, 4> {
    softmax(s * per_head(temp), 1)
}

/// `−(w ⊙ Π) ⊙ 1/(1 + D)`: each head's projections shrunk along directions of large second moment `D`.
fn tssa_output<B: CrateBackend>(
    w: Tensor<B, 4>,
    pi: Tensor<B, 4>,
    dots: Tensor<B, 4>,
) -> Tensor<B, 4> {
    (w * pi).neg() * dots.add_scalar(1.0).recip()
}

impl<B: CrateBackend> Tssa<B> {
    pub fn new(dim: usize, heads: usize, qkv_bias: bool, device: &B::Device) -> Self {
        Self {
            qkv: LinearConfig::new(dim, dim).with_bias(qkv_bias).init(device),
            temp: Initializer::Ones.init([heads, 1], device),
            to_out: LinearConfig::new(dim, dim).init(device),
            heads,
        }
    }

    /// `TSSA(Z) = W_out[−(w_k ⊙ Π_k) ⊙ 1/(1 + Σ_n Π̂_kn w_kn²)]_k + b` on token rows `x` `[b·n, d]`,
    /// `w = qkv(x)`, `Π = softmax_heads(τ ⊙ Σ_d (w/‖w‖_tokens)²)`, `Π̂_kn = Π_kn / (Σ_n Π_kn + 1e-8)`.
    pub fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let w = fused::split_heads(fused::linear(&self.qkv, x), b, n, self.heads);
        let w_sq = w.clone() * w.clone();
        // F.normalize over tokens: w / max(‖w‖, 1e-12), so (w/‖w‖)² = w² / max(‖w‖², 1e-24)
        let norm_sq = w_sq.clone().sum_dim(2).clamp_min(1e-24);
        let pi = assign_heads((w_sq.clone() / norm_sq).sum_dim(3), &self.temp); // [b, h, n, 1]
        let pi_hat = pi.clone() / pi.clone().sum_dim(2).add_scalar(1e-8);
        let dots = (pi_hat * w_sq).sum_dim(2); // [b, h, 1, dh]
        let out = fused::merge_heads(tssa_output(w, pi, dots));
        fused::linear(&self.to_out, out)
    }
}

/// Causal TSSA (`CausalSelfAttention_TSSA` of `tost_lang/model_TSSA.py`): the statistics of
/// token t use tokens ≤ t only, as running prefix sums, with a learned per-position `denom_bias`.
#[derive(Module, Debug)]
pub struct CausalTssa<B: CrateBackend> {
    /// Projection `w = c_attn(x)` (square).
    pub c_attn: Linear<B>,
    /// Output projection.
    pub c_proj: Linear<B>,
    /// Per-head temperature `[n_head, 1]`.
    pub temp: Param<Tensor<B, 2>>,
    /// Per-head, per-position bias of the normalised scores, `[n_head, block_size, 1]`.
    pub denom_bias: Param<Tensor<B, 3>>,
    pub n_head: usize,
}

impl<B: CrateBackend> CausalTssa<B> {
    /// `Π_t = softmax_heads(τ ⊙ Σ_d (w_t² / max(Σ_{s≤t} w_s², 1e-12) + β_t))`,
    /// `D_t = Σ_{s≤t} Π_s w_s² / (Σ_{s≤t} Π_s + 1e-8)`, `y_t = −(w_t ⊙ Π_t) ⊙ 1/(1 + D_t)`,
    /// out `= c_proj(y)`, on token rows `x` `[b·n, d]`.
    pub fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let w = fused::split_heads(fused::linear(&self.c_attn, x), b, n, self.n_head);
        let w_sq = w.clone() * w.clone();
        let denom = w_sq.clone().cumsum(2).clamp_min(1e-12);
        let [h, _, _] = self.denom_bias.dims();
        let beta = self.denom_bias.val().narrow(1, 0, n).reshape([1, h, n, 1]);
        let pi = assign_heads((w_sq.clone() / denom + beta).sum_dim(3), &self.temp);
        let dots = (w_sq * pi.clone()).cumsum(2) / pi.clone().cumsum(2).add_scalar(1e-8);
        let y = fused::merge_heads(tssa_output(w, pi, dots));
        fused::linear(&self.c_proj, y)
    }
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for Tssa<B> {
    /// burn path → key of `AttentionTSSA` on its own (`qkv.*`, `temp`, `to_out.0.*`).
    fn official_key(path: &[String]) -> String {
        let leaf = |l: &String| crate::model::keys::torch_leaf(l).to_string();
        match path {
            [m, l] if m == "to_out" => format!("to_out.0.{}", leaf(l)),
            _ => path.iter().map(leaf).collect::<Vec<_>>().join("."),
        }
    }
}

/// LayerNorm epsilon of the nanoGPT-based language models' norms (torch default).
pub const LN_EPS: f64 = 1e-5;

/// nanoGPT `_init_weights`: weight N(0, std), bias zero.
pub(crate) fn linear<B: CrateBackend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    let mut l = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    l.bias = l
        .bias
        .map(|_| Param::from_tensor(Tensor::zeros([d_out], device)));
    l
}

/// nanoGPT `MLP`: `c_proj(GELU(c_fc x))`, hidden width 4d (timm's `Mlp` with `fc1`, `fc2`).
#[derive(Module, Debug)]
pub struct Mlp<B: CrateBackend> {
    pub c_fc: Linear<B>,
    pub c_proj: Linear<B>,
}

impl<B: CrateBackend> Mlp<B> {
    /// `c_proj(GELU(c_fc x))` on token rows.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        fused::linear(&self.c_proj, gelu(fused::linear(&self.c_fc, x)))
    }
}
