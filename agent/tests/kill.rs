//! `kill -9` of a real `outpost-agent run` process at many moments — mid-download, mid-staging, around the
//! switch, inside the health window — while new releases keep arriving: after every kill, a restart finds the
//! device serving a verified model (its slot rebuilds the exact package TUF listed).

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::device::{self, Layout};
use outpost_agent::driver::init_device;
use outpost_shared::clock::Clock;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::{Digest, Manifest, package};
use support::World;

#[allow(clippy::disallowed_methods)] // The agent process reads the real clock; the hub's metadata must agree.
fn real_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The package a slot holds, rebuilt from its files.
fn slot_digest(layout: &Layout, slot: outpost_shared::update::Slot) -> Digest {
    let dir = layout.slot(slot);
    let manifest_cbor = std::fs::read(dir.join("manifest.cbor")).unwrap();
    Manifest::from_cbor(&manifest_cbor).unwrap();
    package::digest_of_parts(&manifest_cbor, &std::fs::read(dir.join("model.onnx")).unwrap())
}

#[test]
fn kill_9_at_many_points_leaves_the_device_serving_a_verified_model() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let w = World::at(real_now());
    // ~4 MiB packages, so downloads and staging take long enough to be interrupted.
    let padding = 1 << 20;
    let mut published =
        vec![w.add_and_publish_sized(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable", padding).0];
    let (addr, hub_key) = rt.block_on(w.serve());

    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [9; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = config::render(&addr.to_string(), &hub_key.to_hex())
        .replace("poll_secs = 60", "poll_secs = 1")
        .replace("jitter_secs = 10", "jitter_secs = 0")
        .replace("health_secs = 300", "health_secs = 1")
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, &text).unwrap();
    let layout = Layout::new(&dir);

    let run = || {
        Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config", config_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    for i in 0..16u64 {
        if i % 4 == 3 {
            let version = format!("1.{}.0", i / 4 + 1);
            let m = AffineManifest::new("affine", &version, 2.0 + i as f32, 1.0);
            w.clock.advance(Duration::from_secs(1));
            published.push(w.add_and_publish_sized(&m, "stable", padding).0);
        }
        let mut child = run();
        std::thread::sleep(Duration::from_millis(150 + (i * 389) % 1700));
        child.kill().unwrap(); // SIGKILL: no shutdown code runs
        child.wait().unwrap();
        if let Some(state) = device::load_state(&layout).unwrap()
            && let Some(active) = &state.active
        {
            assert!(published.contains(&active.target.digest), "only published packages are ever active");
            assert_eq!(
                slot_digest(&layout, active.slot),
                active.target.digest,
                "after kill {i}: the active slot is whole"
            );
        }
    }

    // A final run settles: whatever was interrupted is resumed, rolled back or completed, and a verified model serves.
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["run", "--config", config_path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("final.log")).unwrap())
        .spawn()
        .unwrap();
    let mut settled = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let state = device::load_state(&layout).unwrap().unwrap();
        if let (Some(active), outpost_shared::update::Phase::Idle) = (&state.active, &state.phase) {
            settled = Some(active.clone());
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let active = settled.unwrap_or_else(|| panic!("the agent settles on a model: {:?}", device::load_state(&layout)));
    assert!(published.contains(&active.target.digest));
    assert_eq!(slot_digest(&layout, active.slot), active.target.digest);
    let config = AgentConfig::parse(&text, &config_path).unwrap();
    let agent = outpost_agent::driver::Agent::open(config, Arc::new(RealClock)).unwrap();
    assert_eq!(agent.active().map(|a| *a.digest()), Some(active.target.digest), "it loads and serves after restart");
}

struct RealClock;

#[allow(clippy::disallowed_methods)]
impl Clock for RealClock {
    fn wall(&self) -> u64 {
        real_now()
    }
    fn monotonic(&self) -> Duration {
        Duration::ZERO
    }
}
