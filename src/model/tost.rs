//! ToST image classifier (Token Statistics Transformer, `tost_vision/tost.py` of `RobinWu218/ToST`,
//! its `VisionTransformer` with `attn_layer=AttentionTSSA`).
//!
//! Conv stem (3×3 stride-2 convs with BatchNorm, GELU between; computed channels-last as GEMMs)
//! → tokens + Fourier position
//! encoding → per block `Z½ = Z + γ₁ ⊙ TSSA(LN₁ Z)`, `Z' = Z½ + γ₂ ⊙ MLP(LN₂ Z½)` → prepend cls →
//! class-attention blocks (CaiT/XCiT) → `LN` of the cls token → head.
//!
//! Where this differs from the official code: `in_chans` reaches the first conv (the official
//! `ConvPatchEmbed` ignores it and always builds 3 input channels), so grayscale data runs.

use super::blocks::{linear, Mlp, Tssa};
use super::fused::{self, layer_norm, split_heads, CrateBackend};
use super::Arch;
use anyhow::{ensure, Context, Result};
use burn::module::{Module, Param, RunningState};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// LayerNorm epsilon of every norm (`partial(nn.LayerNorm, eps=1e-6)`).
pub const LN_EPS: f64 = 1e-6;
/// BatchNorm epsilon and momentum (torch defaults).
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;
/// Channels of the Fourier features before `token_projection` (`hidden_dim = 32`, sin and cos).
pub const FOURIER_DIM: usize = 64;
/// Standard deviation of the (truncated-normal) init of Linear weights and the cls token.
const INIT_STD: f64 = 0.02;

/// Names accepted by `--config` besides a JSON file: the official factories and a small model
/// for 28×28 grayscale data.
pub const PRESETS: [&str; 6] = [
    "tost-cab-tiny-12-p16",
    "tost-cab-small-12-p16",
    "tost-cab-small-24-p16",
    "tost-cab-medium-24-p16",
    "tost-cab-large-24-p16",
    "tost-fmnist",
];

/// Constructor arguments of the official `VisionTransformer` (same names, same defaults) plus `arch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TostConfig {
    pub arch: Arch,
    #[serde(default = "default_img_size")]
    pub img_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    #[serde(default = "default_embed_dim")]
    pub embed_dim: usize,
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Layer-scale initial value; the official `Block` needs it (`eta * torch.ones(dim)`).
    #[serde(default)]
    pub eta: Option<f64>,
    /// Normalise all tokens (not only cls) in the class-attention blocks.
    #[serde(default)]
    pub tokens_norm: bool,
    #[serde(default = "default_cls_attn_layers")]
    pub cls_attn_layers: usize,
    #[serde(default = "default_true")]
    pub use_pos: bool,
}

