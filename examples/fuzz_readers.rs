//! Mutation fuzzing of every file reader: IDX, CIFAR, ImageFolder, safetensors, torch `.pth`
//! (zip + pickle), config JSON and tokenizer metadata. Each target starts from valid files made
//! here, mutates them (bit flips, interesting integers, inserted/deleted/duplicated ranges,
//! truncation, splices; token-level edits for JSON) and runs the reader; a reader must return
//! `Ok` or an error, never panic, abort or overflow its stack.
//!
//! A benchmark-style command, not a test (CI does not build it):
//!
//!     cargo run --release --features fuzz --example fuzz_readers -- [SECONDS_PER_TARGET] [SEED]
//!
//! Each target runs in a child process (so a crash is caught and reported, not fatal); the input
//! being read is kept in `target/fuzz/<target>.current`, and a crashing or panicking input is
//! copied to `target/fuzz/<target>-crash-N.bin`. Prints one table row per target.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::TensorData;
use whitebox::data::{self, Format, Split};
use whitebox::weights::{read_state_dict, safetensors_bytes, StateDict};

const TARGETS: [&str; 8] = [
    "idx",
    "cifar",
    "image-folder",
    "safetensors",
    "pth-zip",
    "pth-pickle",
    "config-json",
    "tokenizer-meta",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() > 2 && args[1] == "--child" {
        let (target, secs, seed) = (
            args[2].as_str(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        );
        child(target, secs, seed);
        return;
    }
    let secs: f64 = args.get(1).map_or(30.0, |s| s.parse().expect("seconds"));
    let seed: u64 = args.get(2).map_or(1, |s| s.parse().expect("seed"));
    let out = out_dir();
    std::fs::create_dir_all(&out).unwrap();
    println!(
        "{:<15} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8}",
        "target", "inputs", "ok", "errors", "panics", "crashes", "seconds"
    );
    let mut total = [0u64; 5];
    for t in TARGETS {
        let t0 = Instant::now();
        let mut stats = [0u64; 4]; // inputs, ok, errors, panics
        let mut crashes = 0u64;
        let mut round = 0u64;
        // restart the child after a crash until the target's time is used
        while t0.elapsed().as_secs_f64() < secs {
            let left = secs - t0.elapsed().as_secs_f64();
            let res = std::process::Command::new(&args[0])
                .args([
                    "--child",
                    t,
                    &left.to_string(),
                    &(seed.wrapping_mul(1000) + round).to_string(),
                ])
                .stderr(std::process::Stdio::null())
                .output()
                .expect("spawn child");
            round += 1;
            let text = String::from_utf8_lossy(&res.stdout);
            if let Some(line) = text.lines().rev().find(|l| l.starts_with("stats ")) {
                for (s, v) in stats.iter_mut().zip(line.split_whitespace().skip(1)) {
                    *s += v.parse::<u64>().unwrap_or(0);
                }
            }
            if !res.status.success() {
                crashes += 1;
                let cur = out.join(format!("{t}.current"));
                let keep = out.join(format!("{t}-crash-{crashes}.bin"));
                std::fs::copy(&cur, &keep).ok();
                eprintln!(
                    "{t}: child died ({}); input kept in {}",
                    res.status,
                    keep.display()
                );
                stats[0] += 1;
            }
        }
        println!(
            "{:<15} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8.0}",
            t,
            stats[0],
            stats[1],
            stats[2],
            stats[3],
            crashes,
            t0.elapsed().as_secs_f64()
        );
        for (a, b) in total.iter_mut().zip(stats.iter().chain([&crashes])) {
            *a += b;
        }
    }
    println!(
        "{:<15} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "all", total[0], total[1], total[2], total[3], total[4]
    );
}

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz")
}

