//! Bad input, divergence and faults through the library: each is a clear error naming what is
//! wrong (never a panic, a crash or a silent wrong result), and checkpoints survive kills at any
//! point of a save.

use burn::tensor::{Tensor, TensorData};
use std::io::Write;
use std::path::Path;
use whitebox::data::{self, Format, ImageSet, Normalization, Split};
use whitebox::model::CrateConfig;
use whitebox::train::checkpoint::{self, fault, Checkpoint, RunLock};
use whitebox::weights::{read_input_tensor, read_state_dict, write_safetensors, StateDict};
use whitebox::CpuBackend;

const TINY: &str = r#"{"image_size": 8, "patch_size": 4, "num_classes": 3, "dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "channels": 1}"#;

fn tiny() -> CrateConfig {
    let c: CrateConfig = serde_json::from_str(TINY).unwrap();
    c.validate().unwrap();
    c
}

fn err<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn nan_in_an_input_reaches_the_logits() {
    // torch's relu propagates NaN; the fused ISTA epilogue must not turn it into 0
    let device = Default::default();
    let model = tiny().init::<CpuBackend>(&device);
    let mut x = vec![0.25f32; 2 * 64];
    x[70] = f32::NAN; // one pixel of the second image
    let x = Tensor::<CpuBackend, 4>::from_data(TensorData::new(x, [2, 1, 8, 8]), &device);
    let logits: Vec<f32> = model.forward(x).into_data().to_vec().unwrap();
    assert!(logits[..3].iter().all(|v| v.is_finite()), "{logits:?}");
    assert!(logits[3..].iter().all(|v| v.is_nan()), "{logits:?}");
}

#[test]
fn non_finite_inputs_and_weights_are_errors_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("in.safetensors");
    let mut sd = StateDict::new();
    sd.insert(
        "input".into(),
        TensorData::new(vec![0.0f32, f32::NAN, 1.0, 2.0], [1, 1, 2, 2]),
    );
    // written without the writer's check (the writer refuses NaN itself)
    let bytes = whitebox::weights::safetensors_bytes(sd.iter(), None).unwrap();
    std::fs::write(&p, bytes).unwrap();
    let e = err(read_input_tensor(&p, "input", &[1, 2, 2]));
    assert!(
        e.contains("`input`") && e.contains("NaN") && e.contains("index 1"),
        "{e}"
    );
    let e = err(read_state_dict(&p));
    assert!(
        e.contains("tensor input") && e.contains("non-finite"),
        "{e}"
    );
    let e = err(write_safetensors(
        &dir.path().join("w.safetensors"),
        &sd,
        None,
    ));
    assert!(
        e.contains("refusing to write") && e.contains("input"),
        "{e}"
    );

    // an empty batch is an error, not a crash further down
    let mut empty = StateDict::new();
    empty.insert(
        "input".into(),
        TensorData::new(Vec::<f32>::new(), [0, 1, 2, 2]),
    );
    write_safetensors(&p, &empty, None).unwrap();
    let e = err(read_input_tensor(&p, "input", &[1, 2, 2]));
    assert!(e.contains("N = 0"), "{e}");
}

#[test]
fn normalisation_metadata_is_checked() {
    let n = |mean: Vec<f32>, std: Vec<f32>| Normalization { mean, std };
    assert!(err(n(vec![], vec![]).validate(1)).contains("0 mean(s) and 0 std(s)"));
    assert!(err(n(vec![0.5], vec![0.0]).validate(1)).contains("std[0] is 0"));
    assert!(err(n(vec![f32::NAN], vec![1.0]).validate(1)).contains("mean[0]"));
    n(vec![0.5], vec![0.25]).validate(1).unwrap();
}

#[test]
fn out_of_range_labels_are_found_before_training() {
    let set = ImageSet {
        pixels: vec![0; 3 * 4],
        labels: vec![0, 2, 7],
        channels: 1,
        height: 2,
        width: 2,
        class_names: vec![],
    };
    let e = err(set.check_labels(3));
    assert!(
        e.contains("image 2 has label 7") && e.contains("3 classes"),
        "{e}"
    );
    set.check_labels(8).unwrap();
}

fn png(path: &Path, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(4, 4, image::Luma([v]))
        .save(path)
        .unwrap();
}

