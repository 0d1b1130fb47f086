//! `whitebox train`: the classifier run, CRATE, CRATE-α or ToST, chosen once from the config (or
//! the resumed run) and run through [`image_run`]'s lifecycle.

use anyhow::Result;

use super::image_run::{
    classifier_init, model_weights, run_classifier, ClassifierOutcome, ImageTrainSettings, Saved,
};
use super::resume::same_json;
use super::{checkpoint, tost, Classify};
use crate::model::CrateConfig;
use crate::TrainBackend;

/// `whitebox train`: a CRATE, CRATE-α or ToST classifier (ToST when the config or the resumed
/// run is one) trained in its run folder, which this call locks.
pub fn train_classifier(s: &ImageTrainSettings) -> Result<ClassifierOutcome> {
    let _lock = checkpoint::RunLock::acquire(&s.run.run_dir)?;
    if tost::wants_tost(s) {
        return tost::train(s);
    }
    let saved = Saved {
        read_config: CrateConfig::from_json_file,
        init: |c: &CrateConfig, d| c.init::<TrainBackend>(d),
        read_weights: model_weights,
    };
    let started = s.start(
        &saved,
        |c| c.image_size,
        || {
            let c = s.crate_config()?;
            let bytes = c.train_step_bytes(s.recipe.batch_size);
            crate::alloc::check_fits(
                "this training run",
                bytes,
                "--batch-size or the config's size",
            )?;
            Ok(c)
        },
        |config, p, sd| {
            *config = classifier_init(config.clone(), p, sd)?;
            Ok(())
        },
        |run, check| {
            let wanted = s.crate_config()?;
            check
                .fields(&wanted, run, &[])
                .model(&s.config, || same_json(&wanted, run))
                .check(&s.run.run_dir)
        },
    )?;
    let config = started.config.clone();
    let smoothing = started.state.recipe.label_smoothing;
    let task = Classify::new(config.clone(), smoothing, &Default::default());
    let input = [config.channels, config.image_size, config.image_size];
    let shape = (input, config.num_classes, config.param_count());
    run_classifier(s, &task, started, shape)
}
