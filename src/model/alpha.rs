//! CRATE-α (UCSC-VLAA/CRATE-alpha, `torch_inference/model/crate_alpha.py`): the CRATE classifier
//! with an overcomplete sparse-coding block that decodes through a second dictionary, plus a
//! residual, and a conv patch embedding.
//!
//! `Z½ = Z + MSSA(LN₁ Z)` (to_out without bias), `y = LN₂ Z½` (eps 1e-6),
//! `A¹ = relu(η Dᵀy − ηλ)`, `A² = relu(A¹ − η Dᵀ(D A¹ − y) − ηλ)`, `Z' = Z½ + D₁ A²`,
//! with `D`, `D₁` of shape `[d, 4d]`, η = λ = 0.1. Head: `LN` (eps 1e-5) + Linear on the cls token.
//!
//! Code vs paper: the book writes the layer as `Z' = D A` (one dictionary, no residual); the
//! released code, followed here, adds the residual and decodes with the separate `D₁`. The torch
//! port hard-codes 3 input channels in `conv1`; here the conv takes `channels`.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::relu;
use burn::tensor::Tensor;

use super::fused::CrateBackend;

/// Overcomplete ratio `s / d` (fixed to 4 in the official code).
pub const OVERCOMPLETE: usize = 4;
/// ISTA step size η and sparsity λ (hard-coded in the official code).
pub const ETA: f64 = 0.1;
pub const LAMBDA: f64 = 0.1;
/// eps of the two PreNorm LayerNorms of a CRATE-α layer.
pub const PRENORM_EPS: f64 = 1e-6;

/// Two non-negative ISTA steps from `A⁰ = 0` on `min λ‖A‖₁ + ½‖y − D A‖²`, decoded by `D₁`.
#[derive(Module, Debug)]
pub struct OvercompleteIsta<B: CrateBackend> {
    /// Encoding dictionary `D` `[d, s]` (torch key `fn.D`).
    pub d: Param<Tensor<B, 2>>,
    /// Decoding dictionary `D₁` `[d, s]` (torch key `fn.D1`).
    pub d1: Param<Tensor<B, 2>>,
    pub step_size: f64,
    pub lambd: f64,
}

/// burn field name → torch parameter name inside the block.
pub fn official_leaf(field: &str) -> &str {
    match field {
        "d" => "D",
        "d1" => "D1",
        other => other,
    }
}

impl<B: CrateBackend> OvercompleteIsta<B> {
    /// torch `kaiming_uniform_` on `[d, s]` (fan_in = s): U(±√(6/s)), for both dictionaries.
    pub fn new(dim: usize, device: &B::Device) -> Self {
        let s = OVERCOMPLETE * dim;
        let bound = (6.0 / s as f64).sqrt();
        let u = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            d: u.init([dim, s], device),
            d1: u.init([dim, s], device),
            step_size: ETA,
            lambd: LAMBDA,
        }
    }

    /// Sparse codes `A²` `[r, s]` of token rows `y` `[r, d]` (row form: `Dᵀy` is `y·D`).
    pub fn sparse_codes(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        let (eta, shrink) = (self.step_size, self.step_size * self.lambd);
        let d = self.d.val();
        // A¹ = relu(η Dᵀy − ηλ)
        let a1 = relu(
            y.clone()
                .matmul(d.clone())
                .mul_scalar(eta)
                .sub_scalar(shrink),
        );
        // A² = relu(A¹ − η Dᵀ(D A¹ − y) − ηλ)
        let residual = a1.clone().matmul(d.clone().transpose()) - y;
        relu((a1 - residual.matmul(d).mul_scalar(eta)).sub_scalar(shrink))
    }

    /// `D₁ A²` `[r, d]`: the decoded sparse codes (the caller adds the residual).
    pub fn forward(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        self.sparse_codes(y).matmul(self.d1.val().transpose())
    }
}

/// `(d, layers, heads)` of the official `decode_variant` names.
fn variant(name: &str) -> Option<(usize, usize, usize)> {
    Some(match name {
        "Ti" => (192, 12, 3),
        "S" => (576, 12, 12),
        "B" => (768, 12, 12),
        "L" => (1024, 24, 16),
        "H" => (1280, 32, 16),
        "g" => (1408, 40, 16),
        "G" => (1664, 48, 16),
        "e" => (1792, 56, 16),
        _ => return None,
    })
}

/// `(dim, depth, heads, patch)` of a preset named as in the CRATE-α repository:
/// `crate-alpha-B/16`, `crate-alpha-L/14`, … (224 px, 1000 classes, `dim_head = d / heads`;
/// `vision::CrateConfig::preset` builds the config).
pub fn preset_shape(name: &str) -> Option<(usize, usize, usize, usize)> {
    let rest = name.strip_prefix("crate-alpha-")?;
    let (v, p) = rest.split_once('/')?;
    let (dim, depth, heads) = variant(v)?;
    let patch: usize = p.parse().ok()?;
    if patch == 0 || !224usize.is_multiple_of(patch) {
        return None;
    }
    Some((dim, depth, heads, patch))
}

/// Parameters of one CRATE-α layer of width `d` and attention width `inner` (two pre-norms,
/// MSSA without output bias, both dictionaries).
pub fn layer_params(d: usize, inner: usize) -> usize {
    2 * d + 2 * inner * d + 2 * d + 2 * d * OVERCOMPLETE * d
}
