//! The cubecl code path without a GPU: the models on burn's wgpu backend (Vulkan compute; on a
//! CPU-only machine Mesa's lavapipe, `mesa-vulkan-drivers`) against the official golden files —
//! the same kernels-by-composition (`CrateBackend`'s op-by-op defaults) that CUDA runs.
//!
//! `cargo test --release --features wgpu --test wgpu` (`bash scripts/wgpu-check.sh`). Tolerances
//! are the golden tests' where the reductions run in the same order, and 1e-4 for the outputs
//! where a GPU reduction may not (the reference's own float32 error is ~1e-6, `manifest.json`).
#![cfg(feature = "wgpu")]

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Wgpu};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor};
use common::{assert_close, Golden};
use whitebox::model::{Activations, CrateConfig};
use whitebox::weights::{collect_gradients, collect_state_dict};

type G = Wgpu;
type B = Autodiff<Wgpu>;

/// The Vulkan device: a GPU where there is one, else lavapipe's CPU device.
fn device() -> WgpuDevice {
    WgpuDevice::DefaultDevice
}

fn crate_case(file: &str) {
    let g = Golden::load(file);
    let device = device();
    let cfg: CrateConfig = serde_json::from_str(&g.meta["ctor"]).unwrap();
    let model = common::load_clean(cfg.init::<B>(&device), &g.with_prefix("param."));
    let input = Tensor::<B, 4>::from_data(g.get("input").clone(), &device);
    let mut acts = Activations::on();
    let logits = model.forward_with(input, &mut acts);
    for c in acts.into_vec() {
        let want = g.get(&c.name);
        let got = burn::tensor::TensorData::new(c.values, c.shape);
        assert_close(&format!("{file} {}", c.name), &got, want, 1e-4);
    }
    assert_close(
        &format!("{file} logits"),
        &logits.clone().into_data(),
        g.get("logits"),
        1e-4,
    );
    let labels = Tensor::<B, 1, Int>::from_data(g.get("labels").clone(), &device);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, labels);
    let l = loss.clone().into_scalar();
    let want = g.f32("loss")[0];
    assert!((l - want).abs() <= 1e-5, "{file} loss {l} vs {want}");
    let grads = loss.backward();
    let got = collect_gradients(&model, &grads);
    let want = g.with_prefix("grad.");
    assert_eq!(got.len(), want.len(), "{file}: one gradient per parameter");
    for (k, w) in &want {
        let wv: Vec<f32> = w.to_vec().unwrap();
        let tol = 1e-3 * common::max_abs(&wv) + 1e-6;
        assert_close(&format!("{file} grad.{k}"), &got[k], w, tol);
    }
    let gp = GradientsParams::from_grads(grads, &model);
    let mut opt = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.05)
        .init::<B, whitebox::model::Crate<B>>();
    let after = collect_state_dict(&opt.step(1e-3, model, gp).valid());
    let want = g.with_prefix("adamw1.");
    assert_eq!(after.len(), want.len(), "{file}: adamw1 key count");
    for (k, w) in &want {
        assert_close(&format!("{file} adamw1.{k}"), &after[k], w, 1e-4);
    }
}

#[test]
fn crate_forward_backward_and_adamw_match_the_official_code_on_wgpu() {
    crate_case("crate_A.safetensors");
    crate_case("crate_B.safetensors");
}

#[test]
fn crate_alpha_logits_match_the_official_code_on_wgpu() {
    let g = Golden::load("crate_alpha.safetensors");
    let device = device();
    let mut cfg: CrateConfig = serde_json::from_str(&g.meta["ctor"]).unwrap();
    cfg.arch = whitebox::model::Arch::CrateAlpha;
    let model = common::load_clean(cfg.init::<G>(&device), &g.with_prefix("param."));
    let x = Tensor::<G, 4>::from_data(g.get("input").clone(), &device);
    assert_close(
        "logits",
        &model.forward(x).into_data(),
        g.get("logits"),
        1e-4,
    );
}

#[test]
fn causal_crate_logits_match_the_official_code_on_wgpu() {
    for (file, arch) in [
        ("crate_lm_complete.safetensors", "crate-lm"),
        ("crate_lm_overcomplete.safetensors", "crate-lm-overcomplete"),
    ] {
        let g = Golden::load(file);
        let device = device();
        let mut v: serde_json::Value = serde_json::from_str(&g.meta["config"]).unwrap();
        v["arch"] = arch.into();
        let cfg = whitebox::model::lm::LmConfig::from_json(&v.to_string()).unwrap();
        let model =
            whitebox::weights::load_official_lm(cfg.init::<G>(&device), g.with_prefix("param."))
                .unwrap();
        let idx = Tensor::<G, 2, Int>::from_data(g.get("idx").clone(), &device);
        assert_close(
            &format!("{file} logits"),
            &model.forward(idx).into_data(),
            g.get("logits"),
            1e-4,
        );
    }
}

#[test]
fn crate_mae_outputs_match_the_official_code_on_wgpu() {
    let g = Golden::load("crate_mae.safetensors");
    let device = device();
    let cfg = whitebox::model::mae::MaeConfig::from_json(&g.meta["ctor"]).unwrap();
    let model = common::load_clean(cfg.init::<G>(&device), &g.with_prefix("param."));
    let noise = g.f32("noise");
    let masking = model.masking(2, Some(&noise), &mut rand::rng());
    let x = Tensor::<G, 4>::from_data(g.get("input").clone(), &device);
    let out = model.forward_with(x, masking, &mut Activations::off());
    assert_close("pred", &out.pred.into_data(), g.get("pred"), 1e-4);
    let l = out.loss.into_scalar();
    let want = g.f32("loss")[0];
    assert!((l - want).abs() <= 1e-5, "loss {l} vs {want}");
}
