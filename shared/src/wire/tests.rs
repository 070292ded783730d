//! The wire protocol's unit tests: frames, limits, every message's round trip and refusals, the stream readers.

use std::fmt;

use ciborium::Value;

use super::codec::map;
use super::*;
use crate::canonical;

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = frame_header(kind, body.len() as u32).to_vec();
    f.extend_from_slice(body);
    f
}

fn cbor(v: &Value) -> Vec<u8> {
    canonical::to_vec(v).unwrap()
}

fn decode_all<M: Message>(bytes: &[u8]) -> Result<Vec<M>, WireError> {
    let mut d = FrameDecoder::<M>::new(Limits::default());
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let used = d.push(rest)?;
        rest = &rest[used..];
        out.extend(d.pop());
    }
    d.finish()?;
    Ok(out)
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::GetMetadata { name: "3.root.json".into(), max_len: 512_000 },
        Request::GetAssignment { device: None },
        Request::GetAssignment { device: Some([7; 32]) },
        Request::PostReport { body: b"forwarded".to_vec(), device: Some([9; 32]) },
        Request::GetTarget { path: "models/m/1.0.0.opkg".into(), offset: 17, len: Some(4096) },
        Request::GetTarget { path: "a".into(), offset: 0, len: None },
        Request::PostReport { body: b"telemetry".to_vec(), device: None },
        Request::PostTelemetry { body: b"batch".to_vec(), device: None },
        Request::PostTelemetry { body: b"relayed".to_vec(), device: Some([3; 32]) },
        Request::GetChallenge { device: None },
        Request::GetChallenge { device: Some([3; 32]) },
        Request::PostEvidence { evidence: vec![0xd2; 300], relay: None },
        Request::PostEvidence { evidence: vec![0xd2; 2048], relay: Some(Relay { device: [3; 32], exporter: [4; 32] }) },
        Request::Enroll { token: "ot1-abcdef".into(), hardware: "x86_64 linux 4 cpus".into(), tpm: None },
        Request::Enroll { token: "ot1-abcdef".into(), hardware: String::new(), tpm: Some(vec![4; 325]) },
    ]
}

fn all_responses() -> Vec<Response> {
    vec![
        Response::Metadata { bytes: b"{\"signed\":{}}".to_vec() },
        Response::NotFound,
        Response::Assignment { bytes: vec![1, 2, 3] },
        Response::TargetHeader { total_len: 100, offset: 10, len: 90 },
        Response::Ack,
        Response::error(ErrorCode::RangeNotSatisfiable, "offset 200 is past 100"),
        Response::TelemetryAck { up_to: 4096 },
        Response::Notice { revocations: 7 },
        Response::Challenge { nonce_challenge: [3; 32] },
        Response::Attested { status: AttestedStatus::Warning, expires: 1_795_885_200, tier: AttestedTier::Software },
        Response::error(ErrorCode::NotAttested, "not attested: device revoked"),
    ]
}

#[test]
fn every_message_round_trips_even_one_byte_at_a_time() {
    let reqs = all_requests();
    let bytes: Vec<u8> = reqs.iter().flat_map(|r| encode_frame(r, &Limits::default()).unwrap()).collect();
    assert_eq!(decode_all::<Request>(&bytes).unwrap(), reqs);
    let mut d = FrameDecoder::<Request>::new(Limits::default());
    let mut got = Vec::new();
    for b in &bytes {
        assert_eq!(d.push(std::slice::from_ref(b)).unwrap(), 1);
        got.extend(d.pop());
    }
    assert_eq!(got, reqs);

    let resps = all_responses();
    let bytes: Vec<u8> = resps.iter().flat_map(|r| encode_frame(r, &Limits::default()).unwrap()).collect();
    assert_eq!(decode_all::<Response>(&bytes).unwrap(), resps);
}

#[test]
fn truncated_frame_is_a_typed_error_at_eof() {
    let f = encode_frame(&all_requests()[0], &Limits::default()).unwrap();
    for cut in [1, HEADER_LEN - 1, HEADER_LEN, f.len() - 1] {
        assert_eq!(decode_all::<Request>(&f[..cut]), Err(WireError::Truncated { received: cut as u64 }));
    }
    let mut r = RequestReader::new(Limits::default());
    assert_eq!(r.eof(), WireError::Truncated { received: 0 });
    assert_eq!(r.push(&f[..3]), Ok(None));
    assert_eq!(r.eof(), WireError::Truncated { received: 3 });
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let mut d = FrameDecoder::<Request>::new(Limits::default());
    let header = frame_header(kinds::GET_METADATA, Limits::GET_METADATA + 1);
    let err = d.push(&header).unwrap_err();
    assert_eq!(err, WireError::Oversized { kind: 0x01, len: 513, limit: 512 });
    assert_eq!(err.code(), ErrorCode::Oversized);
    // A 4 GiB report is refused just the same, and the decoder stays failed.
    let mut d = FrameDecoder::<Request>::new(Limits::default());
    assert!(matches!(d.push(&frame_header(kinds::POST_REPORT, u32::MAX)), Err(WireError::Oversized { .. })));
    assert!(d.push(&[0; 100]).is_err());
}

