//! The white-box pictures: bicubic position-embedding resampling against torch, PCA, attention
//! maps that must peak where a constructed token is, picture sizes, the measure curves, the
//! per-epoch measures of a trained toy model (R^c falls and sparsity rises with depth), the HTML
//! report, and clear errors on bad input.

use crate::common;

use burn::tensor::TensorData;
use common::{fails, ok, write_idx};
use std::path::Path;
use whitebox::model::posembed::{at_resolution, bicubic_grid};
use whitebox::model::CrateConfig;
use whitebox::viz::maps::pca;
use whitebox::weights::{collect_state_dict, write_safetensors, StateDict};
use whitebox::CpuBackend as B;

const TINY: &str = r#"{"image_size": 28, "patch_size": 7, "num_classes": 10, "dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "channels": 1}"#;

fn tiny_config() -> CrateConfig {
    serde_json::from_str(TINY).unwrap()
}

/// Weights of the tiny model, initialised at random, under the official keys.
fn tiny_weights() -> StateDict {
    collect_state_dict(&tiny_config().init::<B>(&Default::default()))
}

fn save(dir: &Path, sd: &StateDict) -> (String, String) {
    let w = dir.join("w.safetensors");
    write_safetensors(&w, sd, None).unwrap();
    let c = dir.join("tiny.json");
    std::fs::write(&c, TINY).unwrap();
    (w.display().to_string(), c.display().to_string())
}

fn png(dir: &Path, name: &str, size: u32, f: impl Fn(u32, u32) -> u8) -> String {
    let p = dir.join(name);
    image::GrayImage::from_fn(size, size, |x, y| image::Luma([f(x, y)]))
        .save(&p)
        .unwrap();
    p.display().to_string()
}

fn put(sd: &mut StateDict, key: &str, shape: Vec<usize>, v: Vec<f32>) {
    assert!(sd.contains_key(key), "{key}");
    sd.insert(key.to_string(), TensorData::new(v, shape));
}

#[test]
fn bicubic_resampling_matches_torch() {
    // torch 2.15: F.interpolate(x, scale_factor=((g+0.1)/3,)*2, mode="bicubic",
    // align_corners=False) of the 3×3×2 grid v[k] = sin(0.7·k), as the official
    // interpolate_pos_encoding calls it.
    let v: Vec<f32> = (0..18).map(|k| (0.7 * k as f32).sin()).collect();
    let up = bicubic_grid(&v, 3, 5, 2);
    // torch's [1, 2, 5, 5] output permuted to our [5, 5, 2] layout
    let torch_up = [
        -0.018154, 0.78869, 0.531541, 0.951936, 1.136307, 0.972031, 0.754111, 0.149623, 0.236292,
        -0.595651, -0.516903, -0.107106, -0.152684, 0.222608, 0.349438, 0.604682, 0.546921,
        0.461332, 0.579893, 0.222408, -0.91567, -1.07261, -0.86864, -0.657509, -0.633282, 0.011878,
        0.150084, 0.668583, 0.786688, 1.066306, 0.097542, -0.360715, -0.229274, -0.495839,
        -0.606257, -0.571147, -0.45647, -0.15119, -0.213223, 0.248111, 1.12343, 0.557444, 0.551805,
        -0.097016, -0.298958, -0.924675, -0.887587, -0.947991, -1.171867, -0.730611,
    ];
    assert_eq!(up.len(), 50);
    for (i, (a, b)) in up.iter().zip(torch_up).enumerate() {
        assert!((a - b).abs() < 2e-6, "up[{i}] = {a}, torch {b}");
    }
    let down = bicubic_grid(&v, 3, 2, 2);
    let torch_down = [
        -0.038259, 0.401844, 0.573278, 0.239108, 0.062363, -0.318134, -0.501717, -0.230499,
    ];
    for (i, (a, b)) in down.iter().zip(torch_down).enumerate() {
        assert!((a - b).abs() < 2e-6, "down[{i}] = {a}, torch {b}");
    }
}

