//! Position embeddings at another input resolution: the patch part of the learned embedding is
//! resampled bicubically on its 2-D grid and the cls slot is kept, as the official
//! `interpolate_pos_encoding` (DINO's) does: `F.interpolate(mode="bicubic",
//! scale_factor=(g_out + 0.1)/g_in)`, `align_corners=False`, no antialiasing.

use anyhow::{ensure, Result};
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

use super::{Crate, CrateBackend};

/// Cubic convolution kernel with A = −0.75 (PyTorch's bicubic), at distance `t`.
fn cubic(t: f64) -> f64 {
    const A: f64 = -0.75;
    let t = t.abs();
    if t <= 1.0 {
        ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0
    } else if t < 2.0 {
        ((A * t - 5.0 * A) * t + 8.0 * A) * t - 4.0 * A
    } else {
        0.0
    }
}

/// The 4 source indices (clamped to the border) and weights of each output position when a line of
/// `n_in` samples is resized to `n_out`. With DINO's `+0.1` scale factor torch maps
/// `src = (o + ½)·n_in/(n_out + 0.1) − ½` (`align_corners=False`).
fn taps(n_in: usize, n_out: usize) -> Vec<[(usize, f64); 4]> {
    let scale = n_in as f64 / (n_out as f64 + 0.1);
    (0..n_out)
        .map(|o| {
            let src = (o as f64 + 0.5) * scale - 0.5;
            let i0 = src.floor();
            let t = src - i0;
            let mut w = [(0usize, 0.0f64); 4];
            for (k, slot) in w.iter_mut().enumerate() {
                let i = (i0 as i64 + k as i64 - 1).clamp(0, n_in as i64 - 1) as usize;
                *slot = (i, cubic(t - (k as f64 - 1.0)));
            }
            w
        })
        .collect()
}

/// The bicubic resize of a `g_in × g_in` grid to `g_out × g_out` as a row-major
/// `[g_out², g_in²]` matrix (rows then columns, as [`bicubic_grid`]).
pub fn resample_matrix(g_in: usize, g_out: usize) -> Vec<f32> {
    let t = taps(g_in, g_out);
    let (nin, nout) = (g_in * g_in, g_out * g_out);
    let mut m = vec![0f64; nout * nin];
    for (oy, ty) in t.iter().enumerate() {
        for (ox, tx) in t.iter().enumerate() {
            let row = &mut m[(oy * g_out + ox) * nin..(oy * g_out + ox + 1) * nin];
            for &(iy, wy) in ty {
                for &(ix, wx) in tx {
                    row[iy * g_in + ix] += wy * wx;
                }
            }
        }
    }
    m.into_iter().map(|v| v as f32).collect()
}

/// Bicubic resize of a `[g_in, g_in, d]` grid of vectors (row-major) to `[g_out, g_out, d]`.
pub fn bicubic_grid(v: &[f32], g_in: usize, g_out: usize, d: usize) -> Vec<f32> {
    assert_eq!(v.len(), g_in * g_in * d, "grid size");
    let t = taps(g_in, g_out);
    // rows first: [g_out, g_in, d]
    let mut rows = vec![0f64; g_out * g_in * d];
    for (o, tap) in t.iter().enumerate() {
        for x in 0..g_in {
            for &(i, w) in tap {
                let src = &v[(i * g_in + x) * d..(i * g_in + x + 1) * d];
                let dst = &mut rows[(o * g_in + x) * d..(o * g_in + x + 1) * d];
                for (a, &b) in dst.iter_mut().zip(src) {
                    *a += w * b as f64;
                }
            }
        }
    }
    let mut out = vec![0f32; g_out * g_out * d];
    for y in 0..g_out {
        for (o, tap) in t.iter().enumerate() {
            let dst = &mut out[(y * g_out + o) * d..(y * g_out + o + 1) * d];
            let mut acc = vec![0f64; d];
            for &(i, w) in tap {
                let src = &rows[(y * g_in + i) * d..(y * g_in + i + 1) * d];
                for (a, &b) in acc.iter_mut().zip(src) {
                    *a += w * b;
                }
            }
            for (a, b) in dst.iter_mut().zip(acc) {
                *a = b as f32;
            }
        }
    }
    out
}

/// The model for `image_size`-pixel inputs: the position embedding's patch grid is resampled
/// bicubically (cls slot kept). A no-op at the trained resolution.
pub fn at_resolution<B: CrateBackend>(
    mut model: Crate<B>,
    trained_size: usize,
    image_size: usize,
) -> Result<Crate<B>> {
    let p = model.patch_size;
    ensure!(
        image_size >= p && image_size.is_multiple_of(p),
        "image size {image_size} is not a positive multiple of the patch size {p}"
    );
    let (g_in, g_out) = (trained_size / p, image_size / p);
    if g_in == g_out {
        return Ok(model);
    }
    let pos = model.pos_embedding.val();
    let [_, n, d] = pos.dims();
    ensure!(
        n == g_in * g_in + 1,
        "position embedding has {n} slots, expected {} for a {g_in}×{g_in} grid plus cls",
        g_in * g_in + 1
    );
    let device = pos.device();
    let v: Vec<f32> = pos.into_data().convert::<f32>().to_vec().unwrap();
    let mut out = v[..d].to_vec();
    out.extend(bicubic_grid(&v[d..], g_in, g_out, d));
    let t = Tensor::<B, 3>::from_data(TensorData::new(out, [1, g_out * g_out + 1, d]), &device);
    model.pos_embedding = Param::from_tensor(t);
    Ok(model)
}