fn default_img_size() -> usize {
    224
}
fn default_patch_size() -> usize {
    16
}
fn default_in_chans() -> usize {
    3
}
fn default_num_classes() -> usize {
    1000
}
fn default_embed_dim() -> usize {
    768
}
fn default_depth() -> usize {
    12
}
fn default_num_heads() -> usize {
    12
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_true() -> bool {
    true
}
fn default_cls_attn_layers() -> usize {
    2
}

impl TostConfig {
    /// An official `tost_cab_*_p16` factory: 224 px, patch 16, mlp 4, qkv bias, tokens_norm.
    pub(crate) fn factory(embed_dim: usize, depth: usize, num_heads: usize, eta: f64) -> Self {
        Self {
            arch: Arch::Tost,
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            num_classes: 1000,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            qkv_bias: true,
            eta: Some(eta),
            tokens_norm: true,
            cls_attn_layers: 2,
            use_pos: true,
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "tost-cab-tiny-12-p16" => Self::factory(192, 12, 4, 1.0),
            "tost-cab-small-12-p16" => Self::factory(384, 12, 8, 1.0),
            "tost-cab-small-24-p16" => Self::factory(384, 24, 8, 1e-5),
            "tost-cab-medium-24-p16" => Self::factory(512, 24, 8, 1e-5),
            "tost-cab-large-24-p16" => Self::factory(768, 24, 16, 1e-5),
            // 28×28 grayscale, patch 8 (three stride-2 convs: 28 → 14 → 7 → 4, 16 tokens)
            "tost-fmnist" => Self {
                img_size: 28,
                patch_size: 8,
                in_chans: 1,
                num_classes: 10,
                ..Self::factory(96, 4, 4, 1.0)
            },
            _ => return None,
        })
    }

    /// A preset name or a JSON file.
    pub fn resolve(spec: &str) -> Result<Self> {
        super::resolve_config(
            spec,
            Self::preset(spec),
            "a ToST preset",
            &PRESETS,
            Self::from_json_file,
        )
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        super::read_json_config(path, Self::from_json)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).context("not a valid ToST config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.arch == Arch::Tost,
            "arch \"{}\" is not ToST (expected \"{}\")",
            self.arch,
            Arch::Tost
        );
        use super::{MAX_COUNT, MAX_DEPTH, MAX_WIDTH};
        super::check_sizes(&[
            ("img_size", self.img_size, 1 << 14),
            ("in_chans", self.in_chans, 64),
            ("num_classes", self.num_classes, MAX_COUNT),
            ("embed_dim", self.embed_dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("num_heads", self.num_heads, MAX_DEPTH),
        ])?;
        ensure!(
            self.patch_size == 8 || self.patch_size == 16,
            "patch_size {} is not supported: the convolutional stem has patch size 8 or 16",
            self.patch_size
        );
        let stem_div = self.patch_size / 2;
        ensure!(
            self.embed_dim.is_multiple_of(stem_div),
            "embed_dim {} must be divisible by {stem_div} (the conv stem's narrowest stage)",
            self.embed_dim
        );
        ensure!(
            self.embed_dim.is_multiple_of(self.num_heads),
            "embed_dim {} is not divisible by num_heads {}",
            self.embed_dim,
            self.num_heads
        );
        ensure!(
            self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite() && self.mlp_hidden() > 0,
            "mlp_ratio must be positive, got {}",
            self.mlp_ratio
        );
        super::check_sizes(&[("embed_dim × mlp_ratio", self.mlp_hidden(), 1 << 20)])?;
        ensure!(
            self.cls_attn_layers <= MAX_DEPTH,
            "cls_attn_layers = {} exceeds the limit of {MAX_DEPTH}",
            self.cls_attn_layers
        );
        let eta = self
            .eta
            .context("eta (layer-scale init) is required: the official Block multiplies by it")?;
        ensure!(eta.is_finite(), "eta must be finite, got {eta}");
        super::check_param_count(self.param_count())
    }

    /// `int(dim * mlp_ratio)`.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Channel widths of the conv stem, input first (`patch 16`: C, d/8, d/4, d/2, d; `8`: C, d/4, d/2, d).
    pub fn stem_channels(&self) -> Vec<usize> {
        let d = self.embed_dim;
        let mut c = vec![self.in_chans];
        let mut div = self.patch_size / 2;
        while div >= 1 {
            c.push(d / div);
            div /= 2;
        }
        c
    }

    /// Token grid side after the stem: each stride-2 conv maps s to ⌈s/2⌉.
    pub fn grid(&self) -> usize {
        (1..self.stem_channels().len()).fold(self.img_size, |s, _| s.div_ceil(2))
    }

    /// `[in_chans, img_size, img_size]`, the input the CLI checks data against.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.in_chans, self.img_size, self.img_size]
    }

    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Trainable parameters (torch `parameters()`; BatchNorm running statistics are buffers).
    pub fn param_count(&self) -> usize {
        let (d, hid) = (self.embed_dim, self.mlp_hidden());
        let ch = self.stem_channels();
        let stem: usize = ch.windows(2).map(|w| 9 * w[0] * w[1] + 2 * w[1]).sum();
        let mlp = d * hid + hid + hid * d + d;
        let qkv_bias = |n: usize| if self.qkv_bias { n } else { 0 };
        let block = 4 * d + d * d + qkv_bias(d) + self.num_heads + d * d + d + mlp + 2 * d;
        let ca = 4 * d + 3 * d * d + qkv_bias(3 * d) + d * d + d + mlp + 2 * d;
        stem + FOURIER_DIM * d
            + d
            + d
            + self.depth * block
            + self.cls_attn_layers * ca
            + 2 * d
            + d * self.num_classes
            + self.num_classes
    }

    pub fn init<B: CrateBackend>(&self, device: &B::Device) -> Tost<B> {
        let d = self.embed_dim;
        let eta = self.eta.unwrap_or(1.0);
        let ln = || LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device);
        let gamma = || Param::from_tensor(Tensor::full([d], eta, device));
        let mlp = || Mlp {
            c_fc: linear(d, self.mlp_hidden(), true, INIT_STD, device),
            c_proj: linear(self.mlp_hidden(), d, true, INIT_STD, device),
        };
        let patch_embed = self
            .stem_channels()
            .windows(2)
            .map(|w| ConvBn::new(w[0], w[1], device))
            .collect();
        let blocks = (0..self.depth)
            .map(|_| {
                let mut attn = Tssa::new(d, self.num_heads, self.qkv_bias, device);
                attn.qkv = linear(d, d, self.qkv_bias, INIT_STD, device);
                attn.to_out = linear(d, d, true, INIT_STD, device);
                TostBlock {
                    norm1: ln(),
                    attn,
                    norm2: ln(),
                    mlp: mlp(),
                    gamma1: gamma(),
                    gamma2: gamma(),
                }
            })
            .collect();
        let cls_attn_blocks = (0..self.cls_attn_layers)
            .map(|_| ClassAttentionBlock {
                norm1: ln(),
                attn: ClassAttention {
                    qkv: linear(d, 3 * d, self.qkv_bias, INIT_STD, device),
                    proj: linear(d, d, true, INIT_STD, device),
                    num_heads: self.num_heads,
                },
                norm2: ln(),
                mlp: mlp(),
                gamma1: gamma(),
                gamma2: gamma(),
                tokens_norm: self.tokens_norm,
            })
            .collect();
        // torch Conv2d default init: U(±1/√fan_in) for weight and bias
        let bound = 1.0 / (FOURIER_DIM as f64).sqrt();
        let u = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Tost {
            patch_embed,
            pos_embeder: FourierPos {
                token_projection: Conv1x1 {
                    weight: u.init([d, FOURIER_DIM, 1, 1], device),
                    bias: u.init([d], device),
                },
            },
            cls_token: Initializer::Normal {
                mean: 0.0,
                std: INIT_STD,
            }
            .init([1, 1, d], device),
            blocks,
            cls_attn_blocks,
            norm: ln(),
            head: linear(d, self.num_classes, true, INIT_STD, device),
            use_pos: self.use_pos,
        }
    }
}

