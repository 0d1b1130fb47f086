//! CRATE-MAE commands: `forward` on an MAE config, `mae train`, `mae reconstruct`, `probe`.

use crate::cli::output::outln;
use anyhow::Result;

use super::commands::{check_shape, load};
use super::{MaeTrainArgs, ProbeArgs, ReconstructArgs};
use whitebox::data::{self, Split};
use whitebox::train::mae::MaeTrainSettings;
use whitebox::train::probe::{self, ProbeRecipe};

/// `whitebox mae train`: masked-autoencoder pre-training with the classifier's training machinery.
pub fn train(m: MaeTrainArgs) -> Result<()> {
    let settings = MaeTrainSettings {
        image: m.train.settings()?,
        mask_ratio: m.mask_ratio,
        norm_pix_loss: m.norm_pix_loss,
    };
    super::print_outcome(&whitebox::train::mae::train(&settings)?, m.train.json)
}

/// `whitebox mae reconstruct`: a PNG grid, one column per test image; rows are the original,
/// the masked input (removed patches grey) and the reconstruction (visible patches pasted back
/// over the prediction, as in the MAE visualisations).
pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    let device = Default::default();
    let l = load(&a.weights)?.into_mae()?;
    let norm = l.normalization_or_train(l.config.in_chans, &a.data.data, a.data.format)?;
    let mut model = l.model;
    if let Some(r) = a.mask_ratio {
        whitebox::model::mae::check_mask_ratio(r)?;
        model.mask_ratio = r;
    }
    let c = &l.config;
    let mut set = data::load(&a.data.data, a.data.format, Split::Test)?;
    set.truncate(a.count.max(1));
    check_shape([c.in_chans, c.img_size, c.img_size], &set, &a.data.data)?;
    let img =
        whitebox::viz::maps::reconstruction_grid(&model, &set, &norm, a.seed, a.scale, &device);
    let (w, h, n) = (img.width(), img.height(), set.len());
    whitebox::viz::save_png(&a.output, &img)?;
    outln!(
        "wrote {}×{} grid of {n} images (original / masked / reconstructed, mask ratio {}) to {}",
        w,
        h,
        model.mask_ratio,
        a.output.display()
    )?;
    Ok(())
}

/// `whitebox probe`: a linear classifier on frozen features — the cls feature of an MAE
/// encoder, or a CRATE's head input `LN(cls)` (classifier or `dino train` teacher) — standardised
/// with the training split's statistics, softmax regression by AdamW.
pub fn probe(a: ProbeArgs) -> Result<()> {
    let recipe = ProbeRecipe {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        seed: a.seed,
    };
    let l = load(&a.weights)?.into_features()?;
    let (data, limits) = (&a.data.data, (a.train_limit, a.test_limit));
    let r = probe::probe_weights(&l, data, a.data.format, limits, &recipe)?;
    super::print_outcome(&r, a.json)
}
