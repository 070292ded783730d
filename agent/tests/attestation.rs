//! Attestation end to end over real QUIC: the hub serves updates only to connections whose evidence it appraised,
//! an agent build missing from the signed reference values gets nothing while a listed one updates, a revoked
//! device is cut off at its next request, evidence made for one connection is refused on another, a model the
//! device's channel may not run is refused, a result expires (and the agent renews it), one connection cannot hoard
//! challenges, and a one-time enrolment token enrols exactly one device before it expires.
//!
//! The same tests run against both backends: as built by default every device attests at the software tier; with
//! `--features tpm` (`.ci/run` does both) each device has its own software TPM (`swtpm`), is enrolled with it
//! (by token, or by the operator as `outpost-hub device tpm` does) and presents quotes at the hardware tier. Two
//! more attacks run only there: a quote over boot PCRs that changed, and a device measuring another model.

mod support;
#[cfg(feature = "tpm")]
#[path = "../../attestation/tests/support/swtpm.rs"]
mod swtpm;

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::attest::{self, DeviceTpm, Facts};
use outpost_agent::config::{self, AgentConfig, TpmConfig};
use outpost_agent::driver::{Agent, CheckError, init_device, store_enrolment_token};
use outpost_attestation::{Claims, Evidence, Identity};
use outpost_hub::registry::DeviceStatus;
use outpost_net::client::{ClientConfig, ClientError, HubClient};
use outpost_shared::Digest;
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::AffineManifest;
use support::{World, active, refusal, software, this_binary};

const HEALTH: u32 = 2;

/// The devices' TPMs in one test: with `--features tpm`, one fresh software TPM per device seed (hardware tier);
/// without, none (software tier).
#[derive(Default)]
struct Tpms {
    #[cfg(feature = "tpm")]
    running: std::sync::Mutex<std::collections::HashMap<u8, swtpm::Swtpm>>,
}

impl Tpms {
    /// The `[attestation]` settings of device `seed`, its TPM started (and answering) on first use.
    fn config(&self, seed: u8) -> Option<TpmConfig> {
        #[cfg(feature = "tpm")]
        {
            let mut running = self.running.lock().unwrap();
            let tcti = running.entry(seed).or_insert_with(swtpm::Swtpm::start).tcti();
            // A freshly started swtpm may refuse its first session for a moment.
            for _ in 0..40 {
                if outpost_attestation::tpm::Tpm::open(&tcti).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(TpmConfig { tcti, boot_pcrs: outpost_attestation::tpm::DEFAULT_PCRS })
        }
        #[cfg(not(feature = "tpm"))]
        {
            let _ = seed;
            None
        }
    }

    fn device(&self, seed: u8) -> Option<Arc<DeviceTpm>> {
        self.config(seed).map(|c| Arc::new(DeviceTpm::new(c).unwrap()))
    }

    /// Records device `seed`'s TPM on the hub, as `outpost-hub device tpm KEY FACTS` does with what
    /// `outpost-agent tpm-facts` printed.
    fn enrol(&self, w: &World, seed: u8) {
        if let Some(tpm) = self.device(seed) {
            let facts = outpost_attestation::TpmEnrolment::from_bytes(&tpm.enrolment().unwrap().to_bytes()).unwrap();
            w.registry().device_set_tpm(&key(seed), Some(outpost_hub::registry::TpmRecord::of(&facts))).unwrap();
        }
    }

    /// The tier devices attest at in this build.
    fn tier(&self) -> &'static str {
        if cfg!(feature = "tpm") { "hardware" } else { "software" }
    }
}

