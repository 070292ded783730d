//! `outpost-hub controller …`: the viability controller's surface — register its policy, run it, list and explain
//! its proposals, and approve (carrying out the ordinary, audited operation) or reject them.
//!
//! The controller recommends; only `approve`, by a targets key holder of the package's role, changes anything,
//! and a structural proposal (promote, retire) needs a key other than the one that registered the policy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::registry::{DecisionRecord, PolicyRecord};
use outpost_hub::service::Hub;
use outpost_hub::tuf::{Key, STANDARD_ROLE, key_id};
use outpost_shared::audit::Action as AuditAction;
use outpost_shared::clock::format_rfc3339;
use outpost_shared::controller::{Action, ControllerPolicy, Proposal, Role, reconcile};
use outpost_shared::rollout::Plan;

use super::release::ReleaseCmd;
use super::{Out, audit};

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum ControllerCmd {
    /// The controller policy: component weights, thresholds, oscillation controls (TOML; see
    /// fixtures/controller/policy.toml).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Score every package of CAPABILITY (default: every registered capability) and propose one of no-op,
    /// archive, shadow, retire or promote for each, with the rule that fired. Stores every proposal other than a
    /// plain no-op; changes nothing in the fleet.
    Run {
        /// Only this capability.
        capability: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stored proposals, oldest first, with their decision.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Explain a proposal: the rule, every score component with its inputs and weight, the champion it was
    /// compared with, the policy digest, the projection — and, once carried out, the actuals beside it (flagged
    /// when off by more than the policy's bound).
    Show {
        /// Proposal id or a unique prefix (8+ hex).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a proposal and carry it out: shadow = publish + `release start` under PLAN (with a [shadow] stage);
    /// promote = `release start` under PLAN; retire = `release revoke`; archive = abort a shadow's release (an idle
    /// package is only marked). The key must hold the package's targets role; for promote and retire it must not
    /// be the key that registered the controller policy.
    Approve {
        /// Proposal id or a unique prefix.
        id: String,
        /// The approver's offline targets key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The release plan for shadow and promote.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
    },
    /// Reject a proposal, with the reason kept beside it. The key must hold the package's targets role.
    Reject {
        /// Proposal id or a unique prefix.
        id: String,
        /// The rejecting key holder's offline targets key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum PolicyCmd {
    /// Register a controller policy (its version must be above the newest), signed off by a targets key holder:
    /// that key may not approve the structural proposals made under it.
    Set {
        /// The policy TOML.
        file: PathBuf,
        /// The registering key holder's offline targets key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Show the registered policy, its digest and who registered it.
    Show,
}

impl ControllerCmd {
    /// Makes relative paths absolute against `cwd`.
    pub fn resolve(&mut self, cwd: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        };
        match self {
            ControllerCmd::Policy(PolicyCmd::Set { file, key }) => {
                abs(file);
                abs(key);
            }
            ControllerCmd::Approve { key, plan, .. } => {
                abs(key);
                plan.iter_mut().for_each(abs);
            }
            ControllerCmd::Reject { key, .. } => abs(key),
            _ => {}
        }
    }
}

/// Runs `outpost-hub controller …`.
pub fn run(cmd: ControllerCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let store = hub.store()?;
    let reg = store.registry();
    let repo = hub.repo();
    let now = hub.clock().wall();
    match cmd {
        ControllerCmd::Policy(PolicyCmd::Set { file, key }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let policy = ControllerPolicy::from_toml(&text, &file)?;
            let k = Key::load(&key)?;
            repo.authorise(STANDARD_ROLE, &k, &key)?;
            let by = key_id(&k.public_bytes());
            let digest = reg.controller_policy_put(&PolicyRecord {
                policy: policy.clone(),
                registered_by: by.clone(),
                at: now,
            })?;
            audit(hub, &by, AuditAction::ControllerPolicy, &digest.to_hex(), &format!("version {}", policy.version))?;
            writeln!(o.err, "registered controller policy version {} by {}", policy.version, policy.author)?;
            writeln!(o.out, "{digest}")?;
        }
        ControllerCmd::Policy(PolicyCmd::Show) => {
            let Some(r) = reg.controller_policy()? else { bail!("no controller policy is registered") };
            writeln!(
                o.out,
                "# version {}, digest {}, registered by key {} at {}",
                r.policy.version,
                r.policy.digest(),
                r.registered_by,
                format_rfc3339(r.at)
            )?;
            writeln!(o.out, "{}", serde_json::to_string_pretty(&r.policy)?)?;
        }
        ControllerCmd::Run { capability, json } => {
            let (policy, proposals) = outpost_hub::controller::run(store, &repo, capability.as_deref(), now)?;
            if json {
                let rows: Vec<serde_json::Value> =
                    proposals.iter().map(|(id, p)| proposal_json(id.as_ref(), p, None)).collect();
                writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(o.out, "policy v{} {}", policy.version, policy.digest())?;
                writeln!(o.out, "{:<12} {:<42} {:<10} {:>6}  {:<8} RULE", "ID", "PACKAGE", "ROLE", "TOTAL", "ACTION")?;
                for (id, p) in &proposals {
                    let id = id.map_or("-".to_owned(), |d| d.to_hex()[..12].to_owned());
                    writeln!(
                        o.out,
                        "{id:<12} {:<42} {:<10} {:>6.4}  {:<8} {}",
                        p.label,
                        p.role.to_string(),
                        p.decomposition.total,
                        p.action.to_string(),
                        p.rule
                    )?;
                }
            }
        }
        ControllerCmd::List { json } => {
            let all = reg.proposals()?;
            if json {
                let rows: Vec<serde_json::Value> =
                    all.iter().map(|(id, p, d)| proposal_json(Some(id), p, d.as_ref())).collect();
                writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else {
                writeln!(o.out, "{:<12} {:<20} {:<42} {:<8} {:<10} DECISION", "ID", "AT", "PACKAGE", "ACTION", "ROLE")?;
                for (id, p, d) in &all {
                    writeln!(
                        o.out,
                        "{:<12} {:<20} {:<42} {:<8} {:<10} {}",
                        &id.to_hex()[..12],
                        format_rfc3339(p.at),
                        p.label,
                        p.action.to_string(),
                        p.role.to_string(),
                        decision_word(d.as_ref(), p)
                    )?;
                }
            }
        }
        ControllerCmd::Show { id, json } => {
            let (id, p, d) = reg.proposal(&id)?;
            let bound = reg.controller_policy()?.map_or(0.25, |r| r.policy.thresholds.projection_error_bound);
            // Compared now, so what is shown is current (`controller run` records the comparison each time).
            let reconciled = match &d {
                Some(dec) if dec.approved && p.action != Action::NoOp => {
                    let actual = outpost_hub::controller::actuals(store, &p, dec)?;
                    Some((actual, reconcile(&p.projection, &actual, bound)))
                }
                _ => None,
            };
            if json {
                let mut v = proposal_json(Some(&id), &p, d.as_ref());
                if let Some((a, r)) = &reconciled {
                    v["actuals"] = serde_json::to_value(a)?;
                    v["reconciliation"] = serde_json::to_value(r)?;
                }
                writeln!(o.out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                explain(o, &id, &p, d.as_ref(), reconciled.as_ref().map(|(_, r)| r), bound)?;
            }
        }
        ControllerCmd::Reject { id, key, reason } => {
            // A second decision is refused by `decision_put` (decisions are final).
            let (id, p, _) = reg.proposal(&id)?;
            let (_, manifest) = reg.manifest(&p.package)?;
            let k = Key::load(&key)?;
            repo.authorise(outpost_hub::tuf::role_for(manifest.risk_tier), &k, &key)?;
            let by = key_id(&k.public_bytes());
            let decision =
                DecisionRecord { approved: false, by: by.clone(), detail: reason.clone(), release: None, at: now };
            reg.decision_put(&id, &decision)?;
            let detail = format!("rejected {} of {}: {reason}", p.action, p.label);
            audit(hub, &by, AuditAction::Decide, &id.to_hex(), &detail)?;
            writeln!(o.err, "rejected: {} of {}", p.action, p.label)?;
        }
        ControllerCmd::Approve { id, key, plan } => approve(hub, o, &id, &key, plan.as_deref())?,
    }
    Ok(0)
}

fn decision_word(d: Option<&DecisionRecord>, p: &Proposal) -> String {
    match d {
        Some(d) if d.approved => format!("approved by {} ({})", d.by, d.detail),
        Some(d) => format!("rejected by {}: {}", d.by, d.detail),
        None if p.action == Action::NoOp => "nothing to decide (held back)".into(),
        None => "pending".into(),
    }
}

fn approve(hub: &Hub, o: &mut Out<'_>, id: &str, key: &Path, plan: Option<&Path>) -> Result<()> {
    let store = hub.store()?;
    let reg = store.registry();
    let repo = hub.repo();
    let now = hub.clock().wall();
    let (id, p, decided) = reg.proposal(id)?;
    if decided.is_some() {
        bail!("proposal {} is already decided; decisions are final", &id.to_hex()[..12]);
    }
    if p.action == Action::NoOp {
        bail!("proposal {} proposes nothing (held back: {}); nothing to approve", &id.to_hex()[..12], p.rule);
    }
    let policy = reg.controller_policy()?.context("no controller policy is registered")?;
    if policy.policy.digest() != p.policy {
        bail!(
            "the proposal was made under another controller policy than the registered one: run `controller run` again"
        );
    }
    let (_, manifest) = reg.manifest(&p.package)?;
    let k = Key::load(key)?;
    repo.authorise(outpost_hub::tuf::role_for(manifest.risk_tier), &k, key)?;
    let by = key_id(&k.public_bytes());
    if p.action.is_structural() && by == policy.registered_by {
        bail!(
            "{} is structural: it needs a key holder other than the one who registered the controller policy ({by})",
            p.action
        );
    }
    let digest = p.package.to_hex();
    let need_plan =
        || plan.map(Path::to_owned).with_context(|| format!("{} needs --plan FILE (a release plan)", p.action));
    let channel = channel_of(&p);
    let (detail, release) = match p.action {
        Action::Shadow => {
            let plan = need_plan()?;
            let text = std::fs::read_to_string(&plan).with_context(|| format!("reading {}", plan.display()))?;
            if Plan::from_toml(&text, &plan)?.shadow.is_none() {
                bail!("--plan {}: shadow needs a plan with a [shadow] stage", plan.display());
            }
            let published = outpost_hub::director::Director::new(&repo).published()?;
            if !published.iter().any(|x| x.digest == p.package && x.channels.contains(&channel)) {
                super::release::run(
                    ReleaseCmd::Publish { package: digest.clone(), channel: channel.clone(), key: key.to_owned() },
                    hub,
                    o,
                )?;
            }
            let r = start(hub, o, &digest, &plan, &channel)?;
            (format!("shadow release {r} on {channel}"), Some(r))
        }
        Action::Promote => {
            let plan = need_plan()?;
            let r = start(hub, o, &digest, &plan, &channel)?;
            (format!("release {r} on {channel}"), Some(r))
        }
        Action::Retire => {
            let reason = format!("retired by controller proposal {}", &id.to_hex()[..12]);
            super::release::run(ReleaseCmd::Revoke { package: digest.clone(), reason, key: None }, hub, o)?;
            ("revoked".to_owned(), None)
        }
        Action::Archive if p.role == Role::Shadow => {
            let running = outpost_hub::rollouts::list(store.rollouts())?
                .into_iter()
                .rev()
                .find(|(_, r)| r.rollout.release.package == p.package && r.shadowing());
            let Some((rid, _)) = running else { bail!("{} has no running shadow release to stop", p.label) };
            let reason = format!("archived by controller proposal {}", &id.to_hex()[..12]);
            super::release::run(ReleaseCmd::Abort { id: rid.clone(), reason }, hub, o)?;
            (format!("shadow release {rid} aborted"), None)
        }
        Action::Archive => ("archived in the controller's records (it serves nothing)".to_owned(), None),
        Action::NoOp => unreachable!("refused above"),
    };
    reg.decision_put(
        &id,
        &DecisionRecord { approved: true, by: by.clone(), detail: detail.clone(), release: release.clone(), at: now },
    )?;
    audit(hub, &by, AuditAction::Decide, &id.to_hex(), &format!("approved {} of {}: {detail}", p.action, p.label))?;
    writeln!(o.err, "approved {} of {}: {detail}", p.action, p.label)?;
    Ok(())
}

/// The channel a proposal acts on: the one it was proposed for, else `stable`.
fn channel_of(p: &Proposal) -> String {
    p.channel.clone().unwrap_or_else(|| "stable".to_owned())
}

fn start(hub: &Hub, o: &mut Out<'_>, digest: &str, plan: &Path, channel: &str) -> Result<String> {
    let mut started = Vec::new();
    super::release::run(
        ReleaseCmd::Start { package: digest.to_owned(), plan: plan.to_owned(), channel: channel.to_owned() },
        hub,
        &mut Out { out: &mut started, err: o.err },
    )?;
    Ok(String::from_utf8_lossy(&started).trim().to_owned())
}

fn proposal_json(id: Option<&outpost_shared::Digest>, p: &Proposal, d: Option<&DecisionRecord>) -> serde_json::Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("id".into(), serde_json::json!(id));
        m.insert("decision".into(), serde_json::to_value(d).unwrap_or_default());
    }
    v
}

fn explain(
    o: &mut Out<'_>,
    id: &outpost_shared::Digest,
    p: &Proposal,
    d: Option<&DecisionRecord>,
    r: Option<&outpost_shared::controller::Reconciliation>,
    bound: f64,
) -> Result<()> {
    writeln!(o.out, "proposal    {id}")?;
    writeln!(o.out, "at          {}", format_rfc3339(p.at))?;
    writeln!(o.out, "package     {} ({}) of {}, now {}", p.label, p.package, p.capability, p.role)?;
    if let Some(c) = &p.channel {
        writeln!(o.out, "channel     {c}")?;
    }
    writeln!(
        o.out,
        "proposes    {}{}",
        p.action.to_string().to_uppercase(),
        if p.action.is_structural() { " (structural: a second key holder approves)" } else { "" }
    )?;
    writeln!(o.out, "because     {}", p.rule)?;
    if let Some(h) = &p.held_back {
        writeln!(o.out, "held back   {h}")?;
    }
    writeln!(o.out, "policy      {}", p.policy)?;
    writeln!(o.out)?;
    writeln!(o.out, "{:<18} {:>7} {:>7} {:>8}  INPUTS  (FORMULA)", "COMPONENT", "VALUE", "WEIGHT", "WEIGHTED")?;
    for c in &p.decomposition.components {
        let inputs: Vec<String> = c.inputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match c.value {
            Some(v) => writeln!(
                o.out,
                "{:<18} {v:>7.4} {:>7.3} {:>8.4}  {}  ({})",
                c.name,
                c.weight,
                v * c.weight,
                inputs.join(" "),
                c.formula
            )?,
            None => writeln!(
                o.out,
                "{:<18} {:>7} {:>7.3} {:>8}  ({}; left out of the total)",
                c.name, "-", c.weight, "-", c.formula
            )?,
        }
    }
    writeln!(o.out, "{:<18} {:>7.4}  (weighted mean of the scored components)", "total", p.decomposition.total)?;
    if let Some(c) = p.champion_total {
        writeln!(o.out, "{:<18} {c:>7.4}  ({:+.4})", "champion's total", p.decomposition.total - c)?;
    }
    writeln!(o.out)?;
    let pr = &p.projection;
    writeln!(
        o.out,
        "projection  {} bytes to ship, {} bytes of model memory per device, p95 {}, {:.0}% of traffic moving",
        pr.bytes_to_ship,
        pr.device_memory_bytes,
        pr.p95_latency_ms.map_or("unknown".to_owned(), |v| format!("{v:.3} ms")),
        pr.traffic_moving * 100.0
    )?;
    writeln!(o.out, "decision    {}", decision_word(d, p))?;
    if let Some(r) = r {
        for (k, (proj, actual, err)) in &r.fields {
            let flag =
                if r.flagged.contains(k) { format!("  OFF: error above the bound {bound}") } else { String::new() };
            writeln!(o.out, "actual      {k}: projected {proj}, actual {actual}, relative error {err:.3}{flag}")?;
        }
        if r.fields.is_empty() {
            writeln!(o.out, "actual      no telemetry since it was carried out yet")?;
        }
    }
    Ok(())
}