#[test]
fn unknown_type_is_refused_including_the_other_directions_types() {
    for kind in [0x00, 0x08, 0x7f, 0xff, kinds::METADATA] {
        let f = frame(kind, &cbor(&map(vec![])));
        assert_eq!(decode_all::<Request>(&f), Err(WireError::UnknownType { kind }));
    }
    let f = frame(kinds::GET_TARGET, &cbor(&map(vec![])));
    assert_eq!(decode_all::<Response>(&f), Err(WireError::UnknownType { kind: kinds::GET_TARGET }));
}

#[test]
fn wrong_cbor_type_is_a_typed_error() {
    let text_body = frame(kinds::GET_METADATA, &cbor(&Value::Text("timestamp.json".into())));
    assert_eq!(
        decode_all::<Request>(&text_body),
        Err(WireError::WrongCborType { kind: 0x01, field: "body", expected: "a map" })
    );
    let name_as_bytes = map(vec![("name", Value::Bytes(b"x".to_vec())), ("max_len", 5u64.into())]);
    assert_eq!(
        decode_all::<Request>(&frame(kinds::GET_METADATA, &cbor(&name_as_bytes))),
        Err(WireError::WrongCborType { kind: 0x01, field: "name", expected: "a text string" })
    );
    let negative = map(vec![("path", Value::Text("a".into())), ("offset", (-1i64).into())]);
    let err = decode_all::<Request>(&frame(kinds::GET_TARGET, &cbor(&negative))).unwrap_err();
    assert_eq!(err.code(), ErrorCode::WrongCborType);
}

#[test]
fn malformed_non_canonical_missing_and_unknown_keys_are_refused() {
    // A lone break byte; a map whose only value is missing; a body with a byte after the map.
    for body in [&[0xff][..], &[0xa1, 0x61, b'x'], &[0xa0, 0x00]] {
        let err = decode_all::<Request>(&frame(kinds::GET_ASSIGNMENT, body)).unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{err:?}");
    }
    // {"path": "a", "offset": 5}: canonical, then with 5 in long form, then with the keys unsorted.
    let path = [0x64, b'p', b'a', b't', b'h', 0x61, b'a'];
    let offset = [0x66, b'o', b'f', b'f', b's', b'e', b't'];
    let body = |first: &[u8], second: &[u8], five: &[u8]| [&[0xa2][..], first, second, five].concat();
    assert!(decode_all::<Request>(&frame(kinds::GET_TARGET, &body(&path, &offset, &[0x05]))).is_ok());
    for bad in [body(&path, &offset, &[0x18, 0x05]), [&[0xa2][..], &offset, &[0x05], &path].concat()] {
        let err = decode_all::<Request>(&frame(kinds::GET_TARGET, &bad)).unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{err:?}");
    }
    let missing = map(vec![("name", Value::Text("timestamp.json".into()))]);
    assert!(matches!(decode_all::<Request>(&frame(0x01, &cbor(&missing))), Err(WireError::Malformed { .. })));
    let extra = map(vec![("extra", 1u64.into())]);
    assert!(matches!(decode_all::<Request>(&frame(0x02, &cbor(&extra))), Err(WireError::Malformed { .. })));
}

#[test]
fn unsafe_names_and_paths_are_invalid() {
    for name in ["", "../root.json", ".hidden", "a/b.json", "timestamp.json\0"] {
        let r = Request::GetMetadata { name: name.into(), max_len: 1 };
        let f = frame(kinds::GET_METADATA, &cbor(&r.to_value()));
        let err = decode_all::<Request>(&f).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{name:?}");
    }
    for path in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "a\nb"] {
        let r = Request::GetTarget { path: path.into(), offset: 0, len: None };
        let err = decode_all::<Request>(&frame(kinds::GET_TARGET, &cbor(&r.to_value()))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{path:?}");
    }
}

#[test]
fn request_reader_refuses_bytes_after_the_request() {
    let mut f = encode_frame(&Request::GetAssignment { device: None }, &Limits::default()).unwrap();
    f.push(0);
    assert_eq!(RequestReader::new(Limits::default()).push(&f), Err(WireError::TrailingBytes { extra: 1 }));
}