/// A device directory for `seed`, configured against the hub at `addr` (with its TPM, if any); approved on
/// `stable` (and its TPM enrolled) unless `token` is given, in which case it enrols with it.
fn device_dir(
    w: &World,
    tpms: &Tpms,
    name: &str,
    seed: u8,
    addr: std::net::SocketAddr,
    hub: &str,
    token: Option<&str>,
) -> Agent {
    let dir = w.tmp.path().join(name);
    let key = init_device(&dir, &w.root(), [seed; 32]).unwrap();
    match token {
        Some(t) => store_enrolment_token(&dir, t).unwrap(),
        None => {
            w.registry().device_approve(&key, "stable").unwrap();
            tpms.enrol(w, seed);
        }
    }
    let mut text = config::render(&addr.to_string(), hub)
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"));
    if let Some(tpm) = tpms.config(seed) {
        text.push_str(&format!("\n[attestation]\ntpm = \"{}\"\n", tpm.tcti));
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap()
}

async fn device(w: &World, tpms: &Tpms, name: &str, seed: u8) -> Agent {
    let (addr, hub_key) = w.serve().await;
    device_dir(w, tpms, name, seed, addr, &hub_key.to_hex(), None)
}

fn key(seed: u8) -> String {
    Identity::from_seed([seed; 32]).public_key().to_hex()
}

async fn adopt(agent: &mut Agent) {
    support::adopt(agent, HEALTH).await;
}

fn not_attested(e: CheckError) -> String {
    match e {
        CheckError::NotAttested(reason) => reason,
        other => panic!("expected a NotAttested refusal, got {other}"),
    }
}

async fn connect(addr: std::net::SocketAddr, hub: outpost_attestation::PublicKey, seed: u8) -> HubClient {
    HubClient::connect(&Identity::from_seed([seed; 32]), &ClientConfig::new(addr, hub)).await.unwrap()
}

fn facts(model: Option<Digest>) -> Facts {
    Facts { bootcount: 1, model, policy: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_whose_binary_digest_is_not_allowed_is_refused_updates_while_a_good_one_gets_them() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    // The team's reference values list another build of the agent, not the one running here.
    w.install_reference_values(vec![software(Digest::of(b"another build of outpost-agent"))]);
    let mut bad = device(&w, &tpms, "bad", 1).await;
    let reason = not_attested(bad.check().await.unwrap_err());
    assert!(reason.contains(&format!("software digest {} not in the reference values", this_binary())), "{reason}");
    assert_eq!(active(&bad), None, "nothing was downloaded or activated");
    assert!(!w.tmp.path().join("bad/staging").exists(), "not a byte of the package reached the device");
    let record = w.registry().device(&key(1)).unwrap().unwrap();
    assert_eq!(record.attestation.as_ref().map(|a| a.status.as_str()), Some("contraindicated"));

    // A document listing this build (next serial): the same agent, reconnecting, now updates; so does a new one.
    w.install_reference_values(vec![software(Digest::of(b"another build of outpost-agent")), software(this_binary())]);
    let mut good = device(&w, &tpms, "good", 2).await;
    adopt(&mut good).await;
    assert_eq!(active(&good), Some(v1));
    assert!(good.attested().is_some());
    adopt(&mut bad).await;
    assert_eq!(active(&bad), Some(v1));
    let record = w.registry().device(&key(2)).unwrap().unwrap();
    let att = record.attestation.unwrap();
    assert_eq!((att.tier.as_deref(), att.bootcount), (Some(tpms.tier()), Some(1)));
    assert_eq!(att.software, Some(format!("outpost-agent {}", attest::SWVERSION)));

    // Revoking this build in a newer document refuses the next attestation; the device keeps its model.
    let mut revoked = software(this_binary());
    revoked.revoked = true;
    w.install_reference_values(vec![revoked]);
    let mut late = device(&w, &tpms, "late", 3).await;
    let reason = not_attested(late.check().await.unwrap_err());
    assert!(reason.contains("is revoked"), "{reason}");
    assert_eq!(active(&late), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_cut_off_within_one_request() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (addr, hub_key) = w.serve().await;
    let mut agent = device_dir(&w, &tpms, "dev", 1, addr, &hub_key.to_hex(), None);
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v1));

    // A second attested connection of the same device, to count requests on.
    let client = connect(addr, hub_key, 1).await;
    let id = Identity::from_seed([1; 32]);
    let verdict = attest::attest(&client, &id, &facts(Some(v1)), tpms.device(1).as_ref()).await.unwrap();
    assert!(matches!(verdict, attest::Outcome::Attested(_)), "{verdict:?}");
    assert!(client.metadata("timestamp.json", 1 << 20).await.unwrap().is_some());

    w.registry().device_revoke(&key(1)).unwrap();
    let e = client.metadata("timestamp.json", 1 << 20).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: device revoked", "the very next request is refused");
    let e = client.assignment().await.unwrap_err();
    assert!(refusal(e).starts_with("not attested"), "and it stays refused");

    // The agent's own (attested, open) connection: its next check is refused with a clear error, and the
    // device keeps serving its model.
    let reason = not_attested(agent.check().await.unwrap_err());
    assert_eq!(reason, "not attested: device revoked");
    assert_eq!(active(&agent), Some(v1));
    assert_eq!(w.registry().device(&key(1)).unwrap().unwrap().status, DeviceStatus::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_relayed_to_another_connection_is_refused() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (addr, hub_key) = w.serve().await;
    for seed in [1, 2] {
        w.registry().device_approve(&key(seed), "stable").unwrap();
        tpms.enrol(&w, seed);
    }
    let identity = Identity::from_seed([1; 32]);
    let tpm = tpms.device(1);
    let evidence_for = |client: &HubClient, challenge: outpost_attestation::Challenge| {
        let nonce = challenge.nonce(&client.exporter().unwrap());
        let claims = Claims {
            tpm_quote: tpm.as_ref().map(|t| t.quote(&this_binary(), None, &nonce, &identity.public_key().0).unwrap()),
            ..support::claims(&identity, nonce, None)
        };
        Evidence::sign(&identity, &claims).unwrap()
    };
    // Good evidence made on connection 1.
    let first = connect(addr, hub_key, 1).await;
    let challenge = first.challenge().await.unwrap().unwrap();
    let evidence = evidence_for(&first, challenge);

    // Relayed to connection 2 of the same device, without a challenge there, then answering one issued there.
    let second = connect(addr, hub_key, 1).await;
    let e = second.post_evidence(&evidence).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: no challenge was issued on this connection");
    second.challenge().await.unwrap().unwrap();
    let e = second.post_evidence(&evidence).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: nonce does not match this challenge on this connection");
    assert!(refusal(second.assignment().await.unwrap_err()).starts_with("not attested"));

    // Relayed by another enrolled device over its own connection: the evidence is not signed by that device.
    let other = connect(addr, hub_key, 2).await;
    other.challenge().await.unwrap().unwrap();
    let e = other.post_evidence(&evidence).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: bad signature");

    // The connection it was made for: the challenge there was used up by nobody yet, so it attests.
    let verdict = first.post_evidence(&evidence).await.unwrap();
    assert!(verdict.expires > 0);
    assert!(first.metadata("timestamp.json", 1 << 20).await.unwrap().is_some());
    // Each challenge admits one appraisal: the same evidence again is refused.
    let e = first.post_evidence(&evidence).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: no challenge was issued on this connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_token_enrols_once_and_expires() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (addr, hub_key) = w.serve().await;
    let hub = hub_key.to_hex();
    let mut rng = SeededRng::new(9);
    let token = w.registry().token_create("stable", None, 600, &mut rng).unwrap();
    // Another token stays open, so unknown keys may connect to present theirs and hear why they are refused.
    let spare = w.registry().token_create("stable", None, 24 * 3600, &mut rng).unwrap();
    assert!(!std::fs::read(w.dir.join("index.redb")).unwrap().windows(token.len()).any(|x| x == token.as_bytes()));

    let mut first = device_dir(&w, &tpms, "first", 1, addr, &hub, Some(&token));
    adopt(&mut first).await;
    assert_eq!(active(&first), Some(v1), "enrolled with the token, attested and updated on its first connection");
    assert!(!w.tmp.path().join("first").join("enrol.token").exists(), "the device forgets a used token");
    let record = w.registry().device(&key(1)).unwrap().unwrap();
    assert_eq!((record.status, record.enrolled_by.as_deref()), (DeviceStatus::Approved, Some("token")));
    assert!(record.hardware.unwrap().contains("arch="));
    // With a TPM, the enrolment carried its facts: the device attests at the hardware tier from the start.
    assert_eq!(record.tpm.is_some(), tpms.tier() == "hardware");
    assert_eq!(record.attestation.and_then(|a| a.tier).as_deref(), Some(tpms.tier()));

    // The same token a second time, by another key: refused.
    let mut second = device_dir(&w, &tpms, "second", 2, addr, &hub, Some(&token));
    let e = second.check().await.unwrap_err();
    assert!(e.to_string().contains("enrolment refused: enrolment token already used"), "{e}");
    assert!(w.registry().device(&key(2)).unwrap().is_none());

    // A token used after its expiry: refused.
    let late = w.registry().token_create("stable", None, 60, &mut rng).unwrap();
    w.clock.advance(Duration::from_secs(61));
    let mut third = device_dir(&w, &tpms, "third", 3, addr, &hub, Some(&late));
    let e = third.check().await.unwrap_err();
    assert!(e.to_string().contains("enrolment refused: enrolment token expired"), "{e}");
    assert!(w.registry().device(&key(3)).unwrap().is_none());

    // With no token open at all, an unknown key is closed at once, as before tokens existed.
    let mut fourth = device_dir(&w, &tpms, "fourth", 4, addr, &hub, Some(&spare));
    fourth.check().await.unwrap();
    assert_eq!(active(&fourth), Some(v1));
    let mut fifth = device_dir(&w, &tpms, "fifth", 5, addr, &hub, Some(&spare));
    let e = fifth.check().await.unwrap_err();
    let CheckError::Hub(e) = e else { panic!("{e}") };
    assert_eq!(e.close_reason().map(|(code, _)| code), Some(outpost_shared::wire::codes::CLOSE_UNKNOWN_DEVICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_hoard_challenges_and_lock_other_devices_out() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (addr, hub_key) = w.serve().await;
    w.registry().device_approve(&key(1), "stable").unwrap();
    tpms.enrol(&w, 1);
    let hoarder = connect(addr, hub_key, 1).await;
    for _ in 0..outpost_net::server::ServeConfig::DEFAULT_MAX_CHALLENGES_PER_CONNECTION {
        hoarder.challenge().await.unwrap().unwrap();
    }
    let e = hoarder.challenge().await.unwrap_err();
    assert_eq!(refusal(e), "not attested: too many challenges on this connection; reconnect");
    // A fresh connection attests as usual.
    let fresh = connect(addr, hub_key, 1).await;
    let id = Identity::from_seed([1; 32]);
    let verdict = attest::attest(&fresh, &id, &facts(None), tpms.device(1).as_ref()).await.unwrap();
    assert!(matches!(verdict, attest::Outcome::Attested(_)), "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_reconnecting_cannot_fill_the_challenge_store_and_lock_other_devices_out() {
    /// What the hub's verifier holds for one device key (`VerifierConfig::max_challenges_per_device`).
    const PER_DEVICE: usize = 8;
    let (w, tpms) = (World::new(), Tpms::default());
    let (addr, hub_key) = w.serve().await;
    for seed in [1, 2] {
        w.registry().device_approve(&key(seed), "stable").unwrap();
        tpms.enrol(&w, seed);
    }
    // Every new connection gets a fresh per-connection allowance; the device key's share does not reset.
    let (mut issued, mut refused) = (0, None);
    'connections: for _ in 0..PER_DEVICE {
        let hoarder = connect(addr, hub_key, 1).await;
        for _ in 0..outpost_net::server::ServeConfig::DEFAULT_MAX_CHALLENGES_PER_CONNECTION {
            match hoarder.challenge().await {
                Ok(Some(_)) => issued += 1,
                Ok(None) => panic!("the hub attests"),
                Err(e) => {
                    refused = Some(refusal(e));
                    break 'connections;
                }
            }
        }
    }
    assert_eq!(issued, PER_DEVICE, "challenges held for one device key");
    let refused = refused.expect("the device's share ran out");
    assert!(refused.starts_with("not attested: too many outstanding challenges for device"), "{refused}");
    // Another device attests as usual.
    let other = connect(addr, hub_key, 2).await;
    let id = Identity::from_seed([2; 32]);
    let verdict = attest::attest(&other, &id, &facts(None), tpms.device(2).as_ref()).await.unwrap();
    assert!(matches!(verdict, attest::Outcome::Attested(_)), "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_claiming_a_model_its_channel_may_not_run_is_refused() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    w.clock.advance(Duration::from_secs(2));
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let (addr, hub_key) = w.serve().await;
    let tpms = Tpms::default();
    w.registry().device_approve(&key(1), "stable").unwrap();
    tpms.enrol(&w, 1);
    let (identity, tpm) = (Identity::from_seed([1; 32]), tpms.device(1));
    let verdict = |model| {
        let (identity, tpm) = (&identity, &tpm);
        async move {
            let client = connect(addr, hub_key, 1).await;
            attest::attest(&client, identity, &facts(model), tpm.as_ref()).await
        }
    };
    // The assigned package affirms; an older one its channel may run, or none, is a warning (mid-update).
    let status = |v: Result<attest::Outcome, ClientError>| match v.unwrap() {
        attest::Outcome::Attested(a) => a.status,
        other => panic!("{other:?}"),
    };
    use outpost_shared::wire::AttestedStatus::{Affirming, Warning};
    assert_eq!(status(verdict(Some(v2)).await), Affirming);
    assert_eq!(status(verdict(Some(v1)).await), Warning);
    assert_eq!(status(verdict(None).await), Warning);
    // A package nobody published, or one since revoked, is refused.
    let unknown = Digest::of(b"a model from elsewhere");
    let reason = refusal(verdict(Some(unknown)).await.unwrap_err());
    assert!(reason.contains("model digest") && reason.contains("is not what the device should run"), "{reason}");
    outpost_hub::director::Director::new(&w.repo).revoke(v1, "field regression", support::NOW).unwrap();
    let reason = refusal(verdict(Some(v1)).await.unwrap_err());
    assert!(reason.contains("is not what the device should run"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_attestation_is_refused_and_the_agent_attests_again_on_a_new_connection() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (addr, hub_key) = w.serve().await;
    let mut agent = device_dir(&w, &tpms, "dev", 1, addr, &hub_key.to_hex(), None);
    adopt(&mut agent).await;
    let first = agent.attested().unwrap();
    let client = connect(addr, hub_key, 1).await;
    attest::attest(&client, &Identity::from_seed([1; 32]), &facts(Some(v1)), tpms.device(1).as_ref()).await.unwrap();

    // Past the result's lifetime (`result_ttl_secs`, an hour by default) the connection is served nothing more.
    w.clock.advance(Duration::from_secs(3601));
    let e = client.metadata("timestamp.json", 1 << 20).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: attestation result expired");
    // The agent renews before that happens to it: a new connection, fresh evidence, a later expiry.
    agent.check().await.unwrap();
    assert!(agent.attested().unwrap().expires > first.expires);
    assert_eq!(active(&agent), Some(v1));
}

/// A device enrolled with its TPM whose boot chain then changed (something was measured into PCR 7): its quotes no
/// longer match the enrolled state, and it gets nothing; the device keeps serving its model.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_quote_over_changed_boot_pcrs_is_refused_end_to_end() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, &tpms, "dev", 1).await;
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v1));
    assert_eq!(agent.attested().map(|a| a.tier), Some(outpost_shared::wire::AttestedTier::Hardware));

    let tcti = tpms.config(1).unwrap().tcti;
    let mut tpm = outpost_attestation::tpm::Tpm::open(&tcti).unwrap();
    tpm.measure(outpost_attestation::tpm::PcrHandle::Pcr7, b"an unsigned boot loader").unwrap();
    drop(tpm);
    w.clock.advance(Duration::from_secs(3601)); // past the result: the agent attests again
    let reason = not_attested(agent.check().await.unwrap_err());
    assert!(reason.contains("TPM quote: PCR values differ"), "{reason}");
    assert_eq!(active(&agent), Some(v1));
}

/// A device whose TPM measured one model while its evidence claims another (an agent lying about what it runs)
/// is refused, although the claimed model is the one the hub assigned.
#[cfg(feature = "tpm")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_measuring_another_model_than_the_evidence_claims_is_refused_end_to_end() {
    let (w, tpms) = (World::new(), Tpms::default());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (addr, hub_key) = w.serve().await;
    w.registry().device_approve(&key(1), "stable").unwrap();
    tpms.enrol(&w, 1);
    let identity = Identity::from_seed([1; 32]);
    let tpm = tpms.device(1).unwrap();
    let client = connect(addr, hub_key, 1).await;
    let nonce = client.challenge().await.unwrap().unwrap().nonce(&client.exporter().unwrap());
    let elsewhere = Digest::of(b"a model from elsewhere");
    let claims = Claims {
        tpm_quote: Some(tpm.quote(&this_binary(), Some(&elsewhere), &nonce, &identity.public_key().0).unwrap()),
        ..support::claims(&identity, nonce, Some(v1))
    };
    let e = client.post_evidence(&Evidence::sign(&identity, &claims).unwrap()).await.unwrap_err();
    assert!(refusal(e).contains("TPM quote: PCR values differ"));
    assert!(refusal(client.assignment().await.unwrap_err()).starts_with("not attested"));
}
