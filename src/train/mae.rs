//! CRATE-MAE pre-training as a [`Task`]: the masked-patch reconstruction loss on fresh random
//! masks per batch (drawn from the batch's own generator, so resume repeats them exactly), and a
//! held-out loss on masks fixed by the image index.

use anyhow::{ensure, Result};
use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Int, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

use super::image_run::{self, ImageTrainSettings, Saved};
use super::resume::same_json;
use super::{checkpoint, EvalResult, Task};
use crate::data::{batch_rng, Augment, Batcher, ImageSet, Normalization};
use crate::model::mae::{CrateMae, MaeConfig};
use crate::model::{Activations, CrateAutodiff, CrateBackend};
use crate::TrainBackend;

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

/// A CRATE-MAE pre-training run (`whitebox mae train`): the image run's settings (`config`
/// names an MAE preset, `fmnist` = `mae-fmnist`, or a JSON config) with the mask's.
#[derive(Clone)]
pub struct MaeTrainSettings {
    pub image: ImageTrainSettings,
    /// Fraction of patches removed (`None`: the config's).
    pub mask_ratio: Option<f64>,
    /// Per-patch normalised pixel targets (official `norm_pix_loss`), on top of the config's.
    pub norm_pix_loss: bool,
}

/// The end of [`train`]: the masked-patch test loss at the end (and at step 0 for a fresh run),
/// where the run stands and its weights.
#[derive(Debug, Clone, Serialize)]
pub struct MaeOutcome {
    pub test_loss: f64,
    pub start_test_loss: Option<f64>,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    pub train_seconds: f64,
    pub weights: PathBuf,
}

impl std::fmt::Display for MaeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "test masked-patch loss {:.4}", self.test_loss)?;
        if let Some(s) = self.start_test_loss {
            write!(f, " (at step 0: {s:.4})")?;
        }
        write!(
            f,
            "  ({} epochs, weights in {})",
            self.epochs,
            self.weights.display()
        )
    }
}

impl MaeTrainSettings {
    /// The MAE config of the settings, with the mask ratio and `norm_pix_loss` applied.
    pub fn config(&self) -> Result<MaeConfig> {
        let spec = self.image.config.as_str();
        let mut config = MaeConfig::resolve(if spec == "fmnist" { "mae-fmnist" } else { spec })?;
        if let Some(r) = self.mask_ratio {
            config.mask_ratio = r;
        }
        config.norm_pix_loss |= self.norm_pix_loss;
        config.validate()?;
        Ok(config)
    }
}

/// `whitebox mae train`: masked-autoencoder pre-training on the classifier's engine, in its run
/// folder (locked by this call).
pub fn train(m: &MaeTrainSettings) -> Result<MaeOutcome> {
    let s = &m.image;
    let device = Default::default();
    let t_start = Instant::now();
    s.refuse(
        &["arch", "label_smoothing", "measure_every"],
        "`mae train` (a masked autoencoder has no classifier layers or labels)",
    )?;
    let _lock = checkpoint::RunLock::acquire(&s.run.run_dir)?;
    let saved = Saved {
        read_config: MaeConfig::from_json_file,
        init: |c: &MaeConfig, d| c.init::<TrainBackend>(d),
        read_weights: image_run::model_weights,
    };
    let mut started = s.start(
        &saved,
        |c| c.img_size,
        || m.config(),
        |_, _, _| Ok(()),
        |run, check| {
            let wanted = m.config()?;
            // `config` names the model; the mask ratio and norm_pix_loss are checked on their own
            let same = || {
                let mut c = wanted.clone();
                (c.mask_ratio, c.norm_pix_loss) = (run.mask_ratio, run.norm_pix_loss);
                same_json(&c, run)
            };
            check
                .fields(&wanted, run, &[])
                .model(&s.config, same)
                .check(&s.run.run_dir)
        },
    )?;
    let config = started.config.clone();
    let input = [config.in_chans, config.img_size, config.img_size];
    let (train_set, test_set) = s.run.splits(&mut started.state, input, None)?;
    tracing::info!(
        "MAE pre-training {} params on {} images ({} test) from {}, mask ratio {}, {} epochs",
        config.param_count(),
        train_set.len(),
        test_set.len(),
        s.run.data.display(),
        config.mask_ratio,
        started.state.recipe.epochs
    );
    let norm = started.state.normalization.clone();
    // masked-patch loss of the starting weights, for the log and the summary
    let start_test_loss = if started.state.step == 0 {
        Some(evaluate_mae(&started.model.valid(), &test_set, &norm, 500, &device)?.loss)
    } else {
        None
    };
    let end = s
        .run
        .fit(&Reconstruct { config }, started, &train_set, &test_set)?;
    Ok(MaeOutcome {
        test_loss: end.eval.loss,
        start_test_loss,
        epochs: end.state.epoch,
        steps: end.state.step,
        seconds: t_start.elapsed().as_secs_f64(),
        train_seconds: end.state.seconds,
        weights: end.weights,
    })
}
