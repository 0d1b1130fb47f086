//! Frozen features of an image for the k-NN and linear-probe evaluations: a CRATE's head input
//! `LN(cls)` (classifier or `dino train` teacher), a CRATE-MAE encoder's cls feature, or the
//! normalised pixels themselves (the raw-pixel baseline).

use burn::tensor::Tensor;

use super::mae::CrateMae;
use super::{Crate, CrateBackend};

/// Where the features of [`Features::extract`] come from.
pub enum Features<B: CrateBackend> {
    Pixels,
    Crate(Crate<B>),
    Mae(CrateMae<B>),
}

impl<B: CrateBackend> Features<B> {
    /// Features `[n, d]` of normalised images `[n, c, h, w]`.
    pub fn extract(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Features::Pixels => {
                let [n, c, h, w] = x.dims();
                x.reshape([n, c * h * w])
            }
            Features::Crate(m) => m.features(x),
            Features::Mae(m) => m.cls_features(x),
        }
    }
}
