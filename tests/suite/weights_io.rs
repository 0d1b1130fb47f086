//! Loading official weights: torch.save containers (.pth/.pth.tar), safetensors round trips,
//! and strict/non-strict key checking.

use crate::common;

use burn::tensor::Tensor;
use common::{assert_close, golden_path, Golden};
use std::path::PathBuf;
use whitebox::model::CrateConfig;
use whitebox::weights::{apply_state_dict, collect_state_dict, read_state_dict, write_safetensors};
use whitebox::CpuBackend as B;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn golden_b() -> (Golden, CrateConfig) {
    let g = Golden::load("crate_B.safetensors");
    let cfg = serde_json::from_str(&g.meta["ctor"]).unwrap();
    (g, cfg)
}

fn logits_from(path: &std::path::Path) -> burn::tensor::TensorData {
    let (g, cfg) = golden_b();
    let device = Default::default();
    let sd = read_state_dict(path).unwrap();
    let (model, report) = apply_state_dict(cfg.init::<B>(&device), &sd, true).unwrap();
    assert!(report.is_clean(), "{}", report.describe());
    model
        .forward(Tensor::from_data(g.get("input").clone(), &device))
        .into_data()
}

#[test]
fn official_training_checkpoint_gives_official_logits() {
    // {'epoch', 'arch', 'state_dict': {'module.…'}, 'best_acc1', 'optimizer', 'scheduler'}
    let (g, _) = golden_b();
    assert_close(
        "logits",
        &logits_from(&fixture("crate_B_official.pth.tar")),
        g.get("logits"),
        1e-5,
    );
}

#[test]
fn model_container_with_compile_prefix_loads() {
    let (g, _) = golden_b();
    assert_close(
        "logits",
        &logits_from(&fixture("crate_B_model.pth")),
        g.get("logits"),
        1e-5,
    );
}

#[test]
fn bare_state_dict_loads() {
    let (g, _) = golden_b();
    assert_close(
        "logits",
        &logits_from(&fixture("crate_B_bare.pth")),
        g.get("logits"),
        1e-5,
    );
}

#[test]
fn pth_and_safetensors_state_dicts_agree() {
    let (g, _) = golden_b();
    let sd = read_state_dict(&fixture("crate_B_official.pth.tar")).unwrap();
    let want = g.with_prefix("param.");
    assert_eq!(
        sd.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        assert_close(k, &sd[k], v, 0.0);
    }
}

#[test]
fn safetensors_round_trip_keeps_official_keys_and_values() {
    let (g, cfg) = golden_b();
    let device = Default::default();
    let (model, _) =
        apply_state_dict(cfg.init::<B>(&device), &g.with_prefix("param."), true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_safetensors(&path, &collect_state_dict(&model), None).unwrap();
    let back = read_state_dict(&path).unwrap();
    let want = g.with_prefix("param.");
    assert_eq!(back.len(), want.len());
    for (k, v) in &want {
        assert_close(k, &back[k], v, 0.0);
    }
    assert!(
        !dir.path().join(".m.safetensors.tmp").exists(),
        "temp file renamed away"
    );
}

#[test]
fn strict_load_lists_missing_unexpected_and_misshapen_keys() {
    let (g, cfg) = golden_b();
    let device = Default::default();
    let mut sd = g.with_prefix("param.");
    sd.remove("transformer.layers.1.1.fn.weight");
    sd.insert(
        "extra.weight".into(),
        burn::tensor::TensorData::new(vec![1f32], [1]),
    );
    sd.insert(
        "mlp_head.1.bias".into(),
        burn::tensor::TensorData::new(vec![0f32; 7], [7]),
    );
    let err = apply_state_dict(cfg.init::<B>(&device), &sd, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing keys: transformer.layers.1.1.fn.weight"),
        "{err}"
    );
    assert!(err.contains("unexpected keys: extra.weight"), "{err}");
    assert!(
        err.contains("mlp_head.1.bias (file [7], model [10])"),
        "{err}"
    );
    // non-strict: loads the rest and reports
    let (_, report) = apply_state_dict(cfg.init::<B>(&device), &sd, false).unwrap();
    assert_eq!(
        report.missing,
        vec!["transformer.layers.1.1.fn.weight".to_string()]
    );
    assert_eq!(report.unexpected, vec!["extra.weight".to_string()]);
    assert_eq!(report.mismatched.len(), 1);
}

#[test]
fn corrupt_and_truncated_weight_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = format!("{:#}", read_state_dict(&bad).unwrap_err());
    assert!(
        e.contains("bad.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    let full = std::fs::read(fixture("crate_B_official.pth.tar")).unwrap();
    let cut = dir.path().join("cut.pth.tar");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let e = format!("{:#}", read_state_dict(&cut).unwrap_err());
    assert!(e.contains("cut.pth.tar"), "{e}");

    let tiny = dir.path().join("tiny.bin");
    std::fs::write(&tiny, b"ab").unwrap();
    assert!(format!("{:#}", read_state_dict(&tiny).unwrap_err()).contains("tiny.bin"));
    assert!(format!(
        "{:#}",
        read_state_dict(&golden_path("missing.safetensors")).unwrap_err()
    )
    .contains("missing.safetensors"));
}
