//! Fuzzes the inference request parser the agent's API runs (`outpost_shared::oip`: the OIP JSON header and the
//! binary tensor data extension) against a two-input contract: no panic and no unbounded allocation on any input
//! (shapes and counts are the model's check, after parsing). Builds without the agent and without tract.
#![no_main]
use outpost_shared::oip::parse_request;
use outpost_shared::manifest::{Dim, ElementType, TensorSpec};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let spec = |name: &str, dtype, shape| TensorSpec::new(name, dtype, shape);
    let inputs = [
        spec("x", ElementType::F32, vec![Dim::Fixed(1), Dim::Symbol("n".into())]),
        spec("mask", ElementType::Bool, vec![Dim::Fixed(2)]),
    ];
    let outputs = [spec("y", ElementType::F32, vec![Dim::Fixed(1)])];
    // The first two bytes, when present, are the `Inference-Header-Content-Length` (0xffff: absent).
    let (json_len, body) = match data {
        [a, b, rest @ ..] => (Some(usize::from(u16::from_le_bytes([*a, *b]))).filter(|&n| n != 0xffff), rest),
        _ => (None, data),
    };
    let _ = parse_request(&inputs, &outputs, body, json_len, &Default::default());
});
