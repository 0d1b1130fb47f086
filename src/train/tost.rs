//! The ToST classifier as a [`Task`] of the one training engine: cross-entropy (with optional
//! label smoothing) on logits computed with BatchNorm in training mode, so the stem's running
//! statistics are updated as torch's `model.train()` does; evaluation uses them.

use anyhow::{bail, Result};
use burn::nn::loss::CrossEntropyLoss;
use burn::tensor::{Int, Tensor};
use rand::rngs::StdRng;
use serde_json::json;

use super::image_run::{self, ClassifierOutcome, ImageTrainSettings, Saved};
use super::resume::same_json;
use super::{evaluate_with, smoothed_cross_entropy, Checkpoint, EvalResult, Task};
use crate::data::{ImageSet, Normalization};
use crate::model::tost::{self, Tost, TostConfig};
use crate::model::{Arch, CrateAutodiff};
use crate::weights::load::spec_arch;
use crate::weights::ModelConfig;
use crate::TrainBackend;

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

/// Whether a classifier run is a ToST one: a ToST `config`, `arch` ToST, or the resume of a run
/// whose checkpoint holds a ToST config.
pub fn wants_tost(s: &ImageTrainSettings) -> bool {
    if s.resume {
        if let Some(dir) = Checkpoint::find(&s.run.run_dir) {
            return spec_arch(&dir.join("config.json").to_string_lossy()) == Some(Arch::Tost);
        }
    }
    s.arch == Some(Arch::Tost) || spec_arch(&s.config) == Some(Arch::Tost)
}

/// The ToST config `s` names; `arch`, when given, must be ToST.
fn tost_config(s: &ImageTrainSettings) -> Result<TostConfig> {
    let ModelConfig::Tost(config) = ModelConfig::resolve(&s.config)? else {
        bail!(
            "--config {:?} is not a ToST config: give a preset ({}) or a JSON file with \"arch\": \"{}\"",
            s.config,
            tost::PRESETS.join(", "),
            Arch::Tost.name()
        );
    };
    if let Some(arch) = s.arch.filter(|&a| a != Arch::Tost) {
        bail!(
            "--arch {:?} contradicts the ToST --config {:?}",
            arch.name(),
            s.config
        );
    }
    Ok(config)
}

/// A ToST classifier run (fresh, from `init_from` weights, or resumed); the caller
/// ([`crate::train::train_classifier`]) holds the run's lock.
pub(super) fn train(s: &ImageTrainSettings) -> Result<ClassifierOutcome> {
    let saved = Saved {
        read_config: TostConfig::from_json_file,
        init: |c: &TostConfig, d| c.init::<TrainBackend>(d),
        read_weights: image_run::model_weights,
    };
    let started = s.start(
        &saved,
        |c| c.img_size,
        || tost_config(s),
        |_, _, sd| {
            *sd = tost::prepare_state_dict(std::mem::take(sd));
            Ok(())
        },
        |run, check| {
            let same = || matches!(ModelConfig::resolve(&s.config), Ok(ModelConfig::Tost(c)) if same_json(&c, run));
            check
                .fields(&json!({ "arch": s.arch }), &json!({ "arch": Arch::Tost }), &[])
                .model(&s.config, same)
                .check(&s.run.run_dir)
        },
    )?;
    let c = started.config.clone();
    let smoothing = started.state.recipe.label_smoothing;
    let task = ClassifyTost::new(c.clone(), smoothing, &Default::default());
    let shape = (c.input_shape(), c.num_classes, c.param_count());
    image_run::run_classifier(s, &task, started, shape)
}
