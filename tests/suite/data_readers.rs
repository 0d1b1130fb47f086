//! Dataset readers on small files written here in each real format, and their error messages.

use crate::common;

use common::{idx_bytes, write_idx};
use std::path::Path;
use whitebox::data::{self, Format, Split};

#[test]
fn idx_raw_and_gzip_read_the_same_images() {
    for gzip in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        write_idx(dir.path(), "train", 12, gzip);
        write_idx(dir.path(), "t10k", 5, gzip);
        let set = data::load(dir.path(), Format::Auto, Split::Train).unwrap();
        assert_eq!(
            (set.len(), set.channels, set.height, set.width),
            (12, 1, 28, 28)
        );
        assert_eq!(set.labels[..4], [0, 1, 2, 3]);
        // write_idx stores pixel k of image i as (7i + (784i + k) mod 251) mod 256
        assert_eq!(set.image(3)[0], 114);
        assert_eq!(set.image(3)[5], 119);
        assert_eq!(
            data::load(dir.path(), Format::Idx, Split::Test)
                .unwrap()
                .len(),
            5
        );
    }
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 4, false);
    let p = dir.path().join("train-images-idx3-ubyte");
    let good = std::fs::read(&p).unwrap();

    std::fs::write(&p, &good[..good.len() - 10]).unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Idx, Split::Train).unwrap_err()
    );
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("does not match the header"),
        "{e}"
    );

    let mut bad = good.clone();
    bad[2] = 0x0D; // float elements
    std::fs::write(&p, &bad).unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Idx, Split::Train).unwrap_err()
    );
    assert!(e.contains("element type 0x0d"), "{e}");

    std::fs::write(&p, &good).unwrap();
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte"),
        idx_bytes(&[3], &[0, 1, 2]),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Idx, Split::Train).unwrap_err()
    );
    assert!(e.contains("4 images") && e.contains("3 labels"), "{e}");

    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte.gz"),
        b"\x1f\x8bnot gzip",
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("train-labels-idx1-ubyte")).unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Idx, Split::Train).unwrap_err()
    );
    assert!(
        e.contains("train-labels-idx1-ubyte.gz") && e.contains("corrupt gzip"),
        "{e}"
    );
}

fn cifar_record(label_bytes: &[u8], seed: u8) -> Vec<u8> {
    let mut r = label_bytes.to_vec();
    r.extend((0..3072).map(|i| (i as u8).wrapping_mul(seed)));
    r
}

#[test]
fn cifar10_and_cifar100_binary_batches() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=5 {
        let recs: Vec<u8> = (0..2)
            .flat_map(|j| cifar_record(&[(i + j) as u8 % 10], 3))
            .collect();
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), recs).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(&[9], 5)).unwrap();
    let train = data::load(dir.path(), Format::Auto, Split::Train).unwrap();
    assert_eq!(
        (
            train.len(),
            train.channels,
            train.height,
            train.num_classes()
        ),
        (10, 3, 32, 10)
    );
    assert_eq!(train.labels[..3], [1, 2, 2]);
    assert_eq!(
        train.image(0)[1025],
        (1025u32 * 3 % 256) as u8,
        "channel-major layout kept"
    );
    assert_eq!(
        data::load(dir.path(), Format::Auto, Split::Test)
            .unwrap()
            .class_names[9],
        "truck"
    );

    let d100 = tempfile::tempdir().unwrap();
    std::fs::write(
        d100.path().join("train.bin"),
        [cifar_record(&[3, 77], 1), cifar_record(&[4, 99], 1)].concat(),
    )
    .unwrap();
    std::fs::write(d100.path().join("test.bin"), cifar_record(&[0, 5], 1)).unwrap();
    let t = data::load(d100.path(), Format::Auto, Split::Train).unwrap();
    assert_eq!(
        (t.labels.clone(), t.num_classes()),
        (vec![77, 99], 100),
        "fine labels"
    );

    std::fs::write(
        d100.path().join("test.bin"),
        &cifar_record(&[0, 5], 1)[..100],
    )
    .unwrap();
    let e = format!(
        "{:#}",
        data::load(d100.path(), Format::Cifar100, Split::Test).unwrap_err()
    );
    assert!(
        e.contains("test.bin") && e.contains("not a multiple"),
        "{e}"
    );
    std::fs::write(d100.path().join("test.bin"), cifar_record(&[0, 100], 1)).unwrap();
    let e = format!(
        "{:#}",
        data::load(d100.path(), Format::Cifar100, Split::Test).unwrap_err()
    );
    assert!(e.contains("label 100"), "{e}");
}

