//! CRATE image classifier, as the official `model/crate.py` computes it.
//!
//! patchify `(p1 p2 c)` → LN → Linear → LN, prepend cls, add learned positions, then per layer
//! `Z½ = Z + MSSA(LN₁ Z)` and `Z' = ISTA(LN₂ Z½)` (no residual around ISTA), cls or mean pooling,
//! head `LN + Linear`.

use super::fused::{self, layer_norm, AttnMask, CrateBackend};
use anyhow::{ensure, Context, Result};
use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig,
};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::alpha;
pub use super::blocks::{CrateLayer, Sparsify};
use super::blocks::{Ista, Mssa, OvercompleteIsta, PatchConv, ISTA_ETA, ISTA_LAMBDA};
use super::{Activations, Arch, Pool, Recorder};

/// Constructor arguments of the official `CRATE` class (same names, same defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateConfig {
    #[serde(default = "default_arch")]
    pub arch: Arch,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_classes: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    #[serde(default)]
    pub pool: Pool,
    #[serde(default = "default_channels")]
    pub channels: usize,
    #[serde(default = "default_dim_head")]
    pub dim_head: usize,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub emb_dropout: f64,
    /// ISTA step size η (the official constructor calls it `ista`).
    #[serde(default = "default_ista")]
    pub ista: f64,
    /// ISTA sparsity λ; absent = the official classifier's hard-coded 0.1 (CRATE-MAE encoders: 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambd: Option<f64>,
}

fn default_arch() -> Arch {
    Arch::Crate
}
fn default_channels() -> usize {
    3
}
fn default_dim_head() -> usize {
    64
}
fn default_ista() -> f64 {
    ISTA_ETA
}

/// LayerNorm epsilon of every norm in the official classifier (torch default).
pub const LN_EPS: f64 = 1e-5;

/// The `arch`s a [`CrateConfig`] describes: CRATE, CRATE-α, and a classifier on a CRATE-MAE
/// encoder (conv patch embedding, CRATE layers with the encoder's λ; `whitebox train --init-from
/// MAE_CKPT` builds it).
pub const CLASSIFIER_ARCHS: [Arch; 3] = [Arch::Crate, Arch::CrateAlpha, Arch::CrateMaeEncoder];

/// Names accepted by `--config` besides a JSON path.
pub const PRESETS: [&str; 8] = [
    "fmnist",
    "fmnist-alpha",
    "crate-tiny",
    "crate-small",
    "crate-base",
    "crate-large",
    "crate-alpha-B/16",
    "crate-alpha-{Ti,S,B,L,H,g,G,e}/{8,14,16,32}",
];

impl CrateConfig {
    /// Official factory shape: 224 px, patch 16, `dim_head = dim / heads`, 1000 classes.
    pub(crate) fn factory(dim: usize, depth: usize, heads: usize) -> Self {
        Self {
            arch: default_arch(),
            image_size: 224,
            patch_size: 16,
            num_classes: 1000,
            dim,
            depth,
            heads,
            pool: Pool::Cls,
            channels: 3,
            dim_head: dim / heads,
            dropout: 0.0,
            emb_dropout: 0.0,
            ista: 0.1,
            lambd: None,
        }
    }

    /// The default model for 28×28 grayscale data (Fashion-MNIST, MNIST): patch 7 (16 tokens + cls),
    /// d = 96, 6 layers, 4 heads of 24: the main job (`whitebox train`, 40 epochs) reaches 89.8 % on
    /// Fashion-MNIST in ~6 minutes on 2 cores (AMD EPYC Zen 4, 2026-12-02).
    pub fn fmnist() -> Self {
        Self {
            image_size: 28,
            patch_size: 7,
            num_classes: 10,
            channels: 1,
            ..Self::factory(96, 6, 4)
        }
    }

    /// The Fashion-MNIST model shape with CRATE-α layers (same width, depth, heads and patch).
    pub fn fmnist_alpha() -> Self {
        Self {
            arch: Arch::CrateAlpha,
            ..Self::fmnist()
        }
    }

    /// This configuration with another `arch` (`--arch` on the command line).
    pub fn with_arch(self, arch: Arch) -> Result<Self> {
        let cfg = Self { arch, ..self };
        cfg.validate()?;
        Ok(cfg)
    }

