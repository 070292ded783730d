//! A staged rollout driven by the hub over real agents on real QUIC: the release's package fails its health
//! window on the canary cohort, the hub aborts by itself, the director sends every device of the release back
//! to the last good package, and the hub measures the rollback recovery time. Devices outside the cohort never
//! see the package. Runs on the system clock, so the recovery time printed is measured. Also how long the serving
//! hub sleeps between judgements (until the earliest soak end, within its bound).

mod support;

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_attestation::identity::Identity;
use outpost_hub::backend::HubBackend;
use outpost_hub::rollouts;
use outpost_hub::tuf::TufRepo;
use outpost_net::server::{ServeConfig, Server};
use outpost_shared::Digest;
use outpost_shared::clock::Clock;
use outpost_shared::manifest::RiskTier;
use outpost_shared::rollout::{Plan, Release, State, bucket};
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use support::{Wall, World, active};

const HEALTH: u32 = 2;

const PLAN: &str = r#"
name = "canary-then-all"
[[stage]]
name = "canary"
cohort_percent = 50
min_devices = 1
soak_secs = 0
success_percent = 100
error_percent = 0
[[stage]]
name = "all"
cohort_percent = 100
min_devices = 1
soak_secs = 0
success_percent = 100
error_percent = 0
"#;

/// The hub on the system clock, serving on loopback.
fn hub(w: &World) -> (std::net::SocketAddr, Arc<HubBackend>) {
    let backend =
        Arc::new(HubBackend::new(&w.dir, TufRepo::new(&w.dir, Default::default()), Arc::new(Wall) as Arc<dyn Clock>));
    let mut serve = ServeConfig::new(Identity::from_seed([1; 32]));
    serve.bind = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(serve, backend.clone()).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    (addr, backend)
}

async fn device(w: &World, addr: std::net::SocketAddr, seed: u8) -> Agent {
    device_serving(w, addr, seed, Arc::new(outpost_agent::inference::ModelHandle::new())).await
}

