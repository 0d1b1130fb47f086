//! Batches as f32 NCHW tensors: random crop with zero padding, horizontal flip and per-channel
//! normalisation. Randomness comes from (seed, epoch, batch), so a resumed run sees the same batches.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::ImageSet;

/// Augmentation settings (all off for evaluation).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Augment {
    /// Zero padding before a random crop back to the original size (0 = no crop).
    pub crop_padding: usize,
    pub hflip: bool,
}

impl Augment {
    pub fn none() -> Self {
        Self {
            crop_padding: 0,
            hflip: false,
        }
    }
}

/// Per-channel mean and std of the pixels scaled to [0, 1].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// The smallest per-channel std a normalisation may have (pixels are in [0, 1]).
pub const MIN_STD: f32 = 1e-6;

impl Normalization {
    /// One finite mean and one positive finite std per channel (metadata and checkpoints are read
    /// through this: an empty or zero-std normalisation would index out of bounds or divide by 0).
    pub fn validate(&self, channels: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.mean.len() == channels && self.std.len() == channels,
            "normalization has {} mean(s) and {} std(s) but the images have {channels} channel(s)",
            self.mean.len(),
            self.std.len()
        );
        for (c, (m, s)) in self.mean.iter().zip(&self.std).enumerate() {
            anyhow::ensure!(m.is_finite(), "normalization mean[{c}] is {m}");
            // below this a pixel's (v − mean)/std leaves any useful range, and near 1e-38 it is
            // infinite in f32: the model could only produce NaN
            anyhow::ensure!(
                s.is_finite() && *s >= MIN_STD,
                "normalization std[{c}] is {s:e}; it must be finite and at least {MIN_STD:e}"
            );
        }
        Ok(())
    }

    /// u8 CHW pixels of one image → normalised f32 (`(v/255 − mean_c)/std_c`).
    pub fn apply_chw(&self, px: &[u8]) -> Vec<f32> {
        let hw = px.len() / self.mean.len();
        px.iter()
            .enumerate()
            .map(|(i, v)| {
                let c = i / hw;
                (*v as f32 / 255.0 - self.mean[c]) / self.std[c]
            })
            .collect()
    }

    pub fn from_set(set: &ImageSet) -> Self {
        let (c, hw) = (set.channels, set.height * set.width);
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for i in 0..set.len() {
            let img = set.image(i);
            for ch in 0..c {
                for &p in &img[ch * hw..(ch + 1) * hw] {
                    let v = p as f64 / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (set.len() * hw) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(1e-12)).sqrt() as f32)
            .collect();
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }
}

/// Turns index lists into normalised, optionally augmented, tensors.
pub struct Batcher {
    pub norm: Normalization,
    pub augment: Augment,
}

impl Normalization {
    /// Every image of `set`, normalised, as one NCHW batch (no augmentation).
    pub fn batch_all<B: Backend>(&self, set: &ImageSet, device: &B::Device) -> Tensor<B, 4> {
        let batcher = Batcher {
            norm: self.clone(),
            augment: Augment::none(),
        };
        let idx: Vec<usize> = (0..set.len()).collect();
        batcher
            .batch::<B>(set, &idx, &mut batch_rng(0, 0, 0), device)
            .0
    }
}

/// The permutation of `n` examples used in `epoch` of a run seeded with `seed`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order
}

impl Batcher {
    /// Normalised f32 pixels of the images `idx`, augmented with `rng` when augmentation is on.
    pub fn pixels(&self, set: &ImageSet, idx: &[usize], rng: &mut StdRng) -> Vec<f32> {
        let (c, h, w) = (set.channels, set.height, set.width);
        let pad = self.augment.crop_padding as i32;
        let mut out = vec![0f32; idx.len() * c * h * w];
        for (b, &i) in idx.iter().enumerate() {
            let img = set.image(i);
            let (dy, dx) = if pad > 0 {
                (
                    rng.random_range(-pad..=pad) as isize,
                    rng.random_range(-pad..=pad) as isize,
                )
            } else {
                (0, 0)
            };
            let flip = self.augment.hflip && rng.random_bool(0.5);
            for ch in 0..c {
                let (m, s) = (self.norm.mean[ch], self.norm.std[ch]);
                let zero = (0.0 - m) / s;
                for y in 0..h {
                    for x in 0..w {
                        let sx = if flip { w - 1 - x } else { x } as isize + dx;
                        let sy = y as isize + dy;
                        let v = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                            zero
                        } else {
                            (img[ch * h * w + sy as usize * w + sx as usize] as f32 / 255.0 - m) / s
                        };
                        out[((b * c + ch) * h + y) * w + x] = v;
                    }
                }
            }
        }
        out
    }

    /// `(images [B,C,H,W], labels [B])` on `device`.
    pub fn batch<B: Backend>(
        &self,
        set: &ImageSet,
        idx: &[usize],
        rng: &mut StdRng,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let px = self.pixels(set, idx, rng);
        let images = Tensor::from_data(
            TensorData::new(px, [idx.len(), set.channels, set.height, set.width]),
            device,
        );
        let labels: Vec<i64> = idx.iter().map(|&i| set.labels[i] as i64).collect();
        let labels = Tensor::from_data(TensorData::new(labels, [idx.len()]), device);
        (images, labels)
    }
}

/// The rng for batch `batch` of `epoch`.
pub fn batch_rng(seed: u64, epoch: usize, batch: usize) -> StdRng {
    StdRng::seed_from_u64(
        seed.wrapping_mul(31)
            .wrapping_add((epoch as u64) << 32)
            .wrapping_add(batch as u64)
            .wrapping_add(1),
    )
}
