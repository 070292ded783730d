//! `outpost-agent`: the edge agent's command line — set a device up, run the update loop, show its state.
//!
//! One-shot commands write human-readable progress to stderr and values a script wants (the device key) to stdout;
//! `run` logs through `tracing` on stderr (`--log-format text|json`, `--log-level`; `outpost_net::logging`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::device::{self, Layout};
use outpost_agent::driver::{Agent, init_device, load_slot};
use outpost_agent::inference::{
    BearerToken, DEFAULT_OUTCOME_CAPACITY, ModelHandle, OutcomeReceiver, Routes, ServeLimits, infer_once,
    serve_with_routes,
};
use outpost_shared::clock::{Clock, format_rfc3339};
use outpost_shared::update::Phase;

/// Outpost agent: keeps a device running a verified model from the hub, and serves it locally.
#[derive(Parser, Debug)]
#[command(name = "outpost-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `run` runs.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A device: update, verify, serve models.
    Device,
    /// A site node: serve one site's devices and apply the site policy for all of them (an agent built with the
    /// `site` feature).
    Site,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set up a device directory: a commented agent.toml, a new Ed25519 identity (mode 0600), the pinned TUF
    /// root and hub key. Prints the device key to approve on the hub.
    Init {
        /// The hub's UDP address, e.g. 10.0.0.5:7443. Repeat it for a hub served by replicas (one `--hub` per
        /// replica, in the order they are tried: agent.toml's `[hub] addresses`); they share one hub key.
        #[arg(long, value_name = "ADDR", required = true)]
        hub: Vec<String>,
        /// The hub's public key (`outpost-hub identity`; every replica presents it).
        #[arg(long, value_name = "KEY")]
        hub_key: String,
        /// The hub's first root metadata (`repository/metadata/1.root.json`), obtained out of band.
        #[arg(long, value_name = "root.json")]
        root: PathBuf,
        /// The device directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// A one-time enrolment token (`outpost-hub device token`): the first connection enrols this device with
        /// it, no `device approve` needed.
        #[arg(long, value_name = "T")]
        token: Option<String>,
    },
    /// Run the update loop: check the hub every poll interval, install, health-check, roll back. With
    /// `--mode site`, run as a site node instead: serve the hub's protocol to the devices of one site on
    /// `[site] bind`, fetch from the hub on their behalf through a verified cache, and apply the site policy to
    /// the whole site.
    Run {
        /// The agent's configuration.
        #[arg(long, value_name = "FILE", default_value = "agent.toml")]
        config: PathBuf,
        /// Check once and exit (for scripts and tests; device mode only).
        #[arg(long)]
        once: bool,
        /// `device` (update and serve models) or `site` (a site node for the devices of one site).
        #[arg(long, value_enum, default_value_t = Mode::Device)]
        mode: Mode,
        /// Log lines on stderr as `text` (for people; colour only on a terminal) or `json` (one object per line).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Which log events to write, in `RUST_LOG` syntax (`debug`, `outpost_agent=debug,info`); default:
        /// `$RUST_LOG`, else `info`.
        #[arg(long, value_name = "FILTER")]
        log_level: Option<String>,
    },
    /// One-shot inference on the active model for scripts: an Open Inference Protocol v2 request body in FILE
    /// (`{"inputs":[{"name","shape","datatype","data"}]}`), the response JSON on stdout.
    Infer {
        /// The agent's configuration.
        #[arg(long, value_name = "FILE", default_value = "agent.toml")]
        config: PathBuf,
        /// The request body (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
    },
    /// Show the active and previous packages, the last check, the last error and the pending work.
    Status {
        /// The agent's configuration.
        #[arg(long, value_name = "FILE", default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Print this device's TPM enrolment facts (attestation key and boot PCR values, from `[attestation] tpm`) as
    /// one hex line, for `outpost-hub device tpm KEY FACTS` at provisioning, in a known-good state.
    TpmFacts {
        /// The agent's configuration.
        #[arg(long, value_name = "FILE", default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Print the shell completion script for SHELL on stdout (the Debian package installs bash, zsh and fish).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: outpost_net::docs::Shell,
    },
    /// Write the man pages, outpost-agent.1 and one per subcommand (outpost-agent-run.1, ...), into DIR.
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Site policy tools for admins.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Dry run: evaluate a site policy against a package file (.opkg) or a bare manifest, and print the
    /// decision and every rule evaluated. Exit status: 0 accept, 2 defer, 3 reject, 1 error (a policy that does
    /// not load, an unreadable package). Release facts that only TUF knows (channel, release time, signers)
    /// can be given with --channel, --published and --signer; rules that need them and lack them reject.
    Check {
        /// The site policy (TOML).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// A package file (.opkg), as `outpost-hub reconstruct` writes it.
        #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
        package: Option<PathBuf>,
        /// A bare manifest (TOML) instead of a package; the model's size is then unknown.
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// Evaluate at this time (RFC 3339) instead of now: maintenance windows and soak times.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// A channel the release is on.
        #[arg(long, value_name = "NAME")]
        channel: Vec<String>,
        /// When the release was published (RFC 3339).
        #[arg(long, value_name = "TIME")]
        published: Option<String>,
        /// Key id of a targets key that signed the release.
        #[arg(long, value_name = "KEYID")]
        signer: Vec<String>,
        /// A WASM policy module (binary or text), run after the declarative rules (repeatable).
        #[arg(long, value_name = "FILE")]
        wasm: Vec<PathBuf>,
    },
}

