//! `whitebox report`: one self-contained HTML page for a run directory (inline SVG plots and
//! `data:` PNGs, no scripts, no network), so it opens offline in any browser.

use anyhow::{ensure, Context, Result};
use image::RgbImage;
use std::fmt::Write;
use std::io::BufRead;
use std::path::Path;

use super::curves::{draw_layer_curves, draw_training_curves, render_svg, CURVES_SIZE};
use super::maps::{attention_grid, look, pca_grid, PcaOptions};
use super::png_data_uri;
use crate::data::{ImageSet, Normalization};
use crate::measure::LayerCurves;
use crate::train::{measure_curves, Checkpoint, EpochMetrics};

/// Everything the page shows; built by the CLI from a run directory.
pub struct ReportInput<'a> {
    pub title: String,
    /// The model configuration, pretty JSON.
    pub config_json: String,
    pub parameters: usize,
    pub metrics: &'a [EpochMetrics],
    /// Per-layer measures of the final weights on test images, if they could be computed.
    pub final_curves: Option<(String, LayerCurves)>,
    /// Captioned pictures (attention maps, PCA maps).
    pub pictures: Vec<(String, RgbImage)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The per-layer curves recorded during training (`--measure-every`), one line per epoch, plus
/// the final measurement.
fn measure_sets(r: &ReportInput) -> Vec<(String, LayerCurves)> {
    let mut sets: Vec<(String, LayerCurves)> = r
        .metrics
        .iter()
        .filter_map(|m| {
            m.measures
                .clone()
                .map(|c| (format!("epoch {}", m.epoch), c))
        })
        .collect();
    if let Some(f) = &r.final_curves {
        sets.push(f.clone());
    }
    sets
}

fn metrics_table(metrics: &[EpochMetrics]) -> String {
    let mut t = String::from(
        "<table><tr><th>epoch</th><th>lr</th><th>train loss</th><th>test loss</th>\
         <th>top-1</th><th>top-5</th><th>img/s</th><th>time (s)</th></tr>",
    );
    for m in metrics {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{:.2e}</td><td>{:.4}</td><td>{:.4}</td><td>{:.2}%</td>\
             <td>{:.2}%</td><td>{:.0}</td><td>{:.0}</td></tr>",
            m.epoch,
            m.lr,
            m.train_loss,
            m.test_loss,
            100.0 * m.test_acc,
            100.0 * m.test_top5,
            m.train_img_s,
            m.seconds
        );
    }
    t.push_str("</table>");
    t
}

fn curves_table(c: &LayerCurves) -> String {
    let mut t = String::from(
        "<table><tr><th>layer</th><th>R<sup>c</sup> (official)</th><th>nonzero fraction</th></tr>",
    );
    for i in 0..c.depth() {
        let _ = write!(
            t,
            "<tr><td>{i}</td><td>{:.3} ± {:.3}</td><td>{:.3} ± {:.3}</td></tr>",
            c.rc_mean[i], c.rc_std[i], c.sparsity_mean[i], c.sparsity_std[i]
        );
    }
    t.push_str("</table>");
    t
}

/// The HTML page.
pub fn render_html(r: &ReportInput) -> Result<String> {
    let (w, h) = CURVES_SIZE;
    let mut body = String::new();
    let _ = write!(body, "<h1>{}</h1>", escape(&r.title));
    if let Some(last) = r.metrics.last() {
        let _ = write!(
            body,
            "<p class=lead>{} epochs · test top-1 <b>{:.2}%</b> · test loss {:.4} · {:.0} s of training · {} parameters</p>",
            last.epoch,
            100.0 * last.test_acc,
            last.test_loss,
            last.seconds,
            r.parameters
        );
    }
    body.push_str("<h2>Training</h2>");
    if r.metrics.is_empty() {
        body.push_str("<p>No epochs recorded in metrics.jsonl.</p>");
    } else {
        body.push_str(&render_svg(w, h, |root| {
            draw_training_curves(root, r.metrics)
        })?);
        body.push_str(&metrics_table(r.metrics));
    }
    body.push_str("<h2>White-box measures per layer</h2>");
    let sets = measure_sets(r);
    if sets.is_empty() {
        body.push_str("<p>No measures: train with <code>--measure-every N</code> or give <code>--data</code>.</p>");
    } else {
        body.push_str(
            "<p>Left: the official compression measure R<sup>c</sup> of each layer's input \
             (per-head unit-normalised U<sub>k</sub><sup>T</sup>LN(Z<sup>l</sup>), eps = 0.01), \
             mean ± std over test images. Right: the fraction of nonzero entries of each ISTA \
             output. CRATE's objective predicts both fall with depth.</p>",
        );
        let refs: Vec<(String, &LayerCurves)> = sets.iter().map(|(l, c)| (l.clone(), c)).collect();
        body.push_str(&render_svg(w, h, |root| draw_layer_curves(root, &refs))?);
        if let Some((label, c)) = sets.last() {
            let _ = write!(body, "<h3>{}</h3>{}", escape(label), curves_table(c));
        }
    }
    if !r.pictures.is_empty() {
        body.push_str("<h2>Pictures</h2>");
        for (caption, img) in &r.pictures {
            let _ = write!(
                body,
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
                png_data_uri(img)?,
                escape(caption),
                escape(caption)
            );
        }
    }
    let _ = write!(
        body,
        "<h2>Configuration</h2><pre>{}</pre>",
        escape(&r.config_json)
    );
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{}</title><style>\
         body{{font-family:sans-serif;max-width:1140px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         figure{{margin:1em 0}}img{{image-rendering:pixelated;max-width:100%}}.lead{{font-size:1.2em}}\
         pre{{background:#f5f5f5;padding:1em}}</style></head><body>\n{}\n</body></html>\n",
        escape(&r.title),
        body
    ))
}

/// Every epoch recorded in `metrics.jsonl`; a resumed run's repeated epochs keep the last entry.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out: Vec<EpochMetrics> = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        if v.get("epoch").is_none() && (v.get("iter").is_some() || v.get("step").is_some()) {
            anyhow::bail!(
                "{} is the record of a language-model or CRATE-BERT run; `report` draws image \
                 runs (classifier, ToST, CRATE-MAE, DINO/SimDINO)",
                path.display()
            );
        }
        let m: EpochMetrics = serde_json::from_value(v)
            .with_context(|| format!("{} line {}: not a metrics record", path.display(), i + 1))?;
        out.retain(|o| o.epoch != m.epoch);
        out.push(m);
    }
    out.sort_by_key(|m| m.epoch);
    Ok(out)
}

