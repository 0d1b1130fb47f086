//! CRATE-MAE (ICLR 2024), as the official `model/crate_ae/crate_ae.py::MaskedAutoencoderViT`
//! computes it: a CRATE encoder and its white-box "inverse" as decoder.
//!
//! conv patch embedding → random masking → **mask tokens enter the encoder** (full sequence, cls
//! first) + fixed 2-D sin-cos positions (`decoder_pos_embed`) → encoder layers
//! `Z½ = Z + MSSA(LN₁ Z)`, `Z' = ISTA_λ(LN₂ Z½)` (λ = 0.5) → `norm` (eps 1e-6) → decoder layers
//! `Y = LN₁(X)·Dᵀ`, `X' = Y − MSSA(LN₂ Y)` → `decoder_norm` (eps 1e-6) → `decoder_pred` → drop cls.
//! Loss: mean squared error per patch, averaged over the masked patches only.
//! `pos_embed` and `decoder_embed` exist in the official model but are unused; they are kept so
//! official checkpoints load strictly and are written back.
//!
//! Code vs paper (the code is followed): the book states λ = 0.1 for the encoder, the public
//! code passes 0.5; unlike FAIR's MAE, the mask tokens are inserted before the encoder.

use anyhow::{ensure, Context, Result};
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::blocks::{CrateLayer, Ista, Mssa, PatchConv, Sparsify, ISTA_ETA};
use super::fused::{layer_norm, AttnMask, CrateBackend};
use super::vision::{patchify, CrateConfig, LN_EPS};
use super::{Activations, Arch, Pool, Recorder};
use crate::model::keys::StateDict;

/// eps of the two outer norms (`norm`, `decoder_norm`): `partial(nn.LayerNorm, eps=1e-6)`.
pub const OUTER_EPS: f64 = 1e-6;

/// Constructor arguments of the official `MaskedAutoencoderViT` (same names; the block and norm
/// classes are accepted as the strings the golden manifest records and otherwise fixed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaeConfig {
    #[serde(default = "default_arch")]
    pub arch: Arch,
    pub img_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub decoder_embed_dim: usize,
    pub decoder_depth: usize,
    pub decoder_num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_layer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder_block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_block: Option<String>,
    #[serde(default)]
    pub norm_pix_loss: bool,
    /// ISTA sparsity λ of the encoder (0.5 in the public code).
    #[serde(default = "default_lambd")]
    pub lambd: f64,
    /// Fraction of patches removed (a `forward` argument in the official code).
    #[serde(default = "default_mask_ratio")]
    pub mask_ratio: f64,
}

fn default_arch() -> Arch {
    Arch::CrateMae
}
fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_lambd() -> f64 {
    0.5
}
fn default_mask_ratio() -> f64 {
    0.75
}

/// Names accepted as MAE presets besides a JSON path.
pub const MAE_PRESETS: [&str; 5] = [
    "mae-fmnist",
    "mae-crate-tiny",
    "mae-crate-small",
    "mae-crate-base",
    "mae-crate-large",
];

impl MaeConfig {
    /// Official `mae_crate_*` factory shape: 224 px, patch 16, decoder = encoder width/depth/heads.
    fn factory(dim: usize, depth: usize, heads: usize) -> Self {
        Self {
            arch: default_arch(),
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: dim,
            depth,
            num_heads: heads,
            decoder_embed_dim: dim,
            decoder_depth: depth,
            decoder_num_heads: heads,
            mlp_ratio: 4.0,
            norm_layer: None,
            encoder_block: None,
            decoder_block: None,
            norm_pix_loss: false,
            lambd: 0.5,
            mask_ratio: 0.75,
        }
    }