    fn with_arch_unchecked(self, arch: Arch) -> Self {
        Self { arch, ..self }
    }

    pub fn is_alpha(&self) -> bool {
        self.arch == Arch::CrateAlpha
    }

    pub fn preset(name: &str) -> Option<Self> {
        if let Some((dim, depth, heads, patch_size)) = alpha::preset_shape(name) {
            return Some(Self {
                arch: Arch::CrateAlpha,
                patch_size,
                ..Self::factory(dim, depth, heads)
            });
        }
        Some(match name {
            "fmnist" | "default" => Self::fmnist(),
            "fmnist-alpha" => Self::fmnist_alpha(),
            "crate-tiny" | "crate-t" => Self::factory(384, 12, 6),
            "crate-small" | "crate-s" => Self::factory(576, 12, 12),
            "crate-base" | "crate-b" => Self::factory(768, 12, 12),
            "crate-large" | "crate-l" => Self::factory(1024, 24, 16),
            _ => return None,
        })
    }

    /// A preset name or a JSON file holding the constructor arguments.
    pub fn resolve(spec: &str) -> Result<Self> {
        let other = [
            ("a ToST", &super::tost::PRESETS[..]),
            ("a CRATE-MAE", &super::mae::MAE_PRESETS[..]),
            ("a language-model", &super::lm::PRESETS[..]),
        ];
        let theirs = other.iter().find(|(_, p)| p.contains(&spec));
        if let (None, Some((family, _))) = (Self::preset(spec), theirs) {
            anyhow::bail!(
                "--config {spec:?} is {family} preset; this command takes a CRATE or CRATE-α \
                 config ({})",
                PRESETS.join(", ")
            );
        }
        super::resolve_config(
            spec,
            Self::preset(spec),
            "a preset",
            &PRESETS,
            Self::from_json_file,
        )
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        super::read_json_config(path, Self::from_json)
    }

