//! Director documents (Uptane-style): the hub's per-device assignment and its revocation list, signed with the
//! online director key, and the device-side checks that bind them to what TUF's targets metadata lists.
//!
//! Documents are deterministic CBOR inside an envelope `{ body, keyid, sig }`; the signature covers a domain tag
//! and the body, so an assignment can never be read as a revocation list or anything else. The director's public
//! key itself reaches devices as a TUF target, [`DirectorKeyDoc`] at [`DIRECTOR_TARGET`].

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::clock::UnixSeconds;
use crate::digest::Digest;

/// Domain tag signed before an assignment body.
pub const ASSIGNMENT_DOMAIN: &[u8] = b"outpost-director-assignment-v1\0";
/// Domain tag signed before a revocation list body.
pub const REVOCATIONS_DOMAIN: &[u8] = b"outpost-director-revocations-v1\0";

/// What the director wants one device to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The device's Ed25519 public key, hex.
    pub device: String,
    /// Monotonic per device: a device refuses a version lower than one it has accepted.
    pub version: u64,
    /// Unix seconds after which the assignment is void.
    pub expires: UnixSeconds,
    /// The targets the device should run (usually one).
    pub targets: Vec<AssignedTarget>,
    /// For a gateway: the firmware each of its secondaries should run. Absent (and not encoded) when empty, so
    /// assignments without secondaries keep their bytes and older ones still decode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondaries: Vec<SecondaryAssignment>,
    /// A package to run in shadow beside the active model (a rollout's shadow stage): loaded and fed a share of
    /// live requests after they are answered, never serving. Absent (and not encoded) when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<AssignedTarget>,
    /// The router package the device's inference API routes by (`kind = "router"`, versioned on its own line).
    /// Absent (and not encoded) when the channel has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<AssignedTarget>,
}

impl Assignment {
    /// Every target the assignment names: the device's own, its secondaries' firmware, its shadow package and its
    /// router.
    pub fn all_targets(&self) -> impl Iterator<Item = &AssignedTarget> {
        self.targets
            .iter()
            .chain(self.secondaries.iter().map(|s| &s.target))
            .chain(self.shadow.iter())
            .chain(self.router.iter())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Firmware the director assigns to one secondary (a microcontroller behind the gateway that receives the
/// assignment). The compact manifest and time token are `outpost_firmware` envelopes signed with the same director
/// key as the assignment, which the secondary was provisioned to trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryAssignment {
    /// The secondary's device id (UTF-8, as in its compact manifest).
    pub device_id: String,
    /// The secondary's hardware id.
    pub hardware_id: String,
    /// The firmware package (a TUF target, checked like any other by [`check_assignment`]).
    pub target: AssignedTarget,
    /// The compact signed image manifest (`outpost_firmware::manifest` envelope) for this secondary and image.
    #[serde(with = "bytes")]
    pub manifest: Vec<u8>,
    /// A signed time token for this secondary: the hub's time when it signed the assignment.
    #[serde(with = "bytes")]
    pub time_token: Vec<u8>,
}

/// One assigned target, which must match TUF's targets metadata exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedTarget {
    /// TUF target path.
    pub path: String,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of the target (the package digest).
    pub sha256: Digest,
    /// A label for what is assigned: the package's short digest.
    pub release: String,
    /// Channel the device follows.
    pub channel: String,
    /// The staged release that steers the device to this target, by id (`r1`); empty when no release does (the
    /// channel's newest).
    pub rollout: String,
    /// Operator retries of this package for this device (`release retry-failed`): a device that rolled back
    /// from it tries again once when this is above the count it last acted on. Absent (and not encoded) at 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry: u32,
}

/// Packages that must never be activated again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Monotonic.
    pub version: u64,
    /// Unix seconds after which the list is stale.
    pub expires: UnixSeconds,
    /// Revoked packages.
    pub revoked: Vec<Revoked>,
}

