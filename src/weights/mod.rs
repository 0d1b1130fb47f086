//! Weights under the official PyTorch key names: read (safetensors, torch `.pth`/`.pth.tar`),
//! write (safetensors, atomically), and move them in and out of a burn module.

mod files;
pub mod forward;
pub mod load;
mod names;
pub mod pickle_scan;

pub use files::{
    check_finite, check_torch_file, is_safetensors, read_input_tensor, read_safetensors_all,
    read_safetensors_metadata, read_state_dict, safetensors_bytes, write_atomic, write_safetensors,
};
pub use load::{load, Loaded, ModelConfig, Weights};
pub use names::{
    apply_state_dict, canonical_ids, collect_gradients, collect_state_dict,
    gradients_from_state_dict, torch_leaf, LoadReport, OfficialKeys,
};

use burn::tensor::TensorData;
use std::collections::BTreeMap;

/// Official key → tensor (f32, torch layout).
pub type StateDict = BTreeMap<String, TensorData>;
