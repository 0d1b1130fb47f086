//! The fused operators (LayerNorm, self-attention, head split/merge) against burn's op-by-op
//! versions: same forward values and same gradients.

use burn::module::Param;
use burn::nn::LayerNormConfig;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Tensor};
use whitebox::model::fused;
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
    // short sequences take flex's in-cache kernel, long ones the batched-GEMM path
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

    let out = fused::merge_heads(fused::ssa(fused::split_heads(x.clone(), b, n, h), scale));
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
    let plain = fused::merge_heads(fused::ssa(w, scale));
    assert!(max_diff(plain, out_ref.inner()) < 1e-5, "n = {n}");
}
