//! The `outpost-hub` command line, one module per command group. Every command that touches the hub runs against
//! a [`Hub`] and writes to an [`Out`], so the same code runs in the CLI process or inside a serving hub (its admin
//! socket), whichever owns the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::Registry;
use outpost_hub::admin::{Handler, Reply, RequestError};
use outpost_hub::service::Hub;
use outpost_shared::audit::Action;

pub mod alias;
pub mod attestation;
pub mod audit;
pub mod capability;
pub mod challenger;
pub mod console;
pub mod controller;
pub mod device;
pub mod fleet;
pub mod keys;
pub mod package;
pub mod release;
pub mod repo;
pub mod serve;
pub mod suite;

use alias::AliasCmd;
use attestation::{AttestationCmd, ReferenceCmd};
use audit::AuditCmd;
use capability::CapabilityCmd;
use challenger::ChallengerCmd;
use console::ConsoleCmd;
use controller::ControllerCmd;
use device::DeviceCmd;
use fleet::FleetCmd;
use keys::KeysCmd;
use package::PackageCmd;
use release::ReleaseCmd;
use repo::RepoCmd;
use suite::{EvalCmd, SuiteCmd};

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Create the data directory with a commented hub.toml, an empty blob store and index.
    Init,
    /// Add, list, show and verify model packages.
    #[command(subcommand)]
    Package(PackageCmd),
    /// Register capabilities (request contract, data class, baseline, risk tier, budget, four owners) and show
    /// each one's boundary: champion per channel, suite, rollback path, owners.
    #[command(subcommand)]
    Capability(CapabilityCmd),
    /// Register write-once evaluation suites (NumPy .npy/.npz inputs, labels or reference outputs, metrics,
    /// budget) and list or show them.
    #[command(subcommand)]
    Suite(SuiteCmd),
    /// Measure a package on a suite with tract on the hub and store the evaluation record; list a package's
    /// records.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// The challenger loop: breed descendants of a capability's champion with an operator (int8, fp16, or an
    /// external command), evaluate them with the champion and a no-op control, decide by thresholds, and keep the
    /// cycle record; list and show cycles.
    #[command(subcommand)]
    Challenger(ChallengerCmd),
    /// The viability controller: score each package of a capability (quality, field reliability, latency, memory,
    /// cost, traffic, staleness, risk) under a versioned policy and propose no-op, archive, shadow, retire or
    /// promote with the rule that fired; explain, approve (carried out as the ordinary operation) or reject.
    /// It never acts by itself.
    #[command(subcommand)]
    Controller(ControllerCmd),
    /// Move and inspect named pointers to packages (stable, canary, ...).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Make and rotate the TUF signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Publish, co-sign and revoke releases (TUF targets).
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// Export or re-sign the TUF repository.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Approve, enrol, list, show and revoke devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// The hash-chained log of admin actions.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The fleet: devices per site and channel, what they run, and their telemetry.
    #[command(subcommand)]
    Fleet(FleetCmd),
    /// The web console's users: `console user add NAME --role viewer|operator` issues a password.
    #[command(subcommand)]
    Console(ConsoleCmd),
    /// The central team's attestation key and signed reference values (which agent builds may be served).
    #[command(subcommand)]
    Attestation(AttestationCmd),
    /// Create or upgrade the schema of the PostgreSQL database hub replicas share (versioned migrations, each in
    /// one transaction); at the newest version already it changes nothing, and a database from a newer outpost-hub
    /// is refused untouched.
    Migrate {
        /// The database (`postgres://user@host:5432/outpost`, or `host=/run/postgresql dbname=outpost`); default:
        /// `[store] postgres` in the data directory's hub.toml.
        #[arg(long, value_name = "URL")]
        postgres: Option<String>,
    },
    /// Print the hub's QUIC identity (its Ed25519 public key, which agents pin), creating it on first use.
    Identity,
    /// Serve devices over QUIC (ALPN outpost/1, TLS 1.3, raw Ed25519 keys): TUF metadata, director bundles,
    /// target bytes with ranges, and reports. Re-signs snapshot and timestamp before they expire. Holds the store
    /// open and takes admin commands over `DATA_DIR/admin.sock` while it runs.
    Serve {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7443", value_name = "ADDR")]
        bind: std::net::SocketAddr,
        /// Also serve Prometheus metrics (OpenMetrics text) over HTTP at http://ADDR/metrics (devices, releases,
        /// telemetry, attestation).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Also serve the web console (releases, devices, sites, packages, audit log; pause, resume, abort,
        /// retry and revoke for operators) at ADDR: loopback unless --console-tls is given.
        #[arg(long, value_name = "ADDR")]
        console: Option<std::net::SocketAddr>,
        /// Serve the console over HTTPS with this certificate chain and private key (PEM files).
        #[arg(long, num_args = 2, value_names = ["CERT", "KEY"], requires = "console")]
        console_tls: Option<Vec<PathBuf>>,
        /// Log lines on stderr as `text` (for people; colour only on a terminal) or `json` (one object per line).
        #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Which log events to write, in `RUST_LOG` syntax (`debug`, `outpost_net=debug,info`); default:
        /// `$RUST_LOG`, else `info`.
        #[arg(long, value_name = "FILTER")]
        log_level: Option<String>,
        /// Most device connections served at once (devices keep theirs open between checks).
        #[arg(long, value_name = "N", default_value_t = outpost_net::server::ServeConfig::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Runs a deliberately broken hub, for the fleet simulator's tests only (`no-revocation-push`).
        #[arg(long, hide = true, value_name = "FAULT", value_parser = ["no-revocation-push"])]
        sim_fault: Option<String>,
    },
    /// Packages refused by site policies, as devices and site nodes last reported them: per release (how many
    /// devices rejected or deferred it, and by which rule) and per site. Policy refusals are not failures.
    Rejections {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL on stdout (the Debian package installs bash, zsh and fish).
    #[serde(skip)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: outpost_net::docs::Shell,
    },
    /// Write the man pages, outpost-hub.1 and one per subcommand (outpost-hub-package-add.1, ...), into DIR.
    #[serde(skip)]
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Rebuild the package an alias names from the stored model and manifest, and prove its digest.
    Reconstruct {
        /// The alias to rebuild.
        alias: String,
        /// Directory to write `<name>-<version>.opkg` into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Where a command writes: what a script wants on `out`, progress for people on `err`.
pub struct Out<'a> {
    /// Standard output.
    pub out: &'a mut dyn Write,
    /// Standard error.
    pub err: &'a mut dyn Write,
}

