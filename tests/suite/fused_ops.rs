//! The fused operators (matmul, LayerNorm, self-attention, head split/merge) against burn's
//! op-by-op versions: same forward values and same gradients.

use burn::module::Param;
use burn::nn::LayerNormConfig;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Tensor};
use whitebox::model::fused::{self, AttnMask};
use whitebox::CpuAutodiff as B;

fn max_diff<const D: usize>(
    a: Tensor<burn::backend::Flex, D>,
    b: Tensor<burn::backend::Flex, D>,
) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn fused_layer_norm_matches_burn_layer_norm_and_its_gradients() {
    let device = Default::default();
    let x =
        Tensor::<B, 2>::random([37, 24], Distribution::Normal(0.5, 2.0), &device).require_grad();
    let mut ln = LayerNormConfig::new(24).init::<B>(&device);
    ln.gamma = Param::from_tensor(Tensor::random(
        [24],
        Distribution::Normal(1.0, 0.3),
        &device,
    ));
    ln.beta = Some(Param::from_tensor(Tensor::random(
        [24],
        Distribution::Normal(0.0, 0.3),
        &device,
    )));
    let weight = Tensor::<B, 2>::random([37, 24], Distribution::Normal(0.0, 1.0), &device);

    let y_ref = ln.forward(x.clone());
    let g_ref = (y_ref.clone() * weight.clone()).sum().backward();
    let y = fused::layer_norm(&ln, x.clone(), 1e-5);
    let g = (y.clone() * weight).sum().backward();

    assert!(max_diff(y.inner(), y_ref.inner()) < 1e-5);
    assert!(max_diff(x.grad(&g).unwrap(), x.grad(&g_ref).unwrap()) < 1e-4);
    assert!(
        max_diff(
            ln.gamma.val().grad(&g).unwrap(),
            ln.gamma.val().grad(&g_ref).unwrap()
        ) < 1e-4
    );
    let beta = ln.beta.as_ref().unwrap().val();
    assert!(max_diff(beta.grad(&g).unwrap(), beta.grad(&g_ref).unwrap()) < 1e-4);
}

#[test]
fn fused_attention_and_head_moves_match_op_by_op() {
    // per-head GEMM kernels on flex, forward and backward, at several head shapes
    for (b, n, h, dh) in [(3, 7, 2, 5), (2, 17, 4, 24), (2, 60, 3, 8)] {
        check_attention(b, n, h, dh);
    }
}

fn check_attention(b: usize, n: usize, h: usize, dh: usize) {
    let device = Default::default();
    let x = Tensor::<B, 2>::random([b * n, h * dh], Distribution::Normal(0.0, 1.0), &device)
        .require_grad();
    let weight = Tensor::<B, 2>::random([b * n, h * dh], Distribution::Normal(0.0, 1.0), &device);
    let scale = (dh as f64).powf(-0.5);

    let w_ref = x.clone().reshape([b, n, h, dh]).swap_dims(1, 2);
    let attn = softmax(
        w_ref
            .clone()
            .matmul(w_ref.clone().swap_dims(2, 3))
            .mul_scalar(scale),
        3,
    );
    let out_ref = attn.matmul(w_ref).swap_dims(1, 2).reshape([b * n, h * dh]);
    let g_ref = (out_ref.clone() * weight.clone()).sum().backward();

    let out = fused::merge_heads(fused::ssa(
        fused::split_heads(x.clone(), b, n, h),
        scale,
        &AttnMask::None,
    ));
    let g = (out.clone() * weight).sum().backward();

    assert!(
        max_diff(out.inner(), out_ref.clone().inner()) < 1e-5,
        "n = {n}"
    );
    assert!(
        max_diff(x.grad(&g).unwrap(), x.grad(&g_ref).unwrap()) < 1e-4,
        "n = {n}"
    );
    // the plain backend's forward
    let w = fused::split_heads(x.inner(), b, n, h);
    let plain = fused::merge_heads(fused::ssa(w, scale, &AttnMask::None));
    assert!(max_diff(plain, out_ref.inner()) < 1e-5, "n = {n}");
}