/// The page of the run in `run_dir` (`metrics.jsonl` and `checkpoint/`): the curves, and — with
/// `test` images (and the folder they came from) — the per-layer measures of the final weights on
/// `measure_images` of them and the attention and PCA maps of the first `images`. Also returns
/// the number of epochs recorded.
pub fn run_report(
    run_dir: &Path,
    test: Option<(&Path, &ImageSet)>,
    images: usize,
    measure_images: usize,
) -> Result<(String, usize)> {
    type B = crate::InferBackend;
    let metrics = read_metrics(&run_dir.join("metrics.jsonl"))?;
    let ckpt = Checkpoint::dir(run_dir).join("model.safetensors");
    ensure!(
        ckpt.exists(),
        "{}: no checkpoint (expected {})",
        run_dir.display(),
        ckpt.display()
    );
    let device = Default::default();
    let l = crate::weights::load::<B>(&ckpt, None, true, &device)?.into_crate()?;
    let cfg = l.config.clone();
    let mut final_curves = None;
    let mut pictures = Vec::new();
    if let Some((data, set)) = test {
        {
            ensure!(
                set.channels == cfg.channels
                    && set.height == cfg.image_size
                    && set.width == cfg.image_size,
                "{}: images are {}×{}×{}, the model of {} expects {}×{}×{}",
                data.display(),
                set.channels,
                set.height,
                set.width,
                run_dir.display(),
                cfg.channels,
                cfg.image_size,
                cfg.image_size
            );
            let norm = l.normalization(cfg.channels)?.unwrap_or_else(|| {
                tracing::warn!("no normalisation stored with the weights; using mean 0.5, std 0.5");
                Normalization {
                    mean: vec![0.5; cfg.channels],
                    std: vec![0.5; cfg.channels],
                }
            });
            let curves = measure_curves(&l.model, set, &norm, measure_images, &device)?;
            final_curves = Some((
                format!(
                    "final weights, {} test images",
                    measure_images.min(set.len())
                ),
                curves,
            ));
            let k = images.min(set.len());
            if k > 0 {
                let pixels: Vec<Vec<u8>> = (0..k).map(|i| set.image(i).to_vec()).collect();
                let names: Vec<String> = (0..k)
                    .map(|i| {
                        set.class_names
                            .get(set.labels[i] as usize)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                let last = cfg.depth - 1;
                let looked = look(l.model, &cfg, &norm, &pixels, cfg.image_size, None, None)?;
                pictures.push((
                    format!(
                        "Attention of the cls token at layer {last} ({}): per row the input, the average over heads, then each head",
                        names.join(", ")
                    ),
                    attention_grid(&looked.view, &looked.display, looked.grid)?,
                ));
                pictures.push((
                    format!("PCA of the layer-{last} features U^T LN(Z): first three components as RGB, fitted over these images"),
                    pca_grid(&looked.view, &looked.display, looked.grid, PcaOptions::default())?,
                ));
            }
        }
    }
    let page = render_html(&ReportInput {
        title: format!("whitebox run {}", run_dir.display()),
        config_json: serde_json::to_string_pretty(&cfg)?,
        parameters: cfg.param_count(),
        metrics: &metrics,
        final_curves,
        pictures,
    })?;
    Ok((page, metrics.len()))
}