/// One revoked package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Package digest.
    pub digest: Digest,
    /// Why, for humans.
    pub reason: String,
    /// When (Unix seconds).
    pub at: UnixSeconds,
}

/// What a device receives for "get assignment": its signed assignment and the signed revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The assignment envelope (see [`open`] with [`ASSIGNMENT_DOMAIN`]).
    #[serde(with = "bytes")]
    pub assignment: Vec<u8>,
    /// The revocation list envelope ([`REVOCATIONS_DOMAIN`]); always present, so whoever relays a bundle cannot
    /// drop it unnoticed (a bundle without one does not decode). Before any revocation the hub serves an empty
    /// version-0 list.
    #[serde(with = "bytes")]
    pub revocations: Vec<u8>,
}

/// A signed director document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Deterministic CBOR of the document.
    #[serde(with = "bytes")]
    pub body: Vec<u8>,
    /// SHA-256 of the signer's public key, hex.
    pub keyid: String,
    /// Ed25519 signature over `domain || body`.
    #[serde(with = "bytes")]
    pub sig: Vec<u8>,
}

mod bytes {
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Why a director document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectorError {
    /// Not a well-formed envelope or document.
    #[error("malformed director document: {0}")]
    Malformed(String),
    /// Signed by a key other than the director key TUF authorises.
    #[error("director document signed by key {found}, but TUF authorises {expected}")]
    WrongKey {
        /// Key id in the envelope.
        found: String,
        /// The authorised key id.
        expected: String,
    },
    /// The signature does not verify.
    #[error("director signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("director document expired at {expires} (now {now})")]
    Expired {
        /// Expiry.
        expires: UnixSeconds,
        /// Now.
        now: UnixSeconds,
    },
    /// Older than one already accepted (a replay or rollback).
    #[error("director document version {offered} is older than accepted version {accepted}")]
    Rollback {
        /// Offered version.
        offered: u64,
        /// Accepted version.
        accepted: u64,
    },
    /// The assignment is for another device.
    #[error("assignment is for device {0}, not this one")]
    WrongDevice(String),
    /// The assignment names a target TUF does not list, or lists differently.
    #[error("assigned target {path} does not match TUF targets metadata: {problem}")]
    NotInTargets {
        /// Target path.
        path: String,
        /// What differs.
        problem: String,
    },
}

/// Target path of the director key document in TUF. The top-level targets role lists it, so replacing the
/// director key goes through TUF like any other signed change.
pub const DIRECTOR_TARGET: &str = "director/director.json";

/// The director key document, the TUF target at [`DIRECTOR_TARGET`]: the director's Ed25519 public key. Its JSON
/// is `{"keytype": "ed25519", "public": "<hex>", "role": "director"}`, pretty-printed with the keys in that order,
/// byte for byte what hubs have always written (so its TUF length and hash do not change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectorKeyDoc {
    /// The director's Ed25519 public key.
    pub public: [u8; 32],
}

/// The key document as JSON: the field order here is the order on the wire.
#[derive(Serialize, Deserialize)]
struct RawKeyDoc<'a> {
    keytype: std::borrow::Cow<'a, str>,
    public: std::borrow::Cow<'a, str>,
    role: std::borrow::Cow<'a, str>,
}

const KEY_DOC_KEYTYPE: &str = "ed25519";
const KEY_DOC_ROLE: &str = "director";

impl DirectorKeyDoc {
    /// The document's bytes, as the hub stores them as a TUF target.
    pub fn to_json(&self) -> Vec<u8> {
        let public = hex::encode(self.public);
        let raw = RawKeyDoc { keytype: KEY_DOC_KEYTYPE.into(), public: public.into(), role: KEY_DOC_ROLE.into() };
        // Three string fields: serialising cannot fail, and an empty document would fail to parse, not pass.
        serde_json::to_vec_pretty(&raw).unwrap_or_default()
    }