/// BatchNorm over the channels of NCHW maps with torch's semantics: evaluation uses the running
/// statistics; training normalises by the batch's (biased) variance and updates the running
/// mean and the *unbiased* running variance with momentum 0.1.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: CrateBackend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
}

impl<B: CrateBackend> BatchNorm2d<B> {
    pub fn new(c: usize, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([c], device),
            beta: Initializer::Zeros.init([c], device),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
        }
    }

    /// `y = (x − μ)/√(σ² + ε)·γ + β` per channel of channels-last rows `x` `[m, c]`, with `(μ, σ²)`
    /// the running (eval) or batch (training) statistics.
    pub fn forward(&self, x: Tensor<B, 2>, training: bool) -> Tensor<B, 2> {
        let [m, c] = x.dims();
        let row = |t: Tensor<B, 1>| t.reshape([1, c]);
        let (gamma, beta) = (row(self.gamma.val()), row(self.beta.val()));
        if !training {
            let mean = row(self.running_mean.value());
            let var = row(self.running_var.value());
            return (x - mean) / var.add_scalar(BN_EPS).sqrt() * gamma + beta;
        }
        let mean = x.clone().mean_dim(0);
        let centred = x - mean.clone();
        let var = (centred.clone() * centred.clone()).mean_dim(0);
        let update = |state: &RunningState<Tensor<B, 1>>, batch: Tensor<B, 2>| {
            let old = state.value_sync();
            let new = old.mul_scalar(1.0 - BN_MOMENTUM)
                + batch.detach().reshape([c]).mul_scalar(BN_MOMENTUM);
            state.update(new.detach());
            state.value_sync();
        };
        update(&self.running_mean, mean);
        let m = m as f64;
        update(
            &self.running_var,
            var.clone().mul_scalar(m / (m - 1.0).max(1.0)),
        );
        centred / var.add_scalar(BN_EPS).sqrt() * gamma + beta
    }
}

/// `Sequential(Conv2d(3×3, stride 2, padding 1, bias=False), BatchNorm2d)` (official `conv3x3`).
#[derive(Module, Debug)]
pub struct ConvBn<B: CrateBackend> {
    /// Kernel `[out, in, 3, 3]`.
    pub weight: Param<Tensor<B, 4>>,
    pub bn: BatchNorm2d<B>,
}

impl<B: CrateBackend> ConvBn<B> {
    fn new(c_in: usize, c_out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / ((9 * c_in) as f64).sqrt();
        Self {
            weight: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([c_out, c_in, 3, 3], device),
            bn: BatchNorm2d::new(c_out, device),
        }
    }

