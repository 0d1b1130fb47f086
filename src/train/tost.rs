//! The ToST classifier as a [`Task`] of the one training engine: cross-entropy (with optional
//! label smoothing) on logits computed with BatchNorm in training mode, so the stem's running
//! statistics are updated as torch's `model.train()` does; evaluation uses them.

use anyhow::Result;
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::{Int, Tensor};
use rand::rngs::StdRng;

use super::{evaluate_with, smoothed_cross_entropy, EvalResult, Task};
use crate::data::{ImageSet, Normalization};
use crate::model::tost::{Tost, TostConfig};
use crate::model::CrateAutodiff;

pub struct ClassifyTost<B: CrateAutodiff> {
    pub config: TostConfig,
    ce: CrossEntropyLoss<B>,
}

impl<B: CrateAutodiff> ClassifyTost<B> {
    pub fn new(config: TostConfig, label_smoothing: f64, device: &B::Device) -> Self {
        Self {
            config,
            ce: smoothed_cross_entropy(label_smoothing, device),
        }
    }
}

impl<B: CrateAutodiff> Task<B> for ClassifyTost<B> {
    type Model = Tost<B>;
    type Valid = Tost<B::InnerBackend>;
    type Config = TostConfig;
    fn config(&self) -> &TostConfig {
        &self.config
    }
    fn loss(
        &self,
        model: &Tost<B>,
        x: Tensor<B, 4>,
        y: Tensor<B, 1, Int>,
        _rng: &mut StdRng,
        _at: super::Progress,
    ) -> Tensor<B, 1> {
        self.ce.forward(model.forward_mode(x, true), y)
    }
    fn evaluate(
        &self,
        model: &Tost<B::InnerBackend>,
        set: &ImageSet,
        norm: &Normalization,
        device: &B::Device,
    ) -> Result<EvalResult> {
        evaluate_with(|x| model.forward(x), set, norm, 500, device)
    }
}
