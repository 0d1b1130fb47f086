//! Pictures of the white box: per-layer measure curves and training curves (plotters, PNG and
//! SVG), attention / saliency maps, PCA feature maps, and the self-contained HTML run report.

pub mod curves;
pub mod maps;
pub mod report;

use anyhow::{Context, Result};
use image::RgbImage;
use plotters::style::{Palette, Palette99};
use std::path::Path;
use std::sync::Once;

use crate::atomic::write_atomic;

/// Register the embedded font for plot text (no system font or fontconfig needed).
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .map_err(|_| ())
        .expect("the embedded font parses");
    });
}

/// Viridis colour of `v` in [0, 1] (clamped).
pub fn heat_color(v: f32) -> [u8; 3] {
    use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
    let c = ViridisRGB.get_color(v.clamp(0.0, 1.0));
    [c.0, c.1, c.2]
}

/// A distinct colour for series `i` (plotters' 99-colour palette).
pub fn series_color(i: usize) -> plotters::style::RGBColor {
    let (r, g, b) = Palette99::COLORS[i % Palette99::COLORS.len()];
    plotters::style::RGBColor(r, g, b)
}

/// PNG bytes of an RGB image.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .context("encoding PNG")?;
    Ok(out.into_inner())
}

/// Write an RGB image as PNG, atomically.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, &png_bytes(img)?).with_context(|| format!("writing {}", path.display()))
}

/// `data:` URI of a PNG, for pictures embedded in HTML.
pub fn png_data_uri(img: &RgbImage) -> Result<String> {
    use base64::Engine;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_bytes(img)?)
    ))
}

/// Min–max scale to [0, 1] (all zeros when the values are constant).
pub fn min_max(v: &[f32]) -> Vec<f32> {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    v.iter()
        .map(|x| if span > 0.0 { (x - lo) / span } else { 0.0 })
        .collect()
}