    /// Fashion-MNIST / MNIST: 28×28 grayscale, patch 7 (16 patches), d = 96, 4 + 4 layers, 4 heads.
    pub fn fmnist() -> Self {
        Self {
            img_size: 28,
            patch_size: 7,
            in_chans: 1,
            ..Self::factory(96, 4, 4)
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "mae-fmnist" => Self::fmnist(),
            "mae-crate-tiny" => Self::factory(384, 12, 6),
            "mae-crate-small" => Self::factory(576, 12, 12),
            "mae-crate-base" => Self::factory(768, 12, 12),
            "mae-crate-large" => Self::factory(1024, 24, 16),
            _ => return None,
        })
    }

    /// A preset name or a JSON file with the constructor arguments.
    pub fn resolve(spec: &str) -> Result<Self> {
        super::resolve_config(
            spec,
            Self::preset(spec),
            "an MAE preset",
            &MAE_PRESETS,
            Self::from_json_file,
        )
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        super::read_json_config(path, Self::from_json)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).context("not a valid CRATE-MAE config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.arch == Arch::CrateMae,
            "arch \"{}\" is not \"{}\"",
            self.arch,
            Arch::CrateMae
        );
        use super::{MAX_DEPTH, MAX_WIDTH};
        super::check_sizes(&[
            ("img_size", self.img_size, 1 << 14),
            ("patch_size", self.patch_size, 1 << 14),
            ("in_chans", self.in_chans, 64),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("num_heads", self.num_heads, MAX_DEPTH),
            ("decoder_depth", self.decoder_depth, MAX_DEPTH),
            ("decoder_num_heads", self.decoder_num_heads, MAX_DEPTH),
        ])?;
        ensure!(
            self.img_size.is_multiple_of(self.patch_size),
            "img_size {} is not divisible by patch_size {}",
            self.img_size,
            self.patch_size
        );
        ensure!(
            self.decoder_embed_dim == self.embed_dim,
            "decoder_embed_dim {} must equal embed_dim {}: the official CRATE-MAE feeds the encoder \
             output to the decoder directly (decoder_embed is unused)",
            self.decoder_embed_dim,
            self.embed_dim
        );
        ensure!(
            self.embed_dim.is_multiple_of(self.num_heads)
                && self.embed_dim.is_multiple_of(self.decoder_num_heads),
            "embed_dim {} must be divisible by num_heads {} and decoder_num_heads {}",
            self.embed_dim,
            self.num_heads,
            self.decoder_num_heads
        );
        ensure!(
            self.embed_dim.is_multiple_of(4),
            "embed_dim {} must be divisible by 4 (2-D sin-cos positions)",
            self.embed_dim
        );
        check_mask_ratio(self.mask_ratio)?;
        ensure!(
            self.lambd >= 0.0 && self.lambd.is_finite(),
            "lambd must be a finite number ≥ 0"
        );
        super::check_param_count(self.param_count())
    }

    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }
    /// Patches kept visible: `int(L·(1 − r))` as in `random_masking`.
    pub fn len_keep(&self) -> usize {
        (self.num_patches() as f64 * (1.0 - self.mask_ratio)) as usize
    }

    /// Parameters including the unused `pos_embed`/`decoder_embed` and the fixed sin-cos tables
    /// (the official model registers them as Parameters too).
    pub fn param_count(&self) -> usize {
        let (d, n, pd) = (self.embed_dim, self.num_patches() + 1, self.patch_dim());
        let embed = pd * d + d + 2 * d + 2 * n * d + d * d + d;
        let enc = 2 * d + 2 * d * d + d + 2 * d + d * d;
        let dec = 2 * d + d * d + 2 * d + 2 * d * d + d;
        embed + self.depth * enc + 2 * d + self.decoder_depth * dec + 2 * d + d * pd + pd
    }

    /// A model with the official initialisation (xavier Linear weights, zero biases, N(0, 0.02)
    /// cls/mask tokens, fixed sin-cos positions; the dictionaries keep torch's kaiming_uniform).
    pub fn init<B: CrateBackend>(&self, device: &B::Device) -> CrateMae<B> {
        let d = self.embed_dim;
        let n = self.num_patches() + 1;
        let ln = |eps: f64| LayerNormConfig::new(d).with_epsilon(eps).init(device);
        let xavier = |i: usize, o: usize, bias: bool| {
            LinearConfig::new(i, o)
                .with_bias(bias)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device)
        };
        let zero_bias = |mut l: Linear<B>| {
            if let Some(b) = l.bias.take() {
                l.bias = Some(Initializer::Zeros.init(b.dims(), device));
            }
            l
        };
        let mssa = |heads: usize| {
            let mut m = Mssa::new(d, heads, d / heads, true, 0.0, device);
            m.qkv = xavier(d, d, false);
            m.to_out = zero_bias(xavier(d, d, true));
            m
        };
        let small = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let sincos = Tensor::<B, 3>::from_data(
            TensorData::new(sincos_2d(d, self.grid()), [1, n, d]),
            device,
        );
        let fixed = |t: Tensor<B, 3>| Param::from_tensor(t).set_require_grad(false);
        let mut patch_embed = PatchConv::new(self.in_chans, d, self.patch_size, device);
        let bound = (6.0 / (self.patch_dim() + d) as f64).sqrt();
        patch_embed.weight = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init([d, self.in_chans, self.patch_size, self.patch_size], device);
        CrateMae {
            patch_embed,
            cls_token: small.init([1, 1, d], device),
            mask_token: small.init([1, 1, d], device),
            pos_embed: fixed(sincos.clone()),
            decoder_pos_embed: fixed(sincos),
            decoder_embed: zero_bias(xavier(d, d, true)),
            blocks: (0..self.depth)
                .map(|_| {
                    CrateLayer::new(
                        mssa(self.num_heads),
                        Sparsify::Ista(Ista::new(d, ISTA_ETA, self.lambd, device)),
                        LN_EPS,
                        device,
                    )
                })
                .collect(),
            norm: ln(OUTER_EPS),
            decoder_blocks: (0..self.decoder_depth)
                .map(|_| DecoderLayer {
                    norm1: ln(LN_EPS),
                    dictionary: Ista::<B>::new(d, 0.0, 0.0, device).weight,
                    norm2: ln(LN_EPS),
                    mssa: mssa(self.decoder_num_heads),
                })
                .collect(),
            decoder_norm: ln(OUTER_EPS),
            decoder_pred: zero_bias(xavier(d, self.patch_dim(), true)),
            patch_size: self.patch_size,
            in_chans: self.in_chans,
            mask_ratio: self.mask_ratio,
            norm_pix_loss: self.norm_pix_loss,
        }
    }
}