#[test]
fn masked_attention_matches_op_by_op_with_gradients() {
    // causal and padding masks on the per-head kernels against burn's softmax with the mask
    // written out: mask_fill(−∞) above the diagonal, or −1e9 added on padding keys
    for (b, n, h, dh) in [(2, 9, 2, 5), (3, 64, 4, 32)] {
        check_masked(b, n, h, dh, &AttnMask::Causal);
        // sequence 0 ends in padding, sequence 1 has none, the rest pads a middle key
        let pad: Vec<bool> = (0..b * n)
            .map(|i| match i / n {
                0 => i % n >= n - 3,
                1 => false,
                _ => i % n == n / 2,
            })
            .collect();
        check_masked(b, n, h, dh, &AttnMask::padding(pad));
    }
    assert_eq!(AttnMask::padding(vec![false; 6]), AttnMask::None);
}

fn check_masked(b: usize, n: usize, h: usize, dh: usize, mask: &AttnMask) {
    let device = Default::default();
    let x = Tensor::<B, 2>::random([b * n, h * dh], Distribution::Normal(0.0, 1.0), &device)
        .require_grad();
    let weight = Tensor::<B, 2>::random([b * n, h * dh], Distribution::Normal(0.0, 1.0), &device);
    let scale = (dh as f64).powf(-0.5);

    let w_ref = x.clone().reshape([b, n, h, dh]).swap_dims(1, 2);
    let scores = w_ref
        .clone()
        .matmul(w_ref.clone().swap_dims(2, 3))
        .mul_scalar(scale);
    let scores = match mask {
        AttnMask::Causal => {
            let future = Tensor::<B, 2, burn::tensor::Bool>::tril_mask([n, n], 0, &device)
                .reshape([1, 1, n, n])
                .expand([b, h, n, n]);
            scores.mask_fill(future, f32::NEG_INFINITY)
        }
        AttnMask::Padding(pad) => {
            let add: Vec<f32> = pad.iter().map(|&p| if p { -1e9 } else { 0.0 }).collect();
            scores
                + Tensor::<B, 4>::from_data(
                    burn::tensor::TensorData::new(add, [b, 1, 1, n]),
                    &device,
                )
        }
        AttnMask::None => unreachable!(),
    };
    let out_ref = softmax(scores, 3)
        .matmul(w_ref)
        .swap_dims(1, 2)
        .reshape([b * n, h * dh]);
    let g_ref = (out_ref.clone() * weight.clone()).sum().backward();

    let out = fused::merge_heads(fused::ssa(
        fused::split_heads(x.clone(), b, n, h),
        scale,
        mask,
    ));
    let g = (out.clone() * weight).sum().backward();
    let what = format!("{mask:?}").chars().take(7).collect::<String>();
    let d = max_diff(out.clone().inner(), out_ref.clone().inner());
    assert!(d < 1e-5, "{what} n = {n}: forward {d}");
    let d = max_diff(x.grad(&g).unwrap(), x.grad(&g_ref).unwrap());
    assert!(d < 1e-4, "{what} n = {n}: gradient {d}");
    // the first query of a causal head sees only itself: its output is its own projection
    if *mask == AttnMask::Causal {
        let first = out.inner().reshape([b, n, h * dh]).narrow(1, 0, 1);
        let own = x.clone().inner().reshape([b, n, h * dh]).narrow(1, 0, 1);
        assert!(max_diff(first, own) < 1e-6);
    }
    // the plain backend's forward
    let w = fused::split_heads(x.inner(), b, n, h);
    let plain = fused::merge_heads(fused::ssa(w, scale, mask));
    assert!(max_diff(plain, out_ref.inner()) < 1e-5, "{what} n = {n}");
}

