//! Device identity and attestation for Outpost, modelled on IETF RATS (RFC 9334) and EAT (RFC 9711).
//!
//! Will hold: the device's Ed25519 identity, evidence as an Entity Attestation Token in COSE_Sign1, the hub's
//! fail-closed verifier with signed reference values and single-use nonces, and an optional TPM backend.
//! It knows nothing of QUIC or storage. So far it holds `identity`: the Ed25519 identity, its key files and the
//! pinned-key TLS configs built from it; the rest arrives with the attestation issue.

pub mod identity;
