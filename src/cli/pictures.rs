//! `whitebox attention`, `whitebox pca` and `whitebox report`: pictures of what a trained CRATE
//! attends to and how its features group, drawn from the weights of a run.

use anyhow::{ensure, Context, Result};
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use image::RgbImage;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::commands::{load, load_split, normalize_chw, read_image};
use super::{DataArgs, WeightArgs};
use crate::data::{Format, Normalization, Split};
use crate::model::inspect::{inspect_layer, LayerView};
use crate::model::posembed::at_resolution;
use crate::model::{Crate, CrateConfig};
use crate::train::{measure_curves, Checkpoint, EpochMetrics};
use crate::viz::maps::{attention_grid, display_image, pca_grid, PcaOptions};
use crate::viz::report::{render_html, ReportInput};
use crate::viz::save_png;
use crate::weights::{write_atomic, Weights};
use crate::InferBackend;

#[derive(Args, Debug)]
pub struct PictureArgs {
    #[command(flatten)]
    pub weights: WeightArgs,
    /// Layer to look at, 0-based (default: the last).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Resize the images to this many pixels per side (default: the trained size); at another
    /// size the position embedding is interpolated bicubically.
    #[arg(long)]
    pub size: Option<usize>,
    /// Side of each picture cell in pixels (default: the smallest multiple of the size ≥ 128).
    #[arg(long)]
    pub cell: Option<u32>,
    /// Output PNG.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Take the first --count test images of this data folder instead of image files.
    #[arg(long, conflicts_with = "images")]
    pub data: Option<PathBuf>,
    #[arg(long, value_parser = super::values::FormatChoice::parser(), default_value = "auto")]
    pub format: Format,
    /// Number of test images taken from --data.
    #[arg(long, default_value_t = 4)]
    pub count: usize,
    /// PNG or JPEG files.
    #[arg(required_unless_present = "data")]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AttentionArgs {
    #[command(flatten)]
    pub p: PictureArgs,
}

#[derive(Args, Debug)]
pub struct PcaArgs {
    #[command(flatten)]
    pub p: PictureArgs,
    /// Show components 2–4 as RGB, as the official pca_visualization does (default: 1–3).
    #[arg(long)]
    pub skip_first: bool,
    /// Black out patches whose min–max scaled first component is at most this (foreground mask).
    #[arg(long)]
    pub mask_threshold: Option<f32>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory (metrics.jsonl and checkpoint/ as written by `whitebox train`).
    pub run_dir: PathBuf,
    /// Test images for the measures and pictures (same layout as for training).
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of test images drawn as attention and PCA maps.
    #[arg(long, default_value_t = 6)]
    pub images: usize,
    /// Number of test images the per-layer measures use.
    #[arg(long, default_value_t = 256)]
    pub measure_images: usize,
    /// Output file (default: RUN_DIR/report.html).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

/// A CRATE classifier loaded for pictures.
type Loaded = Weights<CrateConfig, Crate<InferBackend>>;

fn normalization(l: &Loaded) -> Result<Normalization> {
    let c = l.config.channels;
    Ok(l.normalization(c)?.unwrap_or_else(|| {
        tracing::warn!("no normalisation stored with the weights; using mean 0.5, std 0.5");
        Normalization {
            mean: vec![0.5; c],
            std: vec![0.5; c],
        }
    }))
}

/// A batch of images (u8 CHW each) through the model up to `layer`, with display copies.
struct Looked {
    view: LayerView,
    display: Vec<RgbImage>,
    grid: usize,
}

fn look(
    l: Loaded,
    pixels: &[Vec<u8>],
    size: usize,
    layer: Option<usize>,
    cell: Option<u32>,
) -> Result<Looked> {
    let cfg = l.config.clone();
    let norm = normalization(&l)?;
    let model = at_resolution(l.model, cfg.image_size, size)?;
    let depth = cfg.depth;
    let layer = layer.unwrap_or(depth.saturating_sub(1));
    ensure!(
        layer < depth,
        "--layer {layer} is out of range: the model has {depth} layers (0..={})",
        depth.saturating_sub(1)
    );
    let c = cfg.channels;
    let x: Vec<f32> = pixels
        .iter()
        .flat_map(|px| normalize_chw(px, &norm))
        .collect();
    let device = Default::default();
    let x = Tensor::<InferBackend, 4>::from_data(
        TensorData::new(x, [pixels.len(), c, size, size]),
        &device,
    );
    let view = inspect_layer(&model, x, layer)?;
    let cell = cell.unwrap_or_else(|| (size as u32) * 128u32.div_ceil(size as u32));
    let display = pixels
        .iter()
        .map(|px| display_image(px, c, size, size, cell))
        .collect();
    Ok(Looked {
        view,
        display,
        grid: size / cfg.patch_size,
    })
}

fn look_at_files(p: &PictureArgs) -> Result<Looked> {
    let l = load(&p.weights)?.into_crate()?;
    let c = l.config.channels;
    if let Some(dir) = &p.data {
        let set = load_split(
            &DataArgs {
                data: dir.clone(),
                format: p.format,
            },
            Split::Test,
            Some(p.count),
        )?;
        ensure!(
            !set.is_empty(),
            "{}: the test split has no images",
            dir.display()
        );
        ensure!(
            set.channels == c && set.height == set.width,
            "{}: images are {}×{}×{}, the model takes {c} channels and square images",
            dir.display(),
            set.channels,
            set.height,
            set.width
        );
        let size = p.size.unwrap_or(set.height);
        ensure!(
            size == set.height,
            "--size {size} differs from the {}-pixel images of {}",
            set.height,
            dir.display()
        );
        let pixels: Vec<Vec<u8>> = (0..set.len()).map(|i| set.image(i).to_vec()).collect();
        return look(l, &pixels, size, p.layer, p.cell);
    }
    let size = p.size.unwrap_or(l.config.image_size);
    let pixels = p
        .images
        .iter()
        .map(|path| read_image(path, c, size))
        .collect::<Result<Vec<_>>>()?;
    look(l, &pixels, size, p.layer, p.cell)
}

pub fn attention(a: AttentionArgs) -> Result<()> {
    let l = look_at_files(&a.p)?;
    let img = attention_grid(&l.view, &l.display, l.grid)?;
    save_png(&a.p.out, &img)?;
    println!(
        "wrote {} ({}×{}: per image the input, the head average, then {} heads)",
        a.p.out.display(),
        img.width(),
        img.height(),
        l.view.heads
    );
    Ok(())
}

pub fn pca(a: PcaArgs) -> Result<()> {
    let l = look_at_files(&a.p)?;
    let opt = PcaOptions {
        skip_first: a.skip_first,
        mask_threshold: a.mask_threshold,
    };
    let img = pca_grid(&l.view, &l.display, l.grid, opt)?;
    save_png(&a.p.out, &img)?;
    println!(
        "wrote {} ({}×{}: per image the input and its PCA features)",
        a.p.out.display(),
        img.width(),
        img.height()
    );
    Ok(())
}

/// Every epoch recorded in `metrics.jsonl`; a resumed run's repeated epochs keep the last entry.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out: Vec<EpochMetrics> = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let m: EpochMetrics = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a metrics record", path.display(), i + 1))?;
        out.retain(|o| o.epoch != m.epoch);
        out.push(m);
    }
    out.sort_by_key(|m| m.epoch);
    Ok(out)
}

