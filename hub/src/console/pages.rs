//! The Releases, Sites and Audit log pages: each release's stages as progress bars with its gates, abort reason,
//! recovery time, chart and the actions an operator may take; each site's node, policy and rejections; the audit
//! log, newest first, with whether its chain verifies.

use std::collections::BTreeMap;

use maud::{Markup, html};

use outpost_shared::audit::Action;
use outpost_shared::rollout::{State as RolloutState, Stats, Status};

use super::http::{PageError, State, hub_err};
use super::render::{self, may_act, progress, time};
use super::users::Session;
use crate::rollouts::ReleaseRecord;

/// One release as the pages show it: its record and its status, worked out once per cache build.
#[derive(Debug)]
pub struct ReleaseView {
    /// Release id.
    pub id: String,
    /// The record.
    pub record: ReleaseRecord,
    /// Its status.
    pub status: Status,
}

/// Every release, oldest first, with its status.
pub fn build_releases(hub: &crate::service::Hub) -> Result<Vec<ReleaseView>, PageError> {
    let store = hub.store().map_err(hub_err)?;
    Ok(crate::rollouts::list(store.rollouts())
        .map_err(hub_err)?
        .into_iter()
        .map(|(id, record)| ReleaseView { status: record.rollout.status(), id, record })
        .collect())
}

/// The Releases page.
pub fn releases(st: &State, s: &Session) -> Result<Markup, PageError> {
    let built = st.releases()?;
    let all: Vec<&ReleaseView> = built.value.iter().rev().collect(); // newest first
    let audit = crate::audit::read(&crate::audit::default_path(st.hub.dir())).map_err(hub_err)?.0;
    Ok(html! {
        h1 { "Releases" }
        p.note { "As of " (time(built.wall)) " (re-read every few seconds, and at once after an action here)." }
        @if all.is_empty() { p { "No staged releases yet (" code { "outpost-hub release start" } ")." } }
        (render::legend())
        @for r in &all {
            (release(st, s, r, &audit))
        }
        p.note { "Publishing a package and approving a release's next stage need an offline targets key: they stay on the command line ("
            code { "outpost-hub release publish" } ", " code { "outpost-hub release approve ID --key K" } ")." }
    })
}