/// One target for `secs` seconds in this process; prints `stats inputs ok errors panics`.
fn child(target: &str, secs: f64, seed: u64) {
    std::panic::set_hook(Box::new(|_| {})); // panics are counted, not printed
    let mut rng = StdRng::seed_from_u64(seed);
    let work = tempfile::tempdir().unwrap();
    let out = out_dir();
    let seeds = seeds(target);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.max(0.1));
    let mut stats = [0u64; 4];
    let mut panics = 0;
    while Instant::now() < deadline {
        for _ in 0..50 {
            let input = if target == "config-json" || target == "tokenizer-meta" {
                mutate_json(&seeds[rng.random_range(0..seeds.len())], &mut rng)
            } else {
                let base = &seeds[rng.random_range(0..seeds.len())];
                let other = &seeds[rng.random_range(0..seeds.len())];
                mutate(base, other, &mut rng)
            };
            std::fs::write(out.join(format!("{target}.current")), &input).unwrap();
            stats[0] += 1;
            let r = std::panic::catch_unwind(|| run(target, &input, work.path()));
            match r {
                Ok(Ok(())) => stats[1] += 1,
                Ok(Err(_)) => stats[2] += 1,
                Err(_) => {
                    stats[3] += 1;
                    panics += 1;
                    let keep = out.join(format!("{target}-panic-{seed}-{panics}.bin"));
                    std::fs::write(keep, &input).unwrap();
                }
            }
        }
    }
    println!("stats {} {} {} {}", stats[0], stats[1], stats[2], stats[3]);
    std::io::stdout().flush().unwrap();
}

/// Valid inputs of a target, made here.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "idx" => vec![idx_images(3, 4), idx_labels(3)],
        "cifar" => vec![
            (0..2 * 3073).map(|i| (i % 7) as u8).collect(),
            (0..2 * 3074).map(|i| (i % 5) as u8).collect(),
        ],
        "image-folder" => {
            let mut png = Vec::new();
            image::GrayImage::from_fn(4, 4, |x, y| image::Luma([(x * 16 + y) as u8]))
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            let mut jpg = Vec::new();
            image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 40, 7]))
                .write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
                .unwrap();
            vec![png, jpg]
        }
        "safetensors" => {
            let mut sd = StateDict::new();
            sd.insert(
                "a.weight".into(),
                TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            );
            sd.insert("b".into(), TensorData::new(vec![7i64, 8], [2]));
            let meta = std::collections::HashMap::from([(
                "config".to_string(),
                r#"{"dim": 4}"#.to_string(),
            )]);
            vec![safetensors_bytes(sd.iter(), Some(meta)).unwrap()]
        }
        "pth-zip" => fixtures().into_iter().collect(),
        "pth-pickle" => fixtures()
            .iter()
            .filter_map(|b| pickle_of(b))
            .collect(),
        "config-json" => [
            r#"{"image_size": 28, "patch_size": 7, "num_classes": 10, "dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "channels": 1}"#,
            r#"{"arch": "crate-alpha", "image_size": 32, "patch_size": 8, "num_classes": 10, "dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "channels": 3, "pool": "mean"}"#,
            r#"{"arch": "crate-lm-overcomplete", "vocab_size": 65, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32}"#,
            r#"{"arch": "gpt", "vocab_size": 65, "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "bias": true}"#,
            r#"{"vocab_size": 68, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 66, "type_vocab_size": 1, "layer_norm_eps": 1e-12, "pad_token_id": 1, "initializer_range": 0.02}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect::<Vec<_>>()
        .into_iter()
        .chain(mae_seed())
        .collect(),
        "tokenizer-meta" => vec![
            br#"{"tokenizer": {"kind": "char", "chars": "\n !,.:;?ABCabc"}, "corpus": "x", "train_tokens": 4, "val_tokens": 2}"#.to_vec(),
            br#"{"tokenizer": {"kind": "gpt2"}, "corpus": "x", "train_tokens": 4, "val_tokens": 2}"#.to_vec(),
        ],
        other => panic!("unknown target {other}"),
    }
}

