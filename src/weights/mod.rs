//! Weights under the official PyTorch key names: read (safetensors, torch `.pth`/`.pth.tar`),
//! write (safetensors, atomically), and move them in and out of a burn module.

mod files;
pub mod load;
mod names;
pub mod pickle_scan;

pub use crate::atomic::write_atomic;
pub use files::{
    check_finite, check_torch_file, input_tensor, is_safetensors, read_input_tensor,
    read_safetensors_all, read_safetensors_metadata, read_state_dict, safetensors_bytes,
    write_safetensors,
};
pub use load::{load, Loaded, ModelConfig, Weights};
pub use names::{
    apply_state_dict, canonical_ids, collect_gradients, collect_state_dict,
    gradients_from_state_dict, lm_state_dict, load_official_lm, torch_leaf, LoadReport,
    OfficialKeys,
};

pub use crate::model::keys::StateDict;