pub fn check_mask_ratio(r: f64) -> Result<()> {
    ensure!(
        r > 0.0 && r < 1.0,
        "mask ratio {r} must lie strictly between 0 and 1"
    );
    Ok(())
}

/// Fixed 2-D sin-cos positions `[(1 + g²)·d]` with a zero cls row (official `pos_embed.py`):
/// the first half of the channels encodes the column, the second half the row; each half is
/// `[sin(pos·ω), cos(pos·ω)]` with `ω_i = 1/10000^{i/(d/4)}`. Computed in f64 like numpy.
pub fn sincos_2d(d: usize, grid: usize) -> Vec<f32> {
    let quarter = d / 4;
    let mut out = vec![0f32; d];
    for row in 0..grid {
        for col in 0..grid {
            for pos in [col, row] {
                let base = out.len();
                out.resize(base + d / 2, 0.0);
                for i in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(i as f64 / quarter as f64);
                    let a = pos as f64 * omega;
                    out[base + i] = a.sin() as f32;
                    out[base + quarter + i] = a.cos() as f32;
                }
            }
        }
    }
    out
}

/// Decoder layer, the white-box inverse of an encoder layer:
/// `Y = LN₁(X)·Dᵀ` (dictionary, no bias, no ReLU), `X' = Y − MSSA(LN₂ Y)`.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: CrateBackend> {
    pub norm1: LayerNorm<B>,
    /// Dictionary `D` `[d, d]` (torch key `layers.0.0.fn.weight`).
    pub dictionary: Param<Tensor<B, 2>>,
    pub norm2: LayerNorm<B>,
    pub mssa: Mssa<B>,
}

impl<B: CrateBackend> DecoderLayer<B> {
    /// Returns `(Y, X')` for token rows `x` `[b·n, d]`.
    pub fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        // Y = LN₁(X)·Dᵀ  (F.linear(x, D))
        let y = layer_norm(&self.norm1, x, LN_EPS).matmul(self.dictionary.val().transpose());
        // X' = Y − MSSA(LN₂ Y)
        let out = y.clone()
            - self
                .mssa
                .forward(layer_norm(&self.norm2, y.clone(), LN_EPS), b, n);
        (y, out)
    }
}

