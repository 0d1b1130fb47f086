//! DINO's multi-crop views (`main_dino.py::DataAugmentationDINO`): 2 global crops and N local
//! crops per image, each a RandomResizedCrop (area fraction from `scale`, aspect ratio in
//! [3/4, 4/3], torchvision's `get_params`) resized to the view size, then a horizontal flip,
//! colour jitter (brightness, contrast; saturation and grayscale only with 3 channels), Gaussian
//! blur (p = 1 / 0.1 / 0.5 for global 1 / global 2 / local) and solarisation (global 2, p = 0.2).
//! Resizing is bilinear (the reference uses bicubic), the blur radius range 0.1–2 px of a
//! 224-px image is scaled to the image size, and hue jitter is left out. Pixels are in [0, 1];
//! every draw comes from the caller's generator, so the views are a function of the seed.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Multi-crop settings; sizes in pixels of the views (square).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MultiCrop {
    pub global_size: usize,
    pub local_size: usize,
    pub local_crops: usize,
    pub global_scale: (f64, f64),
    pub local_scale: (f64, f64),
}

/// One image's pixels in [0, 1], CHW.
pub struct Image<'a> {
    pub px: &'a [f32],
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// A crop window `(top, left, height, width)` in source pixels.
pub type Window = (usize, usize, usize, usize);

impl MultiCrop {
    /// The references' defaults for an `image_size` image and patch `patch`: global crops at the
    /// full size with scale (0.4, 1), local crops at 96/224 of it (rounded to whole patches, at
    /// least one) with scale (0.05, 0.4).
    pub fn for_image(image_size: usize, patch: usize, local_crops: usize) -> Self {
        let g = (image_size as f64 * 96.0 / 224.0 / patch as f64)
            .round()
            .max(1.0) as usize;
        Self {
            global_size: image_size,
            local_size: (g * patch).min(image_size),
            local_crops,
            global_scale: (0.4, 1.0),
            local_scale: (0.05, 0.4),
        }
    }

    pub fn ncrops(&self) -> usize {
        2 + self.local_crops
    }

    /// Views of a batch of images, view-major: `(globals [2, B, C, G, G], locals [N, B, C, L, L])`
    /// flattened. For each image the draws are made in the order global 1, global 2, locals.
    pub fn views(&self, images: &[Image], rng: &mut StdRng) -> (Vec<f32>, Vec<f32>) {
        let b = images.len();
        let c = images.first().map_or(0, |i| i.c);
        let (gs, ls) = (self.global_size, self.local_size);
        let (glen, llen) = (c * gs * gs, c * ls * ls);
        let mut globals = vec![0f32; 2 * b * glen];
        let mut locals = vec![0f32; self.local_crops * b * llen];
        for (i, img) in images.iter().enumerate() {
            for v in 0..2 {
                let out = &mut globals[(v * b + i) * glen..(v * b + i + 1) * glen];
                let (blur_p, solarize_p) = if v == 0 { (1.0, 0.0) } else { (0.1, 0.2) };
                self.view(img, gs, self.global_scale, blur_p, solarize_p, out, rng);
            }
            for v in 0..self.local_crops {
                let out = &mut locals[(v * b + i) * llen..(v * b + i + 1) * llen];
                self.view(img, ls, self.local_scale, 0.5, 0.0, out, rng);
            }
        }
        (globals, locals)
    }

    #[allow(clippy::too_many_arguments)]
    fn view(
        &self,
        img: &Image,
        size: usize,
        scale: (f64, f64),
        blur_p: f64,
        solarize_p: f64,
        out: &mut [f32],
        rng: &mut StdRng,
    ) {
        let win = random_resized_crop(img.h, img.w, scale, rng);
        resize_bilinear(img, win, size, out);
        if rng.random_bool(0.5) {
            hflip(out, img.c, size);
        }
        if rng.random_bool(0.8) {
            color_jitter(out, img.c, rng);
        }
        if img.c == 3 && rng.random_bool(0.2) {
            grayscale(out, size * size);
        }
        if blur_p >= 1.0 || rng.random_bool(blur_p) {
            let sigma = rng.random_range(0.1..2.0) * self.global_size as f64 / 224.0;
            gaussian_blur(out, img.c, size, sigma);
        }
        if solarize_p > 0.0 && rng.random_bool(solarize_p) {
            for v in out.iter_mut() {
                if *v >= 0.5 {
                    *v = 1.0 - *v;
                }
            }
        }
    }
}

