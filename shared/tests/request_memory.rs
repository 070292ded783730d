//! A request's memory is bounded by the model's contract, not by its body: a 64 MiB JSON body of one-digit
//! numbers used to become 256 MiB of `i64` (and a copy per conversion) before any check looked at its size.
//! Alone in its test binary: it reads the process's peak RSS, which other tests would move.

use outpost_shared::manifest::{Dim, ElementType, TensorSpec};
use outpost_shared::oip::{RequestLimits, parse_request};

/// The process's peak resident set (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A JSON request for input `x` of `shape` whose `data` is `n` ones: two bytes of body per element.
fn request(shape: &str, n: usize) -> Vec<u8> {
    let mut body = format!(r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"FP32","data":["#).into_bytes();
    body.reserve(2 * n + 8);
    for _ in 0..n {
        body.extend_from_slice(b"1,");
    }
    body.pop();
    body.extend_from_slice(b"]}]}");
    body
}

#[test]
#[cfg(target_os = "linux")]
fn an_oversized_json_tensor_is_refused_before_it_is_materialised() {
    let contract = [TensorSpec::new("x", ElementType::F32, vec![Dim::Symbol("N".into()), Dim::Fixed(4)])];
    let outputs = [TensorSpec::new("y", ElementType::F32, vec![Dim::Symbol("N".into()), Dim::Fixed(4)])];
    let limits = RequestLimits::default();
    let elements = 32 << 20; // 64 MiB of body
    let declared = elements / 4;

    // The shape it declares is more than the contract lets a request hold: refused on the shape alone.
    let body = request(&format!("[{declared},4]"), elements);
    let before = peak_rss();
    let e = parse_request(&contract, &outputs, &body, None, &limits).unwrap_err();
    let grew = peak_rss().saturating_sub(before);
    let allowed = limits.max_elements(&contract[0]);
    assert_eq!(allowed, 1 << 22, "the documented default for a symbolic dimension");
    assert_eq!(
        e.0,
        format!(
            "input `x`: shape [{declared}, 4] holds {elements} elements, more than the {allowed} the contract's \
             [N, 4] allows"
        )
    );
    assert!(grew < 16 << 20, "parsing a refused request grew the peak RSS by {grew} bytes");
    drop(body);

    // A small shape with the data of a huge one: refused at the first element past the shape.
    let body = request("[2,4]", elements);
    let before = peak_rss();
    let e = parse_request(&contract, &outputs, &body, None, &limits).unwrap_err();
    let grew = peak_rss().saturating_sub(before);
    assert!(
        e.0.starts_with("not a valid inference request: input `x`: data: more than the 8 elements its shape holds"),
        "{e}"
    );
    assert!(grew < 16 << 20, "parsing a refused request grew the peak RSS by {grew} bytes");

    // Repeating an input cannot multiply what one request holds.
    let twice = br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]},{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let e = parse_request(&contract, &outputs, twice, None, &limits).unwrap_err();
    assert_eq!(e.0, "input `x`: given more than once");
    // Within the bounds, the request parses as before.
    let ok = parse_request(&contract, &outputs, &request("[2,4]", 8), None, &limits).unwrap();
    assert_eq!(ok.tensors[0].data.len(), 8);
}
