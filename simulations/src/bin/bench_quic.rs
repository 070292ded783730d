//! Hub service benchmarks against nginx, each measured in one run and printed as a ratio:
//! update checks per second on warm QUIC connections vs nginx serving `timestamp.json` over TLS 1.3 keep-alive
//! (wrk); full update checks (a new connection, attestation, then `timestamp.json`) vs nginx with a new TLS 1.3
//! connection per request (wrk, `Connection: close`); and target download throughput over QUIC vs nginx HTTPS
//! (curl) for the same file.
//!
//! Run through `scripts/bench-quic`, which installs nginx, wrk and curl from Debian packages if missing.
//! Both servers get one worker (nginx `worker_processes 1`; the hub a one-thread tokio runtime); both load
//! generators get one thread and 64 connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use outpost_attestation::identity::Identity;
use outpost_hub::Registry;
use outpost_hub::backend::HubBackend;
use outpost_hub::clock::SystemClock;
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_net::client::{ClientConfig, HubClient};
use outpost_net::server::{ServeConfig, Server};
use outpost_shared::clock::Clock;
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::{AffineManifest, affine_model_sized};

const CONNECTIONS: usize = 64;
const DURATION: Duration = Duration::from_secs(10);
/// 16 Mi floats: a 64 MiB model, so a ~64 MiB package.
const PADDING_FLOATS: usize = 16 * 1024 * 1024;
const DOWNLOAD_RUNS: usize = 3;

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn now() -> Instant {
    Instant::now()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Setup {
    _tmp: tempfile::TempDir,
    hub_dir: PathBuf,
    export: PathBuf,
    target_path: String,
    stored_target: String,
    target_len: u64,
}

/// A hub with one package of `padding` floats published; attestation off (`attested`: required, with reference
/// values for this executable, whose process attests as the agent does).
fn setup(padding: usize, attested: bool) -> Result<Setup> {
    let tmp = tempfile::tempdir()?;
    let hub_dir = tmp.path().join("hub");
    Registry::init(&hub_dir)?;
    if attested {
        require_attestation(&hub_dir)?;
    } else {
        // The warm-check and download rows measure the update path alone.
        outpost_hub::config::set_attestation_required(&hub_dir, false)?;
    }
    let repo = TufRepo::new(&hub_dir, Default::default());
    let offline = tmp.path().join("offline");
    let now = SystemClock.wall();
    repo.generate(&offline, GenerateOptions::default(), &mut SeededRng::new(1), now)?;
    let m = AffineManifest::new("big", "1.0.0", 2.0, 1.0);
    let model = tmp.path().join("big.onnx");
    let manifest = tmp.path().join("big.toml");
    std::fs::write(&model, affine_model_sized(m.scale, m.bias, padding))?;
    std::fs::write(&manifest, m.toml())?;
    let (record, parsed) = {
        let reg = Registry::open(&hub_dir, Arc::new(SystemClock))?;
        let d = reg.add(&model, &manifest)?.digest;
        (reg.record(&d)?.context("record")?, reg.manifest(&d)?.1)
    };
    let key_path = offline.join("targets-1.key");
    repo.publish(&record, &parsed, "stable", &Key::load(&key_path)?, &key_path, now)?;
    let export = tmp.path().join("export");
    repo.export(&export)?;
    let target_path = outpost_hub::tuf::target_path(&parsed);
    let stored_target = outpost_shared::director::stored_target_path(&target_path, &record.digest);
    Ok(Setup { hub_dir, export, target_path, stored_target, target_len: record.package_len, _tmp: tmp })
}

/// Sets `dir`'s hub to require attestation, trusting a fresh team key that signs this executable as an agent build.
fn require_attestation(dir: &Path) -> Result<()> {
    use outpost_attestation::{ReferenceValues, SoftwareRef};
    let team = Identity::from_seed([9; 32]);
    let config = dir.join(outpost_hub::config::CONFIG_FILE);
    let text = std::fs::read_to_string(&config)?;
    anyhow::ensure!(text.contains("# team_key = "), "{}: no team_key line to set", config.display());
    let team_line = format!("team_key = \"{}\"", team.public_key().to_hex());
    std::fs::write(&config, text.replacen("# team_key = ", &format!("{team_line}\n# was: "), 1))?;
    outpost_hub::config::set_attestation_required(dir, true)?;
    let now = SystemClock.wall();
    let software = vec![SoftwareRef {
        name: outpost_agent::attest::SWNAME.into(),
        version: outpost_agent::attest::SWVERSION.into(),
        sha256: outpost_agent::attest::software_digest()?,
        revoked: false,
    }];
    let doc = ReferenceValues { serial: 1, issued_at: now, expires: now + 86_400, software };
    let hub = outpost_hub::config::HubConfig::load(&config)?;
    outpost_hub::attest::install_reference_values(dir, &hub.attestation, &doc.sign(&team), Arc::new(SystemClock))
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Starts the hub's QUIC service on its own one-thread runtime; returns its address and key, and the first of
/// [`CONNECTIONS`] approved devices (device `i` is `Identity::from_seed([4 + i; 32])`).
fn start_hub(s: &Setup) -> Result<(SocketAddr, outpost_attestation::identity::PublicKey, Identity)> {
    let hub_id = Identity::from_seed([3; 32]);
    let hub_key = hub_id.public_key();
    let device = Identity::from_seed([4; 32]);
    let reg = Registry::open(&s.hub_dir, Arc::new(SystemClock))?;
    for i in 0..CONNECTIONS {
        reg.device_approve(&device_identity(i).public_key().to_hex(), "stable")?;
    }
    drop(reg);
    let backend =
        Arc::new(HubBackend::new(&s.hub_dir, TufRepo::new(&s.hub_dir, Default::default()), Arc::new(SystemClock)));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let mut config = ServeConfig::new(hub_id);
            config.bind = "127.0.0.1:0".parse().expect("addr");
            config.max_connections = 4 * CONNECTIONS;
            let server = Server::bind(config, backend).expect("bind");
            tx.send(server.local_addr().expect("addr")).expect("send");
            server.run(std::future::pending()).await;
        });
    });
    Ok((rx.recv()?, hub_key, device))
}

