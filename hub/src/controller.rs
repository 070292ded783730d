//! The viability controller on the hub: gathers each package's facts (registry, evaluation records, cycle
//! records, releases, telemetry), runs `shared::controller` on them, and stores the proposals it makes.
//!
//! It recommends and never acts: nothing here writes TUF metadata, releases or device records. An approval
//! (`outpost-hub controller approve`) turns a proposal into the ordinary, audited operation.

use std::collections::BTreeMap;

use outpost_shared::Digest;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::controller::{
    self, Action, Actuals, Change, ControllerPolicy, Facts, Field, History, Proposal, Role,
};
use outpost_shared::evaluation::{EvaluationRecord, QUALITY_METRICS};
use outpost_shared::manifest::RiskTier;
use outpost_shared::telemetry::Histogram;

use crate::boundary::{self, BoundaryError};
use crate::registry::{DecisionRecord, DeviceStatus, Reconciled, RegistryError};
use crate::rollouts::RolloutError;
use crate::store::Store;
use crate::telemetry::{Filter, GroupBy, TelemetryStoreError};
use crate::tuf::TufRepo;

const DAY_SECS: f64 = 86_400.0;

/// Why the controller could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A capability's boundary could not be read.
    #[error(transparent)]
    Boundary(#[from] BoundaryError),
    /// The release records could not be read.
    #[error(transparent)]
    Rollouts(#[from] RolloutError),
    /// The telemetry store failed.
    #[error(transparent)]
    Telemetry(#[from] TelemetryStoreError),
    /// The revocation list could not be read.
    #[error(transparent)]
    Director(#[from] crate::director::DirectorOpError),
    /// No policy is registered.
    #[error("no controller policy is registered: `outpost-hub controller policy set FILE --key K` first")]
    NoPolicy,
}

/// Field totals per package, from every telemetry event the hub holds.
#[derive(Debug, Default)]
struct FieldTotals {
    /// By model digest: inferences, errors, latencies.
    inference: BTreeMap<Digest, (u64, u64, Histogram)>,
    /// By package digest: rollbacks away from it.
    rollbacks: BTreeMap<Digest, u64>,
    /// By package digest: shadow samples compared.
    shadow_samples: BTreeMap<Digest, u64>,
}

fn field_totals(store: &Store) -> Result<FieldTotals, ControllerError> {
    let mut t = FieldTotals::default();
    for g in store.telemetry().aggregate(GroupBy::Release, &Filter::default())? {
        for (model, s) in &g.summary.inference {
            let Ok(d) = model.parse::<Digest>() else { continue };
            let e = t.inference.entry(d).or_default();
            e.0 = e.0.saturating_add(s.count);
            e.1 = e.1.saturating_add(s.errors);
            e.2.merge(&s.latency);
        }
        for (from, n) in &g.summary.rollbacks_from {
            if let Ok(d) = from.parse::<Digest>() {
                *t.rollbacks.entry(d).or_default() += n;
            }
        }
        for (p, s) in &g.summary.shadow {
            if let Ok(d) = p.parse::<Digest>() {
                *t.shadow_samples.entry(d).or_default() += s.samples;
            }
        }
    }
    Ok(t)
}

/// The quality metric both records measured, with (package's, champion's) values.
fn quality(mine: &EvaluationRecord, champion: &EvaluationRecord) -> Option<(String, f64, f64)> {
    QUALITY_METRICS.iter().find_map(|k| Some(((*k).to_owned(), *mine.metrics.get(*k)?, *champion.metrics.get(*k)?)))
}

/// Every package of `capability` as the controller sees it, each with the champion it is compared with (for a
/// shadow, the last good package its release would replace; else its channel's champion).
fn gather(
    store: &Store,
    repo: &TufRepo,
    capability: &str,
    field: &FieldTotals,
    now: UnixSeconds,
) -> Result<Vec<(Facts, Option<Digest>)>, ControllerError> {
    let b = boundary::boundary(store, repo, capability)?;
    let budget = &b.record.capability.budget;
    let releases = crate::rollouts::list(store.rollouts())?;
    let devices = store.devices().devices()?;
    let cycles = store.cycles().cycles()?;
    let evaluations = |d: &Digest| -> Result<Vec<(Digest, EvaluationRecord)>, RegistryError> {
        Ok(store
            .evaluations()
            .evaluations(d)?
            .into_iter()
            .filter(|(_, r)| b.suites.iter().any(|(s, _)| *s == r.suite))
            .collect())
    };
    // A revoked package is archived for good: the controller has nothing to propose for it.
    let revoked: std::collections::BTreeSet<Digest> = if repo.exists() {
        crate::director::Director::new(repo).revocations()?.revoked.iter().map(|r| r.digest).collect()
    } else {
        Default::default()
    };
    // Packages in a running shadow release, by digest → (channel, the last good package it runs beside).
    let shadows: BTreeMap<Digest, (String, Option<Digest>)> = releases
        .iter()
        .filter(|(_, r)| r.shadowing())
        .map(|(_, r)| (r.rollout.release.package, (r.channel.clone(), r.rollout.release.last_good)))
        .collect();
    // What each channel serves: its newest published package, unless that one is only shadowing the last good.
    let serving: Vec<(String, Digest)> = b
        .channels
        .iter()
        .filter_map(|c| match shadows.get(&c.champion) {
            Some((_, last_good)) => last_good.map(|g| (c.channel.clone(), g)),
            None => Some((c.channel.clone(), c.champion)),
        })
        .collect();
    // Where a package not yet served would go: the busiest channel serving its parent, else the busiest serving
    // its capability.
    let busiest = |parents: &[Digest]| {
        let load = |c: &str| devices.iter().filter(|x| x.channel == c && x.status == DeviceStatus::Approved).count();
        let of_parent = serving.iter().filter(|(_, s)| parents.contains(s)).max_by_key(|(c, _)| load(c));
        of_parent.or_else(|| serving.iter().max_by_key(|(c, _)| load(c))).map(|(c, _)| c.clone())
    };
    let champion_of = |channel: &str| serving.iter().find(|(c, _)| c == channel).map(|(_, d)| *d);
    let total_inferences: u64 =
        b.packages.iter().filter_map(|(r, _)| field.inference.get(&r.model_digest).map(|e| e.0)).sum();
    let mut out = Vec::new();
    for (record, manifest) in &b.packages {
        let d = record.digest;
        let candidate = cycles.iter().rev().find(|(_, c)| c.promoted == Some(d)).and_then(|(_, c)| {
            c.candidates.iter().find(|x| x.package == d).map(|x| {
                // Its p95 relative to the champion's, measured interleaved in the cycle (1 within the noise band).
                let p95 = |m: &BTreeMap<String, f64>| m.get("latency_p95_ms").copied();
                let band = c.noise.get("latency_p95_ms").copied().unwrap_or(0.0);
                let ratio = match (p95(&x.verdict.metrics), p95(&c.champion_metrics)) {
                    (Some(mine), Some(champ)) if (mine - champ).abs() <= band => Some(1.0),
                    (Some(mine), Some(champ)) if champ > 0.0 => Some(mine / champ),
                    _ => None,
                };
                (x.risk.effective(), c.noise.clone(), ratio)
            })
        });
        let (role, channel, champion) = if revoked.contains(&d) {
            (Role::Archived, None, None)
        } else if let Some((channel, last_good)) = shadows.get(&d) {
            (Role::Shadow, Some(channel.clone()), last_good.or_else(|| champion_of(channel)))
        } else if let Some((channel, _)) = serving.iter().find(|(_, s)| *s == d) {
            (Role::Champion, Some(channel.clone()), Some(d))
        } else {
            let role = if candidate.is_some() { Role::Candidate } else { Role::Idle };
            let channel = busiest(&manifest.lineage.parents);
            let champion = channel.as_deref().and_then(champion_of);
            (role, channel, champion)
        };
        let risk = candidate.as_ref().map_or(manifest.risk_tier, |(r, _, _)| *r);
        let noise = candidate.as_ref().map(|(_, n, _)| n.clone()).unwrap_or_default();
        let mine = evaluations(&d)?;
        let latest = mine.last().map(|(_, r)| r.clone());
        let champion_latest = match champion {
            Some(c) => {
                evaluations(&c)?.into_iter().rev().find(|(_, r)| latest.as_ref().is_some_and(|l| l.suite == r.suite))
            }
            None => None,
        };
        // A cycle's descendant: the champion's p95 scaled by their interleaved ratio, so that machine load when
        // one record was taken does not decide; anything else: its newest record's p95.
        let p95_of = |r: &EvaluationRecord| r.metrics.get("latency_p95_ms").copied();
        let offline_p95_ms = match (candidate.as_ref().and_then(|(_, _, ratio)| *ratio), &champion_latest) {
            (Some(ratio), Some((_, c))) => p95_of(c).map(|p| p * ratio),
            _ => latest.as_ref().and_then(p95_of),
        };
        let quality = match (&latest, &champion_latest) {
            (Some(l), Some((_, c))) => {
                quality(l, c).map(|(k, q, cq)| (k.clone(), q, cq, noise.get(&k).copied().unwrap_or(0.0)))
            }
            _ => None,
        };
        let (inferences, errors, hist) = field.inference.get(&record.model_digest).cloned().unwrap_or_default();
        let shadow_samples = field.shadow_samples.get(&d).copied().unwrap_or(0);
        let channel_devices = devices
            .iter()
            .filter(|x| Some(&x.channel) == channel.as_ref() && x.status == DeviceStatus::Approved && !x.site_node)
            .count() as u64;
        let champion_traffic = champion
            .and_then(|c| b.package(&c))
            .and_then(|(r, _)| field.inference.get(&r.model_digest))
            .map_or(1.0, |e| if total_inferences == 0 { 1.0 } else { e.0 as f64 / total_inferences as f64 });
        let field = Field {
            inferences: if role == Role::Shadow { shadow_samples } else { inferences },
            errors,
            rollbacks: field.rollbacks.get(&d).copied().unwrap_or(0),
            devices: channel_devices,
            p95_ms: hist.quantile_us(0.95).map(|us| us as f64 / 1000.0),
            // Without telemetry yet, a champion is taken to serve all of its channel's traffic.
            traffic_share: match (total_inferences, role) {
                (0, Role::Champion) => 1.0,
                (0, _) => 0.0,
                (all, _) => inferences as f64 / all as f64,
            },
        };
        let idle_days = if matches!(role, Role::Champion | Role::Shadow) || inferences > 0 {
            0.0
        } else {
            now.saturating_sub(record.added_at) as f64 / DAY_SECS
        };
        let facts = Facts {
            package: d,
            label: format!("{}@{}", record.name, record.version),
            capability: capability.to_owned(),
            channel: channel.clone(),
            role,
            risk_low: risk == RiskTier::Low,
            risk_score: match risk {
                RiskTier::Low => 1.0,
                RiskTier::Medium => 0.5,
                RiskTier::High => 0.0,
            },
            quality,
            field,
            offline_p95_ms,
            latency_budget_ms: budget.p95_latency_ms,
            peak_memory_bytes: latest.as_ref().and_then(|r| r.metrics.get("peak_memory_bytes")).map(|m| *m as u64),
            memory_budget_bytes: budget.peak_memory_bytes,
            size_bytes: record.package_len,
            size_budget_bytes: budget.package_size_bytes,
            channel_devices,
            champion_traffic_share: champion_traffic,
            idle_days,
        };
        out.push((facts, champion));
    }
    Ok(out)
}

/// A package's history for the oscillation controls: the role changes approved proposals carried out.
pub fn history(decided: &[(Digest, Proposal, Option<DecisionRecord>)], package: &Digest) -> History {
    let changes = decided
        .iter()
        .filter(|(_, p, d)| p.package == *package && d.as_ref().is_some_and(|d| d.approved))
        .filter_map(|(_, p, d)| {
            let at = d.as_ref()?.at;
            Some(Change { from: p.role, to: p.action.role_after(p.role), at })
        })
        .collect();
    History { changes }
}

/// One proposal of a run, with its id when it was stored.
pub type Proposed = (Option<Digest>, Proposal);

/// Runs the controller over `capability` (or every registered one) under the registered policy, stores every
/// proposal that is not a plain no-op (held-back ones included: they explain what the controls stopped) unless
/// the same proposal is still pending or was rejected under this policy, and returns all proposals with the
/// stored (or standing) ones' ids.
pub fn run(
    store: &Store,
    repo: &TufRepo,
    capability: Option<&str>,
    now: UnixSeconds,
) -> Result<(ControllerPolicy, Vec<Proposed>), ControllerError> {
    let reg = store.registry();
    let policy = reg.controller_policy()?.ok_or(ControllerError::NoPolicy)?.policy;
    let names: Vec<String> = match capability {
        Some(c) => vec![c.to_owned()],
        None => store.capabilities().capabilities()?.into_iter().map(|r| r.capability.name).collect(),
    };
    let decided = reg.proposals()?;
    // Every telemetry event is read once per run, whatever the number of capabilities.
    let field = field_totals(store)?;
    let mut out = Vec::new();
    for name in names {
        let facts = gather(store, repo, &name, &field, now)?;
        let scored: BTreeMap<Digest, _> = facts
            .iter()
            .filter(|(f, _)| f.role == Role::Champion)
            .map(|(f, _)| (f.package, controller::decompose(f, &policy)))
            .collect();
        for (f, champion) in &facts {
            let champion = champion.filter(|c| *c != f.package).and_then(|c| scored.get(&c).cloned());
            let p = controller::propose(f, champion.as_ref(), &policy, &history(&decided, &f.package), now);
            // A proposal still pending for the package (same action, same policy) stands, and so does a rejection
            // of it until the policy changes: runs neither pile up copies nor ask again what was refused.
            let pending = decided.iter().find(|(_, q, d)| {
                d.as_ref().is_none_or(|d| !d.approved)
                    && q.package == p.package
                    && q.action == p.action
                    && q.policy == p.policy
                    && q.held_back.is_some() == p.held_back.is_some()
            });
            let id = match pending {
                Some((id, _, _)) => Some(*id),
                None if p.action != Action::NoOp || p.held_back.is_some() => Some(reg.proposal_put(&p)?),
                None => None,
            };
            out.push((id, p));
        }
    }
    reconcile_carried_out(store, &decided, &policy, now)?;
    Ok((policy, out))
}

/// Compares every carried-out proposal's projection with what telemetry shows now and records it.
fn reconcile_carried_out(
    store: &Store,
    decided: &[(Digest, Proposal, Option<DecisionRecord>)],
    policy: &ControllerPolicy,
    now: UnixSeconds,
) -> Result<(), ControllerError> {
    for (id, p, d) in decided {
        let Some(d) = d.as_ref().filter(|d| d.approved && p.action != Action::NoOp) else { continue };
        let actuals = actuals(store, p, d)?;
        let reconciliation = controller::reconcile(&p.projection, &actuals, policy.thresholds.projection_error_bound);
        store.registry().reconciliation_put(id, &Reconciled { actuals, reconciliation, at: now })?;
    }
    Ok(())
}

/// What telemetry shows since an approved proposal was carried out: bytes the release's devices downloaded
/// (devices that reached `downloaded` × package size), the model's fleet p95 and traffic share since then.
pub fn actuals(store: &Store, p: &Proposal, d: &DecisionRecord) -> Result<Actuals, ControllerError> {
    let reg = store.registry();
    let Some(record) = reg.record(&p.package)? else { return Ok(Actuals::default()) };
    let since = Filter { since: Some(d.at), ..Filter::default() };
    let mut downloaded = 0u64;
    let (mut mine, mut all) = (0u64, 0u64);
    let mut hist = Histogram::default();
    for g in store.telemetry().aggregate(GroupBy::Release, &since)? {
        if d.release.as_deref() == Some(g.key.as_str()) {
            downloaded += g.summary.update_steps.get("downloaded").copied().unwrap_or(0);
        }
        for (model, s) in &g.summary.inference {
            all += s.count;
            if model.parse::<Digest>().ok() == Some(record.model_digest) {
                mine += s.count;
                hist.merge(&s.latency);
            }
        }
    }
    let measured = all > 0;
    Ok(Actuals {
        bytes_shipped: d.release.as_ref().map(|_| downloaded.saturating_mul(record.package_len)),
        device_memory_bytes: None,
        p95_latency_ms: hist.quantile_us(0.95).map(|us| us as f64 / 1000.0),
        traffic_moved: measured.then(|| mine as f64 / all as f64),
    })
}
