//! Self-supervised CRATE (DINO, SimDINO): the projection heads and the student/teacher pair.
//!
//! DINO's head (`vision_transformer.py::DINOHead`): `MLP → L2-normalise → last_layer`, where the MLP
//! is `Linear–GELU–…–Linear` to a bottleneck and `last_layer` a weight-normed bias-free linear map
//! to `out_dim` prototypes with `weight_g` fixed at 1 (`norm_last_layer=True`). SimDINO's head
//! is the same without `last_layer` (its output is the normalised bottleneck feature).

use anyhow::{ensure, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{Crate, CrateBackend, CrateConfig};

/// Which self-supervised objective a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SslLoss {
    /// SimDINO: coding-rate expansion + cosine compression (`MCRLoss`), no prototypes.
    Simdino,
    /// DINO: cross-entropy to the centred, sharpened teacher (`DINOLoss`), with prototypes.
    Dino,
}

/// Constructor arguments of `DINOHead` (`out_dim` 0 = SimDINO's head, no prototype layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub in_dim: usize,
    pub out_dim: usize,
    pub hidden_dim: usize,
    pub bottleneck_dim: usize,
    pub nlayers: usize,
}

impl HeadConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("in_dim", self.in_dim),
            ("hidden_dim", self.hidden_dim),
            ("bottleneck_dim", self.bottleneck_dim),
            ("nlayers", self.nlayers),
        ] {
            ensure!(v > 0, "head {name} must be positive");
        }
        Ok(())
    }

    /// Weights `trunc_normal(std=0.02)` and zero biases (DINO's `_init_weights`); `last_layer.weight_v`
    /// torch's default Linear init, `weight_g` = 1.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DinoHead<B> {
        let n = self.nlayers.max(1);
        let dims: Vec<usize> = std::iter::once(self.in_dim)
            .chain(std::iter::repeat_n(self.hidden_dim, n - 1))
            .chain(std::iter::once(self.bottleneck_dim))
            .collect();
        // std 0.02 truncated at ±2 (absolute) is the plain normal in practice
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let mlp = dims
            .windows(2)
            .map(|w| {
                let mut l = LinearConfig::new(w[0], w[1])
                    .with_initializer(normal.clone())
                    .init(device);
                l.bias = Some(Initializer::Zeros.init([w[1]], device));
                l
            })
            .collect();
        let last_layer = (self.out_dim > 0).then(|| {
            let bound = 1.0 / (self.bottleneck_dim as f64).sqrt();
            WeightNormLinear {
                weight_g: Initializer::Ones.init([self.out_dim, 1], device),
                weight_v: Initializer::Uniform {
                    min: -bound,
                    max: bound,
                }
                .init([self.out_dim, self.bottleneck_dim], device),
            }
        });
        DinoHead { mlp, last_layer }
    }
}

/// `nn.utils.weight_norm(nn.Linear(bottleneck, out, bias=False))`: `W = g · v / ‖v‖` per output row.
#[derive(Module, Debug)]
pub struct WeightNormLinear<B: Backend> {
    /// `[out, 1]`, fixed at 1 (never receives a gradient: it is read detached).
    pub weight_g: Param<Tensor<B, 2>>,
    /// `[out, in]` (torch layout).
    pub weight_v: Param<Tensor<B, 2>>,
}

impl<B: Backend> WeightNormLinear<B> {
    /// `x · (g · v/‖v‖)ᵀ`; with `frozen` no gradient reaches `v` (DINO's first-epoch freeze).
    pub fn forward(&self, x: Tensor<B, 2>, frozen: bool) -> Tensor<B, 2> {
        let v = self.weight_v.val();
        let v = if frozen { v.detach() } else { v };
        let norm = v.clone().square().sum_dim(1).sqrt();
        let w = v / norm * self.weight_g.val().detach();
        x.matmul(w.transpose())
    }
}

#[derive(Module, Debug)]
pub struct DinoHead<B: Backend> {
    pub mlp: Vec<Linear<B>>,
    pub last_layer: Option<WeightNormLinear<B>>,
}

/// `F.normalize(x, dim=-1)`: rows divided by `max(‖x‖, 1e-12)`.
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

impl<B: Backend> DinoHead<B> {
    /// The normalised bottleneck feature `MLP(x)/‖MLP(x)‖` `[b, bottleneck]`.
    pub fn embed(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.mlp.len() - 1;
        let mut x = x;
        for (i, l) in self.mlp.iter().enumerate() {
            x = l.forward(x);
            if i < last {
                x = gelu(x);
            }
        }
        l2_normalize(x)
    }

