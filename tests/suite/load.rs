//! `weights::load`, the one loader: it recognises every model kind from a file's metadata, a
//! config beside it, a nanoGPT checkpoint's `model_args` or a given `--config`, and loads the
//! weights unchanged (tiny models saved by the library itself, and the official fixtures).

use crate::common;

use burn::tensor::{Int, Tensor};
use common::{assert_close, Golden};
use std::path::{Path, PathBuf};
use whitebox::data::Normalization;
use whitebox::model::bert::BertConfig;
use whitebox::model::lm::{self, LmConfig};
use whitebox::model::mae::MaeConfig;
use whitebox::model::tost::TostConfig;
use whitebox::model::{Arch, CrateConfig, Pool};
use whitebox::text::Tokenizer;
use whitebox::train::checkpoint::save_model;
use whitebox::weights::load::{arch_from_keys, config_of, spec_arch};
use whitebox::weights::{
    collect_state_dict, load, read_state_dict, write_safetensors, Loaded, ModelConfig, StateDict,
};
use whitebox::CpuBackend as B;

const TINY: &str = r#"{"image_size": 8, "patch_size": 4, "num_classes": 3, "dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "channels": 1}"#;
const TINY_MAE: &str = r#"{"arch": "crate-mae", "img_size": 8, "patch_size": 4, "in_chans": 1, "embed_dim": 8, "depth": 1, "num_heads": 2, "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2}"#;
const TINY_TOST: &str = r#"{"arch": "tost", "img_size": 16, "patch_size": 8, "in_chans": 1, "num_classes": 3, "embed_dim": 8, "depth": 1, "num_heads": 2, "eta": 1.0, "tokens_norm": true}"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn norm() -> Normalization {
    Normalization {
        mean: vec![0.25],
        std: vec![0.5],
    }
}

fn load_cpu(path: &Path, config: Option<&str>) -> anyhow::Result<Loaded<B>> {
    load::<B>(path, config, true, &Default::default())
}

/// Every tensor of `b` equals the one of `a` under the same key, and both have the same keys.
fn same_weights(a: &StateDict, b: &StateDict) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "keys differ"
    );
    for (k, t) in a {
        assert_close(k, &b[k], t, 0.0);
    }
}