#[test]
fn image_folder_classes_are_numbered_from_train() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for (c, v) in [("ant", 10), ("bee", 20), ("cat", 30)] {
        png(&r.join(format!("train/{c}/a.png")), v);
    }
    // test lacks `ant`: `cat` must keep label 2, not shift to 1
    png(&r.join("test/bee/x.png"), 20);
    png(&r.join("test/cat/y.png"), 30);
    let test = data::load(r, Format::Folder, Split::Test).unwrap();
    assert_eq!(test.labels, vec![1, 2]);
    assert_eq!(test.class_names, vec!["ant", "bee", "cat"]);
    // a train class without images keeps its number too
    std::fs::create_dir_all(r.join("train/aaa-empty")).unwrap();
    let train = data::load(r, Format::Folder, Split::Train).unwrap();
    let test = data::load(r, Format::Folder, Split::Test).unwrap();
    assert_eq!(train.labels, vec![1, 2, 3]);
    assert_eq!(test.labels, vec![2, 3]);
    // a test class that train lacks is an error naming it
    png(&r.join("test/dog/z.png"), 40);
    let e = err(data::load(r, Format::Folder, Split::Test));
    assert!(e.contains("\"dog\"") && e.contains("train"), "{e}");
}

#[test]
fn absurd_config_sizes_are_refused_with_the_field() {
    let big = |field: &str, v: u64| -> String {
        let mut j: serde_json::Value = serde_json::from_str(TINY).unwrap();
        j[field] = v.into();
        let c: CrateConfig = serde_json::from_value(j).unwrap();
        err(c.validate())
    };
    assert!(big("dim", 4_000_000_000).contains("dim = 4000000000 exceeds"));
    assert!(big("heads", 100_000).contains("heads = 100000 exceeds"));
    // within every per-field limit but too many parameters in all
    let c: CrateConfig = serde_json::from_str(
        r#"{"image_size": 16384, "patch_size": 1, "num_classes": 10, "dim": 65536, "depth": 1, "heads": 1, "dim_head": 8, "channels": 1}"#,
    )
    .unwrap();
    assert!(err(c.validate()).contains("parameters, more than the limit"));
    let lm = whitebox::model::lm::LmConfig::from_json(
        r#"{"arch": "gpt", "vocab_size": 100, "block_size": 8, "n_layer": 1, "n_head": 100000, "n_embd": 64}"#,
    );
    assert!(err(lm).contains("n_head = 100000 exceeds"));
}

#[test]
fn training_flags_are_checked() {
    use whitebox::train::Recipe;
    let ok = Recipe {
        epochs: 1,
        batch_size: 4,
        lr: 1e-3,
        warmup_epochs: 0.0,
        ..Recipe::MAIN_JOB
    };
    ok.validate(8).unwrap();
    let bad = |f: &dyn Fn(&mut Recipe)| {
        let mut r = ok.clone();
        f(&mut r);
        err(r.validate(8))
    };
    assert!(bad(&|r| r.label_smoothing = 2.0).contains("--label-smoothing"));
    assert!(bad(&|r| r.label_smoothing = -0.1).contains("--label-smoothing"));
    assert!(bad(&|r| r.optim.beta1 = 1.5).contains("--beta1"));
    assert!(bad(&|r| r.optim.beta2 = 1.0).contains("--beta2"));
    assert!(bad(&|r| r.optim.weight_decay = f64::NAN).contains("--weight-decay"));
    assert!(bad(&|r| r.optim.clip_grad_norm = Some(-1.0)).contains("--clip-grad-norm"));
    assert!(bad(&|r| r.warmup_epochs = -1.0).contains("--warmup-epochs"));
    assert!(bad(&|r| r.min_lr = 1.0).contains("--min-lr"));
    assert!(bad(&|r| r.augment.crop_padding = 100).contains("--crop-padding"));
    assert!(bad(&|r| r.batch_size = 0).contains("--batch-size"));
    assert!(err(whitebox::train::optim::clip_setting(f64::NAN)).contains("--clip-grad-norm"));
    let s = whitebox::model::lm::Sampling {
        max_new_tokens: 1,
        temperature: -1.0,
        top_k: None,
    };
    assert!(err(s.validate()).contains("--temperature"));
}

/// A zip written entry by entry (stored, no compression).
fn zip_file(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        z.start_file(name.as_str(), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

fn fixture_entries() -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crate_B_model.pth");
    let mut z = zip::ZipArchive::new(std::fs::File::open(p).unwrap()).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().to_string(), b)
        })
        .collect()
}

