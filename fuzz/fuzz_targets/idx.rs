#![no_main]
//! The MNIST IDX reader: the input is the images file beside a valid 1-label file.
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let d = scratch();
    write(&d, "train-images-idx3-ubyte", data);
    write(&d, "train-labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 1, 3]);
    let _ = whitebox::data::load(&d, whitebox::data::Format::Idx, whitebox::data::Split::Train);
});