fn release(st: &State, s: &Session, r: &ReleaseView, audit: &[outpost_shared::audit::Entry]) -> Markup {
    let (id, rec, status) = (r.id.as_str(), &r.record, &r.status);
    let plan = &rec.rollout.plan;
    let live = matches!(status.state, RolloutState::Running | RolloutState::AwaitingApproval { .. });
    let approvals: Vec<&outpost_shared::audit::Entry> =
        audit.iter().filter(|e| e.action == Action::Approve && e.subject == id).collect();
    let row = |name: String, stats: &Stats| {
        html! {
            tr {
                th { (name) }
                td.barcell { (progress(stats)) }
                td.num { (stats.installed) } td.num { (stats.failed) } td.num { (stats.rolled_back) }
                td.num { (stats.rejected_by_policy) } td.num { (stats.pending) } td.num { (stats.assigned) }
            }
        }
    };
    html! {
        section.release id=(format!("release-{id}")) {
            h2 { (id) ": " a href=(format!("/packages/{}", rec.rollout.release.package.to_hex())) { (rec.package) }
                 " on " (rec.channel) " — " span.state data-state=(crate::rollouts::state_word(status)) { (crate::rollouts::state_word(status)) } }
            p.meta { "started " (time(rec.started_at)) " · risk " (format!("{:?}", rec.rollout.release.risk).to_lowercase())
                " · plan " (plan.name.as_deref().unwrap_or("(unnamed)")) }
            table.stages {
                thead { tr { th { "stage" } th { "progress" } th { "installed" } th { "failed" } th { "rolled back" }
                    th { "rejected by site policy" } th { "pending" } th { "devices" } } }
                tbody {
                    @if let Some(sh) = &status.shadow { (row("shadow".into(), sh)) }
                    @for (i, stats) in status.stages.iter().enumerate() { (row(plan.stage_name(i), stats)) }
                    (row("cohort".into(), &status.cohort))
                }
            }
            h3 { "Gates" }
            ul.gates {
                @if let Some(sh) = &plan.shadow {
                    li { "shadow agreement: "
                        (status.shadow_agreement.0) " of " (status.shadow_agreement.1) " answers agreed"
                        @if let Some(p) = sh.min_agreement_percent { " (required " (p.to_string()) ")" }
                        @else { " (no agreement gate)" } }
                }
                @for (i, stage) in plan.stage.iter().enumerate() {
                    li { (plan.stage_name(i)) ": cohort " (stage.cohort_percent.to_string()) ", succeeds at "
                        (stage.success_percent.to_string()) " installed, aborts above " (stage.error_percent.to_string())
                        " errors, at least " (stage.min_devices) " devices and " (stage.soak_secs) " s soak"
                        @if stage.pause_after { "; waits for an approval after it" } }
                }
                li { "approvals: "
                    @if approvals.is_empty() { "none recorded" }
                    @for e in &approvals { (e.actor) " at " (time(e.at)) "; " }
                    @if let RolloutState::AwaitingApproval { next } = status.state {
                        strong { " waiting for an approval before stage " (next + 1) }
                        " (" code { "outpost-hub release approve " (id) " --key K" } ": needs an offline targets key, so not here)"
                    }
                }
            }
            @if let RolloutState::Aborted { at, reason } = &status.state {
                p.aborted { "Aborted " (time(*at)) ": " (reason.to_string()) }
            }
            @if let Some(r) = &status.recovery {
                p.recovery {
                    @match r.time() {
                        Some(t) => { "Rollback recovery time: " (t.as_secs()) " s (" (r.recovered) " of " (r.affected) " affected devices back on the last good package)" }
                        None => { "Rollback in progress: " (r.recovered) " of " (r.affected) " affected devices back on the last good package" }
                    }
                }
            }
            h3 { "Devices per state over time" }
            (render::chart(&st.history.samples(id)))
            @if live || status.cohort.errors() > 0 {
                (actions(s, id, status, live))
            }
        }
    }
}

fn actions(s: &Session, id: &str, status: &Status, live: bool) -> Markup {
    if !may_act(s) {
        return html! { p.note { "Signed in as a viewer: pausing, resuming, aborting and retrying need an operator." } };
    }
    let form = |action: &str, label: &str| {
        html! {
            form.action method="post" action=(format!("/releases/{id}/{action}")) {
                input type="hidden" name="csrf" value=(s.csrf);
                button type="submit" name="do" value=(action) { (label) }
            }
        }
    };
    html! {
        div.actions {
            @if live && !status.paused { (form("pause", "Pause")) }
            @if live && status.paused { (form("resume", "Resume")) }
            @if status.cohort.errors() > 0 { (form("retry-failed", "Retry failed devices")) }
            @if live {
                form.action method="post" action=(format!("/releases/{id}/abort")) {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="text" name="reason" placeholder="reason (required)" required maxlength="500";
                    button.danger type="submit" name="do" value="abort" { "Abort" }
                }
            }
        }
    }
}

