//! The hub's appraisal, one test per attack (each must end in "not attested"), plus the good and warning paths.

mod support;

use std::time::Duration;

use outpost_attestation::{
    ChallengeError, Concern, DeviceStatus, Evidence, Expected, Identity, NotAttested, Reason, ReferenceError,
    ReferenceValues, Status, Tier, TpmEnrolment, TpmQuote, Verifier, VerifierConfig,
};
use outpost_shared::Digest;
use outpost_shared::rng::SeededRng;
use support::*;

fn reason(r: Result<outpost_attestation::AttestationResult, NotAttested>) -> Reason {
    let err = r.expect_err("must not be attested");
    assert_eq!(err.status(), Status::Contraindicated);
    assert!(err.to_string().starts_with("not attested: "), "{err}");
    err.reason
}

#[test]
fn honest_device_is_affirmed_and_bound_until_expiry() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let result = hub.appraise(&conn, &evidence(&conn)).expect("attested");
    assert_eq!(result.status, Status::Affirming);
    assert!(result.concerns.is_empty());
    assert_eq!(result.device, device().public_key());
    assert_eq!(result.tier, Tier::Software);
    assert_eq!(result.software, (AGENT.to_owned(), AGENT_VERSION.to_owned()));
    assert_eq!(result.bootcount, 17);
    assert_eq!(result.expires, NOW + 3600);
    assert!(result.is_current(hub.clock.as_ref()));
    hub.advance(Duration::from_secs(3600));
    assert!(!result.is_current(hub.clock.as_ref()), "a result expires");
}

#[test]
fn result_never_outlives_the_reference_values() {
    let mut hub = Hub::new();
    hub.advance(Duration::from_secs(86_400 - 60));
    let conn = hub.connect();
    let result = hub.appraise(&conn, &evidence(&conn)).unwrap();
    assert_eq!(result.expires, NOW + 86_400);
}

#[test]
fn replayed_evidence_is_rejected() {
    let mut hub = Hub::new();
    let first = hub.connect();
    let captured = evidence(&first);
    hub.appraise(&first, &captured).expect("the original is attested");
    // The same device reconnects; an attacker answers the new challenge with the captured evidence.
    let second = hub.connect();
    assert_eq!(reason(hub.appraise(&second, &captured)), Reason::NonceMismatch);
}

#[test]
fn nonce_reused_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    hub.appraise(&conn, &evidence(&conn)).expect("first answer is attested");
    // Fresh evidence (new signature, other boot count) for the same challenge on the same connection.
    let again = evidence_with(&conn, |c| c.bootcount += 1);
    assert_eq!(reason(hub.appraise(&conn, &again)), Reason::ChallengeReused);
}

#[test]
fn failed_appraisal_also_consumes_the_challenge() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    reason(hub.appraise(&conn, b"garbage"));
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::ChallengeReused);
}

#[test]
fn nonce_expired_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let ev = evidence(&conn);
    hub.advance(VerifierConfig::default().challenge_ttl);
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::ChallengeExpired);
}

#[test]
fn unknown_challenge_is_rejected() {
    let hub = Hub::new();
    let conn = Conn { exporter: [9; 32], challenge: outpost_attestation::Challenge([7; 32]) };
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::UnknownChallenge);
}

#[test]
fn evidence_from_another_connection_is_rejected() {
    let mut hub = Hub::new();
    let device_conn = hub.connect();
    let relay = hub.connect();
    // A relay forwards the challenge issued on its own connection to the device, which answers it with the TLS
    // exporter of *its* connection; the relay then presents that evidence on its own connection.
    let forwarded = Conn { exporter: device_conn.exporter, challenge: relay.challenge };
    let made_on_victim = evidence(&forwarded);
    assert_eq!(reason(hub.appraise(&relay, &made_on_victim)), Reason::NonceMismatch);
}

#[test]
fn bad_signature_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let mut ev = evidence(&conn);
    let last = ev.len() - 1;
    ev[last] ^= 1;
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::BadSignature);
}

#[test]
fn evidence_signed_by_another_key_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let forged = Evidence::sign(&other_device(), &claims(conn.nonce())).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &forged)), Reason::BadSignature);
}

