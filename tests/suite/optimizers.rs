//! Lion and global-norm clipping against their reference formulas on a one-parameter model.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use whitebox::train::{OptimSettings, OptimizerKind, TrainOptimizer};
use whitebox::CpuAutodiff as B;

#[derive(Module, Debug)]
struct Toy<B: burn::tensor::backend::Backend> {
    w: Param<Tensor<B, 1>>,
}

fn settings(kind: OptimizerKind, wd: f64, clip: Option<f64>) -> OptimSettings {
    OptimSettings {
        kind,
        weight_decay: wd,
        beta1: 0.9,
        beta2: 0.99,
        no_decay_norm_bias: false,
        clip_grad_norm: clip,
    }
}

fn grads_for(model: &Toy<B>, g: &[f32]) -> GradientsParams {
    let mut gp = GradientsParams::new();
    gp.register::<burn::backend::Flex, 1>(
        model.w.id,
        Tensor::from_data(TensorData::new(g.to_vec(), [g.len()]), &Default::default()),
    );
    gp
}

fn values(model: &Toy<B>) -> Vec<f32> {
    model.w.val().into_data().to_vec().unwrap()
}

#[test]
fn lion_follows_lion_pytorch() {
    let device = Default::default();
    let p0 = [0.5f32, -1.0, 2.0];
    let mut model = Toy {
        w: Param::from_tensor(Tensor::<B, 1>::from_data(
            TensorData::new(p0.to_vec(), [3]),
            &device,
        )),
    };
    let mut opt = TrainOptimizer::new(settings(OptimizerKind::Lion, 0.1, None), &model);
    let (lr, g1, g2) = (0.01f32, [0.3f32, -0.2, 0.0], [-0.5f32, -0.1, 0.4]);
    let g = grads_for(&model, &g1);
    model = opt.step(lr as f64, model, g);
    let g = grads_for(&model, &g2);
    model = opt.step(lr as f64, model, g);
    // reference: p ← p(1−lr·wd) − lr·sign(β1 m + (1−β1) g);  m ← β2 m + (1−β2) g
    let (mut p, mut m) = (p0, [0f32; 3]);
    for g in [g1, g2] {
        for i in 0..3 {
            let u = 0.9 * m[i] + 0.1 * g[i];
            let s = if u > 0.0 {
                1.0
            } else if u < 0.0 {
                -1.0
            } else {
                0.0
            };
            p[i] = p[i] * (1.0 - lr * 0.1) - lr * s;
            m[i] = 0.99 * m[i] + 0.01 * g[i];
        }
    }
    let got = values(&model);
    for i in 0..3 {
        assert!((got[i] - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
    }
}

#[test]
fn global_norm_clipping_scales_like_torch() {
    let device = Default::default();
    let model = Toy {
        w: Param::from_tensor(Tensor::<B, 1>::from_data(
            TensorData::new(vec![0f32; 2], [2]),
            &device,
        )),
    };
    let opt = TrainOptimizer::new(settings(OptimizerKind::Adamw, 0.0, Some(1.0)), &model);
    let g = grads_for(&model, &[3.0, 4.0]);
    assert!((opt.grad_norm(&g) - 5.0).abs() < 1e-6);
    let clipped = opt.clip(g);
    let v: Vec<f32> = clipped
        .get::<burn::backend::Flex, 1>(model.w.id)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    // torch: g · max/(‖g‖ + 1e-6)
    let c = 1.0 / (5.0 + 1e-6);
    assert!(
        (v[0] - 3.0 * c).abs() < 1e-6 && (v[1] - 4.0 * c).abs() < 1e-6,
        "{v:?}"
    );
    // under the threshold nothing changes
    let small = opt.clip(grads_for(&model, &[0.3, 0.4]));
    let v: Vec<f32> = small
        .get::<burn::backend::Flex, 1>(model.w.id)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(v, vec![0.3, 0.4]);
}

#[test]
fn no_decay_group_skips_weight_decay_on_vectors() {
    // a rank-1 parameter is in the no-decay group: with lr·wd large, it must not shrink
    let device = Default::default();
    let model = Toy {
        w: Param::from_tensor(Tensor::<B, 1>::from_data(
            TensorData::new(vec![1f32, -2.0], [2]),
            &device,
        )),
    };
    let mut s = settings(OptimizerKind::Adamw, 0.5, None);
    s.no_decay_norm_bias = true;
    let mut opt = TrainOptimizer::new(s, &model);
    let g = grads_for(&model, &[1e-3, -1e-3]);
    let model = opt.step(0.1, model, g);
    let v = values(&model);
    // Adam's first step moves each entry by lr·sign(g) only
    assert!(
        (v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5,
        "{v:?}"
    );
}

#[test]
fn fused_adamw_is_bit_identical_to_burns_adamw() {
    use burn::optim::{AdamWConfig, Optimizer};
    use burn::tensor::Distribution;
    use whitebox::train::adamw::FusedAdamW;
    let device = Default::default();
    // 70,000 entries: the update is split over the cores (chunks of 16,384); 3: one core
    for n in [70_000usize, 3] {
        let start = Tensor::<B, 1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let toy = || Toy {
            w: Param::from_tensor(start.clone()),
        };
        let (mut a, mut b) = (toy(), toy());
        let (beta1, beta2, eps, wd) = (0.9f32, 0.98f32, 1e-8f32, 0.05f32);
        let mut burn_adamw = AdamWConfig::new()
            .with_beta_1(beta1)
            .with_beta_2(beta2)
            .with_epsilon(eps)
            .with_weight_decay(wd)
            .init::<B, Toy<B>>();
        let mut fused = burn::optim::adaptor::OptimizerAdaptor::<_, Toy<B>, B>::from(
            FusedAdamW::new(beta1, beta2, eps, wd),
        );
        for (k, lr) in [2e-3, 1.7e-3, 3e-4, 1e-5].into_iter().enumerate() {
            let g: Vec<f32> = Tensor::<B, 1>::random([n], Distribution::Normal(0.0, 1.0), &device)
                .mul_scalar(10f32.powi(-(k as i32)))
                .into_data()
                .to_vec()
                .unwrap();
            let (ga, gb) = (grads_for_id(a.w.id, &g), grads_for_id(b.w.id, &g));
            a = burn_adamw.step(lr, a, ga);
            b = fused.step(lr, b, gb);
            let (va, vb) = (values(&a), values(&b));
            let same = va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "n {n}, step {k}: burn {:?} vs fused {:?}",
                &va[..3],
                &vb[..3]
            );
            assert!(va
                .iter()
                .zip(start.to_data().to_vec::<f32>().unwrap())
                .any(|(x, y)| *x != y));
        }
    }
}

fn grads_for_id(id: burn::module::ParamId, g: &[f32]) -> GradientsParams {
    let mut gp = GradientsParams::new();
    gp.register::<burn::backend::Flex, 1>(
        id,
        Tensor::from_data(TensorData::new(g.to_vec(), [g.len()]), &Default::default()),
    );
    gp
}
