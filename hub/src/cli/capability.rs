//! `outpost-hub capability …`: register capabilities (request contract, data class, baseline, risk tier, budget,
//! owners) and show each one's boundary — champion per channel, suite, rollback path, owners — at a glance.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::boundary::{self, Boundary};
use outpost_hub::registry::CapabilityAdded;
use outpost_hub::service::Hub;
use outpost_shared::capability::{Capability, MAX_CAPABILITY_TOML_BYTES};
use outpost_shared::clock::format_rfc3339;
use outpost_shared::manifest::TensorSpec;

use super::{Out, human_bytes};

/// The rule, said once for `--help` and the docs.
const RULE: &str = "A package whose manifest names a registered capability must fit it at `package add` (same \
tensors, types and ranks; inputs at least as general, outputs no more general; data class and risk tier at least \
the capability's), and `release publish` refuses it until the capability names all four owners. A package of an \
unregistered capability is added and published unchecked, as before capabilities existed.";

#[derive(Subcommand, Debug, Serialize, Deserialize)]
#[command(after_help = RULE)]
pub enum CapabilityCmd {
    /// Register a capability from its TOML (name, contract, data_classification, risk_tier, baseline, budget,
    /// owners; see fixtures/capabilities/), or a new revision of it. Owners, budget, baseline and description may
    /// change; the contract may not. Prints the capability's name.
    #[command(after_help = RULE)]
    Add {
        /// The capability TOML.
        file: PathBuf,
    },
    /// List registered capabilities: revision, risk tier, data class, owners named, packages.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a capability's boundary: contract, budget, baseline, owners, and per channel the champion (what it
    /// serves), its evaluation suite and the rollback path (last good release), with the exit criteria checked.
    Show {
        /// The capability's name (`ocr.text-direction`).
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `outpost-hub capability …`.
pub fn run(cmd: CapabilityCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let store = hub.store()?;
    match cmd {
        CapabilityCmd::Add { file } => {
            let text = read_bounded(&file)?;
            let cap = Capability::from_toml(&text, &file)?;
            let (rec, added) = store.capabilities().capability_add(&cap)?;
            let what = match added {
                CapabilityAdded::Created => "registered",
                CapabilityAdded::Revised => "revised",
                CapabilityAdded::Unchanged => "unchanged (already registered as)",
            };
            writeln!(o.err, "{what} capability {} revision {}", rec.capability.name, rec.revision)?;
            if let Err(missing) = rec.capability.check_publishable() {
                writeln!(o.err, "warning: {missing}")?;
            }
            writeln!(o.out, "{}", rec.capability.name)?;
        }
        CapabilityCmd::List { json } => {
            let caps = store.capabilities().capabilities()?;
            let packages = store.packages();
            let mut count = std::collections::BTreeMap::<String, usize>::new();
            for r in packages.list()? {
                *count.entry(packages.manifest(&r.digest)?.1.capability).or_default() += 1;
            }
            if json {
                let rows: Vec<serde_json::Value> = caps
                    .iter()
                    .map(|r| {
                        let c = &r.capability;
                        serde_json::json!({
                            "name": c.name, "revision": r.revision, "risk_tier": c.risk_tier,
                            "data_classification": c.data_classification,
                            "missing_owners": c.owners.missing(), "packages": count.get(&c.name).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if caps.is_empty() {
                writeln!(o.err, "no capabilities yet: register one with `outpost-hub capability add CAP.toml`")?;
            } else {
                writeln!(
                    o.out,
                    "{:<28} {:>3} {:<6} {:<12} {:<7} {:>8}",
                    "NAME", "REV", "RISK", "DATA", "OWNERS", "PACKAGES"
                )?;
                for r in caps {
                    let c = &r.capability;
                    writeln!(
                        o.out,
                        "{:<28} {:>3} {:<6} {:<12} {:<7} {:>8}",
                        c.name,
                        r.revision,
                        c.risk_tier.to_string(),
                        c.data_classification.to_string(),
                        format!("{}/4", 4 - c.owners.missing().len()),
                        count.get(&c.name).copied().unwrap_or(0)
                    )?;
                }
            }
        }
        CapabilityCmd::Show { name, json } => {
            let b = boundary::boundary(store, &hub.repo(), &name)?;
            if json {
                writeln!(o.out, "{}", serde_json::to_string_pretty(&show_json(&b))?)?;
            } else {
                print_boundary(&b, o)?;
            }
        }
    }
    Ok(0)
}

/// Reads a capability file within [`MAX_CAPABILITY_TOML_BYTES`].
fn read_bounded(file: &std::path::Path) -> Result<String> {
    let len = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
    if len > MAX_CAPABILITY_TOML_BYTES as u64 {
        anyhow::bail!("{} is {len} bytes, over the limit of {MAX_CAPABILITY_TOML_BYTES}", file.display());
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

fn label(b: &Boundary, d: &outpost_shared::Digest) -> String {
    match b.package(d) {
        Some((r, _)) => format!("{}@{} ({})", r.name, r.version, d.short()),
        None => d.to_string(),
    }
}

fn specs(specs: &[TensorSpec]) -> String {
    let one = |s: &TensorSpec| {
        let dims: Vec<String> = s.shape.iter().map(ToString::to_string).collect();
        format!("{} {} [{}]", s.name, s.dtype, dims.join(", "))
    };
    specs.iter().map(one).collect::<Vec<_>>().join("; ")
}

fn print_boundary(b: &Boundary, o: &mut Out<'_>) -> Result<()> {
    let c = &b.record.capability;
    let tick = |ok: bool| if ok { "yes" } else { "NO" };
    writeln!(
        o.out,
        "capability  {}  (revision {}, {})",
        c.name,
        b.record.revision,
        format_rfc3339(b.record.updated_at)
    )?;
    if let Some(d) = &c.description {
        writeln!(o.out, "            {d}")?;
    }
    writeln!(o.out, "risk        {}   data: {}", c.risk_tier, c.data_classification)?;
    writeln!(o.out, "contract    in  {}", specs(&c.contract.inputs))?;
    writeln!(o.out, "            out {}", specs(&c.contract.outputs))?;
    let bm: Vec<String> = c.baseline.metrics.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    writeln!(
        o.out,
        "baseline    {}{}",
        c.baseline.name,
        if bm.is_empty() { String::new() } else { format!(": {}", bm.join(", ")) }
    )?;
    let bu = &c.budget;
    writeln!(
        o.out,
        "budget      p95 {} ms on {} ({} thread{}), peak memory {}, package {}",
        bu.p95_latency_ms,
        bu.cpu,
        bu.threads,
        if bu.threads == 1 { "" } else { "s" },
        human_bytes(bu.peak_memory_bytes),
        human_bytes(bu.package_size_bytes)
    )?;
    writeln!(o.out, "owners")?;
    for (role, who) in c.owners.roles() {
        writeln!(o.out, "  {:<11} {}", role.to_string(), who.unwrap_or("MISSING"))?;
    }
    writeln!(o.out, "packages    {}", b.packages.len())?;
    if !b.repository {
        writeln!(o.out, "channels    (no TUF repository yet: `outpost-hub keys generate`)")?;
    } else if b.channels.is_empty() {
        writeln!(o.out, "channels    nothing of this capability is published")?;
    }
    for ch in &b.channels {
        writeln!(o.out, "channel     {}", ch.channel)?;
        writeln!(o.out, "  champion  {}", label(b, &ch.champion))?;
        match b.latest_record(&ch.champion) {
            Some((id, r)) => {
                writeln!(o.out, "  suite     {} ({}), record {}", r.suite_name, r.suite.short(), id.short())?
            }
            None => {
                writeln!(o.out, "  suite     NONE (no evaluation record on a suite of this capability: `eval run`)")?
            }
        }
        match &ch.rollback {
            Some(d) => writeln!(o.out, "  rollback  {}", label(b, d))?,
            None => writeln!(o.out, "  rollback  NONE (no earlier good release on this channel)")?,
        }
    }
    for (d, m) in &b.suites {
        writeln!(o.out, "suite       {} ({})", m.suite.name, d.short())?;
    }
    let champion = !b.channels.is_empty();
    let evaluated = champion && b.channels.iter().all(|c| b.latest_record(&c.champion).is_some());
    let rollback = b.channels.iter().any(|c| c.rollback.is_some());
    let owners = b.missing_owners().is_empty();
    writeln!(
        o.out,
        "boundary    signed champion: {}   evaluation suite: {}   rollback path: {}   four owners: {}",
        tick(champion),
        tick(evaluated),
        tick(rollback),
        tick(owners)
    )?;
    Ok(())
}

fn show_json(b: &Boundary) -> serde_json::Value {
    let channels: Vec<serde_json::Value> = b
        .channels
        .iter()
        .map(|ch| {
            let record = b.latest_record(&ch.champion);
            serde_json::json!({
                "channel": ch.channel, "champion": ch.champion, "rollback": ch.rollback,
                "suite": record.map(|(_, r)| r.suite), "record": record.map(|(id, _)| *id),
            })
        })
        .collect();
    serde_json::json!({
        "capability": b.record.capability,
        "revision": b.record.revision,
        "updated_at": b.record.updated_at,
        "packages": b.packages.iter().map(|(r, _)| r.digest).collect::<Vec<_>>(),
        "channels": channels,
        "suites": b.suites.iter().map(|(d, m)| serde_json::json!({"digest": d, "name": m.suite.name})).collect::<Vec<_>>(),
        "missing_owners": b.missing_owners(),
    })
}
