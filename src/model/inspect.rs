//! Looking inside a layer: the attention of each MSSA head and the subspace features
//! `U^lᵀ LN₁(Z^l)` that the official visualisations (saliency maps, PCA) are drawn from.

use anyhow::{ensure, Result};
use burn::tensor::Tensor;

use super::fused::{layer_norm, merge_heads, AttnMask};
use super::{Activations, Crate, CrateBackend};

/// What layer `l` computes on a batch of `b` images with `n` tokens (cls first).
#[derive(Debug, Clone)]
pub struct LayerView {
    pub b: usize,
    pub heads: usize,
    pub n: usize,
    /// Width of the features, `K·p`.
    pub inner: usize,
    /// Post-softmax attention `softmax(w wᵀ/√p)` per head, `[b, heads, n, n]` row-major.
    pub attention: Vec<f32>,
    /// `U^lᵀ LN₁(Z^l)` for every token, `[b, n, K·p]` row-major (the official `qkv` hook).
    pub features: Vec<f32>,
}

impl LayerView {
    /// The cls row of head `h` over the patch tokens (cls column dropped), `n − 1` values.
    pub fn cls_attention(&self, image: usize, h: usize) -> &[f32] {
        let row = ((image * self.heads + h) * self.n) * self.n;
        &self.attention[row + 1..row + self.n]
    }

    /// Features of the patch tokens of one image (cls dropped), `[n − 1, K·p]`.
    pub fn patch_features(&self, image: usize) -> &[f32] {
        let start = (image * self.n + 1) * self.inner;
        &self.features[start..(image + 1) * self.n * self.inner]
    }
}

/// Run `x` through layers `0..layer` and return what layer `layer` (0-based) sees and attends to.
pub fn inspect_layer<B: CrateBackend>(
    model: &Crate<B>,
    x: Tensor<B, 4>,
    layer: usize,
) -> Result<LayerView> {
    let depth = model.layers.len();
    ensure!(
        layer < depth,
        "layer {layer} is out of range: the model has {depth} layers (0..={})",
        depth.saturating_sub(1)
    );
    let z = model.embed(x, &mut Activations::off());
    let [b, n, d] = z.dims();
    let mut z = z.reshape([b * n, d]);
    for l in &model.layers[..layer] {
        z = l.forward(z, b, n, &AttnMask::None);
    }
    let l = &model.layers[layer];
    let w = l.mssa.project(layer_norm(&l.norm1, z, l.ln_eps), b, n); // w_k = U_kᵀ LN₁(Z)
    let attention = l.mssa.attention(w.clone());
    let features = merge_heads(w);
    let inner = features.dims()[1];
    Ok(LayerView {
        b,
        heads: l.mssa.heads,
        n,
        inner,
        attention: attention.into_data().convert::<f32>().to_vec().unwrap(),
        features: features.into_data().convert::<f32>().to_vec().unwrap(),
    })
}