pub fn report(a: ReportArgs) -> Result<()> {
    let metrics = read_metrics(&a.run_dir.join("metrics.jsonl"))?;
    let ckpt = Checkpoint::dir(&a.run_dir).join("model.safetensors");
    ensure!(
        ckpt.exists(),
        "{}: no checkpoint (expected {})",
        a.run_dir.display(),
        ckpt.display()
    );
    let w = WeightArgs {
        weights: ckpt,
        config: None,
        strict: true,
    };
    let device = Default::default();
    let l = load(&w)?.into_crate()?;
    let cfg = l.config.clone();
    let mut final_curves = None;
    let mut pictures = Vec::new();
    match load_split(&a.data, Split::Test, None) {
        Ok(set) => {
            ensure!(
                set.channels == cfg.channels
                    && set.height == cfg.image_size
                    && set.width == cfg.image_size,
                "{}: images are {}×{}×{}, the model of {} expects {}×{}×{}",
                a.data.data.display(),
                set.channels,
                set.height,
                set.width,
                a.run_dir.display(),
                cfg.channels,
                cfg.image_size,
                cfg.image_size
            );
            let norm = normalization(&l)?;
            let curves = measure_curves(&l.model, &set, &norm, a.measure_images, &device)?;
            final_curves = Some((
                format!(
                    "final weights, {} test images",
                    a.measure_images.min(set.len())
                ),
                curves,
            ));
            let k = a.images.min(set.len());
            if k > 0 {
                let pixels: Vec<Vec<u8>> = (0..k).map(|i| set.image(i).to_vec()).collect();
                let names: Vec<String> = (0..k)
                    .map(|i| {
                        set.class_names
                            .get(set.labels[i] as usize)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                let last = cfg.depth - 1;
                let look_a = look(l, &pixels, cfg.image_size, None, None)?;
                pictures.push((
                    format!(
                        "Attention of the cls token at layer {last} ({}): per row the input, the average over heads, then each head",
                        names.join(", ")
                    ),
                    attention_grid(&look_a.view, &look_a.display, look_a.grid)?,
                ));
                pictures.push((
                    format!("PCA of the layer-{last} features U^T LN(Z): first three components as RGB, fitted over these images"),
                    pca_grid(&look_a.view, &look_a.display, look_a.grid, PcaOptions::default())?,
                ));
            }
        }
        Err(e) => tracing::warn!("no test data for measures and pictures: {e:#}"),
    }
    let page = render_html(&ReportInput {
        title: format!("whitebox run {}", a.run_dir.display()),
        config_json: serde_json::to_string_pretty(&cfg)?,
        parameters: cfg.param_count(),
        metrics: &metrics,
        final_curves,
        pictures,
    })?;
    let out = a.out.unwrap_or_else(|| a.run_dir.join("report.html"));
    write_atomic(&out, page.as_bytes())?;
    println!("wrote {} ({} epochs)", out.display(), metrics.len());
    Ok(())
}
