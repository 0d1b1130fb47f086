//! Self-supervised CRATE as a [`Task`]: DINO (`main_dino.py::DINOLoss`) and SimDINO
//! (`simdino/main_dino.py::MCRLoss`) self-distillation, the EMA teacher, and DINO's weighted
//! k-NN classifier (`eval_knn.py::knn_classifier`) for evaluation.
//!
//! One batch: the multi-crop views of each image ([`MultiCrop`]); the student (backbone + head)
//! sees all `2 + N` views, the teacher only the 2 global ones; after the optimizer step the
//! teacher moves towards the student, `θ_t ← θ_t + (1 − m)(θ_s − θ_t)`, with `m` on DINO's
//! cosine from `momentum_teacher` to 1.

use anyhow::{bail, ensure, Result};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::image_run::{check_shape, load_split};
use crate::data::{Format, Split};
use crate::model::features::Features;
use crate::InferBackend;

use super::checkpoint::{model_metadata, write_checkpoint, TrainState};
use super::{schedule, EvalResult, Progress, Task, TrainOptimizer};
use crate::data::multicrop::{Image, MultiCrop};
use crate::data::{batch_rng, Augment, Batcher, ImageSet, Normalization};
use crate::model::ssl::{is_training_key, HeadConfig, SelfDistill, SslConfig, SslLoss};
use crate::model::{CrateAutodiff, CrateBackend, CrateConfig, Pool};
use crate::weights::{collect_state_dict, write_safetensors, StateDict};

/// SimDINO's `MCRLoss(ncrops, reduce_cov, expa_type, eps, coeff)` (world size 1, so
/// `reduce_cov` changes nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McrSettings {
    pub ncrops: usize,
    pub eps: f64,
    pub coeff: f64,
    /// 0: expansion of the student's global views; 1: of (student global + teacher)/2.
    pub expa_type: u8,
    pub reduce_cov: u8,
}

/// SimDINO's loss and its two terms (the terms as plain numbers, as the reference detaches them).
pub struct McrOutput<B: Backend> {
    /// `−coeff·comp − expa`.
    pub loss: Tensor<B, 1>,
    pub comp: f64,
    pub expa: f64,
}

/// Rows scaled to unit length as `F.cosine_similarity` does (norm clamped at 1e-8).
fn cosine_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-8);
    x / norm
}

/// Mean over the batch of Σ over (teacher view t, student view v ≠ t) of `pair(t, v)` `[B]`,
/// divided by the number of pairs: the shared shape of both losses' cross-view terms.
/// `student` is `[ncrops, B, k]`, `teacher` `[2, B, k]`; `pair` gives `[ncrops, B, 1]` per t.
fn cross_view_mean<B: Backend>(
    student: Tensor<B, 3>,
    teacher: Tensor<B, 3>,
    pair: impl Fn(Tensor<B, 3>, Tensor<B, 3>) -> Tensor<B, 3>,
) -> Tensor<B, 1> {
    let ncrops = student.dims()[0];
    let nt = teacher.dims()[0];
    let device = student.device();
    let mut total = Tensor::<B, 1>::zeros([1], &device);
    for t in 0..nt {
        let per_view = pair(student.clone(), teacher.clone().narrow(0, t, 1))
            .mean_dim(1)
            .reshape([ncrops]);
        // same-view pairs are skipped (`v == iq` in DINO, the zeroed diagonal in SimDINO)
        let keep: Vec<f32> = (0..ncrops).map(|v| (v != t) as u8 as f32).collect();
        let keep = Tensor::<B, 1>::from_data(TensorData::new(keep, [ncrops]), &device);
        total = total + (per_view * keep).sum();
    }
    let terms = nt * ncrops - nt.min(ncrops);
    total.div_scalar(terms as f64)
}

/// `½·logdet(I + c·ZᵀZ)` of a row-major `[m, p]` matrix and its gradient `c·Z·(I + c·ZᵀZ)⁻¹`
/// (in f64; the reference takes the log-diagonal of the Cholesky factor).
fn half_logdet(z: &[f32], m: usize, p: usize, c: f64) -> Result<(f64, Vec<f64>)> {
    let zm = nalgebra::DMatrix::<f64>::from_row_iterator(m, p, z.iter().map(|&v| v as f64));
    let a = nalgebra::DMatrix::<f64>::identity(p, p) + (zm.transpose() * &zm) * c;
    let chol = nalgebra::Cholesky::new(a)
        .ok_or_else(|| anyhow::anyhow!("I + c·ZᵀZ is not positive definite (NaN features?)"))?;
    let value = chol.l().diagonal().iter().map(|d| d.ln()).sum::<f64>();
    let grad = (zm * chol.inverse()) * c;
    // row-major
    let g = (0..m)
        .flat_map(|i| (0..p).map(move |j| (i, j)))
        .map(|(i, j)| grad[(i, j)])
        .collect();
    Ok((value, g))
}

