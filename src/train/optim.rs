//! Optimizers for training: AdamW (burn's, torch semantics, as one fused pass) or Lion, with an optional second
//! group without weight decay (norms, biases, embeddings), global-norm gradient clipping as
//! `torch.nn.utils.clip_grad_norm_`, and state that saves and loads by parameter key.

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

use super::adamw::FusedAdamW;
use super::lion::Lion;
use crate::weights::write_atomic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Adamw,
    Lion,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptimSettings {
    pub kind: OptimizerKind,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Exclude LayerNorm parameters, biases, cls token and position embedding from decay.
    pub no_decay_norm_bias: bool,
    /// Global gradient-norm clip (None = off).
    pub clip_grad_norm: Option<f64>,
}

impl OptimSettings {
    /// Values the optimizers can run with; each error names the flag.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "--weight-decay must be a finite number ≥ 0, got {}",
            self.weight_decay
        );
        for (flag, b) in [("--beta1", self.beta1), ("--beta2", self.beta2)] {
            anyhow::ensure!((0.0..1.0).contains(&b), "{flag} must be in [0, 1), got {b}");
        }
        if let Some(c) = self.clip_grad_norm {
            anyhow::ensure!(
                c.is_finite() && c > 0.0,
                "--clip-grad-norm must be a finite number > 0 (0 = off), got {c}"
            );
        }
        Ok(())
    }
}

/// `--clip-grad-norm` as a setting: 0 = off; negative or NaN is an error.
pub fn clip_setting(v: f64) -> Result<Option<f64>> {
    anyhow::ensure!(
        v.is_finite() && v >= 0.0,
        "--clip-grad-norm must be a finite number ≥ 0 (0 = off), got {v}"
    );
    Ok((v > 0.0).then_some(v))
}

/// A peak learning rate and its final value: finite, peak > 0, 0 ≤ final ≤ peak.
pub fn check_lr(lr: f64, min_lr: f64) -> Result<()> {
    anyhow::ensure!(
        lr.is_finite() && lr > 0.0,
        "--lr must be a finite number > 0, got {lr}"
    );
    anyhow::ensure!(
        min_lr.is_finite() && (0.0..=lr).contains(&min_lr),
        "--min-lr must lie in [0, --lr = {lr}], got {min_lr}"
    );
    Ok(())
}

/// First bytes of an optimizer state written per parameter in key-id order.
const SORTED_MAGIC: &[u8; 8] = b"wbopt-v2";

/// The optimizer's per-parameter records in ascending parameter-id order (`magic`, then per
/// record: id u64, length u64, msgpack bytes): burn records them as a `HashMap`, whose order
/// changes from run to run, so two identical runs would write different files.
fn sorted_records_bytes<B: burn::tensor::backend::Backend, R: burn::record::Record<B>>(
    recs: impl IntoIterator<Item = (ParamId, R)>,
) -> Result<Vec<u8>> {
    let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let mut recs: Vec<(ParamId, R)> = recs.into_iter().collect();
    recs.sort_by_key(|(id, _)| id.val());
    let mut out = SORTED_MAGIC.to_vec();
    for (id, r) in recs {
        let bytes = Recorder::<B>::record(&rec, r, ())?;
        out.extend(id.val().to_le_bytes());
        out.extend((bytes.len() as u64).to_le_bytes());
        out.extend(bytes);
    }
    Ok(out)
}

/// Records written by [`sorted_records_bytes`] (or, from older checkpoints, one msgpack map).
fn records_from_bytes<B, R, Map>(bytes: Vec<u8>, device: &B::Device) -> Result<Map>
where
    B: burn::tensor::backend::Backend,
    R: burn::record::Record<B>,
    Map: burn::record::Record<B> + FromIterator<(ParamId, R)>,
{
    let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::new();
    let Some(mut rest) = bytes.strip_prefix(SORTED_MAGIC.as_slice()) else {
        return Ok(Recorder::<B>::load(&rec, bytes, device)?);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 16, "truncated record header");
        let id = u64::from_le_bytes(rest[..8].try_into().unwrap());
        let n = u64::from_le_bytes(rest[8..16].try_into().unwrap());
        let n = usize::try_from(n).ok().filter(|&n| n <= rest.len() - 16);
        let n = n.context("record length beyond the end of the file")?;
        let r: R = Recorder::<B>::load(&rec, rest[16..16 + n].to_vec(), device)?;
        out.push((ParamId::from(id), r));
        rest = &rest[16 + n..];
    }
    Ok(out.into_iter().collect())
}