/// Real time, injected into the library at this edge.
struct SystemClock;

#[allow(clippy::disallowed_methods)] // The binary is where real time enters.
impl Clock for SystemClock {
    fn wall(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
    fn monotonic(&self) -> Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Policy {
            command: PolicyCmd::Check { policy, package, manifest, at, channel, published, signer, wasm },
        } => {
            let release = Release { channels: channel, published, signers: signer };
            policy_check(&policy, &wasm, package.as_deref(), manifest.as_deref(), at.as_deref(), release)
        }
        command => run(command).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            outpost_net::logging::fatal(&outpost_shared::errors::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Init { hub, hub_key, root, dir, token } => {
            let config_path = dir.join("agent.toml");
            if config_path.exists() {
                anyhow::bail!("{} exists; this device is already set up", config_path.display());
            }
            let text = config::render_replicas(&hub, &hub_key);
            AgentConfig::parse(&text, &config_path)?; // refuse a bad address or key before writing anything
            let root_json = std::fs::read(&root).with_context(|| format!("reading {}", root.display()))?;
            let mut seed = [0u8; 32];
            getrandom_bytes(&mut seed)?;
            let key = init_device(&dir, &root_json, seed)?;
            if let Some(token) = &token {
                outpost_agent::driver::store_enrolment_token(&dir, token)?;
            }
            device::write_atomic(&config_path, text.as_bytes())?;
            if token.is_some() {
                eprintln!("device set up in {}; it enrols with the token on its first connection", dir.display());
            } else {
                eprintln!("device set up in {}; approve it on the hub with:", dir.display());
                eprintln!("  outpost-hub device approve {key} --channel stable");
            }
            println!("{key}");
        }
        Command::Run { config, once, mode, log_format, log_level } => {
            outpost_net::allocator::tune().context("re-executing the agent with its malloc tunables")?;
            outpost_net::logging::init(log_format.parse()?, log_level.as_deref())?;
            let config = AgentConfig::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            match mode {
                Mode::Device => runtime.block_on(run_agent(config, once))?,
                Mode::Site => run_site(&runtime, config)?,
            }
        }
        Command::Status { config } => status(&AgentConfig::load(&config)?)?,
        Command::TpmFacts { config } => {
            let config = AgentConfig::load(&config)?;
            let tpm =
                config.tpm.context("agent.toml has no [attestation] tpm: this device attests at the software tier")?;
            let boot = tpm.boot_pcrs;
            let facts = outpost_agent::attest::DeviceTpm::new(tpm)?.enrolment()?;
            eprintln!(
                "TPM attestation key {}…, boot PCRs {boot:#x}; on the hub: outpost-hub device tpm <device key> <these facts>",
                &hex::encode(facts.ak)[..16]
            );
            println!("{}", hex::encode(facts.to_bytes()));
        }
        Command::Infer { config, input } => {
            let config = AgentConfig::load(&config)?;
            let layout = Layout::new(&config.data_dir);
            let lanes = device::load_device_state(&layout, |_| String::new())?
                .context("the agent has not run yet: no model installed")?;
            let primary = lanes.primary.clone().or_else(|| lanes.lanes.keys().next().cloned()).unwrap_or_default();
            let lane = lanes.lanes.get(&primary).context("no active model")?;
            let active = lane.state.active.clone().context("no active model")?;
            let dir = layout.lane_slot(&primary, lane.legacy_slots, active.slot);
            let served = load_slot(&dir, &active.target.digest)?;
            let body = if input.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
                b
            } else {
                std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?
            };
            let response = infer_once(&served, &body).map_err(|e| anyhow::anyhow!("{e} (HTTP {})", e.status()))?;
            println!("{}", serde_json::to_string_pretty(&response)?);
        }
        Command::Completions { shell } => {
            std::io::Write::write_all(&mut std::io::stdout(), &outpost_net::docs::completions(Cli::command(), shell))
                .context("writing the completions to standard output")?;
        }
        Command::Man { out } => {
            let pages = outpost_net::docs::write_man_pages(Cli::command(), &out)?;
            eprintln!("wrote {} man pages into {}", pages.len(), out.display());
        }
        Command::Policy { .. } => unreachable!("handled in main"),
    }
    Ok(())
}