/// SimDINO's `MCRLoss.forward(student_feat [ncrops·B, p], teacher_feat [2·B, p])`: views stacked
/// view-major. comp = mean cosine similarity over (teacher t, student v ≠ t) pairs; expa =
/// γ·mean over the 2 global views of ½·logdet(I + p/(m·eps)·ZᵀZ), γ = (p + m)/(p·m).
pub fn mcr_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    s: &McrSettings,
) -> Result<McrOutput<B>> {
    let [rows, p] = student.dims();
    ensure!(
        rows % s.ncrops == 0 && teacher.dims()[0] * s.ncrops == 2 * rows,
        "MCR loss: {rows} student rows are not {} crops of the teacher's {}/2",
        s.ncrops,
        teacher.dims()[0]
    );
    let b = rows / s.ncrops;
    let sv = student.clone().reshape([s.ncrops, b, p]);
    let tv = teacher.clone().reshape([2, b, p]);
    let comp = cross_view_mean(
        cosine_rows(student).reshape([s.ncrops, b, p]),
        cosine_rows(teacher).reshape([2, b, p]),
        |st, t| (st * t).sum_dim(2),
    );
    let global = sv.narrow(0, 0, 2);
    let z = match s.expa_type {
        0 => global,
        1 => (global + tv).div_scalar(2.0),
        t => anyhow::bail!("expa_type must be 0 or 1, got {t}"),
    };
    let (n_world, m) = (1usize, b);
    let c = p as f64 / (m * n_world) as f64 / s.eps;
    let gamma = (p + n_world * m) as f64 / (p * n_world * m) as f64;
    let zv: Vec<f32> = z.clone().into_data().convert::<f32>().to_vec().unwrap();
    let (mut expa, mut grad) = (0.0, Vec::with_capacity(zv.len()));
    for v in 0..2 {
        let (val, g) = half_logdet(&zv[v * m * p..(v + 1) * m * p], m, p, c)?;
        expa += gamma * val / 2.0;
        grad.extend(g.into_iter().map(|x| (gamma * x / 2.0) as f32));
    }
    // value `expa`, gradient `grad` w.r.t. Z: expa + Σ (Z − sg(Z)) ⊙ ∂expa/∂Z
    let device = z.device();
    let grad = Tensor::<B, 3>::from_data(TensorData::new(grad, [2, m, p]), &device);
    let expa_t = ((z.clone() - z.detach()) * grad).sum().add_scalar(expa);
    let comp_v: f64 = comp.clone().into_scalar().elem();
    let loss = comp.mul_scalar(-s.coeff) - expa_t;
    Ok(McrOutput {
        loss,
        comp: comp_v,
        expa,
    })
}

/// DINO's `DINOLoss` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoSettings {
    pub ncrops: usize,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
    pub nepochs: usize,
    pub student_temp: f64,
    pub center_momentum: f64,
}

impl DinoSettings {
    /// `teacher_temp_schedule[epoch]`: `np.linspace(warmup, final, warmup_epochs)`, then `final`.
    pub fn teacher_temp_at(&self, epoch: usize) -> f64 {
        let w = self.warmup_teacher_temp_epochs;
        if epoch >= w {
            return self.teacher_temp;
        }
        if w == 1 {
            return self.warmup_teacher_temp;
        }
        self.warmup_teacher_temp
            + (self.teacher_temp - self.warmup_teacher_temp) * epoch as f64 / (w - 1) as f64
    }
}

