//! One connection's admission and attestation state, sans-IO: which requests it may make, the challenges it holds,
//! and its attestation result. The server ([`crate::server`]) asks it before each request and tells it what the
//! backend answered; it never waits, reads a clock or does I/O, so every rule here is a unit test.
//!
//! Rules: an unknown key (connected because enrolment is open) may only `Enroll`; a connection holds at most one
//! unanswered challenge of its own, and is issued at most `max_challenges` in its life; evidence uses the challenge
//! up whatever the outcome and drops any earlier result first, so a failed appraisal leaves the connection
//! unattested; a result the backend no longer accepts is dropped for good. A site node's connection also holds one
//! challenge per device it relays for, at most [`MAX_RELAYED_CHALLENGES`].

use std::collections::HashMap;

use outpost_attestation::evidence::EXPORTER_LEN;
use outpost_attestation::identity::PublicKey;
use outpost_attestation::{AttestationResult, Challenge, Presented};
use outpost_shared::wire::{Relay, Request};

/// Most relayed challenges one site-node connection may hold unanswered at once.
pub const MAX_RELAYED_CHALLENGES: usize = 1024;

/// Why a connection is not attested; the device gets `NotAttested` with `not attested: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not attested: {0}")]
pub struct Unattested(pub String);

impl Unattested {
    fn new(reason: &str) -> Unattested {
        Unattested(reason.to_owned())
    }
}

/// What a request asks of the server, once the session has admitted it.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The key is not admitted and the request is not `Enroll`: close the connection as unknown.
    Close,
    /// `Enroll` with a one-time token (answered `Ack` at once if the key is admitted already).
    Enroll {
        /// The token.
        token: String,
        /// The hardware the device declares.
        hardware: String,
        /// Its TPM's enrolment facts, if any.
        tpm: Option<Vec<u8>>,
    },
    /// `GetChallenge` for this connection.
    Challenge,
    /// `PostEvidence` for this connection.
    Evidence(Vec<u8>),
    /// `GetChallenge` from a site node for one of its devices (needs the gate).
    RelayedChallenge([u8; 32]),
    /// `PostEvidence` from a site node for one of its devices (needs the gate).
    RelayedEvidence(Vec<u8>, Relay),
    /// Anything else (needs the gate).
    Attested(Request),
}

impl Route {
    /// Whether the connection must hold a current attestation result before this is served.
    pub fn gated(&self) -> bool {
        matches!(self, Route::RelayedChallenge(_) | Route::RelayedEvidence(..) | Route::Attested(_))
    }
}

/// Evidence as presented on a connection, owned, so it can travel to the backend.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The challenge it answers.
    pub challenge: Challenge,
    /// The TLS exporter of the connection it was made on.
    pub exporter: [u8; EXPORTER_LEN],
    /// The key it must be signed with.
    pub device: PublicKey,
    /// The evidence bytes.
    pub evidence: Vec<u8>,
}

impl Submitted {
    /// The borrowed form the verifier takes.
    pub fn presented(&self) -> Presented<'_> {
        Presented {
            challenge: &self.challenge,
            exporter: &self.exporter,
            device: self.device,
            evidence: &self.evidence,
        }
    }
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    device: PublicKey,
    exporter: [u8; EXPORTER_LEN],
    admitted: bool,
    max_challenges: u32,
    challenge: Option<Challenge>,
    result: Option<AttestationResult>,
    issued: u32,
    relayed: HashMap<[u8; 32], Challenge>,
}

impl Session {
    /// A connection from `device` whose TLS exporter is `exporter`; `admitted` if its key is on the allow-list
    /// (else it may only enrol); at most `max_challenges` challenges of its own in its life.
    pub fn new(device: PublicKey, exporter: [u8; EXPORTER_LEN], admitted: bool, max_challenges: u32) -> Session {
        Session {
            device,
            exporter,
            admitted,
            max_challenges,
            challenge: None,
            result: None,
            issued: 0,
            relayed: HashMap::new(),
        }
    }

    /// The key the connection authenticated with.
    pub fn device(&self) -> PublicKey {
        self.device
    }

