//! Attacks on the manifest: every forged, misaddressed, rolled-back or stale manifest is rejected before a single
//! byte of flash is touched.

mod support;

use outpost_firmware::manifest::{
    DecodeError, MAX_BODY_LEN, MAX_ENVELOPE_LEN, MAX_SIGNING_INPUT_LEN, encode_envelope, key_id, manifest_signing_input,
};
use outpost_firmware::verify::SignatureError;
use outpost_firmware::{Expiry, Freshness, InstallError, Manifest, ManifestError, Policy, SlotError, verify_manifest};
use support::*;

fn policy(keys: &[[u8; 32]]) -> Policy<'_> {
    Policy {
        trusted_keys: keys,
        hardware_id: HARDWARE_ID,
        device_id: DEVICE_ID,
        min_release_counter: OLD_RELEASE,
        latest_known_time: 0,
        latest_known_counter: 0,
    }
}

/// Offers `envelope` to a freshly provisioned device and checks that it is refused with `expected` and that the
/// flash is byte-for-byte unchanged, with no erase or write issued.
fn assert_device_refuses(envelope: &[u8], now: Freshness<'_>, expected: ManifestError) {
    let keys = trusted_keys();
    let mut flash = provisioned();
    let before = flash.mem.clone();
    {
        let mut dev = device(&mut flash, layout(), &keys);
        match dev.begin_install(envelope, now) {
            Err(InstallError::Manifest(e)) => assert_eq!(e, expected),
            Err(other) => panic!("expected {expected:?}, got {other:?}"),
            Ok(_) => panic!("expected {expected:?}, the install started"),
        }
    }
    assert_eq!(flash.mutations, 0, "no erase or write may happen for a rejected manifest");
    assert!(flash.mem == before, "flash changed");
}

const NOW: Freshness<'static> = Freshness::GatewayCounter(NOW_COUNTER);

#[test]
fn well_formed_manifest_from_the_hub_verifies() {
    let keys = trusted_keys();
    let img = new_image();
    let m = manifest_for(&img, NEW_RELEASE);
    let env = sign_manifest(&hub_key(), &m);
    let verified = verify_manifest(&env, &policy(&keys), NOW).unwrap();
    assert_eq!(*verified.manifest(), m);
    assert_eq!(verified.observed(), outpost_firmware::verify::Observed::GatewayCounter(NOW_COUNTER));
}

#[test]
fn wrong_hardware_id_rejected() {
    let keys = trusted_keys();
    let img = new_image();
    let m = Manifest { hardware_id: b"nrf52840-other-board", ..manifest_for(&img, NEW_RELEASE) };
    let env = sign_manifest(&hub_key(), &m);
    assert_eq!(verify_manifest(&env, &policy(&keys), NOW), Err(ManifestError::WrongHardwareId));
    assert_device_refuses(&env, NOW, ManifestError::WrongHardwareId);
}

#[test]
fn wrong_device_id_rejected() {
    let keys = trusted_keys();
    let img = new_image();
    let m = Manifest { device_id: OTHER_DEVICE_ID, ..manifest_for(&img, NEW_RELEASE) };
    let env = sign_manifest(&hub_key(), &m);
    assert_eq!(verify_manifest(&env, &policy(&keys), NOW), Err(ManifestError::WrongDeviceId));
    assert_device_refuses(&env, NOW, ManifestError::WrongDeviceId);
}