fn quic_checks_per_sec(
    addr: SocketAddr,
    hub_key: outpost_attestation::identity::PublicKey,
    device: &Identity,
) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let config = ClientConfig::new(addr, hub_key);
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(Arc::new(HubClient::connect(device, &config).await?));
        }
        // Warm up: one check per connection.
        for c in &clients {
            c.metadata("timestamp.json", 16_384).await?.context("timestamp.json")?;
        }
        let count = Arc::new(AtomicU64::new(0));
        let start = now();
        let mut tasks = Vec::new();
        for c in &clients {
            let (c, count) = (c.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                while now().duration_since(start) < DURATION {
                    if c.metadata("timestamp.json", 16_384).await.is_ok_and(|m| m.is_some()) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(count.load(Ordering::Relaxed) as f64 / now().duration_since(start).as_secs_f64())
    })
}

fn device_identity(i: usize) -> Identity {
    Identity::from_seed([4 + i as u8; 32])
}

/// Full update checks per second: [`CONNECTIONS`] devices, each in a loop of a new connection (full QUIC
/// handshake), attestation (challenge, evidence signed, appraised), `GetMetadata(timestamp.json)`, close. Also
/// returns the checks that failed, by error (its message with its causes).
fn quic_full_checks_per_sec(
    addr: SocketAddr,
    hub_key: outpost_attestation::identity::PublicKey,
) -> Result<(f64, BTreeMap<String, u64>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let config = Arc::new(ClientConfig::new(addr, hub_key));
        // One full check per device first: a setup error shows here, not as a rate of zero.
        full_check(Arc::new(device_identity(0)), config.clone()).await?;
        let (count, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(BTreeMap::<String, u64>::new())));
        let start = now();
        let mut tasks = Vec::new();
        for i in 0..CONNECTIONS {
            let (device, config, count, failed) =
                (Arc::new(device_identity(i)), config.clone(), count.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while now().duration_since(start) < DURATION {
                    match full_check(device.clone(), config.clone()).await {
                        Ok(()) => count.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            *failed
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .entry(format!("{e:#}"))
                                .or_default() += 1;
                            0
                        }
                    };
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let rate = count.load(Ordering::Relaxed) as f64 / now().duration_since(start).as_secs_f64();
        let failed = std::mem::take(&mut *failed.lock().unwrap_or_else(PoisonError::into_inner));
        Ok((rate, failed))
    })
}

/// One full check of [`quic_full_checks_per_sec`].
async fn full_check(device: Arc<Identity>, config: Arc<ClientConfig>) -> Result<()> {
    let facts = outpost_agent::attest::Facts { bootcount: 0, model: None, policy: None };
    let client = HubClient::connect(&device, &config).await?;
    let attested = outpost_agent::attest::attest(&client, &device, &facts, None).await?;
    anyhow::ensure!(matches!(attested, outpost_agent::attest::Outcome::Attested(_)), "not appraised");
    client.metadata("timestamp.json", 16_384).await?.context("timestamp.json")?;
    client.close().await;
    Ok(())
}

fn quic_download_gbps(
    s: &Setup,
    addr: SocketAddr,
    hub_key: outpost_attestation::identity::PublicKey,
    device: &Identity,
) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = HubClient::connect(device, &ClientConfig::new(addr, hub_key)).await?;
        let mut runs = Vec::new();
        for _ in 0..=DOWNLOAD_RUNS {
            let start = now();
            let range = client
                .download_target(&s.stored_target, 0, s.target_len, &mut tokio::io::sink())
                .await?
                .context("target")?;
            anyhow::ensure!(range.len == s.target_len, "short download");
            runs.push(s.target_len as f64 / now().duration_since(start).as_secs_f64() / 1e9);
        }
        runs.remove(0); // warm-up
        Ok(median(runs))
    })
}