/// `DINOLoss.forward(student_output, teacher_output, epoch)` with centre `center [1, K]`: the
/// mean over (teacher view t, student view v ≠ t) of `Σ_k −softmax((t − c)/τ_t) · log_softmax(s/τ_s)`;
/// returns the loss and the updated centre `c·m + mean(teacher)·(1 − m)`.
pub fn dino_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
    center: Tensor<B, 2>,
    epoch: usize,
    s: &DinoSettings,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [rows, k] = student.dims();
    let b = rows / s.ncrops;
    let logp = log_softmax(student.div_scalar(s.student_temp), 1).reshape([s.ncrops, b, k]);
    let temp = s.teacher_temp_at(epoch);
    let q = softmax((teacher.clone() - center.clone()).div_scalar(temp), 1)
        .detach()
        .reshape([2, b, k]);
    let loss = cross_view_mean(logp, q, |lp, q| (lp * q).sum_dim(2).neg());
    let batch_center = teacher.detach().mean_dim(0);
    let center =
        center.mul_scalar(s.center_momentum) + batch_center.mul_scalar(1.0 - s.center_momentum);
    (loss, center)
}

/// k-NN top-1 and top-5 (fractions) and the number of test images.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct KnnResult {
    pub top1: f64,
    pub top5: f64,
    pub n: usize,
}

/// DINO's `knn_classifier`: for each test row (features `[n, d]`, unit rows as given), the `k`
/// train rows of largest dot product vote for their label with weight `exp(sim/T)`; classes are
/// ranked by their votes (ties: lower class first) and top-1 / top-`min(5, k)` checked.
#[allow(clippy::too_many_arguments)]
pub fn knn_classifier(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    test_labels: &[usize],
    d: usize,
    k: usize,
    t: f64,
    num_classes: usize,
) -> Result<KnnResult> {
    let (n_train, n_test) = (train_labels.len(), test_labels.len());
    ensure!(
        train.len() == n_train * d && test.len() == n_test * d,
        "k-NN: feature and label counts differ"
    );
    ensure!(
        n_train > 0 && n_test > 0,
        "k-NN needs train and test images"
    );
    ensure!(k > 0, "k-NN: k must be positive");
    ensure!(
        t > 0.0 && t.is_finite(),
        "k-NN: the temperature must be positive and finite (got {t})"
    );
    for (what, v) in [("train", train), ("test", test)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "k-NN: the {what} features are not finite (image {}, value {}): the model or its \
                 input normalisation produces NaN or infinity",
                i / d.max(1),
                v[i]
            );
        }
    }
    let k = k.min(n_train);
    let top = 5.min(k).min(num_classes);
    let bank = crate::model::gemm::MatRef::rows(train, n_train, d).t();
    let (mut c1, mut c5) = (0usize, 0usize);
    let chunk = 256;
    let mut order: Vec<u32> = Vec::with_capacity(n_train);
    for (ci, rows) in test.chunks(chunk * d).enumerate() {
        let nr = rows.len() / d;
        let sim = crate::model::gemm::matmul(crate::model::gemm::MatRef::rows(rows, nr, d), bank);
        for r in 0..nr {
            let s = &sim[r * n_train..(r + 1) * n_train];
            order.clear();
            order.extend(0..n_train as u32);
            let by_sim = |a: &u32, b: &u32| s[*b as usize].total_cmp(&s[*a as usize]);
            if k < n_train {
                order.select_nth_unstable_by(k - 1, by_sim);
            }
            // weights exp(s_i/T), each divided by exp(s_max/T): the same ranking, no overflow at
            // small T (where the vote tends to the nearest neighbour's)
            let s_max = order[..k]
                .iter()
                .map(|&i| s[i as usize] as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let mut votes = vec![0f64; num_classes];
            for &i in &order[..k] {
                let label = train_labels[i as usize];
                ensure!(
                    label < num_classes,
                    "k-NN: label {label} ≥ {num_classes} classes"
                );
                votes[label] += ((s[i as usize] as f64 - s_max) / t).exp();
            }
            let mut classes: Vec<usize> = (0..num_classes).collect();
            classes.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]));
            let label = test_labels[ci * chunk + r];
            c1 += (classes[0] == label) as usize;
            c5 += classes[..top].contains(&label) as usize;
        }
    }
    Ok(KnnResult {
        top1: c1 as f64 / n_test as f64,
        top5: c5 as f64 / n_test as f64,
        n: n_test,
    })
}

