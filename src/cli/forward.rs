//! `whitebox forward`: one forward pass of whatever model `--weights` holds, written as
//! safetensors (logits and activations under the golden names; CRATE-MAE: its outputs).

use crate::cli::output::outln;
use anyhow::Result;

use super::commands::load;
use super::ForwardArgs;
use whitebox::infer::forward::forward_file;
use whitebox::weights::{safetensors_bytes, write_atomic};
use whitebox::InferBackend;

pub fn forward(a: ForwardArgs) -> Result<()> {
    let loaded = load(&a.weights)?;
    let out = forward_file::<InferBackend>(&loaded, &a.input, a.activations, &Default::default())?;
    write_atomic(&a.output, &safetensors_bytes(out.iter(), None)?)?;
    let loss = out.get("loss").and_then(|t| t.to_vec::<f32>().ok());
    outln!(
        "wrote {} tensors to {}{}",
        out.len(),
        a.output.display(),
        loss.map_or(String::new(), |l| format!(" (loss {:.6})", l[0]))
    )?;
    Ok(())
}
