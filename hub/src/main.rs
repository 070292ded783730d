//! `outpost-hub`: the central team's command line over the registry (and later the serving hub).
//!
//! Human-readable progress goes to stderr; the one value a script wants (a digest, a path) goes to stdout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use outpost_hub::blobs::BlobStatus;
use outpost_hub::clock::SystemClock;
use outpost_hub::config::default_data_dir;
use outpost_hub::registry::{InitOutcome, Registry};
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
    /// content-addressed package. Prints the package digest on stdout.
    Add {
        /// The ONNX model file.
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