/// `features(x)` `[b, d]` of every image of `set` (normalised with `norm`, no augmentation),
/// row-major, with `d`.
pub fn extract_features<B: Backend>(
    set: &ImageSet,
    norm: &Normalization,
    device: &B::Device,
    features: impl Fn(Tensor<B, 4>) -> Tensor<B, 2>,
) -> (Vec<f32>, usize) {
    let batcher = Batcher {
        norm: norm.clone(),
        augment: Augment::none(),
    };
    let idx: Vec<usize> = (0..set.len()).collect();
    let (mut out, mut d) = (Vec::new(), 0);
    for chunk in idx.chunks(500) {
        let (x, _) = batcher.batch::<B>(set, chunk, &mut batch_rng(0, 0, 0), device);
        let f = features(x);
        d = f.dims()[1];
        out.extend(f.into_data().convert::<f32>().to_vec::<f32>().unwrap());
    }
    (out, d)
}

/// Rows scaled to unit length (`nn.functional.normalize`, as `eval_knn.py` does to the features).
pub fn normalize_rows(v: &mut [f32], d: usize) {
    for row in v.chunks_mut(d) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= n);
    }
}

/// k-NN accuracy of `features` on `test`, with `bank` (its labels) as the neighbours.
pub fn knn_eval<B: Backend>(
    bank: &ImageSet,
    test: &ImageSet,
    norm: &Normalization,
    k: usize,
    t: f64,
    device: &B::Device,
    features: impl Fn(Tensor<B, 4>) -> Tensor<B, 2>,
) -> Result<KnnResult> {
    ensure!(
        !bank.is_empty() && !test.is_empty(),
        "k-NN needs at least one train (bank) image and one test image (got {} and {}): raise \
         --train-limit / --knn-bank / --test-limit",
        bank.len(),
        test.len()
    );
    let (mut ftr, d) = extract_features(bank, norm, device, &features);
    let (mut fte, _) = extract_features(test, norm, device, &features);
    normalize_rows(&mut ftr, d);
    normalize_rows(&mut fte, d);
    let labels = |s: &ImageSet| s.labels.iter().map(|&l| l as usize).collect::<Vec<_>>();
    let (ltr, lte) = (labels(bank), labels(test));
    let classes = bank
        .num_classes()
        .max(test.num_classes())
        .max(ltr.iter().chain(&lte).max().map_or(0, |m| m + 1));
    knn_classifier(&ftr, &ltr, &fte, &lte, d, k, t, classes)
}

/// Float parameters of a module (values without a graph), flattened, in visit order.
struct Flatten<B: AutodiffBackend>(Vec<Tensor<B::InnerBackend, 1>>);

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

/// `θ ← θ + w·(θ_s − θ)` for the parameters of a module, the others' taken in visit order.
struct Lerp<B: AutodiffBackend> {
    toward: std::vec::IntoIter<Tensor<B::InnerBackend, 1>>,
    weight: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Lerp<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let s = self
            .toward
            .next()
            .expect("teacher and student have the same parameters");
        let w = self.weight;
        param.map(|t| {
            let dims = t.dims();
            let t = t.inner();
            let s = s.reshape(dims);
            Tensor::from_inner(t.clone() + (s - t).mul_scalar(w))
        })
    }
}

/// The teacher's EMA step (`torch._foreach_lerp_(teacher, student, 1 − m)`): every parameter of
/// `teacher` moves by `(1 − m)` of the way to the same parameter of `student`.
pub fn ema_update<B: AutodiffBackend, M: Module<B>>(teacher: M, student: &M, m: f64) -> M {
    let mut flat = Flatten::<B>(Vec::new());
    student.visit(&mut flat);
    teacher.map(&mut Lerp::<B> {
        toward: flat.0.into_iter(),
        weight: 1.0 - m,
    })
}

/// Everything of a self-supervised run that is not the model shape: saved in `config.json`
/// so a resumed run continues with the same objective and views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SslSettings {
    pub crops: MultiCrop,
    pub mcr: McrSettings,
    pub dino: DinoSettings,
    /// Base EMA momentum (cosine to 1 over the run).
    pub momentum_teacher: f64,
    /// Epochs during which DINO's prototype layer gets no gradient.
    pub freeze_last_layer: usize,
    /// k-NN evaluation after each epoch: neighbours, temperature, size of the train-set bank.
    pub knn_k: usize,
    pub knn_t: f64,
    pub knn_bank: usize,
}

/// `config.json` of a self-supervised run: the model and the settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SslRunConfig {
    pub model: SslConfig,
    pub settings: SslSettings,
}

impl SslRunConfig {
    pub fn from_json_file(path: &Path) -> Result<Self> {
        crate::model::read_json_config(path, |text| {
            let c: Self = serde_json::from_str(text)
                .map_err(|e| anyhow::anyhow!("not a self-supervised run config: {e}"))?;
            c.model.validate()?;
            Ok(c)
        })
    }
}

