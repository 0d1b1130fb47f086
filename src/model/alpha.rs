//! CRATE-α (UCSC-VLAA/CRATE-alpha, `torch_inference/model/crate_alpha.py`): the CRATE classifier
//! with an overcomplete sparse-coding block that decodes through a second dictionary, plus a
//! residual, and a conv patch embedding.
//!
//! `Z½ = Z + MSSA(LN₁ Z)` (to_out without bias), `y = LN₂ Z½` (eps 1e-6),
//! `A¹ = relu(η Dᵀy − ηλ)`, `A² = relu(A¹ − η Dᵀ(D A¹ − y) − ηλ)`, `Z' = Z½ + D₁ A²`,
//! with `D`, `D₁` of shape `[d, 4d]`, η = λ = 0.1 (`blocks::OvercompleteIsta::separate`). Head: `LN` (eps 1e-5) + Linear on the cls token.
//!
//! Code vs paper: the book writes the layer as `Z' = D A` (one dictionary, no residual); the
//! released code, followed here, adds the residual and decodes with the separate `D₁`. The torch
//! port hard-codes 3 input channels in `conv1`; here the conv takes `channels`.

use super::blocks::OVERCOMPLETE;

/// eps of the two PreNorm LayerNorms of a CRATE-α layer.
pub const PRENORM_EPS: f64 = 1e-6;

/// burn field of [`super::blocks::OvercompleteIsta`] → torch parameter name inside the block
/// (`D`, `D1`, both `[d, s]` as stored).
pub fn official_leaf(field: &str) -> &str {
    match field {
        "weight" => "D",
        "decoder" => "D1",
        other => other,
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
