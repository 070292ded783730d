//! `outpost-hub release …`: publish, co-sign, revoke and roll out releases, and show where they stand.

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::{Out, audit, registry};
use outpost_hub::director::Director;
use outpost_hub::registry::CapabilityCheck;
use outpost_hub::tuf::Key;
use outpost_hub::tuf::PublishOutcome;
use outpost_hub::tuf::key_id;
use outpost_shared::audit::Action;
use outpost_shared::clock::format_rfc3339;
use std::path::PathBuf;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum ReleaseCmd {
    /// List a registered package as a TUF target on CHANNEL, signed with an offline targets key. High-risk
    /// packages become installable only after a second, distinct key signs (`release sign`). Refused while the
    /// package's registered capability lacks one of its four owners or the package does not fit it (a package of
    /// an unregistered capability is published unchecked).
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
    /// recovery time, and the evaluation records behind its package (with how many card claims they back).
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

/// Runs `outpost-hub release …`.
pub fn run(cmd: ReleaseCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let r = hub.repo();
    let now = hub.clock().wall();
    match cmd {
        ReleaseCmd::Publish { package, channel, key } => {
            // The package index the store serves from (on PostgreSQL the database's: added through any replica).
            let (reg, packages) = (registry(hub)?, hub.store()?.packages());
            let d = packages.resolve(&package)?;
            let record = packages.record(&d)?.with_context(|| format!("package {d} vanished"))?;
            let (_, manifest) = packages.manifest(&d)?;
            // A router's capabilities must be served, its niches and fallbacks covered.
            let director = Director::new(&r);
            let (published, revoked) = (director.published()?, director.revocations()?);
            outpost_hub::routers::check_publish(reg, &record, &manifest, &published, &revoked)?;
            // A registered capability must name its four owners, and the package must still fit it.
            if let CapabilityCheck::NotRegistered = hub.store()?.capabilities().publish_check(&manifest)? {
                writeln!(o.err, "note: capability `{}` is not registered: published unchecked", manifest.capability)?;
            }
            let k = Key::load(&key)?;
            report(r.publish(&record, &manifest, &channel, &k, &key, now)?, o)?;
            audit(
                hub,
                &key_id(&k.public_bytes()),
                Action::Publish,
                &format!("{}@{} {d}", manifest.name, manifest.version),
                &format!("channel {channel}"),
            )?;
        }
        ReleaseCmd::Sign { package, key } => {
            let d = hub.store()?.packages().resolve(&package)?;
            let k = Key::load(&key)?;
            report(r.sign_pending(&d, &k, &key, now)?, o)?;
            audit(hub, &key_id(&k.public_bytes()), Action::Sign, &d.to_hex(), "second signature")?;
        }
        ReleaseCmd::Start { package, plan, channel } => {
            let text = std::fs::read_to_string(&plan).with_context(|| format!("reading {}", plan.display()))?;
            let plan = outpost_shared::rollout::Plan::from_toml(&text, &plan)?;
            let packages = hub.store()?.packages();
            let d = packages.resolve(&package)?;
            let (_, manifest) = packages.manifest(&d)?;
            let director = Director::new(&r);
            let revoked = director.revocations()?;
            let published = director.published()?;
            if !published.iter().any(|p| p.digest == d && p.channels.contains(&channel)) {
                anyhow::bail!(
                    "{package} is not published to channel {channel}: `outpost-hub release publish` it first"
                );
            }
            let aborted: Vec<outpost_shared::Digest> = outpost_hub::rollouts::list(hub.store()?.rollouts())?
                .into_iter()
                .filter(|(_, rec)| matches!(rec.rollout.state, outpost_shared::rollout::State::Aborted { .. }))
                .map(|(_, rec)| rec.rollout.release.package)
                .collect();
            let last_good = published
                .iter()
                .filter(|p| p.digest != d && p.firmware.is_none() && p.channels.contains(&channel))
                // A router's rollback path is the router before it; a model's, the model of its capability before it.
                .filter(|p| p.router == (manifest.kind == outpost_shared::manifest::PackageKind::Router))
                .filter(|p| p.router || p.capability == manifest.capability)
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
            // A router is a line of its own; a model is judged by each device's lane of its capability.
            let line = outpost_hub::rollouts::Line {
                capability: Some(manifest.capability.clone()),
                router: manifest.kind == outpost_shared::manifest::PackageKind::Router,
            };
            let (id, effects) =
                outpost_hub::rollouts::start_line(hub.store()?.rollouts(), release, &label, line, plan, &channel, now)?;
            audit(hub, "operator", Action::Start, &id, &format!("{label} on {channel}"))?;
            for e in &effects {
                writeln!(o.err, "{id}: {}", outpost_hub::rollouts::describe(e))?;
            }
            writeln!(o.out, "{id}")?;
        }
        ReleaseCmd::List => {
            writeln!(
                o.out,
                "{:<5} {:<28} {:<10} {:<22} {:>9} {:>7} {:>8}",
                "ID", "PACKAGE", "CHANNEL", "STATE", "INSTALLED", "ERRORS", "REJECTED"
            )?;
            for (id, rec) in outpost_hub::rollouts::list(hub.store()?.rollouts())? {
                let st = rec.rollout.status();
                writeln!(
                    o.out,
                    "{id:<5} {:<28} {:<10} {:<22} {:>9} {:>7} {:>8}",
                    rec.package,
                    rec.channel,
                    outpost_hub::rollouts::state_word(&st),
                    st.cohort.installed,
                    st.cohort.errors(),
                    st.cohort.rejected_by_policy
                )?;
            }
        }
        ReleaseCmd::Status { id, json } => release_status(hub, &id, json, o)?,
        ReleaseCmd::Pause { id } => {
            release_command(hub, o, &id, "operator", Action::Pause, outpost_shared::rollout::Command::Pause, now)?
        }
        ReleaseCmd::Resume { id } => {
            release_command(hub, o, &id, "operator", Action::Resume, outpost_shared::rollout::Command::Resume, now)?
        }
        ReleaseCmd::Abort { id, reason } => {
            let cmd = outpost_shared::rollout::Command::Abort { reason: reason.clone() };
            release_command(hub, o, &id, "operator", Action::Abort, cmd, now)?;
        }
        ReleaseCmd::RetryFailed { id } => {
            release_command(
                hub,
                o,
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
            let risk = outpost_hub::rollouts::get(hub.store()?.rollouts(), &id)?.rollout.release.risk;
            r.authorise(outpost_hub::tuf::role_for(risk), &k, &key)?;
            let key_id = key_id(&k.public_bytes());
            let cmd = outpost_shared::rollout::Command::Approve { key_id: key_id.clone() };
            release_command(hub, o, &id, &key_id, Action::Approve, cmd, now)?;
        }
        ReleaseCmd::Revoke { package, reason, key } => {
            let d = hub.store()?.packages().resolve(&package)?;
            let list = Director::new(&r).revoke(d, &reason, now)?;
            audit(hub, "operator", Action::Revoke, &d.to_hex(), &reason)?;
            writeln!(
                o.err,
                "revoked {d}: revocation list v{} ({} package(s)); devices never activate it again",
                list.version,
                list.revoked.len()
            )?;
            if let Some(key) = key {
                let path = r.unpublish(&d, &Key::load(&key)?, &key, now)?;
                writeln!(o.err, "removed {path} from TUF targets")?;
            }
        }
    }
    Ok(0)
}

/// Says what a publish did.
fn report(outcome: PublishOutcome, o: &mut Out<'_>) -> Result<()> {
    match outcome {
        PublishOutcome::Published { path, role } => {
            writeln!(o.err, "published {path} (role `{role}`): installable now")?
        }
        PublishOutcome::AwaitingSignatures { path, have, need } => writeln!(
            o.err,
            "{path} has {have} of {need} signatures: not installable until another targets key holder runs `outpost-hub release sign`"
        )?,
    }
    Ok(())
}

/// Runs a rollout command on release `id` and records it in the audit log under `actor`.
pub(super) fn release_command(
    hub: &Hub,
    o: &mut Out<'_>,
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
    let effects = outpost_hub::rollouts::command(hub.store()?.rollouts(), id, cmd, now)?;
    audit(hub, actor, action, id, &detail)?;
    for e in &effects {
        writeln!(o.err, "{id}: {}", outpost_hub::rollouts::describe(e))?;
    }
    Ok(())
}

fn release_status(hub: &Hub, id: &str, json: bool, o: &mut Out<'_>) -> Result<()> {
    let rec = outpost_hub::rollouts::get(hub.store()?.rollouts(), id)?;
    let st = rec.rollout.status();
    if json {
        writeln!(
            o.out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": id, "package": rec.package, "channel": rec.channel, "status": st,
                "recovery_secs": rec.rollout.recovery_time().map(|d| d.as_secs()),
                "evaluations": hub.store()?.evaluations().evaluations(&rec.rollout.release.package)?
                    .iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            }))?
        )?;
        return Ok(());
    }
    writeln!(o.out, "release   {id}: {} on {} ({})", rec.package, rec.channel, outpost_hub::rollouts::state_word(&st))?;
    // The evaluation evidence behind the package: its records, and whether they back its card.
    let package = rec.rollout.release.package;
    let records = hub.store()?.evaluations().evaluations(&package)?;
    let (_, manifest) = registry(hub)?.manifest(&package)?;
    let claims = outpost_shared::evaluation::card_backing(&manifest.evaluation, &records);
    let backed = claims.iter().filter(|(_, _, b)| b.is_backed()).count();
    writeln!(
        o.out,
        "evidence  card: {backed} of {} claimed metrics backed{}",
        claims.len(),
        if backed < claims.len() { " (UNBACKED claims: `outpost-hub package show`)" } else { "" }
    )?;
    for (rid, r) in &records {
        writeln!(o.out, "record    {}", super::suite::record_line(rid, r))?;
    }
    if let outpost_shared::rollout::State::Aborted { reason, at } = &st.state {
        writeln!(o.out, "aborted   {} — {reason}", format_rfc3339(*at))?;
    }
    writeln!(
        o.out,
        "\n{:<14} {:>8} {:>8} {:>9} {:>7} {:>11} {:>8}",
        "STAGE", "DEVICES", "PENDING", "INSTALLED", "FAILED", "ROLLED BACK", "REJECTED"
    )?;
    let mut row = |name: &str, s: &outpost_shared::rollout::Stats| {
        writeln!(
            o.out,
            "{name:<14} {:>8} {:>8} {:>9} {:>7} {:>11} {:>8}",
            s.assigned, s.pending, s.installed, s.failed, s.rolled_back, s.rejected_by_policy
        )
    };
    if let Some(sh) = &st.shadow {
        row("shadow", sh)?;
    }
    for (i, s) in st.stages.iter().enumerate() {
        row(&rec.rollout.plan.stage_name(i), s)?;
    }
    row("cohort", &st.cohort)?;
    writeln!(o.out, "(REJECTED: refused by site policy; counted apart from failures, outside both percentages)")?;
    // What the release's devices reported as telemetry, per stage.
    let store = hub.store()?.telemetry();
    let filter = outpost_hub::telemetry::Filter { release: Some(id.to_owned()), ..Default::default() };
    let groups = store.aggregate(outpost_hub::telemetry::GroupBy::Stage, &filter)?;
    if !groups.is_empty() {
        writeln!(
            o.out,
            "\n{:<14} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9}",
            "TELEMETRY", "EVENTS", "ROLLBACKS", "REJECTED", "ERRORS", "INFERENCES", "P95"
        )?;
        for g in groups {
            let t = g.summary;
            let stage = g.key.parse::<usize>().map_or(g.key.clone(), |i| rec.rollout.plan.stage_name(i));
            let p95 = t
                .inference
                .values()
                .filter_map(|i| i.p95_us)
                .max()
                .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0));
            writeln!(
                o.out,
                "{stage:<14} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9}",
                t.events,
                t.rollbacks,
                t.rejections_by_rule.values().sum::<u64>(),
                t.errors,
                t.inference.values().map(|i| i.count).sum::<u64>(),
                p95
            )?;
        }
    }
    if let Some(r) = &st.recovery {
        match r.time() {
            Some(t) => writeln!(
                o.out,
                "\nrollback recovery time: {} s ({} of {} affected devices back on the last good package)",
                t.as_secs(),
                r.recovered,
                r.affected
            )?,
            None => writeln!(
                o.out,
                "\nrollback in progress: {} of {} affected devices back on the last good package",
                r.recovered, r.affected
            )?,
        }
    }
    Ok(())
}
