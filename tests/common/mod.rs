//! Helpers shared by the integration tests: golden files and tolerance checks.
#![allow(dead_code)]

use burn::tensor::TensorData;
use std::collections::HashMap;
use std::path::PathBuf;

pub fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

pub struct Golden {
    pub tensors: HashMap<String, TensorData>,
    pub meta: HashMap<String, String>,
}

impl Golden {
    pub fn load(name: &str) -> Self {
        let (tensors, meta) =
            whitebox::weights::read_safetensors_all(&golden_path(name)).expect("golden file");
        Self { tensors, meta }
    }
    pub fn get(&self, key: &str) -> &TensorData {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("golden tensor {key} missing"))
    }
    pub fn f32(&self, key: &str) -> Vec<f32> {
        self.get(key).to_vec::<f32>().unwrap()
    }
    /// Every tensor whose name starts with `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> whitebox::weights::StateDict {
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .collect()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Assert `got` equals `want` within an absolute tolerance, with the same shape.
pub fn assert_close(name: &str, got: &TensorData, want: &TensorData, tol: f32) {
    assert_eq!(got.shape.to_vec(), want.shape.to_vec(), "{name}: shape");
    let d = max_abs_diff(
        &got.to_vec::<f32>().unwrap(),
        &want.to_vec::<f32>().unwrap(),
    );
    assert!(d <= tol, "{name}: max |Δ| = {d:e} > {tol:e}");
}
