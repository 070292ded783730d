//! The console's operators and their sessions: credentials issued by `outpost-hub console user add`, stored as
//! Argon2id hashes (never the password), and sessions held in memory with an absolute expiry and a CSRF token each.
//!
//! Invariants: a session token and its CSRF token are 32 random bytes from the hub's generator; the session table is
//! keyed by the token's SHA-256 (a lookup compares no secret); CSRF tokens are compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;

use outpost_shared::Digest;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::rng::Rng;
use serde::{Deserialize, Serialize};

/// What an operator may do in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Reads every page; acts on nothing.
    Viewer,
    /// Reads every page and may pause, resume, abort, retry a release and revoke a device.
    Operator,
}

impl Role {
    /// The role's name on the command line and in pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Role, UserError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            other => Err(UserError::BadRole(other.to_owned())),
        }
    }
}

/// Argon2id cost parameters, stored with each hash so they can rise later without invalidating old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for HashParams {
    /// OWASP's first Argon2id recommendation (19 MiB, 2 iterations, 1 lane).
    fn default() -> Self {
        HashParams { m_kib: 19 * 1024, t: 2, p: 1 }
    }
}

/// One console operator as stored in the hub's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name (1–64 of a-z, 0-9, `-`, `_`, `.`).
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// The Argon2id salt (16 random bytes).
    pub salt: Vec<u8>,
    /// The Argon2id output (32 bytes) over the password and salt.
    pub hash: Vec<u8>,
    /// The cost it was hashed with.
    pub params: HashParams,
    /// When the credential was issued.
    pub issued_at: UnixSeconds,
}

/// Why a user could not be created, found or checked.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is empty, too long or has characters outside a-z, 0-9, `-`, `_`, `.`.
    #[error("console user name `{0}` must be 1–64 of a-z, 0-9, `-`, `_`, `.`")]
    BadName(String),
    /// The role is not `viewer` or `operator`.
    #[error("console role `{0}` is not `viewer` or `operator`")]
    BadRole(String),
    /// Argon2 refused the parameters (a damaged record).
    #[error("password hash parameters refused: {0}")]
    Hash(String),
}

/// Length of an issued password, in characters of [`PASSWORD_ALPHABET`] (about 119 bits).
pub const PASSWORD_LEN: usize = 20;
/// Characters an issued password is drawn from (no look-alikes: 0/O, 1/l/I).
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";

/// Checks a login name.
pub fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok { Ok(()) } else { Err(UserError::BadName(name.to_owned())) }
}

fn argon2(params: HashParams) -> Result<argon2::Argon2<'static>, UserError> {
    let p =
        argon2::Params::new(params.m_kib, params.t, params.p, Some(32)).map_err(|e| UserError::Hash(e.to_string()))?;
    Ok(argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p))
}

/// Issues a credential: a random password (returned, shown once) and the user record holding only its hash.
pub fn issue(
    name: &str,
    role: Role,
    params: HashParams,
    now: UnixSeconds,
    rng: &mut dyn Rng,
) -> Result<(User, String), UserError> {
    check_name(name)?;
    // Rejection sampling keeps every character equally likely.
    let mut password = String::with_capacity(PASSWORD_LEN);
    while password.len() < PASSWORD_LEN {
        let mut b = [0u8; 1];
        rng.fill(&mut b);
        let limit = 256 - 256 % PASSWORD_ALPHABET.len();
        if usize::from(b[0]) < limit {
            password.push(char::from(PASSWORD_ALPHABET[usize::from(b[0]) % PASSWORD_ALPHABET.len()]));
        }
    }
    let mut salt = vec![0u8; 16];
    rng.fill(&mut salt);
    let mut hash = vec![0u8; 32];
    argon2(params)?
        .hash_password_into(password.as_bytes(), &salt, &mut hash)
        .map_err(|e| UserError::Hash(e.to_string()))?;
    Ok((User { name: name.to_owned(), role, salt, hash, params, issued_at: now }, password))
}

impl User {
    /// Names this credential (a new one for every issue), without revealing anything about the password.
    pub fn credential(&self) -> Digest {
        Digest::of(&self.salt)
    }