#[test]
fn lower_release_counter_rejected() {
    let keys = trusted_keys();
    let img = new_image();

    // Below the counter provisioned with the factory image.
    let older = sign_manifest(&hub_key(), &manifest_for(&img, OLD_RELEASE - 1));
    let rollback = ManifestError::Rollback { offered: OLD_RELEASE - 1, stored: OLD_RELEASE };
    assert_eq!(verify_manifest(&older, &policy(&keys), NOW), Err(rollback));
    assert_device_refuses(&older, NOW, rollback);

    // Confirming release 9 raises the stored counter: release 7 (newer than the factory image) is now a rollback.
    let mut flash = provisioned();
    let mut dev = device(&mut flash, layout(), &keys);
    install(&mut dev, &sign_manifest(&hub_key(), &manifest_for(&img, 9)), &img).unwrap();
    assert!(dev.boot().unwrap().trial);
    dev.confirm().unwrap();
    assert_eq!(dev.slots_mut().state().unwrap().unwrap().min_release_counter, 9);
    let seven = sign_manifest(&hub_key(), &manifest_for(&img, 7));
    match dev.begin_install(&seven, NOW) {
        Err(InstallError::Manifest(e)) => assert_eq!(e, ManifestError::Rollback { offered: 7, stored: 9 }),
        _ => panic!("release 7 accepted after release 9 was confirmed"),
    }

    // Defence in depth: a manifest verified under a laxer policy is still refused by the slots.
    let lax = Policy { min_release_counter: 0, ..policy(&keys) };
    let verified = verify_manifest(&seven, &lax, NOW).unwrap();
    match dev.slots_mut().begin_update(&verified) {
        Err(SlotError::Rollback { offered: 7, stored: 9 }) => {}
        Err(e) => panic!("unexpected {e:?}"),
        Ok(_) => panic!("slots accepted a rollback"),
    }
}

#[test]
fn expired_manifest_rejected() {
    let keys = trusted_keys();
    let img = new_image();

    // Gateway counter: valid strictly before the expiry value.
    let env = sign_manifest(&hub_key(), &manifest_for(&img, NEW_RELEASE));
    let at_expiry = Freshness::GatewayCounter(EXPIRES_COUNTER);
    let expired = ManifestError::Expired { expires_at: EXPIRES_COUNTER, now: EXPIRES_COUNTER };
    assert_eq!(verify_manifest(&env, &policy(&keys), at_expiry), Err(expired));
    assert_device_refuses(&env, at_expiry, expired);
    assert!(verify_manifest(&env, &policy(&keys), Freshness::GatewayCounter(EXPIRES_COUNTER - 1)).is_ok());

    // Unix seconds: "now" comes from a hub-signed time token.
    const EXPIRES: u64 = 1_800_000_000;
    let m = Manifest { expiry: Expiry::UnixSeconds(EXPIRES), ..manifest_for(&img, NEW_RELEASE) };
    let env = sign_manifest(&hub_key(), &m);
    let late = sign_time_token(&hub_key(), DEVICE_ID, EXPIRES + 60);
    let expired = ManifestError::Expired { expires_at: EXPIRES, now: EXPIRES + 60 };
    assert_eq!(verify_manifest(&env, &policy(&keys), Freshness::TimeToken(&late)), Err(expired));
    assert_device_refuses(&env, Freshness::TimeToken(&late), expired);
    let early = sign_time_token(&hub_key(), DEVICE_ID, EXPIRES - 60);
    assert!(verify_manifest(&env, &policy(&keys), Freshness::TimeToken(&early)).is_ok());

    // A bare counter cannot stand in for a signed time.
    assert_eq!(
        verify_manifest(&env, &policy(&keys), Freshness::GatewayCounter(0)),
        Err(ManifestError::FreshnessKindMismatch)
    );
}

#[test]
fn forged_or_misdirected_time_token_rejected() {
    let keys = trusted_keys();
    let img = new_image();
    const EXPIRES: u64 = 1_800_000_000;
    let m = Manifest { expiry: Expiry::UnixSeconds(EXPIRES), ..manifest_for(&img, NEW_RELEASE) };
    let env = sign_manifest(&hub_key(), &m);
    let p = policy(&keys);
    let now = EXPIRES - 3_600;

    let forged = sign_time_token(&rogue_key(), DEVICE_ID, now);
    assert_eq!(
        verify_manifest(&env, &p, Freshness::TimeToken(&forged)),
        Err(ManifestError::TimeToken(SignatureError::UnknownKey))
    );
    let other = sign_time_token(&hub_key(), OTHER_DEVICE_ID, now);
    assert_eq!(verify_manifest(&env, &p, Freshness::TimeToken(&other)), Err(ManifestError::TimeTokenWrongDevice));
    // The manifest envelope itself is signed under another domain tag, so it is no time token.
    assert_eq!(
        verify_manifest(&env, &p, Freshness::TimeToken(&env)),
        Err(ManifestError::TimeToken(SignatureError::BadSignature))
    );
    // An old token replayed below the device's floor.
    let stale = sign_time_token(&hub_key(), DEVICE_ID, now - 1);
    let floor = Policy { latest_known_time: now, ..p };
    assert_eq!(
        verify_manifest(&env, &floor, Freshness::TimeToken(&stale)),
        Err(ManifestError::ClockWentBackwards { offered: now - 1, floor: now })
    );
    // Same for a gateway counter that went backwards.
    let counter_env = sign_manifest(&hub_key(), &manifest_for(&img, NEW_RELEASE));
    let floor = Policy { latest_known_counter: NOW_COUNTER + 1, ..p };
    assert_eq!(
        verify_manifest(&counter_env, &floor, NOW),
        Err(ManifestError::ClockWentBackwards { offered: NOW_COUNTER, floor: NOW_COUNTER + 1 })
    );
}

