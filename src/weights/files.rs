//! Weight files: safetensors (read/write) and PyTorch `torch.save` files (read only, through
//! burn-store's pickle reader, which never executes pickle code).

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{DType, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use super::StateDict;
use crate::atomic::write_atomic;

/// Read a state dict from safetensors or a torch file, whatever its container:
/// `{'state_dict': …}` (the official training script), `{'model': …}`, `{'model_state_dict': …}`
/// or a bare state dict; `module.` (DataParallel) and `_orig_mod.` (torch.compile) prefixes are
/// stripped. Non-float tensors (e.g. int64 buffers) are skipped.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let mut magic = [0u8; 9];
    let n = std::fs::File::open(path)
        .with_context(|| format!("cannot open weights {}", path.display()))?
        .read(&mut magic)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    // safetensors: u64 header length, then the JSON header (its length's low byte may be 0x80,
    // the first byte of a pickle, so the '{' decides)
    let raw = if n == 9 && magic[8] == b'{' {
        read_safetensors(path)?
    } else if n >= 4 && &magic[..4] == b"PK\x03\x04" || n >= 2 && magic[0] == 0x80 {
        read_torch(path)?
    } else if n >= 8 {
        read_safetensors(path)? // not a torch file: report what is wrong as safetensors
    } else {
        bail!("{}: too short to be a weights file", path.display());
    };
    let sd = normalise_keys(raw);
    if sd.is_empty() {
        bail!("{}: holds no float tensors", path.display());
    }
    for (k, t) in &sd {
        check_finite(t).with_context(|| format!("{}: tensor {k}", path.display()))?;
    }
    Ok(sd)
}

/// Whether `path` starts like a safetensors file: a u64 header length, then the JSON header
/// (the length's low byte can be 0x80, like a pickle's first byte, so the '{' decides).
pub fn is_safetensors(path: &Path) -> bool {
    let mut b = [0u8; 9];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && b[8] == b'{'
}

/// The `__metadata__` of a safetensors file, read from its header alone (empty for a file that
/// is not safetensors, e.g. a torch checkpoint).
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    if !is_safetensors(path) {
        return Ok(HashMap::new());
    }
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let n = u64::from_le_bytes(n);
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    ensure!(
        n <= len.saturating_sub(8),
        "{}: not a valid safetensors file: header of {n} bytes in a file of {len}",
        path.display()
    );
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("cannot read {}", path.display()))?;
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: HashMap<String, String>,
    }
    let h: Header = serde_json::from_slice(&header).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a valid safetensors file: bad header metadata: {e}",
            path.display()
        )
    })?;
    Ok(h.metadata)
}

/// Refuse a float tensor holding NaN or ±Inf (weights, inputs, outputs): the error says how many
/// values and where the first one is, so a diverged run is never loaded or saved as if it were fine.
pub fn check_finite(t: &TensorData) -> Result<()> {
    if !matches!(t.dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        return Ok(());
    }
    let v = t.clone().convert::<f32>();
    let v = v.as_slice::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if let Some(first) = v.iter().position(|x| !x.is_finite()) {
        let count = v.iter().filter(|x| !x.is_finite()).count();
        bail!(
            "holds {count} non-finite value(s) (first: {} at flat index {first} of {})",
            v[first],
            v.len()
        );
    }
    Ok(())
}

/// Every tensor of a safetensors file, floats converted to f32, ints kept as they are.
pub fn read_safetensors_all(
    path: &Path,
) -> Result<(HashMap<String, TensorData>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let d = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::new(
                d.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<f32>>(),
                shape,
            ),
            Dtype::F64 => TensorData::new(
                d.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect::<Vec<f32>>(),
                shape,
            ),
            Dtype::F16 => TensorData::new(
                d.chunks_exact(2)
                    .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect::<Vec<f32>>(),
                shape,
            ),
            Dtype::BF16 => TensorData::new(
                d.chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect::<Vec<f32>>(),
                shape,
            ),
            Dtype::I64 => TensorData::new(
                d.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect::<Vec<i64>>(),
                shape,
            ),
            Dtype::I32 => TensorData::new(
                d.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                    .collect::<Vec<i64>>(),
                shape,
            ),
            other => bail!(
                "{}: tensor {name} has unsupported dtype {other:?}",
                path.display()
            ),
        };
        out.insert(name, data);
    }
    Ok((out, meta))
}

