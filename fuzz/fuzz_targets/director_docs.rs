//! Fuzzes what a device reads from the director, through the hub or an untrusted site node: the bundle, the signed
//! envelopes inside it, the assignment and revocation list bodies, and the director key document (a TUF target).
//! No panic on any input; what decodes survives its canonical form, and the checks a device runs on an opened
//! document never panic.
#![no_main]
use std::sync::LazyLock;

use outpost_attestation::Identity;
use outpost_shared::canonical;
use outpost_shared::director::{
    ASSIGNMENT_DOMAIN, Assignment, Bundle, DirectorKeyDoc, Envelope, ListedTarget, REVOCATIONS_DOMAIN, RevocationList,
    check_assignment, check_revocations, open,
};

/// Decodes `data` as `T`; what decodes must encode and decode again to the same value.
fn roundtrip<T>(data: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value: T = canonical::from_slice(data).ok()?;
    let again: T = canonical::from_slice(&canonical::to_vec(&value).expect("a decoded document encodes"))
        .expect("a document's canonical form decodes");
    assert_eq!(again, value);
    Some(value)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The key `examples/seeds.rs` seals its seeds with, so a seed's envelopes open and their bodies decode.
    static DIRECTOR: LazyLock<[u8; 32]> = LazyLock::new(|| *Identity::from_seed([5; 32]).public_key().as_bytes());
    let director = *DIRECTOR;
    let now = 1_800_000_000;
    if let Some(bundle) = roundtrip::<Bundle>(data) {
        let _ = open::<Assignment>(&bundle.assignment, ASSIGNMENT_DOMAIN, &director);
        let _ = open::<RevocationList>(&bundle.revocations, REVOCATIONS_DOMAIN, &director);
    }
    let _ = roundtrip::<Envelope>(data);
    if let Some(a) = roundtrip::<Assignment>(data) {
        // TUF lists every path with the first target's length and hash: the check compares each target with it.
        let first = a.targets.first().map(|t| ListedTarget { length: t.length, sha256: t.sha256 });
        let _ = check_assignment(&a, &[0x11; 32], 1, now, |_| first.clone());
    }
    if let Some(list) = roundtrip::<RevocationList>(data) {
        let _ = check_revocations(&list, 1, now);
    }
    if let Ok(doc) = DirectorKeyDoc::parse(data) {
        assert_eq!(DirectorKeyDoc::parse(&doc.to_json()), Ok(doc));
    }
});