#[test]
fn response_reader_streams_exactly_the_declared_range() {
    let req = Request::GetTarget { path: "t".into(), offset: 4, len: None };
    let mut bytes =
        encode_frame(&Response::TargetHeader { total_len: 10, offset: 4, len: 6 }, &Limits::default()).unwrap();
    bytes.extend_from_slice(b"456789");
    let mut r = ResponseReader::new(&req, Limits::default());
    let first = r.push(&bytes[..bytes.len() - 2]).unwrap();
    assert!(matches!(first.response, Some(Response::TargetHeader { len: 6, .. })));
    assert_eq!(first.body, b"4567");
    assert_eq!(r.finish(), Err(WireError::Truncated { received: 4 }));
    assert_eq!(r.push(&bytes[bytes.len() - 2..]).unwrap().body, b"89");
    assert_eq!(r.finish(), Ok(()));
    assert_eq!(r.push(b"x"), Err(WireError::TrailingBytes { extra: 1 }));
}

#[test]
fn response_reader_refuses_answers_that_do_not_fit_the_request() {
    let limits = Limits::default();
    let req = Request::GetTarget { path: "t".into(), offset: 4, len: Some(2) };
    let wrong_offset = encode_frame(&Response::TargetHeader { total_len: 10, offset: 0, len: 2 }, &limits).unwrap();
    let too_long = encode_frame(&Response::TargetHeader { total_len: 10, offset: 4, len: 6 }, &limits).unwrap();
    let wrong_kind = encode_frame(&Response::Ack, &limits).unwrap();
    for f in [wrong_offset, too_long, wrong_kind] {
        let err = ResponseReader::new(&req, limits).push(&f).unwrap_err();
        assert!(matches!(err, WireError::UnexpectedResponse { .. }), "{err:?}");
    }
    let past_end = frame(
        kinds::TARGET_HEADER,
        &cbor(&map(vec![("total_len", 5u64.into()), ("offset", 4u64.into()), ("len", 2u64.into())])),
    );
    assert_eq!(ResponseReader::new(&req, limits).push(&past_end).unwrap_err().code(), ErrorCode::InvalidRequest);
}

#[test]
fn metadata_answer_is_bounded_by_max_len_before_buffering() {
    let req = Request::GetMetadata { name: "timestamp.json".into(), max_len: 100 };
    let mut r = ResponseReader::new(&req, Limits::default());
    let err = r.push(&frame_header(kinds::METADATA, 1_000_000)).unwrap_err();
    assert_eq!(err, WireError::Oversized { kind: kinds::METADATA, len: 1_000_000, limit: 132 });
    let f = encode_frame(&Response::Metadata { bytes: vec![7; 101] }, &Limits::default()).unwrap();
    let err = ResponseReader::new(&req, Limits::default()).push(&f).unwrap_err();
    assert!(matches!(err, WireError::UnexpectedResponse { .. }));
}

#[test]
fn encoder_refuses_what_the_receiver_would_refuse_and_cuts_long_messages() {
    let big = Response::Assignment { bytes: vec![0; Limits::ASSIGNMENT as usize] };
    assert!(matches!(encode_frame(&big, &Limits::default()), Err(WireError::Oversized { .. })));
    let Response::Error { message, .. } = Response::error(ErrorCode::Internal, "é".repeat(1000)) else {
        unreachable!()
    };
    assert!(message.len() <= Limits::MAX_ERROR_MESSAGE && message.len() >= Limits::MAX_ERROR_MESSAGE - 1);
    let f = encode_frame(&Response::error(ErrorCode::Internal, "x".repeat(10_000)), &Limits::default());
    assert!(f.is_ok());
}

#[test]
fn mutated_frames_never_panic_and_whatever_is_accepted_is_canonical() {
    // A cheap, deterministic stand-in for the `wire_frame` fuzz target: flip, drop and insert bytes in valid
    // frames, decode in uneven pieces, and check accepted frames re-encode to exactly their bytes.
    fn check<M: Message + fmt::Debug>(data: &[u8], step: usize) {
        let mut d = FrameDecoder::<M>::new(Limits::default());
        let (mut start, mut at) = (0, 0);
        while at < data.len() {
            let Ok(used) = d.push(&data[at..(at + step).min(data.len())]) else { return };
            at += used;
            if let Some(m) = d.pop() {
                assert_eq!(encode_frame(&m, &Limits::default()).unwrap(), &data[start..at], "{m:?}");
                start = at;
            }
        }
        let _ = d.finish();
    }
    let seeds: Vec<Vec<u8>> = all_requests()
        .iter()
        .map(|r| encode_frame(r, &Limits::default()).unwrap())
        .chain(all_responses().iter().map(|r| encode_frame(r, &Limits::default()).unwrap()))
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut f = seeds[next() as usize % seeds.len()].clone();
        for _ in 0..1 + next() % 3 {
            let i = next() as usize % f.len();
            match next() % 3 {
                0 => f[i] ^= 1 << (next() % 8),
                1 => drop(f.remove(i)),
                _ => f.insert(i, next() as u8),
            }
            if f.is_empty() {
                break;
            }
        }
        let step = 1 + next() as usize % 16;
        check::<Request>(&f, step);
        check::<Response>(&f, step);
    }
}

