//! CRATE and ToST models. `blocks` holds the shared operators (MSSA, ISTA, overcomplete ISTA, the pre-norm CRATE layer, TSSA); each variant is one file.

pub mod alpha;
pub mod arch;
pub mod bert;
pub mod bf16;
pub mod blocks;
pub mod features;
pub mod fused;
pub mod gemm;
pub mod inspect;
pub mod kernels;
pub mod keys;
pub mod lm;
pub mod mae;
pub mod matref;
pub mod posembed;
pub mod profile;
pub mod ssl;
pub mod tost;
pub mod tost_lm;
pub mod vision;

pub use arch::{Arch, Pool};
pub use fused::{CrateAutodiff, CrateBackend};
pub use vision::{Crate, CrateConfig};

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// A named activation captured during a forward pass: shape and row-major f32 values.
#[derive(Debug, Clone)]
pub struct Captured {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Optional recorder of the per-layer activations, under the golden README's names.
pub struct Activations<B: Backend> {
    items: Option<Vec<Captured>>,
    _b: std::marker::PhantomData<B>,
}

impl<B: Backend> Activations<B> {
    pub fn off() -> Self {
        Self {
            items: None,
            _b: Default::default(),
        }
    }
    pub fn on() -> Self {
        Self {
            items: Some(Vec::new()),
            _b: Default::default(),
        }
    }
    /// Recording when `on`, like [`Activations::on`], else [`Activations::off`].
    pub fn recording(on: bool) -> Self {
        if on {
            Self::on()
        } else {
            Self::off()
        }
    }
    pub fn enabled(&self) -> bool {
        self.items.is_some()
    }
    pub fn push<const D: usize>(&mut self, name: &str, t: &Tensor<B, D>) {
        if let Some(items) = self.items.as_mut() {
            let data = t.clone().into_data().convert::<f32>();
            items.push(Captured {
                name: name.to_string(),
                shape: data.shape.to_vec(),
                values: data.to_vec::<f32>().expect("f32 activation"),
            });
        }
    }
    pub fn into_vec(self) -> Vec<Captured> {
        self.items.unwrap_or_default()
    }
}

/// Records a layer's intermediate token rows `[b·n, c]` as `[b, n, c]` under
/// `{prefix}{layer}.{name}` (e.g. `act.layer3.ista`): every name, or only those of [`Recorder::only`].
pub struct Recorder<'a, B: Backend> {
    acts: Option<&'a mut Activations<B>>,
    prefix: &'static str,
    layer: usize,
    b: usize,
    n: usize,
    only: &'static [&'static str],
}

impl<'a, B: Backend> Recorder<'a, B> {
    /// Records nothing.
    pub fn off() -> Self {
        Self {
            acts: None,
            prefix: "",
            layer: 0,
            b: 0,
            n: 0,
            only: &[],
        }
    }

    /// Records layer `layer` of `b` sequences of `n` tokens into `acts` (when it is on).
    pub fn layer(
        acts: &'a mut Activations<B>,
        prefix: &'static str,
        layer: usize,
        b: usize,
        n: usize,
    ) -> Self {
        Self {
            acts: Some(acts),
            prefix,
            layer,
            b,
            n,
            only: &[],
        }
    }

    /// Keep only `names`.
    pub fn only(self, names: &'static [&'static str]) -> Self {
        Self {
            only: names,
            ..self
        }
    }

    /// Whether [`Recorder::push`] keeps `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.acts.as_ref().is_some_and(|a| a.enabled())
            && (self.only.is_empty() || self.only.contains(&name))
    }

    pub fn push(&mut self, name: &str, rows: &Tensor<B, 2>) {
        if !self.wants(name) {
            return;
        }
        let c = rows.dims()[1];
        let t = rows.clone().reshape([self.b, self.n, c]);
        let key = format!("{}{}.{name}", self.prefix, self.layer);
        if let Some(acts) = self.acts.as_mut() {
            acts.push(&key, &t);
        }
    }
}

/// `spec` as a preset (`preset`, if it named one) or else as a JSON file read by `from_file`;
/// `kind` and `presets` word the error ("neither a preset (fmnist, …) nor an existing JSON file").
pub fn resolve_config<C>(
    spec: &str,
    preset: Option<C>,
    kind: &str,
    presets: &[&str],
    from_file: impl FnOnce(&std::path::Path) -> anyhow::Result<C>,
) -> anyhow::Result<C> {
    if let Some(c) = preset {
        return Ok(c);
    }
    let path = std::path::Path::new(spec);
    anyhow::ensure!(
        path.exists(),
        "--config {spec:?} is neither {kind} ({}) nor an existing JSON file",
        presets.join(", ")
    );
    from_file(path)
}

/// A JSON config file parsed (and validated) by `parse`; errors name the file.
pub fn read_json_config<C>(
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> anyhow::Result<C>,
) -> anyhow::Result<C> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    parse(&text).with_context(|| format!("config {}", path.display()))
}

/// Largest width (model dimension, head dimension, heads × head dimension) a config may ask for.
pub const MAX_WIDTH: usize = 1 << 16;
/// Largest number of layers or heads.
pub const MAX_DEPTH: usize = 1 << 10;
/// Largest number of classes, vocabulary entries, positions or pixels per side.
pub const MAX_COUNT: usize = 1 << 24;
/// Largest parameter count a config may describe (8.6 billion; ~34 GB of f32 weights).
pub const MAX_PARAMS: usize = 1 << 33;

/// Every size of a config positive and within its limit (`(name, value, limit)`), so that the
/// parameter-count arithmetic cannot overflow and an absurd size is an error, not an abort on
/// allocation.
pub fn check_sizes(sizes: &[(&str, usize, usize)]) -> anyhow::Result<()> {
    for &(name, v, limit) in sizes {
        anyhow::ensure!(v > 0, "{name} must be positive");
        anyhow::ensure!(v <= limit, "{name} = {v} exceeds the limit of {limit}");
    }
    Ok(())
}

/// A parameter count within [`MAX_PARAMS`] (call after [`check_sizes`]).
pub fn check_param_count(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        n <= MAX_PARAMS,
        "the config describes {n} parameters, more than the limit of {MAX_PARAMS}"
    );
    Ok(())
}
