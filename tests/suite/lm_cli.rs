//! `whitebox forward` on language models (the interop contract) and `whitebox lm` prepare / train
//! / eval / generate on a tiny corpus: loss goes down, resume equals a straight run, clear errors.

use crate::common;

use common::{assert_close, fails, golden_path, ok, Golden};
use std::path::Path;
use whitebox::weights::{read_safetensors_all, write_safetensors};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// nanoGPT `.pt` checkpoint (`model_args`, `_orig_mod.` keys, optimizer state): config from
/// model_args, arch from the keys, logits at every position equal the official ones.
#[test]
fn forward_reads_nanogpt_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let golden = golden_path("crate_lm_complete.safetensors");
    ok(&[
        "forward",
        "--weights",
        &fixture("crate_lm_nanogpt.pt"),
        "--input",
        s(&golden),
        "--output",
        s(&out),
    ]);
    let g = Golden::load("crate_lm_complete.safetensors");
    let (got, _) = read_safetensors_all(&out).unwrap();
    assert_close("logits", &got["logits"], g.get("logits"), 1e-5);
}

/// Official-key safetensors (with the lm_head alias and the attn.bias buffers) + a JSON config
/// with `"arch": "crate-lm-overcomplete"`; activations come out under the golden names.
#[test]
fn forward_reads_official_safetensors_with_json_config() {
    for (file, arch) in [
        ("crate_lm_overcomplete.safetensors", "crate-lm-overcomplete"),
        ("crate_lm_complete.safetensors", "crate-lm"),
    ] {
        let g = Golden::load(file);
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("w.safetensors");
        write_safetensors(&weights, &g.with_prefix("param."), None).unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"arch": "{arch}", "vocab_size": 97, "block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}}"#
            ),
        )
        .unwrap();
        let out = dir.path().join("out.safetensors");
        let golden = golden_path(file);
        let args = [
            "forward",
            "--weights",
            s(&weights),
            "--config",
            s(&cfg),
            "--input",
            s(&golden),
            "--output",
            s(&out),
            "--activations",
        ];
        ok(&args);
        let (got, _) = read_safetensors_all(&out).unwrap();
        assert_close("logits", &got["logits"], g.get("logits"), 1e-5);
        assert_close(
            "act.layer1.ista",
            &got["act.layer1.ista"],
            g.get("act.layer1.ista"),
            1e-5,
        );

        // a sequence longer than block_size and a token outside the vocabulary: clear errors
        let long = dir.path().join("long.safetensors");
        let mut sd = whitebox::weights::StateDict::new();
        sd.insert(
            "idx".into(),
            burn::tensor::TensorData::new(vec![1i64; 40], [1, 40]),
        );
        write_safetensors(&long, &sd, None).unwrap();
        let mut bad = args;
        bad[6] = s(&long);
        let e = fails(&bad[..9]);
        assert!(e.contains("exceeds block_size 32"), "{e}");
        sd.insert(
            "idx".into(),
            burn::tensor::TensorData::new(vec![1i64, 97], [1, 2]),
        );
        write_safetensors(&long, &sd, None).unwrap();
        let e = fails(&bad[..9]);
        assert!(e.contains("token id 97 is outside the vocabulary"), "{e}");
    }
}

const CORPUS: &str = "To be, or not to be, that is the question:\n\
Whether 'tis nobler in the mind to suffer\n\
The slings and arrows of outrageous fortune,\n\
Or to take arms against a sea of troubles\n";

fn tiny_corpus(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("corpus.txt");
    std::fs::write(&p, CORPUS.repeat(30)).unwrap();
    p
}

