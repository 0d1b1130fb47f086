#![no_main]
//! safetensors: tensors, metadata and the forward pass's input reader.
include!("common.rs");
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = write(&scratch(), "w.safetensors", data);
    let _ = whitebox::weights::read_state_dict(&p);
    let _ = whitebox::weights::read_safetensors_metadata(&p);
    let _ = whitebox::weights::read_input_tensor(&p, "input", &[1, 2, 2]);
});
