//! `outpost-hub`: the central team's command line over the registry (and later the serving hub).
//!
//! Human-readable progress goes to stderr; the one value a script wants (a digest, a path) goes to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use outpost_attestation::identity::Identity;
use outpost_hub::backend::HubBackend;
use outpost_hub::blobs::BlobStatus;
use outpost_hub::clock::{SystemClock, SystemRng};
use outpost_hub::config::default_data_dir;
use outpost_hub::director::Director;
use outpost_hub::registry::{InitOutcome, Registry};
use outpost_hub::serve::{ServeConfig, Server};
use outpost_hub::tuf::key_id;
use outpost_hub::tuf::{GenerateOptions, Key, PublishOutcome, TufRepo};
use outpost_shared::audit::Action;
use outpost_shared::clock::Clock;
use outpost_shared::clock::format_rfc3339;

/// Outpost hub: registers, signs and releases ONNX model packages for fleets of edge devices.
#[derive(Parser, Debug)]
#[command(name = "outpost-hub", version, about, long_about = None)]
struct Cli {
    /// Data directory holding hub.toml, the blob store and the index.
    /// Default: $OUTPOST_HUB_DIR, else $XDG_DATA_HOME/outpost/hub, else ~/.local/share/outpost/hub.
    #[arg(long, global = true, env = "OUTPOST_HUB_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the data directory with a commented hub.toml, an empty blob store and index.
    Init,
    /// Add, list, show and verify model packages.
    #[command(subcommand)]
    Package(PackageCmd),
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
    /// The central team's attestation key and signed reference values (which agent builds may be served).
    #[command(subcommand)]
    Attestation(AttestationCmd),
    /// Print the hub's QUIC identity (its Ed25519 public key, which agents pin), creating it on first use.
    Identity,
    /// Serve devices over QUIC (ALPN outpost/1, TLS 1.3, raw Ed25519 keys): TUF metadata, director bundles,
    /// target bytes with ranges, and reports. Re-signs snapshot and timestamp before they expire.
    Serve {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7443", value_name = "ADDR")]
        bind: std::net::SocketAddr,
        /// Also serve Prometheus metrics over HTTP at http://ADDR/metrics (devices, releases, telemetry).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Packages refused by site policies, as devices and site nodes last reported them: per release (how many
    /// devices rejected or deferred it, and by which rule) and per site. Policy refusals are not failures.
    Rejections {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
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

#[derive(Subcommand, Debug)]
enum PackageCmd {
    /// Check an ONNX model against its manifest (loads in tract, contract, smoke test), then store it as a
    /// content-addressed package. A manifest with `kind = "firmware"` takes a firmware image instead (never loaded,
    /// only length-checked). Prints the package digest on stdout.
    Add {
        /// The ONNX model file, or the firmware image.
        model: PathBuf,
        /// The manifest (TOML). Default: the model's path with a .toml extension.
        #[arg(long, value_name = "M.toml")]
        manifest: Option<PathBuf>,
    },
    /// List registered packages.
    List,
    /// Show a package: manifest, lineage back to its roots, evaluation card.
    Show {
        /// A digest, a unique digest prefix (8+ hex), name@version, or an alias.
        package: String,
    },
    /// Rehash stored blobs and name every tampered or missing one; exits non-zero if any.
    Verify {
        /// Only this package (digest, prefix, name@version or alias). Default: all.
        package: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// Create root and targets keys in an offline directory (keep it off the hub), online snapshot, timestamp and
    /// director keys in the data directory, and the first signed version of every TUF role.
    Generate {
        /// Where the offline root and targets keys are written. Keep them off the serving machine.
        #[arg(long, value_name = "DIR")]
        offline_dir: PathBuf,
        /// Number of root keys.
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root signatures required.
        #[arg(long, default_value_t = 1)]
        root_threshold: usize,
        /// Number of targets keys (at least 2: high-risk releases need two distinct signers).
        #[arg(long, default_value_t = 2)]
        targets_keys: usize,
    },
    /// Replace ROLE's key. root, targets, snapshot, timestamp: root N+1 signed by the current root keys (give
    /// --root-key) and the new ones; clients walk the chain. director: a new top-level targets version listing
    /// the new director key, signed with --targets-key.
    Rotate {
        /// root, targets, snapshot, timestamp or director.
        role: String,
        /// Where a new offline key is written.
        #[arg(long, value_name = "DIR")]
        offline_dir: Option<PathBuf>,
        /// Current root key file(s), as many as the current root threshold.
        #[arg(long = "root-key", value_name = "FILE")]
        root_keys: Vec<PathBuf>,
        /// Top-level targets key file (for rotating the director key).
        #[arg(long, value_name = "FILE")]
        targets_key: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ReleaseCmd {
    /// List a registered package as a TUF target on CHANNEL, signed with an offline targets key. High-risk
    /// packages become installable only after a second, distinct key signs (`release sign`).
    Publish {
        /// The package (digest, prefix, name@version or alias).
        package: String,
        /// Release channel devices follow.
        #[arg(long, value_name = "NAME")]
        channel: String,
        /// Targets key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Add a second signature to a pending high-risk release.
    Sign {
        /// The package.
        package: String,
        /// A targets key file different from the first signer's.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Roll a published package out to CHANNEL in stages under a plan (`fixtures/plans/canary.toml`): cohorts
    /// picked from the device ids, judged after a minimum count and soak time, aborted (every device back to the
    /// last good package) when errors go above the plan's threshold. Prints the release id.
    Start {
        /// The package (published to the channel).
        package: String,
        /// The rollout plan (TOML).
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
        /// The channel to roll out on.
        #[arg(long, value_name = "NAME", default_value = "stable")]
        channel: String,
    },
    /// Releases and where they stand.
    List,
    /// A release's stages, counts (installed, failed, rolled back, rejected by site policy), state and rollback
    /// recovery time.
    Status {
        /// Release id (`release list`).
        id: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Stop advancing a release (an automatic abort still fires).
    Pause {
        /// Release id.
        id: String,
    },
    /// Let a paused release advance again.
    Resume {
        /// Release id.
        id: String,
    },
    /// Abort a release now: every device of it goes back to the last good package.
    Abort {
        /// Release id.
        id: String,
        /// Why, for the record.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
    },
    /// Offer the package again to the devices of the release that failed or rolled back, and to no other.
    RetryFailed {
        /// Release id.
        id: String,
    },
    /// Approve the next stage of a release waiting for approval (high risk: a targets key holder other than the
    /// publisher).
    Approve {
        /// Release id.
        id: String,
        /// The approver's targets key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Revoke a package: devices never activate it again (online revocation list, effective at once). With
    /// --key, it is also taken out of TUF targets.
    Revoke {
        /// The package.
        package: String,
        /// Why, recorded and shown to operators.
        #[arg(long)]
        reason: String,
        /// Targets key file, to also remove the package from TUF targets.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the chain of the audit log: an edited, removed or reordered entry is named, and the exit status
    /// is non-zero.
    Verify,
    /// Print the audit log.
    Show,
}

#[derive(Subcommand, Debug)]
enum FleetCmd {
    /// Per site: devices, what they run, and their telemetry (update steps, rollbacks, policy rejections,
    /// errors, inferences with p50/p95 latency).
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RepoCmd {
    /// Write metadata and targets as static files (DIR/metadata, DIR/targets) for any HTTP server or CDN.
    Export {
        /// Output directory.
        dir: PathBuf,
    },
    /// Re-sign snapshot and timestamp (and the revocation list) if they expire within the configured margin.
    Refresh,
}

#[derive(Subcommand, Debug)]
enum DeviceCmd {
    /// Allow a device (its Ed25519 public key, hex) to connect and follow CHANNEL.
    Approve {
        /// The device's public key, 64 hex characters (`outpost-agent init` prints it).
        key: String,
        /// Release channel it follows.
        #[arg(long, value_name = "NAME", default_value = "stable")]
        channel: String,
        /// The site it belongs to (its site node, if any, may fetch and report on its behalf).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        /// The key is a site node's: it serves the devices of --site and fetches from the hub for them.
        #[arg(long, requires = "site")]
        site_node: bool,
    },
    /// Create a one-time enrolment token: the device that first presents it (`outpost-agent init --token T`) is
    /// approved on CHANNEL. Prints the token on stdout; only its hash is stored.
    Token {
        /// Seconds until the token stops working.
        #[arg(long, value_name = "SECS", default_value_t = 86_400)]
        expires: u64,
        /// Release channel the device follows.
        #[arg(long, value_name = "NAME", default_value = "stable")]
        channel: String,
        /// The site the device belongs to.
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
    },
    /// List devices: status, channel, site, tier (software or hardware/TPM), last attestation result, active package.
    List,
    /// Show one device: status, tier, how it enrolled, hardware facts, its last attestation result and report.
    Show {
        /// The device's public key.
        key: String,
    },
    /// Record the TPM a device attests with, so it attests at the hardware tier: from then on its evidence must
    /// carry a quote by this attestation key over these boot PCR values and the agent and model it runs. FACTS is
    /// the hex line `outpost-agent tpm-facts` prints on the device (at provisioning, in a known-good state); `-`
    /// reads it from standard input. (Devices enrolling with a token send these facts themselves.)
    Tpm {
        /// The device's public key.
        key: String,
        /// The TPM enrolment facts, hex (or `-` for standard input).
        #[arg(required_unless_present = "clear")]
        facts: Option<String>,
        /// Forget the device's TPM: it attests at the software tier again.
        #[arg(long, conflicts_with = "facts")]
        clear: bool,
    },
    /// Refuse a device from now on; a serving hub cuts off its connections at their next request.
    Revoke {
        /// The device's public key.
        key: String,
    },
    /// Record the microcontrollers behind a gateway device: the director assigns them firmware through it.
    #[command(subcommand)]
    Secondary(SecondaryCmd),
    /// Offer a package again to a device that rolled back from it.
    Retry {
        /// The device's public key.
        key: String,
        /// The package.
        package: String,
    },
}

#[derive(Subcommand, Debug)]
enum AttestationCmd {
    /// Make the central team's Ed25519 key (keep it offline). Prints its public key for hub.toml
    /// `[attestation] team_key`.
    TeamKey {
        /// Where the secret key is written (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Signed reference values: the agent builds (name, version, SHA-256) the hub attests.
    #[command(subcommand)]
    Reference(ReferenceCmd),
}

#[derive(Subcommand, Debug)]
enum ReferenceCmd {
    /// Sign a reference-values document listing one agent version (one --sha256 per build of it), carrying over
    /// the entries of --base.
    Sign {
        /// The team's secret key file.
        #[arg(long, value_name = "FILE")]
        team_key: PathBuf,
        /// Software name, as the agent reports it.
        #[arg(long, default_value = "outpost-agent")]
        name: String,
        /// Software version, as the agent reports it.
        #[arg(long)]
        version: String,
        /// SHA-256 of a build's binary (`sha256sum outpost-agent`); repeat for several builds.
        #[arg(long = "sha256", value_name = "HEX", required = true)]
        sha256: Vec<String>,
        /// A signed document whose entries are carried over (its serial + 1 becomes the default serial).
        #[arg(long, value_name = "FILE")]
        base: Option<PathBuf>,
        /// Serial (must exceed the installed one). Default: --base's + 1, else the current Unix time.
        #[arg(long)]
        serial: Option<u64>,
        /// Seconds until the document expires (every appraisal fails after that).
        #[arg(long, value_name = "SECS", default_value_t = 30 * 86_400)]
        expires_in: u64,
        /// Where the signed document is written.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Install a signed document into the hub (checked against the team key, expiry and serial); a serving hub
    /// picks it up at its next challenge.
    Install {
        /// The signed document.
        file: PathBuf,
    },
    /// Re-sign the installed document with VERSION marked revoked (serial + 1) and install it: agents reporting
    /// it are refused from their next attestation.
    Revoke {
        /// The version to revoke.
        #[arg(long)]
        version: String,
        /// Software name.
        #[arg(long, default_value = "outpost-agent")]
        name: String,
        /// The team's secret key file.
        #[arg(long, value_name = "FILE")]
        team_key: PathBuf,
        /// Seconds until the new document expires.
        #[arg(long, value_name = "SECS", default_value_t = 30 * 86_400)]
        expires_in: u64,
    },
    /// Print the installed document.
    Show,
}

#[derive(Subcommand, Debug)]
enum SecondaryCmd {
    /// Add (or update) a secondary behind GATEWAY_KEY; it gets the newest firmware package published to the
    /// gateway's channel for its hardware id.
    Add {
        /// The gateway device's public key.
        gateway_key: String,
        /// The secondary's device id, as provisioned into its firmware.
        #[arg(long, value_name = "ID")]
        device_id: String,
        /// The secondary's hardware id (matches `firmware.hardware_id` in firmware manifests).
        #[arg(long, value_name = "ID")]
        hardware_id: String,
    },
    /// Stop assigning firmware to a secondary.
    Remove {
        /// The gateway device's public key.
        gateway_key: String,
        /// The secondary's device id.
        #[arg(long, value_name = "ID")]
        device_id: String,
    },
}

#[derive(Subcommand, Debug)]
enum AliasCmd {
    /// Point ALIAS at a package (atomically, with history).
    Set {
        /// Alias name: a-z, 0-9, `-`, `_`, `.`.
        alias: String,
        /// A digest, a unique digest prefix, or name@version.
        package: String,
    },
    /// Show every change of ALIAS, oldest first.
    History {
        /// Alias name.
        alias: String,
    },
    /// List aliases and the packages they name.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    match run(cli.command, &data_dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open(dir: &Path) -> Result<Registry> {
    Ok(Registry::open(dir, Arc::new(SystemClock))?)
}

fn run(command: Command, dir: &Path) -> Result<ExitCode> {
    match command {
        Command::Init => match Registry::init(dir)? {
            InitOutcome::Created => {
                eprintln!("initialised a hub in {} (edit {}/hub.toml)", dir.display(), dir.display())
            }
            InitOutcome::AlreadyInitialised => {
                eprintln!("{} already holds a hub; nothing changed", dir.display())
            }
        },
        Command::Package(PackageCmd::Add { model, manifest }) => {
            let manifest = manifest.unwrap_or_else(|| model.with_extension("toml"));
            let reg = open(dir)?;
            let out = reg.add(&model, &manifest)?;
            if let Some(smoke) = &out.smoke {
                let diffs: Vec<String> = smoke.outputs.iter().map(|(n, d)| format!("{n} max |diff| {d:.1e}")).collect();
                eprintln!(
                    "checked {}: loads in tract, contract matches, smoke test passed ({})",
                    out.name_version,
                    diffs.join(", ")
                );
            }
            if out.smoke.is_none() && out.added {
                eprintln!("checked {}: firmware image (not loaded; secondaries verify it)", out.name_version);
            }
            if out.added {
                eprintln!("added {}", out.name_version);
            } else {
                eprintln!("{} is already registered with this digest; nothing changed", out.name_version);
            }
            println!("{}", out.digest);
        }
        Command::Package(PackageCmd::List) => {
            let reg = open(dir)?;
            let records = reg.list()?;
            if records.is_empty() {
                eprintln!("no packages yet: add one with `outpost-hub package add MODEL.onnx --manifest M.toml`");
            } else {
                println!(
                    "{:<12}  {:<24} {:<10} {:<22} {:<6} {:>10}  ADDED",
                    "DIGEST", "NAME", "VERSION", "CAPABILITY", "RISK", "SIZE"
                );
                for r in records {
                    let (_, m) = reg.manifest(&r.digest)?;
                    println!(
                        "{:<12}  {:<24} {:<10} {:<22} {:<6} {:>10}  {}",
                        r.digest.short(),
                        r.name,
                        r.version,
                        m.capability,
                        m.risk_tier.to_string(),
                        human_bytes(r.package_len),
                        format_rfc3339(r.added_at)
                    );
                }
            }
        }
        Command::Package(PackageCmd::Show { package }) => {
            let reg = open(dir)?;
            let d = reg.resolve(&package)?;
            print_details(&reg, &d)?;
        }
        Command::Package(PackageCmd::Verify { package }) => {
            let reg = open(dir)?;
            let only = package.map(|p| reg.resolve(&p)).transpose()?;
            let report = reg.verify_with_progress(only.as_ref(), |c| {
                let what = format!("{:<7} {}", c.role, c.digest);
                match c.status {
                    BlobStatus::Intact => eprintln!("ok       {what} ({})", human_bytes(c.bytes)),
                    BlobStatus::Tampered { actual, len } => println!(
                        "TAMPERED {what} of package {}: {} now holds {} bytes hashing to {actual}",
                        c.package.short(),
                        c.path.display(),
                        len
                    ),
                    BlobStatus::Missing => {
                        println!("MISSING  {what} of package {}: no file at {}", c.package.short(), c.path.display())
                    }
                }
            })?;
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            let problems = report.problems().count();
            eprintln!(
                "verified {} blobs, {} in {:.3} s ({:.2} GB/s): {}",
                report.checks.len(),
                human_bytes(report.bytes),
                secs,
                report.bytes as f64 / secs / 1e9,
                if problems == 0 { "all intact".to_owned() } else { format!("{problems} PROBLEM(S)") }
            );
            if problems > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Alias(AliasCmd::Set { alias, package }) => {
            let reg = open(dir)?;
            let d = reg.resolve(&package)?;
            let ev = reg.alias_set(&alias, &d)?;
            let was = ev.previous.map(|p| format!(" (was {})", p.short())).unwrap_or_default();
            eprintln!("{alias} → {}{was}, change #{}", label(&reg, &d)?, ev.seq);
        }
        Command::Alias(AliasCmd::History { alias }) => {
            let reg = open(dir)?;
            for ev in reg.alias_history(&alias)? {
                let was = ev.previous.map(|p| p.short()).unwrap_or_else(|| "-".into());
                println!(
                    "#{:<4} {}  {}  {}  (was {was})",
                    ev.seq,
                    format_rfc3339(ev.at),
                    ev.digest,
                    label(&reg, &ev.digest)?
                );
            }
        }
        Command::Alias(AliasCmd::List) => {
            let reg = open(dir)?;
            for (alias, d) in reg.aliases()? {
                println!("{alias:<16} {d}  {}", label(&reg, &d)?);
            }
        }
        Command::Keys(cmd) => keys(cmd, dir)?,
        Command::Attestation(cmd) => attestation(cmd, dir)?,
        Command::Device(DeviceCmd::Token { expires, channel, site }) => {
            let token = open(dir)?.token_create(&channel, site.as_deref(), expires, &mut SystemRng)?;
            eprintln!(
                "one-time enrolment token for channel {channel}{}, valid {expires} s (only its hash is stored):",
                site.map(|s| format!(" at site {s}")).unwrap_or_default()
            );
            println!("{token}");
        }
        Command::Device(DeviceCmd::Show { key }) => {
            let reg = open(dir)?;
            let lower = key.trim().to_ascii_lowercase();
            let d = reg.device(&lower)?.with_context(|| format!("no device with key {key}"))?;
            print_device(&d);
        }
        Command::Identity => {
            let id = hub_identity(dir)?;
            println!("{}", id.public_key().to_hex());
        }
        Command::Serve { bind, metrics } => serve(dir, bind, metrics)?,
        Command::Release(cmd) => release(cmd, dir)?,
        Command::Repo(RepoCmd::Export { dir: out }) => {
            let n = repo(dir)?.export(&out)?;
            eprintln!("exported {n} files to {} (metadata/ and targets/)", out.display());
        }
        Command::Repo(RepoCmd::Refresh) => {
            let r = repo(dir)?;
            let now = SystemClock.wall();
            let resigned = r.refresh_online(now)?;
            Director::new(&r).refresh_revocations(now)?;
            eprintln!(
                "{}",
                if resigned { "re-signed snapshot and timestamp" } else { "snapshot and timestamp are fresh" }
            );
        }
        Command::Device(DeviceCmd::Approve { key, channel, site, site_node }) => {
            let reg = open(dir)?;
            let mut d = reg.device_approve(&key, &channel)?;
            if site.is_some() || d.site.is_some() {
                d = reg.device_set_site(&key, site.as_deref(), site_node)?;
            }
            let role = if d.site_node { "site node" } else { "device" };
            let site = d.site.as_deref().map(|s| format!(" at site {s}")).unwrap_or_default();
            eprintln!("approved {role} {} on channel {}{site}", d.key, d.channel);
        }
        Command::Rejections { json } => print_rejections(&open(dir)?.devices()?, json)?,
        Command::Audit(AuditCmd::Verify) => {
            let path = outpost_hub::audit::default_path(dir);
            let anchor = open(dir)?.audit_anchor()?;
            let v = outpost_hub::audit::verify(&path, anchor.as_ref())?;
            let head = v.head.map_or("-".to_owned(), |a| format!("#{} {}", a.seq, a.hash.short()));
            println!("audit log {}: {} entries, chain intact, head {head}", path.display(), v.entries);
            if v.incomplete_tail {
                eprintln!("warning: the log ends in an incomplete record (an interrupted append); it is not an entry");
            }
        }
        Command::Audit(AuditCmd::Show) => {
            let (entries, _) = outpost_hub::audit::read(&outpost_hub::audit::default_path(dir))?;
            for e in entries {
                println!(
                    "{:>5} {} {:<14} {:<13} {} {}",
                    e.seq,
                    format_rfc3339(e.at),
                    e.actor,
                    format!("{:?}", e.action).to_lowercase(),
                    e.subject,
                    e.detail
                );
            }
        }
        Command::Fleet(FleetCmd::Status { json }) => fleet_status(dir, json)?,
        Command::Device(DeviceCmd::List) => {
            for d in open(dir)?.devices()? {
                let active = d.active.map_or("-".to_owned(), |a| a.short());
                let rolled: Vec<String> = d.rolled_back.iter().map(|r| r.short()).collect();
                let site = match (d.shown_site(), d.site_node) {
                    (Some(s), true) => format!("node:{s}"),
                    (Some(s), false) => s.to_owned(),
                    (None, _) => "-".into(),
                };
                let tier = if d.tpm.is_some() { "hardware" } else { "software" };
                let attested = d.attestation.as_ref().map_or("never".to_owned(), |a| a.status.clone());
                println!(
                    "{}  {:<8} {:<10} {:<12} {:<8} attested {:<15} active {:<12} assignment v{:<4} rolled back [{}]  policy {}  last report {}",
                    d.key,
                    format!("{:?}", d.status).to_lowercase(),
                    d.channel,
                    site,
                    tier,
                    attested,
                    active,
                    d.assignment_version,
                    rolled.join(", "),
                    d.policy.map_or("-".to_owned(), |p| p.short()),
                    d.last_report.map_or("never".to_owned(), format_rfc3339)
                );
                for s in &d.secondaries {
                    println!("  secondary {} (hardware {})", s.device_id, s.hardware_id);
                }
            }
        }
        Command::Device(DeviceCmd::Secondary(SecondaryCmd::Add { gateway_key, device_id, hardware_id })) => {
            let d = open(dir)?.device_secondary_add(&gateway_key, &device_id, &hardware_id)?;
            eprintln!(
                "gateway {} now has {} secondar{}; {device_id} gets firmware for {hardware_id}",
                d.key,
                d.secondaries.len(),
                if d.secondaries.len() == 1 { "y" } else { "ies" }
            );
        }
        Command::Device(DeviceCmd::Secondary(SecondaryCmd::Remove { gateway_key, device_id })) => {
            let d = open(dir)?.device_secondary_remove(&gateway_key, &device_id)?;
            eprintln!("gateway {} no longer assigns firmware to {device_id}", d.key);
        }
        Command::Device(DeviceCmd::Retry { key, package }) => {
            let reg = open(dir)?;
            let d = reg.resolve(&package)?;
            reg.device_retry(&key, &d)?;
            eprintln!(
                "device {key} will be offered {} again (the device itself still refuses a package it rolled back from until its state is reset)",
                d.short()
            );
        }
        Command::Device(DeviceCmd::Tpm { key, facts, clear }) => {
            let record = match facts {
                None => None,
                Some(text) => {
                    let text = if text == "-" { std::io::read_to_string(std::io::stdin())? } else { text };
                    let bytes = hex::decode(text.trim())
                        .context("TPM facts must be the hex line `outpost-agent tpm-facts` prints")?;
                    let e = outpost_attestation::TpmEnrolment::from_bytes(&bytes).context("TPM facts refused")?;
                    Some(outpost_hub::registry::TpmRecord::of(&e))
                }
            };
            let d = open(dir)?.device_set_tpm(&key, record)?;
            match (&d.tpm, clear) {
                (Some(t), _) => eprintln!(
                    "device {} attests at the hardware tier: TPM key {}…, boot PCRs {:#x} (its next evidence must carry a quote)",
                    d.key,
                    t.ak.get(..16).unwrap_or(&t.ak),
                    t.pcrs
                ),
                (None, _) => eprintln!("device {} attests at the software tier", d.key),
            }
        }
        Command::Device(DeviceCmd::Revoke { key }) => {
            let d = open(dir)?.device_revoke(&key)?;
            eprintln!(
                "revoked device {}: its connections are refused from now on (a serving hub cuts off attested ones at their next request)",
                d.key
            );
        }
        Command::Reconstruct { alias, out } => {
            let reg = open(dir)?;
            let (path, digest) = reg.reconstruct(&alias, &out)?;
            eprintln!(
                "rebuilt {} from the stored model blob and manifest; its digest matches the recorded one",
                label(&reg, &digest)?
            );
            eprintln!("sha256 {digest}");
            println!("{}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn repo(dir: &Path) -> Result<TufRepo> {
    let config =
        outpost_hub::config::HubConfig::load(&dir.join(outpost_hub::config::CONFIG_FILE)).with_context(|| {
            format!("no hub at {}: run `outpost-hub --data-dir {} init` first", dir.display(), dir.display())
        })?;
    Ok(TufRepo::new(dir, config.repository))
}

/// The hub's QUIC identity in `<data-dir>/keys/hub.identity`, created on first use.
fn hub_identity(dir: &Path) -> Result<Identity> {
    repo(dir)?; // an initialised hub
    let path = dir.join("keys").join("hub.identity");
    if !path.exists() {
        let mut seed = [0u8; 32];
        outpost_shared::rng::Rng::fill(&mut SystemRng, &mut seed);
        let id = Identity::from_seed(seed);
        std::fs::create_dir_all(dir.join("keys"))?;
        id.save(&path)?;
        eprintln!("created the hub identity {}", path.display());
    }
    Ok(Identity::load(&path)?)
}

fn serve(dir: &Path, bind: std::net::SocketAddr, metrics: Option<std::net::SocketAddr>) -> Result<()> {
    let r = repo(dir)?;
    if !r.exists() {
        anyhow::bail!("no TUF repository yet: run `outpost-hub keys generate --offline-dir DIR` first");
    }
    let identity = hub_identity(dir)?;
    let key = identity.public_key().to_hex();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = outpost_hub::config::HubConfig::load(&dir.join(outpost_hub::config::CONFIG_FILE))?;
    let backend = Arc::new(HubBackend::new(dir, TufRepo::new(dir, config.repository), clock.clone()));
    if !backend.gate().required() {
        eprintln!("warning: [attestation] required = false in hub.toml: devices are served without attestation");
    } else {
        match backend.gate().readiness() {
            Ok(serial) => eprintln!("attestation required; reference values serial {serial} installed"),
            Err(why) => eprintln!(
                "warning: attestation is required but nobody can be attested, so nothing will be served: {why}"
            ),
        }
    }
    let mut serve_config = ServeConfig::new(identity);
    serve_config.bind = bind;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let server = Server::bind(serve_config, backend.clone())?;
        eprintln!("serving on {} (udp), hub key {key}", server.local_addr()?);
        if let Some(addr) = metrics {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            eprintln!("metrics on http://{addr}/metrics");
            let b = backend.clone();
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let b = b.clone();
                    async move {
                        match tokio::task::spawn_blocking(move || b.metrics().map_err(|e| e.to_string())).await {
                            Ok(Ok(text)) => (axum::http::StatusCode::OK, text),
                            Ok(Err(e)) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e),
                            Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                        }
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        // Revocations reach connected agents at once: a notice on their open connection whenever the list moves.
        let notifier = server.notifier();
        let (rdir, rexp) = (dir.to_owned(), config.repository);
        tokio::spawn(outpost_hub::serve::push_revocations(notifier, std::time::Duration::from_secs(1), move || {
            Director::new(&TufRepo::new(&rdir, rexp)).revocations().ok().map(|l| l.version)
        }));
        // Telemetry is kept for its retention period (30 days), pruned hourly.
        let pruning = backend.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let b = pruning.clone();
                let retention = outpost_hub::telemetry::DEFAULT_RETENTION;
                match tokio::task::spawn_blocking(move || {
                    b.apply_telemetry_retention(retention).map_err(|e| e.to_string())
                })
                .await
                {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => eprintln!("telemetry: pruned {n} events past the retention period"),
                    Ok(Err(e)) => eprintln!("error: telemetry retention: {e}"),
                    Err(e) => eprintln!("error: telemetry retention task: {e}"),
                }
            }
        });
        // Staged rollouts are judged when the earliest release's deadline (a soak end) comes; reports are judged
        // as they arrive.
        let (rollouts, rdir, rclock) = (backend.clone(), dir.to_owned(), clock.clone());
        tokio::spawn(async move {
            loop {
                let (b, dir, clock) = (rollouts.clone(), rdir.clone(), rclock.clone());
                let judged = tokio::task::spawn_blocking(move || -> Result<_> {
                    let effects = b.tick_rollouts().map_err(|e| anyhow::anyhow!(e))?;
                    let wait =
                        outpost_hub::rollouts::wait_after_tick(&Registry::open(&dir, clock.clone())?, clock.wall())?;
                    Ok((effects, wait))
                })
                .await;
                let wait = match judged {
                    Ok(Ok((effects, wait))) => {
                        for (id, e) in effects {
                            eprintln!("release {id}: {}", outpost_hub::rollouts::describe(&e));
                        }
                        wait
                    }
                    Ok(Err(e)) => {
                        eprintln!("error: judging rollouts: {e:#}");
                        outpost_hub::rollouts::MAX_TICK_WAIT
                    }
                    Err(e) => {
                        eprintln!("error: rollout task: {e}");
                        outpost_hub::rollouts::MAX_TICK_WAIT
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
        let dir = dir.to_owned();
        let expiries = config.repository;
        // Keep online metadata fresh: snapshot, timestamp and the revocation list are re-signed before expiry.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let (dir, clock) = (dir.clone(), clock.clone());
                let result = tokio::task::spawn_blocking(move || -> Result<bool> {
                    let repo = TufRepo::new(&dir, expiries);
                    let now = clock.wall();
                    let resigned = repo.refresh_online(now)?;
                    let director = Director::new(&repo);
                    let list = director.revocations()?;
                    if list.version > 0 && list.expires <= now + expiries.resign_margin_secs {
                        director.refresh_revocations(now)?;
                    }
                    Ok(resigned)
                })
                .await;
                match result {
                    Ok(Ok(true)) => eprintln!("re-signed snapshot and timestamp"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => eprintln!("error: re-signing online metadata: {e:#}"),
                    Err(e) => eprintln!("error: re-signing task: {e}"),
                }
            }
        });
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("shutting down");
            })
            .await;
        Ok::<(), anyhow::Error>(())
    })
}

fn hub_config(dir: &Path) -> Result<outpost_hub::config::HubConfig> {
    Ok(outpost_hub::config::HubConfig::load(&dir.join(outpost_hub::config::CONFIG_FILE))?)
}

fn attestation(cmd: AttestationCmd, dir: &Path) -> Result<()> {
    use outpost_attestation::{ReferenceValues, SoftwareRef, TrustedReferenceValues};
    let now = SystemClock.wall();
    match cmd {
        AttestationCmd::TeamKey { out } => {
            let mut seed = [0u8; 32];
            outpost_shared::rng::Rng::fill(&mut SystemRng, &mut seed);
            let id = Identity::from_seed(seed);
            if out.exists() {
                anyhow::bail!("{} exists; refusing to overwrite a key", out.display());
            }
            id.save(&out)?;
            eprintln!("wrote the team key {} (keep it offline); its public key, for hub.toml:", out.display());
            println!("{}", id.public_key().to_hex());
        }
        AttestationCmd::Reference(ReferenceCmd::Sign {
            team_key,
            name,
            version,
            sha256,
            base,
            serial,
            expires_in,
            out,
        }) => {
            let team = Identity::load(&team_key)?;
            let mut software = Vec::new();
            let mut base_serial = None;
            if let Some(base) = base {
                let bytes = std::fs::read(&base).with_context(|| format!("reading {}", base.display()))?;
                let doc = TrustedReferenceValues::verify(&bytes, &team.public_key())
                    .with_context(|| format!("{} is not signed by this team key", base.display()))?;
                base_serial = Some(doc.document().serial);
                software = doc.document().software.clone();
            }
            for hex in sha256 {
                let digest: outpost_shared::Digest =
                    hex.trim().parse().map_err(|e| anyhow::anyhow!("--sha256 {hex}: {e}"))?;
                software.retain(|s| s.sha256 != digest);
                software.push(SoftwareRef {
                    name: name.clone(),
                    version: version.clone(),
                    sha256: digest,
                    revoked: false,
                });
            }
            let doc = ReferenceValues {
                serial: serial.unwrap_or_else(|| base_serial.map_or(now, |s| s + 1)),
                issued_at: now,
                expires: now + expires_in,
                software,
            };
            outpost_hub::blobs::write_atomic(&out, &doc.sign(&team))?;
            eprintln!(
                "signed reference values serial {} ({} entries, expires {}) to {}",
                doc.serial,
                doc.software.len(),
                format_rfc3339(doc.expires),
                out.display()
            );
        }
        AttestationCmd::Reference(ReferenceCmd::Install { file }) => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let config = hub_config(dir)?;
            let serial =
                outpost_hub::attest::install_reference_values(dir, &config.attestation, &bytes, Arc::new(SystemClock))
                    .map_err(anyhow::Error::msg)?;
            eprintln!("installed reference values serial {serial}; a serving hub uses them from its next challenge");
        }
        AttestationCmd::Reference(ReferenceCmd::Revoke { version, name, team_key, expires_in }) => {
            let team = Identity::load(&team_key)?;
            let config = hub_config(dir)?;
            let trusted = outpost_hub::attest::team_key(dir, &config.attestation).map_err(anyhow::Error::msg)?;
            if trusted != team.public_key() {
                anyhow::bail!("{} is not the team key this hub trusts", team_key.display());
            }
            let path = dir.join(outpost_hub::attest::REFERENCE_VALUES_FILE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("no installed reference values at {}", path.display()))?;
            let current = TrustedReferenceValues::verify(&bytes, &trusted)?;
            let mut doc = current.document().clone();
            let mut hit = 0;
            for s in doc.software.iter_mut().filter(|s| s.name == name && s.version == version) {
                s.revoked = true;
                hit += 1;
            }
            if hit == 0 {
                anyhow::bail!("the installed reference values list no {name} {version}");
            }
            doc.serial += 1;
            doc.issued_at = now;
            doc.expires = now + expires_in;
            let signed = doc.sign(&team);
            let serial =
                outpost_hub::attest::install_reference_values(dir, &config.attestation, &signed, Arc::new(SystemClock))
                    .map_err(anyhow::Error::msg)?;
            eprintln!("revoked {name} {version} ({hit} build(s)); reference values serial {serial} installed");
        }
        AttestationCmd::Reference(ReferenceCmd::Show) => {
            let config = hub_config(dir)?;
            let trusted = outpost_hub::attest::team_key(dir, &config.attestation).map_err(anyhow::Error::msg)?;
            let path = dir.join(outpost_hub::attest::REFERENCE_VALUES_FILE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("no installed reference values at {}", path.display()))?;
            let doc = TrustedReferenceValues::verify(&bytes, &trusted)?;
            let d = doc.document();
            println!(
                "serial {}  issued {}  expires {}",
                d.serial,
                format_rfc3339(d.issued_at),
                format_rfc3339(d.expires)
            );
            for s in &d.software {
                println!("{:<16} {:<12} {}{}", s.name, s.version, s.sha256, if s.revoked { "  REVOKED" } else { "" });
            }
        }
    }
    Ok(())
}

fn print_device(d: &outpost_hub::registry::DeviceRecord) {
    let tier = match &d.tpm {
        Some(t) => format!("hardware (TPM key {}…, boot PCRs {:#x})", t.ak.get(..16).unwrap_or(&t.ak), t.pcrs),
        None => "software".into(),
    };
    println!("device      {}", d.key);
    println!("status      {}", format!("{:?}", d.status).to_lowercase());
    println!("tier        {tier}");
    println!("enrolled    {} by {}", format_rfc3339(d.approved_at), d.enrolled_by.as_deref().unwrap_or("operator"));
    println!("hardware    {}", d.hardware.as_deref().unwrap_or("-"));
    println!("channel     {}", d.channel);
    let site =
        d.shown_site().map_or("-".to_owned(), |s| if d.site_node { format!("{s} (site node)") } else { s.into() });
    println!("site        {site}");
    println!("active      {}", d.active.map_or("-".to_owned(), |a| a.to_string()));
    println!("policy      {}", d.policy.map_or("-".to_owned(), |p| p.to_string()));
    println!("last report {}", d.last_report.map_or("never".to_owned(), format_rfc3339));
    match &d.attestation {
        None => println!("attestation never"),
        Some(a) => {
            println!("attestation {} at {}", a.status, format_rfc3339(a.at));
            if let Some(t) = &a.tier {
                println!("  tier      {t}");
            }
            if let Some(e) = a.expires {
                println!("  expires   {}", format_rfc3339(e));
            }
            if let Some(sw) = &a.software {
                println!("  software  {sw}");
            }
            if let Some(b) = a.bootcount {
                println!("  bootcount {b}");
            }
            if let Some(m) = a.model {
                println!("  model     {m}");
            }
            if let Some(p) = a.policy {
                println!("  policy    {p}");
            }
            if let Some(detail) = &a.detail {
                println!("  detail    {detail}");
            }
        }
    }
}

fn keys(cmd: KeysCmd, dir: &Path) -> Result<()> {
    let r = repo(dir)?;
    let now = SystemClock.wall();
    match cmd {
        KeysCmd::Generate { offline_dir, root_keys, root_threshold, targets_keys } => {
            let opts = GenerateOptions { root_keys, root_threshold, targets_keys };
            let written = r.generate(&offline_dir, opts, &mut SystemRng, now)?;
            for p in written {
                eprintln!("wrote {}", p.display());
            }
            eprintln!("signed root v1, targets v1 (delegating `standard` and `high-risk`), snapshot and timestamp");
            eprintln!("move {} off this machine: `serve` never needs it", offline_dir.display());
            println!("{}", r.metadata_dir().join("1.root.json").display());
        }
        KeysCmd::Rotate { role, targets_key: Some(targets_key), .. } if role == "director" => {
            let path = r.rotate_director(&Key::load(&targets_key)?, &targets_key, &mut SystemRng, now)?;
            eprintln!(
                "rotated director: new key {} is listed by targets v{}",
                path.display(),
                r.latest_version("targets")?
            );
            audit(dir, &key_id(&Key::load(&targets_key)?.public_bytes()), Action::Rotate, "director", "")?;
        }
        KeysCmd::Rotate { role, .. } if role == "director" => {
            anyhow::bail!("rotating the director key needs --targets-key FILE (it is listed by the targets role)");
        }
        KeysCmd::Rotate { role, offline_dir, root_keys, .. } => {
            let offline_dir = offline_dir.context("--offline-dir DIR is required to rotate this role")?;
            if root_keys.is_empty() {
                anyhow::bail!("rotating {role} needs the current root key(s): --root-key FILE");
            }
            let roots = root_keys.into_iter().map(|p| Ok((Key::load(&p)?, p))).collect::<Result<Vec<_>>>()?;
            let written = r.rotate(&role, &offline_dir, &roots, &mut SystemRng, now)?;
            for p in written {
                eprintln!("wrote {}", p.display());
            }
            eprintln!(
                "rotated {role}: root v{} is signed by the old and the new keys",
                r.read_meta("root.json")?["signed"]["version"]
            );
            audit(dir, "operator", Action::Rotate, &role, "root rotation")?;
        }
    }
    Ok(())
}

fn release(cmd: ReleaseCmd, dir: &Path) -> Result<()> {
    let r = repo(dir)?;
    let now = SystemClock.wall();
    let report = |out: PublishOutcome| match out {
        PublishOutcome::Published { path, role } => eprintln!("published {path} (role `{role}`): installable now"),
        PublishOutcome::AwaitingSignatures { path, have, need } => eprintln!(
            "{path} has {have} of {need} signatures: not installable until another targets key holder runs `outpost-hub release sign`"
        ),
    };
    match cmd {
        ReleaseCmd::Publish { package, channel, key } => {
            let reg = open(dir)?;
            let d = reg.resolve(&package)?;
            let record = reg.record(&d)?.with_context(|| format!("package {d} vanished"))?;
            let (_, manifest) = reg.manifest(&d)?;
            drop(reg);
            let k = Key::load(&key)?;
            report(r.publish(&record, &manifest, &channel, &k, &key, now)?);
            audit(
                dir,
                &key_id(&k.public_bytes()),
                Action::Publish,
                &format!("{}@{} {d}", manifest.name, manifest.version),
                &format!("channel {channel}"),
            )?;
        }
        ReleaseCmd::Sign { package, key } => {
            let d = open(dir)?.resolve(&package)?;
            let k = Key::load(&key)?;
            report(r.sign_pending(&d, &k, &key, now)?);
            audit(dir, &key_id(&k.public_bytes()), Action::Sign, &d.to_hex(), "second signature")?;
        }
        ReleaseCmd::Start { package, plan, channel } => {
            let text = std::fs::read_to_string(&plan).with_context(|| format!("reading {}", plan.display()))?;
            let plan = outpost_shared::rollout::Plan::from_toml(&text, &plan)?;
            let reg = open(dir)?;
            let d = reg.resolve(&package)?;
            let (_, manifest) = reg.manifest(&d)?;
            let director = Director::new(&r);
            let revoked = director.revocations()?;
            let published = director.published()?;
            if !published.iter().any(|p| p.digest == d && p.channels.contains(&channel)) {
                anyhow::bail!(
                    "{package} is not published to channel {channel}: `outpost-hub release publish` it first"
                );
            }
            let aborted: Vec<outpost_shared::Digest> = outpost_hub::rollouts::list(&reg)?
                .into_iter()
                .filter(|(_, rec)| matches!(rec.rollout.state, outpost_shared::rollout::State::Aborted { .. }))
                .map(|(_, rec)| rec.rollout.release.package)
                .collect();
            let last_good = published
                .iter()
                .filter(|p| p.digest != d && p.firmware.is_none() && p.channels.contains(&channel))
                .rfind(|p| !revoked.revoked.iter().any(|x| x.digest == p.digest) && !aborted.contains(&p.digest))
                .map(|p| p.digest);
            let release = outpost_shared::rollout::Release {
                id: String::new(),
                package: d,
                last_good,
                risk: manifest.risk_tier,
                signers: r.signers_of(&d)?,
            };
            let label = format!("{}@{}", manifest.name, manifest.version);
            let (id, effects) = outpost_hub::rollouts::start(&reg, release, &label, plan, &channel, now)?;
            drop(reg);
            audit(dir, "operator", Action::Start, &id, &format!("{label} on {channel}"))?;
            for e in &effects {
                eprintln!("{id}: {}", outpost_hub::rollouts::describe(e));
            }
            println!("{id}");
        }
        ReleaseCmd::List => {
            println!(
                "{:<5} {:<28} {:<10} {:<22} {:>9} {:>7} {:>8}",
                "ID", "PACKAGE", "CHANNEL", "STATE", "INSTALLED", "ERRORS", "REJECTED"
            );
            for (id, rec) in outpost_hub::rollouts::list(&open(dir)?)? {
                let st = rec.rollout.status();
                println!(
                    "{id:<5} {:<28} {:<10} {:<22} {:>9} {:>7} {:>8}",
                    rec.package,
                    rec.channel,
                    state_word(&st),
                    st.cohort.installed,
                    st.cohort.errors(),
                    st.cohort.rejected_by_policy
                );
            }
        }
        ReleaseCmd::Status { id, json } => release_status(dir, &id, json)?,
        ReleaseCmd::Pause { id } => {
            release_command(dir, &id, "operator", Action::Pause, outpost_shared::rollout::Command::Pause, now)?
        }
        ReleaseCmd::Resume { id } => {
            release_command(dir, &id, "operator", Action::Resume, outpost_shared::rollout::Command::Resume, now)?
        }
        ReleaseCmd::Abort { id, reason } => {
            let cmd = outpost_shared::rollout::Command::Abort { reason: reason.clone() };
            release_command(dir, &id, "operator", Action::Abort, cmd, now)?;
        }
        ReleaseCmd::RetryFailed { id } => {
            release_command(
                dir,
                &id,
                "operator",
                Action::RetryFailed,
                outpost_shared::rollout::Command::RetryFailed,
                now,
            )?;
        }
        ReleaseCmd::Approve { id, key } => {
            // Only a key holder of the package's role may approve (and, for high risk, not its publisher).
            let k = Key::load(&key)?;
            let risk = outpost_hub::rollouts::get(&open(dir)?, &id)?.rollout.release.risk;
            r.authorise(outpost_hub::tuf::role_for(risk), &k, &key)?;
            let key_id = key_id(&k.public_bytes());
            let cmd = outpost_shared::rollout::Command::Approve { key_id: key_id.clone() };
            release_command(dir, &id, &key_id, Action::Approve, cmd, now)?;
        }
        ReleaseCmd::Revoke { package, reason, key } => {
            let d = open(dir)?.resolve(&package)?;
            let list = Director::new(&r).revoke(d, &reason, now)?;
            audit(dir, "operator", Action::Revoke, &d.to_hex(), &reason)?;
            eprintln!(
                "revoked {d}: revocation list v{} ({} package(s)); devices never activate it again",
                list.version,
                list.revoked.len()
            );
            if let Some(key) = key {
                let path = r.unpublish(&d, &Key::load(&key)?, &key, now)?;
                eprintln!("removed {path} from TUF targets");
            }
        }
    }
    Ok(())
}

fn label(reg: &Registry, d: &outpost_shared::Digest) -> Result<String> {
    let r = reg.record(d)?.with_context(|| format!("package {d} vanished"))?;
    Ok(format!("{}@{}", r.name, r.version))
}

fn print_details(reg: &Registry, d: &outpost_shared::Digest) -> Result<()> {
    let det = reg.show(d)?;
    let (r, m) = (&det.record, &det.manifest);
    println!("package     {}", r.digest);
    println!("name        {} {}", m.name, m.version);
    if let Some(desc) = &m.description {
        println!("            {desc}");
    }
    println!(
        "capability  {}   risk: {}   data: {}   license: {}",
        m.capability, m.risk_tier, m.data_classification, m.license
    );
    println!(
        "size        package {}, model {} (model sha256 {})",
        human_bytes(r.package_len),
        human_bytes(r.model_len),
        r.model_digest
    );
    println!("added       {}", format_rfc3339(r.added_at));
    println!(
        "runtime     agent >= {}, memory budget {}",
        m.runtime.min_agent_version,
        human_bytes(m.runtime.memory_budget_bytes)
    );
    if let Some(fw) = &m.firmware {
        println!("firmware    hardware {}, release counter {}", fw.hardware_id, fw.release_counter);
    }
    println!("contract");
    for (dir, specs) in [("in ", &m.contract.inputs), ("out", &m.contract.outputs)] {
        for s in specs {
            let dims: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
            println!("  {dir} {} {} [{}]", s.name, s.dtype, dims.join(", "));
        }
    }
    println!(
        "lineage     ({} {} back to the roots)",
        det.lineage.len(),
        if det.lineage.len() == 1 { "entry" } else { "entries" }
    );
    for e in &det.lineage {
        let indent = "  ".repeat(e.depth + 1);
        match &e.known {
            Some((nv, op)) => println!("{indent}{nv}  {}  made by: {op}", e.digest.short()),
            None => println!("{indent}{}  (not in this registry)", e.digest),
        }
    }
    let ev = &m.evaluation;
    println!("evaluation");
    println!("  suite     {} ({})", ev.suite.name, ev.suite.digest);
    let metrics = |ms: &std::collections::BTreeMap<String, f64>| {
        ms.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
    };
    println!("  metrics   {}", metrics(&ev.metrics));
    let base_pkg = ev.baseline.package.map(|p| format!(" ({})", p.short())).unwrap_or_default();
    println!(
        "  baseline  {}{base_pkg}{}",
        ev.baseline.name,
        if ev.baseline.metrics.is_empty() { String::new() } else { format!(": {}", metrics(&ev.baseline.metrics)) }
    );
    println!("  decision  {} by {}: {}", ev.decision.outcome, ev.decision.by, ev.decision.reason);
    let p = &m.provenance;
    println!("provenance  built by {} on {}, from {} at {}", p.built_by, p.built_at, p.source, p.revision);
    println!(
        "smoke test  {} input(s), {} checked output(s), tolerance {:e}",
        m.smoke_test.inputs.len(),
        m.smoke_test.expected.len(),
        m.smoke_test.tolerance
    );
    let aliases: Vec<String> = reg.aliases()?.into_iter().filter(|(_, a)| a == d).map(|(n, _)| n).collect();
    if !aliases.is_empty() {
        println!("aliases     {}", aliases.join(", "));
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// Prints site-policy refusals per release and per site.
fn print_rejections(devices: &[outpost_hub::registry::DeviceRecord], json: bool) -> Result<()> {
    use std::collections::BTreeMap;
    // (package, digest) -> (site, rule, verb, by_site) -> devices
    type Release = (String, String);
    type Decision<'a> = (String, String, &'a str, bool);
    let mut by_release: BTreeMap<Release, BTreeMap<Decision, Vec<String>>> = BTreeMap::new();
    for d in devices {
        for r in &d.refusals {
            let site = d.shown_site().unwrap_or("-").to_owned();
            by_release
                .entry((r.package.clone(), r.digest.to_hex()))
                .or_default()
                .entry((site, r.rule.clone(), r.verb(), r.by_site || d.site_node))
                .or_default()
                .push(d.key.clone());
        }
    }
    if json {
        let rows: Vec<serde_json::Value> = by_release
            .iter()
            .flat_map(|((package, digest), rows)| {
                rows.iter().map(move |((site, rule, verb, site_level), keys)| {
                    serde_json::json!({
                        "package": package, "digest": digest, "site": site, "rule": rule, "decision": verb,
                        "site_level": site_level, "devices": keys,
                    })
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if by_release.is_empty() {
        println!("no package is refused by any site policy");
        return Ok(());
    }
    println!("PER RELEASE");
    println!("{:<28} {:<12} {:>9} {:>9}  RULES", "PACKAGE", "DIGEST", "REJECTED", "DEFERRED");
    for ((package, digest), rows) in &by_release {
        let count = |verb: &str| rows.iter().filter(|(k, _)| k.2 == verb).map(|(_, v)| v.len()).sum::<usize>();
        let rules: std::collections::BTreeSet<&str> = rows.keys().map(|k| k.1.as_str()).collect();
        let rules: Vec<&str> = rules.into_iter().collect();
        println!(
            "{:<28} {:<12} {:>9} {:>9}  {}",
            package,
            &digest[..12],
            count("rejected"),
            count("deferred"),
            rules.join(", ")
        );
    }
    println!("\nPER SITE");
    println!("{:<16} {:<28} {:<10} {:<22} DECIDED BY", "SITE", "PACKAGE", "DECISION", "RULE");
    let mut by_site: BTreeMap<(&str, &str, &str, &str, bool), usize> = BTreeMap::new();
    for ((package, _), rows) in &by_release {
        for ((site, rule, verb, site_level), keys) in rows {
            *by_site.entry((site, package, verb, rule, *site_level)).or_default() += keys.len();
        }
    }
    for ((site, package, verb, rule, site_level), n) in by_site {
        let who = match (site_level, n) {
            (true, _) => "the site node, for the whole site".to_owned(),
            (false, 1) => "1 device's policy".to_owned(),
            (false, n) => format!("{n} devices' policies"),
        };
        println!("{site:<16} {package:<28} {verb:<10} {rule:<22} {who}");
    }
    Ok(())
}

/// Appends an admin action to the audit log.
fn audit(dir: &Path, actor: &str, action: Action, subject: &str, detail: &str) -> Result<()> {
    let mut log = outpost_hub::audit::AuditLog::open(&outpost_hub::audit::default_path(dir))?;
    log.append(SystemClock.wall(), actor, action, subject, detail)?;
    // The newest anchor is kept in the index too: `audit verify` then catches an edited or cut-off newest entry.
    if let Some(head) = log.head() {
        open(dir)?.audit_anchor_put(&head)?;
    }
    Ok(())
}

fn state_word(st: &outpost_shared::rollout::Status) -> String {
    use outpost_shared::rollout::{Position, State};
    match (&st.state, st.position) {
        (State::Running, Position::Stage(i)) if st.paused => format!("paused at stage {}", i + 1),
        (State::Running, Position::Stage(i)) => format!("running stage {}", i + 1),
        (State::Running, Position::Shadow) => "running shadow".into(),
        (State::Running, Position::NotStarted) => "starting".into(),
        (State::AwaitingApproval { next }, _) => format!("awaiting approval ({})", next + 1),
        (State::Aborted { .. }, _) => "ABORTED".into(),
        (State::Completed { .. }, _) => "completed".into(),
        (State::Superseded { by, .. }, _) => format!("superseded by {by}"),
    }
}

fn release_command(
    dir: &Path,
    id: &str,
    actor: &str,
    action: Action,
    cmd: outpost_shared::rollout::Command,
    now: u64,
) -> Result<()> {
    let detail = match &cmd {
        outpost_shared::rollout::Command::Abort { reason } => reason.clone(),
        _ => String::new(),
    };
    let effects = outpost_hub::rollouts::command(&open(dir)?, id, cmd, now)?;
    audit(dir, actor, action, id, &detail)?;
    for e in &effects {
        eprintln!("{id}: {}", outpost_hub::rollouts::describe(e));
    }
    Ok(())
}

fn release_status(dir: &Path, id: &str, json: bool) -> Result<()> {
    let rec = outpost_hub::rollouts::get(&open(dir)?, id)?;
    let st = rec.rollout.status();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": id, "package": rec.package, "channel": rec.channel, "status": st,
                "recovery_secs": rec.rollout.recovery_time().map(|d| d.as_secs()),
            }))?
        );
        return Ok(());
    }
    println!("release   {id}: {} on {} ({})", rec.package, rec.channel, state_word(&st));
    if let outpost_shared::rollout::State::Aborted { reason, at } = &st.state {
        println!("aborted   {} — {reason}", format_rfc3339(*at));
    }
    println!(
        "\n{:<14} {:>8} {:>8} {:>9} {:>7} {:>11} {:>8}",
        "STAGE", "DEVICES", "PENDING", "INSTALLED", "FAILED", "ROLLED BACK", "REJECTED"
    );
    let row = |name: &str, s: &outpost_shared::rollout::Stats| {
        println!(
            "{name:<14} {:>8} {:>8} {:>9} {:>7} {:>11} {:>8}",
            s.assigned, s.pending, s.installed, s.failed, s.rolled_back, s.rejected_by_policy
        );
    };
    if let Some(sh) = &st.shadow {
        row("shadow", sh);
    }
    for (i, s) in st.stages.iter().enumerate() {
        row(&rec.rollout.plan.stage_name(i), s);
    }
    row("cohort", &st.cohort);
    println!("(REJECTED: refused by site policy; counted apart from failures, outside both percentages)");
    // What the release's devices reported as telemetry, per stage.
    let store = outpost_hub::telemetry::TelemetryStore::open(dir, Arc::new(SystemClock))?;
    let filter = outpost_hub::telemetry::Filter { release: Some(id.to_owned()), ..Default::default() };
    let groups = store.aggregate(outpost_hub::telemetry::GroupBy::Stage, &filter)?;
    if !groups.is_empty() {
        println!(
            "\n{:<14} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9}",
            "TELEMETRY", "EVENTS", "ROLLBACKS", "REJECTED", "ERRORS", "INFERENCES", "P95"
        );
        for g in groups {
            let t = g.summary;
            let stage = g.key.parse::<usize>().map_or(g.key.clone(), |i| rec.rollout.plan.stage_name(i));
            let p95 = t
                .inference
                .values()
                .filter_map(|i| i.p95_us)
                .max()
                .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0));
            println!(
                "{stage:<14} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9}",
                t.events,
                t.rollbacks,
                t.rejections_by_rule.values().sum::<u64>(),
                t.errors,
                t.inference.values().map(|i| i.count).sum::<u64>(),
                p95
            );
        }
    }
    if let Some(r) = &st.recovery {
        match r.time() {
            Some(t) => println!(
                "\nrollback recovery time: {} s ({} of {} affected devices back on the last good package)",
                t.as_secs(),
                r.recovered,
                r.affected
            ),
            None => println!(
                "\nrollback in progress: {} of {} affected devices back on the last good package",
                r.recovered, r.affected
            ),
        }
    }
    Ok(())
}

fn fleet_status(dir: &Path, json: bool) -> Result<()> {
    use outpost_hub::telemetry::{Filter, GroupBy, TelemetryStore};
    use std::collections::BTreeMap;
    let devices = open(dir)?.devices()?;
    let store = TelemetryStore::open(dir, Arc::new(SystemClock))?;
    let by_site: BTreeMap<String, outpost_hub::telemetry::Summary> =
        store.aggregate(GroupBy::Site, &Filter::default())?.into_iter().map(|g| (g.key, g.summary)).collect();
    let mut sites: BTreeMap<String, Vec<&outpost_hub::registry::DeviceRecord>> = BTreeMap::new();
    for d in devices.iter().filter(|d| !d.site_node) {
        sites.entry(d.shown_site().unwrap_or("-").to_owned()).or_default().push(d);
    }
    if json {
        let out: Vec<serde_json::Value> = sites
            .iter()
            .map(|(site, ds)| {
                let running: BTreeMap<String, usize> = ds.iter().fold(BTreeMap::new(), |mut m, d| {
                    *m.entry(d.active.map_or("-".into(), |a| a.to_hex())).or_default() += 1;
                    m
                });
                serde_json::json!({"site": site, "devices": ds.len(), "running": running, "telemetry": by_site.get(site)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>7} {:<34} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9} {:>9}",
        "SITE", "DEVICES", "RUNNING", "EVENTS", "ROLLBACKS", "REJECTED", "ERRORS", "INFERENCES", "P50", "P95"
    );
    for (site, ds) in &sites {
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for d in ds {
            *running.entry(d.active.map_or("-".into(), |a| a.short())).or_default() += 1;
        }
        let running: Vec<String> = running.iter().map(|(p, n)| format!("{p}×{n}")).collect();
        let t = by_site.get(site.as_str()).cloned().unwrap_or_default();
        let inferences: u64 = t.inference.values().map(|i| i.count).sum();
        let p = |f: fn(&outpost_hub::telemetry::InferenceSummary) -> Option<u64>| {
            t.inference
                .values()
                .filter_map(f)
                .max()
                .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0))
        };
        let rejected: u64 = t.rejections_by_rule.values().sum();
        println!(
            "{site:<14} {:>7} {:<34} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9} {:>9}",
            ds.len(),
            running.join(" "),
            t.events,
            t.rollbacks,
            rejected,
            t.errors,
            inferences,
            p(|i| i.p50_us),
            p(|i| i.p95_us)
        );
    }
    Ok(())
}