    /// Whether the key is admitted (at the handshake, or by `Enroll` on this connection).
    pub fn admitted(&self) -> bool {
        self.admitted
    }

    /// The key was just enrolled on this connection.
    pub fn admit(&mut self) {
        self.admitted = true;
    }

    /// What `request` asks for, given what this connection may do.
    pub fn route(&self, request: Request) -> Route {
        match request {
            Request::Enroll { token, hardware, tpm } => Route::Enroll { token, hardware, tpm },
            _ if !self.admitted => Route::Close,
            Request::GetChallenge { device: None } => Route::Challenge,
            Request::PostEvidence { evidence, relay: None } => Route::Evidence(evidence),
            Request::GetChallenge { device: Some(device) } => Route::RelayedChallenge(device),
            Request::PostEvidence { evidence, relay: Some(relay) } => Route::RelayedEvidence(evidence, relay),
            request => Route::Attested(request),
        }
    }

    /// Counts a challenge about to be asked of the backend; refused past the connection's allowance.
    pub fn begin_challenge(&mut self) -> Result<(), Unattested> {
        if self.issued >= self.max_challenges {
            return Err(Unattested::new("too many challenges on this connection; reconnect"));
        }
        self.issued += 1;
        Ok(())
    }

    /// The backend issued `challenge` for this connection (it replaces an unanswered one).
    pub fn challenge_issued(&mut self, challenge: Challenge) {
        self.challenge = Some(challenge);
    }

    /// Evidence arrived: drops any earlier result and uses the outstanding challenge up, giving what the backend
    /// appraises.
    pub fn submit(&mut self, evidence: Vec<u8>) -> Result<Submitted, Unattested> {
        self.result = None;
        let challenge =
            self.challenge.take().ok_or_else(|| Unattested::new("no challenge was issued on this connection"))?;
        Ok(Submitted { challenge, exporter: self.exporter, device: self.device, evidence })
    }

    /// The backend's positive appraisal of this connection's evidence.
    pub fn attested(&mut self, result: AttestationResult) {
        self.result = Some(result);
    }

    /// The result the gate must confirm before a gated request; refused if the connection has none.
    pub fn result(&self) -> Result<AttestationResult, Unattested> {
        self.result.clone().ok_or_else(|| Unattested::new("this connection has not attested"))
    }

    /// The backend no longer accepts the result (expired, device revoked): the connection must attest afresh.
    pub fn drop_result(&mut self) {
        self.result = None;
    }

    /// Keeps a challenge the backend issued for `device`, relayed by this (site node's) connection; it replaces
    /// the device's unanswered one. Refused when too many are outstanding.
    pub fn hold_relayed(&mut self, device: [u8; 32], challenge: Challenge) -> Result<(), Unattested> {
        if self.relayed.len() >= MAX_RELAYED_CHALLENGES && !self.relayed.contains_key(&device) {
            return Err(Unattested::new("too many relayed challenges outstanding on this connection"));
        }
        self.relayed.insert(device, challenge);
        Ok(())
    }