#[test]
fn evidence_naming_another_device_is_rejected() {
    let mut hub = Hub::new();
    hub.devices.0.insert(other_device().public_key(), good_record());
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.ueid = other_device().public_key());
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::WrongDevice);
}

#[test]
fn unknown_device_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let stranger = Identity::from_seed(ROGUE_SEED);
    let mut c = claims(conn.nonce());
    c.ueid = stranger.public_key();
    let ev = Evidence::sign(&stranger, &c).unwrap();
    assert_eq!(reason(hub.appraise_as(&conn, stranger.public_key(), &ev)), Reason::UnknownDevice);
}

#[test]
fn revoked_device_is_rejected() {
    let mut hub = Hub::new();
    hub.devices.0.get_mut(&device().public_key()).unwrap().status = DeviceStatus::Revoked;
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::RevokedDevice);
}

#[test]
fn hardware_tier_device_with_software_evidence_is_rejected() {
    let mut hub = Hub::new();
    hub.devices.0.get_mut(&device().public_key()).unwrap().tpm =
        Some(TpmEnrolment::new([4; 65], 0xff, vec![[0; 32]; 8]).unwrap());
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::HardwareEvidenceRequired);
}

#[test]
fn tpm_quote_from_a_device_enrolled_without_tpm_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.tpm_quote = Some(TpmQuote { attest: vec![1; 100], signature: [2; 64] }));
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::QuoteNotEnrolled);
}

#[test]
fn agent_digest_not_in_reference_values_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let patched = Digest::of(b"a patched agent binary");
    let ev = evidence_with(&conn, |c| c.software_digest = patched);
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::UnknownSoftware(patched));
}

#[test]
fn agent_claiming_another_version_than_its_digest_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.software_digest = vulnerable_agent_digest());
    assert!(matches!(reason(hub.appraise(&conn, &ev)), Reason::SoftwareMismatch { .. }));
}

#[test]
fn revoked_agent_version_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| {
        c.software_digest = vulnerable_agent_digest();
        c.swversion = VULNERABLE_VERSION.into();
    });
    assert_eq!(
        reason(hub.appraise(&conn, &ev)),
        Reason::RevokedSoftware { name: AGENT.into(), version: VULNERABLE_VERSION.into() }
    );
}

#[test]
fn agent_version_revoked_by_a_newer_document_is_rejected() {
    let mut hub = Hub::new();
    let mut doc = reference_values(2);
    doc.software[0].revoked = true;
    hub.verifier.install_reference_values(&doc.sign(&team())).unwrap();
    let conn = hub.connect();
    assert!(matches!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::RevokedSoftware { .. }));
}

#[test]
fn model_digest_that_does_not_match_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let other = Digest::of(b"a model nobody assigned");
    let ev = evidence_with(&conn, |c| c.model_digest = Some(other));
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::ModelMismatch { reported: Some(other) });
}

#[test]
fn missing_model_when_one_is_expected_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.model_digest = None);
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::ModelMismatch { reported: None });
}

#[test]
fn policy_digest_that_does_not_match_is_rejected() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.policy_digest = None);
    assert_eq!(reason(hub.appraise(&conn, &ev)), Reason::PolicyMismatch { reported: None });
}

#[test]
fn previous_model_during_an_update_window_is_a_warning() {
    let mut hub = Hub::new();
    hub.devices.0.get_mut(&device().public_key()).unwrap().model =
        Expected::Moving { from: Some(previous_model_digest()), to: Some(model_digest()) };
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.model_digest = Some(previous_model_digest()));
    let result = hub.appraise(&conn, &ev).expect("attested with a warning");
    assert_eq!(result.status, Status::Warning);
    assert_eq!(result.concerns, vec![Concern::PreviousModel]);
    assert!(result.is_current(hub.clock.as_ref()));
    assert!(!result.is_affirming());

    let conn = hub.connect();
    assert!(hub.appraise(&conn, &evidence(&conn)).unwrap().is_affirming(), "the assigned model affirms");
}

