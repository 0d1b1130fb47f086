#![no_main]
//! Pictures (PNG, JPEG) as `predict` and ImageFolder read them.
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = write(&scratch(), "x.img", data);
    let _ = whitebox::data::folder::read_image(&p, 3, 8);
});