#[test]
fn position_embedding_is_resampled_with_the_cls_slot_kept() {
    let model = tiny_config().init::<B>(&Default::default());
    let before: Vec<f32> = model.pos_embedding.val().into_data().to_vec().unwrap();
    let same = at_resolution(model.clone(), 28, 28).unwrap();
    let same: Vec<f32> = same.pos_embedding.val().into_data().to_vec().unwrap();
    assert_eq!(before, same, "no-op at the trained size");
    let big = at_resolution(model.clone(), 28, 56).unwrap();
    assert_eq!(big.pos_embedding.val().dims(), [1, 65, 16]);
    let after: Vec<f32> = big.pos_embedding.val().into_data().to_vec().unwrap();
    assert_eq!(after[..16], before[..16], "cls slot kept");
    let err = at_resolution(model, 28, 30).err().unwrap().to_string();
    assert!(err.contains("multiple of the patch size"), "{err}");
}

#[test]
fn pca_recovers_the_leading_direction() {
    let u = [1.0f32, 2.0, 0.0, -1.0, 0.5];
    let mut seed = 12345u64;
    let mut noise = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
    };
    let t: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let x: Vec<f32> = t
        .iter()
        .flat_map(|&ti| u.iter().map(|&uj| ti * uj + noise()).collect::<Vec<_>>())
        .collect();
    let (proj, var) = pca(&x, 200, 5, 3).unwrap();
    let p0: Vec<f32> = (0..200).map(|r| proj[r * 3]).collect();
    let (mt, mp) = (
        t.iter().sum::<f32>() / 200.0,
        p0.iter().sum::<f32>() / 200.0,
    );
    let cov: f32 = t.iter().zip(&p0).map(|(a, b)| (a - mt) * (b - mp)).sum();
    let st: f32 = t.iter().map(|a| (a - mt).powi(2)).sum::<f32>().sqrt();
    let sp: f32 = p0.iter().map(|b| (b - mp).powi(2)).sum::<f32>().sqrt();
    assert!(cov / (st * sp) > 0.9999, "corr {}", cov / (st * sp));
    assert!(var[0] > 1e4 * var[1], "explained variances {var:?}");
    assert!(var[1] >= var[2]);
}

/// Weights whose cls token attends to one patch token `k`: every patch embeds to 0, every patch
/// position is `u`, token k's is `u + v` and the cls slot's is `v` (u ⟂ v, both zero-mean), so
/// after LN₁ the cls score of a token grows with its share of `v`.
fn peaked_weights(k: usize) -> StateDict {
    let mut sd = tiny_weights();
    let d = 16;
    put(
        &mut sd,
        "to_patch_embedding.2.weight",
        vec![d, 49],
        vec![0.0; d * 49],
    );
    put(&mut sd, "to_patch_embedding.2.bias", vec![d], vec![0.0; d]);
    put(&mut sd, "to_patch_embedding.3.bias", vec![d], vec![0.0; d]);
    put(&mut sd, "cls_token", vec![1, 1, d], vec![0.0; d]);
    let v: Vec<f32> = (0..d)
        .map(|i| if i % 2 == 0 { 3.0 } else { -3.0 })
        .collect();
    let u: Vec<f32> = (0..d).map(|i| if i % 4 < 2 { 3.0 } else { -3.0 }).collect();
    let mut pos = u.repeat(17);
    pos[..d].copy_from_slice(&v);
    for (p, vi) in pos[(k + 1) * d..(k + 2) * d].iter_mut().zip(&v) {
        *p += vi;
    }
    put(&mut sd, "pos_embedding", vec![1, 17, d], pos);
    let eye: Vec<f32> = (0..d * d)
        .map(|i| if i / d == i % d { 1.0 } else { 0.0 })
        .collect();
    put(
        &mut sd,
        "transformer.layers.0.0.fn.qkv.weight",
        vec![d, d],
        eye,
    );
    sd
}

/// Brightness (R+G; viridis runs from dark purple to yellow) of the mean-head cell of row 0 at
/// the centre of each of the `g × g` patches.
fn mean_cell_heat(path: &str, cell: u32, g: u32) -> Vec<u32> {
    let img = image::open(path).unwrap().to_rgb8();
    let x0 = 4 + cell + 4; // PAD, the input cell, PAD
    let y0 = 4;
    let step = cell / g;
    (0..g * g)
        .map(|t| {
            let (r, c) = (t / g, t % g);
            let p = img.get_pixel(x0 + c * step + step / 2, y0 + r * step + step / 2);
            p[0] as u32 + p[1] as u32
        })
        .collect()
}

fn argmax(v: &[u32]) -> usize {
    (0..v.len()).max_by_key(|&i| v[i]).unwrap()
}