#[test]
fn first_model_install_is_a_warning_until_it_is_active() {
    let mut hub = Hub::new();
    hub.devices.0.get_mut(&device().public_key()).unwrap().model =
        Expected::Moving { from: None, to: Some(model_digest()) };
    let conn = hub.connect();
    let ev = evidence_with(&conn, |c| c.model_digest = None);
    assert_eq!(hub.appraise(&conn, &ev).unwrap().status, Status::Warning);
}

#[test]
fn no_reference_values_means_not_attested() {
    let mut hub = Hub::new();
    hub.verifier = Verifier::new(VerifierConfig::default(), hub.clock.clone(), team().public_key());
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::NoReferenceValues);
}

#[test]
fn expired_reference_values_mean_not_attested() {
    let mut hub = Hub::new();
    hub.advance(Duration::from_secs(86_400));
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::ReferenceValuesExpired);
}

#[test]
fn clock_stepped_back_does_not_revive_expired_reference_values() {
    let mut hub = Hub::new();
    hub.advance(Duration::from_secs(86_400));
    let conn = hub.connect();
    reason(hub.appraise(&conn, &evidence(&conn)));
    hub.clock.set_wall(NOW);
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::ReferenceValuesExpired);
}

#[test]
fn reference_values_signed_by_another_key_are_refused() {
    let hub = Hub::new();
    let rogue = Identity::from_seed(ROGUE_SEED);
    let mut doc = reference_values(5);
    doc.software.push(outpost_attestation::SoftwareRef {
        name: AGENT.into(),
        version: "evil".into(),
        sha256: Digest::of(b"evil"),
        revoked: false,
    });
    assert_eq!(hub.verifier.install_reference_values(&doc.sign(&rogue)), Err(ReferenceError::BadSignature));
    assert_eq!(hub.verifier.reference_values().unwrap().document().serial, 1, "the trusted document stays");
}

#[test]
fn older_reference_values_are_refused() {
    let hub = Hub::new();
    hub.verifier.install_reference_values(&reference_values(3).sign(&team())).unwrap();
    assert_eq!(
        hub.verifier.install_reference_values(&reference_values(2).sign(&team())),
        Err(ReferenceError::Rollback { offered: 2, current: 3 })
    );
    let mut same_serial = reference_values(3);
    same_serial.software[1].revoked = false;
    assert!(matches!(
        hub.verifier.install_reference_values(&same_serial.sign(&team())),
        Err(ReferenceError::Rollback { .. })
    ));
    assert_eq!(hub.verifier.install_reference_values(&reference_values(3).sign(&team())), Ok(3), "idempotent");
}

#[test]
fn expired_reference_values_are_refused() {
    let hub = Hub::new();
    let doc = ReferenceValues { expires: NOW, ..reference_values(2) };
    assert!(matches!(hub.verifier.install_reference_values(&doc.sign(&team())), Err(ReferenceError::Expired { .. })));
}

#[test]
fn evidence_is_not_accepted_as_reference_values() {
    let mut hub = Hub::new();
    let conn = hub.connect();
    // Even signed by the team key, a token without the reference-values content type is refused.
    let ev = Evidence::sign(&team(), &claims(conn.nonce())).unwrap();
    assert!(matches!(hub.verifier.install_reference_values(&ev), Err(ReferenceError::Format(_))));
}

#[test]
fn challenge_store_is_bounded() {
    let config = VerifierConfig { max_challenges: 3, ..VerifierConfig::default() };
    let hub = Hub::with_config(config);
    let mut rng = SeededRng::new(1);
    for _ in 0..3 {
        hub.verifier.issue_challenge(device().public_key(), &mut rng).unwrap();
    }
    assert_eq!(hub.verifier.issue_challenge(device().public_key(), &mut rng), Err(ChallengeError::Full(3)));
    // Entries are dropped one TTL after they expire.
    hub.advance(config.challenge_ttl * 2);
    hub.verifier.issue_challenge(device().public_key(), &mut rng).expect("room again after expiry");
}

