#![no_main]
//! A prepared token folder's `meta.json` (tokenizer metadata).
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let d = scratch();
    write(&d, "meta.json", data);
    let _ = whitebox::text::read_meta(&d);
});