enum Inner<M: AutodiffModule<B>, B: AutodiffBackend> {
    AdamW(OptimizerAdaptor<FusedAdamW, M, B>),
    Lion(OptimizerAdaptor<Lion, M, B>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Inner<M, B> {
    fn new(s: &OptimSettings, weight_decay: f64) -> Self {
        match s.kind {
            OptimizerKind::Adamw => Inner::AdamW(OptimizerAdaptor::from(FusedAdamW::new(
                s.beta1 as f32,
                s.beta2 as f32,
                1e-8,
                weight_decay as f32,
            ))),
            OptimizerKind::Lion => Inner::Lion(OptimizerAdaptor::from(Lion {
                beta_1: s.beta1 as f32,
                beta_2: s.beta2 as f32,
                weight_decay: weight_decay as f32,
            })),
        }
    }
    fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        match self {
            Inner::AdamW(o) => o.step(lr, model, grads),
            Inner::Lion(o) => o.step(lr, model, grads),
        }
    }
    /// `self` (fresh settings) carrying the moments of `from`.
    fn with_state_of(self, from: Self) -> Self {
        match (self, from) {
            (Inner::AdamW(a), Inner::AdamW(b)) => Inner::AdamW(a.load_record(b.to_record())),
            (Inner::Lion(a), Inner::Lion(b)) => Inner::Lion(a.load_record(b.to_record())),
            (a, _) => a,
        }
    }
    fn to_bytes(&self) -> Result<Vec<u8>> {
        match self {
            Inner::AdamW(o) => sorted_records_bytes::<B, _>(o.to_record()),
            Inner::Lion(o) => sorted_records_bytes::<B, _>(o.to_record()),
        }
    }
    fn load_bytes(self, bytes: Vec<u8>, device: &B::Device) -> Result<Self> {
        Ok(match self {
            Inner::AdamW(o) => {
                Inner::AdamW(o.load_record(records_from_bytes::<B, _, _>(bytes, device)?))
            }
            Inner::Lion(o) => {
                Inner::Lion(o.load_record(records_from_bytes::<B, _, _>(bytes, device)?))
            }
        })
    }
}

/// (id, rank, excluded from decay) of every parameter.
struct ParamInfo {
    stack: Vec<String>,
    out: Vec<(ParamId, usize, bool)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ParamInfo {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let leaf = self.stack.last().map(|s| s.as_str()).unwrap_or("");
        let no_decay = D < 2
            || matches!(
                leaf,
                "cls_token" | "pos_embedding" | "bias" | "gamma" | "beta"
            );
        self.out.push((param.id, D, no_decay));
    }
}

pub struct TrainOptimizer<M: AutodiffModule<B>, B: AutodiffBackend> {
    settings: OptimSettings,
    params: Vec<(ParamId, usize, bool)>,
    decay: Inner<M, B>,
    no_decay: Option<Inner<M, B>>,
    /// Weight decay of the `decay` group now (changes under a weight-decay schedule).
    weight_decay: f64,
}

/// Move gradient `id` (rank `rank`) from `from` to `to`, scaled by `scale`.
fn move_grad<B: AutodiffBackend>(
    from: &mut GradientsParams,
    to: &mut GradientsParams,
    id: ParamId,
    rank: usize,
    scale: Option<f64>,
) {
    fn mv<B: AutodiffBackend, const D: usize>(
        from: &mut GradientsParams,
        to: &mut GradientsParams,
        id: ParamId,
        scale: Option<f64>,
    ) {
        if let Some(g) = from.remove::<B::InnerBackend, D>(id) {
            to.register::<B::InnerBackend, D>(id, scale.map_or(g.clone(), |s| g.mul_scalar(s)));
        }
    }
    match rank {
        1 => mv::<B, 1>(from, to, id, scale),
        2 => mv::<B, 2>(from, to, id, scale),
        3 => mv::<B, 3>(from, to, id, scale),
        4 => mv::<B, 4>(from, to, id, scale),
        _ => panic!("parameters of rank {rank} are not supported"),
    }
}

fn sq_norm<B: AutodiffBackend>(
    grads: &GradientsParams,
    id: ParamId,
    rank: usize,
) -> Option<Tensor<B::InnerBackend, 1>> {
    fn sq<B: AutodiffBackend, const D: usize>(
        grads: &GradientsParams,
        id: ParamId,
    ) -> Option<Tensor<B::InnerBackend, 1>> {
        grads
            .get::<B::InnerBackend, D>(id)
            .map(|g| g.square().sum())
    }
    match rank {
        1 => sq::<B, 1>(grads, id),
        2 => sq::<B, 2>(grads, id),
        3 => sq::<B, 3>(grads, id),
        4 => sq::<B, 4>(grads, id),
        _ => None,
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> TrainOptimizer<M, B> {
    pub fn new(settings: OptimSettings, model: &M) -> Self {
        let mut info = ParamInfo {
            stack: Vec::new(),
            out: Vec::new(),
        };
        model.visit(&mut info);
        let no_decay = settings
            .no_decay_norm_bias
            .then(|| Inner::new(&settings, 0.0));
        Self {
            decay: Inner::new(&settings, settings.weight_decay),
            no_decay,
            params: info.out,
            weight_decay: settings.weight_decay,
            settings,
        }
    }

    /// Use weight decay `wd` from the next step on (the moments are kept): DINO's schedule.
    pub fn set_weight_decay(&mut self, wd: f64) {
        if wd == self.weight_decay {
            return;
        }
        let old = std::mem::replace(&mut self.decay, Inner::new(&self.settings, wd));
        let fresh = std::mem::replace(&mut self.decay, Inner::new(&self.settings, wd));
        self.decay = fresh.with_state_of(old);
        self.weight_decay = wd;
    }

    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self, grads: &GradientsParams) -> f64 {
        let parts: Vec<_> = self
            .params
            .iter()
            .filter_map(|&(id, r, _)| sq_norm::<B>(grads, id, r))
            .collect();
        if parts.is_empty() {
            return 0.0;
        }
        let total: f64 = Tensor::cat(parts, 0).sum().into_scalar().elem();
        total.sqrt()
    }

    /// `torch.nn.utils.clip_grad_norm_`: scale every gradient by `max / (‖g‖ + 1e-6)` when the
    /// global norm `‖g‖` exceeds `max` (no-op without a clip setting).
    pub fn clip(&self, mut grads: GradientsParams) -> GradientsParams {
        let Some(max) = self.settings.clip_grad_norm else {
            return grads;
        };
        let norm = self.grad_norm(&grads);
        if norm <= max {
            return grads;
        }
        let scale = Some(max / (norm + 1e-6));
        let mut out = GradientsParams::new();
        for &(id, rank, _) in &self.params {
            move_grad::<B>(&mut grads, &mut out, id, rank, scale);
        }
        out
    }

    /// Clip, split into decay groups and apply one update at learning rate `lr`.
    pub fn step(&mut self, lr: f64, model: M, grads: GradientsParams) -> M {
        let mut grads = self.clip(grads);
        let Some(no_decay) = self.no_decay.as_mut() else {
            return self.decay.step(lr, model, grads);
        };
        let mut rest = GradientsParams::new();
        for &(id, rank, excluded) in &self.params {
            if excluded {
                move_grad::<B>(&mut grads, &mut rest, id, rank, None);
            }
        }
        let model = self.decay.step(lr, model, grads);
        if rest.is_empty() {
            model
        } else {
            no_decay.step(lr, model, rest)
        }
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join("optimizer.mpk"), &self.decay.to_bytes()?)?;
        if let Some(o) = &self.no_decay {
            write_atomic(&dir.join("optimizer_no_decay.mpk"), &o.to_bytes()?)?;
        }
        Ok(())
    }

    pub fn load(mut self, dir: &Path, device: &B::Device) -> Result<Self> {
        let p = dir.join("optimizer.mpk");
        let bytes = std::fs::read(&p)
            .with_context(|| format!("cannot read optimizer state {}", p.display()))?;
        self.decay = self
            .decay
            .load_bytes(bytes, device)
            .with_context(|| format!("{}: corrupt optimizer state", p.display()))?;
        if let Some(o) = self.no_decay.take() {
            let p = dir.join("optimizer_no_decay.mpk");
            let bytes = std::fs::read(&p)
                .with_context(|| format!("cannot read optimizer state {}", p.display()))?;
            self.no_decay = Some(
                o.load_bytes(bytes, device)
                    .with_context(|| format!("{}: corrupt optimizer state", p.display()))?,
            );
        }
        Ok(self)
    }
}
