//! Test support for attestation: keys, a device directory, signed reference values, a verifier on a manual clock,
//! connections (challenge + exporter), honest evidence, and hand-built COSE_Sign1 messages for the format attacks.
#![allow(dead_code)] // each test binary uses a different subset

#[cfg(feature = "tpm")]
pub mod swtpm;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ciborium::Value;
use outpost_attestation::evidence::{CLAIM_NONCE, EXPORTER_LEN};
use outpost_attestation::{
    AttestationResult, Challenge, Claims, DeviceDirectory, DeviceRecord, DeviceStatus, Evidence, Expected, Identity,
    NotAttested, Presented, PublicKey, ReferenceValues, SoftwareRef, Verifier, VerifierConfig,
};
use outpost_shared::Digest;
use outpost_shared::clock::ManualClock;
use outpost_shared::rng::SeededRng;

pub const NOW: u64 = 1_795_881_600;
pub const DEVICE_SEED: [u8; 32] = [1; 32];
pub const OTHER_DEVICE_SEED: [u8; 32] = [2; 32];
pub const TEAM_SEED: [u8; 32] = [3; 32];
pub const ROGUE_SEED: [u8; 32] = [4; 32];
pub const AGENT: &str = "outpost-agent";
pub const AGENT_VERSION: &str = "0.1.0";
pub const VULNERABLE_VERSION: &str = "0.0.9";

pub fn agent_digest() -> Digest {
    Digest::of(b"outpost-agent 0.1.0 binary")
}
pub fn vulnerable_agent_digest() -> Digest {
    Digest::of(b"outpost-agent 0.0.9 binary")
}
pub fn model_digest() -> Digest {
    Digest::of(b"model package v2")
}
pub fn previous_model_digest() -> Digest {
    Digest::of(b"model package v1")
}
pub fn policy_digest() -> Digest {
    Digest::of(b"site policy")
}

pub fn device() -> Identity {
    Identity::from_seed(DEVICE_SEED)
}
pub fn other_device() -> Identity {
    Identity::from_seed(OTHER_DEVICE_SEED)
}
pub fn team() -> Identity {
    Identity::from_seed(TEAM_SEED)
}

/// The hub's device registry, in memory.
#[derive(Debug, Default, Clone)]
pub struct Devices(pub HashMap<PublicKey, DeviceRecord>);

impl DeviceDirectory for Devices {
    fn device(&self, key: &PublicKey) -> Option<DeviceRecord> {
        self.0.get(key).cloned()
    }
}

/// A software-tier device in good standing that should run [`model_digest`] and [`policy_digest`].
pub fn good_record() -> DeviceRecord {
    DeviceRecord {
        status: DeviceStatus::Active,
        tpm: None,
        model: Expected::Exactly(Some(model_digest())),
        policy: Expected::Exactly(Some(policy_digest())),
    }
}

/// Reference values: the current agent allowed, the vulnerable one revoked; valid for a day.
pub fn reference_values(serial: u64) -> ReferenceValues {
    ReferenceValues {
        serial,
        issued_at: NOW,
        expires: NOW + 86_400,
        software: vec![
            SoftwareRef { name: AGENT.into(), version: AGENT_VERSION.into(), sha256: agent_digest(), revoked: false },
            SoftwareRef {
                name: AGENT.into(),
                version: VULNERABLE_VERSION.into(),
                sha256: vulnerable_agent_digest(),
                revoked: true,
            },
        ],
    }
}

/// One TLS connection as the verifier sees it: its exporter output and the challenge issued on it.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    pub exporter: [u8; EXPORTER_LEN],
    pub challenge: Challenge,
}

impl Conn {
    pub fn nonce(&self) -> [u8; 32] {
        self.challenge.nonce(&self.exporter)
    }
}

/// A hub: verifier with installed reference values, a device directory holding [`device`], a manual clock.
pub struct Hub {
    pub clock: Arc<ManualClock>,
    pub verifier: Verifier,
    pub devices: Devices,
    rng: SeededRng,
    connections: u8,
}

impl Hub {
    pub fn new() -> Hub {
        Hub::with_config(VerifierConfig::default())
    }