    /// A device's evidence relayed by this connection: uses up the challenge relayed for it, whatever the outcome.
    /// `device` is the key the evidence must be signed with (checked by the caller to be one this node serves).
    pub fn submit_relayed(
        &mut self,
        device: PublicKey,
        evidence: Vec<u8>,
        relay: Relay,
    ) -> Result<Submitted, Unattested> {
        let challenge = self
            .relayed
            .remove(&relay.device)
            .ok_or_else(|| Unattested::new("no challenge was relayed for this device on this connection"))?;
        Ok(Submitted { challenge, exporter: relay.exporter, device, evidence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_attestation::{Status, Tier};

    fn session(admitted: bool) -> Session {
        Session::new(PublicKey([1; 32]), [9; EXPORTER_LEN], admitted, 2)
    }

    fn result() -> AttestationResult {
        AttestationResult {
            status: Status::Affirming,
            concerns: Vec::new(),
            device: PublicKey([1; 32]),
            tier: Tier::Software,
            expires: 100,
            valid_until: std::time::Duration::from_secs(100),
            software: (String::new(), String::new()),
            bootcount: 0,
        }
    }

    #[test]
    fn an_unknown_key_may_only_enrol() {
        let s = session(false);
        assert_eq!(s.route(Request::GetChallenge { device: None }), Route::Close);
        assert_eq!(s.route(Request::GetMetadata { name: "timestamp.json".into(), max_len: 10 }), Route::Close);
        let enroll = Request::Enroll { token: "t".into(), hardware: "h".into(), tpm: None };
        assert!(matches!(s.route(enroll), Route::Enroll { .. }));
    }

    #[test]
    fn an_enrolled_key_is_routed_and_everything_but_its_own_attestation_is_gated() {
        let mut s = session(false);
        s.admit();
        assert_eq!(s.route(Request::GetChallenge { device: None }), Route::Challenge);
        assert!(!Route::Challenge.gated());
        let relayed = s.route(Request::GetChallenge { device: Some([2; 32]) });
        assert_eq!(relayed, Route::RelayedChallenge([2; 32]));
        assert!(relayed.gated());
        assert!(s.route(Request::GetAssignment { device: None }).gated());
    }

    #[test]
    fn challenges_past_the_allowance_are_refused() {
        let mut s = session(true);
        assert!(s.begin_challenge().is_ok());
        assert!(s.begin_challenge().is_ok());
        assert_eq!(s.begin_challenge().unwrap_err().0, "too many challenges on this connection; reconnect");
    }

    #[test]
    fn evidence_without_a_challenge_is_refused() {
        let mut s = session(true);
        assert_eq!(s.submit(vec![1]).unwrap_err().0, "no challenge was issued on this connection");
    }

    #[test]
    fn a_replayed_challenge_is_used_up_by_the_first_evidence() {
        let mut s = session(true);
        s.challenge_issued(Challenge([5; 32]));
        let submitted = s.submit(vec![1]).unwrap();
        assert_eq!(submitted.challenge, Challenge([5; 32]));
        assert_eq!(submitted.exporter, [9; EXPORTER_LEN]);
        assert!(s.submit(vec![1]).is_err(), "the same challenge answered twice");
    }

    #[test]
    fn new_evidence_drops_the_earlier_result_so_a_failed_appraisal_leaves_the_connection_unattested() {
        let mut s = session(true);
        s.attested(result());
        assert!(s.result().is_ok());
        s.challenge_issued(Challenge([5; 32]));
        s.submit(vec![1]).unwrap();
        assert_eq!(s.result().unwrap_err().0, "this connection has not attested");
    }

    #[test]
    fn a_dropped_result_stays_dropped() {
        let mut s = session(true);
        s.attested(result());
        s.drop_result();
        assert!(s.result().is_err());
    }

    #[test]
    fn relayed_evidence_needs_the_challenge_relayed_for_that_device() {
        let mut s = session(true);
        s.hold_relayed([2; 32], Challenge([6; 32])).unwrap();
        let relay = |device| Relay { device, exporter: [7; EXPORTER_LEN] };
        assert!(s.submit_relayed(PublicKey([3; 32]), vec![1], relay([3; 32])).is_err());
        let submitted = s.submit_relayed(PublicKey([2; 32]), vec![1], relay([2; 32])).unwrap();
        assert_eq!((submitted.challenge, submitted.exporter), (Challenge([6; 32]), [7; EXPORTER_LEN]));
        assert!(s.submit_relayed(PublicKey([2; 32]), vec![1], relay([2; 32])).is_err(), "used up");
    }

    #[test]
    fn relayed_challenges_are_bounded_per_connection() {
        let mut s = session(true);
        for i in 0..MAX_RELAYED_CHALLENGES {
            let device: [u8; 32] = std::array::from_fn(|b| if b < 8 { (i >> (8 * b)) as u8 } else { 0 });
            s.hold_relayed(device, Challenge([1; 32])).unwrap();
        }
        assert!(s.hold_relayed([0xff; 32], Challenge([1; 32])).is_err());
        // Replacing one already held is fine.
        assert!(s.hold_relayed([0; 32], Challenge([2; 32])).is_ok());
    }
}
