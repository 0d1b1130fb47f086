//! One forward pass of loaded weights on the tensors of a safetensors file, with the outputs under
//! the golden names — what `whitebox forward` writes and what the reference scripts compare.

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{Int, Tensor, TensorData};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

use crate::model::lm;
use crate::model::mae::CrateMae;
use crate::model::{Activations, CrateBackend};
use crate::train::parallel::forward_slices;
use crate::weights::input_tensor;
use crate::weights::{check_finite, read_input_tensor, read_safetensors_all, Loaded, StateDict};

/// The outputs of `loaded` on the file `input`:
/// - CRATE / CRATE-α: `input` (NCHW f32) → `logits`, and with `activations` every per-layer
///   activation (`act.layer{i}.mssa`, …);
/// - ToST: `input` → `logits` (no activations);
/// - CRATE-MAE: `input` and an optional `noise` `[B, L]` (the official masking) → `pred`, `mask`,
///   `ids_restore`, `ids_keep`, `ids_shuffle`, `recon_img` and `loss`;
/// - language models: int64 `idx` `[B, T]` → `logits` `[B, T, V]`.
pub fn forward_file<B: CrateBackend>(
    loaded: &Loaded<B>,
    input: &Path,
    activations: bool,
    device: &B::Device,
) -> Result<StateDict> {
    let (tensors, _) = read_safetensors_all(input)?;
    forward_tensors(loaded, &tensors, input, activations, device)
}

/// [`forward_file`] on tensors already in memory (`input`, `noise`, `idx` as in the file);
/// `source` names them in errors.
pub fn forward_tensors<B: CrateBackend>(
    loaded: &Loaded<B>,
    tensors: &HashMap<String, TensorData>,
    source: &Path,
    activations: bool,
    device: &B::Device,
) -> Result<StateDict> {
    let input = source;
    let mut acts = Activations::<B>::recording(activations);
    let mut out = match loaded {
        Loaded::Crate(l) => {
            let c = &l.config;
            let x = images(
                tensors,
                input,
                [c.channels, c.image_size, c.image_size],
                device,
            )?;
            if activations {
                logits(l.model.forward_with(x, &mut acts).into_data())
            } else {
                // the batch cut over the cores, as evaluation and `whitebox bench` run it
                logits(forward_slices(x, |x| l.model.forward(x)).into_data())
            }
        }
        Loaded::Tost(l) => {
            ensure!(
                !activations,
                "--activations is not available for ToST (logits only)"
            );
            let x = images(tensors, input, l.config.input_shape(), device)?;
            logits(forward_slices(x, |x| l.model.forward(x)).into_data())
        }
        Loaded::Mae(l) => mae_outputs(&l.model, &l.config, tensors, input, &mut acts, device)?,
        Loaded::Lm(l) => {
            let x = read_ids(
                tensors,
                input,
                l.config.block_size,
                l.config.vocab_size,
                device,
            )?;
            logits(l.model.forward_with(x, &mut acts).into_data())
        }
        Loaded::Bert(l) => bail!(
            "{}: `forward` does not run CRATE-BERT; use `whitebox bert fill-mask`",
            l.path.display()
        ),
    };
    for c in acts.into_vec() {
        out.insert(c.name, TensorData::new(c.values, c.shape));
    }
    Ok(out)
}

fn logits(t: TensorData) -> StateDict {
    StateDict::from([("logits".to_string(), t.convert::<f32>())])
}

/// The `input` tensor (NCHW f32) of a file, checked against the model's `[channels, h, w]`.
pub fn read_images<B: CrateBackend>(
    path: &Path,
    want: [usize; 3],
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let input = read_input_tensor(path, "input", &want)?;
    Ok(Tensor::from_data(input.convert::<f32>(), device))
}

fn images<B: CrateBackend>(
    tensors: &HashMap<String, TensorData>,
    source: &Path,
    want: [usize; 3],
    device: &B::Device,
) -> Result<Tensor<B, 4>> {
    let input = input_tensor(tensors, source, "input", &want)?;
    Ok(Tensor::from_data(input.convert::<f32>(), device))
}

/// CRATE-MAE on `input` with the file's `noise` (else random masks of seed 0).
fn mae_outputs<B: CrateBackend>(
    model: &CrateMae<B>,
    c: &crate::model::mae::MaeConfig,
    tensors: &HashMap<String, TensorData>,
    path: &Path,
    acts: &mut Activations<B>,
    device: &B::Device,
) -> Result<StateDict> {
    let input = input_tensor(
        tensors,
        path,
        "input",
        &[c.in_chans, c.img_size, c.img_size],
    )?;
    let b = input.shape[0];
    let noise = match tensors.get("noise") {
        Some(t) => {
            ensure!(
                t.shape.to_vec() == [b, c.num_patches()],
                "{}: `noise` has shape {:?}, expected [{b}, {}]",
                path.display(),
                t.shape.to_vec(),
                c.num_patches()
            );
            check_finite(t).with_context(|| format!("{}: `noise`", path.display()))?;
            Some(t.clone().convert::<f32>().to_vec::<f32>().unwrap())
        }
        None => None,
    };
    let x = Tensor::<B, 4>::from_data(input.convert::<f32>(), device);
    let masking = model.masking(b, noise.as_deref(), &mut StdRng::seed_from_u64(0));
    let out = model.forward_with(x, masking, acts);
    Ok(out.into_state_dict(c.patch_size, c.in_chans))
}

/// The int64 `idx` `[B, T]` of a file: non-empty, at most `block_size` long, ids below `vocab`.
fn read_ids<B: CrateBackend>(
    tensors: &HashMap<String, TensorData>,
    path: &Path,
    block_size: usize,
    vocab: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2, Int>> {
    let idx = tensors
        .get("idx")
        .with_context(|| format!("{}: no tensor named `idx`", path.display()))?;
    let shape = idx.shape.to_vec();
    ensure!(
        shape.len() == 2,
        "{}: `idx` has shape {shape:?}, expected [B, T]",
        path.display()
    );
    use burn::tensor::DType;
    ensure!(
        matches!(
            idx.dtype,
            DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 | DType::U32
        ),
        "{}: `idx` holds {:?} values; token ids must be integers (int64)",
        path.display(),
        idx.dtype
    );
    let ids: Vec<i64> = idx
        .clone()
        .convert::<i64>()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("{}: `idx` is not integer: {e:?}", path.display()))?;
    ensure!(
        shape[1] <= block_size,
        "{}: sequence length {} exceeds block_size {block_size}",
        path.display(),
        shape[1]
    );
    ensure!(
        shape[0] > 0 && shape[1] > 0,
        "{}: `idx` is empty (shape {shape:?})",
        path.display()
    );
    lm::check_tokens(&ids, vocab).with_context(|| path.display().to_string())?;
    Ok(Tensor::from_data(
        TensorData::new(ids, [shape[0], shape[1]]),
        device,
    ))
}