fn mae_seed() -> Vec<Vec<u8>> {
    let c = whitebox::model::mae::MaeConfig::resolve("mae-fmnist").unwrap();
    vec![serde_json::to_vec(&c).unwrap()]
}

fn fixtures() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    [
        "crate_B_model.pth",
        "crate_alpha_official.pth",
        "crate_lm_nanogpt.pt",
    ]
    .iter()
    .filter_map(|f| std::fs::read(dir.join(f)).ok())
    .collect()
}

/// The `data.pkl` of a zip checkpoint.
fn pickle_of(zip_bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).ok()?;
    let name = z
        .file_names()
        .find(|n| n.ends_with("data.pkl"))?
        .to_string();
    let mut b = Vec::new();
    z.by_name(&name).ok()?.read_to_end(&mut b).ok()?;
    Some(b)
}

/// `zip_bytes` with its `data.pkl` replaced by `pkl` (other entries kept).
fn with_pickle(zip_bytes: &[u8], pkl: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut b = Vec::new();
        f.read_to_end(&mut b).unwrap();
        out.start_file(name.as_str(), opts).unwrap();
        out.write_all(if name.ends_with("data.pkl") { pkl } else { &b })
            .unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn idx_images(n: u32, side: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, side, side] {
        v.extend(d.to_be_bytes());
    }
    v.extend((0..n * side * side).map(|i| i as u8));
    v
}