#[test]
fn pth_with_a_missing_or_short_storage_is_an_error_not_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let entries = fixture_entries();
    let whole = dir.path().join("whole.pth");
    zip_file(&whole, &entries);
    assert!(!read_state_dict(&whole).unwrap().is_empty());

    let missing = dir.path().join("missing.pth");
    let fewer: Vec<_> = entries
        .iter()
        .filter(|(n, _)| n != "crate_B_model/data/3")
        .cloned()
        .collect();
    zip_file(&missing, &fewer);
    let e = err(read_state_dict(&missing));
    assert!(
        e.contains("crate_B_model/data/3") && e.contains("missing"),
        "{e}"
    );

    let short = dir.path().join("short.pth");
    let cut: Vec<_> = entries
        .iter()
        .map(|(n, b)| {
            let b = if n == "crate_B_model/data/3" {
                b[..b.len() - 4].to_vec()
            } else {
                b.clone()
            };
            (n.clone(), b)
        })
        .collect();
    zip_file(&short, &cut);
    let e = err(read_state_dict(&short));
    assert!(
        e.contains("crate_B_model/data/3") && e.contains("bytes"),
        "{e}"
    );
}

#[test]
fn deeply_nested_pickle_is_an_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let depth = 1_000_000;
    let mut pkl = vec![0x80, 2];
    pkl.extend(std::iter::repeat_n(b']', depth));
    pkl.extend(std::iter::repeat_n(b'a', depth - 1));
    pkl.push(b'.');
    let p = dir.path().join("deep.pth");
    zip_file(&p, &[("archive/data.pkl".to_string(), pkl)]);
    let e = err(read_state_dict(&p));
    assert!(e.contains("nests deeper"), "{e}");
}

// ---- runs: lock, checkpoint swap under kills, metrics ----

/// A stand-in checkpoint: `model.bin` and `state.json` both hold the epoch.
fn save(run: &Path, epoch: usize) -> anyhow::Result<()> {
    let line = format!("{{\"epoch\":{epoch}}}");
    checkpoint::write_checkpoint_dir(run, Some(&line), |tmp| {
        std::fs::write(tmp.join("model.bin"), epoch.to_string())?;
        fault::point()?; // a kill between the files of the folder
        whitebox::weights::write_atomic(&tmp.join("state.json"), line.as_bytes())
    })
}

/// The epoch of the checkpoint `recover` restores, after checking that its files agree and that
/// `metrics.jsonl` holds exactly epochs 1..=epoch.
fn recovered_epoch(run: &Path) -> usize {
    let dir = checkpoint::recover(run).unwrap().expect("a checkpoint");
    assert_eq!(dir, run.join("checkpoint"));
    for d in ["checkpoint.tmp", "checkpoint.old"] {
        assert!(!run.join(d).exists(), "{d} left over");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let epoch = state["epoch"].as_u64().unwrap() as usize;
    let model = std::fs::read_to_string(dir.join("model.bin")).unwrap();
    assert_eq!(
        model,
        epoch.to_string(),
        "model.bin and state.json disagree"
    );
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let want: String = (1..=epoch)
        .map(|e| format!("{{\"epoch\":{e}}}\n"))
        .collect();
    assert_eq!(
        metrics, want,
        "metrics.jsonl after recovery at epoch {epoch}"
    );
    epoch
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

#[test]
fn checkpoint_swap_survives_a_kill_at_every_step_even_twice() {
    let root = tempfile::tempdir().unwrap();
    let mut points = 0;
    let (mut single, mut double) = (0, 0);
    for k in 0.. {
        let run = root.path().join(format!("k{k}"));
        save(&run, 1).unwrap();
        fault::kill_at(Some(k));
        let r = save(&run, 2);
        let fired = !fault::armed() && r.is_err();
        fault::kill_at(None);
        if !fired {
            r.unwrap();
            points = k;
            break;
        }
        // what a reader sees right after the kill, before any recovery
        let found = Checkpoint::find(&run).expect("a complete checkpoint after the kill");
        let seen: usize = std::fs::read_to_string(found.join("model.bin"))
            .unwrap()
            .parse()
            .unwrap();
        // a second kill at every step of the next save (the restarted run), from this state
        for k2 in 0.. {
            let again = root.path().join(format!("k{k}-{k2}"));
            copy_tree(&run, &again);
            fault::kill_at(Some(k2));
            let r2 = save(&again, seen + 1);
            let fired2 = !fault::armed() && r2.is_err();
            fault::kill_at(None);
            let e = recovered_epoch(&again);
            assert!(
                e == seen || e == seen + 1,
                "kills at {k} then {k2}: epoch {e}"
            );
            double += 1;
            if !fired2 {
                assert_eq!(e, seen + 1);
                break;
            }
        }
        let e = recovered_epoch(&run);
        assert!(e == seen, "kill at {k}: epoch {e}, a reader saw {seen}");
        assert!(e == 1 || e == 2);
        single += 1;
    }
    assert!(points >= 8, "only {points} fault points");
    eprintln!("{single} single kills and {double} double kills recovered");
}

#[test]
fn a_run_folder_has_one_owner_and_stale_locks_are_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let held = RunLock::acquire(&run).unwrap();
    let pid = std::process::id().to_string();
    assert_eq!(
        std::fs::read_to_string(run.join("lock")).unwrap().trim(),
        pid
    );
    let e = err(RunLock::acquire(&run));
    assert!(e.contains("in use") && e.contains(&pid), "{e}");
    drop(held);
    // a lock file left by a dead process (a pid, but no lock held) is taken over
    std::fs::write(run.join("lock"), "999999999\n").unwrap();
    let again = RunLock::acquire(&run).unwrap();
    drop(again);
    // a folder that cannot be written is refused before any work
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let r = RunLock::acquire(&ro);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Err(e) = r {
        // (root may write anywhere; then there is nothing to check)
        assert!(
            format!("{e:#}").contains("cannot write in the run folder"),
            "{e:#}"
        );
    }
}

#[test]
fn a_fresh_run_refuses_an_existing_checkpoint_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    save(run, 1).unwrap();
    let e = err(checkpoint::start_fresh(run, false));
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    checkpoint::start_fresh(run, true).unwrap();
    assert!(Checkpoint::find(run).is_none() && !run.join("metrics.jsonl").exists());
}

