//! An image run through the library alone (`train::image_run`): a fresh start refuses a folder
//! that holds a run, `--resume`'s check names the differing setting, and a run stopped after an
//! epoch and resumed ends with the same weights as a straight run.

use crate::common;

use std::path::Path;
use whitebox::data::{Augment, Format};
use whitebox::model::CrateConfig;
use whitebox::train::image_run::{self, Finished, ImageRun, Saved};
use whitebox::train::resume::ResumeCheck;
use whitebox::train::{train_classifier, Classify, Recipe, RunOptions};
use whitebox::TrainBackend;

fn recipe(lr: f64) -> Recipe {
    Recipe {
        epochs: 2,
        batch_size: 16,
        lr,
        warmup_epochs: 0.0,
        seed: 3,
        augment: Augment::none(),
        ..Recipe::MAIN_JOB
    }
}

/// A one-layer CRATE for the 28×28 grey images of `write_idx_classes`.
fn config() -> CrateConfig {
    serde_json::from_str(
        r#"{"image_size": 28, "patch_size": 7, "num_classes": 10, "dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "channels": 1}"#,
    )
    .unwrap()
}

const SAVED: Saved<CrateConfig, whitebox::model::Crate<TrainBackend>> = Saved {
    read_config: CrateConfig::from_json_file,
    init: |c: &CrateConfig, d| c.init::<TrainBackend>(d),
    read_weights: image_run::model_weights,
};

fn run(data: &Path, run_dir: &Path, stop_after: Option<usize>) -> ImageRun {
    ImageRun {
        data: data.to_path_buf(),
        format: Format::Auto,
        run_dir: run_dir.to_path_buf(),
        options: RunOptions {
            stop_after,
            ..Default::default()
        },
        measure_every: 0,
        measure_images: 0,
    }
}

/// Train the started run to its end (or `stop_after` epochs) on the run's splits.
fn train(
    r: &ImageRun,
    mut started: image_run::Started<CrateConfig, whitebox::model::Crate<TrainBackend>>,
) -> Finished {
    let (train, test) = r.splits(&mut started.state, [1, 28, 28], Some(10)).unwrap();
    let task = Classify::new(config(), 0.1, &Default::default());
    r.fit(&task, started, &train, &test).unwrap()
}

