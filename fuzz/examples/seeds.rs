//! Writes the seeds of the binary formats into `fuzz/corpus/TARGET/` from the repository's fixtures: one valid
//! instance of each (a manifest's canonical CBOR, a package, wire frames both ways, a telemetry batch, evidence,
//! TPM enrolment facts, director documents), so libFuzzer starts past the outer layer of each decoder. The text
//! formats' seeds are fixture files copied as they are. Run from `fuzz/`: `cargo run --example seeds`.

use std::path::Path;

use outpost_attestation::quote::{AK_PUBLIC_LEN, TpmEnrolment};
use outpost_attestation::{Claims, Evidence, Identity, OemId};
use outpost_shared::director::{
    ASSIGNMENT_DOMAIN, AssignedTarget, Assignment, Bundle, DirectorKeyDoc, REVOCATIONS_DOMAIN, RevocationList, Revoked,
    seal,
};
use outpost_shared::telemetry::{Batch, BatchLimits};
use outpost_shared::wire::{Limits, Request, Response, encode_frame};
use outpost_shared::{Digest, Manifest, canonical, package};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn main() {
    let manifest = |file: &str| {
        let text = std::fs::read_to_string(Path::new("../fixtures/models").join(file)).expect("fixture manifest");
        Manifest::from_toml(&text, file).expect("fixture manifest parses")
    };
    for file in ["ppocr-direction.toml", "ppocr-direction-fixed.toml"] {
        write("manifest_cbor", file.trim_end_matches(".toml"), &manifest(file).to_cbor());
    }
    // A package is its header, the manifest and the model; the model's bytes are not parsed here.
    let m = manifest("ppocr-direction.toml");
    write("package_decode", "ppocr-direction-tiny-model", &package::encode(&m, b"not an onnx graph"));

    let limits = Limits::default();
    let requests = [
        Request::GetMetadata { name: "timestamp.json".into(), max_len: 16384 },
        Request::GetAssignment { device: None },
        Request::GetTarget { path: "models/ppocr-direction-2.0.0.opkg".into(), offset: 0, len: Some(4096) },
    ];
    let responses = [
        Response::Metadata { bytes: b"{\"signed\":{}}".to_vec() },
        Response::NotFound,
        Response::TargetHeader { total_len: 4096, offset: 0, len: 4096 },
        Response::Ack,
    ];
    // The first byte is the step the target feeds the decoder with.
    let frames = |msgs: Vec<Vec<u8>>| [vec![7u8], msgs.concat()].concat();
    write(
        "wire_frame",
        "requests",
        &frames(requests.iter().map(|r| encode_frame(r, &limits).expect("frame")).collect()),
    );
    write(
        "wire_frame",
        "responses",
        &frames(responses.iter().map(|r| encode_frame(r, &limits).expect("frame")).collect()),
    );

    let batch = Batch { stream: 7, first_seq: 1, events: Vec::new(), dropped: 0 };
    write("telemetry_batch", "empty", &batch.encode(&BatchLimits::default()).expect("batch"));

    let device = Identity::from_seed([3; 32]);
    let claims = Claims {
        nonce: [1; 32],
        ueid: device.public_key(),
        oemid: Some(OemId::Ieee([0, 0x1b, 0x63])),
        hwmodel: Some(b"rpi4".to_vec()),
        bootcount: 12,
        swname: "outpost-agent".into(),
        swversion: "0.1.0".into(),
        software_digest: Digest::of(b"agent"),
        model_digest: Some(Digest::of(b"model")),
        policy_digest: None,
        tpm_quote: None,
    };
    write("evidence_cose", "software", &Evidence::sign(&device, &claims).expect("evidence"));
    let tpm = TpmEnrolment { ak: [4; AK_PUBLIC_LEN], pcrs: 0b1000_0001, values: vec![[0xaa; 32], [0xbb; 32]] };
    write("tpm_quote", "enrolment", &tpm.to_bytes());

    let director = Identity::from_seed([5; 32]);
    let public = *director.public_key().as_bytes();
    let target = AssignedTarget {
        path: "models/ppocr-direction-2.0.0.opkg".into(),
        length: 585_600,
        sha256: Digest::of(b"package"),
        release: "r1".into(),
        channel: "stable".into(),
        rollout: String::new(),
        retry: 0,
    };
    let assignment = Assignment {
        device: device.public_key().to_hex(),
        version: 3,
        expires: 1_900_000_000,
        targets: vec![target.clone()],
        secondaries: Vec::new(),
        shadow: Some(target),
        router: None,
    };
    let revocations = RevocationList {
        version: 2,
        expires: 1_900_000_000,
        revoked: vec![Revoked { digest: Digest::of(b"bad"), reason: "recalled".into(), at: 1_800_000_000 }],
    };
    let bundle = Bundle {
        assignment: seal(&assignment, ASSIGNMENT_DOMAIN, &public, |m| director.sign(m)).expect("sealed"),
        revocations: seal(&revocations, REVOCATIONS_DOMAIN, &public, |m| director.sign(m)).expect("sealed"),
    };
    write("director_docs", "assignment", &canonical::to_vec(&assignment).expect("cbor"));
    write("director_docs", "revocations", &canonical::to_vec(&revocations).expect("cbor"));
    write("director_docs", "envelope", &bundle.assignment);
    write("director_docs", "bundle", &canonical::to_vec(&bundle).expect("cbor"));
    write("director_docs", "key.json", &DirectorKeyDoc { public }.to_json());
}