#[test]
fn tokenizer_metadata_and_token_files_are_checked() {
    use whitebox::text::{TokenFile, Tokenizer};
    let bad = Tokenizer::Char { chars: "ba".into() };
    assert!(err(bad.validate()).contains("not sorted"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.bin");
    std::fs::write(&p, [1u8, 0, 9, 0]).unwrap();
    let f = TokenFile::open(&p).unwrap();
    assert!(err(f.check_vocab(5)).contains("token id 9"));
    f.check_vocab(10).unwrap();
}

#[test]
fn zero_size_batch_forward_does_not_crash() {
    let device = Default::default();
    let model = tiny().init::<CpuBackend>(&device);
    let x = Tensor::<CpuBackend, 4>::from_data(
        TensorData::new(Vec::<f32>::new(), [0, 1, 8, 8]),
        &device,
    );
    let logits = model.forward(x);
    assert_eq!(logits.dims(), [0, 3]);
}

#[test]
fn zero_size_language_model_batch_does_not_crash() {
    use burn::tensor::Int;
    let device = Default::default();
    let c = whitebox::model::lm::LmConfig::from_json(
        r#"{"arch": "gpt", "vocab_size": 11, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 8}"#,
    )
    .unwrap();
    let m = c.init::<CpuBackend>(&device);
    let idx = Tensor::<CpuBackend, 2, Int>::from_data(
        TensorData::new(Vec::<i64>::new(), [0, 4]),
        &device,
    );
    assert_eq!(m.forward(idx).dims(), [0, 4, 11]);
}

#[test]
fn an_integer_parameter_is_named_not_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let mut sd = StateDict::new();
    sd.insert("head.weight".into(), TensorData::new(vec![1i64, 2], [2]));
    sd.insert("x.bias".into(), TensorData::new(vec![0.5f32], [1]));
    write_safetensors(&p, &sd, None).unwrap();
    let e = err(read_state_dict(&p));
    assert!(
        e.contains("head.weight") && e.contains("floating point"),
        "{e}"
    );
}

#[test]
fn evaluation_with_batch_size_zero_is_an_error() {
    let device = Default::default();
    let model = tiny().init::<CpuBackend>(&device);
    let set = ImageSet {
        pixels: vec![7; 2 * 64],
        labels: vec![0, 1],
        channels: 1,
        height: 8,
        width: 8,
        class_names: vec![],
    };
    let norm = Normalization {
        mean: vec![0.5],
        std: vec![0.25],
    };
    let e = err(whitebox::train::evaluate(&model, &set, &norm, 0, &device));
    assert!(e.contains("batch size must be at least 1"), "{e}");
    let r = whitebox::train::evaluate(&model, &set, &norm, 1, &device).unwrap();
    assert_eq!(r.n, 2);
}

// ---- issue #28, round 3: NaN behind a score, user data overwritten, requests too large ----

const TINY28: &str = r#"{"image_size": 28, "patch_size": 7, "num_classes": 10, "dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "channels": 1}"#;

/// Weights of the 28×28 tiny model in `dir/w.safetensors` with `norm` stored beside them, after
/// `edit` changed their state dict.
fn tiny28_weights(dir: &Path, norm: &Normalization, edit: impl FnOnce(&mut StateDict)) -> String {
    let cfg: CrateConfig = serde_json::from_str(TINY28).unwrap();
    let model = cfg.init::<CpuBackend>(&Default::default());
    let mut sd = whitebox::weights::collect_state_dict(&model);
    edit(&mut sd);
    let (model, _) = whitebox::weights::apply_state_dict(model, &sd, true).unwrap();
    let path = dir.join("w.safetensors");
    checkpoint::save_model(&path, &cfg, &model, norm, &[]).unwrap();
    path.display().to_string()
}

#[test]
fn a_stored_normalisation_that_cannot_give_finite_inputs_is_refused_at_load() {
    let tiny_std = Normalization {
        mean: vec![0.5],
        std: vec![1e-40],
    };
    let e = err(tiny_std.validate(1));
    assert!(e.contains("std[0] is 1e-40") && e.contains("1e-6"), "{e}");
    let smallest = Normalization {
        mean: vec![0.5],
        std: vec![whitebox::data::augment::MIN_STD],
    };
    smallest.validate(1).unwrap();
    // through the CLI: eval on such weights names the metadata, not a 100 % score
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    crate::common::write_idx(&data, "train", 20, false);
    crate::common::write_idx(&data, "t10k", 10, false);
    let w = tiny28_weights(dir.path(), &tiny_std, |_| {});
    let e = crate::common::fails(&["eval", "--weights", &w, "--data", data.to_str().unwrap()]);
    assert!(e.contains("normalization") && e.contains("std[0]"), "{e}");
}

#[test]
fn nan_logits_count_as_misses_and_eval_reports_them_as_an_error() {
    let device = Default::default();
    let logits = Tensor::<CpuBackend, 2>::from_data(
        TensorData::new(vec![f32::NAN, f32::NAN, f32::NAN, 0.0, 1.0, 0.0], [2, 3]),
        &device,
    );
    let labels = Tensor::<CpuBackend, 1, burn::tensor::Int>::from_data(
        TensorData::new(vec![0i64, 1], [2]),
        &device,
    );
    assert_eq!(whitebox::train::topk_hits(logits, labels), (1, 1));
    // weights so large that the logits overflow: eval is an error, not a score
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    crate::common::write_idx(&data, "train", 20, false);
    crate::common::write_idx(&data, "t10k", 10, false);
    let norm = Normalization {
        mean: vec![0.5],
        std: vec![0.5],
    };
    let w = tiny28_weights(dir.path(), &norm, |sd| {
        let huge: Vec<String> = sd
            .keys()
            .filter(|k| k.ends_with("weight"))
            .cloned()
            .collect();
        for k in huge {
            let t = &sd[&k];
            let v = vec![3e38f32; t.num_elements()];
            sd.insert(k, TensorData::new(v, t.shape.clone()));
        }
    });
    let e = crate::common::fails(&["eval", "--weights", &w, "--data", data.to_str().unwrap()]);
    assert!(e.contains("not finite"), "{e}");
    let picture = dir.path().join("p.png");
    image::GrayImage::from_raw(28, 28, vec![128u8; 784])
        .unwrap()
        .save(&picture)
        .unwrap();
    let e = crate::common::fails(&["predict", "--weights", &w, picture.to_str().unwrap()]);
    assert!(e.contains("not finite"), "{e}");
}

#[test]
fn bert_train_never_overwrites_a_prepared_token_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (tokens, corpus) = (dir.path().join("tokens"), dir.path().join("c.txt"));
    std::fs::create_dir_all(&tokens).unwrap();
    std::fs::write(&corpus, "to be or not to be ".repeat(50)).unwrap();
    let mine = [1u8, 0, 2, 0, 3, 0];
    std::fs::write(tokens.join("train.bin"), mine).unwrap();
    std::fs::write(tokens.join("val.bin"), mine).unwrap();
    std::fs::write(tokens.join("meta.json"), "{damaged").unwrap();
    let run = dir.path().join("run");
    let args = |t: &Path| {
        vec![
            "bert".to_string(),
            "train".into(),
            "--data".into(),
            t.display().to_string(),
            "--corpus".into(),
            corpus.display().to_string(),
            "--run-dir".into(),
            run.display().to_string(),
            "--max-iters".into(),
            "1".into(),
        ]
    };
    let argv = args(&tokens);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let e = crate::common::fails(&argv);
    assert!(
        e.contains("meta.json") && e.contains("not valid token metadata"),
        "{e}"
    );
    std::fs::remove_file(tokens.join("meta.json")).unwrap();
    let e = crate::common::fails(&argv);
    assert!(e.contains("holds train.bin but no meta.json"), "{e}");
    for f in ["train.bin", "val.bin"] {
        assert_eq!(
            std::fs::read(tokens.join(f)).unwrap(),
            mine,
            "{f} was changed"
        );
    }
}