#[derive(Module, Debug)]
pub struct CrateMae<B: CrateBackend> {
    pub patch_embed: PatchConv<B>,
    pub cls_token: Param<Tensor<B, 3>>,
    pub mask_token: Param<Tensor<B, 3>>,
    /// Built but unused by the official encoder (kept for strict loading).
    pub pos_embed: Param<Tensor<B, 3>>,
    /// Fixed sin-cos positions added to the full sequence entering the encoder.
    pub decoder_pos_embed: Param<Tensor<B, 3>>,
    /// Unused in the official forward (requires decoder width = encoder width).
    pub decoder_embed: Linear<B>,
    pub blocks: Vec<CrateLayer<B>>,
    pub norm: LayerNorm<B>,
    pub decoder_blocks: Vec<DecoderLayer<B>>,
    pub decoder_norm: LayerNorm<B>,
    pub decoder_pred: Linear<B>,
    pub patch_size: usize,
    pub in_chans: usize,
    pub mask_ratio: f64,
    pub norm_pix_loss: bool,
}

/// What [`CrateMae::reconstruct`] draws: `removed` is 1 on the masked patches.
pub struct Reconstruction<B: CrateBackend> {
    pub removed: Tensor<B, 4>,
    pub pasted: Tensor<B, 4>,
}

/// Per-sample random masking from noise, as `random_masking`: `ids_shuffle = argsort(noise)`,
/// `ids_restore = argsort(ids_shuffle)`, keep the first `len_keep` of the shuffle; `mask` = 1 where removed.
#[derive(Debug, Clone)]
pub struct Masking {
    pub batch: usize,
    pub len: usize,
    pub len_keep: usize,
    pub ids_shuffle: Vec<i64>,
    pub ids_restore: Vec<i64>,
    pub ids_keep: Vec<i64>,
    pub mask: Vec<f32>,
}

impl Masking {
    pub fn from_noise(noise: &[f32], batch: usize, len: usize, len_keep: usize) -> Self {
        let (mut shuffle, mut restore, mut keep, mut mask) = (
            Vec::with_capacity(batch * len),
            vec![0i64; batch * len],
            Vec::with_capacity(batch * len_keep),
            vec![1f32; batch * len],
        );
        for s in 0..batch {
            let row = &noise[s * len..(s + 1) * len];
            let mut order: Vec<usize> = (0..len).collect();
            order.sort_by(|&i, &j| row[i].total_cmp(&row[j]));
            for (rank, &j) in order.iter().enumerate() {
                restore[s * len + j] = rank as i64;
                if rank < len_keep {
                    mask[s * len + j] = 0.0;
                }
            }
            shuffle.extend(order.iter().map(|&j| j as i64));
            keep.extend(order[..len_keep].iter().map(|&j| j as i64));
        }
        Self {
            batch,
            len,
            len_keep,
            ids_shuffle: shuffle,
            ids_restore: restore,
            ids_keep: keep,
            mask,
        }
    }

    /// Uniform noise from `rng`, like `torch.rand(N, L)`.
    pub fn random(rng: &mut impl rand::Rng, batch: usize, len: usize, len_keep: usize) -> Self {
        let noise: Vec<f32> = (0..batch * len).map(|_| rng.random::<f32>()).collect();
        Self::from_noise(&noise, batch, len, len_keep)
    }
}

/// What one MAE forward returns.
pub struct MaeOutput<B: CrateBackend> {
    /// Predicted patches `[b, L, P²·C]` (pixel order `(p, q, c)`).
    pub pred: Tensor<B, 3>,
    /// Mean squared error over the masked patches (scalar tensor `[1]`).
    pub loss: Tensor<B, 1>,
    pub masking: Masking,
}

impl<B: CrateBackend> MaeOutput<B> {
    /// The outputs under the golden names: `pred`, `recon_img` (the prediction as images, patch
    /// `p`, `c` channels), `loss`, `mask`, `ids_restore`, `ids_shuffle`, `ids_keep`.
    pub fn into_state_dict(self, p: usize, c: usize) -> StateDict {
        let m = &self.masking;
        let (b, len, keep) = (m.batch, m.len, m.len_keep);
        let mut sd = StateDict::new();
        let recon = unpatchify(self.pred.clone(), p, c);
        sd.insert("pred".into(), self.pred.into_data().convert::<f32>());
        sd.insert("recon_img".into(), recon.into_data().convert::<f32>());
        let loss = self.loss.into_data().convert::<f32>();
        sd.insert(
            "loss".into(),
            TensorData::new(loss.to_vec::<f32>().unwrap(), Vec::<usize>::new()),
        );
        sd.insert("mask".into(), TensorData::new(m.mask.clone(), [b, len]));
        for (k, v, w) in [
            ("ids_restore", &m.ids_restore, len),
            ("ids_shuffle", &m.ids_shuffle, len),
            ("ids_keep", &m.ids_keep, keep),
        ] {
            sd.insert(k.into(), TensorData::new(v.clone(), [b, w]));
        }
        sd
    }
}

