//! A real `outpost-agent run` whose disk fills up (the faultfs LD_PRELOAD shim on its staging area, model slots and
//! telemetry queue): the update fails with an error naming what could not be written, the device keeps serving
//! its model, nothing already committed is lost, and the same process finishes the update once space returns.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outpost_agent::device::{self, Layout};
use outpost_agent::driver::init_device;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use outpost_shared::{Digest, Manifest, package};
use support::World;
use support::faultfs::Fault;

#[allow(clippy::disallowed_methods)] // Deadlines and timings of a real process.
fn instant_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn settled_on(layout: &Layout, target: &Digest) -> bool {
    device::load_state(layout)
        .unwrap()
        .is_some_and(|s| s.phase == Phase::Idle && s.active.as_ref().is_some_and(|a| a.target.digest == *target))
}

/// Waits until `done`; past `secs` it fails, showing the agent's log.
fn wait_for(what: &str, secs: u64, log: &std::path::Path, mut done: impl FnMut() -> bool) -> Duration {
    let start = instant_now();
    while !done() {
        let shown = || std::fs::read_to_string(log).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(secs), "{what} within {secs} s; the agent's log:\n{}", shown());
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn stop(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A runtime and a world on the wall clock whose agent binary may run.
fn world() -> (tokio::runtime::Runtime, World) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let w = World::on_wall_clock();
    w.allow_agent_binary();
    (rt, w)
}

/// Publishes affine 1.`minor`.0 on stable, its model padded with `padding` floats, a second after the last one.
fn publish(w: &World, minor: usize, padding: usize) -> Digest {
    w.clock.advance(Duration::from_secs(1));
    let m = AffineManifest::new("affine", &format!("1.{minor}.0"), 2.0 + minor as f32, 1.0);
    w.add_and_publish_sized(&m, "stable", padding).0
}

#[test]
fn a_full_disk_fails_the_update_and_telemetry_clearly_and_the_agent_recovers_when_space_returns() {
    let (rt, w) = world();
    let publish = |minor: usize| publish(&w, minor, 1 << 18);
    let first = publish(0);
    let (addr, hub_key) = rt.block_on(w.serve());
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [9; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = support::process_config(addr, &hub_key, 1);
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, &text).unwrap();
    let layout = Layout::new(&dir);

    std::fs::create_dir_all(dir.join("staging")).unwrap();
    std::fs::create_dir_all(dir.join("slots")).unwrap();
    let spawn = |fault: &Fault, log: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-agent"));
        cmd.args(["run", "--config", config_path.to_str().unwrap()]);
        fault.apply(&mut cmd).stdout(Stdio::null()).stderr(std::fs::File::create(log).unwrap()).spawn().unwrap()
    };
    let mut current = first;
    // Round 1: the staging area (the download) and the telemetry queue are on the disk that fills up. Round 2: the
    // model slots (unpacking the verified download) are.
    let rounds = [
        ("staging and telemetry queue", vec![dir.join("staging"), dir.join("telemetry.redb")]),
        ("model slots", vec![dir.join("slots")]),
    ];
    for (round, (what, paths)) in rounds.iter().enumerate() {
        let log = w.tmp.path().join(format!("agent-{round}.log"));
        let fault = paths[1..].iter().fold(Fault::disk_full(&paths[0], w.tmp.path()), |f, p| f.and(p)).disarmed();
        let child = spawn(&fault, &log);
        wait_for("the agent settles", 60, &log, || settled_on(&layout, &current));

        // The disk is full when the next release arrives.
        fault.arm();
        let next = publish(round + 1);
        let full_logged = || {
            let text = std::fs::read_to_string(&log).unwrap();
            // The device directory shows as `DIR/./staging` in the agent's messages.
            let name = format!("/{}", paths[0].file_name().unwrap().to_str().unwrap());
            text.lines().any(|l| l.contains("No space left on device") && l.contains(&name))
        };
        let noticed = wait_for("the agent says what it could not write", 60, &log, full_logged);
        std::thread::sleep(Duration::from_secs(3)); // a few more checks against the full disk
        let failed = fault.injected().len();
        assert!(failed > 0, "the fault fired");
        let state = device::load_state(&layout).unwrap().unwrap();
        let active = state.active.as_ref().expect("still a model");
        assert_eq!(active.target.digest, current, "{what}: it keeps the model it had");
        let slot = device::primary_slot(&layout, active.slot).unwrap();
        let manifest_cbor = std::fs::read(slot.join("manifest.cbor")).unwrap();
        Manifest::from_cbor(&manifest_cbor).unwrap();
        let whole = package::digest_of_parts(&manifest_cbor, &std::fs::read(slot.join("model.onnx")).unwrap());
        assert_eq!(whole, current, "{what}: its slot is whole");

        // Space returns: the same process finishes the update.
        fault.lift();
        let recovery = wait_for("the update once space returns", 60, &log, || settled_on(&layout, &next));
        stop(child);
        eprintln!(
            "disk fault on {what}: noticed in {} ms, {failed} calls failed, update done {} ms after space returned",
            noticed.as_millis(),
            recovery.as_millis()
        );
        if round == 0 {
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(
                text.contains("telemetry event lost") && text.contains("telemetry.redb"),
                "the queue says so too:\n{text}"
            );
        }
        current = next;
    }
    let streams = outpost_hub::telemetry::TelemetryStore::open(&w.dir, w.clock.clone()).unwrap().streams().unwrap();
    let ours: Vec<_> = streams.iter().filter(|s| s.device == key).collect();
    assert_eq!(ours.len(), 1, "one queue, reopened rather than recreated: {ours:?}");
    assert_eq!(ours[0].record.missing(), 0, "no committed event was lost: {ours:?}");
}

