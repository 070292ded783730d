//! `kill -9` of a real `outpost-agent run` process at each update stage — mid-download, mid-unpack, around the
//! switch, inside the health window — four times each, a new release every time: after every kill, a restart
//! finds the device serving a verified model (its slot rebuilds the exact package TUF listed).

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::AgentConfig;
use outpost_agent::device::{self, Layout};
use outpost_agent::driver::init_device;
use outpost_hub::blobs::BlobStore;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use outpost_shared::{Digest, Manifest, package};
use support::World;

#[allow(clippy::disallowed_methods)] // Deadlines for a real process.
fn instant_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// The package a slot holds, rebuilt from its files.
fn slot_digest(layout: &Layout, slot: outpost_shared::update::Slot) -> Digest {
    let dir = device::primary_slot(layout, slot).unwrap();
    let manifest_cbor = std::fs::read(dir.join("manifest.cbor")).unwrap();
    Manifest::from_cbor(&manifest_cbor).unwrap();
    package::digest_of_parts(&manifest_cbor, &std::fs::read(dir.join("model.onnx")).unwrap())
}

/// Where an update stands, as read from the device's disk while the agent works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stage {
    /// Part of the package is in the staging file.
    Download,
    /// The package is verified; the inactive slot is being written.
    Unpack,
    /// The slot is written; the model loads, runs its smoke test and the state switches to it.
    Switch,
    /// The new model serves and must stay healthy to be confirmed.
    Health,
}

fn stage_of(layout: &Layout, target: &Digest, full_len: u64) -> Option<Stage> {
    let state = device::load_state(layout).ok()??;
    match &state.phase {
        Phase::Downloading { target: t } if t.digest == *target => {
            let have = std::fs::metadata(layout.staging(target)).map(|m| m.len()).unwrap_or(0);
            (have > 0 && have < full_len).then_some(Stage::Download)
        }
        Phase::Staging { target: t, slot } if t.digest == *target => {
            let written =
                std::fs::read_to_string(device::primary_slot(layout, *slot).ok()?.join("digest")).unwrap_or_default();
            Some(if written == target.to_hex() { Stage::Switch } else { Stage::Unpack })
        }
        Phase::Health { target: t, .. } if t.digest == *target => Some(Stage::Health),
        _ => None,
    }
}

/// After a kill: only published packages are ever active, the active slot holds exactly that package, and a
/// restarted agent (its recovery on start included) serves a verified model.
fn assert_restart_serves_a_verified_model(layout: &Layout, config: &AgentConfig, published: &[Digest], what: &str) {
    let agent = outpost_agent::driver::Agent::open(config.clone(), Arc::new(support::Wall)).unwrap();
    let state = device::load_state(layout).unwrap().unwrap();
    let active = state.active.as_ref().unwrap_or_else(|| panic!("{what}: a model is active after restart"));
    assert!(published.contains(&active.target.digest), "{what}: only published packages are ever active");
    assert_eq!(slot_digest(layout, active.slot), active.target.digest, "{what}: the active slot is whole");
    assert_eq!(agent.active().map(|a| *a.digest()), Some(active.target.digest), "{what}: and it serves");
}

#[test]
fn kill_9_at_every_update_stage_leaves_the_device_serving_a_verified_model() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let w = World::on_wall_clock();
    w.allow_agent_binary();
    // ~16 MiB packages, so that downloading and unpacking last long enough to be interrupted.
    let padding = 4 << 20;
    let publish = |minor: usize| {
        w.clock.advance(Duration::from_secs(1));
        let m = AffineManifest::new("affine", &format!("1.{minor}.0"), 2.0 + minor as f32, 1.0);
        w.add_and_publish_sized(&m, "stable", padding).0
    };
    let mut published = vec![publish(0)];
    let (addr, hub_key) = rt.block_on(w.serve());

    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [9; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = support::process_config(addr, &hub_key, 2);
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = AgentConfig::parse(&text, &config_path).unwrap();
    let layout = Layout::new(&dir);
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config", config_path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let settle = |what: &str| {
        let mut child = run();
        let deadline = instant_now() + Duration::from_secs(60);
        loop {
            let state = device::load_state(&layout).unwrap();
            if let Some(s) = &state
                && s.phase == Phase::Idle
                && s.active.is_some()
            {
                break;
            }
            assert!(instant_now() < deadline, "{what}: the agent settles on a model: {state:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    };
    settle("first install");

    // Four rounds over the four stages; each attempt brings a new release and kills the agent once it has
    // reached the stage aimed at (a little later, at a varying offset, where the stage lasts longer).
    let stages = [Stage::Download, Stage::Unpack, Stage::Switch, Stage::Health];
    let mut hits: HashMap<Stage, usize> = HashMap::new();
    let mut log = Vec::new();
    for attempt in 0..16usize {
        let aim = stages[attempt % stages.len()];
        let target = publish(attempt + 1);
        published.push(target);
        let full_len = std::fs::metadata(BlobStore::new(w.dir.join("blobs")).path_of(&target)).unwrap().len();
        let mut child = run();
        let deadline = instant_now() + Duration::from_secs(30);
        let reached = loop {
            if let Some(stage) = stage_of(&layout, &target, full_len)
                && stage >= aim
            {
                break Some(stage);
            }
            let done = device::load_state(&layout).unwrap().is_some_and(|s| {
                s.phase == Phase::Idle && s.active.as_ref().is_some_and(|a| a.target.digest == target)
            });
            if done || instant_now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_micros(500));
        };
        let offset_ms = match reached {
            Some(Stage::Switch) => (attempt as u64 * 7) % 20,
            Some(Stage::Health) => (attempt as u64 * 89) % 1500,
            _ => 0,
        };
        std::thread::sleep(Duration::from_millis(offset_ms));
        child.kill().unwrap(); // SIGKILL: no shutdown code runs
        child.wait().unwrap();
        log.push(format!("attempt {attempt}: aimed at {aim:?}, killed at {reached:?} +{offset_ms} ms"));
        if let Some(stage) = reached {
            *hits.entry(stage).or_default() += 1;
        }
        assert_restart_serves_a_verified_model(&layout, &config, &published, &log[log.len() - 1]);
    }
    eprintln!("{}", log.join("\n"));
    for stage in stages {
        assert!(hits.get(&stage).copied().unwrap_or(0) >= 3, "stage {stage:?} was hit fewer than three times:\n{}", {
            log.join("\n")
        });
    }

    // A final run settles: whatever was interrupted is resumed, rolled back or completed.
    settle("after the last kill");
    assert_restart_serves_a_verified_model(&layout, &config, &published, "final");
}
