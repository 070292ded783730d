//! The package container refuses malformed, truncated, oversized or padded input with a typed error.

use outpost_shared::package::{self, HEADER_LEN, Header};
use outpost_shared::testkit::{AffineManifest, affine_model};
use outpost_shared::{Package, PackageError, PackageLimits};

fn sample() -> Vec<u8> {
    package::encode(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0).manifest(), &affine_model(2.0, 1.0))
}

#[test]
fn package_round_trips() {
    let bytes = sample();
    let p = Package::decode(&bytes, &PackageLimits::default()).unwrap();
    assert_eq!(p.manifest.name, "affine");
    assert_eq!(p.model, affine_model(2.0, 1.0).as_slice());
}

#[test]
fn truncated_package_is_refused() {
    let bytes = sample();
    for cut in [0, 5, HEADER_LEN - 1, HEADER_LEN + 3, bytes.len() - 1] {
        let e = Package::decode(&bytes[..cut], &PackageLimits::default()).unwrap_err();
        assert!(matches!(e, PackageError::TruncatedHeader { .. } | PackageError::LengthMismatch { .. }), "{cut}: {e}");
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = sample();
    bytes.push(0);
    assert!(matches!(Package::decode(&bytes, &PackageLimits::default()), Err(PackageError::LengthMismatch { .. })));
}

#[test]
fn bad_magic_and_future_version_are_refused() {
    let mut bytes = sample();
    bytes[0] = b'X';
    assert!(matches!(Package::decode(&bytes, &PackageLimits::default()), Err(PackageError::BadMagic)));
    let mut bytes = sample();
    bytes[4] = 9;
    assert!(matches!(Package::decode(&bytes, &PackageLimits::default()), Err(PackageError::UnsupportedVersion(9))));
}

#[test]
fn oversized_sections_are_refused_before_reading_them() {
    let header = Header { manifest_len: 10, model_len: u64::MAX }.encode();
    let limits = PackageLimits::default();
    assert!(matches!(Header::parse(&header, &limits), Err(PackageError::TooLarge { section: "model", .. })));
    let header = Header { manifest_len: u32::MAX, model_len: 1 }.encode();
    assert!(matches!(Header::parse(&header, &limits), Err(PackageError::TooLarge { section: "manifest", .. })));
}

#[test]
fn tampered_manifest_bytes_are_refused() {
    let mut bytes = sample();
    bytes[HEADER_LEN + 2] ^= 0xff;
    assert!(matches!(Package::decode(&bytes, &PackageLimits::default()), Err(PackageError::Manifest(_))));
}