struct Nginx {
    child: Child,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn start_nginx(root: &Path, work: &Path) -> Result<Nginx> {
    std::fs::create_dir_all(work)?;
    let (cert, key) = (work.join("cert.pem"), work.join("key.pem"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !ok.success() {
        bail!("openssl could not make a test certificate");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = format!(
        "user root;\nworker_processes 1;\ndaemon off;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 100000000;\n  keepalive_timeout 60s;\n\
         client_body_temp_path {w}; proxy_temp_path {w}; fastcgi_temp_path {w}; uwsgi_temp_path {w}; scgi_temp_path {w};\n\
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n    root {r};\n  }}\n}}\n",
        w = work.display(),
        c = cert.display(),
        k = key.display(),
        r = root.display()
    );
    let conf_path = work.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(work)
        .arg("-c")
        .arg(&conf_path)
        .stderr(Stdio::null())
        .spawn()
        .context("nginx not found: run scripts/bench-quic, which installs it")?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Nginx { child, port });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nginx did not start; see {}/error.log", work.display())
}

/// wrk's requests/s on `timestamp.json`; `close`: a new TLS connection (full handshake) for every request.
fn wrk_requests_per_sec(port: u16, close: bool) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{}s", DURATION.as_secs())])
        .args(if close { &["-H", "Connection: close"][..] } else { &[] })
        .arg(format!("https://127.0.0.1:{port}/metadata/timestamp.json"))
        .output()
        .context("wrk not found: run scripts/bench-quic, which installs it")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:").map(|v| v.trim().parse::<f64>()))
        .context(format!("no Requests/sec in wrk output: {text}"))?
        .map_err(Into::into)
}

fn curl_download_gbps(port: u16, s: &Setup) -> Result<f64> {
    let url = format!("https://127.0.0.1:{port}/targets/{}", s.stored_target);
    let mut runs = Vec::new();
    for _ in 0..=DOWNLOAD_RUNS {
        let out = Command::new("curl")
            .args(["-sk", "--tlsv1.3", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"])
            .arg(&url)
            .output()
            .context("curl not found")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        let secs: f64 = parts.next().context("curl time")?.parse()?;
        let size: f64 = parts.next().context("curl size")?.parse()?;
        anyhow::ensure!(size as u64 == s.target_len, "curl fetched {size} bytes, expected {}", s.target_len);
        runs.push(size / secs / 1e9);
    }
    runs.remove(0);
    Ok(median(runs))
}

fn main() -> Result<()> {
    outpost_sim::log_warnings();
    eprintln!(
        "full update checks: a hub requiring attestation, {CONNECTIONS} devices, {} s each side...",
        DURATION.as_secs()
    );
    let full = setup(1024, true)?;
    let (full_addr, full_key, _) = start_hub(&full)?;
    let full_nginx = start_nginx(&full.export, &full.export.parent().context("tmp")?.join("nginx"))?;
    let (quic_full, quic_full_failed) = quic_full_checks_per_sec(full_addr, full_key)?;
    let nginx_full = wrk_requests_per_sec(full_nginx.port, true)?;
    drop(full_nginx);

    eprintln!("setting up a hub with a {} MiB package...", PADDING_FLOATS * 4 / (1024 * 1024));
    let s = setup(PADDING_FLOATS, false)?;
    let (addr, hub_key, device) = start_hub(&s)?;
    let nginx = start_nginx(&s.export, &s.export.parent().context("tmp")?.join("nginx"))?;

    eprintln!("update checks: {CONNECTIONS} warm connections, {} s each side...", DURATION.as_secs());
    let quic_rps = quic_checks_per_sec(addr, hub_key, &device)?;
    let nginx_rps = wrk_requests_per_sec(nginx.port, false)?;
    eprintln!("downloads of {} ({} bytes), median of {DOWNLOAD_RUNS}...", s.target_path, s.target_len);
    let quic_dl = quic_download_gbps(&s, addr, hub_key, &device)?;
    let nginx_dl = curl_download_gbps(nginx.port, &s)?;

    println!("hub service vs nginx (same machine, same run; one server worker and one client thread each)");
    println!("  update checks/s, QUIC GetMetadata(timestamp.json) : {quic_rps:>10.0}");
    println!("  update checks/s, nginx TLS 1.3 keep-alive (wrk)    : {nginx_rps:>10.0}  (baseline)");
    println!("  ratio                                              : {:>10.2}  (goal >= 1.0)", quic_rps / nginx_rps);
    let failed: u64 = quic_full_failed.values().sum();
    println!("  full checks/s, new QUIC conn + attestation + check : {quic_full:>10.0}  ({failed} failed)");
    for (error, n) in &quic_full_failed {
        println!("    failed {n:>6}: {error}");
    }
    println!("  requests/s, nginx new TLS 1.3 conn each (wrk)      : {nginx_full:>10.0}  (baseline)");
    println!("  ratio                                              : {:>10.2}", quic_full / nginx_full);
    println!("  download GB/s, QUIC GetTarget                      : {quic_dl:>10.2}");
    println!("  download GB/s, nginx HTTPS (curl)                  : {nginx_dl:>10.2}  (baseline)");
    println!("  ratio                                              : {:>10.2}  (goal >= 0.8)", quic_dl / nginx_dl);
    Ok(())
}