#[test]
fn image_folder_png_and_jpeg() {
    let dir = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 2), ("test", 1)] {
        for class in ["cat", "dog"] {
            let d = dir.path().join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(8, 6, |x, y| {
                    image::Rgb([
                        x as u8 * 10,
                        y as u8 * 20,
                        if class == "dog" { 200 } else { 0 },
                    ])
                });
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                img.save(d.join(format!("{i}.{ext}"))).unwrap();
            }
        }
    }
    let set = data::load(dir.path(), Format::Auto, Split::Train).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width),
        (4, 3, 6, 8)
    );
    assert_eq!(set.class_names, vec!["cat", "dog"]);
    assert_eq!(set.labels, vec![0, 0, 1, 1]);
    let png = set.image(2);
    assert_eq!(
        (png[8 + 3], png[48 + 8], png[96]),
        (30, 20, 200),
        "CHW from the PNG, exactly"
    );

    let odd = image::RgbImage::new(5, 5);
    odd.save(dir.path().join("train/dog/odd.png")).unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Folder, Split::Train).unwrap_err()
    );
    assert!(e.contains("odd.png") && e.contains("3×5×5"), "{e}");
    std::fs::write(dir.path().join("train/dog/odd.png"), b"not a png").unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Folder, Split::Train).unwrap_err()
    );
    assert!(e.contains("odd.png"), "{e}");
}

#[test]
fn unknown_or_missing_folders_are_clear_errors() {
    let e = format!(
        "{:#}",
        data::load(Path::new("/nonexistent/data"), Format::Auto, Split::Train).unwrap_err()
    );
    assert!(
        e.contains("/nonexistent/data") && e.contains("does not exist"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        data::load(dir.path(), Format::Auto, Split::Train).unwrap_err()
    );
    assert!(e.contains("cannot tell the format"), "{e}");
}

#[test]
fn augmentation_is_deterministic_given_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), "train", 16, false);
    let set = data::load(dir.path(), Format::Idx, Split::Train).unwrap();
    let b = data::Batcher {
        norm: data::Normalization::from_set(&set),
        augment: data::Augment {
            crop_padding: 2,
            hflip: true,
        },
    };
    let idx: Vec<usize> = data::epoch_order(set.len(), 7, 3)[..8].to_vec();
    let a1 = b.pixels(&set, &idx, &mut data::batch_rng(7, 3, 0));
    let a2 = b.pixels(&set, &idx, &mut data::batch_rng(7, 3, 0));
    let a3 = b.pixels(&set, &idx, &mut data::batch_rng(7, 3, 1));
    assert_eq!(a1, a2);
    assert_ne!(a1, a3);
    assert_eq!(data::epoch_order(16, 7, 3), data::epoch_order(16, 7, 3));
    assert_ne!(data::epoch_order(16, 7, 3), data::epoch_order(16, 7, 4));
    // no augmentation: exactly the normalised pixels
    let plain = data::Batcher {
        norm: b.norm.clone(),
        augment: data::Augment::none(),
    };
    let p = plain.pixels(&set, &[5], &mut data::batch_rng(0, 0, 0));
    let want = (set.image(5)[100] as f32 / 255.0 - b.norm.mean[0]) / b.norm.std[0];
    assert!((p[100] - want).abs() < 1e-6);
}