fn err(r: anyhow::Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn classifiers_saved_by_the_library_load_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let base = CrateConfig::from_json(TINY).unwrap();
    for arch in [Arch::Crate, Arch::CrateAlpha, Arch::CrateMaeEncoder] {
        let mut cfg = base.clone().with_arch(arch).unwrap();
        cfg.pool = Pool::Mean;
        let model = cfg.init::<B>(&Default::default());
        let path = dir.path().join(format!("{arch}.safetensors"));
        save_model(&path, &cfg, &model, &norm(), &["a".into(), "b".into()]).unwrap();
        assert_eq!(arch_from_keys(&read_state_dict(&path).unwrap()), Some(arch));

        let l = load_cpu(&path, None).unwrap();
        assert_eq!(l.arch(), arch);
        let w = l.into_crate().unwrap();
        assert_eq!(w.config, cfg);
        assert_eq!(w.normalization(1).unwrap(), Some(norm()));
        assert_eq!(
            w.meta_json::<Vec<String>>("class_names").unwrap(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        same_weights(&collect_state_dict(&model), &collect_state_dict(&w.model));
        // the same model through the image-classifier view gives the same logits
        let x = Tensor::<B, 4>::ones([2, 1, 8, 8], &Default::default());
        let want = w.model.forward(x.clone()).into_data();
        let c = load_cpu(&path, None)
            .unwrap()
            .into_image_classifier()
            .unwrap();
        assert_eq!(c.config.input, [1, 8, 8]);
        assert_eq!(c.config.num_classes, 3);
        assert_close("logits", &c.model.forward(x).into_data(), &want, 0.0);
    }
}

#[test]
fn mae_tost_lm_and_bert_saved_by_the_library_load_as_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();

    let mae = MaeConfig::from_json(TINY_MAE).unwrap();
    let model = mae.init::<B>(&device);
    let path = dir.path().join("mae.safetensors");
    save_model(&path, &mae, &model, &norm(), &[]).unwrap();
    let w = load_cpu(&path, None).unwrap().into_mae().unwrap();
    assert_eq!(w.config, mae);
    same_weights(&collect_state_dict(&model), &collect_state_dict(&w.model));
    let e = err(load_cpu(&path, None).unwrap().into_crate());
    assert!(
        e.contains("mae.safetensors") && e.contains("is a CRATE-MAE, not a CRATE classifier"),
        "{e}"
    );

    let tost = TostConfig::from_json(TINY_TOST).unwrap();
    let model = tost.init::<B>(&device);
    let path = dir.path().join("tost.safetensors");
    save_model(&path, &tost, &model, &norm(), &[]).unwrap();
    let l = load_cpu(&path, None).unwrap();
    assert_eq!(l.arch(), Arch::Tost);
    let w = l.into_tost().unwrap();
    assert_eq!(w.config, tost);
    same_weights(&collect_state_dict(&model), &collect_state_dict(&w.model));
    let e = err(load_cpu(&path, None).unwrap().into_crate());
    assert!(e.contains("is a ToST model"), "{e}");

    let tok = Tokenizer::Char {
        chars: "abcdefg".into(),
    };
    for arch in lm::LM_ARCHS {
        let cfg = LmConfig {
            arch,
            vocab_size: 7,
            block_size: 8,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
        };
        let model = cfg.init::<B>(&device);
        let path = dir.path().join(format!("{arch}.safetensors"));
        whitebox::train::lm::save_lm(&path, &cfg, &model, &tok).unwrap();
        assert_eq!(arch_from_keys(&read_state_dict(&path).unwrap()), Some(arch));
        let w = load_cpu(&path, None).unwrap().into_lm().unwrap();
        assert_eq!(w.config, cfg);
        assert_eq!(w.tokenizer().unwrap(), tok);
        same_weights(&collect_state_dict(&model), &collect_state_dict(&w.model));
    }

    let bert = BertConfig {
        vocab_size: 10,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        max_position_embeddings: 12,
        ..BertConfig::default()
    };
    let model = bert.init::<B>(&device);
    let path = dir.path().join("bert.safetensors");
    let meta = whitebox::train::bert::bert_metadata(&bert, &tok).unwrap();
    write_safetensors(&path, &collect_state_dict(&model), Some(meta)).unwrap();
    assert_eq!(
        arch_from_keys(&read_state_dict(&path).unwrap()),
        Some(Arch::CrateBert)
    );
    let w = load_cpu(&path, None).unwrap().into_bert().unwrap();
    assert_eq!(w.config, bert);
    assert_eq!(w.stored_tokenizer().unwrap(), Some(tok));
    same_weights(&collect_state_dict(&model), &collect_state_dict(&w.model));
    let e = err(load_cpu(&path, None).unwrap().into_lm());
    assert!(
        e.contains("is a CRATE-BERT model, not a language model"),
        "{e}"
    );
}

#[test]
fn config_beside_the_weights_or_given_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CrateConfig::from_json(TINY).unwrap();
    let model = cfg.init::<B>(&Default::default());
    let path = dir.path().join("w.safetensors");
    write_safetensors(&path, &collect_state_dict(&model), None).unwrap();
    // no config anywhere: the error names the file and what its keys look like
    let e = err(load_cpu(&path, None));
    assert!(
        e.contains("w.safetensors")
            && e.contains("no config stored")
            && e.contains("keys are those of a crate model"),
        "{e}"
    );
    // config.json beside the weights
    std::fs::write(dir.path().join("config.json"), TINY).unwrap();
    assert_eq!(
        load_cpu(&path, None).unwrap().into_crate().unwrap().config,
        cfg
    );
    // an explicit --config wins; a wrong shape is a clear key error naming the file
    let e = err(load_cpu(&path, Some("fmnist")));
    assert!(
        e.contains("w.safetensors") && e.contains("wrongly shaped"),
        "{e}"
    );
    // a missing file is reported as such, not as a missing config
    let e = err(load_cpu(&dir.path().join("nope.safetensors"), None));
    assert!(
        e.contains("cannot open weights") && e.contains("nope"),
        "{e}"
    );
}