    pub fn with_config(config: VerifierConfig) -> Hub {
        let clock = Arc::new(ManualClock::new(NOW));
        let verifier = Verifier::new(config, clock.clone(), team().public_key());
        verifier.install_reference_values(&reference_values(1).sign(&team())).expect("reference values install");
        let mut devices = Devices::default();
        devices.0.insert(device().public_key(), good_record());
        Hub { clock, verifier, devices, rng: SeededRng::new(42), connections: 0 }
    }

    /// A new connection: a fresh exporter value and a challenge issued on it.
    pub fn connect(&mut self) -> Conn {
        self.connections += 1;
        let challenge = self.verifier.issue_challenge(device().public_key(), &mut self.rng).expect("challenge");
        Conn { exporter: [self.connections; EXPORTER_LEN], challenge }
    }

    pub fn appraise_as(
        &self,
        conn: &Conn,
        device: PublicKey,
        evidence: &[u8],
    ) -> Result<AttestationResult, NotAttested> {
        let presented = Presented { challenge: &conn.challenge, exporter: &conn.exporter, device, evidence };
        self.verifier.appraise(&presented, &self.devices)
    }

    /// Appraises evidence presented by [`device`] on `conn`.
    pub fn appraise(&self, conn: &Conn, evidence: &[u8]) -> Result<AttestationResult, NotAttested> {
        self.appraise_as(conn, device().public_key(), evidence)
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

/// What an honest agent on [`device`] claims, answering `nonce`.
pub fn claims(nonce: [u8; 32]) -> Claims {
    Claims {
        nonce,
        ueid: device().public_key(),
        oemid: None,
        hwmodel: Some(b"rpi5".to_vec()),
        bootcount: 17,
        swname: AGENT.into(),
        swversion: AGENT_VERSION.into(),
        software_digest: agent_digest(),
        model_digest: Some(model_digest()),
        policy_digest: Some(policy_digest()),
        tpm_quote: None,
    }
}

/// Honest evidence from [`device`] for `conn`.
pub fn evidence(conn: &Conn) -> Vec<u8> {
    Evidence::sign(&device(), &claims(conn.nonce())).expect("sign")
}

/// Evidence from [`device`] for `conn` with the claims edited by `edit`.
pub fn evidence_with(conn: &Conn, edit: impl FnOnce(&mut Claims)) -> Vec<u8> {
    let mut c = claims(conn.nonce());
    edit(&mut c);
    Evidence::sign(&device(), &c).expect("sign")
}

pub fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

pub fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).unwrap();
    out
}

/// The honest claims for `conn` as a CBOR map, for tests that tamper with its entries.
pub fn claims_map(conn: &Conn) -> Vec<(Value, Value)> {
    let bytes = claims(conn.nonce()).encode().unwrap();
    match ciborium::de::from_reader::<Value, _>(bytes.as_slice()).unwrap() {
        Value::Map(m) => m,
        _ => unreachable!(),
    }
}

/// The protected header Outpost uses: `{1: -19}`, encoded.
pub fn ed25519_protected() -> Vec<u8> {
    cbor(&Value::Map(vec![(int(1), int(-19))]))
}

/// A tagged COSE_Sign1 built by hand and signed by `key` over the RFC 9052 Sig_structure, so a test controls
/// every byte of the headers and payload.
pub fn raw_sign1(key: &Identity, protected: Vec<u8>, unprotected: Vec<(Value, Value)>, payload: Vec<u8>) -> Vec<u8> {
    let tbs = cbor(&Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.clone()),
        Value::Bytes(vec![]),
        Value::Bytes(payload.clone()),
    ]));
    let sig = key.sign(&tbs);
    cbor(&Value::Tag(
        18,
        Box::new(Value::Array(vec![
            Value::Bytes(protected),
            Value::Map(unprotected),
            Value::Bytes(payload),
            Value::Bytes(sig.to_vec()),
        ])),
    ))
}

/// Honest claims for `conn`, signed by [`device`] into a hand-built envelope with the given headers.
pub fn with_headers(conn: &Conn, protected: Vec<u8>, unprotected: Vec<(Value, Value)>) -> Vec<u8> {
    raw_sign1(&device(), protected, unprotected, claims(conn.nonce()).encode().unwrap())
}

/// A claims map, signed properly by [`device`]: for payload-level attacks.
pub fn with_payload(payload: Vec<u8>) -> Vec<u8> {
    raw_sign1(&device(), ed25519_protected(), vec![], payload)
}

/// The nonce claim key, for tests that edit it.
pub const NONCE_KEY: i64 = CLAIM_NONCE;