/// Tensor `name` of the safetensors file `path` as an input batch: shape `[N, want…]` with
/// N ≥ 1 and every value finite (float inputs).
pub fn read_input_tensor(path: &Path, name: &str, want: &[usize]) -> Result<TensorData> {
    let (tensors, _) = read_safetensors_all(path)?;
    input_tensor(&tensors, path, name, want)
}

/// [`read_input_tensor`] on the tensors already read from `path`.
pub fn input_tensor(
    tensors: &HashMap<String, TensorData>,
    path: &Path,
    name: &str,
    want: &[usize],
) -> Result<TensorData> {
    let t = tensors
        .get(name)
        .cloned()
        .with_context(|| format!("{}: no tensor named `{name}`", path.display()))?;
    let shape = t.shape.to_vec();
    let dims: Vec<String> = want.iter().map(|d| d.to_string()).collect();
    ensure!(
        shape.len() == want.len() + 1 && shape[1..] == *want,
        "{}: `{name}` has shape {shape:?}, expected [N, {}]",
        path.display(),
        dims.join(", ")
    );
    ensure!(
        shape[0] > 0,
        "{}: `{name}` holds no examples (N = 0)",
        path.display()
    );
    check_finite(&t).with_context(|| format!("{}: `{name}`", path.display()))?;
    Ok(t)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            return f32::from_bits(sign)
                + (if sign != 0 { -1.0 } else { 1.0 }) * (m as f32) * 2f32.powi(-24)
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | (((e - 15 + 127) as u32) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, TensorData>> {
    let (all, _) = read_safetensors_all(path)?;
    for (k, t) in &all {
        check_float_param(path, k, t.dtype)?;
    }
    Ok(all
        .into_iter()
        .filter(|(_, t)| t.dtype == DType::F32)
        .collect())
}

/// Integer tensors are skipped as buffers (position ids, counters), but one named like a
/// parameter (`….weight`, `….bias`) is an error that says so, not a "missing key" later.
fn check_float_param(path: &Path, key: &str, dtype: DType) -> Result<()> {
    let float = matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16);
    if !float && (key.ends_with(".weight") || key.ends_with(".bias")) {
        bail!(
            "{}: tensor {key} holds integers; parameters must be floating point",
            path.display()
        );
    }
    Ok(())
}

/// Check a torch file before burn-store reads it: its pickle nests within bounds and, in the zip
/// format, every tensor storage it refers to is present and long enough (burn-store would read a
/// missing storage as zeros). Nothing in the pickle is executed, here or in burn-store.
pub fn check_torch_file(path: &Path) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let ctx = || format!("{}: not a readable PyTorch checkpoint", path.display());
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if let Ok(mut zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) {
        // an entry's declared size is what a reader allocates for it: it must fit in the file
        // (stored, as torch writes them) or within deflate's ratio of it (at most 1032:1)
        for i in 0..zip.len() {
            let f = zip.by_index_raw(i).with_context(ctx)?;
            let limit = match f.compression() {
                zip::CompressionMethod::Stored => f.compressed_size(),
                _ => f.compressed_size().saturating_mul(1032),
            };
            ensure!(
                f.size() <= limit && f.compressed_size() <= file_len,
                "{}: zip entry {} claims {} bytes, more than the {} bytes the archive holds for it",
                path.display(),
                f.name(),
                f.size(),
                f.compressed_size()
            );
        }
        let names: Vec<String> = zip.file_names().map(str::to_string).collect();
        let pkl = ["data.pkl", "archive/data.pkl"]
            .into_iter()
            .map(str::to_string)
            .find(|n| names.contains(n))
            .or_else(|| names.iter().find(|n| n.ends_with("data.pkl")).cloned())
            .with_context(|| format!("{}: no data.pkl in the zip archive", path.display()))?;
        let mut bytes = Vec::new();
        zip.by_name(&pkl)?
            .read_to_end(&mut bytes)
            .with_context(ctx)?;
        let (storages, _) = super::pickle_scan::scan(&bytes, 1)
            .with_context(|| format!("{}: {pkl}", path.display()))?;
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or("");
        for st in storages {
            let entry = format!("{prefix}data/{}", st.key);
            let size = zip.by_name(&entry).map(|f| f.size()).map_err(|_| {
                anyhow::anyhow!(
                    "{}: tensor storage {entry} is missing from the archive",
                    path.display()
                )
            })?;
            if let (Some(n), Some(e)) = (st.numel, st.element_size()) {
                ensure!(
                    size >= n.saturating_mul(e),
                    "{}: tensor storage {entry} holds {size} bytes, its pickle says {n} elements of {e} bytes",
                    path.display()
                );
            }
        }
        return Ok(());
    }
    let bytes = std::fs::read(path).with_context(ctx)?;
    if bytes.first() == Some(&0x80) {
        // legacy format: magic number, protocol, sys info and the data, four pickles in a row
        super::pickle_scan::scan(&bytes, 4).with_context(ctx)?;
    }
    Ok(())
}

