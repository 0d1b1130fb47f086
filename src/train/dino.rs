//! `whitebox dino train`: DINO / SimDINO pre-training of a CRATE backbone as an image run on the
//! classifier's engine ([`super::ssl::SelfDistillTask`]), with DINO's schedules: weight decay
//! along a cosine, no augmentation beyond the multi-crop views, no decay of biases and norms.

use anyhow::{ensure, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::image_run::{ImageTrainSettings, Saved};
use super::resume::same_json;
use super::ssl::{read_checkpoint_weights, SelfDistillTask, SslOptions, SslRunConfig};
use super::{checkpoint, LrSchedule, Recipe};
use crate::data::Augment;
use crate::model::ssl::{SslLoss, STUDENT_PREFIX};
use crate::TrainBackend;

/// A self-supervised run: the image run's settings (its recipe's epochs span DINO's schedules),
/// the objective and head, and the final weight decay of the cosine.
#[derive(Clone)]
pub struct DinoTrainSettings {
    pub image: ImageTrainSettings,
    /// Loss, views, head, teacher and k-NN settings (`epochs` is taken from the recipe).
    pub options: SslOptions,
    pub weight_decay_end: f64,
}

/// The end of [`train`]: the teacher's k-NN accuracy on the test split, the last epoch's loss
/// and its terms, where the run stands and the teacher backbone's weights.
#[derive(Debug, Clone, Serialize)]
pub struct DinoOutcome {
    pub loss: SslLoss,
    pub knn_top1: f64,
    pub knn_top5: f64,
    pub knn_k: usize,
    #[serde(rename = "knn_T")]
    pub knn_t: f64,
    /// Training images used as neighbours.
    #[serde(skip)]
    pub knn_neighbours: usize,
    pub train_loss: Option<f64>,
    pub terms: Option<BTreeMap<String, f64>>,
    pub epochs: usize,
    pub steps: usize,
    pub seconds: f64,
    pub train_seconds: f64,
    pub weights: PathBuf,
}

impl std::fmt::Display for DinoOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "teacher k-NN top-1 {:.2}%  top-5 {:.2}%  (k = {}, {} train images as neighbours; {} epochs, teacher backbone in {})",
            100.0 * self.knn_top1,
            100.0 * self.knn_top5,
            self.knn_k,
            self.knn_neighbours,
            self.epochs,
            self.weights.display()
        )
    }
}

impl DinoTrainSettings {
    /// Refuse classifier settings that mean nothing to self-distillation.
    fn check(&self) -> Result<()> {
        self.image.refuse(
            &["label_smoothing", "crop_padding", "hflip", "measure_every"],
            "`dino train` (the views are DINO's multi-crop ones)",
        )?;
        ensure!(
            self.weight_decay_end >= 0.0,
            "--weight-decay-end must not be negative"
        );
        Ok(())
    }

    /// The model and settings of a fresh run.
    pub fn config(&self) -> Result<SslRunConfig> {
        let options = SslOptions {
            epochs: self.image.recipe.epochs,
            ..self.options.clone()
        };
        SslRunConfig::new(self.image.crate_config()?, &options)
    }

    /// The settings with DINO's recipe: weight decay along a cosine to `weight_decay_end`, no
    /// augmentation or label smoothing, no decay of biases and norms (as in the references).
    fn with_ssl_recipe(&self) -> ImageTrainSettings {
        let mut image = self.image.clone();
        image.recipe = Recipe {
            schedule: LrSchedule::Dino,
            weight_decay_end: Some(self.weight_decay_end),
            augment: Augment::none(),
            label_smoothing: 0.0,
            ..image.recipe
        };
        image.recipe.optim.no_decay_norm_bias = true;
        image
    }
}

/// `whitebox dino train`: DINO / SimDINO self-distillation in its run folder (locked by this
/// call); the checkpoint's `model.safetensors` is the teacher backbone under the official keys.
pub fn train(d: &DinoTrainSettings) -> Result<DinoOutcome> {
    d.check()?;
    let s = &d.with_ssl_recipe();
    let t_start = Instant::now();
    let _lock = checkpoint::RunLock::acquire(&s.run.run_dir)?;
    let saved = Saved {
        read_config: SslRunConfig::from_json_file,
        init: |c: &SslRunConfig, dev| c.model.init::<TrainBackend>(dev),
        read_weights: read_checkpoint_weights,
    };
    let mut started = s.start(
        &saved,
        |c| c.model.backbone.image_size,
        || d.config(),
        // the same backbone weights for teacher (official keys) and student
        |_, _, sd| {
            let student: Vec<_> = sd
                .iter()
                .map(|(k, v)| (format!("{STUDENT_PREFIX}{k}"), v.clone()))
                .collect();
            sd.extend(student);
            Ok(())
        },
        |run, check| {
            let wanted = d.config()?;
            let aliases = [
                ("head_hidden", "hidden_dim"),
                ("head_bottleneck", "bottleneck_dim"),
                ("head_layers", "nlayers"),
                ("knn_temperature", "knn_t"),
            ];
            check
                .fields(&wanted, run, &aliases)
                .model(&s.config, || {
                    same_json(&wanted.model.backbone, &run.model.backbone)
                })
                .check(&s.run.run_dir)
        },
    )?;
    let config = started.config.clone();
    let b = &config.model.backbone;
    let input = [b.channels, b.image_size, b.image_size];
    let (train_set, test_set) = s.run.splits(&mut started.state, input, None)?;
    let c = &config.settings;
    tracing::info!(
        "{:?} pre-training of a {}-parameter CRATE on {} images of {} ({} test): 2 global {}px + {} local {}px views, {} epochs",
        config.model.loss,
        b.param_count(),
        train_set.len(),
        s.run.data.display(),
        test_set.len(),
        c.crops.global_size,
        c.crops.local_crops,
        c.crops.local_size,
        started.state.recipe.epochs
    );
    let norm = started.state.normalization.clone();
    let task = SelfDistillTask::<TrainBackend>::new(config.clone(), norm, &train_set);
    let end = s.run.fit(&task, started, &train_set, &test_set)?;
    let (terms, train_loss) = end
        .last
        .map_or((None, None), |m| (m.terms, Some(m.train_loss)));
    Ok(DinoOutcome {
        loss: config.model.loss,
        knn_top1: end.eval.top1,
        knn_top5: end.eval.top5,
        knn_k: c.knn_k,
        knn_t: c.knn_t,
        knn_neighbours: c.knn_bank.min(train_set.len()),
        train_loss: train_loss.filter(|l| l.is_finite()),
        terms,
        epochs: end.state.epoch,
        steps: end.state.step,
        seconds: t_start.elapsed().as_secs_f64(),
        train_seconds: end.state.seconds,
        weights: end.weights,
    })
}