/// The choices of a DINO / SimDINO run beyond its backbone and recipe (`dino train`'s flags;
/// the references use 8 local crops, a 2048/256/3 head and 65536 prototypes).
#[derive(Debug, Clone)]
pub struct SslOptions {
    pub loss: SslLoss,
    pub local_crops: usize,
    /// Pixel size of the local crops (None: 96/224 of the image, in whole patches).
    pub local_size: Option<usize>,
    pub head_hidden: usize,
    pub head_bottleneck: usize,
    pub head_layers: usize,
    /// DINO's prototypes (unused by SimDINO).
    pub out_dim: usize,
    pub momentum_teacher: f64,
    pub warmup_teacher_temp: f64,
    pub teacher_temp: f64,
    pub warmup_teacher_temp_epochs: usize,
    pub student_temp: f64,
    pub center_momentum: f64,
    pub freeze_last_layer: usize,
    pub eps: f64,
    pub coeff: f64,
    pub expa_type: u8,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub knn_bank: usize,
    /// Epochs of the run (DINO's teacher-temperature schedule spans them).
    pub epochs: usize,
}

impl SslOptions {
    /// Values a run can take; each error names the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.expa_type <= 1,
            "--expa-type must be 0 or 1, got {}",
            self.expa_type
        );
        for (flag, v) in [
            ("--eps", self.eps),
            ("--teacher-temp", self.teacher_temp),
            ("--warmup-teacher-temp", self.warmup_teacher_temp),
            ("--student-temp", self.student_temp),
            ("--knn-temperature", self.knn_temperature),
        ] {
            ensure!(v > 0.0 && v.is_finite(), "{flag} must be positive, got {v}");
        }
        for (flag, v) in [
            ("--momentum-teacher", self.momentum_teacher),
            ("--center-momentum", self.center_momentum),
        ] {
            ensure!(
                (0.0..=1.0).contains(&v),
                "{flag} must be in [0, 1], got {v}"
            );
        }
        ensure!(self.knn_k > 0, "--knn-k must be positive");
        ensure!(
            self.loss == SslLoss::Simdino || self.out_dim > 0,
            "--out-dim must be positive"
        );
        Ok(())
    }
}

impl SslRunConfig {
    /// A fresh run's config: the cls-pooled `backbone` with the head, views and loss of `o`.
    pub fn new(backbone: CrateConfig, o: &SslOptions) -> Result<Self> {
        o.validate()?;
        ensure!(
            backbone.pool == Pool::Cls,
            "--config: self-distillation reads the cls feature; the config has pool = \"{}\"",
            backbone.pool
        );
        let head = HeadConfig {
            in_dim: backbone.dim,
            out_dim: if o.loss == SslLoss::Dino {
                o.out_dim
            } else {
                0
            },
            hidden_dim: o.head_hidden,
            bottleneck_dim: o.head_bottleneck,
            nlayers: o.head_layers,
        };
        let patch = backbone.patch_size;
        let mut crops = MultiCrop::for_image(backbone.image_size, patch, o.local_crops);
        if let Some(s) = o.local_size {
            ensure!(
                s >= patch && s.is_multiple_of(patch),
                "--local-size {s} must be a positive multiple of the patch size {patch}"
            );
            crops.local_size = s;
        }
        let ncrops = crops.ncrops();
        let model = SslConfig {
            backbone,
            head,
            loss: o.loss,
        };
        model.validate()?;
        let mcr = McrSettings {
            ncrops,
            eps: o.eps,
            coeff: o.coeff,
            expa_type: o.expa_type,
            reduce_cov: 0,
        };
        let dino = DinoSettings {
            ncrops,
            warmup_teacher_temp: o.warmup_teacher_temp,
            teacher_temp: o.teacher_temp,
            warmup_teacher_temp_epochs: o.warmup_teacher_temp_epochs,
            nepochs: o.epochs,
            student_temp: o.student_temp,
            center_momentum: o.center_momentum,
        };
        let settings = SslSettings {
            crops,
            mcr,
            dino,
            momentum_teacher: o.momentum_teacher,
            freeze_last_layer: o.freeze_last_layer,
            knn_k: o.knn_k,
            knn_t: o.knn_temperature,
            knn_bank: o.knn_bank,
        };
        Ok(Self { model, settings })
    }
}