fn train_args<'a>(corpus: &'a str, data: &'a str, run: &'a str, arch: &'a str) -> Vec<&'a str> {
    vec![
        "lm",
        "train",
        "--corpus",
        corpus,
        "--data",
        data,
        "--run-dir",
        run,
        "--arch",
        arch,
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "8",
        "--max-iters",
        "40",
        "--warmup-iters",
        "4",
        "--lr",
        "1e-2",
        "--eval-interval",
        "20",
        "--eval-iters",
        "4",
        "--seed",
        "3",
    ]
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Train CRATE and GPT on a tiny corpus: the validation loss falls well below ln(vocab);
/// eval and generate work on the written weights.
#[test]
fn train_eval_generate_on_tiny_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = tiny_corpus(dir.path());
    let data = dir.path().join("tok");
    let vocab = {
        let mut c: Vec<char> = CORPUS.chars().collect();
        c.sort();
        c.dedup();
        c.len() as f64
    };
    for arch in ["crate-lm-overcomplete", "gpt"] {
        let run = dir.path().join(arch);
        ok(&train_args(s(&corpus), s(&data), s(&run), arch));
        let m = metrics(&run);
        assert_eq!(m.len(), 2, "validation at 20 and 40");
        let (first, last) = (
            m[0]["val_loss"].as_f64().unwrap(),
            m[1]["val_loss"].as_f64().unwrap(),
        );
        assert!(
            last < first,
            "{arch}: val loss {first} → {last} did not fall"
        );
        // a uniform guess scores ln V; 40 tiny steps must beat it clearly
        assert!(
            last < vocab.ln() - 0.5,
            "{arch}: val loss {last} vs ln V {}",
            vocab.ln()
        );

        let weights = run.join("model.safetensors");
        let out = ok(&[
            "lm",
            "eval",
            "--weights",
            s(&weights),
            "--text",
            s(&corpus),
            "--json",
        ]);
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let (loss, ppl) = (
            j["loss"].as_f64().unwrap(),
            j["perplexity"].as_f64().unwrap(),
        );
        // every token of the corpus but the first is predicted once
        let n = std::fs::read_to_string(&corpus).unwrap().chars().count() - 1;
        assert_eq!(j["tokens"].as_u64(), Some(n as u64), "{out}");
        assert!((ppl - loss.exp()).abs() <= 1e-9 * ppl, "{out}");
        // the trained model scores its corpus near its validation loss, far below ln V
        assert!(
            loss < vocab.ln() - 0.5 && (loss - last).abs() < 0.5,
            "{arch}: eval loss {loss}, val loss {last}, ln V {}",
            vocab.ln()
        );
        let text = ok(&[
            "lm",
            "generate",
            "--weights",
            s(&weights),
            "--prompt",
            "To be",
            "--max-new-tokens",
            "20",
        ]);
        assert!(
            text.starts_with("To be") && text.trim_end().chars().count() >= 20,
            "{text:?}"
        );
    }
    // prepared once: meta.json and the token files exist
    assert!(data.join("train.bin").exists() && data.join("val.bin").exists());
}

/// Stopping after 15 iterations and resuming gives the same weights as 40 straight iterations.
#[test]
fn resume_equals_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = tiny_corpus(dir.path());
    let data = dir.path().join("tok");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&train_args(s(&corpus), s(&data), s(&a), "crate-lm"));
    let mut first = train_args(s(&corpus), s(&data), s(&b), "crate-lm");
    first.extend(["--stop-after", "15"]);
    ok(&first);
    ok(&[
        "lm",
        "train",
        "--data",
        s(&data),
        "--run-dir",
        s(&b),
        "--resume",
    ]);
    let (wa, _) = read_safetensors_all(&a.join("model.safetensors")).unwrap();
    let (wb, _) = read_safetensors_all(&b.join("model.safetensors")).unwrap();
    assert_eq!(wa.len(), wb.len());
    for (k, v) in &wa {
        assert_eq!(v, &wb[k], "{k} differs after resume");
    }
    // the resumed run's metrics are the straight run's: validation points 20 and 40 with the
    // same values and train losses, no extra line at the stop (15) (issue #28)
    let (ma, mb) = (metrics(&a), metrics(&b));
    let steps = |m: &[serde_json::Value]| -> Vec<u64> {
        m.iter().map(|x| x["step"].as_u64().unwrap()).collect()
    };
    assert_eq!(steps(&ma), [20, 40]);
    assert_eq!(steps(&mb), [20, 40]);
    for (x, y) in ma.iter().zip(&mb) {
        for f in ["val_loss", "train_loss", "lr"] {
            assert_eq!(x[f], y[f], "{f} at step {}", x["step"]);
        }
    }
    // a new run into a folder that holds one is refused, not overwritten
    let again = train_args(s(&corpus), s(&data), s(&b), "crate-lm");
    let e = fails(&again);
    assert!(
        e.contains("already holds a checkpoint") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(
        metrics(&b).len(),
        mb.len(),
        "the refused run touched metrics.jsonl"
    );
}

