//! What an operator sees of a running fleet: the agent's JSON log lines for one update check, and the hub's and
//! the agent's `/metrics` as `promtool check metrics` lints them and as a real Prometheus (Debian's `prometheus`)
//! scrapes, stores and answers queries about them, with a site name that tries to break the exposition.
//!
//! `prometheus` and `promtool` must be installed (Debian: `apt-get install prometheus`, as `.ci/run` does); without
//! them the Prometheus test fails and says so.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config;
use outpost_agent::driver::init_device;
use outpost_attestation::identity::Identity;
use outpost_hub::rollouts;
use outpost_shared::Digest;
use outpost_shared::clock::Clock;
use outpost_shared::manifest::RiskTier;
use outpost_shared::rng::SeededRng;
use outpost_shared::rollout::{Plan, Release};
use outpost_shared::testkit::AffineManifest;
use support::{Wall, World};

/// A site name with quotes, a backslash and newlines, written as if to end its series and forge another.
const NASTY_SITE: &str = "plant \"7\"\\\n} 1\nforged_metric{x=\"y\"} 42";

const PLAN: &str = r#"
name = "all-at-once"
[[stage]]
name = "all"
cohort_percent = 100
min_devices = 1
soak_secs = 0
success_percent = 100
error_percent = 0
"#;

#[allow(clippy::disallowed_methods)] // deadlines for real processes
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// A hub serving on loopback (QUIC, and `/metrics` over HTTP) from `w`'s data directory, on the system clock.
struct Hub {
    addr: SocketAddr,
    metrics: SocketAddr,
    key: String,
}

/// A runtime, a world on the system clock whose reference values allow the `outpost-agent` binary, and its hub
/// serving on that runtime (keep the runtime for as long as the hub should serve).
fn fleet() -> (tokio::runtime::Runtime, World, Hub) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let w = World::on_wall_clock();
    w.allow_agent_binary();
    let hub = serve_hub(&w, &rt);
    (rt, w, hub)
}

fn serve_hub(w: &World, rt: &tokio::runtime::Runtime) -> Hub {
    let identity = Identity::from_seed([1; 32]);
    let key = identity.public_key().to_hex();
    let mut config = outpost_hub::service::ServiceConfig::new(&w.dir, Default::default(), identity);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let running =
        rt.block_on(outpost_hub::service::start(config, Arc::new(Wall), Box::new(SeededRng::new(3)))).unwrap();
    let (addr, metrics) = (running.local_addr().unwrap(), running.metrics_addr().unwrap());
    rt.spawn(running.run(std::future::pending()));
    Hub { addr, metrics, key }
}

/// A device directory for the hub, approved on `stable`, its inference API on `api`; returns its config path and
/// key. With `site`, the device enforces a site policy that names that site and constrains nothing: the device
/// reports the name, and the hub shows it (operators cannot set such a name, devices can report one).
fn device(w: &World, hub: &Hub, seed: u8, site: Option<&str>, api: SocketAddr) -> (PathBuf, String) {
    let dir = w.tmp.path().join(format!("dev{seed}"));
    let key = init_device(&dir, &w.root(), [seed; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let mut text = config::render(&hub.addr.to_string(), &hub.key)
        .replace("poll_secs = 60", "poll_secs = 1")
        .replace("jitter_secs = 10", "jitter_secs = 0")
        .replace("health_inferences = 20", "health_inferences = 1")
        .replace("127.0.0.1:8080", &api.to_string());
    if let Some(site) = site {
        let quoted = site.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        std::fs::write(dir.join("site.toml"), format!("site = \"{quoted}\"\n")).unwrap();
        text.push_str("\n[policy]\nfile = \"site.toml\"\n");
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    (path, key)
}

/// A loopback TCP port nothing listens on now.
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Kills and reaps a process when the test ends, passed or not.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.0 exchange (no chunking, the server closes): status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    http_with(addr, method, path, "", body)
}

/// Like [`http`], with `headers` (each line ending in CRLF) added to the request head.
fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// `s` percent-encoded for a URL query.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What a query's result must satisfy.
type Expect = Box<dyn Fn(&[serde_json::Value]) -> bool>;

/// A Prometheus query result's value (`-1` when it has none).
fn value(series: &serde_json::Value) -> f64 {
    series["value"][1].as_str().unwrap_or("").parse::<f64>().unwrap_or(-1.0)
}

/// `name` on PATH or in /usr/bin; the test fails, saying what to install, when it is in neither.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not on PATH nor in /usr/bin: install Debian's `prometheus` package (apt-get install prometheus), as .ci/run does")
        })
}