    /// Prototype logits (DINO) or the normalised bottleneck feature (SimDINO); `freeze_last`
    /// keeps the prototype layer out of the gradient.
    pub fn forward_with(&self, x: Tensor<B, 2>, freeze_last: bool) -> Tensor<B, 2> {
        let z = self.embed(x);
        match &self.last_layer {
            Some(l) => l.forward(z, freeze_last),
            None => z,
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward_with(x, false)
    }
}

impl<B: Backend> crate::model::keys::OfficialKeys for DinoHead<B> {
    /// `mlp.{2i}.*` (Linear at even positions of the official `nn.Sequential`, GELU between),
    /// `last_layer.weight_g` / `last_layer.weight_v`.
    fn official_key(path: &[String]) -> String {
        head_key(path)
    }
}

fn head_key(path: &[String]) -> String {
    let p: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
    match p.as_slice() {
        ["mlp", i, l] => format!("mlp.{}.{l}", 2 * i.parse::<usize>().unwrap_or(0)),
        _ => p.join("."),
    }
}

/// Settings of a self-supervised CRATE run, saved as `config.json`: the backbone (official CRATE
/// constructor arguments; its `num_classes` head is kept but unused) and the projection head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SslConfig {
    pub backbone: CrateConfig,
    pub head: HeadConfig,
    pub loss: SslLoss,
}

/// Prefixes of the training-only parameters; everything else is the teacher backbone under the
/// official CRATE keys (`model.safetensors`).
pub const STUDENT_PREFIX: &str = "student.";
pub const STUDENT_HEAD_PREFIX: &str = "student_head.";
pub const TEACHER_HEAD_PREFIX: &str = "teacher_head.";
pub const CENTER_KEY: &str = "dino_loss.center";

/// Whether an official key belongs to the training state rather than the teacher backbone.
pub fn is_training_key(key: &str) -> bool {
    key.starts_with(STUDENT_PREFIX)
        || key.starts_with(STUDENT_HEAD_PREFIX)
        || key.starts_with(TEACHER_HEAD_PREFIX)
        || key == CENTER_KEY
}

/// Student and teacher (backbone + head) and DINO's centre. The optimizer updates the student;
/// the teacher is its EMA and never receives gradients.
#[derive(Module, Debug)]
pub struct SelfDistill<B: CrateBackend> {
    pub teacher: Crate<B>,
    pub teacher_head: DinoHead<B>,
    pub student: Crate<B>,
    pub student_head: DinoHead<B>,
    /// DINO's centre `[1, out_dim]` (None for SimDINO).
    pub center: Option<Param<Tensor<B, 2>>>,
}

impl SslConfig {
    pub fn validate(&self) -> Result<()> {
        self.backbone.validate()?;
        self.head.validate()?;
        ensure!(
            self.head.in_dim == self.backbone.dim,
            "head in_dim {} must equal the backbone's dim {}",
            self.head.in_dim,
            self.backbone.dim
        );
        ensure!(
            (self.loss == SslLoss::Dino) == (self.head.out_dim > 0),
            "DINO needs a prototype layer (out_dim > 0), SimDINO none (out_dim = 0)"
        );
        Ok(())
    }

    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        super::read_json_config(path, |text| {
            let c: Self = serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("not a self-supervised CRATE config: {e}"))?;
            c.validate()?;
            Ok(c)
        })
    }

    /// Student and teacher start with the same weights (the teacher a copy of the student's
    /// values in tensors of its own: burn initialises parameters lazily, so a clone of a fresh
    /// module would draw its own weights).
    pub fn init<B: CrateBackend>(&self, device: &B::Device) -> SelfDistill<B> {
        let student = self.backbone.init::<B>(device);
        let student_head = self.head.init::<B>(device);
        let center = (self.loss == SslLoss::Dino)
            .then(|| Initializer::Zeros.init([1, self.head.out_dim], device));
        SelfDistill {
            teacher: copy_values(student.clone(), &student),
            teacher_head: copy_values(student_head.clone(), &student_head),
            student,
            student_head,
            center,
        }
    }
}

/// Float parameter values of a module, flattened, in visit order.
struct Values(Vec<TensorData>);

impl<B: Backend> ModuleVisitor<B> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push(param.val().into_data());
    }
}

/// Replaces each float parameter by a new tensor holding the next value.
struct Assign(std::vec::IntoIter<TensorData>);

impl<B: Backend> ModuleMapper<B> for Assign {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let data = self.0.next().expect("modules of the same structure");
        param.map(|t| Tensor::from_data(data, &t.device()))
    }
}

/// `to` (same structure as `from`) with `from`'s parameter values, in tensors of its own.
pub fn copy_values<B: Backend, M: Module<B>>(to: M, from: &M) -> M {
    let mut v = Values(Vec::new());
    from.visit(&mut v);
    to.map(&mut Assign(v.0.into_iter()))
}

impl<B: CrateBackend> crate::model::keys::OfficialKeys for SelfDistill<B> {
    /// Teacher backbone → official CRATE keys; the rest under the prefixes above.
    fn official_key(path: &[String]) -> String {
        let (first, rest) = path.split_first().expect("non-empty path");
        match first.as_str() {
            "teacher" => Crate::<B>::official_key(rest),
            "student" => format!("{STUDENT_PREFIX}{}", Crate::<B>::official_key(rest)),
            "student_head" => format!("{STUDENT_HEAD_PREFIX}{}", head_key(rest)),
            "teacher_head" => format!("{TEACHER_HEAD_PREFIX}{}", head_key(rest)),
            "center" => CENTER_KEY.to_string(),
            _ => path.join("."),
        }
    }
}
