//! Line plots with plotters: per-layer R^c and sparsity (mean ± std), and training curves.
//! Each figure is drawn once, generically over the backend, and rendered as PNG or SVG.

use anyhow::{anyhow, Result};
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

use super::{ensure_font, save_png, series_color};
use crate::atomic::write_atomic;
use crate::measure::LayerCurves;
use crate::train::EpochMetrics;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Render a figure `w × h` pixels into an RGB image.
pub fn render_png<F>(w: u32, h: u32, draw: F) -> Result<RgbImage>
where
    F: FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
{
    ensure_font();
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("bitmap buffer size"))
}

/// Render a figure `w × h` as an SVG document.
pub fn render_svg<F>(w: u32, h: u32, draw: F) -> Result<String>
where
    F: FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
{
    ensure_font();
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(s)
}

/// One line of a panel: label, y values (x = 0, 1, …) and optional ± error bars.
pub struct Line<'a> {
    pub label: String,
    pub y: &'a [f64],
    pub err: Option<&'a [f64]>,
}

fn y_range(lines: &[Line]) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for l in lines {
        for (i, &y) in l.y.iter().enumerate() {
            let e = l.err.map_or(0.0, |e| e[i]);
            lo = lo.min(y - e);
            hi = hi.max(y + e);
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-6);
    (lo - pad, hi + pad)
}

/// One panel: lines with markers and error bars against an integer x (layer or epoch).
pub fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x0: usize,
    lines: &[Line],
) -> Result<()> {
    let n = lines.iter().map(|l| l.y.len()).max().unwrap_or(1).max(1);
    let (lo, hi) = y_range(lines);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x0 as f64 - 0.5..(x0 + n) as f64 - 0.5, lo..hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(n.min(12) + 1)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{}", x.round() as i64)
            } else {
                String::new()
            }
        })
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    for (k, l) in lines.iter().enumerate() {
        let color = series_color(k);
        let pts: Vec<(f64, f64)> =
            l.y.iter()
                .enumerate()
                .map(|(i, &y)| ((x0 + i) as f64, y))
                .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(l.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
        if let Some(e) = l.err {
            chart
                .draw_series(pts.iter().zip(e).map(|(&(x, y), &s)| {
                    ErrorBar::new_vertical(x, y - s, y, y + s, color.stroke_width(1), 8)
                }))
                .map_err(err)?;
        }
    }
    if lines.len() > 1 || lines.iter().any(|l| !l.label.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// The two white-box curves side by side: official R^c of each layer's input and the sparsity of
/// each layer's output, one line per labelled set of curves (e.g. per epoch).
pub fn draw_layer_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    sets: &[(String, &LayerCurves)],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let rc: Vec<Line> = sets
        .iter()
        .map(|(label, c)| Line {
            label: label.clone(),
            y: &c.rc_mean,
            err: Some(&c.rc_std),
        })
        .collect();
    panel(
        &left,
        "Compression R^c(Z^l) [MSSA input]",
        "layer l",
        "R^c",
        0,
        &rc,
    )?;
    let sp: Vec<Line> = sets
        .iter()
        .map(|(label, c)| Line {
            label: label.clone(),
            y: &c.sparsity_mean,
            err: Some(&c.sparsity_std),
        })
        .collect();
    panel(
        &right,
        "Sparsity ||Z^(l+1)||_0 / (N d) [ISTA output]",
        "layer l",
        "nonzero fraction",
        0,
        &sp,
    )
}

pub const CURVES_SIZE: (u32, u32) = (1100, 420);

/// Write `PREFIX.png` and `PREFIX.svg` of the per-layer curves; returns the two paths.
pub fn save_layer_curves(
    prefix: &Path,
    sets: &[(String, &LayerCurves)],
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (w, h) = CURVES_SIZE;
    let png = prefix.with_extension("png");
    let svg = prefix.with_extension("svg");
    save_png(&png, &render_png(w, h, |r| draw_layer_curves(r, sets))?)?;
    write_atomic(
        &svg,
        render_svg(w, h, |r| draw_layer_curves(r, sets))?.as_bytes(),
    )?;
    Ok((png, svg))
}

/// Loss (train and test) and test accuracy against the epoch.
pub fn draw_training_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    metrics: &[EpochMetrics],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let train: Vec<f64> = metrics.iter().map(|m| m.train_loss).collect();
    let test: Vec<f64> = metrics.iter().map(|m| m.test_loss).collect();
    let acc: Vec<f64> = metrics.iter().map(|m| 100.0 * m.test_acc).collect();
    let x0 = metrics.first().map_or(1, |m| m.epoch);
    let loss = [
        Line {
            label: "train".into(),
            y: &train,
            err: None,
        },
        Line {
            label: "test".into(),
            y: &test,
            err: None,
        },
    ];
    panel(&left, "Loss", "epoch", "cross-entropy", x0, &loss)?;
    let acc = [Line {
        label: "test top-1".into(),
        y: &acc,
        err: None,
    }];
    panel(&right, "Accuracy", "epoch", "%", x0, &acc)
}

/// One measured series of [`draw_scaling`]: label and `(tokens, milliseconds per image)` points.
pub struct ScalingSeries {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Time per image against the number of tokens, both axes logarithmic, one line per series.
pub fn draw_scaling<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    series: &[ScalingSeries],
) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (x_lo, x_hi) = pts().fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y_lo, y_hi) = pts().fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.1), b.max(p.1)));
    anyhow::ensure!(
        x_lo > 0.0 && y_lo > 0.0 && x_hi.is_finite() && y_hi.is_finite(),
        "scaling plot needs positive, finite points"
    );
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_lo / 1.2..x_hi * 1.2).log_scale(),
            (y_lo / 1.5..y_hi * 1.5).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("tokens per image")
        .y_desc("ms per image")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| match *y {
            y if y >= 10.0 => format!("{y:.0}"),
            y if y >= 1.0 => format!("{y:.1}"),
            y => format!("{y:.2}"),
        })
        .draw()
        .map_err(err)?;
    for (k, s) in series.iter().enumerate() {
        let color = series_color(k);
        let dashed = s.label.contains("forward");
        let style = color.stroke_width(if dashed { 1 } else { 2 });
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Write the scaling plot as PNG.
pub fn save_scaling(path: &Path, title: &str, series: &[ScalingSeries]) -> Result<()> {
    save_png(
        path,
        &render_png(900, 560, |r| draw_scaling(r, title, series))?,
    )
}
