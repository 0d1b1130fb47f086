//! Token maps drawn over the image: the cls-row attention of each MSSA head (the saliency maps of
//! the CRATE emergence work) and a PCA of the subspace features `U^lᵀ LN₁(Z^l)` as RGB.

use anyhow::{ensure, Result};
use image::{imageops::FilterType, ImageBuffer, Luma, Rgb, RgbImage};
use nalgebra::{DMatrix, SymmetricEigen};

use super::{heat_color, min_max};
use crate::data::{Format, ImageSet, Normalization, Split};
use crate::model::inspect::{inspect_layer, LayerView};
use crate::model::mae::CrateMae;
use crate::model::posembed::at_resolution;
use crate::model::{Crate, CrateBackend, CrateConfig};
use burn::tensor::{Tensor, TensorData};
use rand::{rngs::StdRng, SeedableRng};
use std::path::Path;

/// Display copy of an image given as u8 CHW pixels (1 or 3 channels), scaled to `cell` pixels.
pub fn display_image(px: &[u8], c: usize, h: usize, w: usize, cell: u32) -> RgbImage {
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        if c == 3 {
            Rgb([px[i], px[h * w + i], px[2 * h * w + i]])
        } else {
            Rgb([px[i]; 3])
        }
    });
    image::imageops::resize(&img, cell, cell, FilterType::Nearest)
}

/// Bilinear upsampling of a `g × g` map (row-major) to `size × size`.
pub fn upsample(map: &[f32], g: usize, size: u32) -> Vec<f32> {
    let small: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(g as u32, g as u32, map.to_vec()).expect("g × g map");
    image::imageops::resize(&small, size, size, FilterType::Triangle).into_raw()
}

/// `base` with a viridis heat map blended over it (`heat` in [0, 1], one value per pixel).
pub fn overlay(base: &RgbImage, heat: &[f32], alpha: f32) -> RgbImage {
    let mut out = base.clone();
    for (p, &v) in out.pixels_mut().zip(heat) {
        let c = heat_color(v);
        for k in 0..3 {
            p[k] = ((1.0 - alpha) * p[k] as f32 + alpha * c[k] as f32).round() as u8;
        }
    }
    out
}

/// Normalised f32 CHW images (planes of `hw` pixels, channels as in `norm`) back to u8 pixels
/// `v·std_c + mean_c` clamped to [0, 1]; where `grey` is above 0.5 the pixel is mid-grey.
pub fn denormalize(
    x: &[f32],
    grey: Option<&[f32]>,
    hw: usize,
    norm: &crate::data::Normalization,
) -> Vec<u8> {
    let c = norm.mean.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = if grey.is_some_and(|g| g[i] > 0.5) {
                0.5
            } else {
                let k = (i / hw) % c;
                v * norm.std[k] + norm.mean[k]
            };
            (v.clamp(0.0, 1.0) * 255.0).round() as u8
        })
        .collect()
}

/// One row per pixel buffer (`n` images of u8 CHW, `c × s × s` each), each image a `cell`-pixel
/// display copy, without padding.
pub fn image_rows(rows: &[Vec<u8>], n: usize, c: usize, s: usize, cell: u32) -> RgbImage {
    let len = c * s * s;
    let cells: Vec<Vec<RgbImage>> = rows
        .iter()
        .map(|px| {
            (0..n)
                .map(|i| display_image(&px[i * len..(i + 1) * len], c, s, s, cell))
                .collect()
        })
        .collect();
    grid(&cells, 0)
}

/// A batch of images (u8 CHW each) through a CRATE up to a layer, with display copies: what
/// [`attention_grid`] and [`pca_grid`] draw.
pub struct Looked {
    pub view: LayerView,
    pub display: Vec<RgbImage>,
    /// Patches per side.
    pub grid: usize,
}

/// The first `count` test images of the data folder `dir` as u8 CHW pixels, with their side;
/// they must have `channels` channels, be square and (when given) `size` pixels wide.
pub fn test_pixels(
    dir: &Path,
    format: Format,
    count: usize,
    channels: usize,
    size: Option<usize>,
) -> Result<(Vec<Vec<u8>>, usize)> {
    let set = crate::train::image_run::load_split(dir, format, Split::Test, Some(count))?;
    ensure!(
        !set.is_empty(),
        "{}: the test split has no images",
        dir.display()
    );
    ensure!(
        set.channels == channels && set.height == set.width,
        "{}: images are {}×{}×{}, the model takes {channels} channels and square images",
        dir.display(),
        set.channels,
        set.height,
        set.width
    );
    let side = size.unwrap_or(set.height);
    ensure!(
        side == set.height,
        "--size {side} differs from the {}-pixel images of {}",
        set.height,
        dir.display()
    );
    Ok((
        (0..set.len()).map(|i| set.image(i).to_vec()).collect(),
        side,
    ))
}