/// Where `knn`'s features come from: the normalised pixels, a randomly initialised CRATE of a
/// config (the untrained baseline), or weights (a classifier, a `dino train` checkpoint or a
/// CRATE-MAE encoder, with `config` when not stored with them).
#[derive(Debug, Clone)]
pub enum FeatureSource {
    Pixels,
    RandomInit {
        config: String,
        seed: u64,
    },
    Weights {
        path: PathBuf,
        config: Option<String>,
    },
}

impl FeatureSource {
    /// The features, the normalisation to apply (stored with the weights, else the training
    /// split's) and a description, checked against the images of `train` (read from `data`).
    pub fn open(
        &self,
        train: &ImageSet,
        data: &Path,
    ) -> Result<(Features<InferBackend>, Normalization, String)> {
        let device = Default::default();
        let from_train = || Normalization::from_set(train);
        Ok(match self {
            FeatureSource::Pixels => (Features::Pixels, from_train(), "pixels".into()),
            FeatureSource::RandomInit { config, seed } => {
                let cfg = CrateConfig::resolve(config)?;
                let input = [cfg.channels, cfg.image_size, cfg.image_size];
                check_shape(input, train, data)?;
                <InferBackend as Backend>::seed(&device, *seed);
                let what = format!("random-init CRATE {config} (seed {seed})");
                (Features::Crate(cfg.init(&device)), from_train(), what)
            }
            FeatureSource::Weights { path, config } => {
                let l = crate::weights::load(path, config.as_deref(), true, &device)?
                    .into_features()?;
                check_shape(l.config, train, data)?;
                let norm = l.normalization(train.channels)?.unwrap_or_else(from_train);
                (l.model, norm, path.display().to_string())
            }
        })
    }
}

/// What [`FeatureSource::knn`] measured, with its settings and the features' description.
#[derive(Debug, Clone, Serialize)]
pub struct KnnReport {
    pub top1: f64,
    pub top5: f64,
    pub k: usize,
    #[serde(rename = "T")]
    pub t: f64,
    /// Test images (queries) and training images (neighbours).
    pub n: usize,
    pub train: usize,
    pub seconds: f64,
    /// The features: "pixels", a random-init CRATE, or the weights' path.
    #[serde(skip)]
    pub features: String,
}

impl std::fmt::Display for KnnReport {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "k-NN (k = {}, T = {}) on {}: top-1 {:.2}%  top-5 {:.2}%  ({} test images, {} neighbours, {:.0}s)",
            self.k,
            self.t,
            self.features,
            100.0 * self.top1,
            100.0 * self.top5,
            self.n,
            self.train,
            self.seconds
        )
    }
}

impl FeatureSource {
    /// DINO's weighted k-NN (`k` neighbours, temperature `t`) of these features on the images of
    /// `data`: its training split (the first `train_limit`) as the neighbours, its test split the
    /// queries.
    pub fn knn(
        &self,
        data: &Path,
        format: Format,
        (train_limit, test_limit): (Option<usize>, Option<usize>),
        k: usize,
        t: f64,
    ) -> Result<KnnReport> {
        let t0 = std::time::Instant::now();
        let train_set = load_split(data, format, Split::Train, train_limit)?;
        let test_set = load_split(data, format, Split::Test, test_limit)?;
        let (source, norm, features) = self.open(&train_set, data)?;
        let device = Default::default();
        let r = knn_eval(&train_set, &test_set, &norm, k, t, &device, |x| {
            source.extract(x)
        })?;
        Ok(KnnReport {
            top1: r.top1,
            top5: r.top5,
            k,
            t,
            n: r.n,
            train: train_set.len(),
            seconds: t0.elapsed().as_secs_f64(),
            features,
        })
    }
}

/// File beside `model.safetensors` with the student, the heads and DINO's centre.
pub const TRAINING_STATE_FILE: &str = "ssl_state.safetensors";

/// The state dict of a self-supervised checkpoint folder: the teacher backbone from
/// `model.safetensors` and the rest from [`TRAINING_STATE_FILE`].
pub fn read_checkpoint_weights(dir: &Path) -> Result<StateDict> {
    let mut sd = crate::weights::read_state_dict(&dir.join("model.safetensors"))?;
    sd.extend(crate::weights::read_state_dict(
        &dir.join(TRAINING_STATE_FILE),
    )?);
    Ok(sd)
}

