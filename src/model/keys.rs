//! The official names of a model's parameters: each model file says how its burn parameter
//! paths map onto the official PyTorch keys; `weights` reads and writes state dicts by them.

use burn::tensor::TensorData;
use std::collections::BTreeMap;

/// Official key → tensor (f32, torch layout).
pub type StateDict = BTreeMap<String, TensorData>;

/// A model that knows the official key of each of its parameters.
pub trait OfficialKeys {
    /// Official key for a burn parameter path such as `["layers", "0", "norm1", "gamma"]`.
    fn official_key(path: &[String]) -> String;
}

/// Torch's name of a burn parameter leaf: LayerNorm `gamma`/`beta` are `weight`/`bias`.
pub fn torch_leaf(s: &str) -> &str {
    match s {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}
