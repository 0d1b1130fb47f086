//! CRATE-MAE pre-training as a [`Task`]: the masked-patch reconstruction loss on fresh random
//! masks per batch (drawn from the batch's own generator, so resume repeats them exactly), and a
//! held-out loss on masks fixed by the image index.

use anyhow::{ensure, Result};
use burn::tensor::{ElementConversion, Int, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{EvalResult, Task};
use crate::data::{batch_rng, Augment, Batcher, ImageSet, Normalization};
use crate::model::mae::{CrateMae, MaeConfig};
use crate::model::{Activations, CrateAutodiff, CrateBackend};

pub struct Reconstruct {
    pub config: MaeConfig,
}

/// Mean masked-patch loss of `model` on `set` (no augmentation; the mask of each batch comes from
/// a generator seeded by its position, so two evaluations of the same weights agree).
pub fn evaluate_mae<B: CrateBackend>(
    model: &CrateMae<B>,
    set: &ImageSet,
    norm: &Normalization,
    batch_size: usize,
    device: &B::Device,
) -> Result<EvalResult> {
    ensure!(!set.is_empty(), "cannot evaluate on an empty split");
    ensure!(
        batch_size > 0,
        "the evaluation batch size must be at least 1"
    );
    let batcher = Batcher {
        norm: norm.clone(),
        augment: Augment::none(),
    };
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut loss_sum = 0.0f64;
    for (k, chunk) in idx.chunks(batch_size).enumerate() {
        let (x, _) = batcher.batch::<B>(set, chunk, &mut batch_rng(0, 0, 0), device);
        let masking = model.masking(chunk.len(), None, &mut StdRng::seed_from_u64(k as u64));
        let out = model.forward_with(x, masking, &mut Activations::off());
        let l: f64 = out.loss.into_scalar().elem();
        loss_sum += l * chunk.len() as f64;
    }
    Ok(EvalResult {
        loss: loss_sum / set.len() as f64,
        top1: f64::NAN,
        top5: f64::NAN,
        n: set.len(),
    })
}

impl<B: CrateAutodiff> Task<B> for Reconstruct {
    type Model = CrateMae<B>;
    type Valid = CrateMae<B::InnerBackend>;
    type Config = MaeConfig;
    fn config(&self) -> &MaeConfig {
        &self.config
    }
    fn loss(
        &self,
        model: &CrateMae<B>,
        x: Tensor<B, 4>,
        _y: Tensor<B, 1, Int>,
        rng: &mut StdRng,
        _at: super::Progress,
    ) -> Tensor<B, 1> {
        let masking = model.masking(x.dims()[0], None, rng);
        model.forward_with(x, masking, &mut Activations::off()).loss
    }
    fn evaluate(
        &self,
        model: &CrateMae<B::InnerBackend>,
        set: &ImageSet,
        norm: &Normalization,
        device: &B::Device,
    ) -> Result<EvalResult> {
        evaluate_mae(model, set, norm, 500, device)
    }
    fn describe(&self, r: &EvalResult) -> String {
        format!("test masked-patch loss {:.4}", r.loss)
    }
}
