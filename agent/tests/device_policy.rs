//! A device enforcing its site policy against a real hub over real QUIC: a package rejected on its signed
//! metadata is never downloaded and the hub sees the rule; a maintenance window defers and then installs on the
//! virtual clock; a manifest that differs from the signed metadata is rejected after download and not fetched
//! again; a policy file that breaks leaves the last good policy in force.

mod support;

use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::device::Layout;
use outpost_agent::driver::{Agent, init_device};
use outpost_attestation::identity::Identity;
use outpost_shared::Digest;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use support::{World, active};

const HEALTH: u32 = 2;
const SEED: u8 = 7;

async fn device(w: &World, policy: &str) -> Agent {
    let (addr, hub_key) = w.serve().await;
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [SEED; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    std::fs::write(dir.join("site.toml"), policy).unwrap();
    let text = format!(
        "{}\n[policy]\nfile = \"site.toml\"\n",
        config::render(&addr.to_string(), &hub_key.to_hex())
            .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"))
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap()
}

async fn adopt(agent: &mut Agent) {
    support::adopt(agent, HEALTH).await;
}

fn staged(w: &World, d: &Digest) -> bool {
    Layout::new(&w.tmp.path().join("dev")).staging(d).exists()
}

fn later(w: &World, secs: u64) {
    w.clock.advance(Duration::from_secs(secs));
}

fn device_key() -> String {
    Identity::from_seed([SEED; 32]).public_key().to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_over_the_sites_max_risk_is_never_downloaded_and_the_hub_sees_the_rule() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "site = \"plant-7\"\nmax_risk = \"low\"\n").await;
    adopt(&mut agent).await;
    later(&w, 2);
    let mut risky = AffineManifest::new("affine", "1.1.0", 3.0, 1.0);
    risky.risk_tier = "medium".into();
    let (v2, _) = w.add_and_publish(&risky, "stable");
    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v1));
    assert!(!staged(&w, &v2), "not a byte of the rejected package was fetched");
    let refusal = agent.state().refused.iter().find(|r| r.digest == v2).cloned().expect("refusal recorded");
    assert_eq!((refusal.rule.as_str(), refusal.until, refusal.by_site), ("max_risk", None, false));
    assert_eq!(refusal.package, "affine@1.1.0");

    later(&w, 2);
    agent.check().await.unwrap(); // the report of the refusal has gone out with this check at the latest
    assert!(!staged(&w, &v2), "a rejected package is not downloaded again");
    let record = w.registry().device(&device_key()).unwrap().unwrap();
    assert_eq!(record.refusals.len(), 1, "{record:?}");
    assert_eq!(record.refusals[0].rule, "max_risk");
    assert_eq!(record.policy, agent.state().policy, "the hub knows which policy the device enforces");
    assert_eq!(record.policy_site.as_deref(), Some("plant-7"));
    assert_eq!(record.active, Some(v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_window_defers_the_install_and_the_agent_installs_inside_it() {
    // NOW is 16:00 UTC; the window opens at 18:00.
    let w = World::new();
    let policy = "[[maintenance_windows]]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
                  start = \"18:00\"\nend = \"19:00\"\n";
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, policy).await;
    agent.check().await.unwrap();
    assert_eq!(active(&agent), None);
    assert!(!staged(&w, &v1));
    let deferral = agent.state().refused.first().cloned().expect("deferral recorded");
    assert_eq!(deferral.rule, "maintenance_windows");
    let until = deferral.until.expect("a deferral has a time");
    assert_eq!(until, support::NOW + 2 * 3600);

    later(&w, 3600);
    agent.check().await.unwrap();
    assert_eq!(active(&agent), None, "still outside the window");
    later(&w, 3600);
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v1), "installed inside the window");
    assert!(agent.state().refused.is_empty(), "the deferral is over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_differing_from_the_signed_metadata_is_rejected_after_download_and_never_fetched_again() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "allowed_licenses = [\"MIT\"]\n").await;
    // v1's metadata says Apache-2.0: rejected before download.
    agent.check().await.unwrap();
    assert_eq!(agent.state().refused[0].rule, "allowed_licenses");
    assert!(!staged(&w, &v1));

    // v2 is Apache-2.0 inside, but published with metadata claiming MIT: it passes before download, then the
    // verified manifest wins.
    later(&w, 2);
    let reg = w.registry();
    let m2 = AffineManifest::new("affine", "1.1.0", 3.0, 1.0);
    let model = outpost_shared::testkit::affine_model(m2.scale, m2.bias);
    let (model_path, toml_path) = (w.tmp.path().join("v2.onnx"), w.tmp.path().join("v2.toml"));
    std::fs::write(&model_path, model).unwrap();
    std::fs::write(&toml_path, m2.toml()).unwrap();
    let v2 = reg.add(&model_path, &toml_path).unwrap().digest;
    let (record, mut manifest) = (reg.record(&v2).unwrap().unwrap(), reg.manifest(&v2).unwrap().1);
    drop(reg);
    manifest.license = "MIT".into();
    w.publish_as(&record, &manifest, "stable");

    agent.check().await.unwrap();
    assert_eq!(active(&agent), None, "never activated");
    let refusal = agent.state().refused.iter().find(|r| r.digest == v2).cloned().expect("refused after download");
    assert_eq!(refusal.rule, "manifest");
    assert!(refusal.reason.contains("license"), "{}", refusal.reason);
    assert!(!staged(&w, &v2), "the refused download is deleted");

    later(&w, 2);
    agent.check().await.unwrap();
    assert!(!staged(&w, &v2), "and not downloaded again");
    assert_eq!(agent.state().phase, Phase::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_policy_file_is_refused_with_line_and_key_and_the_last_good_policy_stays() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "site = \"plant-7\"\nmax_risk = \"low\"\n").await;
    adopt(&mut agent).await;
    let good = agent.state().policy;
    assert!(good.is_some());

    std::fs::write(w.tmp.path().join("dev/site.toml"), "site = \"plant-7\"\nmax_risk = \"extreme\"\n").unwrap();
    later(&w, 2);
    let mut risky = AffineManifest::new("affine", "1.1.0", 3.0, 1.0);
    risky.risk_tier = "medium".into();
    let (v2, _) = w.add_and_publish(&risky, "stable");
    agent.check().await.unwrap();
    let error = agent.state().last_error.clone().unwrap_or_default();
    assert!(error.contains(":2:") && error.contains("max_risk"), "line and key named: {error}");
    assert_eq!(agent.state().policy, good, "the last good policy stays in force");
    assert_eq!(active(&agent), Some(v1));
    assert!(agent.state().refused.iter().any(|r| r.digest == v2 && r.rule == "max_risk"));

    // Across a restart too.
    drop(agent);
    let path = w.tmp.path().join("dev/agent.toml");
    let mut agent = Agent::open(AgentConfig::load(&path).unwrap(), w.clock.clone()).unwrap();
    assert_eq!(agent.state().policy, good);
    later(&w, 2);
    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_signer_is_checked_against_the_verified_role_signatures() {
    let w = World::new();
    let key_path = w.tmp.path().join("offline/targets-1.key");
    let signer = outpost_hub::tuf::key_id(&outpost_hub::tuf::Key::load(&key_path).unwrap().public_bytes());
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    // A site requiring a key that never signed refuses the release...
    let mut agent = device(&w, &format!("required_signers = [\"{signer}\", \"{}\"]\n", "ab".repeat(32))).await;
    agent.check().await.unwrap();
    let refusal = agent.state().refused.first().cloned().expect("refused");
    assert_eq!(refusal.rule, "required_signers");
    assert!(refusal.reason.contains(&"ab".repeat(32)) && !refusal.reason.contains(&signer), "{}", refusal.reason);
    // ...and one requiring the key that did sign accepts it.
    std::fs::write(w.tmp.path().join("dev/site.toml"), format!("required_signers = [\"{signer}\"]\n")).unwrap();
    later(&w, 2);
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v1));
}
