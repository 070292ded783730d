//! The blob store is write-once: nothing it has stored is ever overwritten or written again.

mod support;

use std::os::unix::fs::MetadataExt;

use outpost_hub::blobs::{BlobStatus, BlobStore, PutOutcome};
use outpost_shared::Digest;

#[test]
fn stored_blob_is_never_rewritten_when_put_again() {
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::new(tmp.path());
    let (d, first) = store.put(b"model bytes").unwrap();
    assert_eq!(first, PutOutcome::Stored);
    let path = store.path_of(&d);
    assert!(path.ends_with(format!("sha256/{}/{}", &d.to_hex()[..2], d.to_hex())));
    let before = std::fs::metadata(&path).unwrap();
    assert!(before.permissions().readonly(), "blobs are stored read-only");
    std::thread::sleep(std::time::Duration::from_millis(20));

    let (d2, second) = store.put(b"model bytes").unwrap();
    assert_eq!((d2, second), (d, PutOutcome::AlreadyPresent));
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!((after.ino(), after.mtime_nsec(), after.mtime()), (before.ino(), before.mtime_nsec(), before.mtime()));
}

#[test]
fn overwriting_a_blob_is_impossible_even_when_the_file_is_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::new(tmp.path());
    let content = b"the real bytes";
    let d = Digest::of(content);
    // Something else already sits at that digest's path (damage, or a racing writer that got there first).
    let path = store.path_of(&d);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, b"squatter").unwrap();

    let (_, outcome) = store.put(content).unwrap();
    assert_eq!(outcome, PutOutcome::AlreadyPresent);
    assert_eq!(std::fs::read(&path).unwrap(), b"squatter", "the existing file was not replaced");
    // ... and the damage is reported, not hidden.
    assert!(matches!(store.check(&d, content.len() as u64).unwrap().0, BlobStatus::Tampered { .. }));
}

#[test]
fn interrupted_write_leaves_no_blob_visible() {
    let tmp = tempfile::tempdir().unwrap();
    let store = BlobStore::new(tmp.path());
    // A leftover temp file from a crash is not a blob: the digest is absent until the link into place.
    std::fs::create_dir_all(tmp.path().join("tmp")).unwrap();
    let d = Digest::of(b"half");
    std::fs::write(tmp.path().join("tmp").join(format!("{}.1.0", d.to_hex())), b"ha").unwrap();
    assert_eq!(store.check(&d, 4).unwrap().0, BlobStatus::Missing);
    assert_eq!(store.put(b"half").unwrap().1, PutOutcome::Stored);
    assert_eq!(store.check(&d, 4).unwrap().0, BlobStatus::Intact);
}
