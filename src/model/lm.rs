//! Causal language models as the official crate-lm code (nanoGPT-based) computes them, plus the
//! nanoGPT GPT baseline on the same code path (see `../shared/docs/crate-reference.md` §3.1, §7.4).
//!
//! `X⁰ = wte[idx] + wpe[0..T)`, then per layer
//! - `crate-lm` (`crate.py`, complete dictionary): `X½ = X + c_proj(CausalMSSA(LN₁ X))`,
//!   `X' = ReLU(z + η(zW − zWᵀW) − ηλ)` with `z = LN₂ X½` (no residual, no final LN);
//! - `crate-lm-overcomplete` (`crate_overcomplete.py`, what `train.py` trains): the same attention,
//!   then two non-negative ISTA steps on codes of width 4d from `a = 0` and the tied decode `a₁W`,
//!   and a final `ln_f`;
//! - `gpt` (nanoGPT `model.py`): `X½ = X + c_proj(CausalAttention(LN₁ X))`, `X' = X½ + MLP(LN₂ X½)`,
//!   final `ln_f`;
//! - `tost-lm` (ToST `model_TSSA.py`, see `tost_lm.rs`): causal TSSA and an MLP with layer scale,
//!   final `ln_f`;
//!
//! and `logits = X_L wteᵀ` (`lm_head` tied to `wte`).

use super::blocks::{
    linear, CrateLayer, Ista, Mssa, OvercompleteIsta, Sparsify, ISTA_ETA, ISTA_LAMBDA, OVERCOMPLETE,
};
pub use super::blocks::{Mlp, LN_EPS};
use super::fused::{self, layer_norm, matmul, merge_heads, split_heads, AttnMask, CrateBackend};
use super::tost_lm::{self, TostLmBlock};
use super::{Activations, Arch, Recorder};
use anyhow::{bail, ensure, Context, Result};
use burn::module::Module;
use burn::nn::{
    DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear,
};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Standard deviation of the nanoGPT initialisation of every Linear and Embedding.
const INIT_STD: f64 = 0.02;

/// The architectures on one code path.
pub const LM_ARCHS: [Arch; 4] = [
    Arch::CrateLm,
    Arch::CrateLmOvercomplete,
    Arch::Gpt,
    Arch::TostLm,
];
/// Their `"arch"` names.
pub const ARCHS: [&str; 4] = [
    LM_ARCHS[0].name(),
    LM_ARCHS[1].name(),
    LM_ARCHS[2].name(),
    LM_ARCHS[3].name(),
];

/// Names accepted by `--config` besides a JSON file (crate-lm's `from_pretrained` table, plus a
/// small character-level default whose vocabulary comes from the corpus).
pub const PRESETS: [&str; 6] = [
    "char",
    "crate-1l",
    "crate",
    "crate-medium",
    "crate-large",
    "crate-xl",
];

/// `CRATEConfig` / nanoGPT `GPTConfig` fields (the `model_args` of a nanoGPT checkpoint) plus `arch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    #[serde(default = "default_arch")]
    pub arch: Arch,
    pub vocab_size: usize,
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Only 0 is supported (every crate-lm config uses 0).
    #[serde(default)]
    pub dropout: f64,
    /// Biases in Linear/LayerNorm; the crate-lm files ignore it, `gpt` needs `true`.
    #[serde(default = "default_bias")]
    pub bias: bool,
}

fn default_arch() -> Arch {
    Arch::CrateLmOvercomplete
}
fn default_bias() -> bool {
    true
}

impl LmConfig {
    /// Bytes a training step of `batch` sequences of `t` tokens needs, roughly and from below:
    /// 4 copies of the parameters (weights, gradients, AdamW's moments) and per layer the
    /// attention scores and probabilities (`2·B·H·T²`) and about 24 token-width activations
    /// (`24·B·T·d`), f32; computed in f64 so no size overflows.
    pub fn train_step_bytes(&self, batch: usize, t: usize) -> f64 {
        let (b, t, d, h) = (
            batch as f64,
            t as f64,
            self.n_embd as f64,
            self.n_head as f64,
        );
        let params = self.param_count() as f64;
        let acts = self.n_layer as f64 * b * (2.0 * h * t * t + 24.0 * t * d)
            + 2.0 * b * t * self.vocab_size as f64;
        4.0 * (4.0 * params + acts)
    }

    fn table(n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        Self {
            arch: default_arch(),
            vocab_size: 50257,
            block_size: 1024,
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            bias: true,
        }
    }