#[test]
fn bad_text_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let out = dir.path().join("tok");
    let e = fails(&["lm", "prepare", "--corpus", s(&empty), "--out", s(&out)]);
    assert!(e.contains("empty"), "{e}");
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let e = fails(&["lm", "prepare", "--corpus", s(&latin1), "--out", s(&out)]);
    assert!(e.contains("latin1.txt is not UTF-8"), "{e}");

    // a trained char model: unknown characters and over-long prompts
    let corpus = tiny_corpus(dir.path());
    let run = dir.path().join("run");
    let mut args = train_args(s(&corpus), s(&out), s(&run), "crate-lm");
    args.extend(["--stop-after", "1"]);
    ok(&args);
    let w = run.join("model.safetensors");
    let e = fails(&["lm", "generate", "--weights", s(&w), "--prompt", "Zebra"]);
    assert!(
        e.contains("'Z'") && e.contains("not in the model's character vocabulary"),
        "{e}"
    );
    let long = "to be ".repeat(4);
    let e = fails(&["lm", "generate", "--weights", s(&w), "--prompt", &long]);
    assert!(e.contains("longer than the model's context of 16"), "{e}");
}

/// A safetensors file whose header length starts with byte 0x80 (a pickle's first byte) is still
/// read as safetensors (it was once taken for a legacy torch file).
#[test]
fn safetensors_header_length_0x80_is_not_a_pickle() {
    let g = Golden::load("crate_lm_complete.safetensors");
    let sd = g.with_prefix("param.");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let bytes = (0..512)
        .map(|k| {
            let meta = std::collections::HashMap::from([("pad".to_string(), "x".repeat(k))]);
            whitebox::weights::safetensors_bytes(sd.iter(), Some(meta)).unwrap()
        })
        .find(|b| b[0] == 0x80)
        .expect("some padding gives a header length ending in 0x80");
    std::fs::write(&path, bytes).unwrap();
    let back = whitebox::weights::read_state_dict(&path).unwrap();
    assert_eq!(back.len(), sd.len());
}

/// `metrics.jsonl` of `run` without its timing fields (`seconds`, `…_per_s`).
fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.retain(|k, _| k != "seconds" && !k.ends_with("_per_s"));
            v
        })
        .collect()
}

/// `lm train` and `bert train` stopped between evaluations (`--stop-after`), then
/// resumed, write the straight run's metrics lines: no extra line at the stop, and the period's
/// train loss over all its iterations (issue #28).
#[test]
fn a_token_run_stopped_between_evaluations_records_the_straight_runs_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(
        &corpus,
        "to be or not to be that is the question ".repeat(300),
    )
    .unwrap();
    let lm = [
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "8",
        "--max-iters",
        "40",
        "--eval-interval",
        "20",
        "--eval-iters",
        "2",
    ];
    let bert = [
        "--hidden-size",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "8",
        "--max-iters",
        "40",
        "--eval-interval",
        "20",
        "--eval-iters",
        "2",
    ];
    for (command, flags) in [("lm", &lm[..]), ("bert", &bert[..])] {
        let data = dir.path().join(format!("{command}-tokens"));
        let run = |name: &str, extra: &[&str]| {
            let r = dir.path().join(format!("{command}-{name}"));
            let mut args = vec![command, "train", "--corpus", s(&corpus), "--data", s(&data)];
            args.extend(["--run-dir", s(&r)]);
            args.extend(extra);
            ok(&args);
            r
        };
        let straight = run("straight", flags);
        let want = metrics_without_timing(&straight);
        assert!(want.len() >= 2, "{command}: {want:?}");
        let mut stopped = flags.to_vec();
        stopped.extend(["--stop-after", "10"]);
        let split = run("split", &stopped);
        run("split", &["--resume"]);
        assert_eq!(
            metrics_without_timing(&split),
            want,
            "{command}: stop + resume"
        );
    }
}
