//! Data parallelism within a step (`train::parallel`): a batch cut into slices that run on their
//! own threads gives the loss and gradients of the single pass (rounded differently), the same
//! bits on every run, and the single pass itself when there is one slice; the same for a causal
//! language model's batch of sequences (`lm train`).

use crate::common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use std::ops::Range;
use whitebox::model::lm::{cross_entropy, CausalLm, LmConfig};
use whitebox::model::{Crate, CrateConfig};
use whitebox::train::parallel::{
    loss_and_grads, sequence_slices, slices, MIN_SLICE, MIN_SLICE_TOKENS,
};
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

/// Every gradient of `model` in `grads`, flattened.
fn collect<M: Module<B>>(model: &M, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let mut c = Collect { grads, out: vec![] };
    model.visit(&mut c);
    c.out
}

/// The gradients agree to 1e-4 of each parameter's largest, and there are many of them.
fn assert_close_grads(g1: &[Vec<f32>], g3: &[Vec<f32>]) {
    assert_eq!(g1.len(), g3.len());
    let mut n_params = 0;
    for (k, (a, b)) in g1.iter().zip(g3).enumerate() {
        assert_eq!(a.len(), b.len(), "parameter {k}");
        let scale = crate::common::max_abs(a).max(1e-6);
        let diff = crate::common::max_abs_diff(a, b);
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

/// Loss and gradients of a causal CRATE on 6 sequences of 16 tokens, cut into `parts`.
fn lm_step(model: &CausalLm<B>, parts: Vec<Range<usize>>) -> (f64, Vec<Vec<f32>>) {
    let device = Default::default();
    let ids = |k: i64| {
        let v: Vec<i64> = (0..96).map(|i| (i * 7 + k) % 11).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [6, 16]), &device)
    };
    let (x, y) = (ids(0), ids(1));
    let (loss, grads) = loss_and_grads(model, parts, |m: &CausalLm<B>, r: Range<usize>| {
        let rows = |t: Tensor<B, 2, Int>| t.narrow(0, r.start, r.len());
        cross_entropy(m.forward(rows(x.clone())), rows(y.clone()))
    });
    (loss, collect(model, &grads))
}

#[test]
fn a_language_models_sequences_split_like_a_classifiers_batch() {
    let cfg = LmConfig {
        vocab_size: 11,
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        ..LmConfig::char_default()
    };
    let model = cfg.init::<B>(&Default::default());
    let (l1, g1) = lm_step(&model, std::iter::once(0..6).collect());
    let (l3, g3) = lm_step(&model, vec![0..2, 2..4, 4..6]);
    let (l3b, g3b) = lm_step(&model, vec![0..2, 2..4, 4..6]);
    assert_eq!(
        (l3.to_bits(), &g3),
        (l3b.to_bits(), &g3b),
        "not deterministic"
    );
    // an untrained model over 11 tokens: the loss is near ln 11
    assert!((l1 - 11f64.ln()).abs() < 0.5, "loss {l1}");
    assert!((l1 - l3).abs() < 1e-6 * l1.abs(), "loss {l1} vs {l3}");
    assert_close_grads(&g1, &g3);
    // `lm train`'s cut: whole sequences of at least MIN_SLICE_TOKENS tokens, covering the batch
    for (n, t) in [(1, 64), (3, 64), (16, 64), (16, 8), (7, 1000)] {
        let s = sequence_slices(n, t);
        assert_eq!((s[0].start, s.last().unwrap().end), (0, n));
        assert!(s.windows(2).all(|w| w[0].end == w[1].start));
        assert!(
            s.len() == 1 || s.iter().all(|r| r.len() * t >= MIN_SLICE_TOKENS),
            "{n}×{t}: {s:?}"
        );
    }
    assert_eq!(sequence_slices(16, 8).len(), 1, "128 tokens stay one slice");
}

#[test]
fn bert_slices_weighted_by_masked_tokens_give_the_single_pass() {
    use whitebox::model::bert::{mask_tokens, CrateBert};
    use whitebox::train::bert::masked_slices;
    use whitebox::train::parallel::weighted_loss_and_grads;
    let cfg = common::tiny_bert();
    let device = Default::default();
    let model = cfg.init::<B>(&device);
    let (b, t) = (6, 32);
    let text: Vec<i64> = (0..b * t).map(|i| 3 + (i as i64 * 5) % 17).collect();
    let (x, labels) = mask_tokens(&text, &[0, 1, 2], 2, 20, 0.15, 4);
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(x, [b, t]), &device);
    let step = |parts: Vec<(Range<usize>, f64)>| {
        let (loss, grads) = weighted_loss_and_grads(&model, parts, |m: &CrateBert<B>, r| {
            let rows = ids.clone().narrow(0, r.start, r.len());
            m.mlm_loss(rows, &labels[r.start * t..r.end * t])
        });
        (loss, collect(&model, &grads))
    };
    let weighted = masked_slices(&labels, vec![0..1, 1..4, 4..6], t).unwrap();
    // uneven slices: the weights are shares of the masked tokens, not of the rows
    let w: Vec<f64> = weighted.iter().map(|(_, w)| *w).collect();
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
    assert!((w[1] - 0.5).abs() > 1e-3, "{w:?}");
    let (l1, g1) = step(vec![(0..b, 1.0)]);
    let (l3, g3) = step(weighted);
    assert!((l1 - l3).abs() < 1e-6 * l1.abs(), "loss {l1} vs {l3}");
    assert_close_grads(&g1, &g3);
    // a slice without masked tokens: no weights (the step runs as one pass)
    let none = vec![-100; b * t];
    assert!(masked_slices(&none, vec![0..3, 3..6], t).is_none());
}

fn step(model: &Crate<B>, parts: Vec<Range<usize>>) -> (f64, Vec<Vec<f32>>) {
    let device = Default::default();
    let n = parts.iter().map(|r| r.len()).sum::<usize>();
    // a fixed batch, not a seeded random one: the backend's generator is shared with the other
    // tests of this binary, which draw from it concurrently
    let pixels: Vec<f32> = (0..n * 64)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let x = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 1, 8, 8]), &device);
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
    (loss, collect(model, &grads))
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
    let model = tiny();
    let (l1, g1) = step(&model, std::iter::once(0..40).collect());
    let (l3, g3) = step(&model, vec![0..13, 13..27, 27..40]);
    let (l3b, g3b) = step(&model, vec![0..13, 13..27, 27..40]);
    assert_eq!(
        (l3.to_bits(), &g3),
        (l3b.to_bits(), &g3b),
        "not deterministic"
    );
    assert!((l1 - l3).abs() < 1e-6 * l1.abs(), "loss {l1} vs {l3}");
    assert_close_grads(&g1, &g3);
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