#[test]
fn runs_too_large_for_the_machine_are_refused_before_allocating() {
    if whitebox::alloc::available_bytes().is_none() {
        eprintln!("skipped: this machine does not say how much memory is available");
        return;
    }
    // an estimate past f64 is an error too, whatever the machine
    let e = err(whitebox::alloc::check_fits("x", f64::INFINITY, "--flag"));
    assert!(e.contains("--flag"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        r#"{"image_size": 224, "patch_size": 4, "num_classes": 10, "dim": 4096, "depth": 48, "heads": 32, "dim_head": 128}"#,
    )
    .unwrap();
    let run = dir.path().join("run");
    for command in [&["train"][..], &["bench"][..]] {
        let mut argv = command.to_vec();
        argv.extend([
            "--config",
            big.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
        ]);
        if command == ["bench"] {
            argv.truncate(3);
        }
        let e = crate::common::fails(&argv);
        assert!(
            e.contains("GiB of memory") && e.contains("--batch-size"),
            "{e}"
        );
    }
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "to be or not to be ".repeat(3500)).unwrap();
    let (tokens, lm_run) = (dir.path().join("tokens"), dir.path().join("lm"));
    let e = crate::common::fails(&[
        "lm",
        "train",
        "--corpus",
        corpus.to_str().unwrap(),
        "--data",
        tokens.to_str().unwrap(),
        "--run-dir",
        lm_run.to_str().unwrap(),
        "--block-size",
        "50000",
    ]);
    assert!(
        e.contains("GiB of memory") && e.contains("--block-size"),
        "{e}"
    );
}

