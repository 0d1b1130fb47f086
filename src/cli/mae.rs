//! CRATE-MAE commands: `forward` on an MAE config, `mae train`, `mae reconstruct`, `probe`.

use anyhow::{bail, ensure, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::commands::{
    fresh_state, given, is_safetensors, load_split, recipe_from, resume_run, stored_normalization,
};
use super::{ForwardArgs, MaeTrainArgs, ProbeArgs, ReconstructArgs, WeightArgs};
use crate::data::{self, batch_rng, Augment, Batcher, ImageSet, Normalization, Split};
use crate::model::mae::{unpatchify, CrateMae, MaeConfig, ARCH_MAE};
use crate::model::{Activations, CrateBackend};
use crate::train::mae::{evaluate_mae, Reconstruct};
use crate::train::probe::{self, ProbeRecipe};
use crate::train::ssl::extract_features;
use crate::train::{self, Checkpoint, RunOptions, TrainOptimizer, TrainRun};
use crate::weights::{
    apply_state_dict, canonical_ids, check_finite, read_input_tensor, read_safetensors_all,
    read_state_dict, safetensors_bytes, write_atomic, StateDict,
};
use crate::{InferBackend, TrainBackend};

/// The config JSON that goes with a weights file: `--config` (file), else the safetensors
/// metadata, else `config.json` beside the weights.
pub(super) fn config_json(w: &WeightArgs) -> Option<serde_json::Value> {
    let text = match &w.config {
        Some(spec) if Path::new(spec).is_file() => std::fs::read_to_string(spec).ok()?,
        Some(_) => return None,
        None => {
            let meta = is_safetensors(&w.weights)
                .then(|| read_safetensors_all(&w.weights).ok())
                .flatten()
                .map(|(_, m)| m);
            match meta.and_then(|m| m.get("config").cloned()) {
                Some(c) => c,
                None => std::fs::read_to_string(w.weights.with_file_name("config.json")).ok()?,
            }
        }
    };
    serde_json::from_str(&text).ok()
}

/// Whether `--weights`/`--config` describe a CRATE-MAE (`"arch": "crate-mae"` or an MAE preset).
pub fn is_mae(w: &WeightArgs) -> bool {
    if let Some(spec) = &w.config {
        if MaeConfig::preset(spec).is_some() {
            return true;
        }
    }
    config_json(w).is_some_and(|v| v["arch"] == ARCH_MAE)
}

/// The MAE config stored with MAE weights at `path` (metadata or `config.json` beside them).
pub fn mae_config_of(path: &Path) -> Result<MaeConfig> {
    let w = WeightArgs {
        weights: path.to_path_buf(),
        config: None,
        strict: true,
    };
    let v = config_json(&w).with_context(|| {
        format!("{}: a CRATE-MAE checkpoint without a stored config (metadata or config.json beside it)", path.display())
    })?;
    MaeConfig::from_json(&v.to_string()).with_context(|| format!("config of {}", path.display()))
}

/// `Some` MAE config when `spec` is an MAE preset or a JSON file with `"arch": "crate-mae"`.
pub fn mae_config_spec(spec: &str) -> Result<Option<MaeConfig>> {
    if let Some(c) = MaeConfig::preset(spec) {
        return Ok(Some(c));
    }
    let path = Path::new(spec);
    Ok(if super::commands::json_file_has_arch(path, ARCH_MAE) {
        Some(MaeConfig::from_json_file(path)?)
    } else {
        None
    })
}

pub struct LoadedMae<B: CrateBackend> {
    pub config: MaeConfig,
    pub model: CrateMae<B>,
    pub meta: HashMap<String, String>,
}

/// Reject a state dict that is not laid out as the official `MaskedAutoencoderViT` (§7.2).
fn check_mae_layout(sd: &StateDict, path: &Path) -> Result<()> {
    let want = [
        "decoder_pred.weight",
        "mask_token",
        "blocks.0.layers.0.1.fn.weight",
    ];
    if want.iter().all(|k| sd.contains_key(*k)) {
        return Ok(());
    }
    let mut seen: Vec<&String> = sd.keys().collect();
    seen.sort();
    seen.truncate(4);
    bail!(
        "{}: not a CRATE-MAE checkpoint: expected the official keys ({}, …) but found {:?}{}",
        path.display(),
        want.join(", "),
        seen,
        if sd.contains_key("mlp_head.1.weight") {
            " — this looks like a classifier; use it without \"arch\": \"crate-mae\""
        } else {
            ""
        }
    )
}

pub fn load_mae<B: CrateBackend>(w: &WeightArgs, device: &B::Device) -> Result<LoadedMae<B>> {
    let meta = if is_safetensors(&w.weights) {
        read_safetensors_all(&w.weights)?.1
    } else {
        HashMap::new()
    };
    let config = match &w.config {
        Some(spec) => MaeConfig::resolve(spec)?,
        None => {
            let v = config_json(w).with_context(|| {
                format!(
                    "{}: no config stored with these weights; pass --config PRESET|FILE.json",
                    w.weights.display()
                )
            })?;
            MaeConfig::from_json(&v.to_string())
                .with_context(|| format!("config of {}", w.weights.display()))?
        }
    };
    let sd = read_state_dict(&w.weights)?;
    check_mae_layout(&sd, &w.weights)?;
    let (model, report) = apply_state_dict(config.init::<B>(device), &sd, w.strict)
        .with_context(|| format!("loading {}", w.weights.display()))?;
    if !report.is_clean() {
        tracing::warn!(
            "non-strict load of {}: {}",
            w.weights.display(),
            report.describe()
        );
    }
    Ok(LoadedMae {
        config,
        model,
        meta,
    })
}

/// `whitebox forward` on a CRATE-MAE: reads `input` and optional `noise`, writes `pred`, `mask`,
/// `ids_restore`, `ids_keep`, `ids_shuffle`, `recon_img` and `loss` (golden names).
pub fn forward(a: ForwardArgs) -> Result<()> {
    let device = Default::default();
    let l = load_mae::<InferBackend>(&a.weights, &device)?;
    let c = &l.config;
    let (tensors, _) = read_safetensors_all(&a.input)?;
    let input = read_input_tensor(&a.input, "input", &[c.in_chans, c.img_size, c.img_size])?;
    let b = input.shape[0];
    let noise = match tensors.get("noise") {
        Some(t) => {
            ensure!(
                t.shape.to_vec() == [b, c.num_patches()],
                "{}: `noise` has shape {:?}, expected [{b}, {}]",
                a.input.display(),
                t.shape.to_vec(),
                c.num_patches()
            );
            check_finite(t).with_context(|| format!("{}: `noise`", a.input.display()))?;
            Some(t.clone().convert::<f32>().to_vec::<f32>().unwrap())
        }
        None => None,
    };
    let x = Tensor::<InferBackend, 4>::from_data(input.clone().convert::<f32>(), &device);
    let masking = l
        .model
        .masking(b, noise.as_deref(), &mut StdRng::seed_from_u64(0));
    let mut acts = if a.activations {
        Activations::on()
    } else {
        Activations::off()
    };
    let out = l.model.forward_with(x, masking, &mut acts);
    let m = &out.masking;
    let (len, keep) = (m.len, m.len_keep);
    let mut sd = StateDict::new();
    let recon = unpatchify(out.pred.clone(), c.patch_size, c.in_chans);
    sd.insert("pred".into(), out.pred.into_data().convert::<f32>());
    sd.insert("recon_img".into(), recon.into_data().convert::<f32>());
    let loss: f32 = out.loss.into_scalar().elem();
    sd.insert(
        "loss".into(),
        TensorData::new(vec![loss], Vec::<usize>::new()),
    );
    sd.insert("mask".into(), TensorData::new(m.mask.clone(), [b, len]));
    for (k, v, w) in [
        ("ids_restore", &m.ids_restore, len),
        ("ids_shuffle", &m.ids_shuffle, len),
        ("ids_keep", &m.ids_keep, keep),
    ] {
        sd.insert(k.into(), TensorData::new(v.clone(), [b, w]));
    }
    for cap in acts.into_vec() {
        sd.insert(cap.name, TensorData::new(cap.values, cap.shape));
    }
    write_atomic(&a.output, &safetensors_bytes(sd.iter(), None)?)?;
    println!(
        "wrote {} tensors to {} (loss {loss:.6})",
        sd.len(),
        a.output.display()
    );
    Ok(())
}

fn check_mae_shape(cfg: &MaeConfig, set: &ImageSet, what: &Path) -> Result<()> {
    ensure!(
        set.channels == cfg.in_chans && set.height == cfg.img_size && set.width == cfg.img_size,
        "{}: images are {}×{}×{} but the MAE expects {}×{}×{} (channels × height × width)",
        what.display(),
        set.channels,
        set.height,
        set.width,
        cfg.in_chans,
        cfg.img_size,
        cfg.img_size
    );
    Ok(())
}

/// `whitebox mae train`: masked-autoencoder pre-training with the classifier's training machinery.
pub fn train(m: MaeTrainArgs) -> Result<()> {
    let a = &m.train;
    let device = Default::default();
    let t_start = Instant::now();
    ensure!(
        a.measure_every == 0,
        "--measure-every measures classifier layers; it is not available for `mae train`"
    );
    let _lock = crate::train::checkpoint::RunLock::acquire(&a.run_dir)?;
    let config_flags = |run: &MaeConfig| -> Result<Vec<(&'static str, Option<String>, String)>> {
        let g = &a.given;
        let mut v = vec![
            (
                "--mask-ratio",
                m.mask_ratio.map(|r| r.to_string()),
                run.mask_ratio.to_string(),
            ),
            (
                "--norm-pix-loss",
                given(g, "norm_pix_loss", m.norm_pix_loss),
                run.norm_pix_loss.to_string(),
            ),
        ];
        if g.iter().any(|f| f == "config") {
            let spec = if a.config == "fmnist" {
                "mae-fmnist"
            } else {
                a.config.as_str()
            };
            let mut c = MaeConfig::resolve(spec)?;
            (c.mask_ratio, c.norm_pix_loss) = (run.mask_ratio, run.norm_pix_loss);
            if serde_json::to_value(&c)? != serde_json::to_value(run)? {
                v.push((
                    "--config",
                    Some(a.config.clone()),
                    "another model (its checkpoint/config.json)".into(),
                ));
            }
        }
        Ok(v)
    };
    let resumed = resume_run(a, MaeConfig::from_json_file, config_flags, |c| {
        c.init::<TrainBackend>(&device)
    })?;
    let (config, state, model, optim) = if let Some(r) = resumed {
        r
    } else {
        let spec = if a.config == "fmnist" {
            "mae-fmnist"
        } else {
            a.config.as_str()
        };
        let mut config = MaeConfig::resolve(spec)?;
        if let Some(r) = m.mask_ratio {
            config.mask_ratio = r;
        }
        config.norm_pix_loss |= m.norm_pix_loss;
        config.validate()?;
        <TrainBackend as burn::tensor::backend::Backend>::seed(&device, a.seed);
        let mut model = canonical_ids(config.init::<TrainBackend>(&device));
        if let Some(p) = &a.init_from {
            let (mm, report) = apply_state_dict(model, &read_state_dict(p)?, false)?;
            if !report.is_clean() {
                tracing::warn!("--init-from {}: {}", p.display(), report.describe());
            }
            model = mm;
        }
        let recipe = recipe_from(a, config.img_size)?;
        let optim = TrainOptimizer::new(recipe.optim.clone(), &model);
        (config, fresh_state(recipe, a), model, optim)
    };
    let mut state = state;
    let train_set = load_split(&a.data, Split::Train, state.train_limit)?;
    let test_set = load_split(&a.data, Split::Test, state.test_limit)?;
    check_mae_shape(&config, &train_set, &a.data.data)?;
    check_mae_shape(&config, &test_set, &a.data.data).context("test split")?;
    state.fill_from(&train_set);
    std::fs::create_dir_all(&a.run_dir)
        .with_context(|| format!("cannot create {}", a.run_dir.display()))?;
    tracing::info!(
        "MAE pre-training {} params on {} images ({} test) from {}, mask ratio {}, {} epochs",
        config.param_count(),
        train_set.len(),
        test_set.len(),
        a.data.data.display(),
        config.mask_ratio,
        state.recipe.epochs
    );
    // masked-patch loss of the starting weights, for the log and the JSON summary
    let start_loss = if state.step == 0 {
        Some(
            evaluate_mae(
                &model.valid(),
                &test_set,
                &state.normalization,
                500,
                &device,
            )?
            .loss,
        )
    } else {
        None
    };
    let options = RunOptions {
        show_progress: !a.json,
        stop_after: a.stop_after,
        cancel: train::Cancel::on_signals(),
        ..RunOptions::in_dir(&a.run_dir)
    };
    let run = TrainRun::with_options(options, &train_set, &test_set);
    let task = Reconstruct { config };
    let last = train::fit(&run, &task, model, optim, state, &device)?.last;
    let dir = Checkpoint::dir(&a.run_dir);
    let final_state = Checkpoint::load_state(&dir)?;
    let loss = match &last {
        Some(m) => m.test_loss,
        None => {
            let w = WeightArgs {
                weights: dir.join("model.safetensors"),
                config: None,
                strict: true,
            };
            let l = load_mae::<InferBackend>(&w, &device)?;
            evaluate_mae(
                &l.model,
                &test_set,
                &final_state.normalization,
                500,
                &device,
            )?
            .loss
        }
    };
    println!(
        "test masked-patch loss {:.4}{}  ({} epochs, weights in {})",
        loss,
        start_loss.map_or(String::new(), |s| format!(" (at step 0: {s:.4})")),
        final_state.epoch,
        dir.join("model.safetensors").display()
    );
    if a.json {
        println!(
            "{}",
            json!({"test_loss": loss, "start_test_loss": start_loss, "epochs": final_state.epoch,
                   "steps": final_state.step, "seconds": t_start.elapsed().as_secs_f64(),
                   "train_seconds": final_state.seconds, "weights": dir.join("model.safetensors")})
        );
    }
    Ok(())
}

/// Normalisation stored with MAE weights (else the training split's, with a warning).
fn stored_norm(
    meta: &HashMap<String, String>,
    channels: usize,
    w: &WeightArgs,
    d: &super::DataArgs,
) -> Result<Normalization> {
    Ok(match stored_normalization(meta, channels, &w.weights)? {
        Some(n) => n,
        None => {
            tracing::warn!(
                "no normalisation stored with the weights; using the train split's statistics"
            );
            Normalization::from_set(&load_split(d, Split::Train, None)?)
        }
    })
}

/// `whitebox mae reconstruct`: a PNG grid, one column per test image; rows are the original,
/// the masked input (removed patches grey) and the reconstruction (visible patches pasted back
/// over the prediction, as in the MAE visualisations).
pub fn reconstruct(a: ReconstructArgs) -> Result<()> {
    let device = Default::default();
    let l = load_mae::<InferBackend>(&a.weights, &device)?;
    let mut model = l.model;
    if let Some(r) = a.mask_ratio {
        crate::model::mae::check_mask_ratio(r)?;
        model.mask_ratio = r;
    }
    let c = &l.config;
    let mut set = data::load(&a.data.data, a.data.format, Split::Test)?;
    set.truncate(a.count.max(1));
    check_mae_shape(c, &set, &a.data.data)?;
    let norm = stored_norm(&l.meta, l.config.in_chans, &a.weights, &a.data)?;
    let batcher = Batcher {
        norm: norm.clone(),
        augment: Augment::none(),
    };
    let idx: Vec<usize> = (0..set.len()).collect();
    let (x, _) = batcher.batch::<InferBackend>(&set, &idx, &mut batch_rng(0, 0, 0), &device);
    let n = idx.len();
    let masking = model.masking(n, None, &mut StdRng::seed_from_u64(a.seed));
    let out = model.forward_with(x.clone(), masking, &mut Activations::off());
    let (p, ch) = (c.patch_size, c.in_chans);
    let mut pred = out.pred;
    if c.norm_pix_loss {
        // undo the per-patch normalisation with the statistics of the true patch
        let t = crate::model::vision::patchify(x.clone(), p);
        let (var, mean) = t.var_mean(2);
        pred = pred * var.add_scalar(1e-6).sqrt() + mean;
    }
    let [b, len] = [n, out.masking.len];
    let mask = Tensor::<InferBackend, 3>::from_data(
        TensorData::new(out.masking.mask.clone(), [b, len, 1]),
        &device,
    );
    let mask_img = unpatchify(mask.expand([b, len, p * p * ch]), p, ch);
    let keep_img = mask_img.clone().neg().add_scalar(1.0);
    let recon = unpatchify(pred, p, ch);
    let pasted = x.clone() * keep_img.clone() + recon * mask_img.clone();
    let s = c.img_size;
    let rows: Vec<Vec<f32>> = [x.clone(), x, pasted]
        .into_iter()
        .map(|t| t.into_data().convert::<f32>().to_vec::<f32>().unwrap())
        .collect();
    let masked: Vec<f32> = mask_img.into_data().convert::<f32>().to_vec().unwrap();
    let scale = a.scale.max(1) as usize;
    let (w, h) = ((n * s * scale) as u32, (3 * s * scale) as u32);
    let mut img = image::RgbImage::new(w, h);
    let hw = s * s;
    for (r, vals) in rows.iter().enumerate() {
        for i in 0..n {
            for y in 0..s {
                for xx in 0..s {
                    let mut rgb = [0u8; 3];
                    for (k, v) in rgb.iter_mut().enumerate() {
                        let cc = if ch == 1 { 0 } else { k.min(ch - 1) };
                        let at = i * ch * hw + cc * hw + y * s + xx;
                        let px = if r == 1 && masked[at] > 0.5 {
                            0.5
                        } else {
                            vals[at] * norm.std[cc] + norm.mean[cc]
                        };
                        *v = (px.clamp(0.0, 1.0) * 255.0).round() as u8;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            img.put_pixel(
                                ((i * s + xx) * scale + dx) as u32,
                                ((r * s + y) * scale + dy) as u32,
                                image::Rgb(rgb),
                            );
                        }
                    }
                }
            }
        }
    }
    if let Some(dir) = a.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    img.save(&a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    println!(
        "wrote {}×{} grid of {n} images (original / masked / reconstructed, mask ratio {}) to {}",
        w,
        h,
        model.mask_ratio,
        a.output.display()
    );
    Ok(())
}

/// `whitebox probe`: a linear classifier on frozen features — the cls feature of an MAE
/// encoder, or a CRATE's head input `LN(cls)` (classifier or `dino train` teacher) — standardised
/// with the training split's statistics, softmax regression by AdamW.
pub fn probe(a: ProbeArgs) -> Result<()> {
    let recipe = ProbeRecipe {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        seed: a.seed,
    };
    recipe.validate()?;
    let device = Default::default();
    let t0 = Instant::now();
    let train_set = load_split(&a.data, Split::Train, a.train_limit)?;
    let test_set = load_split(&a.data, Split::Test, a.test_limit)?;
    let ((ftr, d), (fte, _)) = if is_mae(&a.weights) {
        let l = load_mae::<InferBackend>(&a.weights, &device)?;
        check_mae_shape(&l.config, &train_set, &a.data.data)?;
        check_mae_shape(&l.config, &test_set, &a.data.data).context("test split")?;
        let norm = stored_norm(&l.meta, l.config.in_chans, &a.weights, &a.data)?;
        let f = |set: &ImageSet| extract_features(set, &norm, &device, |x| l.model.cls_features(x));
        (f(&train_set), f(&test_set))
    } else {
        let l = super::commands::load_weights::<InferBackend>(&a.weights, &device)?;
        let shape = super::commands::input_shape(&l.config);
        super::commands::check_shape(shape, &train_set, &a.data.data)?;
        super::commands::check_shape(shape, &test_set, &a.data.data).context("test split")?;
        let norm = stored_norm(&l.meta, l.config.channels, &a.weights, &a.data)?;
        let f = |set: &ImageSet| extract_features(set, &norm, &device, |x| l.model.features(x));
        (f(&train_set), f(&test_set))
    };
    tracing::info!(
        "features: {} train, {} test, d = {d} ({:.0}s)",
        train_set.len(),
        test_set.len(),
        t0.elapsed().as_secs_f64()
    );
    let (ftr, fte) = probe::standardise(&ftr, &fte, d);
    let k = train_set
        .num_classes()
        .max(test_set.num_classes())
        .max(train_set.labels.iter().copied().max().unwrap_or(0) as usize + 1);
    let (tr, te) = probe::linear_probe::<TrainBackend>(
        &probe::Features {
            values: &ftr,
            labels: &train_set.labels,
            dim: d,
        },
        &probe::Features {
            values: &fte,
            labels: &test_set.labels,
            dim: d,
        },
        k,
        &recipe,
        &device,
    )?;
    println!(
        "linear probe on frozen cls features: test accuracy {:.2}%  (train {:.2}%, d = {d}, {} epochs, {:.0}s)",
        100.0 * te,
        100.0 * tr,
        a.epochs,
        t0.elapsed().as_secs_f64()
    );
    if a.json {
        println!(
            "{}",
            json!({"test_acc": te, "train_acc": tr, "dim": d, "epochs": a.epochs, "seconds": t0.elapsed().as_secs_f64()})
        );
    }
    Ok(())
}
