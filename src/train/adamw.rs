//! AdamW as burn 0.21's `AdamW` computes it (torch semantics, no AMSGrad), in one pass per
//! parameter over its elements, split over the cores for large parameters. Burn's version runs ~12
//! tensor operations per parameter, each a separate pass on one core; this one does the same f32
//! operations in the same order on each element, so the results are bit-identical, and it keeps
//! burn's state record (`AdamWState`), so optimizer files load either way.
//!
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p(1 − η·wd) − η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`

use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, SimpleOptimizer,
};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use std::any::TypeId;

#[derive(Clone)]
pub struct FusedAdamW {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    /// Burn's AdamW with the same settings: the update on other backends (a GPU's tensors would
    /// travel to the host and back) and for tensors that are not f32.
    pub tensor_ops: AdamW,
}

impl FusedAdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let tensor_ops = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            tensor_ops,
        }
    }
}

/// Elements per parallel chunk; a parameter smaller than two chunks is updated on one core.
const CHUNK: usize = 1 << 14;

/// The constants of one update, as burn rounds them to f32.
#[derive(Clone, Copy)]
struct Step {
    b1: f32,
    b2: f32,
    f1: f32,
    f2: f32,
    c1: f32,
    c2: f32,
    eps: f32,
    /// `1 − η·wd` (None: no decay, the parameter is not multiplied).
    keep: Option<f32>,
    lr: f32,
}

impl Step {
    /// One element: `first` is the first step (no moments yet: burn starts them at `(1−β)·g`).
    #[inline(always)]
    fn apply(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32, first: bool) {
        let gg = g * g;
        if first {
            *m = g * self.f1;
            *v = gg * self.f2;
        } else {
            *m = *m * self.b1 + g * self.f1;
            *v = *v * self.b2 + gg * self.f2;
        }
        let delta = (*m / self.c1) / ((*v / self.c2).sqrt() + self.eps);
        let decayed = self.keep.map_or(*p, |k| *p * k);
        *p = decayed - delta * self.lr;
    }

    fn run(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], first: bool) {
        let serial = |p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                self.apply(p, m, v, g, first);
            }
        };
        if p.len() < 2 * CHUNK {
            return serial(p, m, v, g);
        }
        use rayon::prelude::*;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| serial(p, m, v, g));
    }
}

/// The f32 values of `t` (empty if they are not f32: the caller checked).
fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap_or_default()
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let f32s = [Some(&tensor), Some(&grad)]
            .into_iter()
            .chain(
                state
                    .iter()
                    .flat_map(|s| [Some(&s.momentum.moment_1), Some(&s.momentum.moment_2)]),
            )
            .flatten()
            .all(|t| t.dtype() == DType::F32);
        let amsgrad = state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some());
        if TypeId::of::<B>() != TypeId::of::<burn::backend::Flex>() || !f32s || amsgrad {
            return self.tensor_ops.step(lr, tensor, grad, state);
        }
        let (device, shape) = (tensor.device(), tensor.shape());
        let n = shape.num_elements();
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let (mut m, mut v, first) = match state {
            Some(s) => (s.momentum.moment_1, s.momentum.moment_2, false),
            None => (grad.zeros_like(), grad.zeros_like(), true),
        };
        let decay_rate = lr * self.weight_decay as f64;
        let s = Step {
            b1: self.beta_1,
            b2: self.beta_2,
            f1: 1.0 - self.beta_1,
            f2: 1.0 - self.beta_2,
            c1: 1f32 - self.beta_1.powi(time as i32),
            c2: 1f32 - self.beta_2.powi(time as i32),
            eps: self.epsilon,
            keep: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
            lr: lr as f32,
        };
        let (mut p, mut mv, mut vv, g) = (values(tensor), values(m), values(v), values(grad));
        debug_assert!([p.len(), mv.len(), vv.len(), g.len()] == [n; 4]);
        s.run(&mut p, &mut mv, &mut vv, &g, first);
        let back =
            |x: Vec<f32>| Tensor::<B, D>::from_data(TensorData::new(x, shape.clone()), &device);
        (m, v) = (back(mv), back(vv));
        let state = AdamWState {
            momentum: AdaptiveMomentumState {
                time,
                moment_1: m,
                moment_2: v,
                max_moment_2: None,
            },
        };
        (back(p), Some(state))
    }

    fn to_device<const D: usize>(mut state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.momentum.moment_1 = state.momentum.moment_1.to_device(device);
        state.momentum.moment_2 = state.momentum.moment_2.to_device(device);
        state
    }
}
