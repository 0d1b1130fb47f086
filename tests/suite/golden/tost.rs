//! ToST against the official code (`RobinWu218/ToST`, tests/golden/tost.safetensors): TSSA alone,
//! the vision model and the causal TSSA language model — outputs, loss and every gradient.

use crate::common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Int, Tensor, TensorData};
use common::{assert_close, max_abs, Golden};
use whitebox::model::blocks::Tssa;
use whitebox::model::lm::{self, LmConfig, LM_HEAD_KEY};
use whitebox::model::tost::{self, Tost, TostConfig};
use whitebox::weights::collect_gradients;
use whitebox::CpuAutodiff as B;

fn case(g: &Golden, name: &str) -> serde_json::Value {
    let cases: serde_json::Value = serde_json::from_str(&g.meta["cases"]).unwrap();
    cases[name].clone()
}

#[test]
fn tssa_matches_official() {
    let g = Golden::load("tost.safetensors");
    let c = case(&g, "tssa");
    let device = Default::default();
    let dim = c["dim"].as_u64().unwrap() as usize;
    let heads = c["num_heads"].as_u64().unwrap() as usize;
    let qkv_bias = c["qkv_bias"].as_bool().unwrap();
    let tssa = common::load_clean(
        Tssa::<B>::new(dim, heads, qkv_bias, &device),
        &g.with_prefix("tssa.param."),
    );
    let input = g.get("tssa.input");
    let [b, n, d] = [input.shape[0], input.shape[1], input.shape[2]];
    let x = Tensor::<B, 3>::from_data(input.clone(), &device).require_grad();
    let out = tssa
        .forward(x.clone().reshape([b * n, d]), b, n)
        .reshape([b, n, d]);
    assert_close(
        "tssa.output",
        &out.clone().into_data(),
        g.get("tssa.output"),
        1e-4,
    );

    // backward of sum(output · linspace(−1, 1, numel))
    let numel = b * n * d;
    let ramp: Vec<f32> = (0..numel)
        .map(|i| -1.0 + 2.0 * i as f32 / (numel - 1) as f32)
        .collect();
    let ramp = Tensor::<B, 3>::from_data(TensorData::new(ramp, [b, n, d]), &device);
    let grads = (out * ramp).sum().backward();
    let gx = x.grad(&grads).unwrap().into_data();
    let want = g.get("tssa.grad.input");
    let tol = 1e-4 * max_abs(&want.to_vec::<f32>().unwrap()) + 1e-7;
    assert_close("tssa.grad.input", &gx, want, tol);
    common::assert_grads(&g, "tssa.", &collect_gradients(&tssa, &grads));
}

/// The golden vision case as a whitebox config (the official constructor's fields).
fn vision_config(g: &Golden) -> TostConfig {
    let c = case(g, "vision");
    let mut v = serde_json::json!({"arch": "tost", "in_chans": 3});
    for k in [
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "qkv_bias",
        "eta",
        "tokens_norm",
        "num_classes",
        "cls_attn_layers",
        "use_pos",
    ] {
        v[k] = c[k].clone();
    }
    assert_eq!(c["mode"], "eval");
    TostConfig::from_json(&v.to_string()).expect("golden vision case parses")
}

fn vision_model(g: &Golden) -> Tost<B> {
    common::load_clean(
        vision_config(g).init::<B>(&Default::default()),
        &tost::prepare_state_dict(g.with_prefix("vision.param.")),
    )
}

#[test]
fn tost_vision_matches_official() {
    let g = Golden::load("tost.safetensors");
    let device = Default::default();
    let model = vision_model(&g);
    let x = Tensor::<B, 4>::from_data(g.get("vision.input").clone(), &device);
    let logits = model.forward(x);
    assert_close(
        "vision.logits",
        &logits.clone().into_data(),
        g.get("vision.logits"),
        1e-4,
    );
    let labels = Tensor::<B, 1, Int>::from_data(g.get("vision.labels").clone(), &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, labels);
    let (l, want) = (loss.clone().into_scalar(), g.f32("vision.loss")[0]);
    assert!((l - want).abs() <= 1e-5, "vision.loss {l} vs {want}");
    common::assert_grads(&g, "vision.", &collect_gradients(&model, &loss.backward()));
}

