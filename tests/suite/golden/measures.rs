//! White-box measures against tests/golden/crate_A_measures.json (official and paper formulas).

use crate::common;

use burn::tensor::Tensor;
use common::{golden_path, Golden};
use whitebox::measure::{coding_rate, half_logdet_gram, measure_batch, MeasureSettings};
use whitebox::model::CrateConfig;
use whitebox::weights::apply_state_dict;
use whitebox::CpuBackend as B;

#[test]
fn measures_match_the_golden_json() {
    let g = Golden::load("crate_A.safetensors");
    let cfg: CrateConfig = serde_json::from_str(&g.meta["ctor"]).unwrap();
    let device = Default::default();
    let (model, _) =
        apply_state_dict(cfg.init::<B>(&device), &g.with_prefix("param."), true).unwrap();
    let got = measure_batch(
        &model,
        Tensor::from_data(g.get("input").clone(), &device),
        MeasureSettings::default(),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden_path("crate_A_measures.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for (k, v) in json["values"].as_object().unwrap() {
        if k.starts_with("official_recomputed_f64.") {
            continue;
        }
        let want = v.as_f64().unwrap();
        let have = *got.get(k).unwrap_or_else(|| panic!("measure {k} missing"));
        if k.contains(".L0.") {
            assert_eq!(have, want, "{k}");
        } else {
            let rel = (have - want).abs() / want.abs().max(1e-12);
            // the std over two samples is a small difference of large numbers: compare absolutely too
            assert!(
                rel <= 1e-4 || (have - want).abs() <= 1e-4,
                "{k}: {have} vs {want} (rel {rel:e})"
            );
        }
        checked += 1;
    }
    assert_eq!(
        checked, 48,
        "every golden value except the 4 float64 recomputations"
    );
}

#[test]
fn logdet_uses_either_gram_side_consistently() {
    // Sylvester: logdet(I_n + c ZZᵀ) = logdet(I_m + c ZᵀZ); a 3×5 and its transpose agree.
    let z: Vec<f64> = (0..15).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
    let zt: Vec<f64> = (0..15).map(|k| z[(k % 3) * 5 + k / 3]).collect();
    let a = half_logdet_gram(&z, 3, 5, 0.7);
    let b = half_logdet_gram(&zt, 5, 3, 0.7);
    assert!((a - b).abs() < 1e-10, "{a} vs {b}");
    // identity rows: ZᵀZ = I_2 (n = 2, m = 2), R = ½·2·log(1 + c) with c = d/(Nε²) = 1/0.01·(2/2)
    let r = coding_rate(&[1.0, 0.0, 0.0, 1.0], 2, 2, 0.01);
    assert!((r - (1.0 + 100.0f64).ln()).abs() < 1e-12, "{r}");
}