fn read_torch(path: &Path) -> Result<HashMap<String, TensorData>> {
    check_torch_file(path)?;
    let reader = burn_store::pytorch::PytorchReader::new(path).map_err(|e| {
        anyhow::anyhow!("{}: not a readable PyTorch checkpoint: {e}", path.display())
    })?;
    let mut out = HashMap::new();
    for (name, snap) in reader.into_tensors() {
        if !matches!(
            snap.dtype,
            DType::F32 | DType::F64 | DType::F16 | DType::BF16
        ) {
            check_float_param(path, &name, snap.dtype)?;
            continue;
        }
        let data = snap
            .to_data()
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e:?}", path.display()))?;
        out.insert(name, data.convert::<f32>());
    }
    Ok(out)
}

/// Pick the model's dict out of a training container and strip wrapper prefixes.
fn normalise_keys(raw: HashMap<String, TensorData>) -> StateDict {
    let containers = ["state_dict.", "model_state_dict.", "model."];
    let container = containers
        .iter()
        .find(|c| raw.keys().any(|k| k.starts_with(*c)));
    let mut sd = StateDict::new();
    for (k, v) in raw {
        let k = match container {
            Some(c) => match k.strip_prefix(*c) {
                Some(rest) => rest.to_string(),
                None => continue, // optimizer state and the like
            },
            None => k,
        };
        let mut k = k.as_str();
        while let Some(rest) = k
            .strip_prefix("module.")
            .or_else(|| k.strip_prefix("_orig_mod."))
        {
            k = rest;
        }
        sd.insert(k.to_string(), v);
    }
    sd
}

/// Serialize f32/i64 tensors to safetensors bytes (keys sorted, optional string metadata).
pub fn safetensors_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a TensorData)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'a>)> = tensors
        .into_iter()
        .map(|(k, t)| {
            let dtype = match t.dtype {
                DType::F32 => Dtype::F32,
                DType::I64 => Dtype::I64,
                other => bail!("cannot write tensor {k} of dtype {other:?}"),
            };
            let view = TensorView::new(dtype, t.shape.to_vec(), t.as_bytes())
                .map_err(|e| anyhow::anyhow!("tensor {k}: {e}"))?;
            Ok((k.clone(), view))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, &metadata)
        .map_err(|e| anyhow::anyhow!("safetensors: {e}"))?;
    Ok(sorted_header(bytes))
}

/// The same safetensors bytes with the JSON header's keys (tensors and `__metadata__`) in sorted
/// order: the crate writes its metadata map in random order, so two identical runs would give
/// files that differ byte for byte.
fn sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut items: Vec<_> = m.into_iter().collect();
                items.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(items.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            other => other,
        }
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]) else {
        return bytes;
    };
    let mut text = serde_json::to_string(&sort(header))
        .unwrap_or_default()
        .into_bytes();
    // the data starts 8-aligned, as the crate writes it
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Write a state dict as safetensors, atomically.
pub fn write_safetensors(
    path: &Path,
    sd: &StateDict,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    for (k, t) in sd {
        check_finite(t)
            .with_context(|| format!("refusing to write {}: tensor {k}", path.display()))?;
    }
    let bytes = safetensors_bytes(sd.iter(), metadata)?;
    write_atomic(path, &bytes)
}
