//! `whitebox forward`: one forward pass of whatever model `--weights` holds, written as
//! safetensors (logits and activations under the golden names; CRATE-MAE: its outputs).

use anyhow::{bail, ensure, Result};

use super::commands::{input_shape, load, read_input, write_forward};
use super::{lm, mae, ForwardArgs};
use whitebox::model::Activations;
use whitebox::weights::Loaded;
use whitebox::InferBackend;

pub fn forward(a: ForwardArgs) -> Result<()> {
    let device = Default::default();
    match load(&a.weights)? {
        Loaded::Lm(l) => lm::forward(&a, l),
        Loaded::Mae(l) => mae::forward(a, l),
        Loaded::Tost(l) => {
            let x = read_input::<InferBackend>(&a.input, l.config.input_shape(), &device)?;
            ensure!(
                !a.activations,
                "--activations is not available for ToST (logits only)"
            );
            let logits = l.model.forward(x).into_data();
            write_forward(&a.output, logits, Activations::<InferBackend>::off())
        }
        Loaded::Crate(l) => {
            let x = read_input::<InferBackend>(&a.input, input_shape(&l.config), &device)?;
            let mut acts = Activations::recording(a.activations);
            let logits = l.model.forward_with(x, &mut acts);
            write_forward(&a.output, logits.into_data(), acts)
        }
        Loaded::Bert(l) => bail!(
            "{}: `forward` does not run CRATE-BERT; use `whitebox bert fill-mask`",
            l.path.display()
        ),
    }
}