/// Publishes affine 1.0.0 on `stable` and starts release r1 of it under [`PLAN`] (with the devices approved).
fn publish_and_release(w: &World) -> Digest {
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let release = Release { id: String::new(), package: v1, last_good: None, risk: RiskTier::Low, signers: vec![] };
    let plan = Plan::from_toml(PLAN, Path::new("plan.toml")).unwrap();
    let (id, _) = rollouts::start(&w.registry(), release, "affine@1.0.0", plan, "stable", Wall.wall()).unwrap();
    assert_eq!(id, "r1");
    v1
}

#[test]
fn one_update_check_logs_json_lines_carrying_the_device_and_the_package() {
    let (_rt, w, hub) = fleet();
    let (config, key) = device(&w, &hub, 7, None, free_port());
    let v1 = publish_and_release(&w);

    let out = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["run", "--once", "--log-format", "json", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "logs go to stderr, not stdout: {}", String::from_utf8_lossy(&out.stdout));

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let device = &key[..12];
    let in_device_span =
        |l: &serde_json::Value| l["spans"].as_array().is_some_and(|spans| spans.iter().any(|s| s["device"] == device));
    let about_v1: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["package"] == v1.short() && in_device_span(l)).collect();
    assert!(!about_v1.is_empty(), "no line with device {device} and package {}: {stderr}", v1.short());
    for l in &about_v1 {
        assert!(l["level"].is_string() && l["timestamp"].is_string() && l["message"].is_string(), "{l}");
    }
    // The check's span itself carries the release and the package, so every line of the check does.
    let in_release_span = |l: &serde_json::Value| {
        l["spans"].as_array().is_some_and(|spans| {
            spans.iter().any(|s| s["device"] == device && s["release"] == "r1" && s["package"] == v1.short())
        })
    };
    let in_check = |l: &&&serde_json::Value| l["span"]["name"] == "check";
    let checked: Vec<_> = about_v1.iter().filter(in_check).collect();
    assert!(checked.len() >= 3 && checked.iter().all(|l| in_release_span(l)), "{about_v1:?}");
    let messages: Vec<&str> = about_v1.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.iter().any(|m| m.starts_with("downloaded and verified")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("serving")), "{messages:?}");
}

#[test]
fn a_fatal_error_under_json_logging_is_a_json_line_too() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere").join("agent.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["run", "--once", "--log-format", "json", "--config", missing.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let fatal = lines.iter().find(|l| l["message"] == "fatal").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(fatal["level"], "ERROR");
    assert!(fatal["error"].as_str().unwrap().contains("agent.toml"), "{fatal}");
}