    /// Reads a key document (the bytes TUF verified for [`DIRECTOR_TARGET`]).
    pub fn parse(bytes: &[u8]) -> Result<DirectorKeyDoc, DirectorKeyError> {
        let raw: RawKeyDoc<'_> =
            serde_json::from_slice(bytes).map_err(|e| DirectorKeyError::Malformed(e.to_string()))?;
        if raw.role != KEY_DOC_ROLE {
            return Err(DirectorKeyError::WrongRole(raw.role.into_owned()));
        }
        if raw.keytype != KEY_DOC_KEYTYPE {
            return Err(DirectorKeyError::UnsupportedKeyType(raw.keytype.into_owned()));
        }
        let mut public = [0u8; 32];
        hex::decode_to_slice(raw.public.as_bytes(), &mut public)
            .map_err(|e| DirectorKeyError::BadKey(format!("{:?}: {e}", raw.public)))?;
        Ok(DirectorKeyDoc { public })
    }
}

/// Why a director key document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectorKeyError {
    /// Not a JSON object with the string fields `keytype`, `public` and `role`.
    #[error("malformed director key document: {0}")]
    Malformed(String),
    /// The document names a role other than `director`.
    #[error("director key document is for role {0:?}, not \"director\"")]
    WrongRole(String),
    /// The key is not Ed25519, the only type director envelopes are signed with.
    #[error("director key type {0:?} is not supported (only ed25519)")]
    UnsupportedKeyType(String),
    /// `public` is not 32 bytes of hex.
    #[error("director public key {0}")]
    BadKey(String),
}

/// Where a TUF repository with consistent snapshots stores target `path` whose SHA-256 is `sha256`:
/// `dir/<sha256>.<name>` (the hub writes it there; agents and mirrors fetch it from there).
pub fn stored_target_path(path: &str, sha256: &Digest) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{}.{name}", sha256.to_hex()),
        None => format!("{}.{path}", sha256.to_hex()),
    }
}

/// Key id of an Ed25519 public key for director envelopes: SHA-256 of the key, hex.
pub fn key_id(public: &[u8; 32]) -> String {
    Digest::of(public).to_hex()
}

/// Signs a document body. `sign` produces an Ed25519 signature over the bytes given.
pub fn seal<T: Serialize>(
    doc: &T,
    domain: &[u8],
    public: &[u8; 32],
    sign: impl FnOnce(&[u8]) -> [u8; 64],
) -> Result<Vec<u8>, DirectorError> {
    let body = canonical::to_vec(doc).map_err(|e| DirectorError::Malformed(e.to_string()))?;
    let sig = sign(&[domain, &body].concat()).to_vec();
    canonical::to_vec(&Envelope { body, keyid: key_id(public), sig })
        .map_err(|e| DirectorError::Malformed(e.to_string()))
}

/// Opens an envelope signed by `director` (the key TUF lists) and decodes its document.
pub fn open<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    domain: &[u8],
    director: &[u8; 32],
) -> Result<T, DirectorError> {
    let env: Envelope = canonical::from_slice(bytes).map_err(|e| DirectorError::Malformed(e.to_string()))?;
    let expected = key_id(director);
    if env.keyid != expected {
        return Err(DirectorError::WrongKey { found: env.keyid, expected });
    }
    let key = ed25519_dalek::VerifyingKey::from_bytes(director).map_err(|_| DirectorError::BadSignature)?;
    let sig: [u8; 64] = env.sig.as_slice().try_into().map_err(|_| DirectorError::BadSignature)?;
    key.verify_strict(&[domain, &env.body].concat(), &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| DirectorError::BadSignature)?;
    canonical::from_slice(&env.body).map_err(|e| DirectorError::Malformed(e.to_string()))
}

/// What TUF's verified targets metadata says about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTarget {
    /// Length.
    pub length: u64,
    /// SHA-256.
    pub sha256: Digest,
}

/// Checks an opened revocation list: fresh, and not older than `accepted_version` (the highest this device has
/// accepted), so a relay can neither replay an old list nor keep serving one the hub stopped signing.
pub fn check_revocations(list: &RevocationList, accepted_version: u64, now: UnixSeconds) -> Result<(), DirectorError> {
    if list.version < accepted_version {
        return Err(DirectorError::Rollback { offered: list.version, accepted: accepted_version });
    }
    if now >= list.expires {
        return Err(DirectorError::Expired { expires: list.expires, now });
    }
    Ok(())
}

