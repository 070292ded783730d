//! The hub's TUF image repository: key files, metadata writing and signing, delegated risk-tier roles, releases,
//! revocation of targets, root rotation, online re-signing and static export.
//!
//! Metadata is TUF 1.0 JSON with consistent snapshots, signed with Ed25519 over the canonical JSON that
//! `sigstore-tuf` encodes; every file written here is read back through `sigstore-tuf` in the tests. Root and
//! targets keys are files the operator keeps offline and passes per command; snapshot, timestamp and director
//! keys live in `<data-dir>/keys` for the serving hub.
//!
//! `keys`: key files and loaded keys; `metadata`: the JSON bodies, envelopes and target entries the roles sign;
//! `repository`: `TufRepo`, the operations on the repository on disk.

use std::path::{Path, PathBuf};

use outpost_shared::Digest;

use crate::blobs::BlobError;

mod keys;
pub mod metadata;
mod repository;

pub use keys::{Key, KeyFile, key_id, tuf_key};
pub use metadata::{
    DIRECTOR_TARGET, HIGH_RISK_ROLE, STANDARD_ROLE, Signed, add_signature, canonical_json, role_for, sign,
    target_entry, target_path,
};
pub use repository::{DEFAULT_LOCK_WAIT, Expiries, GenerateOptions, PublishOutcome, RepoLock, TufRepo};

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// A file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A blob or atomic write failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A key file is not usable.
    #[error("key file {}: {problem}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The key given is not authorised for the role being signed.
    #[error("key {keyid} ({}) is not authorised to sign `{role}`; authorised: {}", path.display(), authorised.join(", "))]
    NotAuthorised {
        /// Key file.
        path: PathBuf,
        /// Its key id.
        keyid: String,
        /// The role.
        role: String,
        /// Authorised key ids.
        authorised: Vec<String>,
    },
    /// The repository has no keys yet.
    #[error("no TUF repository in {}: run `outpost-hub keys generate --offline-dir DIR` first", dir.display())]
    NoRepository {
        /// The data directory.
        dir: PathBuf,
    },
    /// Keys were already generated.
    #[error("a TUF repository already exists in {}; rotate keys with `outpost-hub keys rotate ROLE`", dir.display())]
    AlreadyExists {
        /// The data directory.
        dir: PathBuf,
    },
    /// Metadata on disk could not be parsed: the repository is damaged.
    #[error("metadata {name} is damaged: {problem}")]
    Damaged {
        /// File name.
        name: String,
        /// What failed.
        problem: String,
    },
    /// Another writer (the serving hub re-signing, or another command) held the repository's lock for the whole
    /// wait.
    #[error("the TUF repository is being written by another process (lock {} held for {}s); try again when it finishes", path.display(), waited.as_secs())]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// How long this operation waited.
        waited: std::time::Duration,
    },
    /// Bad arguments for the operation.
    #[error("{0}")]
    Invalid(String),
    /// The package is not published.
    #[error("package {0} is not published")]
    NotPublished(Digest),
    /// Nothing pending for this package.
    #[error("no pending signature request for {0}")]
    NothingPending(Digest),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TufError {
    let path = path.to_owned();
    move |source| TufError::Io { op, path, source }
}
