//! Several capabilities on one running agent against a real hub on loopback: each capability has its own lane —
//! its own slots, model handle in the inference API, health window, rollback and revocation — so one capability's
//! failing release never touches another's model; the device's memory limit refuses a package before download; and
//! an agent upgraded from a single model keeps serving it as a lane, without downloading it again.

mod inference_support;
mod support;

use inference_support::{Arc, ModelHandle, ServeLimits, TcpListener, http, inference, json};
use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_agent::inference::{OutcomeReceiver, Routes};
use outpost_hub::director::Director;
use outpost_shared::Digest;
use outpost_shared::clock::Clock;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use outpost_shared::update::lanes::{DeviceReport, MEMORY_RULE};
use support::World;

const OCR: &str = "ocr.text-direction";
const VAD: &str = "audio.vad";
const MIB: u64 = 1 << 20;

/// A device on `w`'s hub with `extra` appended to its `[updates]`, serving its inference API (with routes over
/// every capability's handle) and feeding inference outcomes back: the agent, its API's address, the outcomes,
/// its directory and device key.
struct Device {
    agent: Agent,
    api: std::net::SocketAddr,
    outcomes: OutcomeReceiver,
    dir: std::path::PathBuf,
    key: String,
}

async fn device(w: &World, hub: std::net::SocketAddr, extra: &str) -> Device {
    let dir = w.tmp.path().join("dev");
    let hub_key = outpost_attestation::identity::Identity::from_seed([1; 32]).public_key();
    let key = init_device(&dir, &w.root(), [7; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = config::render(&hub.to_string(), &hub_key.to_hex())
        .replace("health_inferences = 20", &format!("health_inferences = 1\n{extra}"));
    std::fs::write(dir.join("agent.toml"), &text).unwrap();
    open(w, &dir, key).await
}

/// Opens (or reopens) the agent in `dir` as `run` does: its handle served by the inference API, through routes.
async fn open(w: &World, dir: &std::path::Path, key: String) -> Device {
    let text = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    let (models, outcomes) = ModelHandle::with_outcomes(w.clock.clone(), 64);
    let models = Arc::new(models);
    let config = AgentConfig::parse(&text, &dir.join("agent.toml")).unwrap();
    let mut agent = Agent::open_with(config, w.clock.clone(), models.clone()).unwrap();
    let routes = Arc::new(Routes::new(w.clock.clone(), Default::default()));
    routes.serve_handle(models.clone());
    agent.set_routes(routes.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(inference::serve_with_routes(
        listener,
        models,
        routes,
        ServeLimits::default(),
        None,
        std::future::pending(),
    ));
    Device { agent, api, outcomes, dir: dir.to_owned(), key }
}

impl Device {
    /// One inference on the model named `name` through the API (its input all `x`), its outcome fed to the agent
    /// as `run` does: the HTTP status and answer.
    async fn infer(&mut self, name: &str, x: f32) -> (u16, serde_json::Value) {
        let body = json!({ "inputs": [{ "name": "x", "shape": [1, 4], "datatype": "FP32", "data": [x, x, x, x] }] });
        let answer = http(self.api, "POST", &format!("/v2/models/{name}/infer"), body.to_string().as_bytes()).await;
        if answer.0 == 200 || answer.0 == 500 {
            let outcome = self.outcomes.recv().await.expect("the inference's outcome");
            self.agent.record_outcome(outcome).unwrap();
        }
        answer
    }

    fn serving(&self, capability: &str) -> Option<Digest> {
        self.agent.active_of(capability).map(|m| *m.digest())
    }

    fn lane(&self, capability: &str) -> &outpost_shared::update::AgentState {
        &self.agent.lanes().lane(capability).expect("the capability has a lane").state
    }

    /// The last report the hub stored from this device, with its lanes.
    fn last_report(&self, w: &World) -> DeviceReport {
        let reports = outpost_hub::reports::read_all(&w.dir, &self.key).unwrap();
        outpost_shared::canonical::from_slice(reports.last().expect("a report reached the hub")).unwrap()
    }
}

fn publish(w: &World, name: &str, version: &str, scale: f32, capability: &str, memory: u64) -> Digest {
    w.add_and_publish_capability(&AffineManifest::new(name, version, scale, 0.0), capability, memory, "stable").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_capabilitys_rollback_leaves_anothers_model_serving_on_a_running_agent() {
    let w = World::new();
    let (hub, _) = w.serve().await;
    let vad_1 = publish(&w, "vad", "1.0.0", 3.0, VAD, MIB);
    let ocr_1 = publish(&w, "ocr", "1.0.0", 2.0, OCR, MIB);
    let mut d = device(&w, hub, "").await;

    // One check installs both capabilities, each into its own slots; each model answers by its own name.
    d.agent.check().await.unwrap();
    assert_eq!((d.serving(OCR), d.serving(VAD)), (Some(ocr_1), Some(vad_1)));
    assert!(d.dir.join("slots").join(OCR).join("a/digest").exists());
    assert!(d.dir.join("slots").join(VAD).join("a/digest").exists());
    let (status, body) = d.infer("ocr", 1.0).await;
    assert_eq!((status, body["outputs"][0]["data"][0].as_f64()), (200, Some(2.0)), "{body}");
    let (status, body) = d.infer("vad", 1.0).await;
    assert_eq!((status, body["outputs"][0]["data"][0].as_f64()), (200, Some(3.0)), "{body}");
    assert_eq!((d.lane(OCR).phase.clone(), d.lane(VAD).phase.clone()), (Phase::Idle, Phase::Idle));

    // A VAD release that fails on a real request in its health window (its answer overflows FP32: the model's
    // failure, a 500) rolls back to VAD 1.0.0; the OCR lane never notices.
    let ocr_before = d.lane(OCR).clone();
    w.clock.advance(std::time::Duration::from_secs(2));
    let vad_2 = publish(&w, "vad", "2.0.0", 2.0, VAD, MIB);
    d.agent.check().await.unwrap();
    assert_eq!(d.serving(VAD), Some(vad_2));
    assert!(matches!(d.lane(VAD).phase, Phase::Health { .. }), "{:?}", d.lane(VAD).phase);
    let (status, body) = d.infer("vad", 3.0e38).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(d.serving(VAD), Some(vad_1), "VAD rolled back to its last good package");
    assert!(d.lane(VAD).rolled_back.contains(&vad_2));
    assert_eq!(d.serving(OCR), Some(ocr_1));
    assert_eq!(d.lane(OCR).rolled_back, ocr_before.rolled_back);
    assert_eq!(d.lane(OCR).last_error, None);
    assert_eq!(d.infer("ocr", 1.0).await.0, 200);
    assert_eq!(d.infer("vad", 1.0).await.0, 200);

    // The hub sees each lane; the old fields speak of the primary lane (OCR, the package first assigned), and the
    // director stops offering the VAD package this device rolled back from.
    d.agent.check().await.unwrap();
    let report = d.last_report(&w);
    assert_eq!(report.state.active, Some(ocr_1));
    assert_eq!(report.lanes[VAD].active, Some(vad_1));
    assert_eq!(report.lanes[VAD].rolled_back, vec![vad_2]);
    let record = w.registry().device(&d.key).unwrap().unwrap();
    assert!(record.rolled_back.contains(&vad_2), "{:?}", record.rolled_back);

    // OCR 1.0.0 revoked: the OCR lane has nothing to go back to and stops serving; VAD serves on.
    Director::new(&w.repo).revoke(ocr_1, "bad weights", w.clock.wall()).unwrap();
    d.agent.check().await.unwrap();
    assert_eq!(d.serving(OCR), None);
    assert_eq!(d.serving(VAD), Some(vad_1));
    assert_eq!(d.infer("ocr", 1.0).await.0, 503);
    assert_eq!(d.infer("vad", 1.0).await.0, 200);

    // A restart serves each lane's model from its own slots at once.
    let (dir, key) = (d.dir.clone(), d.key.clone());
    d.agent.shutdown().unwrap();
    let mut d = open(&w, &dir, key).await;
    assert_eq!((d.serving(OCR), d.serving(VAD)), (None, Some(vad_1)));
    assert_eq!(d.infer("vad", 1.0).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_its_memory_limit_refuses_the_package_that_would_exceed_it() {
    let w = World::new();
    let (hub, _) = w.serve().await;
    let ocr_1 = publish(&w, "ocr", "1.0.0", 2.0, OCR, 2 * MIB);
    let mut d = device(&w, hub, &format!("memory_limit_bytes = {}", 3 * MIB)).await;
    d.agent.check().await.unwrap();
    assert_eq!(d.serving(OCR), Some(ocr_1));
    assert_eq!(d.infer("ocr", 1.0).await.0, 200);

    // A VAD package of 2 MiB beside OCR's 2 MiB: 4 MiB would exceed the 3 MiB limit. Refused before download.
    w.clock.advance(std::time::Duration::from_secs(2));
    let vad_1 = publish(&w, "vad", "1.0.0", 3.0, VAD, 2 * MIB);
    d.agent.check().await.unwrap();
    assert_eq!(d.serving(VAD), None);
    let refusal = d.lane(VAD).refused.iter().find(|r| r.digest == vad_1).expect("the VAD package is refused");
    assert_eq!(refusal.rule, MEMORY_RULE);
    assert!(
        refusal.reason.contains(&format!("exceed the device's memory limit of {} bytes", 3 * MIB)),
        "{}",
        refusal.reason
    );
    assert!(!d.dir.join("staging").join(format!("{}.opkg.part", vad_1.to_hex())).exists(), "never downloaded");
    assert!(!d.dir.join("slots").join(VAD).exists(), "never staged");
    // OCR serves on, and the hub hears of the refusal in the VAD lane.
    assert_eq!(d.serving(OCR), Some(ocr_1));
    assert_eq!(d.infer("ocr", 1.0).await.0, 200);
    let report = d.last_report(&w);
    assert!(report.lanes[VAD].refusals.iter().any(|r| r.digest == vad_1 && r.rule == MEMORY_RULE), "{report:?}");

    // A VAD package of 1 MiB fits (3 MiB in all): installed beside OCR.
    w.clock.advance(std::time::Duration::from_secs(2));
    let vad_2 = publish(&w, "vad", "1.1.0", 3.0, VAD, MIB);
    d.agent.check().await.unwrap();
    assert_eq!((d.serving(OCR), d.serving(VAD)), (Some(ocr_1), Some(vad_2)));
    assert_eq!(d.infer("vad", 1.0).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_agent_keeps_its_single_model_as_a_lane_without_downloading_it_again() {
    let w = World::new();
    let (hub, _) = w.serve().await;
    let ocr_1 = publish(&w, "ocr", "1.0.0", 2.0, OCR, MIB);
    let mut d = device(&w, hub, "").await;
    d.agent.check().await.unwrap();
    assert_eq!(d.infer("ocr", 1.0).await.0, 200);
    let (dir, key) = (d.dir.clone(), d.key.clone());
    let state = d.agent.state().clone();
    d.agent.shutdown().unwrap();

    // What a single-model agent leaves on disk: its model in slots/a, its one AgentState as state.json.
    let slots = dir.join("slots");
    std::fs::rename(slots.join(OCR).join("a"), slots.join("a")).unwrap();
    std::fs::remove_dir_all(slots.join(OCR)).unwrap();
    std::fs::write(dir.join("state.json"), serde_json::to_vec_pretty(&state).unwrap()).unwrap();

    // The upgraded agent serves it at once, as the OCR lane in its old slots; a check downloads nothing.
    let mut d = open(&w, &dir, key).await;
    assert_eq!(d.serving(OCR), Some(ocr_1));
    assert!(d.agent.lanes().lane(OCR).is_some_and(|l| l.legacy_slots));
    d.agent.check().await.unwrap();
    assert_eq!(d.serving(OCR), Some(ocr_1));
    assert_eq!(d.lane(OCR).phase, Phase::Idle);
    assert!(!slots.join(OCR).exists(), "nothing written into new slots: {:?}", std::fs::read_dir(&slots).unwrap());
    assert!(!dir.join("staging").join(format!("{}.opkg.part", ocr_1.to_hex())).exists());
    assert_eq!(d.infer("ocr", 1.0).await.0, 200);
    // state.json is now the lanes form, written atomically.
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(written["lanes"][OCR]["legacy_slots"], json!(true), "{written}");

    // The next OCR release goes to the old slot B, and a second capability gets slots of its own.
    w.clock.advance(std::time::Duration::from_secs(2));
    let ocr_2 = publish(&w, "ocr", "2.0.0", 4.0, OCR, MIB);
    let vad_1 = publish(&w, "vad", "1.0.0", 3.0, VAD, MIB);
    d.agent.check().await.unwrap();
    assert_eq!((d.serving(OCR), d.serving(VAD)), (Some(ocr_2), Some(vad_1)));
    assert_eq!(std::fs::read_to_string(slots.join("b/digest")).unwrap().trim(), ocr_2.to_hex());
    assert_eq!(std::fs::read_to_string(slots.join(VAD).join("a/digest")).unwrap().trim(), vad_1.to_hex());
}

/// Router 1.0.0 with one route, `scale`, over both capabilities (affine: x[N, 4] → y[N, 4]): OCR for requests
/// asking the `fast` tier, VAD the fallback.
fn publish_router(w: &World) {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/routers/ocr-router.toml"),
    )
    .unwrap();
    let rules = format!(
        r#"name = "ocr-router"
version = "1.0.0"
[[route]]
name = "scale"
[[route.contract.inputs]]
name = "x"
dtype = "f32"
shape = ["N", 4]
[[route.contract.outputs]]
name = "y"
dtype = "f32"
shape = ["N", 4]
[[route.candidate]]
capability = "{OCR}"
niche = {{ cost_tier = "fast" }}
[[route.candidate]]
capability = "{VAD}"
"#
    );
    let (r, m) = (w.tmp.path().join("rules.toml"), w.tmp.path().join("router.toml"));
    std::fs::write(&r, rules).unwrap();
    std::fs::write(&m, manifest).unwrap();
    let reg = w.registry();
    let d = reg.add(&r, &m).unwrap().digest;
    let (record, manifest) = (reg.record(&d).unwrap().unwrap(), reg.manifest(&d).unwrap().1);
    drop(reg);
    w.publish_as(&record, &manifest, "stable");
}

/// One request through route `scale`, asking the `fast` tier.
async fn route_fast(d: &Device) -> (u16, serde_json::Value) {
    let body = json!({
        "inputs": [{ "name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 1.0, 1.0, 1.0] }],
        "parameters": { "cost_tier": "fast" },
    });
    http(d.api, "POST", "/v2/models/scale/infer", body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_over_two_capabilities_falls_back_to_the_other_lane_when_one_is_revoked() {
    let w = World::new();
    let (hub, _) = w.serve().await;
    publish(&w, "vad", "1.0.0", 3.0, VAD, MIB);
    let ocr_1 = publish(&w, "ocr", "1.0.0", 2.0, OCR, MIB);
    publish_router(&w);
    let mut d = device(&w, hub, "").await;
    d.agent.check().await.unwrap();
    assert_eq!(d.infer("ocr", 1.0).await.0, 200);
    assert_eq!(d.infer("vad", 1.0).await.0, 200);

    // The route sees both lanes' handles: the specialist (OCR, the agent's own handle) answers the fast tier.
    let (status, body) = route_fast(&d).await;
    assert_eq!((status, body["model_name"].as_str()), (200, Some("ocr")), "{body}");
    assert_eq!(body["parameters"].get("fallback_reason"), None, "{body}");

    // OCR revoked with nothing to go back to: its lane stops serving and marks it revoked for routing; the
    // fallback, VAD's own handle, answers and says why.
    Director::new(&w.repo).revoke(ocr_1, "bad weights", w.clock.wall()).unwrap();
    d.agent.check().await.unwrap();
    assert_eq!(d.serving(OCR), None);
    let (status, body) = route_fast(&d).await;
    assert_eq!((status, body["model_name"].as_str()), (200, Some("vad")), "{body}");
    assert_eq!(body["parameters"]["fallback_reason"].as_str(), Some("revoked"), "{body}");
}