/// DINO / SimDINO self-distillation of a CRATE backbone.
pub struct SelfDistillTask<'a, B: CrateAutodiff> {
    pub config: SslRunConfig,
    /// Normalisation of the run (views are made from the pixels, then normalised with it).
    pub norm: Normalization,
    /// Labelled images whose features are the k-NN neighbours at evaluation.
    pub bank: &'a ImageSet,
    /// DINO's centre after the last loss, applied after the optimizer step.
    next_center: RefCell<Option<Tensor<B::InnerBackend, 2>>>,
    /// Sums and counts of the loss terms since the last `epoch_terms`.
    terms: RefCell<BTreeMap<String, (f64, usize)>>,
}

impl<'a, B: CrateAutodiff> SelfDistillTask<'a, B> {
    pub fn new(config: SslRunConfig, norm: Normalization, bank: &'a ImageSet) -> Self {
        Self {
            config,
            norm,
            bank,
            next_center: RefCell::new(None),
            terms: RefCell::new(BTreeMap::new()),
        }
    }

    fn record(&self, name: &str, v: f64) {
        let mut t = self.terms.borrow_mut();
        let e = t.entry(name.to_string()).or_insert((0.0, 0));
        e.0 += v;
        e.1 += 1;
    }

    /// Normalised `(globals [2B, C, G, G], locals [N·B, C, L, L])` of a normalised batch.
    fn views(&self, x: Tensor<B, 4>, rng: &mut StdRng) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        let [b, c, h, w] = x.dims();
        let device = x.device();
        let mut px: Vec<f32> = x.into_data().convert::<f32>().to_vec().unwrap();
        let hw = h * w;
        for (i, v) in px.iter_mut().enumerate() {
            let ch = (i / hw) % c;
            *v = *v * self.norm.std[ch] + self.norm.mean[ch];
        }
        let images: Vec<Image> = px
            .chunks(c * hw)
            .map(|p| Image { px: p, c, h, w })
            .collect();
        let crops = &self.config.settings.crops;
        let (g, l) = crops.views(&images, rng);
        let to_tensor = |mut v: Vec<f32>, n: usize, s: usize| {
            for (i, x) in v.iter_mut().enumerate() {
                let ch = (i / (s * s)) % c;
                *x = (*x - self.norm.mean[ch]) / self.norm.std[ch];
            }
            Tensor::<B, 4>::from_data(TensorData::new(v, [n, c, s, s]), &device)
        };
        let globals = to_tensor(g, 2 * b, crops.global_size);
        let locals =
            (crops.local_crops > 0).then(|| to_tensor(l, crops.local_crops * b, crops.local_size));
        (globals, locals)
    }
}

/// Head outputs of the student on all views `[(2 + N)·B, K]` (view-major).
fn student_outputs<B: CrateBackend>(
    m: &SelfDistill<B>,
    globals: Tensor<B, 4>,
    locals: Option<Tensor<B, 4>>,
    freeze_last: bool,
) -> Tensor<B, 2> {
    let mut feats = vec![m.student.features(globals)];
    if let Some(l) = locals {
        feats.push(m.student.features(l));
    }
    m.student_head
        .forward_with(Tensor::cat(feats, 0), freeze_last)
}