/// The Sites page: per site, its node, the policy its devices enforce, rejections by rule, and its devices.
pub fn sites(st: &State, _s: &Session) -> Result<Markup, PageError> {
    let guard = st.index()?;
    let index = &super::index::current(&guard)?.index;
    let store = st.hub.store().map_err(hub_err)?;
    let groups = store
        .telemetry()
        .aggregate(crate::telemetry::GroupBy::Site, &crate::telemetry::Filter::default())
        .map_err(hub_err)?;
    let telemetry: BTreeMap<&str, &crate::telemetry::Summary> =
        groups.iter().map(|g| (g.key.as_str(), &g.summary)).collect();
    Ok(html! {
        h1 { "Sites" }
        @if index.sites.is_empty() { p { "No device is placed in a site (" code { "outpost-hub device approve KEY --site NAME" } ")." } }
        @for (name, site) in &index.sites {
            section.site id=(format!("site-{name}")) {
                h2 { (name) }
                p { "node: "
                    @if site.nodes.is_empty() { "none (devices fetch from the hub directly)" }
                    @for n in &site.nodes { a href=(format!("/devices/{n}")) { code { (render::short(n)) } } " " } }
                p { "policy digests enforced: "
                    @if site.policies.is_empty() { "none reported" }
                    @for (p, n) in &site.policies { code { (render::short(&p.to_hex())) } " (" (n) " devices) " } }
                p { a href=(format!("/devices?site={name}")) { (site.devices) " devices" } ", " (site.revoked) " revoked" }
                h3 { "Rejections by rule" }
                @let by_rule = telemetry.get(name.as_str()).map(|t| &t.rejections_by_rule);
                @match by_rule.filter(|r| !r.is_empty()) {
                    Some(rules) => {
                        table { thead { tr { th { "rule" } th { "rejections (telemetry)" } } }
                            tbody { @for (rule, n) in rules { tr { td { code { (rule) } } td.num { (n) } } } } }
                    }
                    None => { p.note { "No policy rejection reported by telemetry." } }
                }
                @if !site.refusals.is_empty() {
                    table { thead { tr { th { "rule" } th { "devices refusing a package now" } } }
                        tbody { @for (rule, n) in &site.refusals { tr { td { code { (rule) } } td.num { (n) } } } } }
                }
            }
        }
    })
}

/// The Audit log page: whether the chain verifies (against the anchor in the index), then entries, newest first.
pub fn audit(st: &State, _s: &Session, page: usize) -> Result<Markup, PageError> {
    let path = crate::audit::default_path(st.hub.dir());
    let store = st.hub.store().map_err(hub_err)?;
    let anchor = store.audit().audit_anchor().map_err(hub_err)?;
    let verified = crate::audit::verify(&path, anchor.as_ref());
    let (entries, _) = crate::audit::read(&path).map_err(hub_err)?;
    let per = st.config.page_size.max(1);
    let pages = entries.len().div_ceil(per).max(1);
    let page = page.clamp(1, pages);
    let shown: Vec<&outpost_shared::audit::Entry> = entries.iter().rev().skip((page - 1) * per).take(per).collect();
    Ok(html! {
        h1 { "Audit log" }
        @match &verified {
            Ok(v) => p.verified { "Chain intact: " (v.entries) " entries"
                @if anchor.is_some() { ", newest entry matches the anchor kept in the index" }
                @if v.incomplete_tail { " (an incomplete last record, from an interrupted append, is ignored)" } }
            Err(e) => p.error { "VERIFICATION FAILED: " (e.to_string()) }
        }
        table.audit {
            thead { tr { th { "#" } th { "when" } th { "actor" } th { "action" } th { "subject" } th { "detail" } } }
            tbody {
                @for e in &shown {
                    tr { td.num { (e.seq) } td { (time(e.at)) } td { (e.actor) } td { (format!("{:?}", e.action).to_lowercase()) }
                         td { code { (e.subject) } } td { (e.detail) } }
                }
            }
        }
        (pager("/audit?", page, pages))
    })
}

/// Previous / next links for a paged list; `base` ends in `?` or `&`.
pub fn pager(base: &str, page: usize, pages: usize) -> Markup {
    html! {
        nav.pager {
            @if page > 1 { a rel="prev" href=(format!("{base}page={}", page - 1)) { "← previous" } }
            span { "page " (page) " of " (pages) }
            @if page < pages { a rel="next" href=(format!("{base}page={}", page + 1)) { "next →" } }
        }
    }
}