fn idx_labels(n: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend(n.to_be_bytes());
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

/// Run one reader on `input` (files written under `dir`).
fn run(target: &str, input: &[u8], dir: &Path) -> anyhow::Result<()> {
    let fresh = |name: &str| -> PathBuf {
        let d = dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    match target {
        "idx" => {
            let d = fresh("idx");
            // the input is the images file or the labels file; the other one is valid
            let (img, lab) = if input.get(3) == Some(&1) {
                (idx_images(3, 4), input.to_vec())
            } else {
                (input.to_vec(), idx_labels(3))
            };
            std::fs::write(d.join("train-images-idx3-ubyte"), img)?;
            std::fs::write(d.join("train-labels-idx1-ubyte"), lab)?;
            let s = data::load(&d, Format::Idx, Split::Train)?;
            s.check_labels(s.num_classes())?;
        }
        "cifar" => {
            let d = fresh("cifar");
            // the same bytes as a CIFAR-10 and as a CIFAR-100 test file: Ok if either reads
            std::fs::write(d.join("test_batch.bin"), input)?;
            std::fs::write(d.join("test.bin"), input)?;
            let ten = data::load(&d, Format::Cifar10, Split::Test);
            let hundred = data::load(&d, Format::Cifar100, Split::Test);
            if ten.is_err() {
                hundred?;
            }
        }
        "image-folder" => {
            let d = fresh("folder");
            for split in ["train", "test"] {
                std::fs::create_dir_all(d.join(split).join("a"))?;
                std::fs::write(d.join(split).join("a/x.png"), input)?;
            }
            let s = data::load(&d, Format::Folder, Split::Train)?;
            data::load(&d, Format::Folder, Split::Test)?;
            whitebox::data::Normalization::from_set(&s).validate(s.channels)?;
        }
        "safetensors" => {
            let p = dir.join("w.safetensors");
            std::fs::write(&p, input)?;
            whitebox::weights::read_safetensors_all(&p)?;
            read_state_dict(&p)?;
        }
        "pth-zip" => {
            let p = dir.join("w.pth");
            std::fs::write(&p, input)?;
            read_state_dict(&p)?;
        }
        "pth-pickle" => {
            static BASE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let base = BASE.get_or_init(|| fixtures().remove(0));
            let p = dir.join("w.pth");
            std::fs::write(&p, with_pickle(base, input))?;
            read_state_dict(&p)?;
        }
        "config-json" => {
            let text = std::str::from_utf8(input)?;
            let results = [
                serde_json::from_str::<whitebox::model::CrateConfig>(text)
                    .map_err(anyhow::Error::from)
                    .and_then(|c| c.validate().map(|_| c.param_count())),
                whitebox::model::mae::MaeConfig::from_json(text).map(|c| c.param_count()),
                whitebox::model::lm::LmConfig::from_json(text).map(|c| c.param_count()),
                serde_json::from_str::<whitebox::model::bert::BertConfig>(text)
                    .map_err(anyhow::Error::from)
                    .and_then(|c| c.validate().map(|_| 0)),
            ];
            if results.iter().all(|r| r.is_err()) {
                anyhow::bail!("no config kind accepts it");
            }
        }
        "tokenizer-meta" => {
            let d = fresh("tok");
            std::fs::write(d.join("meta.json"), input)?;
            let m = whitebox::text::read_meta(&d)?;
            let ids = m.tokenizer.encode("abc").unwrap_or_default();
            m.tokenizer.decode(&ids)?;
        }
        other => panic!("unknown target {other}"),
    }
    Ok(())
}

const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    0x8000_0000,
    u64::MAX,
    1 << 40,
    65536,
];

/// A byte-level mutation of `base` (sometimes spliced with `other`).
fn mutate(base: &[u8], other: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len().max(1);
        match rng.random_range(0..8) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            2 => {
                let w = [1usize, 2, 4, 8][rng.random_range(0..4)];
                let val = INTERESTING[rng.random_range(0..INTERESTING.len())].to_le_bytes();
                let big = rng.random_bool(0.5);
                if v.len() >= w {
                    let i = rng.random_range(0..=v.len() - w);
                    for k in 0..w {
                        v[i + k] = if big { val[w - 1 - k] } else { val[k] };
                    }
                }
            }
            3 => {
                let i = rng.random_range(0..=v.len());
                let n = rng.random_range(1..=16);
                let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, ins);
            }
            4 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                let n = rng.random_range(1..=(v.len() - i).min(64));
                v.drain(i..i + n);
            }
            5 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                let n = rng.random_range(1..=(v.len() - i).min(64));
                let dup = v[i..i + n].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, dup);
            }
            6 => v.truncate(rng.random_range(0..len)),
            _ if !other.is_empty() => {
                let cut = rng.random_range(0..=v.len());
                let from = rng.random_range(0..other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    v
}

const JSON_VALUES: [&str; 16] = [
    "0",
    "-1",
    "1",
    "2",
    "4000000000",
    "1e308",
    "-1e308",
    "18446744073709551615",
    "0.5",
    "1e-300",
    "null",
    "true",
    "\"\"",
    "\"mean\"",
    "[]",
    "{}",
];

/// A token-level mutation of a JSON document: a value replaced by an interesting one, a key
/// dropped or duplicated, or a byte-level edit.
fn mutate_json(base: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let text = String::from_utf8_lossy(base).into_owned();
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return mutate(base, base, rng);
    };
    let keys: Vec<String> = m.keys().cloned().collect();
    for _ in 0..rng.random_range(1..=3) {
        let k = &keys[rng.random_range(0..keys.len())];
        match rng.random_range(0..5) {
            0 | 1 => {
                let v = JSON_VALUES[rng.random_range(0..JSON_VALUES.len())];
                m.insert(k.clone(), serde_json::from_str(v).unwrap());
            }
            2 => {
                m.remove(k);
            }
            3 => {
                if let Some(serde_json::Value::Object(inner)) = m.get_mut(k) {
                    if let Some(ik) = inner.keys().next().cloned() {
                        let s: String = (0..rng.random_range(0..6))
                            .map(|_| char::from_u32(rng.random_range(0..0x3000)).unwrap_or('x'))
                            .collect();
                        inner.insert(ik, serde_json::Value::String(s));
                    }
                }
            }
            _ => {
                let bytes = serde_json::to_vec(&m).unwrap();
                return mutate(&bytes, &bytes, rng);
            }
        }
    }
    let sorted: BTreeMap<_, _> = m.into_iter().collect();
    serde_json::to_vec(&sorted).unwrap()
}