/// torchvision `RandomResizedCrop.get_params`: 10 tries of area ∈ scale·H·W and log-uniform
/// aspect ratio in [3/4, 4/3]; else the centre crop at the clamped ratio.
pub fn random_resized_crop(h: usize, w: usize, scale: (f64, f64), rng: &mut StdRng) -> Window {
    let area = (h * w) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..=scale.1);
        let ratio = rng.random_range(lo..=hi).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (top, left, ch, cw);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < 3.0 / 4.0 {
        (((w as f64) / (3.0 / 4.0)).round() as usize, w)
    } else if in_ratio > 4.0 / 3.0 {
        (h, ((h as f64) * (4.0 / 3.0)).round() as usize)
    } else {
        (h, w)
    };
    ((h - ch) / 2, (w - cw) / 2, ch, cw)
}

/// Bilinear resize of window `win` of `img` to `size × size` (half-pixel centres, edge clamp).
fn resize_bilinear(img: &Image, win: Window, size: usize, out: &mut [f32]) {
    let (top, left, ch, cw) = win;
    let (sy, sx) = (ch as f64 / size as f64, cw as f64 / size as f64);
    let coord = |o: usize, s: f64, len: usize, off: usize| {
        let f = ((o as f64 + 0.5) * s - 0.5).clamp(0.0, (len - 1) as f64);
        let i0 = f.floor() as usize;
        let i1 = (i0 + 1).min(len - 1);
        (off + i0, off + i1, (f - i0 as f64) as f32)
    };
    for y in 0..size {
        let (y0, y1, ty) = coord(y, sy, ch, top);
        for x in 0..size {
            let (x0, x1, tx) = coord(x, sx, cw, left);
            for c in 0..img.c {
                let p = |yy: usize, xx: usize| img.px[(c * img.h + yy) * img.w + xx];
                let a = p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx;
                let b = p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx;
                out[(c * size + y) * size + x] = a * (1.0 - ty) + b * ty;
            }
        }
    }
}

fn hflip(v: &mut [f32], c: usize, s: usize) {
    for row in v.chunks_mut(s).take(c * s) {
        row.reverse();
    }
}

/// Brightness ×U(0.6, 1.4), contrast towards the mean grey by U(0.6, 1.4) and (3 channels)
/// saturation towards the grey image by U(0.8, 1.2), in that order, clamped to [0, 1].
fn color_jitter(v: &mut [f32], c: usize, rng: &mut StdRng) {
    let hw = v.len() / c;
    let brightness = rng.random_range(0.6..1.4) as f32;
    for x in v.iter_mut() {
        *x = (*x * brightness).clamp(0.0, 1.0);
    }
    let contrast = rng.random_range(0.6..1.4) as f32;
    let mean = gray(v, c, hw).iter().sum::<f32>() / hw as f32;
    for x in v.iter_mut() {
        *x = (mean + contrast * (*x - mean)).clamp(0.0, 1.0);
    }
    if c == 3 {
        let sat = rng.random_range(0.8..1.2) as f32;
        let g = gray(v, c, hw);
        for ch in 0..3 {
            for (x, gv) in v[ch * hw..(ch + 1) * hw].iter_mut().zip(&g) {
                *x = (gv + sat * (*x - gv)).clamp(0.0, 1.0);
            }
        }
    }
}

/// ITU-R 601 luma of an RGB image (the image itself with one channel).
fn gray(v: &[f32], c: usize, hw: usize) -> Vec<f32> {
    if c != 3 {
        return v[..hw].to_vec();
    }
    (0..hw)
        .map(|i| 0.299 * v[i] + 0.587 * v[hw + i] + 0.114 * v[2 * hw + i])
        .collect()
}

fn grayscale(v: &mut [f32], hw: usize) {
    let g = gray(v, 3, hw);
    for ch in 0..3 {
        v[ch * hw..(ch + 1) * hw].copy_from_slice(&g);
    }
}

/// Separable Gaussian blur with standard deviation `sigma` pixels (kernel radius ⌈3σ⌉, edges clamped).
fn gaussian_blur(v: &mut [f32], c: usize, s: usize, sigma: f64) {
    let r = (3.0 * sigma).ceil() as isize;
    if r < 1 {
        return;
    }
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|x| x / sum).collect();
    let clamp = |i: isize| i.clamp(0, s as isize - 1) as usize;
    let mut tmp = vec![0f32; s * s];
    for ch in 0..c {
        let img = &mut v[ch * s * s..(ch + 1) * s * s];
        for y in 0..s {
            for x in 0..s {
                tmp[y * s + x] = (-r..=r)
                    .zip(&k)
                    .map(|(d, w)| w * img[y * s + clamp(x as isize + d)])
                    .sum();
            }
        }
        for y in 0..s {
            for x in 0..s {
                img[y * s + x] = (-r..=r)
                    .zip(&k)
                    .map(|(d, w)| w * tmp[clamp(y as isize + d) * s + x])
                    .sum();
            }
        }
    }
}
