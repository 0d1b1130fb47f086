#![no_main]
//! Config JSON of every family (CRATE, CRATE-α, MAE, ToST, language models, BERT).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = whitebox::weights::ModelConfig::from_json(s);
    }
});
