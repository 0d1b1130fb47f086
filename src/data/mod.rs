//! Image datasets: MNIST-family IDX, CIFAR-10/100 binary batches and ImageFolder trees, all
//! loaded into one in-memory `ImageSet` of u8 pixels (NCHW) and class labels.

pub mod augment;
mod cifar;
pub mod folder;
mod idx;
pub mod multicrop;

pub use augment::{batch_rng, epoch_order, Augment, Batcher, Normalization};

use anyhow::{bail, Result};
use std::path::Path;

/// Where the default data set lives (Debian package `dataset-fashion-mnist`).
pub const DEFAULT_DATA: &str = "/usr/share/datasets/fashion-mnist";

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Images (u8, NCHW, row-major) with their labels.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub class_names: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }
    /// Every label below `num_classes` (the model's classes), else an error naming the first
    /// image whose label is out of range.
    pub fn check_labels(&self, num_classes: usize) -> Result<()> {
        if let Some(i) = self.labels.iter().position(|&l| l as usize >= num_classes) {
            bail!(
                "image {i} has label {} but the model has {num_classes} classes (labels 0..{})",
                self.labels[i],
                num_classes.saturating_sub(1)
            );
        }
        Ok(())
    }
    /// The first `n` images (for quick runs).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.pixels.truncate(n * self.image_len());
        }
    }
}

/// On-disk layouts the readers understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Detect from the folder's contents.
    Auto,
    /// MNIST-family IDX files (`train-images-idx3-ubyte[.gz]`, …).
    Idx,
    /// CIFAR-10 binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`).
    Cifar10,
    /// CIFAR-100 binary (`train.bin`, `test.bin`; fine labels).
    Cifar100,
    /// `train/<class>/*.png|jpg` and `test/<class>/…` (or `val/`).
    Folder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

fn detect(dir: &Path) -> Result<Format> {
    let has = |name: &str| dir.join(name).exists();
    Ok(
        if has("train-images-idx3-ubyte") || has("train-images-idx3-ubyte.gz") {
            Format::Idx
        } else if has("data_batch_1.bin") {
            Format::Cifar10
        } else if has("train.bin") && has("test.bin") {
            Format::Cifar100
        } else if dir.join("train").is_dir() {
            Format::Folder
        } else if !dir.exists() {
            bail!("data folder {} does not exist", dir.display())
        } else {
            bail!(
            "cannot tell the format of {}: expected IDX files, CIFAR .bin batches or train/<class>/ image folders",
            dir.display()
        )
        },
    )
}

/// Load one split of the data set in `dir`.
pub fn load(dir: &Path, format: Format, split: Split) -> Result<ImageSet> {
    let format = if format == Format::Auto {
        detect(dir)?
    } else {
        format
    };
    let set = match format {
        Format::Idx => idx::load(dir, split)?,
        Format::Cifar10 => cifar::load(dir, split, false)?,
        Format::Cifar100 => cifar::load(dir, split, true)?,
        Format::Folder => folder::load(dir, split)?,
        Format::Auto => unreachable!(),
    };
    if set.is_empty() {
        bail!("{}: the {:?} split is empty", dir.display(), split);
    }
    Ok(set)
}