/// `run --mode site`: a site node until interrupted.
#[cfg(feature = "site")]
fn run_site(runtime: &tokio::runtime::Runtime, config: AgentConfig) -> Result<()> {
    let bind = config.site_bind;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    runtime.block_on(outpost_agent::site::run(config, Arc::new(SystemClock), bind, stop))
}

/// `run --mode site` in a build without the site node: refused by name.
#[cfg(not(feature = "site"))]
fn run_site(_: &tokio::runtime::Runtime, _: AgentConfig) -> Result<()> {
    Err(outpost_agent::NotBuilt { what: "a site node (`run --mode site`)", feature: "site" }.into())
}

/// Release facts given on the command line for a dry run.
struct Release {
    channels: Vec<String>,
    published: Option<String>,
    signers: Vec<String>,
}

fn rfc3339(s: &str) -> Result<u64> {
    let t: jiff::Timestamp = s.parse().with_context(|| format!("`{s}` is not an RFC 3339 time"))?;
    u64::try_from(t.as_second()).context("a time before 1970")
}

fn policy_check(
    policy_path: &Path,
    wasm: &[PathBuf],
    package: Option<&Path>,
    manifest: Option<&Path>,
    at: Option<&str>,
    release: Release,
) -> Result<ExitCode> {
    use outpost_agent::site_policy::{PolicySource, SitePolicy};
    use outpost_shared::policy::{Decision, PackageFacts};
    let policy = SitePolicy::load(&PolicySource { file: policy_path.into(), wasm: wasm.to_vec() })?;
    let (mut facts, what) = match (package, manifest) {
        (Some(p), _) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            let pkg = outpost_shared::Package::decode(&bytes, &outpost_shared::PackageLimits::default())
                .with_context(|| format!("{} is not a valid package", p.display()))?;
            (PackageFacts::from_manifest(&pkg.manifest, Some(pkg.model.len() as u64)), p)
        }
        (None, Some(m)) => {
            let text = std::fs::read_to_string(m).with_context(|| format!("reading {}", m.display()))?;
            (
                PackageFacts::from_manifest(
                    &outpost_shared::Manifest::from_toml(&text, &m.display().to_string())?,
                    None,
                ),
                m,
            )
        }
        (None, None) => anyhow::bail!("give a package file or --manifest FILE"),
    };
    facts.channels = (!release.channels.is_empty()).then_some(release.channels);
    facts.published_at = release.published.as_deref().map(rfc3339).transpose()?;
    facts.signers = release.signers;
    let now = match at {
        Some(t) => rfc3339(t)?,
        None => SystemClock.wall(),
    };
    let evaluation = policy.evaluate(&facts, now);

    use std::fmt::Write as _;
    let mut out = String::new();
    let site = policy.site().unwrap_or("(unnamed site)");
    writeln!(out, "policy    {} ({site}, sha256 {})", policy_path.display(), policy.digest().short())?;
    writeln!(out, "package   {}@{} ({})", facts.name, facts.version, what.display())?;
    writeln!(out, "at        {}", format_rfc3339(now))?;
    writeln!(out, "decision  {}", evaluation.decision)?;
    if evaluation.rules.is_empty() {
        writeln!(out, "\n(the policy sets no rules: everything is accepted)")?;
    } else {
        writeln!(out, "\n{:<22} {:<32} DETAIL", "RULE", "OUTCOME")?;
        for r in &evaluation.rules {
            writeln!(out, "{:<22} {:<32} {}", r.rule, r.outcome.to_string(), r.detail)?;
        }
    }
    print_out(&out)?;
    Ok(match evaluation.decision {
        Decision::Accept => ExitCode::SUCCESS,
        Decision::Defer { .. } => ExitCode::from(2),
        Decision::Reject { .. } => ExitCode::from(3),
    })
}