/// Images of `size` pixels (u8 CHW, normalised with `norm`) through `model` (its position
/// embedding resampled from the trained size) up to `layer` (default: the last), and display
/// copies of `cell` pixels (default: the smallest multiple of the size ≥ 128).
pub fn look<B: CrateBackend>(
    model: Crate<B>,
    cfg: &CrateConfig,
    norm: &Normalization,
    pixels: &[Vec<u8>],
    size: usize,
    layer: Option<usize>,
    cell: Option<u32>,
) -> Result<Looked> {
    let model = at_resolution(model, cfg.image_size, size)?;
    let depth = cfg.depth;
    let layer = layer.unwrap_or(depth.saturating_sub(1));
    ensure!(
        layer < depth,
        "--layer {layer} is out of range: the model has {depth} layers (0..={})",
        depth.saturating_sub(1)
    );
    let c = cfg.channels;
    let x: Vec<f32> = pixels.iter().flat_map(|px| norm.apply_chw(px)).collect();
    let x = Tensor::<B, 4>::from_data(
        TensorData::new(x, [pixels.len(), c, size, size]),
        &Default::default(),
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

/// Rows of equally sized cells on a white background with `pad` pixels between them.
pub fn grid(rows: &[Vec<RgbImage>], pad: u32) -> RgbImage {
    let cell = rows
        .first()
        .and_then(|r| r.first())
        .map_or(1, |c| c.width());
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let (w, h) = (
        cols * cell + (cols + 1) * pad,
        rows.len() as u32 * cell + (rows.len() as u32 + 1) * pad,
    );
    let mut out = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x = pad + c as u32 * (cell + pad);
            let y = pad + r as u32 * (cell + pad);
            image::imageops::replace(&mut out, img, x as i64, y as i64);
        }
    }
    out
}

/// Padding between cells of the picture grids.
pub const PAD: u32 = 4;

/// Per image one row: the image, the head-averaged cls attention, then each head's cls attention
/// over the patch grid (`g × g`), each map min–max scaled and upsampled to the cell.
pub fn attention_grid(view: &LayerView, images: &[RgbImage], g: usize) -> Result<RgbImage> {
    ensure!(
        view.n == g * g + 1,
        "{} tokens do not form a {g}×{g} grid plus cls",
        view.n
    );
    ensure!(images.len() == view.b, "one display image per input image");
    let mut rows = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let cell = img.width();
        let mut mean = vec![0f32; g * g];
        let mut heads = Vec::new();
        for h in 0..view.heads {
            let a = view.cls_attention(i, h);
            for (m, v) in mean.iter_mut().zip(a) {
                *m += v / view.heads as f32;
            }
            heads.push(overlay(img, &upsample(&min_max(a), g, cell), 0.6));
        }
        let mut row = vec![
            img.clone(),
            overlay(img, &upsample(&min_max(&mean), g, cell), 0.6),
        ];
        row.extend(heads);
        rows.push(row);
    }
    Ok(grid(&rows, PAD))
}

/// Principal components of the rows of `x` `[rows, cols]`: the projections `[rows, k]` onto the
/// `k` leading eigenvectors of the covariance (each signed so its largest entry is positive) and
/// the explained variances.
pub fn pca(x: &[f32], rows: usize, cols: usize, k: usize) -> Result<(Vec<f32>, Vec<f64>)> {
    ensure!(
        rows >= 2,
        "PCA needs at least 2 feature vectors, got {rows}"
    );
    ensure!(
        k <= cols,
        "asked for {k} components of {cols}-dimensional features"
    );
    let mut m = DMatrix::<f64>::from_row_iterator(rows, cols, x.iter().map(|v| *v as f64));
    for c in 0..cols {
        let mean = m.column(c).mean();
        m.column_mut(c).add_scalar_mut(-mean);
    }
    let cov = (m.transpose() * &m) / (rows as f64 - 1.0);
    let eig = SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..cols).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut proj = vec![0f32; rows * k];
    let mut var = Vec::with_capacity(k);
    for (j, &e) in order.iter().take(k).enumerate() {
        let mut v = eig.eigenvectors.column(e).into_owned();
        let imax = v.iamax();
        if v[imax] < 0.0 {
            v = -v;
        }
        let p = &m * v;
        for r in 0..rows {
            proj[r * k + j] = p[r] as f32;
        }
        var.push(eig.eigenvalues[e]);
    }
    Ok((proj, var))
}