#[test]
fn bad_signature_rejected() {
    let keys = trusted_keys();
    let img = new_image();
    let m = manifest_for(&img, NEW_RELEASE);
    let hub_id = key_id(&hub_key().verifying_key().to_bytes());

    // Signed by a key the device does not trust.
    let rogue = sign_manifest(&rogue_key(), &m);
    let unknown = ManifestError::Signature(SignatureError::UnknownKey);
    assert_eq!(verify_manifest(&rogue, &policy(&keys), NOW), Err(unknown));
    assert_device_refuses(&rogue, NOW, unknown);

    // Signed by the rogue key but claiming the hub's key id.
    let mut body = [0u8; MAX_BODY_LEN];
    let n = m.encode(&mut body).unwrap();
    let mut input = [0u8; MAX_SIGNING_INPUT_LEN];
    let rogue_sig = {
        use ed25519_dalek::Signer;
        rogue_key().sign(manifest_signing_input(&body[..n], &mut input).unwrap()).to_bytes()
    };
    let mut out = [0u8; MAX_ENVELOPE_LEN];
    let len = encode_envelope(&hub_id, &body[..n], &rogue_sig, &mut out).unwrap();
    let bad = ManifestError::Signature(SignatureError::BadSignature);
    assert_eq!(verify_manifest(&out[..len], &policy(&keys), NOW), Err(bad));
    assert_device_refuses(&out[..len], NOW, bad);

    // A genuine hub signature moved onto a different body (release bumped after signing).
    let genuine = sign_manifest(&hub_key(), &m);
    let sig: [u8; 64] = genuine[genuine.len() - 64..].try_into().unwrap();
    let bumped = Manifest { release_counter: NEW_RELEASE + 1, ..m };
    let n = bumped.encode(&mut body).unwrap();
    let len = encode_envelope(&hub_id, &body[..n], &sig, &mut out).unwrap();
    assert_eq!(verify_manifest(&out[..len], &policy(&keys), NOW), Err(bad));
    assert_device_refuses(&out[..len], NOW, bad);
}

#[test]
fn every_truncation_and_byte_flip_of_a_signed_manifest_rejected() {
    let keys = trusted_keys();
    let img = new_image();
    let env = sign_manifest(&hub_key(), &manifest_for(&img, NEW_RELEASE));
    let p = policy(&keys);
    assert!(verify_manifest(&env, &p, NOW).is_ok());
    for cut in 0..env.len() {
        assert!(verify_manifest(&env[..cut], &p, NOW).is_err(), "truncated to {cut} bytes accepted");
    }
    for i in 0..env.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut m = env.clone();
            m[i] ^= mask;
            assert!(verify_manifest(&m, &p, NOW).is_err(), "flip {mask:#x} at byte {i} accepted");
        }
    }
    let mut longer = env.clone();
    longer.push(0);
    assert_eq!(
        verify_manifest(&longer, &p, NOW),
        Err(ManifestError::Signature(SignatureError::Decode(DecodeError::TrailingBytes)))
    );
    assert_eq!(
        verify_manifest(&[0x83; MAX_ENVELOPE_LEN + 1], &p, NOW),
        Err(ManifestError::Signature(SignatureError::Decode(DecodeError::TooLong)))
    );
}

/// Builds a body by hand (to get encodings the encoder refuses to produce) and signs it with the hub key.
fn signed_raw_body(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = Vec::new();
    build(&mut body);
    seal(&hub_key(), &body, manifest_signing_input)
}

