//! Data parallelism within a step (`train::parallel`): a batch cut into slices that run on their
//! own threads gives the loss and gradients of the single pass (rounded differently), the same
//! bits on every run, and the single pass itself when there is one slice.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use std::ops::Range;
use whitebox::model::{Crate, CrateConfig};
use whitebox::train::parallel::{loss_and_grads, slices, MIN_SLICE};
use whitebox::CpuAutodiff as B;

/// Every parameter's gradient, flattened, in the module's order.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<Vec<f32>>,
}

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
        let g = self.grads.get::<Bk::InnerBackend, D>(p.id);
        self.out
            .push(g.map_or(vec![], |g| g.into_data().to_vec().unwrap()));
    }
}

fn step(model: &Crate<B>, parts: Vec<Range<usize>>) -> (f64, Vec<Vec<f32>>) {
    let device = Default::default();
    let n = parts.iter().map(|r| r.len()).sum::<usize>();
    let x = Tensor::<B, 4>::random([n, 1, 8, 8], Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 7) % 3).collect();
    let y = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [n]), &device);
    let ce = CrossEntropyLossConfig::new()
        .with_smoothing(Some(0.1))
        .init::<B>(&device);
    let (loss, grads) = loss_and_grads(model, parts, |m: &Crate<B>, r: Range<usize>| {
        let (x, y) = (x.clone(), y.clone());
        ce.forward(
            m.forward(x.narrow(0, r.start, r.len())),
            y.narrow(0, r.start, r.len()),
        )
    });
    let mut c = Collect {
        grads: &grads,
        out: vec![],
    };
    model.visit(&mut c);
    (loss, c.out)
}

fn tiny() -> Crate<B> {
    let cfg = CrateConfig {
        image_size: 8,
        patch_size: 4,
        num_classes: 3,
        dim: 16,
        depth: 2,
        heads: 2,
        channels: 1,
        dim_head: 8,
        ..CrateConfig::fmnist()
    };
    cfg.init::<B>(&Default::default())
}

#[test]
fn slices_give_the_single_pass_gradients_and_repeat_bit_exactly() {
    use burn::tensor::backend::Backend;
    let model = tiny();
    let seed = |s| B::seed(&Default::default(), s);
    seed(3);
    let (l1, g1) = step(&model, std::iter::once(0..40).collect());
    seed(3);
    let (l3, g3) = step(&model, vec![0..13, 13..27, 27..40]);
    seed(3);
    let (l3b, g3b) = step(&model, vec![0..13, 13..27, 27..40]);
    assert_eq!(
        (l3.to_bits(), &g3),
        (l3b.to_bits(), &g3b),
        "not deterministic"
    );
    assert!((l1 - l3).abs() < 1e-6 * l1.abs(), "loss {l1} vs {l3}");
    assert_eq!(g1.len(), g3.len());
    let mut n_params = 0;
    for (k, (a, b)) in g1.iter().zip(&g3).enumerate() {
        assert_eq!(a.len(), b.len(), "parameter {k}");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= 1e-4 * scale,
            "parameter {k}: max diff {diff} of {scale}"
        );
        n_params += a.len();
    }
    // the gradients are there (a step with none would pass the comparisons above)
    assert!(n_params > 1000, "{n_params} gradient values");
    assert!(g1.iter().flatten().any(|v| v.abs() > 1e-4));
}

#[test]
fn small_batches_stay_one_slice_and_slices_cover_the_batch() {
    assert_eq!(
        slices(MIN_SLICE),
        std::iter::once(0..MIN_SLICE).collect::<Vec<_>>()
    );
    for n in [1, 31, 32, 129, 1000] {
        let s = slices(n);
        assert_eq!(s.first().unwrap().start, 0);
        assert_eq!(s.last().unwrap().end, n);
        assert!(s.windows(2).all(|w| w[0].end == w[1].start));
        assert!(
            s.len() == 1 || s.iter().all(|r| r.len() >= MIN_SLICE),
            "{n}: {s:?}"
        );
    }
}
