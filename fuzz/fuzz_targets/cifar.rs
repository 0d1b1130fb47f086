#![no_main]
//! The CIFAR-100 binary reader (`train.bin`).
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let d = scratch();
    write(&d, "train.bin", data);
    let _ = whitebox::data::load(&d, whitebox::data::Format::Cifar100, whitebox::data::Split::Train);
});
