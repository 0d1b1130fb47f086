#![no_main]
//! Text corpora and their character tokenizer.
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = write(&scratch(), "c.txt", data);
    if let Ok(text) = whitebox::text::read_corpus(&p) {
        let _ = whitebox::text::Tokenizer::char_from_corpus(&text);
    }
});
