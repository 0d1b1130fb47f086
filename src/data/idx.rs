//! MNIST-family IDX files (raw or gzip): `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ImageSet, Split, FASHION_MNIST_CLASSES};

/// Read a whole file, gunzipping when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip stream", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse an IDX file of unsigned bytes: returns the dimensions and the payload.
pub fn parse_idx(path: &Path, bytes: &[u8], want_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    ensure!(
        bytes.len() >= 4,
        "{}: too short for an IDX header",
        path.display()
    );
    ensure!(
        bytes[0] == 0 && bytes[1] == 0,
        "{}: bad IDX magic {:02x?}",
        path.display(),
        &bytes[..4]
    );
    ensure!(
        bytes[2] == 0x08,
        "{}: IDX element type 0x{:02x} is not unsigned byte (0x08)",
        path.display(),
        bytes[2]
    );
    let nd = bytes[3] as usize;
    ensure!(
        nd == want_dims,
        "{}: IDX has {nd} dimensions, expected {want_dims}",
        path.display()
    );
    let header = 4 + 4 * nd;
    ensure!(
        bytes.len() >= header,
        "{}: truncated IDX header",
        path.display()
    );
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    // checked: dimensions whose product overflows would otherwise wrap to a size that fits
    let expect = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_add(header));
    let Some(expect) = expect else {
        anyhow::bail!(
            "{}: IDX dimensions {dims:?} describe more bytes than any file holds",
            path.display()
        );
    };
    ensure!(
        bytes.len() == expect,
        "{}: size {} bytes does not match the header {:?} (expected {expect})",
        path.display(),
        bytes.len(),
        dims
    );
    Ok((dims, bytes[header..].to_vec()))
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_string(), format!("{stem}.gz")] {
        let p = dir.join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{}: missing {stem}[.gz]", dir.display())
}

pub fn load(dir: &Path, split: Split) -> Result<ImageSet> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, pixels) = parse_idx(&ip, &read_maybe_gz(&ip)?, 3)?;
    let (ldims, labels) = parse_idx(&lp, &read_maybe_gz(&lp)?, 1)?;
    ensure!(
        idims[0] == ldims[0],
        "{} has {} images but {} has {} labels",
        ip.display(),
        idims[0],
        lp.display(),
        ldims[0]
    );
    let labels: Vec<u32> = labels.into_iter().map(u32::from).collect();
    let max = labels.iter().copied().max().unwrap_or(0) as usize;
    let is_fashion = dir.to_string_lossy().contains("fashion");
    let num_classes = (max + 1).max(10);
    let class_names = if is_fashion && num_classes == 10 {
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        (0..num_classes).map(|i| i.to_string()).collect()
    };
    Ok(ImageSet {
        pixels,
        labels,
        channels: 1,
        height: idims[1],
        width: idims[2],
        class_names,
    })
}