    /// Whether `password` is this user's (constant-time comparison of the hashes).
    pub fn verify(&self, password: &str) -> Result<bool, UserError> {
        let mut out = vec![0u8; self.hash.len().max(1)];
        argon2(self.params)?
            .hash_password_into(password.as_bytes(), &self.salt, &mut out)
            .map_err(|e| UserError::Hash(e.to_string()))?;
        Ok(aws_lc_rs::constant_time::verify_slices_are_equal(&out, &self.hash).is_ok())
    }
}

/// A logged-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who.
    pub user: String,
    /// Their role when they logged in (re-read from the index on each action).
    pub role: Role,
    /// The token every state-changing form must carry, hex.
    pub csrf: String,
    /// When the session stops working (absolute, from login).
    pub expires: UnixSeconds,
    /// Which credential it logged in with ([`User::credential`]): a re-issued credential ends it.
    pub credential: Digest,
}

impl Session {
    /// Whether `token` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, token: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(self.csrf.as_bytes(), token.as_bytes()).is_ok()
    }
}

/// Bounds on sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// How long a session lasts from login, in seconds.
    pub ttl_secs: u64,
    /// Sessions held at once; the oldest-expiring goes when a login would exceed it.
    pub max_sessions: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { ttl_secs: 8 * 3600, max_sessions: 1024 }
    }
}

/// The live sessions, in memory: a restart logs everyone out.
#[derive(Debug, Default)]
pub struct Sessions {
    by_token_hash: Mutex<HashMap<Digest, Session>>,
    limits: SessionLimits,
}

/// 32 random bytes from `rng`, hex.
pub(super) fn hex32(rng: &mut dyn Rng) -> String {
    let mut b = [0u8; 32];
    rng.fill(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// An empty table under `limits`.
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions { by_token_hash: Mutex::default(), limits }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Session>> {
        self.by_token_hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `user`; returns its token (the cookie value) and the session.
    pub fn open(&self, user: &User, now: UnixSeconds, rng: &mut dyn Rng) -> (String, Session) {
        let token = hex32(rng);
        let session = Session {
            user: user.name.clone(),
            role: user.role,
            csrf: hex32(rng),
            expires: now.saturating_add(self.limits.ttl_secs),
            credential: user.credential(),
        };
        let mut t = self.table();
        t.retain(|_, s| s.expires > now);
        while t.len() >= self.limits.max_sessions {
            let Some(oldest) = t.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) else { break };
            t.remove(&oldest);
        }
        t.insert(Digest::of(token.as_bytes()), session.clone());
        (token, session)
    }

    /// The live session a cookie token names, if any (an expired one is removed).
    pub fn get(&self, token: &str, now: UnixSeconds) -> Option<Session> {
        let key = Digest::of(token.as_bytes());
        let mut t = self.table();
        match t.get(&key) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                t.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session a token names.
    pub fn close(&self, token: &str) {
        self.table().remove(&Digest::of(token.as_bytes()));
    }

    /// Ends every session of `user` (their credential was replaced or removed).
    pub fn close_user(&self, user: &str) {
        self.table().retain(|_, s| s.user != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::rng::SeededRng;

    fn cheap() -> HashParams {
        HashParams { m_kib: 64, t: 1, p: 1 }
    }

    #[test]
    fn an_issued_password_verifies_and_another_does_not() {
        let (user, password) = issue("ana", Role::Operator, cheap(), 1, &mut SeededRng::new(7)).unwrap();
        assert_eq!(password.len(), PASSWORD_LEN);
        assert!(!user.hash.is_empty() && user.hash != password.as_bytes());
        assert!(user.verify(&password).unwrap());
        assert!(!user.verify("wrong").unwrap());
    }

    #[test]
    fn a_session_expires_at_its_deadline() {
        let sessions = Sessions::new(SessionLimits { ttl_secs: 10, max_sessions: 4 });
        let (user, _) = issue("ana", Role::Viewer, cheap(), 1, &mut SeededRng::new(1)).unwrap();
        let (token, _) = sessions.open(&user, 100, &mut SeededRng::new(2));
        assert!(sessions.get(&token, 109).is_some());
        assert!(sessions.get(&token, 110).is_none());
    }

    #[test]
    fn a_bad_name_is_refused() {
        assert!(matches!(check_name("Ana Smith"), Err(UserError::BadName(_))));
        assert!(matches!(check_name(""), Err(UserError::BadName(_))));
    }
}