/// `[b, L, P²·C]` patches (order `(p, q, c)`) back to NCHW images.
pub fn unpatchify<B: CrateBackend>(x: Tensor<B, 3>, p: usize, c: usize) -> Tensor<B, 4> {
    let [b, l, _] = x.dims();
    let g = (l as f64).sqrt().round() as usize;
    x.reshape([b, g, g, p, p, c])
        .permute([0, 5, 1, 3, 2, 4])
        .reshape([b, c, g * p, g * p])
}

impl<B: CrateBackend> CrateMae<B> {
    pub fn len_keep(&self, len: usize) -> usize {
        (len as f64 * (1.0 - self.mask_ratio)) as usize
    }

    /// Full-length encoder input `[b, 1 + L, d]`: patch tokens where visible, the mask token where
    /// removed (the official gather/unshuffle, written as a blend with the binary mask, which is
    /// exact in value and gradient), cls first, plus the sin-cos positions.
    fn encoder_input(
        &self,
        imgs: Tensor<B, 4>,
        masking: &Masking,
        acts: &mut Activations<B>,
    ) -> Tensor<B, 3> {
        let tokens = self.patch_embed.forward(imgs);
        acts.push("act.patch_embed", &tokens);
        let [b, l, d] = tokens.dims();
        let device = tokens.device();
        let mask =
            Tensor::<B, 3>::from_data(TensorData::new(masking.mask.clone(), [b, l, 1]), &device);
        let keep = mask.clone().neg().add_scalar(1.0);
        let full = tokens * keep + self.mask_token.val().expand([b, l, d]) * mask;
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, full], 1) + self.decoder_pos_embed.val();
        acts.push("act.enc_input", &x);
        x
    }

    /// Encoder layers and `norm` on token rows `[b·n, d]`.
    fn encode_rows(
        &self,
        mut z: Tensor<B, 2>,
        b: usize,
        n: usize,
        acts: &mut Activations<B>,
    ) -> Tensor<B, 2> {
        let d = z.dims()[1];
        for (i, layer) in self.blocks.iter().enumerate() {
            let mut rec = Recorder::layer(acts, "act.enc.layer", i, b, n).only(&["attn", "ista"]);
            z = layer.forward_traced(z, b, n, &AttnMask::None, &mut rec);
        }
        let z = layer_norm(&self.norm, z, OUTER_EPS);
        acts.push("act.enc_norm", &z.clone().reshape([b, n, d]));
        z
    }

    /// Decoder layers, `decoder_norm` and `decoder_pred`; returns predicted patches without cls.
    fn decode_rows(
        &self,
        mut x: Tensor<B, 2>,
        b: usize,
        n: usize,
        acts: &mut Activations<B>,
    ) -> Tensor<B, 3> {
        let d = x.dims()[1];
        for (i, layer) in self.decoder_blocks.iter().enumerate() {
            let (y, out) = layer.forward(x, b, n);
            acts.push(&format!("act.dec.layer{i}.ff"), &y.reshape([b, n, d]));
            acts.push(
                &format!("act.dec.layer{i}.out"),
                &out.clone().reshape([b, n, d]),
            );
            x = out;
        }
        let x = layer_norm(&self.decoder_norm, x, OUTER_EPS);
        acts.push("act.dec_norm", &x.clone().reshape([b, n, d]));
        let pred = self.decoder_pred.forward(x);
        let pd = pred.dims()[1];
        pred.reshape([b, n, pd]).narrow(1, 1, n - 1)
    }

    /// The pictures of the MAE visualisations for images `x` `[b, C, H, W]` under `masking`:
    /// the removed patches as an image (1 where removed) and the reconstruction with the visible
    /// patches pasted back over the prediction (`norm_pix_loss` undone with each true patch's
    /// statistics).
    pub fn reconstruct(&self, x: Tensor<B, 4>, masking: Masking) -> Reconstruction<B> {
        let out = self.forward_with(x.clone(), masking, &mut Activations::off());
        let (p, ch) = (self.patch_size, self.in_chans);
        let mut pred = out.pred;
        if self.norm_pix_loss {
            let (var, mean) = patchify(x.clone(), p).var_mean(2);
            pred = pred * var.add_scalar(1e-6).sqrt() + mean;
        }
        let [b, len] = [out.masking.batch, out.masking.len];
        let mask = Tensor::<B, 3>::from_data(
            TensorData::new(out.masking.mask.clone(), [b, len, 1]),
            &x.device(),
        );
        let removed = unpatchify(mask.expand([b, len, p * p * ch]), p, ch);
        let keep = removed.clone().neg().add_scalar(1.0);
        // Z = x ⊙ (1 − M) + pred ⊙ M
        let pasted = x * keep + unpatchify(pred, p, ch) * removed.clone();
        Reconstruction { removed, pasted }
    }

    /// Targets `[b, L, P²·C]`: patchified images, per-patch normalised with `norm_pix_loss`.
    pub fn target(&self, imgs: Tensor<B, 4>) -> Tensor<B, 3> {
        let t = patchify(imgs, self.patch_size);
        if !self.norm_pix_loss {
            return t;
        }
        // (x − mean)/sqrt(var + 1e-6), torch's unbiased var
        let (var, mean) = t.clone().var_mean(2);
        (t - mean) / var.add_scalar(1e-6).sqrt()
    }

    /// `sum(mean_pixels((pred − target)²) · mask) / sum(mask)`.
    pub fn loss(&self, imgs: Tensor<B, 4>, pred: Tensor<B, 3>, masking: &Masking) -> Tensor<B, 1> {
        let [b, l, _] = pred.dims();
        let per_patch = (pred - self.target(imgs))
            .powi_scalar(2)
            .mean_dim(2)
            .reshape([b, l]);
        let mask = Tensor::<B, 2>::from_data(
            TensorData::new(masking.mask.clone(), [b, l]),
            &per_patch.device(),
        );
        let masked: f32 = masking.mask.iter().sum();
        (per_patch * mask).sum().div_scalar(masked)
    }

    /// The official `forward(imgs, mask_ratio)` with the masking given (e.g. from saved noise).
    pub fn forward_with(
        &self,
        imgs: Tensor<B, 4>,
        masking: Masking,
        acts: &mut Activations<B>,
    ) -> MaeOutput<B> {
        let x = self.encoder_input(imgs.clone(), &masking, acts);
        let [b, n, d] = x.dims();
        let z = self.encode_rows(x.reshape([b * n, d]), b, n, acts);
        let pred = self.decode_rows(z, b, n, acts);
        let loss = self.loss(imgs, pred.clone(), &masking);
        MaeOutput {
            pred,
            loss,
            masking,
        }
    }

    /// Masking for a batch from `noise` `[b·L]` (uniform noise if `None`, drawn from `rng`).
    pub fn masking(&self, b: usize, noise: Option<&[f32]>, rng: &mut impl rand::Rng) -> Masking {
        let l = self.num_patches();
        let keep = self.len_keep(l);
        match noise {
            Some(n) => Masking::from_noise(n, b, l, keep),
            None => Masking::random(rng, b, l, keep),
        }
    }

    pub fn num_patches(&self) -> usize {
        self.decoder_pos_embed.dims()[1] - 1
    }

    /// Frozen-feature use: the encoder on all patches (no masking), `norm`ed tokens `[b, 1 + L, d]`.
    pub fn encode(&self, imgs: Tensor<B, 4>) -> Tensor<B, 3> {
        let tokens = self.patch_embed.forward(imgs);
        let [b, l, d] = tokens.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, tokens], 1) + self.decoder_pos_embed.val();
        let n = l + 1;
        self.encode_rows(x.reshape([b * n, d]), b, n, &mut Activations::off())
            .reshape([b, n, d])
    }

    /// The cls feature of [`encode`](Self::encode), `[b, d]`.
    pub fn cls_features(&self, imgs: Tensor<B, 4>) -> Tensor<B, 2> {
        let z = self.encode(imgs);
        let [b, _, d] = z.dims();
        z.narrow(1, 0, 1).reshape([b, d])
    }
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for CrateMae<B> {
    /// burn path → official `crate_ae.py` key (`../shared/docs/crate-reference.md` §7.2).
    fn official_key(path: &[String]) -> String {
        let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        let leaf = crate::model::keys::torch_leaf;
        match p.as_slice() {
            ["patch_embed", l] => format!("patch_embed.proj.{l}"),
            ["blocks", i, "norm1", l] => format!("blocks.{i}.layers.0.0.norm.{}", leaf(l)),
            ["blocks", i, "mssa", "qkv", l] => format!("blocks.{i}.layers.0.0.fn.qkv.{l}"),
            ["blocks", i, "mssa", "to_out", l] => format!("blocks.{i}.layers.0.0.fn.to_out.0.{l}"),
            ["blocks", i, "norm2", l] => format!("blocks.{i}.layers.0.1.norm.{}", leaf(l)),
            ["blocks", i, "ista", "Ista", l] => format!("blocks.{i}.layers.0.1.fn.{l}"),
            ["decoder_blocks", i, "norm1", l] => {
                format!("decoder_blocks.{i}.layers.0.0.norm.{}", leaf(l))
            }
            ["decoder_blocks", i, "dictionary"] => {
                format!("decoder_blocks.{i}.layers.0.0.fn.weight")
            }
            ["decoder_blocks", i, "norm2", l] => {
                format!("decoder_blocks.{i}.layers.0.1.norm.{}", leaf(l))
            }
            ["decoder_blocks", i, "mssa", "qkv", l] => {
                format!("decoder_blocks.{i}.layers.0.1.fn.qkv.{l}")
            }
            ["decoder_blocks", i, "mssa", "to_out", l] => {
                format!("decoder_blocks.{i}.layers.0.1.fn.to_out.0.{l}")
            }
            [m @ ("norm" | "decoder_norm" | "decoder_embed" | "decoder_pred"), l] => {
                format!("{m}.{}", leaf(l))
            }
            _ => p.join("."),
        }
    }
}