#[test]
fn fused_matmul_matches_burn_matmul_and_its_gradients_on_transposed_views() {
    let device = Default::default();
    // (m, k, n): one product small enough for one thread, one split over the threads
    for (m, k, n) in [(7, 5, 3), (300, 64, 80)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a_shape = if ta { [k, m] } else { [m, k] };
            let b_shape = if tb { [n, k] } else { [k, n] };
            let a = Tensor::<B, 2>::random(a_shape, Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let b = Tensor::<B, 2>::random(b_shape, Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let weight = Tensor::<B, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);
            let view = |t: Tensor<B, 2>, tr: bool| if tr { t.transpose() } else { t };

            let c_ref = view(a.clone(), ta).matmul(view(b.clone(), tb));
            let g_ref = (c_ref.clone() * weight.clone()).sum().backward();
            let c = fused::matmul(view(a.clone(), ta), view(b.clone(), tb));
            let g = (c.clone() * weight).sum().backward();

            let case = format!("{m}x{k}x{n} ta={ta} tb={tb}");
            assert_eq!(c.dims(), [m, n], "{case}");
            assert!(max_diff(c.inner(), c_ref.inner()) < 1e-4, "{case}");
            let (ga, ga_ref) = (a.grad(&g).unwrap(), a.grad(&g_ref).unwrap());
            assert!(max_diff(ga, ga_ref) < 1e-4, "{case}: dA");
            let (gb, gb_ref) = (b.grad(&g).unwrap(), b.grad(&g_ref).unwrap());
            assert!(max_diff(gb, gb_ref) < 1e-4, "{case}: dB");
        }
    }
}

#[test]
fn fused_gemm_epilogues_match_op_by_op_with_gradients() {
    // linear `x·W + b` and the ISTA form `relu(x·M − ηλ)`, at a size split over the threads
    let device = Default::default();
    let (m, k, n) = (260, 48, 96);
    let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let w = Tensor::<B, 2>::random([k, n], Distribution::Normal(0.0, 0.3), &device).require_grad();
    let bias = Tensor::<B, 1>::random([n], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let weight = Tensor::<B, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &device);

    let mut lin = burn::nn::LinearConfig::new(k, n).init::<B>(&device);
    lin.weight = Param::from_tensor(w.clone());
    lin.bias = Some(Param::from_tensor(bias.clone()));
    let y_ref = x.clone().matmul(lin.weight.val()) + lin.bias.as_ref().unwrap().val().unsqueeze();
    let g_ref = (y_ref.clone() * weight.clone()).sum().backward();
    let y = fused::linear(&lin, x.clone());
    let g = (y.clone() * weight.clone()).sum().backward();
    assert!(max_diff(y.inner(), y_ref.inner()) < 1e-4);
    assert!(max_diff(x.grad(&g).unwrap(), x.grad(&g_ref).unwrap()) < 1e-4);
    let (wv, bv) = (lin.weight.val(), lin.bias.as_ref().unwrap().val());
    assert!(max_diff(wv.grad(&g).unwrap(), wv.grad(&g_ref).unwrap()) < 1e-3);
    assert!(max_diff(bv.grad(&g).unwrap(), bv.grad(&g_ref).unwrap()) < 1e-3);

    let ep = fused::Epilogue {
        shift: -0.05,
        relu: true,
    };
    let z_ref = burn::tensor::activation::relu(x.clone().matmul(w.clone()).add_scalar(-0.05));
    let g_ref = (z_ref.clone() * weight.clone()).sum().backward();
    let z = fused::matmul_epilogue(x.clone(), w.clone(), ep);
    let g = (z.clone() * weight).sum().backward();
    let zeros = z.clone().inner().equal_elem(0.0).int().sum().into_scalar();
    assert!(zeros > 1000, "the ReLU must cut some entries ({zeros})");
    assert!(max_diff(z.inner(), z_ref.inner()) < 1e-4);
    assert!(max_diff(x.grad(&g).unwrap(), x.grad(&g_ref).unwrap()) < 1e-4);
    assert!(max_diff(w.grad(&g).unwrap(), w.grad(&g_ref).unwrap()) < 1e-3);
}