/// Weights used for what they cannot do, and inputs that would block or mislead, are refused
/// with the reason (issue #28): `--init-from` weights of another family (and the run folder stays
/// as it was), a truncated JPEG, `report` on a language-model run, a FIFO as a corpus, class
/// names of the wrong length, and a resume in another `--precision`.
#[test]
fn weights_and_inputs_that_cannot_serve_are_refused_with_the_reason() {
    use crate::common::{fails, ok, write_idx};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, "train", 32, false);
    write_idx(&data, "t10k", 16, false);
    let d = data.to_str().unwrap();
    let cfg = dir.path().join("tiny.json");
    std::fs::write(&cfg, TINY28).unwrap();
    let c = cfg.to_str().unwrap();
    // a language model's weights into a CRATE classifier: nothing fits
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "to be or not to be ".repeat(100)).unwrap();
    let lm = dir.path().join("lm");
    ok(&[
        "lm",
        "train",
        "--corpus",
        corpus.to_str().unwrap(),
        "--data",
        dir.path().join("tok").to_str().unwrap(),
        "--run-dir",
        lm.to_str().unwrap(),
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--max-iters",
        "2",
        "--eval-interval",
        "2",
        "--eval-iters",
        "1",
    ]);
    let lm_w = lm.join("model.safetensors");
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    ok(&[
        "train",
        "--config",
        c,
        "--data",
        d,
        "--run-dir",
        r,
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ]);
    let before = std::fs::read(run.join("checkpoint/model.safetensors")).unwrap();
    let e = fails(&[
        "train",
        "--config",
        c,
        "--data",
        d,
        "--run-dir",
        r,
        "--overwrite",
        "--init-from",
        lm_w.to_str().unwrap(),
    ]);
    assert!(
        e.contains("none of its") && e.contains("tensors fits this model"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(run.join("checkpoint/model.safetensors")).unwrap(),
        before,
        "the run was touched"
    );
    // a JPEG cut off in the middle
    let w = run.join("checkpoint/model.safetensors");
    let w = w.to_str().unwrap();
    let jpg = dir.path().join("x.jpg");
    let mut bytes = Vec::new();
    image::GrayImage::from_raw(28, 28, (0..784).map(|i| (i % 251) as u8).collect())
        .unwrap()
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    std::fs::write(&jpg, &bytes).unwrap();
    ok(&["predict", "--weights", w, jpg.to_str().unwrap()]);
    std::fs::write(&jpg, &bytes[..bytes.len() / 2]).unwrap();
    let e = fails(&["predict", "--weights", w, jpg.to_str().unwrap()]);
    assert!(e.contains("truncated"), "{e}");
    // report draws image runs
    let e = fails(&["report", lm.to_str().unwrap()]);
    assert!(e.contains("language-model or CRATE-BERT run"), "{e}");
    // a FIFO would block forever
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let e = fails(&[
            "lm",
            "prepare",
            "--corpus",
            fifo.to_str().unwrap(),
            "--out",
            dir.path().join("t2").to_str().unwrap(),
        ]);
        assert!(e.contains("neither a regular file nor a folder"), "{e}");
    } else {
        eprintln!("skipped the FIFO case: mkfifo is not available");
    }
    // class names that do not match the head
    let norm = Normalization {
        mean: vec![0.5],
        std: vec![0.5],
    };
    let cfg28: CrateConfig = serde_json::from_str(TINY28).unwrap();
    let model = cfg28.init::<CpuBackend>(&Default::default());
    let named = dir.path().join("named.safetensors");
    checkpoint::save_model(
        &named,
        &cfg28,
        &model,
        &norm,
        &["a".to_string(), "b".to_string()],
    )
    .unwrap();
    std::fs::write(jpg.with_file_name("ok.jpg"), &bytes).unwrap();
    let e = fails(&[
        "predict",
        "--weights",
        named.to_str().unwrap(),
        jpg.with_file_name("ok.jpg").to_str().unwrap(),
    ]);
    assert!(
        e.contains("`class_names` names 2 classes but the model has 10"),
        "{e}"
    );
    // a resume keeps the run's arithmetic; another --precision is refused
    let p = dir.path().join("p");
    let args = [
        "train",
        "--config",
        c,
        "--data",
        d,
        "--run-dir",
        p.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch-size",
        "16",
    ];
    let bf16 = crate::common::whitebox(
        &[&args[..], &["--stop-after", "1", "--precision", "bf16"]].concat(),
    );
    if !bf16.status.success() {
        let e = String::from_utf8_lossy(&bf16.stderr);
        assert!(e.contains("AVX512"), "{e}");
        eprintln!("skipped the precision case: this CPU has no AVX512-BF16");
        return;
    }
    let e = fails(&[
        "train",
        "--run-dir",
        p.to_str().unwrap(),
        "--resume",
        "--precision",
        "f32",
    ]);
    assert!(e.contains("--precision f32 (the run has bf16)"), "{e}");
    ok(&["train", "--run-dir", p.to_str().unwrap(), "--resume"]);
    let state = std::fs::read_to_string(p.join("checkpoint/state.json")).unwrap();
    assert!(state.contains("\"precision\": \"bf16\""), "{state}");
}

/// Inputs the fuzzer (`scripts/fuzz.sh`) found, kept in `fuzz/regressions/`: IDX dimensions whose
/// product overflows, and a `.pth` zip entry that claims 3 GB (what burn-store would allocate).
/// Both are errors naming the file.
#[test]
fn inputs_found_by_the_fuzzer_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    std::fs::copy(
        regressions.join("idx-dims-overflow.bin"),
        dir.path().join("train-images-idx3-ubyte"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 1, 3],
    )
    .unwrap();
    let e = err(data::load(dir.path(), Format::Idx, Split::Train));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    let e = err(read_state_dict(
        &regressions.join("pth-zip-entry-claims-3gb.pth"),
    ));
    assert!(e.contains("pth-zip-entry-claims-3gb.pth"), "{e}");
}