#[test]
fn attention_map_peaks_at_the_constructed_token() {
    let dir = tempfile::tempdir().unwrap();
    let k = 6; // row 1, column 2 of the 4×4 patch grid
    let (w, c) = save(dir.path(), &peaked_weights(k));
    let img = png(dir.path(), "black.png", 28, |_, _| 0);
    let out = dir.path().join("att.png");
    let out_s = out.display().to_string();
    ok(&[
        "attention",
        "--weights",
        &w,
        "--config",
        &c,
        "--out",
        &out_s,
        &img,
        &img,
    ]);
    let pic = image::open(&out).unwrap();
    // cells of 140 px (5 × 28); per row: input, mean, 2 heads; 4 px padding
    assert_eq!(
        (pic.width(), pic.height()),
        (4 * 140 + 5 * 4, 2 * 140 + 3 * 4)
    );
    let heat = mean_cell_heat(&out_s, 140, 4);
    assert_eq!(argmax(&heat), k, "heat per patch {heat:?}");
    let others = heat.iter().enumerate().filter(|(i, _)| *i != k);
    assert!(others.clone().all(|(_, h)| *h + 100 < heat[k]), "{heat:?}");

    // at twice the resolution the interpolated position embedding still points there
    let img56 = png(dir.path(), "black56.png", 56, |_, _| 0);
    ok(&[
        "attention",
        "--weights",
        &w,
        "--config",
        &c,
        "--size",
        "56",
        "--out",
        &out_s,
        &img56,
    ]);
    let pic = image::open(&out).unwrap();
    assert_eq!((pic.width(), pic.height()), (4 * 168 + 5 * 4, 168 + 2 * 4));
    let heat = mean_cell_heat(&out_s, 168, 8);
    let peak = argmax(&heat);
    assert_eq!(
        (peak / 8 / 2, peak % 8 / 2),
        (k / 4, k % 4),
        "heat {heat:?}"
    );
}

#[test]
fn pca_picture_has_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let (w, c) = save(dir.path(), &tiny_weights());
    let a = png(dir.path(), "a.png", 28, |x, y| {
        ((x * 9 + y * 3) % 256) as u8
    });
    let b = png(dir.path(), "b.png", 40, |x, y| ((x * y) % 256) as u8);
    let out = dir.path().join("pca.png");
    let out_s = out.display().to_string();
    let so = ok(&[
        "pca",
        "--weights",
        &w,
        "--config",
        &c,
        "--mask-threshold",
        "0.5",
        "--out",
        &out_s,
        &a,
        &b,
    ]);
    assert!(so.contains("pca.png"), "{so}");
    let pic = image::open(&out).unwrap().to_rgb8();
    assert_eq!(
        (pic.width(), pic.height()),
        (2 * 140 + 3 * 4, 2 * 140 + 3 * 4)
    );
    // the mask blacks out some but not all of the PCA cells
    let cell: Vec<_> = (0..140)
        .flat_map(|y| (0..140).map(move |x| (x, y)))
        .map(|(x, y)| *pic.get_pixel(4 + 140 + 4 + x, 4 + y))
        .collect();
    let black = cell.iter().filter(|p| p.0 == [0, 0, 0]).count();
    assert!(black > 0 && black < cell.len(), "{black} black pixels");
}

/// 28×28 images of 4 classes: class c draws a ramp into two patches chosen by c, over noise
/// (a texture, since CRATE's patch LayerNorm removes each patch's brightness).
fn structured_idx(dir: &Path, prefix: &str, n: usize, seed: u64) {
    let mut s = seed;
    let mut rnd = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u32
    };
    let mut pixels = vec![0u8; n * 784];
    let mut labels = vec![0u8; n];
    for i in 0..n {
        let c = (rnd() % 4) as usize;
        labels[i] = c as u8;
        let lit = [c * 5 % 16, (c * 3 + 7) % 16];
        for y in 0..28 {
            for x in 0..28 {
                let patch = (y / 7) * 4 + x / 7;
                pixels[i * 784 + y * 28 + x] = if lit.contains(&patch) {
                    (x % 7) as u32 * 35 + rnd() % 10
                } else {
                    20 + rnd() % 50
                } as u8;
            }
        }
    }
    common::write_idx_files(dir, prefix, &pixels, &labels, false);
}