/// Options of the PCA picture.
#[derive(Debug, Clone, Copy, Default)]
pub struct PcaOptions {
    /// Show components 2–4 as RGB (as the official `pca_visualization` does) instead of 1–3.
    pub skip_first: bool,
    /// Foreground mask: keep patches whose min–max scaled first component exceeds this.
    pub mask_threshold: Option<f32>,
}

/// Per image one row: the image and its patch features' PCA as RGB, fitted jointly over all
/// images, each component min–max scaled over all patches.
pub fn pca_grid(
    view: &LayerView,
    images: &[RgbImage],
    g: usize,
    opt: PcaOptions,
) -> Result<RgbImage> {
    ensure!(
        view.n == g * g + 1,
        "{} tokens do not form a {g}×{g} grid plus cls",
        view.n
    );
    ensure!(images.len() == view.b, "one display image per input image");
    ensure!(
        view.inner >= 4,
        "PCA pictures need features of width ≥ 4, this layer has {}",
        view.inner
    );
    let per = g * g;
    let mut feats = Vec::with_capacity(view.b * per * view.inner);
    for i in 0..view.b {
        feats.extend_from_slice(view.patch_features(i));
    }
    let k = if opt.skip_first { 4 } else { 3 };
    let (proj, _) = pca(&feats, view.b * per, view.inner, k)?;
    let comp = |j: usize| -> Vec<f32> {
        min_max(
            &(0..view.b * per)
                .map(|r| proj[r * k + j])
                .collect::<Vec<_>>(),
        )
    };
    let first = comp(0);
    let rgb: Vec<Vec<f32>> = (k - 3..k).map(comp).collect();
    let mut rows = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let cell = img.width();
        let chans: Vec<Vec<f32>> = rgb
            .iter()
            .map(|c| upsample(&c[i * per..(i + 1) * per], g, cell))
            .collect();
        let mask = opt.mask_threshold.map(|t| {
            upsample(&first[i * per..(i + 1) * per], g, cell)
                .into_iter()
                .map(move |v| v > t)
        });
        let mut out = RgbImage::new(cell, cell);
        for (j, p) in out.pixels_mut().enumerate() {
            for c in 0..3 {
                p[c] = (255.0 * chans[c][j]).round() as u8;
            }
        }
        if let Some(mask) = mask {
            for (p, keep) in out.pixels_mut().zip(mask) {
                if !keep {
                    *p = Rgb([0, 0, 0]);
                }
            }
        }
        rows.push(vec![img.clone(), out]);
    }
    Ok(grid(&rows, PAD))
}

/// CRATE-MAE's picture of `set` (up to its first images, all of one batch): one column per image,
/// rows the original, the masked input (removed patches grey) and the reconstruction (visible
/// patches pasted back over the prediction, as in the MAE papers), `scale` times enlarged.
/// `seed` draws the masks at the model's mask ratio.
pub fn reconstruction_grid<B: CrateBackend>(
    model: &CrateMae<B>,
    set: &ImageSet,
    norm: &Normalization,
    seed: u64,
    scale: u32,
    device: &B::Device,
) -> RgbImage {
    let x = norm.batch_all::<B>(set, device);
    let masking = model.masking(set.len(), None, &mut StdRng::seed_from_u64(seed));
    let r = model.reconstruct(x.clone(), masking);
    let f32s = |t: Tensor<B, 4>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let (x, removed) = (f32s(x), f32s(r.removed));
    let s = set.height;
    let px = |v: &[f32], grey| denormalize(v, grey, s * s, norm);
    let rows = [
        px(&x, None),
        px(&x, Some(&removed)),
        px(&f32s(r.pasted), None),
    ];
    image_rows(
        &rows,
        set.len(),
        set.channels,
        s,
        (s * scale.max(1) as usize) as u32,
    )
}
