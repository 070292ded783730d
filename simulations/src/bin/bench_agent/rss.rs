//! Section `rss`: the resident set of a real `outpost-agent run` process left idle, serving a confirmed fixture
//! model, against the same agent with no model assigned; and the agent processes this needs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use outpost_agent::device::{self, Layout};
use outpost_shared::update::Phase;

use crate::fixtures::Loaded;
use crate::hub::Hub;
use crate::report::Row;
use crate::{HEALTH, SETTLE, real_wall};
use outpost_sim::http::{Http, oip_request};
use outpost_sim::procfs::status_kib;

pub(crate) fn agent_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("outpost-agent");
    ensure!(exe.exists(), "{} is missing: run scripts/bench-agent (it builds it)", exe.display());
    Ok(exe)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    for _ in 0..600 {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

struct Rss {
    with_model_kib: u64,
    with_model_peak_kib: u64,
    without_model_kib: u64,
}

fn bench_rss(l: &Loaded) -> Result<Rss> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let hub = Hub::new(real_wall())?;
    let addr = hub.serve(&rt)?;
    hub.publish(&l.model_path, &l.manifest_text, None, "stable")?;
    let exe = agent_exe()?;
    let spawn = |config: &Path| -> Result<Process> {
        let log = std::fs::File::create(config.with_file_name("agent.log"))?;
        Ok(Process(
            Command::new(&exe).arg("run").arg("--config").arg(config).stdout(Stdio::null()).stderr(log).spawn()?,
        ))
    };

    // Without a model: a device approved on a channel nothing is published to.
    let empty = hub.device("empty", 2, addr, "empty", "127.0.0.1:0")?;
    let p = spawn(&empty)?;
    let log = empty.with_file_name("agent.log");
    wait_for("the first check", || Ok(std::fs::read_to_string(&log)?.contains("no model assigned yet")))?;
    std::thread::sleep(SETTLE);
    let without_model_kib = status_kib(p.0.id(), "VmRSS:")?;
    drop(p);

    // With the model: installed, confirmed by real requests over the API, then left alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = hub.device("model", 3, addr, "stable", &format!("127.0.0.1:{port}"))?;
    let p = spawn(&config)?;
    let layout = Layout::new(config.parent().context("dir")?);
    wait_for("activation", || {
        Ok(device::load_state(&layout)?.is_some_and(|s| s.active.is_some() && matches!(s.phase, Phase::Health { .. })))
    })?;
    let api: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut http = None;
    wait_for("the inference API", || {
        http = Http::connect(api).ok();
        Ok(http.is_some())
    })?;
    let mut http = http.context("connected")?;
    // The state file names the package before its model has loaded; the API says when it serves.
    let ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    wait_for("readiness", || Ok(http.exchange(ready)?.0 == 200))?;
    let request = Http::post_request(&format!("/v2/models/{}/infer", l.name()), &oip_request(&l.inputs), None);
    for _ in 0..HEALTH {
        let (status, _) = http.exchange(&request)?;
        ensure!(status == 200, "HTTP {status}");
    }
    drop(http);
    wait_for("confirmation", || Ok(device::load_state(&layout)?.is_some_and(|s| s.phase == Phase::Idle)))?;
    std::thread::sleep(SETTLE);
    let rss = Rss {
        with_model_kib: status_kib(p.0.id(), "VmRSS:")?,
        with_model_peak_kib: status_kib(p.0.id(), "VmHWM:")?,
        without_model_kib,
    };
    drop(p);
    Ok(rss)
}

pub(crate) fn rss_row(ppocr: &Loaded) -> Result<Row> {
    eprintln!("idle RSS of outpost-agent run...");
    let rss = bench_rss(ppocr)?;
    eprintln!(
        "  with {}: VmRSS {} KiB (peak VmHWM {} KiB); without a model: {} KiB",
        ppocr.name(),
        rss.with_model_kib,
        rss.with_model_peak_kib,
        rss.without_model_kib
    );
    Ok(Row::new(
        &format!("idle RSS, outpost-agent run with {}", ppocr.name()),
        format!("{:.1} MiB", rss.with_model_kib as f64 / 1024.0),
        format!("{:.1} MiB same agent, no model", rss.without_model_kib as f64 / 1024.0),
        rss.with_model_kib as f64 / rss.without_model_kib as f64,
        "<= 30 MiB",
    ))
}