    /// `BN(conv(x))` of channels-last maps `x` `[b, h, w, c]` → `[b, ⌈h/2⌉, ⌈w/2⌉, out]`.
    pub fn forward(&self, x: Tensor<B, 4>, training: bool) -> Tensor<B, 4> {
        let (rows, [b, h, w]) = conv3x3_s2(x, self.weight.val());
        let c = rows.dims()[1];
        self.bn.forward(rows, training).reshape([b, h, w, c])
    }
}

/// A 3×3 convolution with stride 2 and zero padding 1 of channels-last maps `x` `[b, h, w, c]`
/// as one GEMM: the nine shifted stride-2 views side by side, `[b·h'·w', 9c]` in `(i, j, c)`
/// order, times the kernel `[out, c, 3, 3]` laid out as `[9c, out]`. Returns the output rows
/// (channels last) and `[b, h', w']`, `h' = ⌈h/2⌉`.
pub fn conv3x3_s2<B: CrateBackend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
) -> (Tensor<B, 2>, [usize; 3]) {
    let [b, h, w, c] = x.dims();
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    // zero padding: 1 before, and after up to an even side 2·(h'+1), so that a reshape splits
    // every padded coordinate into (index / 2, index % 2)
    let (hp, wp) = (2 * (ho + 1), 2 * (wo + 1));
    let device = x.device();
    let zeros = |dims: [usize; 4]| Tensor::<B, 4>::zeros(dims, &device);
    let x = Tensor::cat(
        vec![zeros([b, 1, w, c]), x, zeros([b, hp - h - 1, w, c])],
        1,
    );
    let x = Tensor::cat(
        vec![zeros([b, hp, 1, c]), x, zeros([b, hp, wp - w - 1, c])],
        2,
    );
    let x = x.reshape([b, hp / 2, 2, wp / 2, 2, c]);
    // kernel offset k ∈ {0, 1, 2} reads padded index 2i + k = 2(i + k/2) + k % 2
    let cols: Vec<Tensor<B, 2>> = (0..9)
        .map(|k| {
            let (ki, kj) = (k / 3, k % 3);
            x.clone()
                .narrow(1, ki / 2, ho)
                .narrow(2, ki % 2, 1)
                .narrow(3, kj / 2, wo)
                .narrow(4, kj % 2, 1)
                .reshape([b * ho * wo, c])
        })
        .collect();
    let [out, ..] = weight.dims();
    let kernel = weight.permute([2, 3, 1, 0]).reshape([9 * c, out]);
    (fused::matmul(Tensor::cat(cols, 1), kernel), [b, ho, wo])
}

/// A 1×1 convolution (`token_projection`), kernel `[out, in, 1, 1]`.
#[derive(Module, Debug)]
pub struct Conv1x1<B: CrateBackend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Param<Tensor<B, 1>>,
}

/// `PositionalEncodingFourier(hidden_dim=32, dim, temperature=10000)`.
#[derive(Module, Debug)]
pub struct FourierPos<B: CrateBackend> {
    pub token_projection: Conv1x1<B>,
}

/// The DETR/XCiT sine features of an `h × w` grid, `[h·w, 64]` row-major over the grid: channels
/// `0..32` encode the row, `32..64` the column, each as `sin, cos` pairs of
/// `2π·(i+1)/(h + 1e-6) / 10000^(2⌊k/2⌋/32)` (computed in float32, as the official code).
pub fn fourier_features(h: usize, w: usize) -> Vec<f32> {
    const HIDDEN: usize = FOURIER_DIM / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let dim_t: Vec<f32> = (0..HIDDEN)
        .map(|k| 10000f32.powf(2.0 * (k / 2) as f32 / HIDDEN as f32))
        .collect();
    let embed = |i: usize, n: usize| (i + 1) as f32 / (n as f32 + 1e-6) * scale;
    let mut out = Vec::with_capacity(h * w * FOURIER_DIM);
    for i in 0..h {
        for j in 0..w {
            for e in [embed(i, h), embed(j, w)] {
                for (k, dt) in dim_t.iter().enumerate() {
                    let v = e / dt;
                    out.push(if k % 2 == 0 { v.sin() } else { v.cos() });
                }
            }
        }
    }
    out
}