impl MaeConfig {
    /// The classifier on this MAE's encoder (`arch` `crate-mae-encoder`): same tokenizer, width,
    /// depth, heads and λ, a new `num_classes` head. The MAE's `norm` becomes the head LayerNorm.
    pub fn encoder_classifier(&self, num_classes: usize) -> CrateConfig {
        CrateConfig {
            arch: Arch::CrateMaeEncoder,
            image_size: self.img_size,
            patch_size: self.patch_size,
            num_classes,
            dim: self.embed_dim,
            depth: self.depth,
            heads: self.num_heads,
            pool: Pool::Cls,
            channels: self.in_chans,
            dim_head: self.embed_dim / self.num_heads,
            dropout: 0.0,
            emb_dropout: 0.0,
            ista: ISTA_ETA,
            lambd: Some(self.lambd),
        }
    }
}

/// Whether a state dict is laid out as the official CRATE-MAE (§7.2).
pub fn is_mae_state_dict(sd: &StateDict) -> bool {
    sd.contains_key("decoder_pred.weight") && sd.contains_key("mask_token")
}

/// An MAE state dict's encoder under the classifier's keys (`crate-mae-encoder`): the patch conv,
/// cls token, the fixed sin-cos positions the encoder uses (as the initial learned positions),
/// the encoder layers and `norm` (as the head LayerNorm); the decoder is dropped.
pub fn encoder_state_dict(sd: &StateDict) -> StateDict {
    let mut out = StateDict::new();
    for (k, v) in sd {
        let key = if let Some(rest) = k.strip_prefix("patch_embed.proj.") {
            format!("conv1.{rest}")
        } else if let Some(rest) = k.strip_prefix("blocks.") {
            // blocks.{i}.layers.0.{j}.… → transformer.layers.{i}.{j}.…
            let Some((i, tail)) = rest.split_once(".layers.0.") else {
                continue;
            };
            format!("transformer.layers.{i}.{tail}")
        } else if let Some(rest) = k.strip_prefix("norm.") {
            format!("mlp_head.0.{rest}")
        } else {
            match k.as_str() {
                "cls_token" => k.clone(),
                "decoder_pos_embed" => "pos_embedding".into(),
                _ => continue,
            }
        };
        out.insert(key, v.clone());
    }
    out
}