    /// The character-level default: 4 layers, 4 heads of 32, context 128 (vocabulary set from the corpus).
    pub fn char_default() -> Self {
        Self {
            vocab_size: 0,
            block_size: 128,
            ..Self::table(4, 4, 128)
        }
    }

    /// crate-lm's `from_pretrained` table (names copied from GPT-2; GPT-2 BPE vocabulary).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "char" | "default" => Self::char_default(),
            "crate-1l" => Self::table(1, 1, 768),
            "crate" => Self::table(12, 12, 768),
            "crate-medium" => Self::table(24, 16, 1024),
            "crate-large" => Self::table(36, 20, 1280),
            "crate-xl" => Self::table(48, 25, 1600),
            _ => return None,
        })
    }

    /// A preset name or a JSON file.
    pub fn resolve(spec: &str) -> Result<Self> {
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

    /// A config JSON; nanoGPT's `"TSSA": true` (ToST's `GPTConfig`) reads as `"arch": "tost-lm"`.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut v: serde_json::Value =
            serde_json::from_str(text).context("not a valid language-model config")?;
        tost_lm::take_tssa_flag(&mut v)?;
        let cfg: Self = serde_json::from_value(v).context("not a valid language-model config")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            LM_ARCHS.contains(&self.arch),
            "arch \"{}\" is not a language model (expected one of {})",
            self.arch,
            ARCHS.join(", ")
        );
        use super::{MAX_COUNT, MAX_DEPTH, MAX_WIDTH};
        super::check_sizes(&[
            ("vocab_size", self.vocab_size, MAX_COUNT),
            ("block_size", self.block_size, 1 << 20),
            ("n_layer", self.n_layer, MAX_DEPTH),
            ("n_head", self.n_head, MAX_DEPTH),
            ("n_embd", self.n_embd, MAX_WIDTH),
        ])?;
        ensure!(
            self.n_embd.is_multiple_of(self.n_head),
            "n_embd {} is not divisible by n_head {}",
            self.n_embd,
            self.n_head
        );
        ensure!(
            self.dropout == 0.0,
            "dropout {} is not supported (crate-lm trains with 0)",
            self.dropout
        );
        ensure!(
            self.bias || !(self.is_gpt() || self.is_tost()),
            "{} with bias=false is not supported",
            self.arch
        );
        super::check_param_count(self.param_count())
    }

    pub fn overcomplete(&self) -> bool {
        self.arch == Arch::CrateLmOvercomplete
    }
    pub fn is_gpt(&self) -> bool {
        self.arch == Arch::Gpt
    }
    pub fn is_tost(&self) -> bool {
        self.arch == Arch::TostLm
    }

    /// Parameter count (tied `lm_head` counted once).
    pub fn param_count(&self) -> usize {
        let (d, v, t) = (self.n_embd, self.vocab_size, self.block_size);
        let ln = 2 * d;
        let layer = if self.is_tost() {
            tost_lm::layer_params(d, self.n_head, t)
        } else if self.is_gpt() {
            2 * ln + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
        } else {
            let ista = if self.overcomplete() {
                OVERCOMPLETE * d * d
            } else {
                d * d
            };
            2 * ln + d * d + (d * d + d) + ista
        };
        let ln_f = if self.arch == Arch::CrateLm { 0 } else { ln };
        v * d + t * d + self.n_layer * layer + ln_f
    }

    pub fn init<B: CrateBackend>(&self, device: &B::Device) -> CausalLm<B> {
        let d = self.n_embd;
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, d)
                .with_initializer(normal(INIT_STD))
                .init(device)
        };
        // nanoGPT: every c_proj.weight gets N(0, 0.02/√(2·n_layer)).
        let proj_std = INIT_STD / ((2 * self.n_layer) as f64).sqrt();
        let h = (0..self.n_layer)
            .map(|_| {
                if self.is_tost() {
                    LmBlock::Tost(TostLmBlock::new(
                        d,
                        self.n_head,
                        self.block_size,
                        proj_std,
                        device,
                    ))
                } else if self.is_gpt() {
                    LmBlock::Gpt(GptBlock::new(d, self.n_head, proj_std, device))
                } else {
                    LmBlock::Crate(crate_block(
                        d,
                        self.n_head,
                        proj_std,
                        self.overcomplete(),
                        device,
                    ))
                }
            })
            .collect();
        CausalLm {
            wte: embedding(self.vocab_size),
            wpe: embedding(self.block_size),
            h,
            ln_f: (self.arch != Arch::CrateLm).then(|| ln(d, device)),
            block_size: self.block_size,
        }
    }
}

fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

fn ln<B: CrateBackend>(d: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device)
}

/// Causal `softmax(q kᵀ·s) v` per head, `[b, h, n, dh]` (separate q, k, v: the GPT baseline).
fn causal_attention<B: CrateBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, h, n, _] = q.dims();
    let future = Tensor::<B, 2, Bool>::tril_mask([n, n], 0, &q.device())
        .reshape([1, 1, n, n])
        .expand([b, h, n, n]);
    let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3).matmul(v)
}

/// Causal MSSA of crate-lm (`CausalSelfAttention` of `crate.py`): the shared projection `c_attn`
/// (Q = K = V = `U`ᵀz, no bias) is [`Mssa::qkv`] and the output `c_proj` is [`Mssa::to_out`].
fn causal_mssa<B: CrateBackend>(
    d: usize,
    n_head: usize,
    proj_std: f64,
    dev: &B::Device,
) -> Mssa<B> {
    Mssa {
        qkv: linear(d, d, false, INIT_STD, dev),
        to_out: linear(d, d, true, proj_std, dev),
        dropout: DropoutConfig::new(0.0).init(),
        heads: n_head,
        dim_head: d / n_head,
    }
}

/// One causal CRATE layer (`Block` of either crate-lm file): `X½ = X + MSSA(LN₁ X)` (causal),
/// `X' = ISTA(LN₂ X½)`; `crate.py`: one ISTA step, W `[d, d]`; `crate_overcomplete.py`: two
/// ISTA steps on codes of width 4d, W `[4d, d]`, tied decode `a₁W`.
fn crate_block<B: CrateBackend>(
    d: usize,
    n_head: usize,
    proj_std: f64,
    overcomplete: bool,
    dev: &B::Device,
) -> CrateLayer<B> {
    let ista = if overcomplete {
        Sparsify::Tied(OvercompleteIsta::tied(d, dev))
    } else {
        Sparsify::Ista(Ista::new(d, ISTA_ETA, ISTA_LAMBDA, dev))
    };
    CrateLayer::new(causal_mssa(d, n_head, proj_std, dev), ista, LN_EPS, dev)
}

/// nanoGPT `CausalSelfAttention`: separate q, k, v from one `c_attn` `[d, 3d]`.
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: CrateBackend> {
    pub c_attn: Linear<B>,
    pub c_proj: Linear<B>,
    pub n_head: usize,
}

impl<B: CrateBackend> CausalSelfAttention<B> {
    fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> Tensor<B, 2> {
        let qkv = fused::linear(&self.c_attn, x);
        let d = qkv.dims()[1] / 3;
        let heads = |i: usize| split_heads(qkv.clone().narrow(1, i * d, d), b, n, self.n_head);
        let scale = ((d / self.n_head) as f64).powf(-0.5);
        let y = causal_attention(heads(0), heads(1), heads(2), scale);
        fused::linear(&self.c_proj, merge_heads(y))
    }
}

/// nanoGPT `Block`: `X½ = X + attn(LN₁ X)`, `X' = X½ + MLP(LN₂ X½)`.
#[derive(Module, Debug)]
pub struct GptBlock<B: CrateBackend> {
    pub ln_1: LayerNorm<B>,
    pub attn: CausalSelfAttention<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
}

impl<B: CrateBackend> GptBlock<B> {
    fn new(d: usize, n_head: usize, proj_std: f64, dev: &B::Device) -> Self {
        Self {
            ln_1: ln(d, dev),
            attn: CausalSelfAttention {
                c_attn: linear(d, 3 * d, true, INIT_STD, dev),
                c_proj: linear(d, d, true, proj_std, dev),
                n_head,
            },
            ln_2: ln(d, dev),
            mlp: Mlp {
                c_fc: linear(d, 4 * d, true, INIT_STD, dev),
                c_proj: linear(4 * d, d, true, proj_std, dev),
            },
        }
    }

    fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize, rec: &mut Recorder<B>) -> Tensor<B, 2> {
        let half = x.clone() + self.attn.forward(layer_norm(&self.ln_1, x, LN_EPS), b, n);
        rec.push("attn", &half);
        let h = layer_norm(&self.ln_2, half.clone(), LN_EPS);
        let out = half + self.mlp.forward(h);
        rec.push("mlp", &out);
        out
    }
}