/// How a command is run.
pub enum Route {
    /// Needs no hub, or must not go to a serving one (`init`, `serve`, `identity`, the offline attestation keys).
    Alone,
    /// Touches the hub's state: a serving hub runs it, else the CLI opens the store itself.
    Hub,
}

impl Command {
    /// How this command is run.
    pub fn route(&self) -> Route {
        match self {
            Command::Init
            | Command::Migrate { .. }
            | Command::Serve { .. }
            | Command::Identity
            | Command::Completions { .. }
            | Command::Man { .. } => Route::Alone,
            Command::Attestation(
                AttestationCmd::TeamKey { .. } | AttestationCmd::Reference(ReferenceCmd::Sign { .. }),
            ) => Route::Alone,
            _ => Route::Hub,
        }
    }

    /// Makes every relative path absolute against `cwd` (the serving hub runs in another directory), and reads
    /// what the command would read from standard input.
    pub fn resolve_locally(&mut self, cwd: &Path) -> Result<()> {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        match self {
            Command::Package(PackageCmd::Add { model, manifest }) => {
                abs(model);
                manifest.iter_mut().for_each(abs);
            }
            Command::Capability(CapabilityCmd::Add { file }) => abs(file),
            Command::Suite(SuiteCmd::Add { dir }) => abs(dir),
            Command::Challenger(cmd) => cmd.resolve(cwd),
            Command::Controller(cmd) => cmd.resolve(cwd),
            Command::Keys(KeysCmd::Generate { offline_dir, .. }) => abs(offline_dir),
            Command::Keys(KeysCmd::Rotate { offline_dir, root_keys, targets_key, .. }) => {
                offline_dir.iter_mut().chain(root_keys.iter_mut()).chain(targets_key.iter_mut()).for_each(abs);
            }
            Command::Release(
                ReleaseCmd::Publish { key, .. } | ReleaseCmd::Sign { key, .. } | ReleaseCmd::Approve { key, .. },
            ) => abs(key),
            Command::Release(ReleaseCmd::Start { plan, .. }) => abs(plan),
            Command::Release(ReleaseCmd::Revoke { key, .. }) => key.iter_mut().for_each(abs),
            Command::Repo(RepoCmd::Export { dir }) => abs(dir),
            Command::Attestation(AttestationCmd::Reference(ReferenceCmd::Install { file })) => abs(file),
            Command::Attestation(AttestationCmd::Reference(ReferenceCmd::Revoke { team_key, .. })) => abs(team_key),
            Command::Reconstruct { out, .. } => abs(out),
            Command::Device(DeviceCmd::Tpm { facts: Some(facts), .. }) if facts == "-" => {
                *facts = std::io::read_to_string(std::io::stdin()).context("reading TPM facts from standard input")?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs a command that touches the hub; returns the exit code.
pub fn run(command: Command, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    match command {
        Command::Init
        | Command::Migrate { .. }
        | Command::Serve { .. }
        | Command::Identity
        | Command::Completions { .. }
        | Command::Man { .. } => {
            anyhow::bail!("this command does not run against an open hub")
        }
        Command::Package(cmd) => package::run(cmd, hub, o),
        Command::Reconstruct { alias, out } => package::reconstruct(alias, out, hub, o),
        Command::Capability(cmd) => capability::run(cmd, hub, o),
        Command::Suite(cmd) => suite::run(cmd, hub, o),
        Command::Eval(cmd) => suite::eval(cmd, hub, o),
        Command::Challenger(cmd) => challenger::run(cmd, hub, o),
        Command::Controller(cmd) => controller::run(cmd, hub, o),
        Command::Alias(cmd) => alias::run(cmd, hub, o),
        Command::Keys(cmd) => keys::run(cmd, hub, o),
        Command::Release(cmd) => release::run(cmd, hub, o),
        Command::Repo(cmd) => repo::run(cmd, hub, o),
        Command::Device(cmd) => device::run(cmd, hub, o),
        Command::Audit(cmd) => audit::run(cmd, hub, o),
        Command::Fleet(FleetCmd::Status { json }) => fleet::status(hub, json, o).map(|()| 0),
        Command::Rejections { json } => fleet::rejections(&devices(hub)?.devices()?, json, o).map(|()| 0),
        Command::Attestation(cmd) => attestation::run(cmd, hub, o),
        Command::Console(cmd) => console::run(cmd, hub, o),
    }
}

/// Runs `command` and captures what it prints, as a serving hub answers an admin request.
pub fn run_captured(command: Command, hub: &Hub) -> Reply {
    captured(|o| run(command, hub, o))
}

/// Runs `f` and captures what it prints and its exit code.
fn captured(f: impl FnOnce(&mut Out<'_>) -> Result<u8>) -> Reply {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = match f(&mut Out { out: &mut out, err: &mut err }) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {}", outpost_shared::errors::one_line(e.chain()));
            1
        }
    };
    Reply {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        code,
    }
}

/// Runs admin requests (JSON-encoded [`Command`]s) inside the serving hub.
#[derive(Debug)]
pub struct Commands;

impl Handler<Hub> for Commands {
    fn handle(&self, hub: &Hub, request: &[u8]) -> Result<Reply, RequestError> {
        let command: Command =
            serde_json::from_slice(request).map_err(|e| RequestError::Malformed { reason: e.to_string() })?;
        if let Route::Alone = command.route() {
            return Err(RequestError::Malformed { reason: "this command does not run in a serving hub".into() });
        }
        Ok(run_captured(command, hub))
    }

    fn act(&self, hub: &Hub, actor: &str, action: &outpost_hub::console::Action) -> Result<Reply, RequestError> {
        Ok(captured(|o| console::act(hub, actor, action, o)))
    }
}

/// The hub's registry index.
pub fn registry(hub: &Hub) -> Result<&Registry> {
    Ok(hub.store()?.registry())
}

/// The hub's devices.
pub fn devices(hub: &Hub) -> Result<&dyn outpost_hub::storage::DeviceStore> {
    Ok(hub.store()?.devices())
}

/// Appends an admin action to the audit log.
pub fn audit(hub: &Hub, actor: &str, action: Action, subject: &str, detail: &str) -> Result<()> {
    let store = hub.store()?;
    let entry = store.audit_log()?.audit_append(hub.clock().wall(), actor, action, subject, detail)?;
    // The newest anchor is kept in the index too: `audit verify` then catches an edited or cut-off newest entry.
    store.audit().audit_anchor_put(&entry.anchor())?;
    Ok(())
}

/// A package's `name@version`.
pub fn label(reg: &Registry, d: &outpost_shared::Digest) -> Result<String> {
    let r = reg.record(d)?.with_context(|| format!("package {d} vanished"))?;
    Ok(format!("{}@{}", r.name, r.version))
}

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}