impl<B: CrateAutodiff> Task<B> for SelfDistillTask<'_, B> {
    type Model = SelfDistill<B>;
    type Valid = SelfDistill<B::InnerBackend>;
    type Config = SslRunConfig;
    fn config(&self) -> &SslRunConfig {
        &self.config
    }

    fn loss(
        &self,
        model: &SelfDistill<B>,
        x: Tensor<B, 4>,
        _y: Tensor<B, 1, Int>,
        rng: &mut StdRng,
        at: Progress,
    ) -> Tensor<B, 1> {
        let s = &self.config.settings;
        let (globals, locals) = self.views(x, rng);
        // the teacher sees the global views only, without a graph
        let teacher = model.teacher.valid();
        let t_out = model
            .teacher_head
            .valid()
            .forward(teacher.features(globals.clone().inner()));
        let t_out = Tensor::<B, 2>::from_inner(t_out);
        match self.config.model.loss {
            SslLoss::Simdino => {
                let s_out = student_outputs(model, globals, locals, false);
                // a failure here (NaN features) shows up as a non-finite loss in the loop
                match mcr_loss(s_out, t_out, &s.mcr) {
                    Ok(o) => {
                        self.record("comp", o.comp);
                        self.record("expa", o.expa);
                        o.loss
                    }
                    Err(_) => Tensor::<B, 1>::from_data(
                        TensorData::new(vec![f32::NAN], [1]),
                        &model.teacher.cls_token.device(),
                    ),
                }
            }
            SslLoss::Dino => {
                let freeze = at.epoch < s.freeze_last_layer;
                let s_out = student_outputs(model, globals, locals, freeze);
                let center = model
                    .center
                    .as_ref()
                    .expect("a DINO model has a centre")
                    .val()
                    .detach();
                let (loss, next) = dino_loss(s_out, t_out, center, at.epoch, &s.dino);
                self.record("teacher_temp", s.dino.teacher_temp_at(at.epoch));
                *self.next_center.borrow_mut() = Some(next.inner());
                loss
            }
        }
    }

    fn after_step(&self, model: SelfDistill<B>, at: Progress) -> SelfDistill<B> {
        let s = &self.config.settings;
        let m =
            schedule::cosine_scheduler(s.momentum_teacher, 1.0, at.total_steps, 0, 0.0, at.step);
        let SelfDistill {
            teacher,
            teacher_head,
            student,
            student_head,
            center,
        } = model;
        let teacher = ema_update(teacher, &student, m);
        let teacher_head = ema_update(teacher_head, &student_head, m);
        let center = match (center, self.next_center.borrow_mut().take()) {
            (Some(c), Some(next)) => Some(c.map(|_| Tensor::from_inner(next))),
            (c, _) => c,
        };
        self.record("momentum", m);
        SelfDistill {
            teacher,
            teacher_head,
            student,
            student_head,
            center,
        }
    }

    fn epoch_terms(&self) -> Option<BTreeMap<String, f64>> {
        let t = std::mem::take(&mut *self.terms.borrow_mut());
        Some(
            t.into_iter()
                .map(|(k, (sum, n))| (k, sum / n.max(1) as f64))
                .collect(),
        )
    }

    /// k-NN top-1/top-5 of the teacher's features on `set`, neighbours from the bank.
    fn evaluate(
        &self,
        model: &SelfDistill<B::InnerBackend>,
        set: &ImageSet,
        norm: &Normalization,
        device: &B::Device,
    ) -> Result<EvalResult> {
        let s = &self.config.settings;
        let mut bank = self.bank.clone();
        bank.truncate(s.knn_bank);
        let r = knn_eval(&bank, set, norm, s.knn_k, s.knn_t, device, |x| {
            model.teacher.features(x)
        })?;
        Ok(EvalResult {
            loss: f64::NAN,
            top1: r.top1,
            top5: r.top5,
            n: r.n,
        })
    }

    fn has_eval_loss(&self) -> bool {
        false
    }

    fn describe(&self, r: &EvalResult) -> String {
        let s = &self.config.settings;
        format!(
            "teacher k-NN (k={}, bank {}) top-1 {:.2}%  top-5 {:.2}%",
            s.knn_k,
            s.knn_bank.min(self.bank.len()),
            100.0 * r.top1,
            100.0 * r.top5
        )
    }

    /// `model.safetensors`: the teacher backbone under the official CRATE keys with the backbone's
    /// config (so `eval`, `measure`, `probe`, … read it as a CRATE); the student, heads and centre
    /// go to [`TRAINING_STATE_FILE`].
    fn save_checkpoint(
        &self,
        run_dir: &Path,
        model: &SelfDistill<B>,
        optim: &TrainOptimizer<SelfDistill<B>, B>,
        state: &TrainState,
        metrics: Option<&super::EpochMetrics>,
    ) -> Result<()> {
        let sd = collect_state_dict(&model.valid());
        let (train, teacher): (StateDict, StateDict) =
            sd.into_iter().partition(|(k, _)| is_training_key(k));
        let backbone = &self.config.model.backbone;
        write_checkpoint(run_dir, &self.config, optim, state, metrics, |path| {
            let mut meta = model_metadata(backbone, &state.normalization, &state.class_names);
            // the backbone's classifier head is its random initialisation: `eval` and `predict`
            // refuse it (`knn`, `probe`, `train --init-from` use the backbone)
            meta.insert("head".into(), "untrained".into());
            write_safetensors(path, &teacher, Some(meta))?;
            write_safetensors(&path.with_file_name(TRAINING_STATE_FILE), &train, None)
        })
    }
}