impl<B: CrateBackend> FourierPos<B> {
    /// Position encoding of an `h × w` grid as token rows `[h·w, d]`: `token_projection(features)`.
    pub fn forward(&self, h: usize, w: usize) -> Tensor<B, 2> {
        let p = &self.token_projection;
        let [d, c, _, _] = p.weight.dims();
        let device = p.weight.device();
        let feats =
            Tensor::<B, 2>::from_data(TensorData::new(fourier_features(h, w), [h * w, c]), &device);
        let kernel = p.weight.val().reshape([d, c]);
        fused::matmul(feats, kernel.transpose()) + p.bias.val().unsqueeze::<2>()
    }
}

/// Official `Block`: `Z½ = Z + γ₁ ⊙ TSSA(LN₁ Z)`, `Z' = Z½ + γ₂ ⊙ MLP(LN₂ Z½)`.
#[derive(Module, Debug)]
pub struct TostBlock<B: CrateBackend> {
    pub norm1: LayerNorm<B>,
    pub attn: Tssa<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub gamma1: Param<Tensor<B, 1>>,
    pub gamma2: Param<Tensor<B, 1>>,
}

/// `x ⊙ γ` for token rows `x` `[r, d]` and a layer scale `γ` `[d]`.
fn scale<B: CrateBackend>(x: Tensor<B, 2>, gamma: &Param<Tensor<B, 1>>) -> Tensor<B, 2> {
    x * gamma.val().unsqueeze::<2>()
}

impl<B: CrateBackend> TostBlock<B> {
    /// On token rows `z` `[b·n, d]` of `b` sequences of `n` tokens.
    pub fn forward(&self, z: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let a = self
            .attn
            .forward(layer_norm(&self.norm1, z.clone(), LN_EPS), b, n);
        let half = z + scale(a, &self.gamma1);
        let m = self
            .mlp
            .forward(layer_norm(&self.norm2, half.clone(), LN_EPS));
        half + scale(m, &self.gamma2)
    }
}

/// CaiT class attention: only the cls token queries; the other rows pass through unchanged.
#[derive(Module, Debug)]
pub struct ClassAttention<B: CrateBackend> {
    /// `[q; k; v]` projection, `d → 3d`.
    pub qkv: Linear<B>,
    pub proj: Linear<B>,
    pub num_heads: usize,
}

impl<B: CrateBackend> ClassAttention<B> {
    /// `[proj(softmax(q₀ kᵀ/√dh) v); x₁…]` on token rows `x` `[b·n, d]` (row 0 of each sequence is cls).
    pub fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let d = x.dims()[1];
        let h = self.num_heads;
        let qkv = fused::linear(&self.qkv, x.clone());
        let part = |i: usize| split_heads(qkv.clone().narrow(1, i * d, d), b, n, h);
        let q0 = part(0).narrow(2, 0, 1); // [b, h, 1, dh]
        let s = ((d / h) as f64).powf(-0.5);
        let attn = softmax(q0.matmul(part(1).swap_dims(2, 3)).mul_scalar(s), 3);
        let cls = fused::linear(&self.proj, attn.matmul(part(2)).reshape([b, d]));
        let rest = x.reshape([b, n, d]).narrow(1, 1, n - 1);
        Tensor::cat(vec![cls.reshape([b, 1, d]), rest], 1).reshape([b * n, d])
    }
}

/// Official `ClassAttentionBlock`: `Z½ = Z + γ₁ ⊙ CA(LN₁ Z)`, `Y = LN₂ Z½` (all tokens when
/// `tokens_norm`, else cls only), then `Z' = Y + [γ₂ ⊙ MLP(Y₀); Y₁…]` — which doubles the
/// non-cls rows, as the official code does.
#[derive(Module, Debug)]
pub struct ClassAttentionBlock<B: CrateBackend> {
    pub norm1: LayerNorm<B>,
    pub attn: ClassAttention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub gamma1: Param<Tensor<B, 1>>,
    pub gamma2: Param<Tensor<B, 1>>,
    pub tokens_norm: bool,
}

impl<B: CrateBackend> ClassAttentionBlock<B> {
    pub fn forward(&self, z: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let d = z.dims()[1];
        let a = self
            .attn
            .forward(layer_norm(&self.norm1, z.clone(), LN_EPS), b, n);
        let half = z + scale(a, &self.gamma1);
        let y = if self.tokens_norm {
            layer_norm(&self.norm2, half, LN_EPS).reshape([b, n, d])
        } else {
            let half = half.reshape([b, n, d]);
            let cls = half.clone().narrow(1, 0, 1).reshape([b, d]);
            let cls = layer_norm(&self.norm2, cls, LN_EPS).reshape([b, 1, d]);
            Tensor::cat(vec![cls, half.narrow(1, 1, n - 1)], 1)
        };
        let cls = y.clone().narrow(1, 0, 1).reshape([b, d]);
        let cls = cls.clone() + scale(self.mlp.forward(cls), &self.gamma2);
        let rest = y.narrow(1, 1, n - 1).mul_scalar(2.0);
        Tensor::cat(vec![cls.reshape([b, 1, d]), rest], 1).reshape([b * n, d])
    }
}

