//! Causal CRATE language models against the official crate-lm code
//! (tests/golden/crate_lm_{complete,overcomplete}): every activation, logits, both losses, every
//! gradient (incl. the tied lm_head), one AdamW step of `configure_optimizers`, greedy generation.

use crate::common;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use common::{assert_close, max_abs_diff, Golden};
use whitebox::model::lm::{self, CausalLm, LmConfig, Sampling, LM_HEAD_KEY};
use whitebox::model::Activations;
use whitebox::train::{OptimSettings, OptimizerKind, TrainOptimizer};
use whitebox::weights::{collect_gradients, gradients_from_state_dict};
use whitebox::CpuAutodiff as B;

fn config(g: &Golden, arch: &str) -> LmConfig {
    let mut v: serde_json::Value = serde_json::from_str(&g.meta["config"]).unwrap();
    v["arch"] = arch.into();
    LmConfig::from_json(&v.to_string()).expect("golden config parses")
}

fn golden_model(g: &Golden, arch: &str) -> CausalLm<B> {
    let model = config(g, arch).init::<B>(&Default::default());
    whitebox::weights::load_official_lm(model, g.with_prefix("param."))
        .expect("strict load of the official params")
}

fn ints(g: &Golden, key: &str) -> Tensor<B, 2, Int> {
    Tensor::from_data(g.get(key).clone(), &Default::default())
}

/// `model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4, betas=(0.9, 0.95))`:
/// decay on ≥ 2-D parameters only, no clipping in the golden step.
fn crate_lm_adamw(model: &CausalLm<B>) -> TrainOptimizer<CausalLm<B>, B> {
    TrainOptimizer::new(
        OptimSettings {
            kind: OptimizerKind::Adamw,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            no_decay_norm_bias: true,
            clip_grad_norm: None,
        },
        model,
    )
}

fn check_opt1(g: &Golden, stepped: &CausalLm<B>, tol: f32) {
    let after = whitebox::weights::lm_state_dict(&stepped.valid());
    let want = g.with_prefix("opt1.");
    assert_eq!(after.len(), want.len(), "opt1 key count");
    for (k, w) in &want {
        assert_close(&format!("opt1.{k}"), &after[k], w, tol);
    }
}

fn check_case(file: &str, arch: &str) {
    let g = Golden::load(file);
    let model = golden_model(&g, arch);

    // Forward with every activation, in the golden file's order-independent naming.
    let mut acts = Activations::on();
    let logits = model.forward_with(ints(&g, "idx"), &mut acts);
    let acts = acts.into_vec();
    let golden_acts = g.tensors.keys().filter(|k| k.starts_with("act.")).count();
    assert_eq!(acts.len(), golden_acts, "number of captured activations");
    for a in &acts {
        let got = TensorData::new(a.values.clone(), a.shape.clone());
        assert_close(&a.name, &got, g.get(&a.name), 1e-5);
        if a.name.ends_with("prerelu") {
            let (gv, wv) = (a.values.clone(), g.f32(&a.name));
            let support = gv.iter().zip(&wv).all(|(x, y)| (*x > 0.0) == (*y > 0.0));
            assert!(support, "{}: ReLU support differs", a.name);
        }
    }
    assert_close("logits", &logits.clone().into_data(), g.get("logits"), 1e-5);

    // Loss with ignore_index = −1.
    let ignore = lm::cross_entropy(logits.clone(), ints(&g, "targets_ignore")).into_scalar();
    let want = g.f32("loss_ignore")[0];
    assert!(
        (ignore - want).abs() <= 1e-6,
        "loss_ignore {ignore} vs {want}"
    );
    let loss = lm::cross_entropy(logits, ints(&g, "targets"));
    let l = loss.clone().into_scalar();
    let want = g.f32("loss")[0];
    assert!((l - want).abs() <= 1e-6, "loss {l} vs {want}");

    // Every gradient; the tied lm_head's is the wte gradient (sum of both uses).
    let grads = loss.backward();
    let mut got = collect_gradients(&model, &grads);
    got.insert(LM_HEAD_KEY.into(), got["transformer.wte.weight"].clone());
    common::assert_grads(&g, "", &got);

    // One AdamW step from our own gradients.
    let gp = GradientsParams::from_grads(grads, &model);
    let mut opt = crate_lm_adamw(&model);
    check_opt1(&g, &opt.step(6e-4, model, gp), 1e-5);

    // ... and from the saved PyTorch gradients.
    let model = golden_model(&g, arch);
    let gp = gradients_from_state_dict(&model, &g.with_prefix("grad."));
    let mut opt = crate_lm_adamw(&model);
    check_opt1(&g, &opt.step(6e-4, model, gp), 1e-6);

    // Greedy generation: the same tokens and per-step logits.
    let model = golden_model(&g, arch).valid();
    let prompt = g.get("generate.prompt").to_vec::<i64>().unwrap();
    let opts = Sampling {
        max_new_tokens: 8,
        temperature: 1.0,
        top_k: Some(1),
    };
    let mut rng = rand::rng();
    let (new, step_logits) = model
        .generate(&prompt, &opts, &mut rng, |_| Ok(()))
        .unwrap();
    let mut out = prompt.clone();
    out.extend(&new);
    assert_eq!(out, g.get("generate.out").to_vec::<i64>().unwrap());
    let flat: Vec<f32> = step_logits.concat();
    assert_close(
        "generate.logits",
        &TensorData::new(flat, [8, 97]),
        g.get("generate.logits"),
        1e-5,
    );
}

#[test]
fn crate_lm_complete_matches_official() {
    check_case("crate_lm_complete.safetensors", "crate-lm");
}

#[test]
fn crate_lm_overcomplete_matches_official() {
    check_case("crate_lm_overcomplete.safetensors", "crate-lm-overcomplete");
}

/// Logits at position t depend only on tokens 0..=t, for every architecture.
#[test]
fn logits_are_causal() {
    let device = Default::default();
    for arch in lm::ARCHS {
        let cfg = LmConfig {
            arch: arch.parse().unwrap(),
            vocab_size: 23,
            block_size: 12,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
        };
        let model = cfg.init::<whitebox::CpuBackend>(&device);
        let a: Vec<i64> = (0..10).map(|i| (i * 7 % 23) as i64).collect();
        let mut b = a.clone();
        for v in &mut b[6..] {
            *v = (*v + 5) % 23;
        }
        let run = |toks: &Vec<i64>| {
            model
                .forward(Tensor::from_data(
                    TensorData::new(toks.clone(), [1, 10]),
                    &device,
                ))
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let (la, lb) = (run(&a), run(&b));
        let v = 23;
        assert!(
            max_abs_diff(&la[..6 * v], &lb[..6 * v]) < 1e-6,
            "{arch}: positions before the change moved"
        );
        assert!(
            max_abs_diff(&la[6 * v..7 * v], &lb[6 * v..7 * v]) > 1e-4,
            "{arch}: the changed position did not change"
        );
    }
}

#[test]
fn param_count_formula_matches_model() {
    use burn::module::Module;
    for arch in lm::ARCHS {
        let cfg = LmConfig {
            arch: arch.parse().unwrap(),
            vocab_size: 31,
            block_size: 8,
            n_layer: 2,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
        };
        let model = cfg.init::<whitebox::CpuBackend>(&Default::default());
        assert_eq!(model.num_params(), cfg.param_count(), "{arch}");
    }
}