/// Like [`device`], activating models into `models` (the handle an inference API serves from).
async fn device_serving(
    w: &World,
    addr: std::net::SocketAddr,
    seed: u8,
    models: Arc<outpost_agent::inference::ModelHandle>,
) -> Agent {
    let dir = w.tmp.path().join(format!("dev{seed}"));
    let key = init_device(&dir, &w.root(), [seed; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let hub_key = Identity::from_seed([1; 32]).public_key().to_hex();
    let text = config::render(&addr.to_string(), &hub_key)
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"));
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open_with(AgentConfig::parse(&text, &path).unwrap(), Arc::new(Wall), models).unwrap()
}

/// v1 published, and device `seed` running it, confirmed.
async fn on_v1(w: &World, addr: std::net::SocketAddr, seed: u8) -> (Digest, Agent) {
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut a = device(w, addr, seed).await;
    a.check().await.unwrap();
    for _ in 0..HEALTH {
        a.record_inference(true).unwrap();
    }
    (v1, a)
}

fn key(seed: u8) -> String {
    Identity::from_seed([seed; 32]).public_key().to_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_failing_health_on_the_canary_aborts_by_itself_and_the_cohort_returns_to_the_last_good_package() {
    let w = World::on_wall_clock();
    // Two devices that hash into the canary half for release r1, two that do not.
    let (mut canary, mut rest) = (Vec::new(), Vec::new());
    for seed in 10u8..60 {
        let in_canary = bucket("r1", &key(seed)) < 5000;
        match (in_canary, canary.len(), rest.len()) {
            (true, n, _) if n < 2 => canary.push(seed),
            (false, _, n) if n < 2 => rest.push(seed),
            _ => {}
        }
    }
    assert_eq!((canary.len(), rest.len()), (2, 2));

    let (addr, backend) = hub(&w);

    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut devices = Vec::new();
    for &seed in canary.iter().chain(&rest) {
        let mut a = device(&w, addr, seed).await;
        a.check().await.unwrap();
        for _ in 0..HEALTH {
            a.record_inference(true).unwrap();
        }
        a.check().await.unwrap(); // reports the confirmation
        assert_eq!(active(&a), Some(v1));
        devices.push((seed, a));
    }

    // v2 is published, but only under a staged rollout.
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    tokio::time::sleep(outpost_hub::backend::METADATA_FRESH * 2).await; // the hub's metadata cache moves on
    let reg = w.registry();
    let release = Release { id: String::new(), package: v2, last_good: Some(v1), risk: RiskTier::Low, signers: vec![] };
    let plan = Plan::from_toml(PLAN, std::path::Path::new("plan.toml")).unwrap();
    let (id, _) = rollouts::start(&reg, release, "affine@1.1.0", plan, "stable", Wall.wall()).unwrap();
    drop(reg);
    assert_eq!(id, "r1");

    for (seed, a) in &mut devices {
        a.check().await.unwrap();
        if canary.contains(seed) {
            assert!(matches!(a.state().phase, Phase::Health { .. }), "canary device {seed} tries v2");
        } else {
            assert_eq!(active(a), Some(v1), "device {seed} outside the canary never sees v2");
        }
    }
    // The first canary device fails on real traffic and rolls back by itself; its report makes the hub abort.
    let (_, first) = &mut devices[0];
    first.record_inference(false).unwrap();
    assert_eq!(active(first), Some(v1));
    first.check().await.unwrap();
    let status = rollouts::get(&w.registry(), &id).unwrap().rollout.status();
    assert!(matches!(status.state, State::Aborted { .. }), "{status:?}");
    let aborted = Wall.monotonic();

    // The other canary device still runs v2: the director sends it back; it downloads v1 again, checks it
    // and confirms it on traffic, and reports. The hub measures from the abort decision.
    let (_, second) = &mut devices[1];
    assert_eq!(active(second), Some(v2));
    second.check().await.unwrap();
    for _ in 0..HEALTH {
        second.record_inference(true).unwrap();
    }
    second.check().await.unwrap();
    assert_eq!(active(second), Some(v1));
    for (seed, a) in &mut devices[2..] {
        a.check().await.unwrap();
        assert_eq!(active(a), Some(v1), "device {seed}");
    }

    let record = rollouts::get(&w.registry(), &id).unwrap();
    let recovery = record.rollout.status().recovery.expect("a rollback is under way");
    assert_eq!((recovery.affected, recovery.recovered), (2, 2));
    let took = record.rollout.recovery_time().expect("recovered");
    let seen = Wall.monotonic() - aborted;
    println!(
        "rollback recovery time (abort decision -> 95% of the cohort reporting the last good package): hub {} s \
         (whole seconds), measured here {} ms",
        took.as_secs(),
        seen.as_millis()
    );
    let cohort = record.rollout.status().cohort;
    assert_eq!((cohort.rolled_back, cohort.errors()), (1, 1));

    // The release's telemetry is attributed to it, stage by stage: the canary's rollback is there.
    let store = outpost_hub::telemetry::TelemetryStore::open(&w.dir, Arc::new(Wall)).unwrap();
    let filter = outpost_hub::telemetry::Filter { release: Some(id.clone()), ..Default::default() };
    let stages = store.aggregate(outpost_hub::telemetry::GroupBy::Stage, &filter).unwrap();
    assert!(stages.iter().any(|g| g.key == "0" && g.summary.rollbacks == 1), "{stages:?}");
    drop(store);

    // The same figures on the hub's Prometheus endpoint.
    let metrics = backend.metrics().unwrap();
    let rolled_back = "outpost_hub_release_devices{release=\"r1\",package=\"affine@1.1.0\",outcome=\"rolled_back\"} 1";
    assert!(metrics.contains(rolled_back), "{metrics}");
    assert!(metrics.contains("outpost_hub_release_recovery_seconds{release=\"r1\"}"), "{metrics}");
    let all_on_v1 = format!("outpost_hub_devices{{status=\"approved\",site=\"-\",package=\"{}\"}} 4", v1.short());
    assert!(metrics.contains(&all_on_v1), "{metrics}");
}

const SHADOW_PLAN: &str = r#"
name = "shadow-then-all"
[shadow]
cohort_percent = 100
min_devices = 1
soak_secs = 0
min_agreement_percent = 90
[[stage]]
name = "all"
cohort_percent = 100
min_devices = 1
soak_secs = 0
success_percent = 100
error_percent = 0
"#;

/// One OIP v2 request for the affine test model; returns the served model version.
async fn infer(addr: std::net::SocketAddr) -> String {
    let raw = post_affine(addr, "1").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let at = raw.find("\"model_version\":\"").unwrap() + 17;
    raw[at..].split('"').next().unwrap().to_owned()
}

/// One OIP v2 request for the affine test model, `x = [first, 2, 3, 4]` (`first` as JSON text); returns the
/// whole HTTP response.
async fn post_affine(addr: std::net::SocketAddr, first: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(r#"{{"inputs":[{{"name":"x","shape":[1,4],"datatype":"FP32","data":[{first},2,3,4]}}]}}"#);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_stage_runs_the_release_beside_the_active_model_and_its_agreement_opens_the_next_stage() {
    use outpost_agent::inference::{ModelHandle, ServeLimits, serve};
    let w = World::on_wall_clock();
    let (addr, _) = hub(&w);

    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [21; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let hub_key = Identity::from_seed([1; 32]).public_key().to_hex();
    let text = config::render(&addr.to_string(), &hub_key)
        .replace("health_inferences = 20", "health_inferences = 1")
        .replace("shadow_percent = 10", "shadow_percent = 100");
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let models = Arc::new(ModelHandle::with_observer(Arc::new(Wall), |_, _, _| {}));
    let mut agent =
        Agent::open_with(AgentConfig::parse(&text, &path).unwrap(), Arc::new(Wall), models.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, models.clone(), ServeLimits::default(), None, std::future::pending()));
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    assert_eq!(active(&agent), Some(v1));

    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    tokio::time::sleep(outpost_hub::backend::METADATA_FRESH * 2).await;
    let release = Release { id: String::new(), package: v2, last_good: Some(v1), risk: RiskTier::Low, signers: vec![] };
    let plan = Plan::from_toml(SHADOW_PLAN, std::path::Path::new("plan.toml")).unwrap();
    let (id, _) = rollouts::start(&w.registry(), release, "affine@1.1.0", plan, "stable", Wall.wall()).unwrap();

    agent.check().await.unwrap();
    assert_eq!(models.shadow(), Some(v2), "v2 runs in shadow");
    assert_eq!(active(&agent), Some(v1), "and v1 still serves");
    for _ in 0..3 {
        assert_eq!(infer(api).await, "1.0.0", "the shadow never answers");
        tokio::time::sleep(Duration::from_millis(50)).await; // let the shadow run (one at a time)
    }
    agent.check().await.unwrap(); // reports 3 of 3 answers agreeing on top-1
    let status = rollouts::get(&w.registry(), &id).unwrap().rollout.status();
    assert_eq!(status.shadow_agreement, (3, 3), "{status:?}");
    assert_eq!(status.position, outpost_shared::rollout::Position::Stage(0), "the gate opened the next stage");

    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v2), "v2 serves now");
    assert_eq!(infer(api).await, "1.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_failed_lets_the_device_that_rolled_back_try_again_once() {
    let w = World::on_wall_clock();
    let (addr, _) = hub(&w);

    let (v1, mut a) = on_v1(&w, addr, 33).await;
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    tokio::time::sleep(outpost_hub::backend::METADATA_FRESH * 2).await;
    // A second device on the channel, still without an outcome: the stage waits for two before judging.
    let _quiet = device(&w, addr, 34).await;
    let plan = Plan::from_toml(PLAN, std::path::Path::new("plan.toml")).unwrap();
    let release = Release { id: String::new(), package: v2, last_good: Some(v1), risk: RiskTier::Low, signers: vec![] };
    let mut plan = Plan { stage: vec![plan.stage[1].clone()], ..plan };
    plan.stage[0].min_devices = 2;
    let (id, _) = rollouts::start(&w.registry(), release, "affine@1.1.0", plan, "stable", Wall.wall()).unwrap();

    a.check().await.unwrap();
    a.record_inference(false).unwrap(); // rolls back to v1
    a.check().await.unwrap(); // reports it
    a.check().await.unwrap();
    assert_eq!(active(&a), Some(v1), "not reinstalled without an operator");
    let effects =
        rollouts::command(&w.registry(), &id, outpost_shared::rollout::Command::RetryFailed, Wall.wall()).unwrap();
    assert!(effects.iter().any(|e| matches!(e, outpost_shared::rollout::Effect::Retry { .. })), "{effects:?}");
    a.check().await.unwrap();
    assert!(matches!(a.state().phase, Phase::Health { .. }), "tried again: {:?}", a.state().phase);
    a.record_inference(false).unwrap(); // fails again
    a.check().await.unwrap();
    a.check().await.unwrap();
    assert_eq!(active(&a), Some(v1), "one retry, one attempt: no loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_excluding_the_software_tier_keeps_software_only_devices_off_the_release() {
    let w = World::on_wall_clock();
    let (addr, _) = hub(&w);
    let (v1, mut a) = on_v1(&w, addr, 44).await;
    // Another device of the channel is enrolled with a TPM (hardware tier); this one is software only.
    let tpm = outpost_hub::registry::TpmRecord { ak: "04".repeat(65), pcrs: 1 << 16, values: vec![Digest::of(b"pcr")] };
    let hardware = key(45);
    w.registry().device_approve(&hardware, "stable").unwrap();
    w.registry().device_set_tpm(&hardware, Some(tpm)).unwrap();

    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    tokio::time::sleep(outpost_hub::backend::METADATA_FRESH * 2).await;
    let text = PLAN.replace("name = \"canary-then-all\"", "name = \"tpm-only\"\nexclude_software_tier = true");
    let plan = Plan::from_toml(&text, std::path::Path::new("plan.toml")).unwrap();
    assert!(plan.exclude_software_tier);
    let release = Release {
        id: String::new(),
        package: v2,
        last_good: Some(v1),
        risk: RiskTier::High,
        signers: vec!["a".into(), "b".into()],
    };
    let (id, _) = rollouts::start(&w.registry(), release, "affine@1.1.0", plan, "stable", Wall.wall()).unwrap();
    let rollout = rollouts::get(&w.registry(), &id).unwrap().rollout;
    assert!(rollout.devices.contains_key(&hardware), "the hardware-tier device takes part");
    assert!(!rollout.devices.contains_key(&key(44)), "the software-only device does not");
    a.check().await.unwrap();
    assert_eq!(active(&a), Some(v1), "and never sees the package");
    assert!(!rollouts::get(&w.registry(), &id).unwrap().rollout.devices.contains_key(&key(44)), "nor joins it later");
}

#[test]
fn serving_hub_sleeps_until_the_earliest_soak_end_and_never_past_its_bound() {
    let w = World::on_wall_clock();
    let now = Wall.wall();
    let reg = w.registry();
    assert_eq!(rollouts::wait_after_tick(&reg, now).unwrap(), rollouts::MAX_TICK_WAIT, "no release: the bound");
    let plan = Plan::from_toml(&PLAN.replace("soak_secs = 0", "soak_secs = 600"), std::path::Path::new("p")).unwrap();
    let (v1, v2) = (Digest::of(b"v1"), Digest::of(b"v2"));
    let release = Release { id: String::new(), package: v2, last_good: Some(v1), risk: RiskTier::Low, signers: vec![] };
    rollouts::start(&reg, release, "affine@1.1.0", plan, "stable", now).unwrap();
    assert_eq!(rollouts::next_deadline(&reg, now).unwrap(), Some(now + 600), "the canary's soak end");
    assert_eq!(rollouts::wait_after_tick(&reg, now).unwrap(), rollouts::MAX_TICK_WAIT, "600 s away: the bound");
    assert_eq!(rollouts::wait_after_tick(&reg, now + 597).unwrap(), Duration::from_secs(3), "3 s away: 3 s");
}

/// One request with a non-finite input used to roll a good release back: its non-finite output counted as the
/// model's failure in the health window (and toward the rollout's error threshold). A contract may now allow
/// non-finite values on an input; such a request is served, and the answer it causes is the caller's doing: the
/// update loop never hears of it, and the release is confirmed by the good inferences around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_input_to_a_model_whose_contract_allows_it_is_served_and_never_rolls_back() {
    use outpost_agent::inference::{ModelHandle, ServeLimits, serve};
    let w = World::on_wall_clock();
    let (addr, _) = hub(&w);
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0).allowing_non_finite(), "stable");
    let (models, mut outcomes) = ModelHandle::with_outcomes(Arc::new(Wall), 16);
    let models = Arc::new(models);
    let mut agent = device_serving(&w, addr, 23, models.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, models.clone(), ServeLimits::default(), None, std::future::pending()));
    agent.check().await.unwrap();
    assert!(matches!(agent.state().phase, Phase::Health { .. }), "v1 on trial");

    // 1e300 is infinity as FP32: the model answers infinity, served as JSON null.
    let answer = post_affine(api, "1e300").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"data\":[null,5.0,7.0,9.0]"), "{answer}");
    // Good traffic after it: the first outcome the loop hears of is the good one.
    for _ in 0..HEALTH {
        assert!(post_affine(api, "0").await.starts_with("HTTP/1.1 200"));
        let outcome = outcomes.recv().await.unwrap();
        assert_eq!((outcome.model, outcome.ok), (v1, true), "the non-finite answer never reached the loop");
        agent.record_outcome(outcome).unwrap();
    }
    assert_eq!(agent.state().phase, Phase::Idle, "confirmed");
    assert_eq!(active(&agent), Some(v1));
    assert!(agent.state().rolled_back.is_empty(), "{:?}", agent.state().rolled_back);
}
