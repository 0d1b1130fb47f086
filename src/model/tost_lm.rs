//! The causal ToST language model (`tost_lang/model_TSSA.py` of `RobinWu218/ToST`: nanoGPT with
//! `GPTConfig(TSSA=True)`), as `"arch": "tost-lm"` of [`super::lm::LmConfig`]: embeddings, tied
//! head, `ln_f` and the training/generation code are the shared language-model path; this file
//! holds the layer.
//!
//! Per layer: `X½ = X + γ₁ ⊙ CausalTSSA(LN₁ X)`, `X' = X½ + γ₂ ⊙ MLP(LN₂ X½)`, layer scale
//! initialised to 1e-5.

use super::blocks::{linear, CausalTssa, Mlp, LN_EPS};
use super::fused::{layer_norm, CrateBackend};
use anyhow::Result;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::Tensor;

/// `arch` of the causal ToST language model, as the config JSON spells it.
const ARCH_TOST_LM: &str = super::Arch::TostLm.name();
/// The GPTConfig flag that selects TSSA in the official file (`"TSSA": true`).
pub const TSSA_FIELD: &str = "TSSA";
/// Layer-scale initial value, hard-coded in the official `Block`.
pub const LAYER_SCALE_INIT: f64 = 1e-5;
const INIT_STD: f64 = 0.02;

/// One `Block` of `model_TSSA.py` with `TSSA=True`.
#[derive(Module, Debug)]
pub struct TostLmBlock<B: CrateBackend> {
    pub ln_1: LayerNorm<B>,
    pub attn: CausalTssa<B>,
    pub ln_2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub gamma1: Param<Tensor<B, 1>>,
    pub gamma2: Param<Tensor<B, 1>>,
}

impl<B: CrateBackend> TostLmBlock<B> {
    /// nanoGPT init (N(0, 0.02), `c_proj` N(0, `proj_std`), zero biases), `temp = 1`, `denom_bias = 0`.
    pub fn new(
        d: usize,
        n_head: usize,
        block_size: usize,
        proj_std: f64,
        device: &B::Device,
    ) -> Self {
        let ln = || LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device);
        let gamma = || Param::from_tensor(Tensor::full([d], LAYER_SCALE_INIT, device));
        Self {
            ln_1: ln(),
            attn: CausalTssa {
                c_attn: linear(d, d, true, INIT_STD, device),
                c_proj: linear(d, d, true, proj_std, device),
                temp: Initializer::Ones.init([n_head, 1], device),
                denom_bias: Initializer::Zeros.init([n_head, block_size, 1], device),
                n_head,
            },
            ln_2: ln(),
            mlp: Mlp {
                c_fc: linear(d, 4 * d, true, INIT_STD, device),
                c_proj: linear(4 * d, d, true, proj_std, device),
            },
            gamma1: gamma(),
            gamma2: gamma(),
        }
    }

    /// On token rows `x` `[b·n, d]`; returns `(X½, X')`.
    pub fn forward(&self, x: Tensor<B, 2>, b: usize, n: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let g = |p: &Param<Tensor<B, 1>>| p.val().unsqueeze::<2>();
        let a = self
            .attn
            .forward(layer_norm(&self.ln_1, x.clone(), LN_EPS), b, n);
        let half = x + a * g(&self.gamma1);
        let m = self
            .mlp
            .forward(layer_norm(&self.ln_2, half.clone(), LN_EPS));
        (half.clone(), half + m * g(&self.gamma2))
    }
}

/// Trainable parameters of one layer of width `d`, `h` heads and context `t`.
pub fn layer_params(d: usize, h: usize, t: usize) -> usize {
    let ln = 2 * d;
    2 * ln + (d * d + d) + (d * d + d) + h + h * t + (4 * d * d + 4 * d) + (4 * d * d + d) + 2 * d
}

/// Read nanoGPT's `TSSA` flag out of a config JSON object: `true` selects `tost-lm` (and must
/// not contradict another `arch`), `false` must not come with `tost-lm`. The flag is removed.
pub fn take_tssa_flag(v: &mut serde_json::Value) -> Result<()> {
    let Some(obj) = v.as_object_mut() else {
        return Ok(());
    };
    let Some(flag) = obj.remove(TSSA_FIELD) else {
        return Ok(());
    };
    let tssa = flag
        .as_bool()
        .ok_or_else(|| anyhow::anyhow!("{TSSA_FIELD} must be true or false, got {flag}"))?;
    let arch = obj.get("arch").and_then(|a| a.as_str()).map(str::to_string);
    match (tssa, arch.as_deref()) {
        (true, None) => {
            obj.insert("arch".into(), ARCH_TOST_LM.into());
        }
        (true, Some(ARCH_TOST_LM)) | (false, None) => {}
        (true, Some(a)) => {
            anyhow::bail!("{TSSA_FIELD}: true needs \"arch\": \"{ARCH_TOST_LM}\", not {a:?}")
        }
        (false, Some(a)) => anyhow::ensure!(
            a != ARCH_TOST_LM,
            "\"arch\": \"{ARCH_TOST_LM}\" is the TSSA model; {TSSA_FIELD}: false contradicts it"
        ),
    }
    Ok(())
}