#[test]
fn config_specs_name_their_family() {
    assert_eq!(spec_arch("fmnist"), Some(Arch::Crate));
    assert_eq!(spec_arch("crate-alpha-B/16"), Some(Arch::CrateAlpha));
    assert_eq!(spec_arch("mae-fmnist"), Some(Arch::CrateMae));
    assert_eq!(spec_arch("tost-fmnist"), Some(Arch::Tost));
    assert_eq!(spec_arch("char"), Some(Arch::CrateLmOvercomplete));
    assert_eq!(spec_arch("no-such-preset"), None);
    let dir = tempfile::tempdir().unwrap();
    for (json, arch) in [
        (TINY, Arch::Crate),
        (TINY_MAE, Arch::CrateMae),
        (TINY_TOST, Arch::Tost),
    ] {
        let p = dir.path().join("c.json");
        std::fs::write(&p, json).unwrap();
        let spec = p.to_str().unwrap();
        assert_eq!(spec_arch(spec), Some(arch));
        assert_eq!(ModelConfig::resolve(spec).unwrap().arch(), arch);
    }
    let e = err(ModelConfig::resolve("crate-huge"));
    assert!(e.contains("neither a preset"), "{e}");
    // the typed arch and pool serialise to the strings of the config files
    let mut c = CrateConfig::fmnist_alpha();
    c.pool = Pool::Mean;
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(
        (v["arch"].as_str(), v["pool"].as_str()),
        (Some("crate-alpha"), Some("mean"))
    );
    let e = err(CrateConfig::from_json(
        &TINY.replace("\"dim\"", "\"arch\": \"crate-omega\", \"dim\""),
    ));
    assert!(e.contains("crate-omega"), "{e}");
}

/// The golden file's constructor arguments with `"arch": arch`, as a JSON config file in `dir`.
fn ctor_file(dir: &Path, g: &Golden, arch: &str) -> PathBuf {
    let mut ctor: serde_json::Value = serde_json::from_str(&g.meta["ctor"]).unwrap();
    ctor["arch"] = arch.into();
    let path = dir.join(format!("{arch}.json"));
    std::fs::write(&path, ctor.to_string()).unwrap();
    path
}

/// The classifier gives the golden file's logits on its input.
fn golden_logits(model: &whitebox::model::Crate<B>, g: &Golden) {
    let x = Tensor::<B, 4>::from_data(g.get("input").clone(), &Default::default());
    assert_close(
        "logits",
        &model.forward(x).into_data(),
        g.get("logits"),
        1e-5,
    );
}

/// The official torch fixtures: CRATE (training container), CRATE-α, CRATE-MAE with their JSON
/// configs, and a nanoGPT crate-lm checkpoint with none (its `model_args` are the config).
#[test]
fn official_fixtures_load_with_their_configs() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();

    // CRATE: the golden logits
    let g = Golden::load("crate_B.safetensors");
    let cfg = ctor_file(dir.path(), &g, "crate");
    let w = load_cpu(&fixture("crate_B_official.pth.tar"), cfg.to_str())
        .unwrap()
        .into_crate()
        .unwrap();
    assert_eq!(w.config.arch, Arch::Crate);
    golden_logits(&w.model, &g);

    // CRATE-α: its keys say so; the golden logits
    let g = Golden::load("crate_alpha.safetensors");
    let cfg = ctor_file(dir.path(), &g, "crate-alpha");
    let pth = fixture("crate_alpha_official.pth");
    assert_eq!(
        arch_from_keys(&read_state_dict(&pth).unwrap()),
        Some(Arch::CrateAlpha)
    );
    let w = load_cpu(&pth, cfg.to_str()).unwrap().into_crate().unwrap();
    assert_eq!(w.config.arch, Arch::CrateAlpha);
    golden_logits(&w.model, &g);

    // CRATE-MAE: the official parameters arrive unchanged; classifier weights under an MAE
    // config are a clear layout error
    let g = Golden::load("crate_mae.safetensors");
    let cfg = ctor_file(dir.path(), &g, "crate-mae");
    let w = load_cpu(&fixture("crate_mae_official.pth"), cfg.to_str())
        .unwrap()
        .into_mae()
        .unwrap();
    let sd = collect_state_dict(&w.model);
    let want = g.with_prefix("param.");
    for k in [
        "decoder_pred.weight",
        "mask_token",
        "blocks.0.layers.0.1.fn.weight",
    ] {
        assert_close(k, &sd[k], &want[k], 0.0);
    }
    let e = err(load_cpu(&pth, cfg.to_str()));
    assert!(e.contains("not a CRATE-MAE checkpoint"), "{e}");

    // nanoGPT checkpoint: no config given or stored; model_args and the keys describe crate-lm
    let pt = fixture("crate_lm_nanogpt.pt");
    let g = Golden::load("crate_lm_complete.safetensors");
    let ModelConfig::Lm(c) = config_of(&pt, None).unwrap() else {
        panic!("not a language-model config")
    };
    assert_eq!(c.arch, Arch::CrateLm);
    let w = load_cpu(&pt, None).unwrap().into_lm().unwrap();
    assert_eq!(w.config, c);
    let idx = Tensor::<B, 2, Int>::from_data(g.get("idx").clone(), &device);
    assert_close(
        "logits",
        &w.model.forward(idx).into_data(),
        g.get("logits"),
        1e-5,
    );
}