/// Random bytes from the kernel's generator (key seeds at setup).
fn getrandom_bytes(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)?;
    Ok(())
}

async fn run_agent(config: AgentConfig, once: bool) -> Result<()> {
    let bind = config.inference_bind;
    let config_socket = config.inference_socket.clone();
    // Read before anything serves: a token file that does not load stops the agent rather than open the API.
    let token = config.inference_token_file.as_deref().map(BearerToken::load).transpose()?;
    // Every inference that reached the model feeds the health window of the package on trial, through a bounded
    // queue the inference threads never wait on.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (models, outcomes) = ModelHandle::with_outcomes(clock.clone(), DEFAULT_OUTCOME_CAPACITY);
    let models = Arc::new(models);
    // Routes (`/v2/models/{route}/infer`) by the router package the hub assigns, over the agent's model.
    let routes = Arc::new(Routes::new(clock.clone(), Default::default()));
    routes.serve_handle(models.clone());
    let mut agent = Agent::open_with(config, clock, models.clone())?;
    agent.set_routes(routes.clone());
    let span = tracing::info_span!("agent", device = %agent.device_short());
    let api = Api { models, routes, bind, socket: config_socket, token };
    tracing::Instrument::instrument(update_loop(agent, api, once, outcomes), span).await
}

/// What the inference API serves, where (TCP, and a Unix socket if configured), and the token it requires.
struct Api {
    models: Arc<ModelHandle>,
    routes: Arc<Routes>,
    bind: std::net::SocketAddr,
    socket: Option<std::path::PathBuf>,
    token: Option<BearerToken>,
}

