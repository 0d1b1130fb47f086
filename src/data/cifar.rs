//! CIFAR-10 / CIFAR-100 binary batches: per record a label byte (CIFAR-100: coarse then fine)
//! followed by 3072 bytes of 32×32 RGB in channel-major order.

use anyhow::{ensure, Context, Result};
use std::path::Path;

use super::{ImageSet, Split};

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];
const PIXELS: usize = 3 * 32 * 32;

pub fn load(dir: &Path, split: Split, hundred: bool) -> Result<ImageSet> {
    let files: Vec<String> = match (hundred, split) {
        (false, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        (false, Split::Test) => vec!["test_batch.bin".into()],
        (true, Split::Train) => vec!["train.bin".into()],
        (true, Split::Test) => vec!["test.bin".into()],
    };
    let (label_bytes, num_classes) = if hundred { (2, 100) } else { (1, 10) };
    let record = label_bytes + PIXELS;
    let mut set = ImageSet {
        pixels: Vec::new(),
        labels: Vec::new(),
        channels: 3,
        height: 32,
        width: 32,
        class_names: if hundred {
            (0..100).map(|i| i.to_string()).collect()
        } else {
            CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect()
        },
    };
    for f in files {
        let path = dir.join(&f);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        ensure!(
            !bytes.is_empty() && bytes.len() % record == 0,
            "{}: size {} is not a multiple of the {record}-byte CIFAR record",
            path.display(),
            bytes.len()
        );
        for (i, r) in bytes.chunks_exact(record).enumerate() {
            let label = r[label_bytes - 1] as u32;
            ensure!(
                (label as usize) < num_classes,
                "{}: record {i} has label {label}, outside 0..{num_classes}",
                path.display()
            );
            set.labels.push(label);
            set.pixels.extend_from_slice(&r[label_bytes..]);
        }
    }
    Ok(set)
}
