//! The TPM backend against a software TPM (`swtpm`, started by each test): hardware-tier evidence is affirmed, and
//! quotes over the wrong PCR values (boot chain, or an agent or model other than the evidence claims), a stale
//! nonce, other PCRs or from another key are rejected.
//! Run with `cargo test -p outpost-attestation --features tpm`.
#![cfg(feature = "tpm")]

mod support;

use outpost_attestation::quote::{QuoteError, measurements, qualifying_data};
use outpost_attestation::tpm::{DEFAULT_PCRS, Tpm};
use outpost_attestation::{Reason, Status, Tier, TpmEnrolment};
use outpost_shared::Digest;
use support::swtpm::Swtpm;
use support::*;
use tss_esapi::handles::PcrHandle;

/// A hub that enrolled [`device`] with this TPM in its current (known-good) PCR state.
fn enrol(hub: &mut Hub, tpm: &mut Tpm) {
    let enrolment = tpm.enrolment(DEFAULT_PCRS).expect("read PCRs");
    // What the device sends when it enrols comes back intact.
    assert_eq!(TpmEnrolment::from_bytes(&enrolment.to_bytes()), Ok(enrolment.clone()));
    hub.devices.0.get_mut(&device().public_key()).unwrap().tpm = Some(enrolment);
}

/// Measures what the evidence of [`claims`] states (the agent and model digests) into the measurement PCR.
fn measure_claimed(tpm: &mut Tpm) {
    tpm.measure_software(&measurements(&agent_digest(), Some(&model_digest()))).expect("measure");
}

/// Opens `swtpm`: a freshly started one may refuse its first session for a moment (tests start many in parallel).
fn open(swtpm: &Swtpm) -> Tpm {
    for _ in 0..20 {
        if let Ok(tpm) = Tpm::open(&swtpm.tcti()) {
            return tpm;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Tpm::open(&swtpm.tcti()).expect("open swtpm")
}

fn setup() -> (Swtpm, Tpm, Hub) {
    let swtpm = Swtpm::start();
    let mut tpm = open(&swtpm);
    let mut hub = Hub::new();
    enrol(&mut hub, &mut tpm);
    measure_claimed(&mut tpm);
    (swtpm, tpm, hub)
}

/// What a quote of [`device`] for this appraisal on `conn` must be made over.
fn extra(conn: &Conn) -> [u8; 32] {
    qualifying_data(&conn.nonce(), &device().public_key().0)
}

/// The PCRs an enrolled device quotes: the boot PCRs and the measurement PCR.
fn quoted() -> u32 {
    DEFAULT_PCRS | 1 << outpost_attestation::quote::MEASUREMENT_PCR
}

fn tpm_evidence(conn: &Conn, quote: outpost_attestation::TpmQuote) -> Vec<u8> {
    evidence_with(conn, |c| c.tpm_quote = Some(quote))
}

fn reason(r: Result<outpost_attestation::AttestationResult, outpost_attestation::NotAttested>) -> Reason {
    r.expect_err("must not be attested").reason
}

#[test]
fn tpm_quote_is_affirmed_at_hardware_tier() {
    let (_swtpm, mut tpm, mut hub) = setup();
    let conn = hub.connect();
    let quote = tpm.quote(&extra(&conn), quoted()).expect("quote");
    let result = hub.appraise(&conn, &tpm_evidence(&conn, quote)).expect("attested");
    assert_eq!(result.status, Status::Affirming);
    assert_eq!(result.tier, Tier::Hardware);
}

#[test]
fn the_same_attestation_key_comes_back_after_reopening() {
    let swtpm = Swtpm::start();
    let first = open(&swtpm).attestation_key();
    assert_eq!(open(&swtpm).attestation_key(), first);
    assert_eq!(first[0], 0x04);
}

#[test]
fn tpm_quote_over_wrong_pcr_values_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    // Something other than the enrolled boot chain ran: it was measured into PCR 7.
    tpm.measure(PcrHandle::Pcr7, b"an unsigned boot loader").expect("extend");
    let conn = hub.connect();
    let quote = tpm.quote(&extra(&conn), quoted()).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::PcrMismatch));
}

#[test]
fn tpm_quote_with_a_stale_nonce_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    let earlier = hub.connect();
    let stale = tpm.quote(&extra(&earlier), quoted()).unwrap();
    hub.appraise(&earlier, &tpm_evidence(&earlier, stale.clone())).expect("fresh when it was made");
    // A compromised agent on a device whose boot chain has since changed replays the old quote in fresh evidence.
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, stale))), Reason::Quote(QuoteError::NonceMismatch));
}

