//! Mapping between a burn module's parameter paths and the official state-dict keys.

use anyhow::{bail, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeSet;

use super::StateDict;

pub use crate::model::keys::{torch_leaf, OfficialKeys};

/// Path and container type of the current position in a module walk.
#[derive(Default)]
struct PathStack {
    names: Vec<String>,
    kinds: Vec<String>,
}

impl PathStack {
    fn enter(&mut self, name: &str, kind: &str) {
        self.names.push(name.to_string());
        self.kinds.push(kind.to_string());
    }
    fn exit(&mut self) {
        self.names.pop();
        self.kinds.pop();
    }
    /// burn's `Linear` stores `weight` as `[in, out]`; torch stores `[out, in]`.
    /// (`enter_module` names a field together with the type of the struct that owns it.)
    fn is_linear_weight(&self) -> bool {
        matches!((self.names.last(), self.kinds.last()), (Some(n), Some(k)) if n == "weight" && k == "Struct:Linear")
    }
}

fn transpose2(data: &TensorData) -> TensorData {
    let (r, c) = (data.shape[0], data.shape[1]);
    let v = data.to_vec::<f32>().expect("f32 tensor");
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    TensorData::new(out, [c, r])
}

/// Deterministic parameter id from the official key (FNV-1a), so optimizer state saved by one
/// process finds its parameters in the next one.
fn key_id(key: &str) -> ParamId {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    ParamId::from(h)
}

struct Collector<M> {
    stack: PathStack,
    out: StateDict,
    _m: std::marker::PhantomData<M>,
}

impl<B: Backend, M: OfficialKeys> ModuleVisitor<B> for Collector<M> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.stack.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let data = param.val().into_data().convert::<f32>();
        let data = if self.stack.is_linear_weight() {
            transpose2(&data)
        } else {
            data
        };
        self.out.insert(M::official_key(&self.stack.names), data);
    }
}

/// Every parameter of `model` under its official key, in torch layout.
pub fn collect_state_dict<B: Backend, M: Module<B> + OfficialKeys>(model: &M) -> StateDict {
    let mut c = Collector::<M> {
        stack: PathStack::default(),
        out: StateDict::new(),
        _m: Default::default(),
    };
    model.visit(&mut c);
    c.out
}

struct GradCollector<'a, B: AutodiffBackend, M> {
    stack: PathStack,
    grads: &'a B::Gradients,
    out: StateDict,
    _m: std::marker::PhantomData<M>,
}

impl<B: AutodiffBackend, M: OfficialKeys> ModuleVisitor<B> for GradCollector<'_, B, M> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.stack.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let data = g.into_data().convert::<f32>();
            let data = if self.stack.is_linear_weight() {
                transpose2(&data)
            } else {
                data
            };
            self.out.insert(M::official_key(&self.stack.names), data);
        }
    }
}

/// d loss / d param for every parameter that has a gradient, under official keys.
pub fn collect_gradients<B: AutodiffBackend, M: Module<B> + OfficialKeys>(
    model: &M,
    grads: &B::Gradients,
) -> StateDict {
    let mut c = GradCollector::<B, M> {
        stack: PathStack::default(),
        grads,
        out: StateDict::new(),
        _m: Default::default(),
    };
    model.visit(&mut c);
    c.out
}

struct GradBuilder<'a, M> {
    stack: PathStack,
    sd: &'a StateDict,
    out: burn::optim::GradientsParams,
    _m: std::marker::PhantomData<M>,
}

impl<B: AutodiffBackend, M: OfficialKeys> ModuleVisitor<B> for GradBuilder<'_, M> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.stack.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(data) = self.sd.get(&M::official_key(&self.stack.names)) {
            let data = if self.stack.is_linear_weight() {
                transpose2(data)
            } else {
                data.clone()
            };
            let g = Tensor::<B::InnerBackend, D>::from_data(data, &param.val().device());
            self.out.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

/// Gradients given under official keys (e.g. PyTorch's `p.grad`), ready for an optimizer step.
pub fn gradients_from_state_dict<B: AutodiffBackend, M: Module<B> + OfficialKeys>(
    model: &M,
    sd: &StateDict,
) -> burn::optim::GradientsParams {
    let mut g = GradBuilder::<M> {
        stack: PathStack::default(),
        sd,
        out: burn::optim::GradientsParams::new(),
        _m: Default::default(),
    };
    model.visit(&mut g);
    g.out
}

