//! The CRATE classifier against the official PyTorch code (tests/golden/crate_{A,B}):
//! logits, every activation, loss, every gradient and one AdamW step.

use crate::common;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor};
use common::{assert_close, Golden};
use whitebox::model::{Activations, CrateConfig};
use whitebox::weights::{collect_gradients, collect_state_dict, gradients_from_state_dict};
use whitebox::CpuAutodiff as B;

fn config(g: &Golden) -> CrateConfig {
    serde_json::from_str(&g.meta["ctor"]).expect("ctor metadata parses as a CrateConfig")
}

/// `torch.optim.AdamW` as the golden files used it (β 0.9/0.999, eps 1e-8, wd 0.05; lr at step).
fn torch_adamw() -> impl Optimizer<whitebox::model::Crate<B>, B> {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.05)
        .init()
}

/// The model of a golden case with its initial official weights (strict load).
fn golden_model(g: &Golden) -> whitebox::model::Crate<B> {
    common::load_clean(
        config(g).init::<B>(&Default::default()),
        &g.with_prefix("param."),
    )
}

fn check_case(file: &str) {
    let g = Golden::load(file);
    let device = Default::default();
    let model = golden_model(&g);

    // Forward with every activation.
    let input = Tensor::<B, 4>::from_data(g.get("input").clone(), &device);
    let mut acts = Activations::on();
    let logits = model.forward_with(input, &mut acts);
    common::assert_activations(&g, &acts.into_vec());
    assert_close("logits", &logits.clone().into_data(), g.get("logits"), 1e-5);

    // Loss and gradients.
    let labels = Tensor::<B, 1, Int>::from_data(g.get("labels").clone(), &device);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, labels);
    let l = loss.clone().into_scalar();
    let want = g.f32("loss")[0];
    assert!((l - want).abs() <= 1e-6, "loss {l} vs {want}");
    let grads = loss.backward();
    check_grads(&g, &model, &grads);

    // One AdamW step (torch defaults, lr 1e-3, wd 0.05) from our own gradients.
    let gp = GradientsParams::from_grads(grads, &model);
    let mut opt = torch_adamw();
    let stepped = opt.step(1e-3, model, gp);
    let after = collect_state_dict(&stepped.valid());
    let want = g.with_prefix("adamw1.");
    assert_eq!(
        want.len(),
        after.len(),
        "adamw1.*: one golden tensor per parameter"
    );
    for (k, w) in &want {
        assert_close(&format!("adamw1.{k}"), &after[k], w, 1e-5);
    }
}

/// Every parameter's gradient against the golden `grad.*` (relative tolerance 1e-4).
fn check_grads(
    g: &Golden,
    model: &whitebox::model::Crate<B>,
    grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients,
) {
    common::assert_grads(g, "", &collect_gradients(model, grads));
}

/// The plain forward (what training and inference run: the last layer computes the cls row
/// only) gives the official logits, loss and gradients too.
fn check_cls_only_forward(file: &str) {
    let g = Golden::load(file);
    let device = Default::default();
    let model = golden_model(&g);
    let logits = model.forward(Tensor::<B, 4>::from_data(g.get("input").clone(), &device));
    assert_close("logits", &logits.clone().into_data(), g.get("logits"), 1e-5);
    let labels = Tensor::<B, 1, Int>::from_data(g.get("labels").clone(), &device);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, labels);
    let (l, want) = (loss.clone().into_scalar(), g.f32("loss")[0]);
    assert!((l - want).abs() <= 1e-6, "loss {l} vs {want}");
    check_grads(&g, &model, &loss.backward());
}

#[test]
fn cls_only_forward_matches_official() {
    check_cls_only_forward("crate_A.safetensors");
    check_cls_only_forward("crate_B.safetensors");
}

/// torch AdamW (lr 1e-3, β 0.9/0.999, eps 1e-8, wd 0.05) fed the saved PyTorch gradients.
fn check_adamw_from_saved_grads(file: &str) {
    let g = Golden::load(file);
    let model = golden_model(&g);
    let grads = gradients_from_state_dict(&model, &g.with_prefix("grad."));
    let mut opt = torch_adamw();
    let after = collect_state_dict(&opt.step(1e-3, model, grads).valid());
    let want = g.with_prefix("adamw1.");
    assert_eq!(
        want.len(),
        after.len(),
        "adamw1.*: one golden tensor per parameter"
    );
    for (k, w) in &want {
        assert_close(&format!("adamw1.{k}"), &after[k], w, 1e-6);
    }
}

#[test]
fn adamw_step_from_saved_grads_matches_torch() {
    check_adamw_from_saved_grads("crate_A.safetensors");
    check_adamw_from_saved_grads("crate_B.safetensors");
}

#[test]
fn crate_a_rgb_matches_official() {
    check_case("crate_A.safetensors");
}

#[test]
fn crate_b_grayscale_matches_official() {
    check_case("crate_B.safetensors");
}

#[test]
fn param_count_formula_matches_model() {
    let device = Default::default();
    for cfg in [
        CrateConfig::fmnist(),
        config(&Golden::load("crate_A.safetensors")),
    ] {
        let model = cfg.init::<whitebox::CpuBackend>(&device);
        use burn::module::Module;
        assert_eq!(model.num_params(), cfg.param_count());
    }
}

#[test]
fn presets_have_the_papers_parameter_counts() {
    for (name, n) in [
        ("crate-tiny", 6_090_856),
        ("crate-small", 13_116_328),
        ("crate-base", 22_796_008),
        ("crate-large", 77_641_192),
    ] {
        assert_eq!(
            CrateConfig::preset(name).unwrap().param_count(),
            n,
            "{name}"
        );
    }
}
