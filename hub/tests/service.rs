//! The hub as one process owning its state: a service started in-process on a temporary hub takes admin commands
//! from the real `outpost-hub` binary over its socket and serves their effect on the very next request, without
//! opening its store again; the socket is owner-only, taken by one service at a time, and survives bad requests.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use outpost_attestation::identity::Identity;
use outpost_hub::admin::{self, ListenError, RequestError, Response};
use outpost_hub::clock::{SystemClock, SystemRng};
use outpost_hub::config::{CONFIG_FILE, HubConfig};
use outpost_hub::director::Director;
use outpost_hub::service::{self, Running, ServiceConfig, ServiceError};
use outpost_net::server::Backend;
use outpost_shared::testkit::AffineManifest;
use support::{ServeProcess, TestHub, stderr, stdout};

// The CLI's own command handlers, so the in-process service runs exactly what `outpost-hub serve` runs.
#[allow(dead_code, unused_imports)]
#[path = "../src/cli/mod.rs"]
mod cli;

/// A hub with keys and one package, and a service started on it (not yet running).
struct Served {
    hub: TestHub,
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    backend: Arc<outpost_hub::backend::HubBackend>,
}

fn config(hub: &TestHub) -> ServiceConfig {
    let hub_config = HubConfig::load(&hub.dir().join(CONFIG_FILE)).unwrap();
    let mut config = ServiceConfig::new(&hub.dir(), hub_config, Identity::from_seed([1; 32]));
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.admin = Some(Arc::new(cli::Commands));
    config
}

fn start(runtime: &tokio::runtime::Runtime, hub: &TestHub) -> Result<Running, ServiceError> {
    runtime.block_on(service::start(config(hub), Arc::new(SystemClock), Box::new(SystemRng)))
}

#[test]
fn a_stalled_admin_client_is_timed_out_and_the_service_keeps_serving() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    assert!(hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]).status.success());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = config(&hub);
    config.admin_limits.request_timeout = std::time::Duration::from_millis(200);
    let limits = config.admin_limits;
    let running = runtime.block_on(service::start(config, Arc::new(SystemClock), Box::new(SystemRng))).unwrap();
    let done = runtime.spawn(running.run(std::future::pending()));
    let mut stalled = std::os::unix::net::UnixStream::connect(admin::socket_path(&hub.dir())).unwrap();
    stalled.write_all(&[0, 0, 0, 64, b'{']).unwrap(); // promises 64 bytes, sends one
    assert_eq!(
        admin::read_response(&mut stalled, &limits).unwrap(),
        Response::Refused(RequestError::Stalled { millis: 200 })
    );
    assert!(hub.cli(&["device", "list"]).status.success(), "the service still answers");
    done.abort();
}

impl Served {
    fn new() -> Served {
        let hub = TestHub::new();
        let offline = hub.tmp.path().join("offline");
        assert!(hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]).status.success());
        let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
        let add = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
        assert!(add.status.success(), "{}", stderr(&add));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let running = start(&runtime, &hub).unwrap();
        let backend = running.backend().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = runtime.spawn(running.run(async {
            let _ = stopped.await;
        }));
        Served { hub, runtime, stop: Some(stop), done: Some(done), backend }
    }

    fn key(&self) -> String {
        self.hub.tmp.path().join("offline/targets-1.key").to_str().unwrap().to_owned()
    }

    /// Asks the running service's backend, as a connection would.
    fn allowed(&self, device: [u8; 32]) -> bool {
        self.runtime.block_on(self.backend.clone().device_allowed(device))
    }

    fn metadata(&self, name: &str) -> Result<Option<Vec<u8>>, outpost_net::server::BackendError> {
        self.runtime.block_on(self.backend.clone().metadata(name.to_owned()))
    }

    fn assignment(&self, device: [u8; 32]) -> Result<Option<Vec<u8>>, outpost_net::server::BackendError> {
        self.runtime.block_on(self.backend.clone().assignment(device))
    }

    /// Stops the service and waits until it has.
    fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.runtime.block_on(self.done.take().unwrap()).unwrap();
    }
}