#[test]
fn refuses_overwrite_checks_resume_and_resumes_exactly() {
    let _serial = crate::serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::write_idx_classes(&data, "train", 64, 0);
    common::write_idx_classes(&data, "t10k", 32, 5);
    let fresh_state = |lr| image_run::fresh_state(recipe(lr), &data, None, None);

    let straight_dir = dir.path().join("straight");
    let straight = run(&data, &straight_dir, None);
    let started = SAVED
        .fresh(&straight_dir, false, config(), fresh_state(2e-3), None)
        .unwrap();
    let end = train(&straight, started);
    assert_eq!((end.state.epoch, end.state.step), (2, 8));
    assert!(end.last.is_some() && end.eval.n == 32);

    // a fresh start over a run is refused unless asked to overwrite
    let e = SAVED
        .fresh(&straight_dir, false, config(), fresh_state(2e-3), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already holds a checkpoint"), "{e}");

    let split_dir = dir.path().join("split");
    let split = run(&data, &split_dir, Some(1));
    let started = SAVED
        .fresh(&split_dir, false, config(), fresh_state(2e-3), None)
        .unwrap();
    assert_eq!(train(&split, started).state.epoch, 1);

    // --lr given with another value: the check names it and nothing is restored
    let given = vec!["lr".to_string()];
    let e = SAVED
        .resume(&split_dir, |_, state| {
            ResumeCheck::new(&given)
                .fields(&fresh_state(0.1), state, &[])
                .check(&split_dir)
        })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--lr 0.1 (the run has 0.002)"), "{e}");

    let started = SAVED
        .resume(&split_dir, |_, state| {
            ResumeCheck::new(&given)
                .fields(&fresh_state(2e-3), state, &[])
                .check(&split_dir)
        })
        .unwrap();
    let resumed = train(&run(&data, &split_dir, None), started);
    assert_eq!((resumed.state.epoch, resumed.state.step), (2, 8));
    let bytes = |d: &Path| std::fs::read(d.join("checkpoint/model.safetensors")).unwrap();
    assert!(
        bytes(&straight_dir) == bytes(&split_dir),
        "the resumed run's weights differ from the straight run's"
    );
    assert_eq!(resumed.eval.top1, end.eval.top1);

    // resuming a finished run trains no further and evaluates the weights as saved
    let started = SAVED.resume(&split_dir, |_, _| Ok(())).unwrap();
    let again = train(&run(&data, &split_dir, None), started);
    assert!(again.last.is_none());
    assert_eq!(again.state.step, 8);
    assert!(
        (again.eval.loss - end.eval.loss).abs() < 1e-6,
        "{} vs {}",
        again.eval.loss,
        end.eval.loss
    );
}

/// The commands' whole runs as library calls: `train_classifier` learns the stripe classes, a
/// run stopped after an epoch and resumed through the settings ends with the straight run's
/// weights, a resume with another given setting is refused by name, and `mae::train` lowers its
/// masked-patch loss; `mae::train` refuses a classifier setting.
#[test]
fn commands_run_as_library_calls() {
    let _serial = crate::serial();
    use whitebox::train::image_run::ImageTrainSettings;
    use whitebox::train::mae::{self, MaeTrainSettings};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    common::write_idx_classes(&data, "train", 160, 0);
    common::write_idx_classes(&data, "t10k", 40, 5);
    let spec = dir.path().join("crate.json");
    std::fs::write(&spec, serde_json::to_string(&config()).unwrap()).unwrap();
    let recipe = Recipe {
        epochs: 6,
        ..recipe(4e-3)
    };
    let settings = |run_dir: &str| {
        ImageTrainSettings::new(
            spec.to_str().unwrap(),
            &data,
            &dir.path().join(run_dir),
            recipe.clone(),
        )
    };

    let straight = train_classifier(&settings("straight")).unwrap();
    assert_eq!((straight.epochs, straight.steps), (6, 60));
    // ten classes: chance is 10 %; the stripes are learnt
    assert!(
        straight.test_acc >= 0.5,
        "test accuracy {}",
        straight.test_acc
    );
    assert!(straight.to_string().starts_with("test accuracy "));

    let mut first = settings("split");
    first.run.options.stop_after = Some(2);
    assert_eq!(train_classifier(&first).unwrap().epochs, 2);
    let mut resume = settings("split");
    resume.resume = true;
    resume.given = vec!["lr".into()];
    resume.recipe.lr = 0.1;
    let e = train_classifier(&resume).err().unwrap().to_string();
    assert!(e.contains("--lr 0.1 (the run has 0.004)"), "{e}");
    resume.recipe.lr = 4e-3;
    let resumed = train_classifier(&resume).unwrap();
    assert_eq!((resumed.epochs, resumed.steps), (6, 60));
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert!(bytes(&straight.weights) == bytes(&resumed.weights));
    assert_eq!(resumed.test_acc, straight.test_acc);

    let mae_spec = dir.path().join("mae.json");
    std::fs::write(
        &mae_spec,
        r#"{"arch": "crate-mae", "img_size": 28, "patch_size": 7, "in_chans": 1, "embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}"#,
    )
    .unwrap();
    let mut m = MaeTrainSettings {
        image: settings("mae"),
        mask_ratio: Some(0.5),
        norm_pix_loss: false,
    };
    m.image.config = mae_spec.to_string_lossy().into();
    m.image.given = vec!["label_smoothing".into()];
    let e = mae::train(&m).err().unwrap().to_string();
    assert!(e.contains("--label-smoothing does not apply"), "{e}");
    m.image.given.clear();
    let out = mae::train(&m).unwrap();
    let start = out.start_test_loss.unwrap();
    assert!(out.test_loss < 0.9 * start, "{} vs {start}", out.test_loss);
}