#[test]
fn trained_toy_compresses_and_sparsifies_with_depth() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    structured_idx(&data, "train", 512, 1);
    structured_idx(&data, "t10k", 64, 2);
    let cfg = dir.path().join("toy.json");
    std::fs::write(
        &cfg,
        r#"{"image_size": 28, "patch_size": 7, "num_classes": 10, "dim": 32, "depth": 4, "heads": 4, "dim_head": 8, "channels": 1}"#,
    )
    .unwrap();
    let run = dir.path().join("run");
    let (data_s, cfg_s, run_s) = (
        data.display().to_string(),
        cfg.display().to_string(),
        run.display().to_string(),
    );
    ok(&[
        "train",
        "--config",
        &cfg_s,
        "--data",
        &data_s,
        "--run-dir",
        &run_s,
        "--epochs",
        "10",
        "--batch-size",
        "32",
        "--lr",
        "2e-3",
        "--warmup-epochs",
        "0.5",
        "--crop-padding",
        "0",
        "--measure-every",
        "5",
        "--json",
    ]);
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(metrics.len(), 10);
    let measured: Vec<usize> = metrics
        .iter()
        .filter(|m| m.get("measures").is_some())
        .map(|m| m["epoch"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(measured, vec![5, 10]);
    let last = &metrics[9];
    assert!(last["test_acc"].as_f64().unwrap() > 0.9, "{last}");
    let m = &last["measures"];
    let f = |k: &str| -> Vec<f64> {
        m[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (rc, nz) = (f("rc_mean"), f("sparsity_mean"));
    assert_eq!((rc.len(), nz.len()), (4, 4));
    assert!(
        rc[3] < rc[0],
        "R^c should fall from the input to the last layer: {rc:?}"
    );
    assert!(
        nz[3] < nz[0],
        "the last layer's codes should be sparser than the first's: {nz:?}"
    );

    // the run report: one self-contained page with plots and pictures
    let so = ok(&["report", &run_s, "--data", &data_s, "--images", "3"]);
    assert!(so.contains("10 epochs"), "{so}");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "training and measure plots"
    );
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 2);
    assert!(!html.contains("src=\"http") && !html.contains("<script"));
    assert!(html.contains("epoch 5") && html.contains("epoch 10"));
}

#[test]
fn measure_draws_the_curves_as_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (w, c) = save(dir.path(), &tiny_weights());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, "t10k", 8, false);
    write_idx(&data, "train", 8, false);
    let prefix = dir.path().join("curves");
    ok(&[
        "measure",
        "--weights",
        &w,
        "--config",
        &c,
        "--data",
        data.to_str().unwrap(),
        "--plot",
        prefix.to_str().unwrap(),
    ]);
    let p = image::open(prefix.with_extension("png")).unwrap();
    assert_eq!((p.width(), p.height()), (1100, 420));
    let svg = std::fs::read_to_string(prefix.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Compression") && svg.contains("Sparsity"));
}

#[test]
fn picture_commands_fail_clearly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (w, c) = save(dir.path(), &tiny_weights());
    let img = png(dir.path(), "a.png", 28, |_, _| 9);
    let out = dir.path().join("o.png").display().to_string();
    let base = [
        "--weights",
        w.as_str(),
        "--config",
        c.as_str(),
        "--out",
        out.as_str(),
    ];
    let run = |cmd: &str, extra: &[&str]| {
        let mut a = vec![cmd];
        a.extend(base);
        a.extend(extra);
        fails(&a)
    };
    let e = run("attention", &["--layer", "3", &img]);
    assert!(
        e.contains("layer 3 is out of range") && e.contains("1 layers"),
        "{e}"
    );
    let junk = dir.path().join("junk.png");
    std::fs::write(&junk, b"not an image").unwrap();
    let e = run("pca", &[junk.to_str().unwrap()]);
    assert!(e.contains("junk.png"), "{e}");
    let e = run("attention", &["--size", "30", &img]);
    assert!(e.contains("multiple of the patch size 7"), "{e}");
    let e = run("pca", &[dir.path().join("missing.png").to_str().unwrap()]);
    assert!(e.contains("missing.png"), "{e}");

    // an empty test split and a run folder without metrics
    let data = dir.path().join("empty");
    std::fs::create_dir_all(&data).unwrap();
    write_idx(&data, "t10k", 0, false);
    write_idx(&data, "train", 0, false);
    let e = fails(&[
        "measure",
        "--weights",
        &w,
        "--config",
        &c,
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(e.contains("empty") || e.contains("no images"), "{e}");
    let e = fails(&["report", dir.path().to_str().unwrap()]);
    assert!(e.contains("metrics.jsonl"), "{e}");
}
