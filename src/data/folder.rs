//! ImageFolder: `<root>/<split>/<class>/<image>.{png,jpg,jpeg}`, classes sorted by name.
//! Every image is decoded with the `image` crate and must share the first image's size and mode.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;

use super::{ImageSet, Split};

/// Open and decode one image file (format guessed from its bytes).
pub fn open_image(path: &Path) -> Result<image::DynamicImage> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    let format = image::guess_format(&bytes)
        .with_context(|| format!("cannot read image {}", path.display()))?;
    if format == image::ImageFormat::Jpeg {
        // the JPEG decoder fills a cut-off file with grey instead of failing: a file must end
        // with its end-of-image marker (trailing zero padding aside)
        let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        anyhow::ensure!(
            end >= 2 && bytes[end - 2..end] == [0xFF, 0xD9],
            "cannot decode image {}: the JPEG is truncated (no end-of-image marker)",
            path.display()
        );
    }
    image::load_from_memory_with_format(&bytes, format)
        .with_context(|| format!("cannot decode image {}", path.display()))
}

/// CHW u8 pixels of an image as 1 (gray) or 3 (RGB) channels.
/// Decode one image into u8 CHW pixels with `c` channels (1 or 3), resized to `size × size`.
pub fn read_image(path: &Path, c: usize, size: usize) -> Result<Vec<u8>> {
    anyhow::ensure!(
        c == 1 || c == 3,
        "image inputs need a 1- or 3-channel model, this one has {c}"
    );
    let s = size as u32;
    let img = open_image(path)?.resize_exact(s, s, image::imageops::FilterType::Triangle);
    Ok(to_chw(&img, c))
}

pub fn to_chw(img: &image::DynamicImage, channels: usize) -> Vec<u8> {
    if channels == 1 {
        return img.to_luma8().into_raw();
    }
    let rgb = img.to_rgb8();
    let hw = rgb.width() as usize * rgb.height() as usize;
    let mut chw = vec![0u8; 3 * hw];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * hw + i] = p[c];
        }
    }
    chw
}

/// Decode one image file into (channels, height, width, CHW u8 pixels); gray stays 1 channel.
pub fn decode_image(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let img = open_image(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let c = if img.color().has_color() { 3 } else { 1 };
    Ok((c, h, w, to_chw(&img, c)))
}

/// The class folders of a split folder, sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut classes: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    ensure!(!classes.is_empty(), "{}: no class folders", dir.display());
    Ok(classes)
}

/// One split of an ImageFolder tree. Classes are numbered from `train/`'s folders for both
/// splits, so a test folder that lacks a class (or a train class with no images) shifts no
/// label; a test class that `train/` lacks is an error.
pub fn load(root: &Path, split: Split) -> Result<ImageSet> {
    let dir = match split {
        Split::Train => root.join("train"),
        Split::Test if root.join("test").is_dir() => root.join("test"),
        Split::Test => root.join("val"),
    };
    ensure!(dir.is_dir(), "{}: no such split folder", dir.display());
    let train_dir = root.join("train");
    let classes = if train_dir.is_dir() {
        class_dirs(&train_dir)?
    } else {
        class_dirs(&dir)?
    };
    let present = class_dirs(&dir)?;
    if let Some(extra) = present.iter().find(|c| !classes.contains(c)) {
        bail!(
            "{}: class folder {extra:?} is not in {} (classes are numbered from the train split's folders)",
            dir.display(),
            train_dir.display()
        );
    }
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 0,
        height: 0,
        width: 0,
        class_names: classes.clone(),
    };
    for (label, class) in classes.iter().enumerate() {
        if !present.contains(class) {
            continue;
        }
        let mut files: Vec<_> = std::fs::read_dir(dir.join(class))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                matches!(ext.as_str(), "png" | "jpg" | "jpeg")
            })
            .collect();
        files.sort();
        for f in files {
            let (c, h, w, px) = decode_image(&f)?;
            if set.labels.is_empty() {
                (set.channels, set.height, set.width) = (c, h, w);
            } else if (c, h, w) != (set.channels, set.height, set.width) {
                bail!(
                    "{}: image is {c}×{h}×{w} but earlier images are {}×{}×{}; resize the folder to one size",
                    f.display(),
                    set.channels,
                    set.height,
                    set.width
                );
            }
            set.pixels.extend_from_slice(&px);
            set.labels.push(label as u32);
        }
    }
    Ok(set)
}