/// The update loop of `run` (device mode), with the inference API beside it unless `once`.
async fn update_loop(mut agent: Agent, api: Api, once: bool, mut outcomes: OutcomeReceiver) -> Result<()> {
    if let Some(a) = agent.active() {
        tracing::info!(package = a.digest().short(), "serving {} {}", a.name(), a.version());
    }
    if !once {
        let Api { models, routes, bind, socket, token } = api;
        let listener = tokio::net::TcpListener::bind(bind).await.with_context(|| format!("binding {bind}"))?;
        let access = if token.is_some() { "bearer token required" } else { "no token" };
        tracing::info!(%bind, "inference API (Open Inference Protocol v2) on http://{bind}/v2 ({access})");
        if let Some(path) = socket {
            let unix = outpost_agent::inference::bind_unix(&path)
                .with_context(|| format!("binding the inference API's Unix socket {}", path.display()))?;
            tracing::info!(socket = %path.display(), "inference API also on Unix socket {} ({access})", path.display());
            let api = serve_with_routes(
                unix,
                models.clone(),
                routes.clone(),
                ServeLimits::default(),
                token.clone(),
                std::future::pending(),
            );
            tokio::spawn(tracing::Instrument::in_current_span(api));
        }
        let api = serve_with_routes(listener, models, routes, ServeLimits::default(), token, std::future::pending());
        tokio::spawn(tracing::Instrument::in_current_span(api));
    }
    // One stream per signal for the whole run: a signal that arrives mid-check is kept until the loop looks.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Revocation notices pushed by the hub on the connection of the last check (each connection has its own).
    let mut notices = None;
    // What the last check said the device runs.
    let mut shown = String::new();
    // The update loop decides when to check and when a health window ends; this loop sleeps until then, or until
    // an inference outcome, a pushed notice or a signal.
    // A step whose state cannot be saved (a full disk) is not a reason to stop serving: the loop keeps its last
    // saved state, says so once, and takes the step again after a pause.
    let mut unsaved = Unsaved::default();
    loop {
        if agent.check_due() {
            // A failed check is logged by the check itself.
            if agent.check().await.is_ok() {
                describe(&agent, &mut shown);
            }
            if once {
                return Ok(agent.shutdown()?);
            }
            notices = agent.notices();
        }
        unsaved.note(agent.tick());
        let pushed = async {
            match notices.as_mut() {
                Some(n) => n.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            open = pushed => {
                if open {
                    tracing::info!("the hub announced a revocation: checking now");
                } else {
                    notices = None; // the connection closed: the next check connects afresh
                }
                agent.check_now();
            }
            Some(outcome) = outcomes.recv() => unsaved.note(agent.record_outcome(outcome)),
            _ = interrupt.recv() => {
                tracing::info!("stopping");
                return Ok(agent.shutdown()?);
            }
            _ = terminate.recv() => {
                tracing::info!("stopping");
                return Ok(agent.shutdown()?);
            }
            () = tokio::time::sleep(unsaved.pause(agent.until_next_deadline())) => {}
        }
    }
}

/// Whether the update loop's last step failed (its state could not be saved): logged once when it starts failing
/// and once when it works again, and the loop pauses between attempts.
#[derive(Default)]
struct Unsaved(bool);

impl Unsaved {
    /// Shortest pause between two attempts at a step that failed.
    const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

    fn note(&mut self, result: Result<(), outpost_agent::driver::CheckError>) {
        match (result, self.0) {
            (Err(e), false) => {
                tracing::error!(error = %e, "the update loop cannot save its state: still serving the active model; retrying");
                self.0 = true;
            }
            (Err(e), true) => tracing::debug!(error = %e, "the update loop still cannot save its state"),
            (Ok(()), true) => {
                tracing::info!("the update loop saves its state again");
                self.0 = false;
            }
            (Ok(()), false) => {}
        }
    }

    fn pause(&self, until_next: std::time::Duration) -> std::time::Duration {
        if self.0 { until_next.max(Self::RETRY) } else { until_next }
    }
}

/// Says what the device runs after a check, at `info` when it changed since the last check (`shown`), else at
/// `debug`: a device that polls every minute does not repeat itself every minute.
fn describe(agent: &Agent, shown: &mut String) {
    let s = agent.state();
    let (package, now) = match (&s.active, &s.phase) {
        (_, Phase::Health { target, ok, .. }) => {
            (Some(target.digest.short()), format!("on trial: {} ({ok} good inferences)", target.path))
        }
        (Some(a), _) => (Some(a.target.digest.short()), format!("running {}", a.target.path)),
        (None, _) => (None, "no model assigned yet".to_owned()),
    };
    if now == *shown {
        tracing::debug!(package, "{now}");
    } else {
        tracing::info!(package, "{now}");
        *shown = now;
    }
}

fn status(config: &AgentConfig) -> Result<()> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let layout = Layout::new(&config.data_dir);
    let Some(s) = device::load_state(&layout)? else {
        return print_out("no update state yet: the agent has not run (`outpost-agent run`)\n");
    };
    let show = |i: &Option<outpost_shared::update::Installed>| {
        i.as_ref()
            .map_or("-".to_owned(), |i| format!("{} ({}, slot {:?})", i.target.path, i.target.digest.short(), i.slot))
    };
    writeln!(out, "active      {}", show(&s.active))?;
    writeln!(out, "last good   {}", show(&s.last_good))?;
    writeln!(out, "fallback    {}", show(&s.fallback))?;
    writeln!(out, "last check  {}", s.last_check.map_or("never".into(), format_rfc3339))?;
    writeln!(out, "last error  {}", s.last_error.as_deref().unwrap_or("-"))?;
    let pending = match &s.phase {
        Phase::Idle => "none".to_owned(),
        Phase::Downloading { target } => format!("downloading {}", target.path),
        Phase::Staging { target, slot } => format!("staging {} into slot {slot:?}", target.path),
        Phase::Health { target, ok, since, .. } => {
            format!("health window for {} since {} ({ok} good inferences)", target.path, format_rfc3339(*since))
        }
    };
    writeln!(out, "pending     {pending}")?;
    writeln!(out, "assignment  v{}", s.assignment_version)?;
    if !s.rolled_back.is_empty() {
        let list: Vec<String> = s.rolled_back.iter().map(|d| d.short()).collect();
        writeln!(out, "rolled back {} (not reinstalled)", list.join(", "))?;
    }
    if let Some(p) = s.policy {
        writeln!(out, "policy      {} (site {})", p.short(), s.site.as_deref().unwrap_or("unnamed"))?;
    }
    for r in &s.refused {
        let until = r.until.map(|t| format!(" until {}", format_rfc3339(t))).unwrap_or_default();
        let by = if r.by_site { "site" } else { "device" };
        writeln!(
            out,
            "refused     {} ({}) {}{until} by {by} policy: rule `{}`: {}",
            r.package,
            r.digest.short(),
            r.verb(),
            r.rule,
            r.reason
        )?;
    }
    // The other capabilities' lanes, one line each.
    let lanes = device::load_device_state(&layout, |_| String::new())?.unwrap_or_default();
    let primary = lanes.primary.clone().or_else(|| lanes.lanes.keys().next().cloned());
    for (capability, lane) in lanes.lanes.iter().filter(|(c, _)| Some(*c) != primary.as_ref()) {
        let report = lane.state.lane_report();
        let active = report.active.map_or("-".to_owned(), |d| d.short());
        writeln!(out, "lane        {capability}: active {active}, {}", report.phase)?;
        for r in &lane.state.refused {
            writeln!(
                out,
                "              {} {} ({}): rule `{}`: {}",
                r.verb(),
                r.package,
                r.digest.short(),
                r.rule,
                r.reason
            )?;
        }
    }
    print_out(&out)
}

/// Writes to stdout; a reader that went away (`| head`, `| grep -q`) is not an error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_name_every_real_subcommand() {
        let paths = outpost_net::docs::subcommand_paths(&Cli::command());
        for known in ["init", "run", "status", "policy check", "completions", "man"] {
            assert!(paths.iter().any(|p| p == known), "{known} missing from {paths:?}");
        }
        assert_eq!(outpost_net::docs::missing(&Cli::command()), Vec::<String>::new());
    }
}