/// Keys that did not line up when loading a state dict.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mismatched: Vec<String>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
    pub fn describe(&self) -> String {
        let mut s = Vec::new();
        if !self.missing.is_empty() {
            s.push(format!("missing keys: {}", self.missing.join(", ")));
        }
        if !self.unexpected.is_empty() {
            s.push(format!("unexpected keys: {}", self.unexpected.join(", ")));
        }
        if !self.mismatched.is_empty() {
            s.push(format!("wrongly shaped: {}", self.mismatched.join(", ")));
        }
        s.join("; ")
    }
}

struct Loader<'a, M> {
    stack: PathStack,
    sd: Option<&'a StateDict>,
    used: BTreeSet<String>,
    report: LoadReport,
    _m: std::marker::PhantomData<M>,
}

impl<B: Backend, M: OfficialKeys> ModuleMapper<B> for Loader<'_, M> {
    fn enter_module(&mut self, name: &str, kind: &str) {
        self.stack.enter(name, kind);
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let key = M::official_key(&self.stack.names);
        let (_, tensor, mapper) = param.consume();
        let id = key_id(&key);
        let Some(sd) = self.sd else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let Some(data) = sd.get(&key) else {
            self.report.missing.push(key);
            return Param::from_mapped_value(id, tensor, mapper);
        };
        self.used.insert(key.clone());
        let data = data.clone().convert::<f32>();
        let data = if self.stack.is_linear_weight() && data.shape.len() == 2 {
            transpose2(&data)
        } else {
            data
        };
        if data.shape.as_slice() != tensor.dims().as_slice() {
            let want: Vec<usize> = if self.stack.is_linear_weight() {
                tensor.dims().iter().rev().copied().collect()
            } else {
                tensor.dims().to_vec()
            };
            let got: Vec<usize> = if self.stack.is_linear_weight() {
                data.shape.iter().rev().copied().collect()
            } else {
                data.shape.to_vec()
            };
            self.report
                .mismatched
                .push(format!("{key} (file {got:?}, model {want:?})"));
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let require_grad = tensor.is_require_grad();
        let mut new = Tensor::<B, D>::from_data(data, &tensor.device());
        if require_grad {
            new = new.require_grad();
        }
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Give every parameter an id derived from its official key (see [`key_id`]).
pub fn canonical_ids<B: Backend, M: Module<B> + OfficialKeys>(model: M) -> M {
    let mut l = Loader::<M> {
        stack: PathStack::default(),
        sd: None,
        used: BTreeSet::new(),
        report: LoadReport::default(),
        _m: Default::default(),
    };
    model.map(&mut l)
}

/// Load `sd` into `model`. With `strict`, any missing, unexpected or wrongly shaped key is an
/// error listing them all (like PyTorch's `load_state_dict`); without it, those are skipped and reported.
pub fn apply_state_dict<B: Backend, M: Module<B> + OfficialKeys>(
    model: M,
    sd: &StateDict,
    strict: bool,
) -> Result<(M, LoadReport)> {
    let mut l = Loader::<M> {
        stack: PathStack::default(),
        sd: Some(sd),
        used: BTreeSet::new(),
        report: LoadReport::default(),
        _m: Default::default(),
    };
    let model = model.map(&mut l);
    let mut report = l.report;
    report.unexpected = sd
        .keys()
        .filter(|k| !l.used.contains(*k))
        .cloned()
        .collect();
    if strict && !report.is_clean() {
        bail!("state dict does not match the model: {}", report.describe());
    }
    Ok((model, report))
}

/// A causal LM's parameters under the official keys, with the tied `lm_head.weight` alias added
/// (what `load_state_dict` of the official class expects).
pub fn lm_state_dict<B: crate::model::CrateBackend>(
    model: &crate::model::lm::CausalLm<B>,
) -> StateDict {
    let mut sd = collect_state_dict(model);
    if let Some(wte) = sd.get("transformer.wte.weight").cloned() {
        sd.insert(crate::model::lm::LM_HEAD_KEY.to_string(), wte);
    }
    sd
}

/// Load official weights into a causal LM, strictly apart from the alias and buffers that
/// `model::lm::prepare_state_dict` drops.
pub fn load_official_lm<B: crate::model::CrateBackend>(
    model: crate::model::lm::CausalLm<B>,
    sd: StateDict,
) -> Result<crate::model::lm::CausalLm<B>> {
    let sd = crate::model::lm::prepare_state_dict(sd);
    let (model, _) = apply_state_dict(model, &sd, true)?;
    Ok(model)
}