/// Checks an opened assignment for this device: fresh, not older than `accepted_version`, and every target (its
/// own and its secondaries') listed by TUF with the same length and hash (`lookup` returns TUF's entry for a path,
/// after full TUF verification).
pub fn check_assignment(
    a: &Assignment,
    device: &[u8; 32],
    accepted_version: u64,
    now: UnixSeconds,
    lookup: impl Fn(&str) -> Option<ListedTarget>,
) -> Result<(), DirectorError> {
    if a.device != hex::encode(device) {
        return Err(DirectorError::WrongDevice(a.device.clone()));
    }
    if a.version < accepted_version {
        return Err(DirectorError::Rollback { offered: a.version, accepted: accepted_version });
    }
    if now >= a.expires {
        return Err(DirectorError::Expired { expires: a.expires, now });
    }
    for t in a.all_targets() {
        let listed = lookup(&t.path)
            .ok_or_else(|| DirectorError::NotInTargets { path: t.path.clone(), problem: "not listed".into() })?;
        if listed.length != t.length || listed.sha256 != t.sha256 {
            return Err(DirectorError::NotInTargets {
                path: t.path.clone(),
                problem: format!(
                    "TUF lists {} bytes sha256 {}, the assignment says {} bytes sha256 {}",
                    listed.length, listed.sha256, t.length, t.sha256
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    const NOW: UnixSeconds = 1_800_000_000;

    #[test]
    fn director_key_doc_bytes_are_what_hubs_have_always_written() {
        let doc = DirectorKeyDoc { public: [0xab; 32] };
        let expected = format!(
            "{{\n  \"keytype\": \"ed25519\",\n  \"public\": \"{}\",\n  \"role\": \"director\"\n}}",
            "ab".repeat(32)
        );
        assert_eq!(String::from_utf8(doc.to_json()).unwrap(), expected);
        assert_eq!(DirectorKeyDoc::parse(expected.as_bytes()), Ok(doc));
    }

    #[test]
    fn director_key_doc_refuses_other_roles_key_types_and_bad_keys() {
        let doc = |keytype: &str, public: &str, role: &str| {
            format!(r#"{{"keytype":"{keytype}","public":"{public}","role":"{role}"}}"#).into_bytes()
        };
        let good = "cd".repeat(32);
        assert_eq!(
            DirectorKeyDoc::parse(&doc("ed25519", &good, "director")),
            Ok(DirectorKeyDoc { public: [0xcd; 32] })
        );
        assert_eq!(
            DirectorKeyDoc::parse(&doc("ed25519", &good, "timestamp")),
            Err(DirectorKeyError::WrongRole("timestamp".into()))
        );
        assert_eq!(
            DirectorKeyDoc::parse(&doc("ecdsa", &good, "director")),
            Err(DirectorKeyError::UnsupportedKeyType("ecdsa".into()))
        );
        for bad in ["cd".repeat(31), "zz".repeat(32), String::new()] {
            let e = DirectorKeyDoc::parse(&doc("ed25519", &bad, "director")).unwrap_err();
            assert!(matches!(e, DirectorKeyError::BadKey(_)), "{bad}: {e}");
        }
        for bad in [&b"{}"[..], b"[]", b"not json", br#"{"keytype":"ed25519","public":7,"role":"director"}"#] {
            let e = DirectorKeyDoc::parse(bad).unwrap_err();
            assert!(matches!(e, DirectorKeyError::Malformed(_)), "{e}");
        }
    }

    fn assignment(version: u64) -> Assignment {
        Assignment {
            device: hex::encode([7u8; 32]),
            version,
            expires: NOW + 60,
            targets: vec![AssignedTarget {
                path: "packages/low/a-1.0.0.opkg".into(),
                length: 10,
                sha256: Digest::of(b"a"),
                release: "r".into(),
                channel: "stable".into(),
                rollout: String::new(),
                retry: 0,
            }],
            secondaries: vec![],
            shadow: None,
            router: None,
        }
    }

    fn listed(_: &str) -> Option<ListedTarget> {
        Some(ListedTarget { length: 10, sha256: Digest::of(b"a") })
    }

    #[test]
    fn replayed_older_assignment_is_rejected() {
        let e = check_assignment(&assignment(4), &[7; 32], 5, NOW, listed).unwrap_err();
        assert_eq!(e, DirectorError::Rollback { offered: 4, accepted: 5 });
        check_assignment(&assignment(5), &[7; 32], 5, NOW, listed).unwrap();
    }

    #[test]
    fn expired_assignment_is_rejected() {
        let e = check_assignment(&assignment(1), &[7; 32], 0, NOW + 60, listed).unwrap_err();
        assert!(matches!(e, DirectorError::Expired { .. }));
    }

    #[test]
    fn assignment_for_another_device_is_rejected() {
        let e = check_assignment(&assignment(1), &[8; 32], 0, NOW, listed).unwrap_err();
        assert!(matches!(e, DirectorError::WrongDevice(_)));
    }

    #[test]
    fn secondary_firmware_not_listed_by_tuf_is_rejected() {
        let mut a = assignment(1);
        let mut target = a.targets[0].clone();
        target.path = "packages/low/fw-1.0.0.opkg".into();
        a.secondaries.push(SecondaryAssignment {
            device_id: "mcu-1".into(),
            hardware_id: "board".into(),
            target,
            manifest: vec![1],
            time_token: vec![2],
        });
        let only_model = |p: &str| listed(p).filter(|_| p.starts_with("packages/low/a-"));
        let e = check_assignment(&a, &[7; 32], 0, NOW, only_model).unwrap_err();
        assert!(matches!(e, DirectorError::NotInTargets { ref path, .. } if path.contains("fw-")), "{e}");
        check_assignment(&a, &[7; 32], 0, NOW, listed).unwrap();
    }

    #[test]
    fn assignment_without_secondaries_encodes_as_before_and_old_bytes_decode() {
        // The encoding of an assignment that predates secondaries: the same four keys, nothing else.
        #[derive(Serialize)]
        struct Before {
            device: String,
            version: u64,
            expires: UnixSeconds,
            targets: Vec<AssignedTarget>,
        }
        let a = assignment(3);
        let before = Before { device: a.device.clone(), version: 3, expires: a.expires, targets: a.targets.clone() };
        let old = canonical::to_vec(&before).unwrap();
        assert_eq!(canonical::to_vec(&a).unwrap(), old);
        assert_eq!(canonical::from_slice::<Assignment>(&old).unwrap(), a);
    }

    #[test]
    fn forged_or_cross_domain_envelopes_are_rejected() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public = key.verifying_key().to_bytes();
        let sealed = seal(&assignment(1), ASSIGNMENT_DOMAIN, &public, |m| key.sign(m).to_bytes()).unwrap();
        assert_eq!(open::<Assignment>(&sealed, ASSIGNMENT_DOMAIN, &public).unwrap(), assignment(1));
        // An assignment is not a revocation list, whatever its bytes.
        assert_eq!(open::<Assignment>(&sealed, REVOCATIONS_DOMAIN, &public).unwrap_err(), DirectorError::BadSignature);
        // Another key is refused by key id; a flipped byte by signature.
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes();
        assert!(matches!(open::<Assignment>(&sealed, ASSIGNMENT_DOMAIN, &other), Err(DirectorError::WrongKey { .. })));
        let mut env: Envelope = canonical::from_slice(&sealed).unwrap();
        env.body[5] ^= 1;
        let tampered = canonical::to_vec(&env).unwrap();
        assert!(open::<Assignment>(&tampered, ASSIGNMENT_DOMAIN, &public).is_err());
    }
}