#[test]
fn publish_approve_and_revoke_through_the_running_service_take_effect_at_the_next_request() {
    let mut s = Served::new();
    let opened = outpost_hub::store::opens(&s.hub.dir());
    assert_eq!(opened, 2, "the service opened the index and the telemetry store once each");
    let device = [7u8; 32];
    let device_hex = hex::encode(device);
    assert!(!s.allowed(device));
    let before = s.metadata("timestamp.json").unwrap().unwrap();
    assert_eq!(s.backend.fresh_metadata("timestamp.json").as_ref(), Some(&before), "the metadata cache is warm");

    let approve = s.hub.cli(&["device", "approve", &device_hex, "--channel", "stable"]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    assert!(stderr(&approve).contains("approved device"), "{}", stderr(&approve));
    assert!(s.allowed(device), "the device is allowed on its next connection");

    let publish = s.hub.cli(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", &s.key()]);
    assert!(publish.status.success(), "{}", stderr(&publish));
    let after = s.backend.fresh_metadata("timestamp.json");
    assert!(after.as_ref() != Some(&before), "no stale timestamp is served from memory after a publish");
    assert_ne!(s.metadata("timestamp.json").unwrap().unwrap(), before, "the new timestamp is served");
    let repo = outpost_hub::tuf::TufRepo::new(&s.hub.dir(), Default::default());
    let published = Director::new(&repo).published().unwrap();
    let path = published[0].path.as_bytes();
    let bundle: outpost_shared::director::Bundle =
        outpost_shared::canonical::from_slice(&s.assignment(device).unwrap().unwrap()).unwrap();
    assert!(bundle.assignment.windows(path.len()).any(|w| w == path), "the next assignment lists the release");
    assert_eq!(revocation_list(&bundle).version, 0, "before any revocation the bundle carries an empty list");

    let revoke = s.hub.cli(&["release", "revoke", "affine@1.0.0", "--reason", "field regression"]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    assert!(stderr(&revoke).contains("revocation list v1"), "{}", stderr(&revoke));
    let bundle: outpost_shared::director::Bundle =
        outpost_shared::canonical::from_slice(&s.assignment(device).unwrap().unwrap()).unwrap();
    assert_eq!(revocation_list(&bundle).version, 1, "the next bundle carries the new revocation list");

    let revoke_device = s.hub.cli(&["device", "revoke", &device_hex]);
    assert!(revoke_device.status.success(), "{}", stderr(&revoke_device));
    assert!(!s.allowed(device), "a revoked device is refused at its next connection");

    // Reads go through the service too, and see what it holds.
    let list = s.hub.cli(&["device", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(stdout(&list).contains(&device_hex) && stdout(&list).contains("revoked"), "{}", stdout(&list));
    // Nothing reopened the store: not this process per request, nor the CLI, which meets the service's lock when it
    // cannot find the socket (and so everything above ran inside the service).
    assert_eq!(outpost_hub::store::opens(&s.hub.dir()), opened, "the service opened no store per request");
    let socket = admin::socket_path(&s.hub.dir());
    let hidden = s.hub.tmp.path().join("hidden.sock");
    std::fs::rename(&socket, &hidden).unwrap();
    let alone = s.hub.cli(&["device", "list"]);
    std::fs::rename(&hidden, &socket).unwrap();
    assert!(!alone.status.success());
    assert!(stderr(&alone).contains("in use by another outpost-hub process"), "{}", stderr(&alone));
    outpost_hub::Registry::open(&s.hub.dir(), Arc::new(SystemClock)).unwrap();
    assert_eq!(outpost_hub::store::opens(&s.hub.dir()), opened, "an in-process open shares the service's handle");
    s.stop();
    assert!(!admin::socket_path(&s.hub.dir()).exists(), "a stopped service removes its socket");
}

#[test]
fn admin_socket_is_owner_only_and_a_second_service_on_the_same_hub_is_refused() {
    let mut s = Served::new();
    let socket = admin::socket_path(&s.hub.dir());
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin socket is owner-only");
    let second = start(&s.runtime, &s.hub).unwrap_err();
    assert!(matches!(second, ServiceError::Admin(ListenError::AlreadyServing { .. })), "{second}");
    let binary = s.hub.cli(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!binary.status.success());
    assert!(stderr(&binary).contains("already serving"), "{}", stderr(&binary));
    assert!(s.hub.cli(&["device", "list"]).status.success(), "the first service still answers");
    s.stop();
}

#[test]
fn a_bad_admin_request_gets_a_typed_refusal_and_the_service_keeps_serving() {
    let mut s = Served::new();
    let socket = admin::socket_path(&s.hub.dir());
    let limits = admin::Limits::default();
    let ask = |frame: &[u8]| {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.write_all(frame).unwrap();
        admin::read_response(&mut stream, &limits).unwrap()
    };
    let garbage = b"\x00\x00\x00\x05hello";
    assert!(matches!(ask(garbage), Response::Refused(RequestError::Malformed { .. })));
    let huge = (limits.max_request + 1).to_be_bytes();
    assert_eq!(
        ask(&huge),
        Response::Refused(RequestError::TooLarge { len: limits.max_request + 1, max: limits.max_request })
    );
    let serve_inside = serde_json::to_vec(&cli::Command::Init).unwrap();
    let mut frame = (serve_inside.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&serve_inside);
    assert!(matches!(ask(&frame), Response::Refused(RequestError::Malformed { .. })), "init never runs inside");
    let list = s.hub.cli(&["package", "list"]);
    assert!(list.status.success() && stdout(&list).contains("affine"), "{}", stderr(&list));
    s.stop();
}

#[test]
fn a_stale_admin_socket_is_replaced_and_commands_without_a_service_open_the_store_themselves() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    assert!(hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]).status.success());
    // A socket file left behind by a service that died: nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(admin::socket_path(&hub.dir())).unwrap());
    assert!(admin::socket_path(&hub.dir()).exists());
    let token = hub.cli(&["device", "token"]);
    assert!(token.status.success(), "{}", stderr(&token));
    assert!(stdout(&token).starts_with("ot1-"), "{}", stdout(&token));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let running = start(&runtime, &hub).unwrap();
    assert!(admin::serving(&hub.dir()), "the service took the stale socket over");
    drop(running);
}

/// The real `outpost-hub serve` logs from its worker threads (here: a garbage admin request) and still answers,
/// and stops within seconds of SIGINT. A stdout or stderr lock held by the main thread for the life of `serve`
/// used to hang the first worker that logged, and with it the shutdown.
#[test]
#[allow(clippy::disallowed_methods)] // deadlines for a real process
fn serve_binary_logging_from_its_workers_keeps_answering_and_stops_on_sigint() {
    use std::process::Command;
    use std::time::{Duration, Instant};
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    assert!(hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]).status.success());
    let mut serve = ServeProcess::start(&hub, &[]);
    let until = |what: &str, within: Duration| serve.until(&format!("`{what}`"), within, |l| l.contains(what));
    until("admin commands on", Duration::from_secs(30));
    let mut garbage = std::os::unix::net::UnixStream::connect(admin::socket_path(&hub.dir())).unwrap();
    garbage.write_all(&[0, 0, 0, 3, b'{', b'{', b'{']).unwrap();
    drop(garbage);
    until("admin socket", Duration::from_secs(10));
    let list = hub.cli(&["device", "list"]);
    assert!(list.status.success(), "the service still answers: {}", stderr(&list));
    let pid = serve.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    until("shutting down", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            panic!("serve did not exit within 10 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

/// An operator follows one site through the hub's JSON log: a device of site `plant-7` connects, and the lines
/// of its connection carry, in the connection's span, the connection id, the device (short) and the site.
#[test]
fn the_hubs_json_log_follows_a_devices_connection_with_its_site() {
    use std::time::Duration;
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let device = Identity::from_seed([7; 32]);
    let key = device.public_key().to_hex();
    hub.ok(&["device", "approve", &key, "--channel", "stable", "--site", "plant-7"]);
    let serve = ServeProcess::start(&hub, &["--log-format", "json", "--log-level", "debug"]);
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    let serving = json(&serve.until("`serving on`", Duration::from_secs(30), |l| json(l)["addr"].is_string()));
    let addr = serving["addr"].as_str().unwrap().parse().unwrap();
    let hub_key = serving["hub_key"].as_str().unwrap().parse().unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = outpost_net::client::ClientConfig::new(addr, hub_key);
    let client = runtime.block_on(outpost_net::client::HubClient::connect(&device, &config)).unwrap();
    // The hub admits the device and answers (it has not attested yet, so no assignment).
    let answer = runtime.block_on(client.assignment());
    assert!(format!("{answer:?}").contains("NotAttested"), "{answer:?}");

    let short = &key[..12];
    let in_connection = |l: &serde_json::Value| {
        l["spans"].as_array().is_some_and(|spans| {
            spans.iter().any(|s| {
                s["name"] == "connection" && s["device"] == short && s["site"] == "plant-7" && s["conn"].is_number()
            })
        })
    };
    let line = serve.until("a line of the device's connection", Duration::from_secs(10), |l| in_connection(&json(l)));
    let line = json(&line);
    assert_eq!(line["message"], "device connected", "{line}");
    assert_eq!(line["level"], "DEBUG", "{line}");
}

#[test]
fn capability_commands_run_inside_the_serving_hub() {
    let mut s = Served::new();
    let cap = s.hub.write_capability("affine", &support::affine_capability(4, &["model"]));
    let added = s.hub.cli(&["capability", "add", cap.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    let refused = s.hub.cli(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", &s.key()]);
    assert!(!refused.status.success(), "the serving hub enforces the owners too");
    assert!(stderr(&refused).contains("no evaluation, security, production owners"), "{}", stderr(&refused));
    let list = stdout(&s.hub.cli(&["capability", "list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["name"], "test.affine");
    let suites = s.hub.cli(&["suite", "list", "--json"]);
    assert!(suites.status.success(), "{}", stderr(&suites));
    assert_eq!(stdout(&suites).trim(), "[]");
    let no_suite = s.hub.cli(&["eval", "run", "affine@1.0.0", "--suite", "nope"]);
    assert!(stderr(&no_suite).contains("no suite matches `nope`"), "{}", stderr(&no_suite));
    // The challenger runs in the serving hub too: no suite for the capability yet, and no cycles.
    let cycle = s.hub.cli(&["challenger", "run", "test.affine", "--champion", "affine@1.0.0", "--operator", "int8"]);
    assert!(stderr(&cycle).contains("capability `test.affine` has 0 suites"), "{}", stderr(&cycle));
    let cycles = s.hub.cli(&["challenger", "list", "--json"]);
    assert_eq!(stdout(&cycles).trim(), "[]", "{}", stderr(&cycles));
    assert_eq!(outpost_hub::store::opens(&s.hub.dir()), 2, "nothing reopened the store");
    s.stop();
}

/// The revocation list a bundle carries (its signature is the devices' to check).
fn revocation_list(bundle: &outpost_shared::director::Bundle) -> outpost_shared::director::RevocationList {
    let envelope: outpost_shared::director::Envelope =
        outpost_shared::canonical::from_slice(&bundle.revocations).unwrap();
    outpost_shared::canonical::from_slice(&envelope.body).unwrap()
}