    /// A config JSON (the constructor arguments), validated.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).context("not a valid CRATE config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            CLASSIFIER_ARCHS.contains(&self.arch),
            "arch \"{}\" is not a classifier (expected \"{}\", \"{}\" or \"{}\")",
            self.arch,
            CLASSIFIER_ARCHS[0],
            CLASSIFIER_ARCHS[1],
            CLASSIFIER_ARCHS[2]
        );
        use super::{MAX_COUNT, MAX_DEPTH, MAX_WIDTH};
        super::check_sizes(&[
            ("image_size", self.image_size, 1 << 14),
            ("patch_size", self.patch_size, 1 << 14),
            ("num_classes", self.num_classes, MAX_COUNT),
            ("dim", self.dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("heads", self.heads, MAX_DEPTH),
            ("channels", self.channels, 64),
            ("dim_head", self.dim_head, MAX_WIDTH),
        ])?;
        super::check_sizes(&[("heads × dim_head", self.heads * self.dim_head, MAX_WIDTH)])?;
        ensure!(
            self.image_size.is_multiple_of(self.patch_size),
            "image_size {} is not divisible by patch_size {}",
            self.image_size,
            self.patch_size
        );
        ensure!(
            (0.0..1.0).contains(&self.dropout) && (0.0..1.0).contains(&self.emb_dropout),
            "dropout must be in [0, 1)"
        );
        ensure!(
            self.ista > 0.0 && self.ista.is_finite(),
            "ista (the step size) must be positive and finite"
        );
        ensure!(
            self.lambd.is_none_or(|l| l.is_finite() && l >= 0.0),
            "lambd must be a finite number ≥ 0"
        );
        super::check_param_count(self.param_count())
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    pub fn patch_dim(&self) -> usize {
        self.channels * self.patch_size * self.patch_size
    }

    /// Parameter count from the official formula (matches `Module::num_params` of the built model).
    /// Bytes a training step of `batch` images needs, roughly and from below: weights, gradients
    /// and AdamW's two moments (4 copies of the parameters), and per layer the attention scores
    /// and probabilities (`2·B·K·N²`) and about 24 token-width activations (`24·B·N·d`), f32.
    pub fn train_step_bytes(&self, batch: usize) -> f64 {
        let n = (self.num_patches() + 1) as f64;
        let (b, d, k) = (batch as f64, self.dim as f64, self.heads as f64);
        // a validated config's count cannot overflow (its sizes are bounded, `check_sizes`)
        let params = 4.0 * self.param_count() as f64;
        4.0 * (params + self.depth as f64 * b * (2.0 * k * n * n + 24.0 * n * d))
    }

    pub fn param_count(&self) -> usize {
        if self.is_alpha() {
            // conv tokenizer, CRATE-α layers
            let (d, n) = (self.dim, self.num_patches() + 1);
            let embed = self.patch_dim() * d + d + d + n * d;
            let layer = alpha::layer_params(d, self.heads * self.dim_head);
            return embed + self.depth * layer + 2 * d + d * self.num_classes + self.num_classes;
        }
        if self.arch == Arch::CrateMaeEncoder {
            // conv tokenizer instead of LN-Linear-LN: C·P²·d + d instead of 2·C·P² + C·P²·d + 3d
            return self.clone().with_arch_unchecked(Arch::Crate).param_count()
                - 2 * self.patch_dim()
                - 2 * self.dim;
        }
        let (d, pd, inner, n) = (
            self.dim,
            self.patch_dim(),
            self.heads * self.dim_head,
            self.num_patches() + 1,
        );
        let embed = 2 * pd + pd * d + d + 2 * d + n * d + d;
        let layer = 2 * d + inner * d + inner * d + d + 2 * d + d * d;
        embed + self.depth * layer + 2 * d + d * self.num_classes + self.num_classes
    }

    pub fn init<B: CrateBackend>(&self, device: &B::Device) -> Crate<B> {
        if self.is_alpha() {
            return self.init_alpha(device);
        }
        if self.arch == Arch::CrateMaeEncoder {
            let mut m = self.clone().with_arch_unchecked(Arch::Crate).init(device);
            (m.patch_norm, m.patch_linear, m.embed_norm) = (None, None, None);
            m.conv1 = Some(PatchConv::new(
                self.channels,
                self.dim,
                self.patch_size,
                device,
            ));
            return m;
        }
        let d = self.dim;
        let ln = |n: usize| LayerNormConfig::new(n).with_epsilon(LN_EPS).init(device);
        let randn = Initializer::Normal {
            mean: 0.0,
            std: 1.0,
        };
        Crate {
            patch_norm: Some(ln(self.patch_dim())),
            patch_linear: Some(LinearConfig::new(self.patch_dim(), d).init(device)),
            embed_norm: Some(ln(d)),
            conv1: None,
            cls_token: randn.init([1, 1, d], device),
            pos_embedding: randn.init([1, self.num_patches() + 1, d], device),
            emb_dropout: DropoutConfig::new(self.emb_dropout).init(),
            layers: (0..self.depth)
                .map(|_| {
                    CrateLayer::new(
                        Mssa::new(d, self.heads, self.dim_head, true, self.dropout, device),
                        Sparsify::Ista(Ista::new(
                            d,
                            self.ista,
                            self.lambd.unwrap_or(ISTA_LAMBDA),
                            device,
                        )),
                        LN_EPS,
                        device,
                    )
                })
                .collect(),
            head_norm: ln(d),
            head: LinearConfig::new(d, self.num_classes).init(device),
            patch_size: self.patch_size,
            mean_pool: self.pool == Pool::Mean,
        }
    }

    /// A CRATE-α classifier (conv tokenizer, layers with pre-norm eps 1e-6, MSSA without output
    /// bias and `blocks::OvercompleteIsta::separate`) with torch-like initial weights.
    fn init_alpha<B: CrateBackend>(&self, device: &B::Device) -> Crate<B> {
        let d = self.dim;
        let ln = |n: usize, eps: f64| LayerNormConfig::new(n).with_epsilon(eps).init(device);
        let randn = Initializer::Normal {
            mean: 0.0,
            std: 1.0,
        };
        Crate {
            patch_norm: None,
            patch_linear: None,
            embed_norm: None,
            conv1: Some(PatchConv::new(self.channels, d, self.patch_size, device)),
            cls_token: randn.init([1, 1, d], device),
            pos_embedding: randn.init([1, self.num_patches() + 1, d], device),
            emb_dropout: DropoutConfig::new(self.emb_dropout).init(),
            layers: (0..self.depth)
                .map(|_| {
                    CrateLayer::new(
                        Mssa::new(d, self.heads, self.dim_head, false, self.dropout, device),
                        Sparsify::Overcomplete(OvercompleteIsta::separate(d, device)),
                        alpha::PRENORM_EPS,
                        device,
                    )
                })
                .collect(),
            head_norm: ln(d, LN_EPS),
            head: LinearConfig::new(d, self.num_classes).init(device),
            patch_size: self.patch_size,
            mean_pool: self.pool == Pool::Mean,
        }
    }
}