/// One layer of either kind (a handful per model, so the variants' size difference is moot).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum LmBlock<B: CrateBackend> {
    Crate(CrateLayer<B>),
    Gpt(GptBlock<B>),
    Tost(TostLmBlock<B>),
}

/// A causal language model (`transformer.*` of the official files; `lm_head` is `wte`).
#[derive(Module, Debug)]
pub struct CausalLm<B: CrateBackend> {
    pub wte: Embedding<B>,
    pub wpe: Embedding<B>,
    pub h: Vec<LmBlock<B>>,
    pub ln_f: Option<LayerNorm<B>>,
    pub block_size: usize,
}

impl<B: CrateBackend> CausalLm<B> {
    pub fn vocab_size(&self) -> usize {
        self.wte.weight.dims()[0]
    }

    /// Final hidden rows `[b·n, d]` (after `ln_f` where the model has one).
    fn hidden(&self, idx: Tensor<B, 2, Int>, acts: &mut Activations<B>) -> Tensor<B, 2> {
        let [b, n] = idx.dims();
        assert!(
            n <= self.block_size,
            "sequence of {n} tokens exceeds block_size {}",
            self.block_size
        );
        let d = self.wte.weight.dims()[1];
        let pos = self.wpe.weight.val().narrow(0, 0, n).reshape([1, n, d]);
        let x = self.wte.forward(idx) + pos; // X⁰ = wte[idx] + wpe[0..T)
        acts.push("act.embed", &x);
        let mut x = x.reshape([b * n, d]);
        for (i, block) in self.h.iter().enumerate() {
            let mut rec = Recorder::layer(&mut *acts, "act.layer", i, b, n);
            x = match block {
                LmBlock::Crate(blk) => blk.forward_traced(x, b, n, &AttnMask::Causal, &mut rec),
                LmBlock::Gpt(blk) => blk.forward(x, b, n, &mut rec),
                LmBlock::Tost(blk) => {
                    let (half, out) = blk.forward(x, b, n);
                    rec.push("attn", &half);
                    rec.push("mlp", &out);
                    out
                }
            };
        }
        if let Some(ln_f) = &self.ln_f {
            x = layer_norm(ln_f, x, LN_EPS);
            acts.push("act.final_norm", &x.clone().reshape([b, n, d]));
        }
        x
    }

    /// `logits = X wteᵀ` (tied head) for hidden rows.
    fn head(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        matmul(x, self.wte.weight.val().transpose())
    }

    /// Logits at every position, `[b, n, vocab]`, recording the official activations into `acts`.
    pub fn forward_with(&self, idx: Tensor<B, 2, Int>, acts: &mut Activations<B>) -> Tensor<B, 3> {
        let [b, n] = idx.dims();
        if b * n == 0 {
            // an empty batch has empty logits (flex's matmul faults on zero rows)
            return Tensor::zeros([b, n, self.wte.weight.dims()[0]], &idx.device());
        }
        let logits = self.head(self.hidden(idx, acts));
        let v = logits.dims()[1];
        logits.reshape([b, n, v])
    }

    pub fn forward(&self, idx: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_with(idx, &mut Activations::off())
    }

    /// Logits of the last position only, `[b, vocab]` (what generation needs).
    pub fn last_logits(&self, idx: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, n] = idx.dims();
        let x = self.hidden(idx, &mut Activations::off());
        let d = x.dims()[1];
        let last = x.reshape([b, n, d]).narrow(1, n - 1, 1).reshape([b, d]);
        self.head(last)
    }

    /// Mean next-token cross-entropy (targets −1 are ignored).
    pub fn loss(&self, idx: Tensor<B, 2, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        cross_entropy(self.forward(idx), targets)
    }

    /// Sample `max_new` tokens after `prompt` (no KV cache: the cropped prefix is re-run each step,
    /// as the official `generate`). `on_token` sees each new token as it is drawn. Returns the new
    /// tokens and, per step, the last-position logits before temperature and top-k.
    pub fn generate(
        &self,
        prompt: &[i64],
        opts: &Sampling,
        rng: &mut impl rand::Rng,
        mut on_token: impl FnMut(i64) -> Result<()>,
    ) -> Result<(Vec<i64>, Vec<Vec<f32>>)> {
        ensure!(!prompt.is_empty(), "the prompt is empty");
        check_tokens(prompt, self.vocab_size())?;
        let device = self.wte.weight.device();
        let mut seq = prompt.to_vec();
        let (mut new, mut all_logits) = (Vec::new(), Vec::new());
        for _ in 0..opts.max_new_tokens {
            let ctx = &seq[seq.len().saturating_sub(self.block_size)..];
            let idx = Tensor::<B, 2, Int>::from_data(
                TensorData::new(ctx.to_vec(), [1, ctx.len()]),
                &device,
            );
            let logits: Vec<f32> = self
                .last_logits(idx)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 logits");
            let tok = opts.sample(&logits, rng) as i64;
            all_logits.push(logits);
            seq.push(tok);
            new.push(tok);
            on_token(tok)?;
        }
        Ok((new, all_logits))
    }
}

