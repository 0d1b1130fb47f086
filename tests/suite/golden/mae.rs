//! CRATE-MAE against the official PyTorch code (tests/golden/crate_mae.safetensors): with the saved
//! masking noise, the ids and mask, every activation, prediction, reconstruction, loss and gradients.

use crate::common;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use common::{assert_close, max_abs_diff, Golden};
use whitebox::model::mae::{sincos_2d, unpatchify, CrateMae, MaeConfig};
use whitebox::model::Activations;
use whitebox::weights::{apply_state_dict, collect_gradients, collect_state_dict};
use whitebox::CpuAutodiff as B;

fn config(g: &Golden) -> MaeConfig {
    MaeConfig::from_json(&g.meta["ctor"]).expect("ctor metadata parses as a MaeConfig")
}

fn golden_model(g: &Golden) -> CrateMae<B> {
    common::load_clean(
        config(g).init::<B>(&Default::default()),
        &g.with_prefix("param."),
    )
}

fn ids(g: &Golden, k: &str) -> Vec<i64> {
    g.get(k).to_vec::<i64>().unwrap()
}

#[test]
fn crate_mae_matches_official() {
    let g = Golden::load("crate_mae.safetensors");
    let device = Default::default();
    let model = golden_model(&g);
    let cfg = config(&g);
    let noise = g.f32("noise");
    let masking = model.masking(2, Some(&noise), &mut rand::rng());
    assert_eq!(masking.len_keep, cfg.len_keep());
    assert_eq!(masking.ids_shuffle, ids(&g, "ids_shuffle"));
    assert_eq!(masking.ids_restore, ids(&g, "ids_restore"));
    assert_eq!(masking.ids_keep, ids(&g, "ids_keep"));
    assert_eq!(masking.mask, g.f32("mask"));

    let input = Tensor::<B, 4>::from_data(g.get("input").clone(), &device);
    assert_close(
        "target",
        &model.target(input.clone()).into_data(),
        g.get("target"),
        1e-6,
    );
    let mut acts = Activations::on();
    let out = model.forward_with(input, masking, &mut acts);
    common::assert_activations(&g, &acts.into_vec());
    assert_close("pred", &out.pred.clone().into_data(), g.get("pred"), 1e-5);
    let recon = unpatchify(out.pred.clone(), cfg.patch_size, cfg.in_chans);
    assert_close("recon_img", &recon.into_data(), g.get("recon_img"), 1e-5);
    let l = out.loss.clone().into_scalar();
    let want = g.f32("loss")[0];
    assert!((l - want).abs() <= 1e-6, "loss {l} vs {want}");

    let grads = out.loss.backward();
    common::assert_grads(&g, "", &collect_gradients(&model, &grads));
}

#[test]
fn sincos_positions_match_the_official_buffer() {
    let g = Golden::load("crate_mae.safetensors");
    let cfg = config(&g);
    let ours = TensorData::new(sincos_2d(cfg.embed_dim, cfg.grid()), [1, 17, 48]);
    assert_close(
        "decoder_pos_embed",
        &ours,
        g.get("param.decoder_pos_embed"),
        1e-6,
    );
    assert_close("pos_embed", &ours, g.get("param.pos_embed"), 1e-6);
}

#[test]
fn state_dict_round_trips_and_param_count_matches() {
    let g = Golden::load("crate_mae.safetensors");
    let model = golden_model(&g);
    let sd = collect_state_dict(&model);
    let want = g.with_prefix("param.");
    assert_eq!(sd.len(), want.len());
    for (k, w) in &want {
        assert_close(k, &sd[k], w, 0.0);
    }
    for cfg in [config(&g), MaeConfig::fmnist()] {
        let m = cfg.init::<whitebox::CpuBackend>(&Default::default());
        assert_eq!(m.num_params(), cfg.param_count());
    }
}

#[test]
fn official_checkpoint_container_loads_and_bad_configs_are_clear_errors() {
    let g = Golden::load("crate_mae.safetensors");
    // FAIR-MAE style {'model': state_dict, 'epoch': …}, written by tests/fixtures/write_torch_zip.py
    let pth = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crate_mae_official.pth");
    let sd = whitebox::weights::read_state_dict(&pth).unwrap();
    let device = Default::default();
    let (model, report) =
        apply_state_dict(config(&g).init::<whitebox::CpuBackend>(&device), &sd, true).unwrap();
    assert!(report.is_clean());
    let masking = model.masking(2, Some(&g.f32("noise")), &mut rand::rng());
    let out = model.forward_with(
        Tensor::from_data(g.get("input").clone(), &device),
        masking,
        &mut Activations::off(),
    );
    assert_close("pred", &out.pred.into_data(), g.get("pred"), 1e-5);

    let mut c = config(&g);
    c.mask_ratio = 1.0;
    assert!(c.validate().unwrap_err().to_string().contains("mask ratio"));
    c.mask_ratio = 0.0;
    assert!(c.validate().unwrap_err().to_string().contains("mask ratio"));
    let mut c = config(&g);
    c.decoder_embed_dim = 64;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("decoder_embed_dim 64"));
}

#[test]
fn norm_pix_loss_targets_follow_the_reference_formula() {
    // FAIR-MAE: per patch (x − mean) / sqrt(var + 1e-6) with torch's unbiased var.
    let g = Golden::load("crate_mae.safetensors");
    let mut model = golden_model(&g);
    model.norm_pix_loss = true;
    let device = Default::default();
    let got = model
        .target(Tensor::<B, 4>::from_data(g.get("input").clone(), &device))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let plain = g.f32("target");
    let pd = 192;
    let mut want = Vec::with_capacity(plain.len());
    for row in plain.chunks(pd) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / pd as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (pd - 1) as f64;
        want.extend(
            row.iter()
                .map(|&v| ((v as f64 - mean) / (var + 1e-6).sqrt()) as f32),
        );
    }
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "norm_pix targets: max |Δ| {d:e}");
    // and the loss changes accordingly (targets are no longer raw pixels)
    let masking = model.masking(2, Some(&g.f32("noise")), &mut rand::rng());
    let out = model.forward_with(
        Tensor::from_data(g.get("input").clone(), &device),
        masking,
        &mut Activations::off(),
    );
    assert!((out.loss.into_scalar() - g.f32("loss")[0]).abs() > 1e-3);
}
