//! TUF signing keys: the Ed25519 key file format (JSON, mode 0600), loading, generating and saving keys, and
//! the TUF public key object and key id derived from a public key.

use std::fs;
use std::path::Path;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use outpost_shared::Digest;
use outpost_shared::rng::Rng;

use super::metadata::canonical_json;
use super::{TufError, io};

/// An Ed25519 key as stored in a key file (JSON, mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// What this key is for (`root`, `targets`, `snapshot`, `timestamp`, `director`).
    pub role: String,
    /// Always `ed25519`.
    pub keytype: String,
    /// TUF key id: SHA-256 of the canonical JSON public key object.
    pub keyid: String,
    /// Public key, hex.
    pub public: String,
    /// Private seed, hex (32 bytes).
    pub private: String,
}

/// A loaded signing key with its TUF key id.
#[derive(Clone)]
pub struct Key {
    /// TUF key id.
    pub keyid: String,
    /// The signing key.
    pub signing: SigningKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("keyid", &self.keyid).finish_non_exhaustive()
    }
}

impl Key {
    /// A fresh key from 32 random bytes.
    pub fn generate(rng: &mut dyn Rng) -> Key {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        Key::from_seed(seed)
    }

    /// The key with this private seed.
    pub fn from_seed(seed: [u8; 32]) -> Key {
        let signing = SigningKey::from_bytes(&seed);
        let keyid = key_id(&signing.verifying_key().to_bytes());
        Key { keyid, signing }
    }

    /// The public half as a TUF key object.
    pub fn tuf_public(&self) -> Value {
        tuf_key(&self.signing.verifying_key().to_bytes())
    }

    /// Public key bytes.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Loads a key file.
    pub fn load(path: &Path) -> Result<Key, TufError> {
        let bad = |problem: String| TufError::BadKey { path: path.into(), problem };
        let text = fs::read_to_string(path).map_err(io("read", path))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if file.keytype != "ed25519" {
            return Err(bad(format!("keytype `{}` is not supported (ed25519 only)", file.keytype)));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&file.private, &mut seed).map_err(|e| bad(format!("private key: {e}")))?;
        let key = Key::from_seed(seed);
        if hex::encode(key.public_bytes()) != file.public || key.keyid != file.keyid {
            return Err(bad("public key or key id does not match the private key".into()));
        }
        Ok(key)
    }

    /// Writes the key file atomically with mode 0600.
    pub fn save(&self, path: &Path, role: &str) -> Result<(), TufError> {
        let file = KeyFile {
            role: role.into(),
            keytype: "ed25519".into(),
            keyid: self.keyid.clone(),
            public: hex::encode(self.public_bytes()),
            private: hex::encode(self.signing.to_bytes()),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| TufError::Invalid(e.to_string()))?;
        write_private(path, text.as_bytes())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TufError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    outpost_attestation::identity::write_new_file(path, bytes, 0o600)
        .map_err(|e| TufError::BadKey { path: path.into(), problem: e.to_string() })
}

/// The TUF public key object for an Ed25519 key.
pub fn tuf_key(public: &[u8; 32]) -> Value {
    json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex::encode(public)}})
}

/// The TUF key id: SHA-256 over the canonical JSON of the public key object.
pub fn key_id(public: &[u8; 32]) -> String {
    let canonical = canonical_json(&tuf_key(public)).unwrap_or_default();
    Digest::of(&canonical).to_hex()
}
