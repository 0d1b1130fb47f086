//! `whitebox attention`, `whitebox pca` and `whitebox report`: pictures of what a trained CRATE
//! attends to and how its features group, drawn from the weights of a run.

use crate::cli::output::outln;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use super::commands::{load, load_split};
use super::{DataArgs, WeightArgs};
use whitebox::data::{Format, Split};
use whitebox::viz::maps::{attention_grid, look, pca_grid, test_pixels, Looked, PcaOptions};
use whitebox::viz::report::run_report;
use whitebox::viz::save_png;
use whitebox::weights::write_atomic;

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

fn look_at_files(p: &PictureArgs) -> Result<Looked> {
    let l = load(&p.weights)?.into_crate()?;
    let c = l.config.channels;
    let (pixels, size) = match &p.data {
        Some(dir) => test_pixels(dir, p.format, p.count, c, p.size)?,
        None => {
            let size = p.size.unwrap_or(l.config.image_size);
            let read = |path: &PathBuf| whitebox::data::folder::read_image(path, c, size);
            (p.images.iter().map(read).collect::<Result<_>>()?, size)
        }
    };
    let norm = l.normalization_or_half(c)?;
    look(l.model, &l.config, &norm, &pixels, size, p.layer, p.cell)
}

pub fn attention(a: AttentionArgs) -> Result<()> {
    let l = look_at_files(&a.p)?;
    let img = attention_grid(&l.view, &l.display, l.grid)?;
    save_png(&a.p.out, &img)?;
    outln!(
        "wrote {} ({}×{}: per image the input, the head average, then {} heads)",
        a.p.out.display(),
        img.width(),
        img.height(),
        l.view.heads
    )?;
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
    outln!(
        "wrote {} ({}×{}: per image the input and its PCA features)",
        a.p.out.display(),
        img.width(),
        img.height()
    )?;
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<()> {
    let test = match load_split(&a.data, Split::Test, None) {
        Ok(set) => Some(set),
        Err(e) => {
            tracing::warn!("no test data for measures and pictures: {e:#}");
            None
        }
    };
    let test = test.as_ref().map(|set| (a.data.data.as_path(), set));
    let (page, epochs) = run_report(&a.run_dir, test, a.images, a.measure_images)?;
    let out = a.out.unwrap_or_else(|| a.run_dir.join("report.html"));
    write_atomic(&out, page.as_bytes())?;
    outln!("wrote {} ({} epochs)", out.display(), epochs)?;
    Ok(())
}
