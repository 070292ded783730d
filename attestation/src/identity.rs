//! Ed25519 identities of devices and the hub, and their key files (secret 0600, public 0644, never overwritten).
//!
//! Both sides authenticate TLS with these keys as RFC 7250 raw public keys; the TLS configs that do it are
//! `outpost_net::tls`'s.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::SigningKey;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING }.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410): version 0, algorithm, OCTET STRING { OCTET STRING }.
const PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Why an identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a key file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file does not hold 64 hex characters.
    #[error("{}: not an Outpost key file (expected 64 hex characters): {reason}", path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The secret key file can be read by group or others; it is refused until its mode is fixed.
    #[error("{}: secret key is readable by others (mode {mode:o}); run `chmod 600` on it", path.display())]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file already exists where a new one was to be saved; identities are never overwritten.
    #[error("{}: a key file already exists; remove it first to replace the identity", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
}

/// An Ed25519 public key: a device's id, or the hub's pinned identity. Prints and parses as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key as a DER SubjectPublicKeyInfo, the form RFC 7250 puts on the wire.
    pub fn to_spki(&self) -> Vec<u8> {
        [&SPKI_PREFIX[..], &self.0].concat()
    }

    /// The key inside an Ed25519 SubjectPublicKeyInfo; `None` for anything else (other algorithms, trailing bytes).
    pub fn from_spki(spki: &[u8]) -> Option<PublicKey> {
        let key = spki.strip_prefix(&SPKI_PREFIX[..])?;
        Some(PublicKey(key.try_into().ok()?))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", self.to_hex())
    }
}

/// A string that is not 64 hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 public key (expected 64 hex characters)")]
pub struct PublicKeyParseError;

impl FromStr for PublicKey {
    type Err = PublicKeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| PublicKeyParseError)?;
        Ok(PublicKey(out))
    }
}

/// An Ed25519 key pair: who this device (or hub) is. The secret is wiped from memory on drop.
///
/// Key file format: the 32-byte secret seed as 64 lowercase hex characters and a newline, mode 0600. The public
/// key file (`save_public`) is the same with the public key, mode 0644.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("public", &self.public_key()).finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity whose secret is `seed`. To generate one, pass 32 bytes from the OS random source (the caller
    /// owns randomness, so tests and simulations can use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity { key: SigningKey::from_bytes(&seed) }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message` (Ed25519, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }

    /// Writes the secret key file atomically: a temp file created with mode 0600 in the same directory, written,
    /// fsynced, hard-linked into place (which, unlike a rename, fails rather than replace an existing identity),
    /// then the directory fsynced.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = format!("{}\n", hex::encode(self.key.to_bytes()));
        write_new_file(path, text.as_bytes(), 0o600)
    }

    /// Writes the public key file the same way, mode 0644 (for enrolment or to pin the hub in an agent config).
    pub fn save_public(&self, path: &Path) -> Result<(), IdentityError> {
        write_new_file(path, format!("{}\n", self.public_key()).as_bytes(), 0o644)
    }

    /// Reads a secret key file written by [`Identity::save`]; refuses one readable by group or others.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io = |source| IdentityError::Io { path: path.to_owned(), source };
        let meta = fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions { path: path.to_owned(), mode });
            }
        }
        if meta.len() > 256 {
            return Err(IdentityError::BadKeyFile { path: path.to_owned(), reason: "file too large".into() });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|e| IdentityError::BadKeyFile { path: path.to_owned(), reason: e.to_string() })?;
        let id = Identity::from_seed(seed);
        seed.fill(0);
        Ok(id)
    }

    /// Reads a public key file written by [`Identity::save_public`] (or any file holding 64 hex characters).
    pub fn load_public(path: &Path) -> Result<PublicKey, IdentityError> {
        let text = fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.to_owned(), source })?;
        text.parse().map_err(|e: PublicKeyParseError| IdentityError::BadKeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The secret key as an Ed25519 PKCS#8 v1 document (RFC 8410), the form TLS stacks load (`outpost_net::tls`).
    /// It is the secret: never log or store it.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        [&PKCS8_PREFIX[..], &self.key.to_bytes()].concat()
    }
}

/// Writes `bytes` to a new file at `path` with `mode`, never replacing an existing file, durable on return:
/// temp file created with `mode`, fsync, hard link into place (fails rather than replace), fsync the directory.
/// Used for every secret key file Outpost writes.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| IdentityError::Io { path: p, source }
    };
    if path.exists() {
        return Err(IdentityError::Exists { path: path.to_owned() });
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists { path: path.to_owned() },
            _ => IdentityError::Io { path: path.to_owned(), source: e },
        })
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    #[cfg(unix)]
    fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_test_vector_gives_the_known_public_key() {
        // RFC 8032 §7.1, TEST 1.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60").unwrap();
        let id = Identity::from_seed(seed.try_into().unwrap());
        assert_eq!(id.public_key().to_hex(), "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(PublicKey::from_spki(&id.public_key().to_spki()), Some(id.public_key()));
    }

    #[test]
    fn key_file_round_trips_with_mode_0600_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let id = Identity::from_seed([3; 32]);
        id.save(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(matches!(Identity::from_seed([4; 32]).save(&path), Err(IdentityError::Exists { .. })));
        assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind: {leftovers:?}");

        let pubpath = dir.path().join("device.pub");
        id.save_public(&pubpath).unwrap();
        assert_eq!(Identity::load_public(&pubpath).unwrap(), id.public_key());
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_secret_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        Identity::from_seed([3; 32]).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(Identity::load(&path), Err(IdentityError::Permissions { mode: 0o640, .. })));
    }

    #[test]
    fn garbage_key_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        write_new_file(&path, b"not hex at all\n", 0o600).unwrap();
        assert!(matches!(Identity::load(&path), Err(IdentityError::BadKeyFile { .. })));
    }

    #[test]
    fn public_key_parses_and_prints_as_hex() {
        let k = PublicKey([0xab; 32]);
        assert_eq!(k.to_string().parse::<PublicKey>(), Ok(k));
        assert!("abc".parse::<PublicKey>().is_err());
        assert_eq!(PublicKey::from_spki(&[0; 44]), None);
        assert_eq!(PublicKey::from_spki(&[&k.to_spki()[..], &[0]].concat()), None);
    }
}