/// Token ids must index the vocabulary.
pub fn check_tokens(tokens: &[i64], vocab: usize) -> Result<()> {
    if let Some(t) = tokens.iter().find(|&&t| t < 0 || t as usize >= vocab) {
        bail!("token id {t} is outside the vocabulary (size {vocab})");
    }
    Ok(())
}

/// Sampling settings of `generate`: logits / temperature, keep the top k, draw.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_k: Option<usize>,
}

impl Sampling {
    /// A temperature that is finite and ≥ 0 (0 = greedy); NaN or a negative value would sample
    /// garbage without a word.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "--temperature must be a finite number ≥ 0 (0 = greedy), got {}",
            self.temperature
        );
        Ok(())
    }
    /// Draw a token from last-position logits (`torch.multinomial` of the softmax after top-k).
    pub fn sample(&self, logits: &[f32], rng: &mut impl rand::Rng) -> usize {
        let argmax = || {
            (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap_or(0)
        };
        if self.temperature <= 0.0 || self.top_k == Some(1) {
            return argmax();
        }
        let mut scaled: Vec<f64> = logits
            .iter()
            .map(|&l| l as f64 / self.temperature)
            .collect();
        if let Some(k) = self.top_k.filter(|&k| k < scaled.len()) {
            let mut sorted = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k.max(1) - 1];
            for s in scaled.iter_mut().filter(|s| **s < kth) {
                *s = f64::NEG_INFINITY;
            }
        }
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scaled.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut u = rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                return i;
            }
            u -= w;
        }
        argmax()
    }
}

/// Mean cross-entropy over positions whose target is not −1 (`F.cross_entropy(…, ignore_index=-1)`).
pub fn cross_entropy<B: CrateBackend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let [b, n, v] = logits.dims();
    let logp = log_softmax(logits.reshape([b * n, v]), 1);
    let t = targets.reshape([b * n, 1]);
    let keep = t.clone().greater_equal_elem(0);
    let picked = logp.gather(1, t.clamp_min(0));
    let w = keep.float();
    (picked * w.clone()).sum().neg() / w.sum()
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for CausalLm<B> {
    /// burn path → crate-lm / nanoGPT key (`transformer.` + the same field names; enum variants and
    /// burn's LayerNorm `gamma`/`beta` names removed; [`CrateLayer`]'s `norm1`/`mssa`/`norm2` are
    /// `prenorm_1`/`attn`/`prenorm_2`, [`Mssa`]'s `qkv`/`to_out` are `c_attn`/`c_proj`).
    fn official_key(path: &[String]) -> String {
        let parts: Vec<&str> = path
            .iter()
            .map(|s| s.as_str())
            .filter(|s| !matches!(*s, "Crate" | "Gpt" | "Tost" | "Ista" | "Tied"))
            .map(|s| match s {
                "norm1" => "prenorm_1",
                "mssa" => "attn",
                "norm2" => "prenorm_2",
                "qkv" => "c_attn",
                "to_out" => "c_proj",
                s => crate::model::keys::torch_leaf(s),
            })
            .collect();
        format!("transformer.{}", parts.join("."))
    }
}

/// The tied alias of `transformer.wte.weight` in official state dicts.
pub const LM_HEAD_KEY: &str = "lm_head.weight";

/// Official state dict → the keys this model holds: drops the tied `lm_head.weight` alias (or
/// uses it when `wte` is absent) and the causal-mask buffers `transformer.h.{i}.attn.bias` (4-D).
pub fn prepare_state_dict(mut sd: crate::model::keys::StateDict) -> crate::model::keys::StateDict {
    if let Some(head) = sd.remove(LM_HEAD_KEY) {
        sd.entry("transformer.wte.weight".to_string())
            .or_insert(head);
    }
    sd.retain(|k, v| !(k.ends_with(".attn.bias") && v.shape.len() == 4));
    sd
}
