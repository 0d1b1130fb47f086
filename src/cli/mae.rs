//! CRATE-MAE commands: `forward` on an MAE config, `mae train`, `mae reconstruct`, `probe`.

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use serde_json::json;
use std::time::Instant;

use super::commands::{
    check_shape, fresh_state, image_run, init_weights, load, load_split, norm_or_train,
    recipe_from, refuse_flags, resume_check,
};
use super::{MaeTrainArgs, ProbeArgs, ReconstructArgs};
use whitebox::data::{self, Split};
use whitebox::model::mae::MaeConfig;
use whitebox::train::image_run::{self, Saved};
use whitebox::train::mae::{evaluate_mae, Reconstruct};
use whitebox::train::probe::{self, ProbeRecipe};
use whitebox::train::resume::same_json;
use whitebox::{InferBackend, TrainBackend};

/// The MAE config of the flags: `--config` (`fmnist` = `mae-fmnist`) with `--mask-ratio` and
/// `--norm-pix-loss`.
fn mae_config(m: &MaeTrainArgs) -> Result<MaeConfig> {
    let spec = m.train.config.as_str();
    let mut config = MaeConfig::resolve(if spec == "fmnist" { "mae-fmnist" } else { spec })?;
    if let Some(r) = m.mask_ratio {
        config.mask_ratio = r;
    }
    config.norm_pix_loss |= m.norm_pix_loss;
    config.validate()?;
    Ok(config)
}

/// `whitebox mae train`: masked-autoencoder pre-training with the classifier's training machinery.
pub fn train(m: MaeTrainArgs) -> Result<()> {
    let a = &m.train;
    let device = Default::default();
    let t_start = Instant::now();
    refuse_flags(
        a,
        &["arch", "label_smoothing", "measure_every"],
        "`mae train` (a masked autoencoder has no classifier layers or labels)",
    )?;
    let _lock = whitebox::train::checkpoint::RunLock::acquire(&a.run_dir)?;
    let saved = Saved {
        read_config: MaeConfig::from_json_file,
        init: |c: &MaeConfig, d| c.init::<TrainBackend>(d),
        read_weights: image_run::model_weights,
    };
    let mut started = if a.resume {
        saved.resume(&a.run_dir, |run, state| {
            let wanted = mae_config(&m)?;
            // --config names the model; --mask-ratio and --norm-pix-loss are checked on their own
            let same = || {
                let mut c = wanted.clone();
                (c.mask_ratio, c.norm_pix_loss) = (run.mask_ratio, run.norm_pix_loss);
                same_json(&c, run)
            };
            resume_check(a, recipe_from(a, run.img_size)?, state)
                .fields(&wanted, run, &[])
                .model(&a.config, same)
                .check(&a.run_dir)
        })?
    } else {
        let config = mae_config(&m)?;
        let state = fresh_state(recipe_from(a, config.img_size)?, a);
        saved.fresh(&a.run_dir, a.overwrite, config, state, init_weights(a)?)?
    };
    let config = started.config.clone();
    let run = image_run(a);
    let input = [config.in_chans, config.img_size, config.img_size];
    let (train_set, test_set) = run.splits(&mut started.state, input, None)?;
    tracing::info!(
        "MAE pre-training {} params on {} images ({} test) from {}, mask ratio {}, {} epochs",
        config.param_count(),
        train_set.len(),
        test_set.len(),
        a.data.data.display(),
        config.mask_ratio,
        started.state.recipe.epochs
    );
    let norm = started.state.normalization.clone();
    // masked-patch loss of the starting weights, for the log and the JSON summary
    let start_loss = if started.state.step == 0 {
        Some(evaluate_mae(&started.model.valid(), &test_set, &norm, 500, &device)?.loss)
    } else {
        None
    };
    let end = run.fit(&Reconstruct { config }, started, &train_set, &test_set)?;
    let loss = end.eval.loss;
    println!(
        "test masked-patch loss {:.4}{}  ({} epochs, weights in {})",
        loss,
        start_loss.map_or(String::new(), |s| format!(" (at step 0: {s:.4})")),
        end.state.epoch,
        end.weights.display()
    );
    if a.json {
        println!(
            "{}",
            json!({"test_loss": loss, "start_test_loss": start_loss, "epochs": end.state.epoch,
                   "steps": end.state.step, "seconds": t_start.elapsed().as_secs_f64(),
                   "train_seconds": end.state.seconds, "weights": end.weights})
        );
    }
    Ok(())
}

/// `whitebox mae reconstruct`: a PNG grid, one column per test image; rows are the original,
/// the masked input (removed patches grey) and the reconstruction (visible patches pasted back
/// over the prediction, as in the MAE visualisations).
pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    let device = Default::default();
    let l = load(&a.weights)?.into_mae()?;
    let norm = norm_or_train(l.normalization(l.config.in_chans)?, &a.data)?;
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
    let norm = norm_or_train(l.normalization(l.config[0])?, &a.data)?;
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