#[test]
fn oversized_evidence_is_refused_from_its_header_and_a_short_challenge_is_a_typed_error() {
    let mut d = FrameDecoder::<Request>::new(Limits::default());
    let err = d.push(&frame_header(kinds::POST_EVIDENCE, Limits::POST_EVIDENCE + 1)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Oversized);
    let short = map(vec![("nonce_challenge", Value::Bytes(vec![1; 31]))]);
    assert_eq!(
        decode_all::<Response>(&frame(kinds::CHALLENGE, &cbor(&short))),
        Err(WireError::WrongCborType { kind: kinds::CHALLENGE, field: "nonce_challenge", expected: "32 bytes" })
    );
    let unknown = map(vec![
        ("status", Value::Text("contraindicated".into())),
        ("expires", 1u64.into()),
        ("tier", Value::Text("software".into())),
    ]);
    let err = decode_all::<Response>(&frame(kinds::ATTESTED, &cbor(&unknown))).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidRequest, "an attested status other than affirming/warning: {err}");
}

#[test]
fn enrolment_token_must_be_short_printable_text() {
    for (token, hardware) in [("", "x"), ("t\n", "x"), (&*"t".repeat(129), "x"), ("t", &*"h".repeat(257))] {
        let r = Request::Enroll { token: token.into(), hardware: hardware.into(), tpm: None };
        let err = decode_all::<Request>(&frame(kinds::ENROLL, &cbor(&r.to_value()))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidRequest, "{token:?} {hardware:?}");
    }
    let r = Request::Enroll { token: "t".into(), hardware: String::new(), tpm: Some(vec![4; 326]) };
    let err = decode_all::<Request>(&frame(kinds::ENROLL, &cbor(&r.to_value()))).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Malformed, "oversized TPM facts: {err}");
}

#[test]
fn attestation_answers_must_fit_their_requests() {
    let limits = Limits::default();
    let not_found = encode_frame(&Response::NotFound, &limits).unwrap();
    // A server that does not attest says NotFound to GetChallenge; evidence is never answered with it.
    assert!(ResponseReader::new(&Request::GetChallenge { device: None }, limits).push(&not_found).is_ok());
    let evidence = Request::PostEvidence { evidence: vec![1], relay: None };
    let err = ResponseReader::new(&evidence, limits).push(&not_found).unwrap_err();
    assert!(matches!(err, WireError::UnexpectedResponse { .. }), "{err:?}");
    let challenge = encode_frame(&Response::Challenge { nonce_challenge: [0; 32] }, &limits).unwrap();
    let err = ResponseReader::new(&Request::GetAssignment { device: None }, limits).push(&challenge).unwrap_err();
    assert!(matches!(err, WireError::UnexpectedResponse { .. }), "{err:?}");
}

#[test]
fn relayed_evidence_names_both_the_device_and_its_exporter() {
    for entries in [
        vec![("evidence", Value::Bytes(vec![1])), ("device", Value::Bytes(vec![3; 32]))],
        vec![("evidence", Value::Bytes(vec![1])), ("exporter", Value::Bytes(vec![4; 32]))],
    ] {
        let err = decode_all::<Request>(&frame(kinds::POST_EVIDENCE, &cbor(&map(entries)))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Malformed, "{err}");
    }
    let short = map(vec![
        ("evidence", Value::Bytes(vec![1])),
        ("device", Value::Bytes(vec![3; 32])),
        ("exporter", Value::Bytes(vec![4; 31])),
    ]);
    let err = decode_all::<Request>(&frame(kinds::POST_EVIDENCE, &cbor(&short))).unwrap_err();
    assert!(matches!(err, WireError::WrongCborType { field: "exporter", .. }), "{err:?}");
}

#[test]
fn unknown_error_codes_survive_the_trip() {
    let r = Response::Error { code: ErrorCode::Other(999), message: String::new() };
    assert_eq!(decode_all::<Response>(&encode_frame(&r, &Limits::default()).unwrap()).unwrap(), vec![r]);
    for n in 1..=13 {
        assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
    }
}