#[test]
fn a_real_prometheus_scrapes_the_hub_and_the_agent_and_a_hostile_site_name_stays_one_label() {
    let (prometheus, promtool) = (tool("prometheus"), tool("promtool"));
    let (_rt, w, hub) = fleet();
    let api = free_port();
    let (config, _) = device(&w, &hub, 8, Some(NASTY_SITE), api);
    let v1 = publish_and_release(&w);
    let agent_log = w.tmp.path().join("agent.log");
    let _agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    // One inference (which confirms the package: health_inferences = 1); the next check reports it and sends its
    // latency to the hub as telemetry.
    let request = br#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let deadline = now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http(api, "POST", "/v2/models/affine/infer", request) {
            break;
        }
        assert!(now() < deadline, "the agent never answered an inference: {}", log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // What a scrape returns passes promtool's lint (the classic text format: what it parses).
    for (what, addr) in [("hub", hub.metrics), ("agent", api)] {
        let (status, text) = http(addr, "GET", "/metrics", b"").unwrap();
        assert_eq!(status, 200, "{what}: {text}");
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let checked = check.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool check metrics on the {what}'s scrape: {}{}\n{text}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    // A real Prometheus scrapes both every second.
    let web = free_port();
    let dir = w.tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let scrape_config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: hub\n    static_configs:\n      - targets: ['{}']\n  - job_name: agent\n    static_configs:\n      - targets: ['{api}']\n",
        hub.metrics
    );
    std::fs::write(dir.join("prometheus.yml"), scrape_config).unwrap();
    let prometheus_log = dir.join("prometheus.log");
    let _prometheus = Reaped(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prometheus_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let query = |q: &str| -> Vec<serde_json::Value> {
        let Ok((200, body)) = http(web, "GET", &format!("/api/v1/query?query={}", urlencode(q)), b"") else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    let package = v1.short();
    let wanted: [(&str, &str, Expect); 6] = [
        ("both targets up", "up", Box::new(|r| r.len() == 2 && r.iter().all(|s| value(s) == 1.0))),
        (
            "devices by status, the site as the hub stored it",
            r#"outpost_hub_devices{status="approved"}"#,
            Box::new(move |r| {
                r.iter()
                    .any(|s| s["metric"]["site"] == NASTY_SITE && s["metric"]["package"] == package && value(s) == 1.0)
            }),
        ),
        ("no series forged by the site name", r#"{__name__="forged_metric"}"#, Box::new(|r| r.is_empty())),
        (
            "release stage counts",
            r#"outpost_hub_release_stage_devices{release="r1",stage="1",outcome="installed"}"#,
            Box::new(|r| r.len() == 1 && value(&r[0]) == 1.0),
        ),
        (
            "the agent's inference latency histogram",
            r#"sum(outpost_agent_inference_seconds_bucket{model="affine",le="+Inf"})"#,
            Box::new(|r| r.len() == 1 && value(&r[0]) >= 1.0),
        ),
        (
            "the hub's inference latency histogram from device telemetry, at the hostile site",
            "outpost_hub_inference_seconds_count",
            Box::new(|r| r.iter().any(|s| s["metric"]["site"] == NASTY_SITE && value(s) >= 1.0)),
        ),
    ];
    let deadline = now() + Duration::from_secs(90);
    for (what, q, ok) in &wanted {
        loop {
            let result = query(q);
            if ok(result.as_slice()) {
                break;
            }
            assert!(
                now() < deadline,
                "Prometheus never had {what} (`{q}`): {result:?}\nprometheus: {}\nagent: {}",
                std::fs::read_to_string(&prometheus_log).unwrap_or_default(),
                log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // The forged series check above passes trivially before any scrape; ask again now that every scrape landed.
    assert!(query(r#"{__name__="forged_metric"}"#).is_empty());
    // And an appraisal was timed: the agent attested to reach the hub.
    let appraisals = query("sum(outpost_hub_attestation_appraisal_seconds_count)");
    assert!(appraisals.len() == 1 && value(&appraisals[0]) >= 1.0, "{appraisals:?}");
}

/// `[inference] token_file` as `outpost-agent run` reads it: the API answers 401 without the token (its health
/// probes excepted) and serves with it; a token file that cannot be read stops the agent before anything serves,
/// naming the file, rather than leave the API open.
#[test]
fn the_agent_requires_its_inference_token_and_will_not_start_without_a_readable_one() {
    let (_rt, w, hub) = fleet();
    let api = free_port();
    let (config, _) = device(&w, &hub, 8, None, api);
    let token = "agent-token-0123456789abcdef";
    std::fs::write(config.with_file_name("inference.token"), format!("{token}\n")).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("# token_file = ", "token_file = ")).unwrap();

    let agent = Reaped(
        Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config", config.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = now() + Duration::from_secs(30);
    while !matches!(http(api, "GET", "/v2/health/live", b""), Ok((200, _))) {
        assert!(now() < until, "the agent's API never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(api, "GET", "/metrics", b"").unwrap().0, 401, "no token");
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let (status, body) = http_with(api, "GET", "/metrics", &bearer, b"").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("outpost_agent_inference_outcomes_dropped"), "{body}");
    drop(agent);

    std::fs::remove_file(config.with_file_name("inference.token")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reading the inference token file") && stderr.contains("inference.token"), "{stderr}");
}
