//! CRATE-α against the official PyTorch port (tests/golden/crate_alpha.safetensors):
//! every activation, logits, loss and every gradient; presets and parameter counts.

use crate::common;

use burn::module::Module;
use burn::tensor::{Int, Tensor};
use common::{assert_close, Golden};
use whitebox::model::{Activations, Crate, CrateConfig};
use whitebox::weights::{apply_state_dict, collect_gradients, collect_state_dict};
use whitebox::CpuAutodiff as B;

fn config(g: &Golden) -> CrateConfig {
    let mut c: CrateConfig =
        serde_json::from_str(&g.meta["ctor"]).expect("ctor metadata parses as a CrateConfig");
    c.arch = whitebox::model::Arch::CrateAlpha;
    c.validate().unwrap();
    c
}

fn golden_model(g: &Golden) -> Crate<B> {
    common::load_clean(
        config(g).init::<B>(&Default::default()),
        &g.with_prefix("param."),
    )
}

#[test]
fn crate_alpha_matches_official() {
    let g = Golden::load("crate_alpha.safetensors");
    let device = Default::default();
    let model = golden_model(&g);

    let input = Tensor::<B, 4>::from_data(g.get("input").clone(), &device);
    let mut acts = Activations::on();
    let logits = model.forward_with(input, &mut acts);
    common::assert_activations(&g, &acts.into_vec());
    assert_close("logits", &logits.clone().into_data(), g.get("logits"), 1e-5);

    let labels = Tensor::<B, 1, Int>::from_data(g.get("labels").clone(), &device);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, labels);
    let l = loss.clone().into_scalar();
    let want = g.f32("loss")[0];
    assert!((l - want).abs() <= 1e-6, "loss {l} vs {want}");
    let grads = loss.backward();
    common::assert_grads(&g, "", &collect_gradients(&model, &grads));
}

#[test]
fn state_dict_round_trips_under_official_keys() {
    let g = Golden::load("crate_alpha.safetensors");
    let sd = collect_state_dict(&golden_model(&g));
    let want = g.with_prefix("param.");
    assert_eq!(sd.len(), want.len());
    for (k, w) in &want {
        assert_close(k, &sd[k], w, 0.0);
    }
    assert_eq!(sd["transformer.layers.1.1.fn.D1"].shape.to_vec(), [32, 128]);
    assert_eq!(sd["conv1.weight"].shape.to_vec(), [32, 3, 8, 8]);
}

#[test]
fn param_count_formula_matches_model() {
    let device = Default::default();
    for cfg in [
        config(&Golden::load("crate_alpha.safetensors")),
        CrateConfig::fmnist_alpha(),
    ] {
        let model = cfg.init::<whitebox::CpuBackend>(&device);
        assert_eq!(model.num_params(), cfg.param_count(), "{cfg:?}");
    }
}

#[test]
fn presets_are_named_as_in_the_crate_alpha_repository() {
    // B/16 ≈ 72.33M and L/14 ≈ 253.6M parameters with 1000 classes (reference §1.7);
    // exact values recomputed by hand from the official module shapes.
    let b16 = CrateConfig::preset("crate-alpha-B/16").unwrap();
    assert_eq!(
        (b16.dim, b16.depth, b16.heads, b16.patch_size),
        (768, 12, 12, 16)
    );
    assert_eq!(b16.param_count(), 72_328_936);
    let l14 = CrateConfig::preset("crate-alpha-L/14").unwrap();
    assert_eq!(
        (l14.dim, l14.depth, l14.heads, l14.patch_size),
        (1024, 24, 16, 14)
    );
    assert_eq!(l14.param_count(), 253_650_920);
    assert!(CrateConfig::preset("crate-alpha-X/16").is_none());
    assert!(CrateConfig::preset("crate-alpha-B/15").is_none());
    assert!(CrateConfig::resolve("crate-alpha-Q/16").is_err());
}

#[test]
fn official_torch_pth_layout_loads() {
    // A bare torch.save state dict with the released keys (conv1.*, transformer.layers.{i}.1.fn.D/D1, …),
    // written by tests/fixtures/write_torch_zip.py from the golden parameters.
    let g = Golden::load("crate_alpha.safetensors");
    let pth = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crate_alpha_official.pth");
    let sd = whitebox::weights::read_state_dict(&pth).unwrap();
    assert!(sd.contains_key("transformer.layers.0.1.fn.D1"));
    let device = Default::default();
    let (model, report) =
        apply_state_dict(config(&g).init::<whitebox::CpuBackend>(&device), &sd, true).unwrap();
    assert!(report.is_clean());
    let logits = model.forward(Tensor::from_data(g.get("input").clone(), &device));
    assert_close("logits", &logits.into_data(), g.get("logits"), 1e-5);
    // CRATE weights are not CRATE-α weights: a clear list of what does not fit
    let crate_b = Golden::load("crate_B.safetensors").with_prefix("param.");
    let e = apply_state_dict(
        config(&g).init::<whitebox::CpuBackend>(&device),
        &crate_b,
        true,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("missing keys: conv1.weight"), "{e}");
}