#[test]
fn one_device_cannot_fill_the_challenge_store_and_lock_others_out() {
    let config = VerifierConfig { max_challenges: 16, max_challenges_per_device: 4, ..VerifierConfig::default() };
    let hub = Hub::with_config(config);
    let mut rng = SeededRng::new(1);
    let (hoarder, other) = (device().public_key(), team().public_key());
    // However many connections it opens and whoever relays for it, one key holds at most its share.
    for _ in 0..4 {
        hub.verifier.issue_challenge(hoarder, &mut rng).unwrap();
    }
    assert_eq!(
        hub.verifier.issue_challenge(hoarder, &mut rng),
        Err(ChallengeError::DeviceFull { device: hoarder, held: 4 })
    );
    hub.verifier.issue_challenge(other, &mut rng).expect("another device still gets a challenge");
    // Its share comes back as its challenges expire.
    hub.advance(config.challenge_ttl);
    hub.verifier.issue_challenge(hoarder, &mut rng).expect("room again after expiry");
}

#[test]
fn a_site_node_relaying_challenges_for_invented_devices_cannot_fill_the_store() {
    // A site node may relay for every device of its site, a fresh key each time; its devices' keys each stay under
    // their own share, so only a bound on the relay itself keeps it from taking every slot.
    let config = VerifierConfig {
        max_challenges: 64,
        max_challenges_per_device: 4,
        max_challenges_per_relay: 16,
        ..VerifierConfig::default()
    };
    let hub = Hub::with_config(config);
    let mut rng = SeededRng::new(7);
    let node = team().public_key();
    let invented = |i: u8| Identity::from_seed([i; 32]).public_key();
    for i in 0..16 {
        hub.verifier.issue_relayed_challenge(invented(i), node, &mut rng).expect("within the site node's share");
    }
    assert_eq!(
        hub.verifier.issue_relayed_challenge(invented(16), node, &mut rng),
        Err(ChallengeError::RelayFull { relay: node, held: 16 })
    );
    // The store still has room for everybody else: a device on its own, and another site node.
    hub.verifier.issue_challenge(device().public_key(), &mut rng).expect("a direct device still gets one");
    let other_node = invented(200);
    hub.verifier.issue_relayed_challenge(invented(17), other_node, &mut rng).expect("another site node still relays");
    // The node's share comes back as its challenges expire.
    hub.advance(config.challenge_ttl);
    hub.verifier.issue_relayed_challenge(invented(18), node, &mut rng).expect("room again after expiry");
}

#[test]
fn a_relayed_challenge_counts_against_its_device_too() {
    let config = VerifierConfig { max_challenges_per_device: 2, ..VerifierConfig::default() };
    let hub = Hub::with_config(config);
    let mut rng = SeededRng::new(8);
    let (dev, node) = (device().public_key(), team().public_key());
    hub.verifier.issue_challenge(dev, &mut rng).unwrap();
    hub.verifier.issue_relayed_challenge(dev, node, &mut rng).unwrap();
    assert_eq!(
        hub.verifier.issue_relayed_challenge(dev, node, &mut rng),
        Err(ChallengeError::DeviceFull { device: dev, held: 2 })
    );
}

#[test]
fn device_that_answers_its_challenges_is_never_refused_one() {
    // An agent restarting in a loop asks for a challenge each time and answers it: it must not run out.
    let config = VerifierConfig { max_challenges_per_device: 2, ..VerifierConfig::default() };
    let mut hub = Hub::with_config(config);
    for _ in 0..10 {
        let conn = hub.connect();
        hub.appraise(&conn, &evidence(&conn)).expect("attested");
    }
}

#[test]
fn verifier_can_be_shared_across_connections() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Verifier>();
}

#[test]
fn a_stuck_random_source_cannot_hang_the_verifier() {
    struct Stuck;
    impl outpost_shared::rng::Rng for Stuck {
        fn fill(&mut self, buf: &mut [u8]) {
            buf.fill(0);
        }
    }
    let hub = Hub::new();
    hub.verifier.issue_challenge(device().public_key(), &mut Stuck).unwrap();
    assert_eq!(hub.verifier.issue_challenge(device().public_key(), &mut Stuck), Err(ChallengeError::RngRepeats));
}