#[test]
fn tost_vision_config_matches_model() {
    use burn::module::Module;
    let g = Golden::load("tost.safetensors");
    let cfg = vision_config(&g);
    let params = g.with_prefix("vision.param.");
    let buffers = params.keys().filter(|k| k.contains("running_")).count();
    let numel: usize = params
        .iter()
        .filter(|(k, _)| !k.contains("running_"))
        .map(|(_, t)| t.shape.iter().product::<usize>())
        .sum();
    assert_eq!(
        cfg.param_count(),
        numel,
        "param_count vs the official tensors"
    );
    let model = cfg.init::<whitebox::CpuBackend>(&Default::default());
    let stats: usize = cfg.stem_channels()[1..].iter().sum::<usize>() * 2;
    assert_eq!(buffers, 2 * (cfg.stem_channels().len() - 1));
    assert_eq!(model.num_params(), numel + stats);
    assert_eq!(cfg.grid(), 4, "32 px through three stride-2 convs");
}

fn lm_config(g: &Golden) -> LmConfig {
    // the official GPTConfig fields, TSSA flag included
    let c = case(g, "lm");
    assert_eq!(c["TSSA"], true);
    LmConfig::from_json(&c.to_string()).expect("golden lm case parses")
}

#[test]
fn tost_lm_matches_official() {
    let g = Golden::load("tost.safetensors");
    let device = Default::default();
    let cfg = lm_config(&g);
    assert_eq!(cfg.arch, "tost-lm");
    let sd = g.with_prefix("lm.param.");
    assert!(
        sd.contains_key(LM_HEAD_KEY),
        "the golden file gives the tied head twice"
    );
    let model = whitebox::weights::load_official_lm(cfg.init::<B>(&device), sd.clone()).unwrap();
    let idx = Tensor::<B, 2, Int>::from_data(g.get("lm.idx").clone(), &device);
    let targets = Tensor::<B, 2, Int>::from_data(g.get("lm.targets").clone(), &device);
    let logits = model.forward(idx.clone());
    assert_close(
        "lm.logits",
        &logits.clone().into_data(),
        g.get("lm.logits"),
        1e-4,
    );
    let loss = lm::cross_entropy(logits, targets);
    let (l, want) = (loss.clone().into_scalar(), g.f32("lm.loss")[0]);
    assert!((l - want).abs() <= 1e-5, "lm.loss {l} vs {want}");
    common::assert_grads(&g, "lm.", &collect_gradients(&model, &loss.backward()));

    // the tied head given once (`transformer.wte.weight` only) loads to the same model
    let mut once = sd;
    once.remove(LM_HEAD_KEY);
    let model = whitebox::weights::load_official_lm(cfg.init::<B>(&device), once).unwrap();
    assert_close(
        "lm.logits (head once)",
        &model.forward(idx).into_data(),
        g.get("lm.logits"),
        1e-4,
    );
    assert_eq!(cfg.param_count(), burn::module::Module::num_params(&model));
}

#[test]
fn tssa_flag_and_arch_must_agree() {
    let base = r#""vocab_size": 5, "block_size": 4, "n_layer": 1, "n_head": 1, "n_embd": 4"#;
    let parse = |extra: &str| LmConfig::from_json(&format!("{{{base}{extra}}}"));
    assert_eq!(parse(r#", "TSSA": true"#).unwrap().arch, "tost-lm");
    assert_eq!(
        parse(r#", "TSSA": false, "arch": "gpt""#).unwrap().arch,
        "gpt"
    );
    let e = parse(r#", "TSSA": true, "arch": "gpt""#).unwrap_err();
    assert!(format!("{e:#}").contains("TSSA"), "{e:#}");
    let e = parse(r#", "TSSA": false, "arch": "tost-lm""#).unwrap_err();
    assert!(format!("{e:#}").contains("contradicts"), "{e:#}");
}

/// The stem's GEMM convolution equals burn's `conv2d` (3×3, stride 2, padding 1), odd sides included.
#[test]
fn conv3x3_s2_equals_conv2d() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::Distribution;
    let device = Default::default();
    for (h, w) in [(7, 5), (8, 8), (1, 2)] {
        let x = Tensor::<B, 4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let want = conv2d(
            x.clone(),
            k.clone(),
            None,
            ConvOptions::new([2, 2], [1, 1], [1, 1], 1),
        );
        let (rows, [b, ho, wo]) = tost::conv3x3_s2(x.permute([0, 2, 3, 1]), k);
        let got = rows.reshape([b, ho, wo, 4]).permute([0, 3, 1, 2]);
        assert_close(
            &format!("{h}×{w}"),
            &got.into_data(),
            &want.into_data(),
            1e-5,
        );
    }
}