/// The disk fills up under the agent's own state file just as a health window ends: the agent cannot record the
/// confirmation, so it keeps what it last saved and keeps serving (it used to exit on the first failed save), says
/// so once, and confirms the release once space returns.
#[test]
fn a_state_file_that_cannot_be_saved_does_not_stop_the_agent() {
    let (rt, w) = world();
    let publish = |minor: usize| publish(&w, minor, 16);
    let first = publish(0);
    let (addr, hub_key) = rt.block_on(w.serve());
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [9; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, support::process_config(addr, &hub_key, 3)).unwrap();
    let layout = Layout::new(&dir);
    let log = w.tmp.path().join("agent.log");
    // `write_atomic` writes the state beside it, then renames it over.
    let fault = Fault::disk_full(&dir.join(".state.json.tmp"), w.tmp.path()).disarmed();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outpost-agent"));
    cmd.args(["run", "--config", config_path.to_str().unwrap()]);
    let mut child =
        fault.apply(&mut cmd).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
    wait_for("the agent settles", 60, &log, || settled_on(&layout, &first));

    let next = publish(1);
    let on_trial = || {
        device::load_state(&layout)
            .unwrap()
            .is_some_and(|s| matches!(&s.phase, Phase::Health { target, .. } if target.digest == next))
    };
    wait_for("the next release on trial", 60, &log, on_trial);
    fault.arm();
    std::thread::sleep(Duration::from_secs(6)); // the 3 s window ends, and the agent tries to save a few times
    assert!(child.try_wait().unwrap().is_none(), "the agent still runs:\n{}", std::fs::read_to_string(&log).unwrap());
    assert!(!fault.injected().is_empty(), "the fault fired");
    assert!(on_trial(), "what it last saved stands");

    fault.lift();
    let saved_again = || std::fs::read_to_string(&log).unwrap().contains("saves its state again");
    wait_for("the release confirmed once space returns", 60, &log, || settled_on(&layout, &next) && saved_again());
    stop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    let said = |what: &str| text.lines().filter(|l| l.contains(what)).count();
    assert_eq!(said("cannot save its state"), 1, "said once:\n{text}");
    assert_eq!(said("saves its state again"), 1, "and once when it works again:\n{text}");
}
