//! Hub replicas on PostgreSQL against the embedded store, measured in one run: update checks per second and
//! telemetry events ingested per second for one hub on redb, one hub on PostgreSQL and two replicas on PostgreSQL.
//!
//! Run through `scripts/bench-replicas`. The hubs are real `outpost-hub serve` processes (set up with the product's
//! own commands); the database is a throwaway cluster made with Debian's server binaries in a temporary directory
//! (Unix socket only, as user `nobody` when run as root; fsync on, unlike the tests' cluster), as the tests make
//! theirs. An update check is what a device does each poll on a warm connection: `GetMetadata(timestamp.json)`
//! then `GetAssignment` (the director's signed assignment: a read of the device and the releases in the store).
//! Telemetry: each device sends batches of [`EVENTS_PER_BATCH`] events, each batch stored before the next.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_net::client::{ClientConfig, HubClient};
use outpost_shared::telemetry::{Batch, BatchLimits, Event, EventKind};
use outpost_shared::testkit::{AffineManifest, affine_model};

/// Devices, one warm connection each, spread over the replicas.
const CONNECTIONS: usize = 32;
/// How long each workload runs against each deployment.
const DURATION: Duration = Duration::from_secs(8);
const EVENTS_PER_BATCH: u64 = 16;
/// The database superuser the cluster is made with.
const SUPERUSER: &str = "outpost";

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn now() -> Instant {
    Instant::now()
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `program`, as `nobody` when this runs as root (initdb and postgres refuse root).
fn unprivileged(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The newest Debian PostgreSQL's binaries, or `$OUTPOST_PG_BIN`.
fn pg_bin() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OUTPOST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install Debian's `postgresql` package")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// A running throwaway cluster; it stops, and its directory goes, when the keeper's stdin closes (on drop or exit).
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    _keeper: (Child, ChildStdin),
}

impl Postgres {
    fn start() -> Result<Postgres> {
        let bin = pg_bin()?;
        let dir = std::env::temp_dir().join(format!("outpost-bench-pg-{}", std::process::id()));
        let mut mkdir = unprivileged(Path::new("mkdir"));
        ensure!(mkdir.args(["-m", "700"]).arg(&dir).status()?.success(), "mkdir {}", dir.display());
        let mut initdb = unprivileged(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--no-locale"]);
        let out = initdb.output()?;
        ensure!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let script = r#"
            "$1/postgres" -D "$2/data" -k "$2" -p 5432 -c listen_addresses= -c max_connections=200 \
                > "$2/server.log" 2>&1 &
            pid=$!
            cat > /dev/null
            kill -INT "$pid"
            wait "$pid"
            rm -rf "$2"
        "#;
        let mut keeper = unprivileged(Path::new("sh"));
        let mut child = keeper
            .args(["-c", script, "keeper"])
            .arg(&bin)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().context("keeper stdin")?;
        let pg = Postgres { dir, bin, _keeper: (child, stdin) };
        let started = now();
        loop {
            let ready = Command::new(pg.bin.join("pg_isready"))
                .arg("-h")
                .arg(&pg.dir)
                .args(["-p", "5432", "-U", SUPERUSER, "-q"])
                .status()?;
            if ready.success() {
                return Ok(pg);
            }
            ensure!(started.elapsed() < Duration::from_secs(60), "PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new database; its connection string.
    fn database(&self, name: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.dir)
            .args(["-p", "5432", "-U", SUPERUSER, "-d", "postgres", "-c", &format!("CREATE DATABASE {name}")])
            .output()?;
        ensure!(out.status.success(), "CREATE DATABASE: {}", String::from_utf8_lossy(&out.stderr));
        Ok(format!("host={} port=5432 user={SUPERUSER} dbname={name}", self.dir.display()))
    }
}

fn cli(bin: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin).arg("--data-dir").arg(dir).args(args).output()?;
    ensure!(out.status.success(), "outpost-hub {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn device(i: usize) -> Identity {
    Identity::from_seed([4 + i as u8; 32])
}

/// Data directories for `replicas` hubs (on `postgres` when given, with a shared directory), set up through the
/// first: keys, one package published on `stable`, [`CONNECTIONS`] devices approved; attestation off.
fn setup(bin: &Path, tmp: &Path, replicas: usize, postgres: Option<&str>) -> Result<Vec<PathBuf>> {
    let shared = tmp.join("shared");
    std::fs::create_dir_all(&shared)?;
    let mut dirs = Vec::new();
    for i in 0..replicas {
        let dir = tmp.join(format!("hub{i}"));
        cli(bin, &dir, &["init"])?;
        let config = dir.join("hub.toml");
        let mut text = std::fs::read_to_string(&config)?.replace("required = true", "required = false");
        if let Some(url) = postgres {
            text = text
                .replace("# postgres = \"\"", &format!("postgres = \"{url}\""))
                .replace("# shared_dir = \"\"", &format!("shared_dir = \"{}\"", shared.display()));
        }
        std::fs::write(&config, text)?;
        dirs.push(dir);
    }
    let first = &dirs[0];
    if postgres.is_some() {
        cli(bin, first, &["migrate"])?;
    }
    let offline = tmp.join("offline");
    cli(bin, first, &["keys", "generate", "--offline-dir", &offline.display().to_string()])?;
    let m = AffineManifest::new("bench", "1.0.0", 2.0, 1.0);
    let (model, manifest) = (tmp.join("bench.onnx"), tmp.join("bench.toml"));
    std::fs::write(&model, affine_model(m.scale, m.bias))?;
    std::fs::write(&manifest, m.toml())?;
    cli(bin, first, &["package", "add", &model.display().to_string(), "--manifest", &manifest.display().to_string()])?;
    let key = offline.join("targets-1.key").display().to_string();
    cli(bin, first, &["release", "publish", "bench@1.0.0", "--channel", "stable", "--key", &key])?;
    for i in 0..CONNECTIONS {
        cli(bin, first, &["device", "approve", &device(i).public_key().to_hex(), "--channel", "stable"])?;
    }
    Ok(dirs)
}

/// A serving replica: its process and where devices reach it.
struct Serving {
    child: Child,
    addr: SocketAddr,
    key: PublicKey,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(bin: &Path, dir: &Path) -> Result<Serving> {
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir)
        .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("serve stderr")?).lines();
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if let (Some(addr), Some(key)) = (v["addr"].as_str(), v["hub_key"].as_str()) {
            let (addr, key) = (addr.parse()?, key.parse().map_err(|e| anyhow::anyhow!("hub key: {e:?}"))?);
            // Keep reading its log, so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(Serving { child, addr, key });
        }
    }
    bail!("outpost-hub serve ({}) ended before serving", dir.display())
}

#[derive(Clone, Copy)]
enum Work {
    Check,
    Telemetry,
}

/// Operations per second (checks, or telemetry events) of [`CONNECTIONS`] devices spread over `replicas`.
fn rate(replicas: &[Serving], work: Work) -> Result<f64> {
    let targets: Vec<(SocketAddr, PublicKey)> = replicas.iter().map(|r| (r.addr, r.key)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let mut clients = Vec::new();
        for i in 0..CONNECTIONS {
            let (addr, key) = targets[i % targets.len()];
            let client = HubClient::connect(&device(i), &ClientConfig::new(addr, key)).await?;
            // Warm up, and fail here rather than as a rate of zero.
            client.metadata("timestamp.json", 16_384).await?.context("timestamp.json")?;
            client.assignment().await?.context("no assignment")?;
            clients.push(Arc::new(client));
        }
        let count = Arc::new(AtomicU64::new(0));
        let start = now();
        let mut tasks = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let (c, count) = (c.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = 1;
                while start.elapsed() < DURATION {
                    let done = match work {
                        Work::Check => {
                            let ok = c.metadata("timestamp.json", 16_384).await.is_ok_and(|m| m.is_some())
                                && c.assignment().await.is_ok_and(|a| a.is_some());
                            u64::from(ok)
                        }
                        Work::Telemetry => {
                            let batch = batch(i as u64, seq);
                            seq += EVENTS_PER_BATCH;
                            match batch.encode(&BatchLimits::default()) {
                                Ok(body) if c.telemetry(&body).await.is_ok() => EVENTS_PER_BATCH,
                                _ => 0,
                            }
                        }
                    };
                    count.fetch_add(done, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
    })
}

/// [`EVENTS_PER_BATCH`] events of stream `stream` from `first`.
fn batch(stream: u64, first: u64) -> Batch {
    let at = 1_795_881_600;
    let events = (first..first + EVENTS_PER_BATCH)
        .map(|seq| Event { seq, at, kind: EventKind::Error { what: format!("bench event {seq}") } })
        .collect();
    Batch { stream: stream + 1, first_seq: first, events, dropped: 0 }
}

struct Row {
    name: &'static str,
    checks: f64,
    events: f64,
}

fn measure(name: &'static str, bin: &Path, replicas: usize, postgres: Option<&Postgres>) -> Result<Row> {
    let tmp = tempfile::tempdir()?;
    let url = postgres.map(|pg| pg.database(&format!("bench{replicas}"))).transpose()?;
    let dirs = setup(bin, tmp.path(), replicas, url.as_deref())?;
    let serving = dirs.iter().map(|d| serve(bin, d)).collect::<Result<Vec<_>>>()?;
    let checks = rate(&serving, Work::Check)?;
    let events = rate(&serving, Work::Telemetry)?;
    eprintln!("{name}: {checks:.0} checks/s, {events:.0} telemetry events/s");
    Ok(Row { name, checks, events })
}

fn main() -> Result<()> {
    let bin = outpost_sim::fleet::hub::find_binary()?;
    let pg = Postgres::start()?;
    let rows = [
        measure("1 hub, redb", &bin, 1, None)?,
        measure("1 hub, PostgreSQL", &bin, 1, Some(&pg))?,
        measure("2 replicas, PostgreSQL", &bin, 2, Some(&pg))?,
    ];
    let base = &rows[0];
    let mut out = std::io::stdout().lock();
    writeln!(out, "{CONNECTIONS} devices on warm QUIC connections, {}s per workload", DURATION.as_secs())?;
    writeln!(
        out,
        "{:<24} {:>16} {:>8} {:>20} {:>8}",
        "deployment", "update checks/s", "vs redb", "telemetry events/s", "vs redb"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<24} {:>16.0} {:>7.2}x {:>20.0} {:>7.2}x",
            r.name,
            r.checks,
            r.checks / base.checks,
            r.events,
            r.events / base.events
        )?;
    }
    Ok(())
}
