//! CRATE-MAE commands: `forward` on an MAE config, `mae train`, `mae reconstruct`, `probe`.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Instant;

use super::commands::{check_shape, load, load_split};
use super::{MaeTrainArgs, ProbeArgs, ReconstructArgs};
use whitebox::data::{self, Split};
use whitebox::train::mae::MaeTrainSettings;
use whitebox::train::probe::{self, ProbeRecipe};
use whitebox::{InferBackend, TrainBackend};

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
    println!(
        "wrote {}×{} grid of {n} images (original / masked / reconstructed, mask ratio {}) to {}",
        w,
        h,
        model.mask_ratio,
        a.output.display()
    );
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
    recipe.validate()?;
    let t0 = Instant::now();
    let train_set = load_split(&a.data, Split::Train, a.train_limit)?;
    let test_set = load_split(&a.data, Split::Test, a.test_limit)?;
    let l = load(&a.weights)?.into_features()?;
    check_shape(l.config, &train_set, &a.data.data)?;
    check_shape(l.config, &test_set, &a.data.data).context("test split")?;
    let norm = l.normalization_or_train(l.config[0], &a.data.data, a.data.format)?;
    let r = probe::probe_frozen::<InferBackend, TrainBackend>(
        &train_set,
        &test_set,
        &norm,
        &recipe,
        &Default::default(),
        |x| l.model.extract(x),
    )?;
    println!(
        "linear probe on frozen cls features: test accuracy {:.2}%  (train {:.2}%, d = {}, {} epochs, {:.0}s)",
        100.0 * r.test_acc,
        100.0 * r.train_acc,
        r.dim,
        a.epochs,
        t0.elapsed().as_secs_f64()
    );
    if a.json {
        println!(
            "{}",
            json!({"test_acc": r.test_acc, "train_acc": r.train_acc, "dim": r.dim, "epochs": a.epochs, "seconds": t0.elapsed().as_secs_f64()})
        );
    }
    Ok(())
}
