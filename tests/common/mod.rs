//! Helpers shared by the integration tests: golden files and tolerance checks.
#![allow(dead_code)]

use burn::tensor::TensorData;
use flate2::write::GzEncoder;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// The largest `|a_i − b_i|`, or NaN when any element of either side is NaN or infinite: every
/// `d <= tol` check then fails (a fold with `f32::max` would skip the NaN and pass).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut m = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        if !x.is_finite() || !y.is_finite() {
            return f32::NAN;
        }
        m = m.max((x - y).abs());
    }
    m
}

/// The largest `|a_i|`, or NaN when any element is NaN or infinite.
pub fn max_abs(a: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for x in a {
        if !x.is_finite() {
            return f32::NAN;
        }
        m = m.max(x.abs());
    }
    m
}

/// Panics naming `name` and the first element of `v` that is NaN or infinite, if any.
pub fn assert_finite(name: &str, v: &[f32]) {
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        panic!("{name}: element {i} of {} is {x}", v.len());
    }
}

/// Assert `|got_i − want_i| <= tol` for every element, both sides finite; the message names the
/// tensor, the first non-finite element or the largest difference.
pub fn assert_all_close(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    assert_finite(&format!("{name} (computed)"), got);
    assert_finite(&format!("{name} (expected)"), want);
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{name}: max |Δ| = {d:e} > {tol:e}");
}

/// Assert `got` equals `want` within an absolute tolerance, with the same shape.
pub fn assert_close(name: &str, got: &TensorData, want: &TensorData, tol: f32) {
    assert_eq!(got.shape.to_vec(), want.shape.to_vec(), "{name}: shape");
    assert_all_close(
        name,
        &got.to_vec::<f32>().unwrap(),
        &want.to_vec::<f32>().unwrap(),
        tol,
    );
}

pub fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An MNIST-style folder: `n` images of 28×28 whose pixels encode their index, labels i % 10.
pub fn write_idx(dir: &Path, prefix: &str, n: usize, gzip: bool) {
    let pixels: Vec<u8> = (0..n * 784)
        .map(|i| ((i / 784) * 7 + i % 251) as u8)
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx_files(dir, prefix, &pixels, &labels, gzip);
}

/// `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte` (`.gz` when `gzip`) of 28×28
/// `pixels` and their `labels`.
pub fn write_idx_files(dir: &Path, prefix: &str, pixels: &[u8], labels: &[u8], gzip: bool) {
    let n = labels.len() as u32;
    assert_eq!(pixels.len(), labels.len() * 784, "28×28 pixels per label");
    let img = idx_bytes(&[n, 28, 28], pixels);
    let lab = idx_bytes(&[n], labels);
    let (ext, img, lab) = if gzip {
        (".gz", gz(&img), gz(&lab))
    } else {
        ("", img, lab)
    };
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), lab).unwrap();
}

/// A learnable MNIST-style folder: `n` images of 28×28, label i % 10; an image of class c is a
/// stripe pattern at angle c·18° (every patch shows it, whatever the per-patch LayerNorm
/// removes), its phase set by the index and `offset` (give the test split another offset).
pub fn write_idx_classes(dir: &Path, prefix: &str, n: usize, offset: usize) {
    let mut pixels = Vec::with_capacity(n * 784);
    for i in 0..n {
        pixels.extend(stripes(i % 10, ((i * 7 + offset) % 13) as f64));
    }
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    write_idx_files(dir, prefix, &pixels, &labels, false);
}

/// The 28×28 stripes of class `c` (see [`write_idx_classes`]) with phase `phase`.
pub fn stripes(c: usize, phase: f64) -> Vec<u8> {
    let th = c as f64 * std::f64::consts::PI / 10.0;
    (0..784)
        .map(|p| {
            let (y, x) = ((p / 28) as f64, (p % 28) as f64);
            let t = 2.0 * std::f64::consts::PI * (x * th.cos() + y * th.sin()) / 5.0 + phase;
            (128.0 + 100.0 * t.sin()) as u8
        })
        .collect()
}

/// Run the `whitebox` binary.
pub fn whitebox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_whitebox"))
        .args(args)
        .output()
        .expect("run whitebox")
}

/// Run `whitebox`, assert it succeeds, return its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = whitebox(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "whitebox {args:?} failed:\n{so}\n{se}"
    );
    so.into_owned()
}

/// Run `whitebox`, assert it fails cleanly (an error, not a panic), return its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = whitebox(args);
    assert!(!out.status.success(), "whitebox {args:?} should fail");
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!se.contains("panicked"), "panic instead of an error: {se}");
    se
}

/// The percentages of a `label 12.3%, label 4.5%, …` list after `prefix: `, in order.
pub fn percentages(line: &str) -> Vec<f64> {
    let list = line.trim().split_once(": ").map_or(line, |(_, l)| l);
    list.split(", ")
        .map(|e| {
            let p = e.rsplit(' ').next().unwrap().trim_end_matches('%');
            p.parse()
                .unwrap_or_else(|_| panic!("no percentage in {e:?}"))
        })
        .collect()
}

/// A two-layer CRATE-BERT of width 16 over 20 tokens (32-token sequences).
pub fn tiny_bert() -> whitebox::model::bert::BertConfig {
    whitebox::model::bert::BertConfig {
        vocab_size: 20,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        max_position_embeddings: 34,
        type_vocab_size: 1,
        layer_norm_eps: 1e-12,
        pad_token_id: 1,
        initializer_range: 0.2,
    }
}

/// Every gradient of `got` against the golden `{prefix}grad.*` (the input's gradient aside): the
/// same keys, each within `1e-4·max|golden| + 1e-7`.
pub fn assert_grads(g: &Golden, prefix: &str, got: &whitebox::weights::StateDict) {
    let want = g.with_prefix(&format!("{prefix}grad."));
    let want_keys: Vec<&String> = want.keys().filter(|k| *k != "input").collect();
    let got_keys: Vec<&String> = got.keys().collect();
    assert_eq!(
        got_keys, want_keys,
        "{prefix}: every parameter has a gradient"
    );
    for k in want_keys {
        let (gv, wv) = (
            got[k].to_vec::<f32>().unwrap(),
            want[k].to_vec::<f32>().unwrap(),
        );
        let name = format!("{prefix}grad.{k}");
        assert_finite(&name, &wv);
        assert_all_close(&name, &gv, &wv, 1e-4 * max_abs(&wv) + 1e-7);
    }
}

/// Every captured activation against the golden tensor of its name (`act.*`, within 1e-5), and as
/// many as the golden file holds.
pub fn assert_activations(g: &Golden, acts: &[whitebox::model::Captured]) {
    let golden_acts = g.tensors.keys().filter(|k| k.starts_with("act.")).count();
    assert_eq!(acts.len(), golden_acts, "number of captured activations");
    for a in acts {
        let got = TensorData::new(a.values.clone(), a.shape.clone());
        assert_close(&a.name, &got, g.get(&a.name), 1e-5);
    }
}

/// `model` with the weights `sd` (official keys) loaded strictly: every key present, none left
/// over, every shape right.
pub fn load_clean<B, M>(model: M, sd: &whitebox::weights::StateDict) -> M
where
    B: burn::tensor::backend::Backend,
    M: burn::module::Module<B> + whitebox::weights::OfficialKeys,
{
    let (model, report) = whitebox::weights::apply_state_dict(model, sd, true).unwrap();
    assert!(report.is_clean(), "{}", report.describe());
    model
}
