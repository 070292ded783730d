//! A microcontroller's compact EAT, encoded by `outpost-firmware` without allocation, is accepted by the hub's
//! verifier exactly like an agent's evidence (and refused for the same attacks).

mod support;

use outpost_attestation::{
    Claims, DeviceRecord, DeviceStatus, Evidence, Expected, Identity, Reason, SoftwareRef, Status,
};
use outpost_firmware::eat::{EatClaims, MAX_EAT_LEN, encode_eat, sign_with};
use outpost_shared::Digest;
use support::*;

const MCU_SEED: [u8; 32] = [5; 32];
const FIRMWARE: &str = "outpost-fw-h743";
const FIRMWARE_VERSION: &str = "7";

fn firmware_digest() -> Digest {
    Digest::of(b"firmware image 7")
}

fn mcu_eat(conn: &Conn, firmware: &Digest) -> Vec<u8> {
    let mcu = ed25519_dalek::SigningKey::from_bytes(&MCU_SEED);
    let nonce = conn.nonce();
    let key = mcu.verifying_key().to_bytes();
    let claims = EatClaims {
        nonce: &nonce,
        device_key: &key,
        hwmodel: Some(b"stm32h743"),
        bootcount: 3,
        swname: FIRMWARE,
        swversion: FIRMWARE_VERSION,
        firmware_sha256: &firmware.0,
    };
    let mut out = [0u8; MAX_EAT_LEN];
    let n = encode_eat(&claims, sign_with(&mcu), &mut out).expect("encode");
    out[..n].to_vec()
}

/// A hub that knows the secondary (no model, no policy) and lists its firmware in the reference values.
fn hub() -> Hub {
    let mut hub = Hub::new();
    let mut doc = reference_values(2);
    doc.software.push(SoftwareRef {
        name: FIRMWARE.into(),
        version: FIRMWARE_VERSION.into(),
        sha256: firmware_digest(),
        revoked: false,
    });
    hub.verifier.install_reference_values(&doc.sign(&team())).unwrap();
    hub.devices.0.insert(
        Identity::from_seed(MCU_SEED).public_key(),
        DeviceRecord {
            status: DeviceStatus::Active,
            tpm: None,
            model: Expected::Exactly(None),
            policy: Expected::Exactly(None),
        },
    );
    hub
}

#[test]
fn microcontroller_eat_is_accepted() {
    let mut hub = hub();
    let conn = hub.connect();
    let mcu = Identity::from_seed(MCU_SEED).public_key();
    let result = hub.appraise_as(&conn, mcu, &mcu_eat(&conn, &firmware_digest())).expect("attested");
    assert_eq!(result.status, Status::Affirming);
    assert_eq!(result.device, mcu);
    assert_eq!(result.software, (FIRMWARE.to_owned(), FIRMWARE_VERSION.to_owned()));
    assert_eq!(result.bootcount, 3);
}

#[test]
fn microcontroller_eat_is_byte_identical_to_the_hub_encoding() {
    let mut hub = hub();
    let conn = hub.connect();
    let bytes = mcu_eat(&conn, &firmware_digest());
    let parsed = Evidence::parse(&bytes).expect("parses");
    let expected = Claims {
        nonce: conn.nonce(),
        ueid: Identity::from_seed(MCU_SEED).public_key(),
        oemid: None,
        hwmodel: Some(b"stm32h743".to_vec()),
        bootcount: 3,
        swname: FIRMWARE.into(),
        swversion: FIRMWARE_VERSION.into(),
        software_digest: firmware_digest(),
        model_digest: None,
        policy_digest: None,
        tpm_quote: None,
    };
    assert_eq!(parsed.claims_unverified(), &expected);
    // Ed25519 is deterministic: the std signer produces the very same token.
    assert_eq!(Evidence::sign(&Identity::from_seed(MCU_SEED), &expected).unwrap(), bytes);
}

#[test]
fn microcontroller_with_unlisted_firmware_is_rejected() {
    let mut hub = hub();
    let conn = hub.connect();
    let mcu = Identity::from_seed(MCU_SEED).public_key();
    let rogue = Digest::of(b"tampered firmware");
    let err = hub.appraise_as(&conn, mcu, &mcu_eat(&conn, &rogue)).unwrap_err();
    assert_eq!(err.reason, Reason::UnknownSoftware(rogue));
}

#[test]
fn microcontroller_eat_from_another_connection_is_rejected() {
    let mut hub = hub();
    let made_on = hub.connect();
    let presented_on = hub.connect();
    let mcu = Identity::from_seed(MCU_SEED).public_key();
    let forwarded = Conn { exporter: made_on.exporter, challenge: presented_on.challenge };
    let err = hub.appraise_as(&presented_on, mcu, &mcu_eat(&forwarded, &firmware_digest())).unwrap_err();
    assert_eq!(err.reason, Reason::NonceMismatch);
}