#[derive(Module, Debug)]
pub struct Crate<B: CrateBackend> {
    /// CRATE tokenizer `LN → Linear → LN` (None in CRATE-α).
    pub patch_norm: Option<LayerNorm<B>>,
    pub patch_linear: Option<Linear<B>>,
    pub embed_norm: Option<LayerNorm<B>>,
    /// CRATE-α tokenizer: a conv with kernel = stride = patch (None in CRATE).
    pub conv1: Option<PatchConv<B>>,
    pub cls_token: Param<Tensor<B, 3>>,
    pub pos_embedding: Param<Tensor<B, 3>>,
    pub emb_dropout: Dropout,
    pub layers: Vec<CrateLayer<B>>,
    pub head_norm: LayerNorm<B>,
    pub head: Linear<B>,
    pub patch_size: usize,
    pub mean_pool: bool,
}

/// `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`, the official einops patch layout (channel fastest).
pub fn patchify<B: CrateBackend>(x: Tensor<B, 4>, p: usize) -> Tensor<B, 3> {
    let [b, c, hh, ww] = x.dims();
    let (h, w) = (hh / p, ww / p);
    x.reshape([b, c, h, p, w, p])
        .permute([0, 2, 4, 3, 5, 1])
        .reshape([b, h * w, p * p * c])
}

impl<B: CrateBackend> Crate<B> {
    /// Patch tokens `[b, n, d]`: `LN(Linear(LN(patches)))` (CRATE) or `conv1(x)` (CRATE-α).
    fn tokenize(&self, x: Tensor<B, 4>, acts: &mut Activations<B>) -> Tensor<B, 3> {
        if let Some(conv) = &self.conv1 {
            let tokens = conv.forward(x);
            if acts.enabled() {
                acts.push("act.patch_embed_conv", &conv.as_feature_map(tokens.clone()));
            }
            return tokens;
        }
        let (Some(pn), Some(pl), Some(en)) =
            (&self.patch_norm, &self.patch_linear, &self.embed_norm)
        else {
            unreachable!("a CRATE model has either conv1 or the LN-Linear-LN tokenizer")
        };
        let patches = patchify(x, self.patch_size);
        acts.push("act.patches", &patches);
        let tokens = en.forward(pl.forward(pn.forward(patches)));
        acts.push("act.patch_embed", &tokens);
        tokens
    }

    /// Tokens `Z⁰` = [cls; tokenize(x)] + positions.
    pub fn embed(&self, x: Tensor<B, 4>, acts: &mut Activations<B>) -> Tensor<B, 3> {
        let tokens = self.tokenize(x, acts);
        let [b, n, d] = tokens.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let pos = self.positions(n);
        // added as rows of one [b, (n+1)·d] matrix: flex's fast row-broadcast path, where a
        // 3-D broadcast over the batch walked a strided iterator (5 % of inference)
        let z = (Tensor::cat(vec![cls, tokens], 1).reshape([b, (n + 1) * d])
            + pos.reshape([1, (n + 1) * d]))
        .reshape([b, n + 1, d]);
        let z = self.emb_dropout.forward(z);
        acts.push("act.embed", &z);
        z
    }

    /// Position embeddings `[1, n+1, d]` for `n` patches: the learned ones, or at another square
    /// grid their patch part resampled bicubically as DINO's `interpolate_pos_encoding` (a fixed
    /// linear map, so gradients reach the learned embedding; multi-crop's small views use it).
    fn positions(&self, n: usize) -> Tensor<B, 3> {
        let pos = self.pos_embedding.val();
        let [_, slots, d] = pos.dims();
        let (g_in, g_out) = ((slots - 1).isqrt(), n.isqrt());
        if n + 1 == slots || g_in * g_in + 1 != slots || g_out * g_out != n {
            return pos.slice([0..1, 0..n + 1, 0..d]);
        }
        let m = super::posembed::resample_matrix(g_in, g_out);
        let m = Tensor::<B, 2>::from_data(TensorData::new(m, [n, g_in * g_in]), &pos.device());
        let grid = pos.clone().narrow(1, 1, slots - 1).reshape([slots - 1, d]);
        let patches = fused::matmul(m, grid).reshape([1, n, d]);
        Tensor::cat(vec![pos.narrow(1, 0, 1), patches], 1)
    }

