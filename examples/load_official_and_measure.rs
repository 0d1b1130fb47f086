//! Load CRATE weights (an official `.pth`/`.pth.tar` or a whitebox `.safetensors`) and print the
//! white-box measures layer by layer: the official compression R^c of the MSSA input and the
//! sparsity of the ISTA output.
//! `cargo run --release --example load_official_and_measure -- WEIGHTS CONFIG [DATA_DIR]`
//! CONFIG is a preset (`crate-tiny`, `crate-small`, …) or a JSON file of the official `CRATE`
//! constructor arguments. Without DATA_DIR the batch is random.

use burn::tensor::{Distribution, Tensor};
use whitebox::data::{self, Augment, Batcher, Format, Normalization, Split};
use whitebox::measure::{measure_batch, LayerCurves, MeasureSettings};
use whitebox::model::CrateConfig;
use whitebox::weights::{apply_state_dict, read_state_dict};
use whitebox::InferBackend;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 2, "usage: WEIGHTS CONFIG [DATA_DIR]");
    let config = CrateConfig::resolve(&args[1])?;
    let device = Default::default();
    let sd = read_state_dict(std::path::Path::new(&args[0]))?;
    let (model, report) = apply_state_dict(config.init::<InferBackend>(&device), &sd, true)?;
    println!(
        "loaded {} ({} tensors; {})",
        args[0],
        sd.len(),
        report.describe()
    );

    let (c, s) = (config.channels, config.image_size);
    let x = match args.get(2) {
        Some(dir) => {
            let mut set = data::load(std::path::Path::new(dir), Format::Auto, Split::Test)?;
            set.truncate(64);
            let batcher = Batcher {
                norm: Normalization::from_set(&set),
                augment: Augment::none(),
            };
            let idx: Vec<usize> = (0..set.len()).collect();
            batcher
                .batch::<InferBackend>(&set, &idx, &mut data::batch_rng(0, 0, 0), &device)
                .0
        }
        None => Tensor::random([8, c, s, s], Distribution::Normal(0.0, 1.0), &device),
    };
    let m = measure_batch(&model, x, MeasureSettings::default())?;
    let curves = LayerCurves::from_measures(&m, config.depth)?;
    println!(
        "{:>5} {:>16} {:>14}",
        "layer", "R^c (official)", "nonzero frac"
    );
    for l in 0..config.depth {
        println!(
            "{l:>5} {:>9.3} ± {:<5.3} {:>13.3}",
            curves.rc_mean[l], curves.rc_std[l], curves.sparsity_mean[l]
        );
    }
    Ok(())
}
