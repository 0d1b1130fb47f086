//! `whitebox report`: one self-contained HTML page for a run directory (inline SVG plots and
//! `data:` PNGs, no scripts, no network), so it opens offline in any browser.

use anyhow::Result;
use image::RgbImage;
use std::fmt::Write;

use super::curves::{draw_layer_curves, draw_training_curves, render_svg, CURVES_SIZE};
use super::png_data_uri;
use crate::measure::LayerCurves;
use crate::train::EpochMetrics;

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