    /// Logits for an NCHW batch, recording the official activations into `acts` when it is on.
    /// Tokens are kept as a `[b·n, d]` matrix between layers so every linear map is one GEMM.
    pub fn forward_with(&self, x: Tensor<B, 4>, acts: &mut Activations<B>) -> Tensor<B, 2> {
        if x.dims()[0] == 0 {
            // an empty batch has empty logits (flex's matmul faults on zero rows)
            return Tensor::zeros([0, self.head.weight.dims()[1]], &x.device());
        }
        let normed = self.features_with(x, acts);
        fused::linear(&self.head, normed)
    }

    /// The head's input `LN(pool(Z^L))` `[b, d]` (`mlp_head.0`): the image features that the
    /// self-supervised heads, k-NN and the linear probe read.
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.features_with(x, &mut Activations::off())
    }

    fn features_with(&self, x: Tensor<B, 4>, acts: &mut Activations<B>) -> Tensor<B, 2> {
        let z = self.embed(x, acts);
        let [b, n, d] = z.dims();
        let mut z = z.reshape([b * n, d]);
        let depth = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == depth && !acts.enabled() && !self.mean_pool {
                // only the cls row of the last layer reaches the head
                let first = layer.forward_first(z, b, n);
                return layer_norm(&self.head_norm, first, LN_EPS);
            }
            let mut rec =
                Recorder::layer(acts, "act.layer", i, b, n).only(&["mssa", "attn", "ista"]);
            z = layer.forward_traced(z, b, n, &AttnMask::None, &mut rec);
        }
        let pooled = self.pool(z.reshape([b, n, d]));
        let normed = layer_norm(&self.head_norm, pooled, LN_EPS);
        acts.push("act.final_norm", &normed);
        normed
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_with(x, &mut Activations::off())
    }

    /// cls token, or the mean over all tokens including cls (official `pool='mean'`).
    fn pool(&self, z: Tensor<B, 3>) -> Tensor<B, 2> {
        let [b, _, d] = z.dims();
        if self.mean_pool {
            z.mean_dim(1).reshape([b, d])
        } else {
            z.narrow(1, 0, 1).reshape([b, d])
        }
    }
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for Crate<B> {
    /// burn path → official `model/crate.py` key (see `../shared/docs/crate-reference.md` §7.1).
    fn official_key(path: &[String]) -> String {
        let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
        let leaf = crate::model::keys::torch_leaf;
        match p.as_slice() {
            ["patch_norm", l] => format!("to_patch_embedding.1.{}", leaf(l)),
            ["patch_linear", l] => format!("to_patch_embedding.2.{}", leaf(l)),
            ["embed_norm", l] => format!("to_patch_embedding.3.{}", leaf(l)),
            ["conv1", l] => format!("conv1.{l}"),
            ["head_norm", l] => format!("mlp_head.0.{}", leaf(l)),
            ["head", l] => format!("mlp_head.1.{}", leaf(l)),
            ["layers", i, "norm1", l] => format!("transformer.layers.{i}.0.norm.{}", leaf(l)),
            ["layers", i, "mssa", "qkv", l] => {
                format!("transformer.layers.{i}.0.fn.qkv.{}", leaf(l))
            }
            ["layers", i, "mssa", "to_out", l] => {
                format!("transformer.layers.{i}.0.fn.to_out.0.{}", leaf(l))
            }
            ["layers", i, "norm2", l] => format!("transformer.layers.{i}.1.norm.{}", leaf(l)),
            ["layers", i, "ista", "Ista", l] => format!("transformer.layers.{i}.1.fn.{l}"),
            ["layers", i, "ista", "Overcomplete", l] => {
                format!("transformer.layers.{i}.1.fn.{}", alpha::official_leaf(l))
            }
            _ => p.join("."),
        }
    }
}