fn cbor_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.push(0x40 | b.len() as u8); // short byte strings only
    out.extend_from_slice(b);
}

/// A canonical manifest body for `img` with `version`, release `release_raw` (already encoded) and `kind`.
fn raw_manifest(out: &mut Vec<u8>, img: &[u8], version: u8, release_raw: &[u8], kind: u8) {
    out.push(0x88);
    out.push(version);
    cbor_bytes(out, HARDWARE_ID);
    cbor_bytes(out, DEVICE_ID);
    out.push(0x19);
    out.extend_from_slice(&(img.len() as u16).to_be_bytes());
    out.push(0x58);
    out.push(32);
    out.extend_from_slice(&sha256(img));
    out.extend_from_slice(release_raw);
    out.push(kind);
    out.push(0x19);
    out.extend_from_slice(&(EXPIRES_COUNTER as u16).to_be_bytes());
}

#[test]
fn signed_but_malformed_manifest_bodies_rejected() {
    let keys = trusted_keys();
    let img = new_image();
    let p = policy(&keys);

    // The hand-built canonical body matches the encoder, so the variants below differ only where intended.
    let canonical = signed_raw_body(|b| raw_manifest(b, &img, 1, &[NEW_RELEASE as u8], 1));
    assert_eq!(canonical, sign_manifest(&hub_key(), &manifest_for(&img, NEW_RELEASE)));
    assert!(verify_manifest(&canonical, &p, NOW).is_ok());

    let decode = |e| Err(ManifestError::Signature(SignatureError::Decode(e)));
    let long_release = [0x1b, 0, 0, 0, 0, 0, 0, 0, NEW_RELEASE as u8];
    let non_canonical = signed_raw_body(|b| raw_manifest(b, &img, 1, &long_release, 1));
    assert_eq!(verify_manifest(&non_canonical, &p, NOW), decode(DecodeError::NonCanonical));
    let v2 = signed_raw_body(|b| raw_manifest(b, &img, 2, &[NEW_RELEASE as u8], 1));
    assert_eq!(verify_manifest(&v2, &p, NOW), decode(DecodeError::UnsupportedVersion));
    let kind = signed_raw_body(|b| raw_manifest(b, &img, 1, &[NEW_RELEASE as u8], 2));
    assert_eq!(verify_manifest(&kind, &p, NOW), decode(DecodeError::UnknownExpiryKind));
    let trailing = signed_raw_body(|b| {
        raw_manifest(b, &img, 1, &[NEW_RELEASE as u8], 1);
        b.push(0);
    });
    assert_eq!(verify_manifest(&trailing, &p, NOW), decode(DecodeError::TrailingBytes));
}

#[test]
fn encoder_refuses_out_of_limit_fields() {
    use outpost_firmware::manifest::{EncodeError, MAX_ID_LEN};
    let img = new_image();
    let mut buf = [0u8; MAX_BODY_LEN];
    let long_id = [b'x'; MAX_ID_LEN + 1];
    let m = Manifest { device_id: &long_id, ..manifest_for(&img, NEW_RELEASE) };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::BadIdLength));
    let m = Manifest { hardware_id: b"", ..manifest_for(&img, NEW_RELEASE) };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::BadIdLength));
    let m = Manifest { image_len: 0, ..manifest_for(&img, NEW_RELEASE) };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::EmptyImage));
    let m = manifest_for(&img, NEW_RELEASE);
    assert_eq!(m.encode(&mut buf[..10]), Err(EncodeError::BufferTooSmall));
    // The largest legal manifest fits the advertised limits.
    let max_id = [b'y'; MAX_ID_LEN];
    let m = Manifest {
        hardware_id: &max_id,
        device_id: &max_id,
        image_len: u32::MAX,
        release_counter: u64::MAX,
        expiry: Expiry::UnixSeconds(u64::MAX),
        ..m
    };
    let n = m.encode(&mut buf).unwrap();
    assert_eq!(Manifest::decode(&buf[..n]), Ok(m));
    let mut env = [0u8; MAX_ENVELOPE_LEN];
    assert!(encode_envelope(&[0; 8], &buf[..n], &[0; 64], &mut env).is_ok());
}
