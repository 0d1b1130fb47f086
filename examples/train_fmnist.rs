//! Train the main job's CRATE on Fashion-MNIST through the library (no CLI), then evaluate it.
//! `cargo run --release --example train_fmnist [-- DATA_DIR EPOCHS TRAIN_LIMIT]`
//! (defaults: the Debian package's folder, 1 epoch, 6,000 training images).

use whitebox::data::{self, Format, Split};
use whitebox::model::CrateConfig;
use whitebox::train::{self, Classify, Recipe, TrainOptimizer};
use whitebox::train::{TrainRun, TrainState};
use whitebox::TrainBackend;

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or(default.into());
    let dir = std::path::PathBuf::from(arg(1, "/usr/share/datasets/fashion-mnist"));
    let (epochs, limit): (usize, usize) = (arg(2, "1").parse()?, arg(3, "6000").parse()?);
    let mut train_set = data::load(&dir, Format::Auto, Split::Train)?;
    train_set.truncate(limit);
    let test_set = data::load(&dir, Format::Auto, Split::Test)?;

    let device = Default::default();
    let config = CrateConfig::resolve("fmnist")?; // 28×28, patch 7, d 96, 6 layers, 4 heads
    let model = config.init::<TrainBackend>(&device);
    // the main job's recipe (`whitebox train`'s defaults), without warm-up for a short run
    let recipe = Recipe {
        epochs,
        warmup_epochs: 0.0,
        ..Recipe::MAIN_JOB
    };
    let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
    let mut state = TrainState::new(recipe, &dir);
    state.fill_from(&train_set); // normalisation and class names of the training split

    // checkpoints and metrics.jsonl go to a run folder of its own
    let run_dir = std::env::temp_dir().join(format!("whitebox-example-{}", std::process::id()));
    let run = TrainRun::new(&run_dir, &train_set, &test_set);
    let task = Classify::new(config, state.recipe.label_smoothing, &device);
    let last = train::fit(&run, &task, model, optim, state, &device)?.last;
    if let Some(m) = last {
        println!(
            "{} epochs: test top-1 {:.2}%, loss {:.4}",
            m.epoch,
            100.0 * m.test_acc,
            m.test_loss
        );
    }
    println!(
        "weights: {}",
        run_dir.join("checkpoint/model.safetensors").display()
    );
    Ok(())
}
