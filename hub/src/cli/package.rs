//! `outpost-hub package …` and `reconstruct`: add, list, show and verify content-addressed packages, and rebuild
//! one from its stored blobs.

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::{Out, human_bytes, label, registry};
use outpost_hub::Registry;
use outpost_hub::blobs::BlobStatus;
use outpost_hub::registry::CapabilityCheck;
use outpost_hub::rollouts::ReleaseRecord;
use outpost_hub::storage::CapabilityStore;
use outpost_shared::Digest;
use outpost_shared::challenger::{CycleRecord, Outcome};
use outpost_shared::clock::format_rfc3339;
use outpost_shared::evaluation::{Backing, card_backing};
use outpost_shared::rollout::{Position, State};
use std::path::PathBuf;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum PackageCmd {
    /// Check an ONNX model against its manifest (loads in tract, contract, smoke test), then store it as a
    /// content-addressed package. A manifest with `kind = "firmware"` takes a firmware image instead (never loaded,
    /// only length-checked). If the manifest's capability is registered, the package must fit it (contract, data
    /// class, risk tier; `capability --help`); a package of an unregistered capability is added unchecked. Prints
    /// the package digest on stdout.
    Add {
        /// The ONNX model file, or the firmware image.
        model: PathBuf,
        /// The manifest (TOML). Default: the model's path with a .toml extension.
        #[arg(long, value_name = "M.toml")]
        manifest: Option<PathBuf>,
    },
    /// List registered packages.
    List,
    /// Show a package: manifest, lineage back to its roots — at each step its evaluation records, the challenger
    /// cycles it took part in (with the decision) and its releases (stage reached, abort, rollback) — and its
    /// evaluation card (each claimed metric marked backed by an evaluation record on the card's suite, or UNBACKED).
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

/// Runs `outpost-hub package …`.
pub fn run(cmd: PackageCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    match cmd {
        PackageCmd::Add { model, manifest } => {
            let manifest = manifest.unwrap_or_else(|| model.with_extension("toml"));
            let reg = registry(hub)?;
            // The capability as the store has it: on PostgreSQL the database's, whichever replica registered it.
            let out = reg.add_against(&model, &manifest, hub.store()?.capabilities())?;
            if let Some(pg) = hub.store()?.postgres() {
                // The blobs are on the shared storage now: the database's index may name them.
                let record = reg.record(&out.digest)?.with_context(|| format!("package {} vanished", out.digest))?;
                pg.package_put(&record, &reg.manifest(&out.digest)?.0)?;
            }
            if let Some(smoke) = &out.smoke {
                let diffs: Vec<String> = smoke.outputs.iter().map(|(n, d)| format!("{n} max |diff| {d:.1e}")).collect();
                writeln!(
                    o.err,
                    "checked {}: loads in tract, contract matches, smoke test passed ({})",
                    out.name_version,
                    diffs.join(", ")
                )?;
            }
            if out.smoke.is_none() && out.added {
                writeln!(o.err, "checked {}: firmware image (not loaded; secondaries verify it)", out.name_version)?;
            }
            match out.capability {
                Some(CapabilityCheck::Fits { revision }) => {
                    writeln!(o.err, "fits its capability (revision {revision}): contract, data class, risk tier")?
                }
                Some(CapabilityCheck::NotRegistered) => writeln!(
                    o.err,
                    "note: its capability is not registered: no contract check (`outpost-hub capability add`)"
                )?,
                None => {}
            }
            if out.added {
                writeln!(o.err, "added {}", out.name_version)?;
            } else {
                writeln!(o.err, "{} is already registered with this digest; nothing changed", out.name_version)?;
            }
            writeln!(o.out, "{}", out.digest)?;
        }
        PackageCmd::List => {
            let reg = registry(hub)?;
            let records = reg.list()?;
            if records.is_empty() {
                writeln!(
                    o.err,
                    "no packages yet: add one with `outpost-hub package add MODEL.onnx --manifest M.toml`"
                )?;
            } else {
                writeln!(
                    o.out,
                    "{:<12}  {:<24} {:<10} {:<22} {:<6} {:>10}  ADDED",
                    "DIGEST", "NAME", "VERSION", "CAPABILITY", "RISK", "SIZE"
                )?;
                for r in records {
                    let (_, m) = reg.manifest(&r.digest)?;
                    writeln!(
                        o.out,
                        "{:<12}  {:<24} {:<10} {:<22} {:<6} {:>10}  {}",
                        r.digest.short(),
                        r.name,
                        r.version,
                        m.capability,
                        m.risk_tier.to_string(),
                        human_bytes(r.package_len),
                        format_rfc3339(r.added_at)
                    )?;
                }
            }
        }
        PackageCmd::Show { package } => {
            let reg = registry(hub)?;
            let d = reg.resolve(&package)?;
            print_details(reg, hub.store()?.capabilities(), &d, o)?;
        }
        PackageCmd::Verify { package } => {
            let reg = registry(hub)?;
            let only = package.map(|p| reg.resolve(&p)).transpose()?;
            // A progress line that cannot be written is not worth failing the check for; the summary below is.
            let report = reg.verify_with_progress(only.as_ref(), |c| {
                let what = format!("{:<7} {}", c.role, c.digest);
                let _ = match c.status {
                    BlobStatus::Intact => writeln!(o.err, "ok       {what} ({})", human_bytes(c.bytes)),
                    BlobStatus::Tampered { actual, len } => writeln!(
                        o.out,
                        "TAMPERED {what} of package {}: {} now holds {} bytes hashing to {actual}",
                        c.package.short(),
                        c.path.display(),
                        len
                    ),
                    BlobStatus::Missing => writeln!(
                        o.out,
                        "MISSING  {what} of package {}: no file at {}",
                        c.package.short(),
                        c.path.display()
                    ),
                };
            })?;
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            let problems = report.problems().count();
            writeln!(
                o.err,
                "verified {} blobs, {} in {:.3} s ({:.2} GB/s): {}",
                report.checks.len(),
                human_bytes(report.bytes),
                secs,
                report.bytes as f64 / secs / 1e9,
                if problems == 0 { "all intact".to_owned() } else { format!("{problems} PROBLEM(S)") }
            )?;
            if problems > 0 {
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// Runs `outpost-hub reconstruct ALIAS --out DIR`.
pub fn reconstruct(alias: String, out: std::path::PathBuf, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let reg = registry(hub)?;
    let (path, digest) = reg.reconstruct(&alias, &out)?;
    writeln!(
        o.err,
        "rebuilt {} from the stored model blob and manifest; its digest matches the recorded one",
        label(reg, &digest)?
    )?;
    writeln!(o.err, "sha256 {digest}")?;
    writeln!(o.out, "{}", path.display())?;
    Ok(0)
}

fn print_details(
    reg: &Registry,
    capabilities: &dyn CapabilityStore,
    d: &outpost_shared::Digest,
    o: &mut Out<'_>,
) -> Result<()> {
    let det = reg.show(d)?;
    let (r, m) = (&det.record, &det.manifest);
    writeln!(o.out, "package     {}", r.digest)?;
    writeln!(o.out, "name        {} {}", m.name, m.version)?;
    if let Some(desc) = &m.description {
        writeln!(o.out, "            {desc}")?;
    }
    writeln!(
        o.out,
        "capability  {}   risk: {}   data: {}   license: {}",
        m.capability, m.risk_tier, m.data_classification, m.license
    )?;
    let standing = match capabilities.capability(&m.capability)? {
        None => "not registered: unchecked".to_owned(),
        Some(c) => match c.capability.admits(m) {
            Ok(()) => format!("registered (revision {}), fits", c.revision),
            Err(e) => format!("registered (revision {}), DOES NOT FIT: {e}", c.revision),
        },
    };
    writeln!(o.out, "            capability {standing}")?;
    writeln!(
        o.out,
        "size        package {}, model {} (model sha256 {})",
        human_bytes(r.package_len),
        human_bytes(r.model_len),
        r.model_digest
    )?;
    writeln!(o.out, "added       {}", format_rfc3339(r.added_at))?;
    writeln!(
        o.out,
        "runtime     agent >= {}, memory budget {}",
        m.runtime.min_agent_version,
        human_bytes(m.runtime.memory_budget_bytes)
    )?;
    if let Some(fw) = &m.firmware {
        writeln!(o.out, "firmware    hardware {}, release counter {}", fw.hardware_id, fw.release_counter)?;
    }
    writeln!(o.out, "contract")?;
    for (dir, specs) in [("in ", &m.contract.inputs), ("out", &m.contract.outputs)] {
        for s in specs {
            let dims: Vec<String> = s.shape.iter().map(|d| d.to_string()).collect();
            writeln!(o.out, "  {dir} {} {} [{}]", s.name, s.dtype, dims.join(", "))?;
        }
    }
    writeln!(
        o.out,
        "lineage     ({} {} back to the roots)",
        det.lineage.len(),
        if det.lineage.len() == 1 { "entry" } else { "entries" }
    )?;
    // At each step, the evidence that joins to it: evaluation records, challenger cycles it took part in, releases.
    let cycles = reg.cycles()?;
    let releases: Vec<(String, ReleaseRecord)> = reg.releases()?;
    for e in &det.lineage {
        let indent = "  ".repeat(e.depth + 1);
        match &e.known {
            Some((nv, op)) => {
                writeln!(o.out, "{indent}{nv}  {}  made by: {op}", e.digest.short())?;
                for line in lineage_evidence(reg, &e.digest, nv, &cycles, &releases)? {
                    writeln!(o.out, "{indent}  {line}")?;
                }
            }
            None => writeln!(o.out, "{indent}{}  (not in this registry)", e.digest)?,
        }
    }
    let ev = &m.evaluation;
    writeln!(o.out, "evaluation")?;
    writeln!(o.out, "  suite     {} ({})", ev.suite.name, ev.suite.digest)?;
    let metrics = |ms: &std::collections::BTreeMap<String, f64>| {
        ms.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
    };
    // Each claim against the package's evaluation records: a card claiming what no record backs is marked.
    let records = reg.evaluations(d)?;
    let claims = card_backing(ev, &records);
    for (name, claimed, backing) in &claims {
        let how = match backing {
            Backing::Backed { record } => format!("backed by record {}", record.short()),
            Backing::Differs { record, recorded } => format!("UNBACKED: record {} measured {recorded}", record.short()),
            Backing::NotMeasured => "UNBACKED: no record on this suite measured it".to_owned(),
            Backing::NoRecord => "UNBACKED: no evaluation record on this suite".to_owned(),
        };
        writeln!(o.out, "  metric    {name} = {claimed}  ({how})")?;
    }
    let unbacked = claims.iter().filter(|(_, _, b)| !b.is_backed()).count();
    if unbacked > 0 {
        writeln!(
            o.out,
            "  card      UNBACKED: {unbacked} of {} claimed metrics have no backing record (`outpost-hub eval run`)",
            claims.len()
        )?;
    }
    for (id, r) in &records {
        writeln!(o.out, "  record    {}", super::suite::record_line(id, r))?;
    }
    let base_pkg = ev.baseline.package.map(|p| format!(" ({})", p.short())).unwrap_or_default();
    writeln!(
        o.out,
        "  baseline  {}{base_pkg}{}",
        ev.baseline.name,
        if ev.baseline.metrics.is_empty() { String::new() } else { format!(": {}", metrics(&ev.baseline.metrics)) }
    )?;
    writeln!(o.out, "  decision  {} by {}: {}", ev.decision.outcome, ev.decision.by, ev.decision.reason)?;
    let p = &m.provenance;
    writeln!(o.out, "provenance  built by {} on {}, from {} at {}", p.built_by, p.built_at, p.source, p.revision)?;
    writeln!(
        o.out,
        "smoke test  {} input(s), {} checked output(s), tolerance {:e}",
        m.smoke_test.inputs.len(),
        m.smoke_test.expected.len(),
        m.smoke_test.tolerance
    )?;
    let aliases: Vec<String> = reg.aliases()?.into_iter().filter(|(_, a)| a == d).map(|(n, _)| n).collect();
    if !aliases.is_empty() {
        writeln!(o.out, "aliases     {}", aliases.join(", "))?;
    }
    Ok(())
}

/// What joins to one package of a lineage: its evaluation records, the challenger cycles it took part in (as
/// champion or as a candidate, with the decision), and its releases (how far each got, and how it ended).
fn lineage_evidence(
    reg: &Registry,
    d: &Digest,
    nv: &str,
    cycles: &[(Digest, CycleRecord)],
    releases: &[(String, ReleaseRecord)],
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for (id, r) in reg.evaluations(d)? {
        lines.push(format!("record   {}", super::suite::record_line(&id, &r)));
    }
    for (id, c) in cycles {
        let promoted = c.promoted.map(|p| format!("promoted {}", p.short())).unwrap_or_else(|| "none promoted".into());
        if c.champion == *d {
            let n = c.candidates.len();
            lines.push(format!("cycle    {} champion: {n} candidate(s) on {}, {promoted}", id.short(), c.suite_name));
        }
        if let Some(cand) = c.candidates.iter().find(|k| k.package == *d) {
            let outcome = match cand.verdict.outcome {
                Outcome::Promoted => "PROMOTED".to_owned(),
                Outcome::Passed => "passed (another was smaller)".to_owned(),
                Outcome::Rejected => format!("REJECTED: {}", cand.verdict.reasons.join("; ")),
            };
            lines.push(format!("cycle    {} candidate against {}: {outcome}", id.short(), c.champion.short()));
        }
    }
    for (id, rel) in releases.iter().filter(|(_, r)| r.package == nv) {
        let stages = rel.rollout.plan.stage.len();
        let reached = match rel.rollout.position {
            Position::NotStarted => "not started".to_owned(),
            Position::Shadow => "shadow".to_owned(),
            Position::Stage(i) => format!("stage {} of {stages}", i + 1),
        };
        let how = match &rel.rollout.state {
            State::Running => "running".to_owned(),
            State::AwaitingApproval { next } => format!("awaiting approval for stage {}", next + 1),
            State::Aborted { at, reason } => {
                let back = if rel.rollout.recovery.is_some() { ", rolled back" } else { "" };
                format!("ABORTED at {}: {reason}{back}", format_rfc3339(*at))
            }
            State::Completed { at } => format!("completed at {}", format_rfc3339(*at)),
            State::Superseded { at, by } => format!("superseded by {by} at {}", format_rfc3339(*at)),
        };
        lines.push(format!("release  {id} on {}: reached {reached}; {how}", rel.channel));
    }
    Ok(lines)
}
