//! Tokenizers: the character vocabulary, GPT-2 BPE ids as tiktoken gives them, and streaming
//! decoding that waits for whole characters.

use whitebox::text::{StreamDecoder, Tokenizer};

#[test]
fn char_tokenizer_round_trips_and_rejects_unknown_chars() {
    let t = Tokenizer::char_from_corpus("hello, wörld").unwrap();
    assert_eq!(t.vocab_size(), 10); // h e l o , space w ö r d
    let ids = t.encode("wölle").unwrap();
    assert_eq!(t.decode(&ids).unwrap(), "wölle");
    let e = t.encode("hex").unwrap_err().to_string();
    assert!(e.contains("'x'"), "{e}");
}

#[test]
fn gpt2_tokenizer_matches_tiktoken_ids() {
    // ids of "Hello world" under GPT-2 BPE (tiktoken r50k_base)
    let t = Tokenizer::Gpt2;
    assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(t.decode(&[15496, 995]).unwrap(), "Hello world");
}

#[test]
fn stream_decoder_waits_for_whole_characters() {
    let t = Tokenizer::Gpt2;
    let ids = t.encode("naïve ✓").unwrap();
    let mut d = StreamDecoder::default();
    let mut s = String::new();
    for &i in &ids {
        s.push_str(&d.push(&t, i).unwrap());
    }
    assert_eq!(s, "naïve ✓");
}