/// The ToST classifier (official state-dict keys via [`crate::model::keys::OfficialKeys`]).
#[derive(Module, Debug)]
pub struct Tost<B: CrateBackend> {
    /// The conv stem, one entry per `conv3x3` (torch `patch_embed.proj.{0,2,4,6}`).
    pub patch_embed: Vec<ConvBn<B>>,
    pub pos_embeder: FourierPos<B>,
    pub cls_token: Param<Tensor<B, 3>>,
    pub blocks: Vec<TostBlock<B>>,
    pub cls_attn_blocks: Vec<ClassAttentionBlock<B>>,
    pub norm: LayerNorm<B>,
    pub head: Linear<B>,
    pub use_pos: bool,
}

impl<B: CrateBackend> Tost<B> {
    /// Patch tokens `[b, n, d]` (+ positions) of an NCHW batch and the grid `(h, w)`.
    fn embed(&self, x: Tensor<B, 4>, training: bool) -> (Tensor<B, 3>, usize, usize) {
        let mut x = x.permute([0, 2, 3, 1]); // channels last: conv outputs are token rows
        for (i, stage) in self.patch_embed.iter().enumerate() {
            if i > 0 {
                x = gelu(x);
            }
            x = stage.forward(x, training);
        }
        let [b, h, w, d] = x.dims();
        let tokens = x.reshape([b, h * w, d]);
        if !self.use_pos {
            return (tokens, h, w);
        }
        let pos = self.pos_embeder.forward(h, w).unsqueeze::<3>();
        (tokens + pos, h, w)
    }

    /// Logits `[b, classes]`; `training` selects batch statistics in the BatchNorms (and updates
    /// their running statistics), as torch's `model.train()`.
    pub fn forward_mode(&self, x: Tensor<B, 4>, training: bool) -> Tensor<B, 2> {
        let (tokens, _, _) = self.embed(x, training);
        let [b, n, d] = tokens.dims();
        let mut z = tokens.reshape([b * n, d]);
        for blk in &self.blocks {
            z = blk.forward(z, b, n);
        }
        let cls = self.cls_token.val().expand([b, 1, d]);
        let n = n + 1;
        let mut z = Tensor::cat(vec![cls, z.reshape([b, n - 1, d])], 1).reshape([b * n, d]);
        for blk in &self.cls_attn_blocks {
            z = blk.forward(z, b, n);
        }
        let cls = z.reshape([b, n, d]).narrow(1, 0, 1).reshape([b, d]);
        fused::linear(&self.head, layer_norm(&self.norm, cls, LN_EPS))
    }

    /// Inference logits (BatchNorm running statistics), as the official model in `eval()` mode.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_mode(x, false)
    }
}

/// Drop what an official state dict holds besides parameters and running statistics
/// (BatchNorm `num_batches_tracked` counters).
pub fn prepare_state_dict(mut sd: crate::model::keys::StateDict) -> crate::model::keys::StateDict {
    sd.retain(|k, _| !k.ends_with(".num_batches_tracked"));
    sd
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for Tost<B> {
    /// burn path → `tost.py` key: stem stage `i` is `patch_embed.proj.{2i}` (GELUs sit between),
    /// the MLP is timm's `fc1`/`fc2`, the TSSA output projection `to_out.0`.
    fn official_key(path: &[String]) -> String {
        let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        let leaf = crate::model::keys::torch_leaf;
        if let ["patch_embed", i, rest @ ..] = p.as_slice() {
            let stage = 2 * i.parse::<usize>().unwrap_or(0);
            return match rest {
                ["weight"] => format!("patch_embed.proj.{stage}.0.weight"),
                ["bn", l] => format!("patch_embed.proj.{stage}.1.{}", leaf(l)),
                _ => p.join("."),
            };
        }
        p.iter()
            .map(|s| match *s {
                "c_fc" => "fc1",
                "c_proj" => "fc2",
                "to_out" => "to_out.0",
                other => leaf(other),
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}