#[test]
fn tpm_quote_over_other_pcrs_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    let conn = hub.connect();
    // The boot PCRs alone, leaving out the measurement PCR.
    let quote = tpm.quote(&extra(&conn), DEFAULT_PCRS).unwrap();
    assert_eq!(
        reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))),
        Reason::Quote(QuoteError::PcrSelectionMismatch)
    );
}

#[test]
fn tpm_quote_from_another_tpm_is_rejected() {
    let (_swtpm, _tpm, mut hub) = setup();
    let other_swtpm = Swtpm::start();
    let mut other = open(&other_swtpm);
    let conn = hub.connect();
    let quote = other.quote(&extra(&conn), quoted()).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::BadSignature));
}

#[test]
fn tpm_quote_with_a_tampered_signature_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    let conn = hub.connect();
    let mut quote = tpm.quote(&extra(&conn), quoted()).unwrap();
    quote.signature[40] ^= 1;
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::BadSignature));
}

#[test]
fn hardware_tier_device_without_a_quote_is_rejected() {
    let (_swtpm, _tpm, mut hub) = setup();
    let conn = hub.connect();
    assert_eq!(reason(hub.appraise(&conn, &evidence(&conn))), Reason::HardwareEvidenceRequired);
}

#[test]
fn tpm_quote_measuring_another_model_than_the_evidence_claims_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    // The device runs another model than it claims: the TPM saw that model's digest extended.
    tpm.measure_software(&measurements(&agent_digest(), Some(&Digest::of(b"an unapproved model")))).unwrap();
    let conn = hub.connect();
    let quote = tpm.quote(&extra(&conn), quoted()).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::PcrMismatch));
}

#[test]
fn tpm_quote_measuring_another_agent_than_the_evidence_claims_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    // A vulnerable agent build measured itself, then evidence claims the good build.
    tpm.measure_software(&measurements(&vulnerable_agent_digest(), Some(&model_digest()))).unwrap();
    let conn = hub.connect();
    let quote = tpm.quote(&extra(&conn), quoted()).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::PcrMismatch));
}

#[test]
fn measurement_pcr_is_reset_before_each_measurement() {
    let (_swtpm, mut tpm, mut hub) = setup();
    // Measuring again (a new connection, a restarted agent) gives the same value, not one extended twice.
    measure_claimed(&mut tpm);
    let conn = hub.connect();
    let quote = tpm.quote(&extra(&conn), quoted()).unwrap();
    hub.appraise(&conn, &tpm_evidence(&conn, quote)).expect("attested after measuring twice");
}

#[test]
fn enrolment_facts_out_of_profile_are_refused() {
    use outpost_attestation::quote::EnrolmentError;
    let ak = [4; 65];
    assert_eq!(TpmEnrolment::new([2; 65], 1, vec![[0; 32]]), Err(EnrolmentError::BadKey));
    assert_eq!(TpmEnrolment::new(ak, 1 << 23, vec![[0; 32]]), Err(EnrolmentError::BadMask(1 << 23)));
    assert_eq!(TpmEnrolment::new(ak, 0x1ff, vec![[0; 32]; 9]), Err(EnrolmentError::BadMask(0x1ff)));
    assert_eq!(TpmEnrolment::new(ak, 3, vec![[0; 32]]), Err(EnrolmentError::ValueCount { expected: 2, given: 1 }));
    let good = TpmEnrolment::new(ak, 3, vec![[1; 32], [2; 32]]).unwrap().to_bytes();
    // Cut on a value boundary it is a count that does not fit the mask; anywhere else, a length no facts have.
    let head = good.len() - 2 * 32;
    for cut in 0..good.len() {
        let expected = match cut.checked_sub(head) {
            Some(values) if values.is_multiple_of(32) => EnrolmentError::ValueCount { expected: 2, given: values / 32 },
            _ => EnrolmentError::Length(cut),
        };
        assert_eq!(TpmEnrolment::from_bytes(&good[..cut]), Err(expected), "cut at {cut}");
    }
    let mut long = good.clone();
    long.extend_from_slice(&[0; 32]);
    assert_eq!(TpmEnrolment::from_bytes(&long), Err(EnrolmentError::ValueCount { expected: 2, given: 3 }));
}

#[test]
fn tpm_quote_made_for_another_device_key_is_rejected() {
    let (_swtpm, mut tpm, mut hub) = setup();
    let conn = hub.connect();
    // The right nonce, but qualified for another identity key (a quote lifted from another device's evidence).
    let lifted = qualifying_data(&conn.nonce(), &other_device().public_key().0);
    let quote = tpm.quote(&lifted, quoted()).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::NonceMismatch));
    // The bare nonce, without the device key, is refused too.
    let conn = hub.connect();
    let quote = tpm.quote(&conn.nonce(), quoted()).unwrap();
    assert_eq!(reason(hub.appraise(&conn, &tpm_evidence(&conn, quote))), Reason::Quote(QuoteError::NonceMismatch));
}
