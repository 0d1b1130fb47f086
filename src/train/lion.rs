//! Lion (Chen et al. 2023), as `lion_pytorch` computes it — burn 0.21 ships none.
//! `p ← p(1 − η·wd) − η·sign(β₁m + (1−β₁)g)`, then `m ← β₂m + (1−β₂)g`.

use burn::optim::LearningRate;
use burn::optim::SimpleOptimizer;
use burn::record::Record;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct Lion {
    pub beta_1: f32,
    pub beta_2: f32,
    pub weight_decay: f32,
}

#[derive(Record, Clone, Debug)]
pub struct LionState<B: Backend, const D: usize> {
    pub momentum: Tensor<B, D>,
}

impl<B: Backend> SimpleOptimizer<B> for Lion {
    type State<const D: usize> = LionState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let m = state
            .map(|s| s.momentum)
            .unwrap_or_else(|| grad.zeros_like());
        let update =
            (m.clone().mul_scalar(self.beta_1) + grad.clone().mul_scalar(1.0 - self.beta_1)).sign();
        let decayed = tensor.mul_scalar(1.0 - lr * self.weight_decay as f64);
        let new = decayed - update.mul_scalar(lr);
        let momentum = m.mul_scalar(self.beta_2) + grad.mul_scalar(1.0 - self.beta_2);
        (new, Some(LionState { momentum }))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        LionState {
            momentum: state.momentum.to_device(device),
        }
    }
}
