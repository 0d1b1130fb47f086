#![no_main]
//! torch `.pth` files (zip + pickle, or a legacy bare pickle): the pre-check and burn-store's reader.
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = write(&scratch(), "w.pth", data);
    let _ = whitebox::weights::check_torch_file(&p);
    let _ = whitebox::weights::read_state_dict(&p);
});
