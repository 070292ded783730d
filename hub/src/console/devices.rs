//! The Devices list and the Device page. The list filters and pages the console's in-memory device index
//! ([`super::index`], kept current by re-reading only the devices written since), so a page over a 100,000-device
//! fleet scans compact rows instead of decoding every device record.
//!
//! The Device page reads that one device's record, its place in each release and its telemetry fresh.

use maud::{Markup, html};
use serde::Deserialize;

use outpost_shared::Digest;
use outpost_shared::rollout::{DeviceState, Outcome};

use super::http::{PageError, State, hub_err};
use super::index::Row;
use super::render::{may_act, short, time};
use super::users::Session;
use crate::registry::DeviceStatus;

/// The Devices page's filters, from its query string (each empty or absent: any).
#[derive(Debug, Default, Deserialize)]
pub struct DeviceQuery {
    #[serde(default)]
    site: String,
    #[serde(default)]
    channel: String,
    /// `hardware` or `software`.
    #[serde(default)]
    tier: String,
    /// `approved` or `revoked`, or the device's outcome in the newest release that includes it (see
    /// [`ReleaseOutcome`]).
    #[serde(default)]
    state: String,
    /// A package reference (digest, prefix, name@version or alias): the package devices serve.
    #[serde(default)]
    package: String,
    #[serde(default)]
    page: Option<usize>,
}

impl DeviceQuery {
    fn query_string(&self) -> String {
        let pairs = [
            ("site", &self.site),
            ("channel", &self.channel),
            ("tier", &self.tier),
            ("state", &self.state),
            ("package", &self.package),
        ];
        let mut out = String::from("/devices?");
        for (k, v) in pairs {
            if !v.is_empty() {
                out.push_str(k);
                out.push('=');
                out.push_str(&percent_encode(v));
                out.push('&');
            }
        }
        out
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The Devices page: filter form, the matching devices (one page of them) and the count.
pub fn list(st: &State, _s: &Session, q: &DeviceQuery) -> Result<Markup, PageError> {
    let guard = st.index()?;
    let built = super::index::current(&guard)?;
    let ix = &built.index;
    let package = match q.package.trim() {
        "" => None,
        r => Some(
            st.hub
                .store()
                .map_err(hub_err)?
                .packages()
                .resolve(r)
                .map_err(|e| PageError::BadRequest(format!("package `{r}`: {e}")))?,
        ),
    };
    let tier = match q.tier.as_str() {
        "" => None,
        "hardware" => Some(true),
        "software" => Some(false),
        other => return Err(PageError::BadRequest(format!("tier `{other}` is not hardware or software"))),
    };
    let state = match q.state.as_str() {
        "" => None,
        "approved" => Some(StateFilter::Revoked(false)),
        "revoked" => Some(StateFilter::Revoked(true)),
        other => match ReleaseOutcome::ALL.iter().find(|o| o.word() == other) {
            Some(o) => Some(StateFilter::Release(*o)),
            None => {
                let words: Vec<&str> = ReleaseOutcome::ALL.iter().map(|o| o.word()).collect();
                return Err(PageError::BadRequest(format!(
                    "state `{other}` is not approved, revoked or a release outcome ({})",
                    words.join(", ")
                )));
            }
        },
    };
    // Only a release-outcome filter reads the releases.
    let releases = match state {
        Some(StateFilter::Release(_)) => Some(st.releases()?),
        _ => None,
    };
    let newest_outcome = |key: &str| {
        releases.as_ref().and_then(|rs| {
            rs.value.iter().rev().find_map(|r| r.record.rollout.devices.get(key)).map(|e| ReleaseOutcome::of(&e.state))
        })
    };
    let matches = |r: &&Row| {
        (q.site.is_empty() || r.site.as_deref() == Some(q.site.as_str()))
            && (q.channel.is_empty() || r.channel == q.channel)
            && tier.is_none_or(|t| r.hardware == t)
            && package.is_none_or(|p| r.active == Some(p))
            && match state {
                None => true,
                Some(StateFilter::Revoked(v)) => r.revoked == v,
                Some(StateFilter::Release(o)) => newest_outcome(&r.key) == Some(o),
            }
    };
    let per = st.config.page_size.max(1);
    let total = ix.rows.iter().filter(matches).count();
    let pages = total.div_ceil(per).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let shown: Vec<&Row> = ix.rows.iter().filter(matches).skip((page - 1) * per).take(per).collect();
    let select = |name: &str, current: &str, options: Vec<(String, String)>| {
        html! {
            label { (name) " "
                select name=(name) {
                    option value="" { "any" }
                    @for (value, text) in &options {
                        option value=(value) selected[current == value] { (text) }
                    }
                }
            }
        }
    };
    let sites = ix.sites.keys().map(|s| (s.clone(), s.clone())).collect();
    let channels = ix.channels.keys().map(|c| (c.clone(), c.clone())).collect();
    let tiers = vec![("hardware".into(), "hardware (TPM)".into()), ("software".into(), "software".into())];
    let mut states = vec![("approved".into(), "approved".into()), ("revoked".into(), "revoked".into())];
    states.extend(ReleaseOutcome::ALL.iter().map(|o| (o.word().to_owned(), format!("newest release: {}", o.word()))));
    let packages =
        ix.packages.iter().map(|(d, (label, n))| (d.to_hex(), format!("{label} ({n} devices)"))).collect::<Vec<_>>();
    let package_value = package.map(|d| d.to_hex()).unwrap_or_default();
    Ok(html! {
        h1 { "Devices" }
        form.filters method="get" action="/devices" {
            (select("site", &q.site, sites))
            (select("channel", &q.channel, channels))
            (select("tier", &q.tier, tiers))
            (select("state", &q.state, states))
            (select("package", &package_value, packages))
            button type="submit" { "Filter" }
            a href="/devices" { "clear" }
        }
        p.count { span id="device-count" { (total) } " of " (ix.rows.len()) " devices match"
            span.note { " (as of " (time(built.wall)) ")" } }
        table.devices {
            thead { tr { th { "device" } th { "site" } th { "channel" } th { "tier" } th { "state" } th { "runs" }
                th { "last report" } th { "attestation" } th { "refusing" } } }
            tbody {
                @for r in &shown {
                    tr {
                        td { a href=(format!("/devices/{}", r.key)) { code { (short(&r.key)) } } @if r.site_node { " (site node)" } }
                        td { (r.site.as_deref().unwrap_or("-")) }
                        td { (r.channel) }
                        td { @if r.hardware { "hardware" } @else { "software" } }
                        td { @if r.revoked { strong { "revoked" } } @else { "approved" } }
                        td { @match r.active {
                            Some(d) => a href=(format!("/packages/{}", d.to_hex())) {
                                (ix.packages.get(&d).map_or_else(|| short(&d.to_hex()).to_owned(), |(l, _)| l.clone())) },
                            None => "-",
                        } }
                        td { (r.last_report.map_or("never".to_owned(), time)) }
                        td { (r.attestation.as_deref().unwrap_or("-")) }
                        td.num { (r.refusals.len()) }
                    }
                }
            }
        }
        (super::pages::pager(&q.query_string(), page, pages))
    })
}

/// The Device page.
pub fn page(st: &State, s: &Session, key: &str) -> Result<Markup, PageError> {
    let store = st.hub.store().map_err(hub_err)?;
    let key = key.trim().to_ascii_lowercase();
    let d =
        store.devices().device(&key).map_err(hub_err)?.ok_or_else(|| PageError::NotFound(format!("device {key}")))?;
    let reg = store.packages();
    let label = |d: &Digest| -> String {
        reg.record(d)
            .ok()
            .flatten()
            .map_or_else(|| short(&d.to_hex()).to_owned(), |r| format!("{}@{}", r.name, r.version))
    };
    let capability = |d: &Digest| reg.manifest(d).ok().map(|(_, m)| m.capability);
    let releases = st.releases()?;
    let filter = crate::telemetry::Filter { device: Some(key.clone()), ..Default::default() };
    let telemetry = store
        .telemetry()
        .aggregate(crate::telemetry::GroupBy::Device, &filter)
        .map_err(hub_err)?
        .into_iter()
        .next()
        .map(|g| g.summary);
    let revoked = d.status == DeviceStatus::Revoked;
    Ok(html! {
        h1 { "Device " code.key { (d.key) } }
        table.facts {
            tr { th { "state" } td { @if revoked { strong { "revoked" } } @else { "approved" } } }
            tr { th { "site" } td { (d.site.as_deref().unwrap_or("-")) @if d.site_node { " (this is the site's node)" } } }
            tr { th { "channel" } td { (d.channel) } }
            tr { th { "tier" } td { @if d.tpm.is_some() { "hardware (TPM enrolled)" } @else { "software" } } }
            tr { th { "enrolled" } td { (time(d.approved_at)) " by " (d.enrolled_by.as_deref().unwrap_or("operator")) } }
            tr { th { "last report" } td { (d.last_report.map_or("never".to_owned(), time)) } }
            tr { th { "policy enforced" } td { (d.policy.map_or("-".to_owned(), |p| p.to_hex())) } }
        }
        h2 { "What it runs, per capability" }
        @match d.active {
            Some(a) => p { (capability(&a).unwrap_or_else(|| "(unknown capability)".into())) ": "
                a href=(format!("/packages/{}", a.to_hex())) { (label(&a)) } }
            None => p { "Nothing reported yet." }
        }
        h2 { "History" }
        h3 { "Releases" }
        @if !releases.value.iter().any(|r| r.record.rollout.devices.contains_key(&d.key)) { p { "In no staged release." } }
        table {
            thead { tr { th { "release" } th { "package" } th { "stage" } th { "outcome" } } }
            tbody {
                @for r in &releases.value {
                    @let (id, rec) = (&r.id, &r.record);
                    @if let Some(e) = rec.rollout.devices.get(&d.key) {
                        tr { td { (id) } td { (rec.package) }
                             td { @match e.stage { Some(i) => (rec.rollout.plan.stage_name(i)), None => "-" } @if e.shadow { " (shadow)" } }
                             td { (outcome(&e.state)) } }
                    }
                }
            }
        }
        h3 { "Rollbacks" }
        @if d.rolled_back.is_empty() { p { "None." } }
        ul { @for r in &d.rolled_back { li { "rolled back from " a href=(format!("/packages/{}", r.to_hex())) { (label(r)) } } } }
        h3 { "Rejections by site policy" }
        @if d.refusals.is_empty() { p { "None reported." } }
        @else {
            table { thead { tr { th { "package" } th { "rule" } th { "why" } th { "when" } th { "by" } } }
                tbody { @for r in &d.refusals { tr { td { (r.package) } td { code { (r.rule) } } td { (r.reason) }
                    td { (time(r.at)) @if let Some(u) = r.until { " (deferred until " (time(u)) ")" } }
                    td { @if r.by_site { "site node" } @else { "device policy" } } } } } }
        }
        h3 { "Attestation" }
        @match &d.attestation {
            Some(a) => p { (a.status) " at " (time(a.at))
                @if let Some(t) = &a.tier { ", tier " (t) }
                @if let Some(sw) = &a.software { ", agent " (sw) }
                @if let Some(e) = a.expires { ", valid until " (time(e)) } }
            None => p { "Never appraised." }
        }
        h2 { "Telemetry" }
        @match &telemetry {
            Some(t) => {
                p { (t.events) " events: " (t.rollbacks) " rollbacks, " (t.errors) " errors, "
                    (t.rejections_by_rule.values().sum::<u64>()) " policy rejections" }
                @if !t.update_steps.is_empty() {
                    p { "update steps: " @for (step, n) in &t.update_steps { (step) " " (n) "; " } }
                }
                table { thead { tr { th { "model" } th { "inferences" } th { "errors" } th { "p50" } th { "p95" } } }
                    tbody { @for (m, i) in &t.inference { tr {
                        td { code { (short(m)) } } td.num { (i.count) } td.num { (i.errors) }
                        td.num { (ms(i.p50_us)) } td.num { (ms(i.p95_us)) } } } } }
            }
            None => p { "No telemetry from this device." }
        }
        @if may_act(s) && !revoked {
            form.action method="post" action=(format!("/devices/{}/revoke", d.key)) {
                input type="hidden" name="csrf" value=(s.csrf);
                button.danger type="submit" { "Revoke this device" }
                span.note { " its connections are refused from now on" }
            }
        }
    })
}

/// What the state filter asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateFilter {
    /// Revoked (true) or approved (false).
    Revoked(bool),
    /// This outcome in the newest release that includes the device.
    Release(ReleaseOutcome),
}

/// A device's outcome in a release, in the words of the Releases page's progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Passed its health window.
    Installed,
    /// Failed before switching.
    Failed,
    /// Switched, then rolled back.
    RolledBack,
    /// Its site's policy rejected the package.
    Rejected,
    /// Waiting for its stage, or assigned without an outcome yet.
    Pending,
}

impl ReleaseOutcome {
    /// Every outcome, in the bars' order.
    pub const ALL: [ReleaseOutcome; 5] = [
        ReleaseOutcome::Installed,
        ReleaseOutcome::Failed,
        ReleaseOutcome::RolledBack,
        ReleaseOutcome::Rejected,
        ReleaseOutcome::Pending,
    ];

    /// Its word in the filter's query.
    pub fn word(self) -> &'static str {
        match self {
            ReleaseOutcome::Installed => "installed",
            ReleaseOutcome::Failed => "failed",
            ReleaseOutcome::RolledBack => "rolled-back",
            ReleaseOutcome::Rejected => "rejected",
            ReleaseOutcome::Pending => "pending",
        }
    }

    fn of(s: &DeviceState) -> ReleaseOutcome {
        match s {
            DeviceState::Waiting | DeviceState::Assigned => ReleaseOutcome::Pending,
            DeviceState::Reported(Outcome::Installed) => ReleaseOutcome::Installed,
            DeviceState::Reported(Outcome::Failed { .. }) => ReleaseOutcome::Failed,
            DeviceState::Reported(Outcome::RolledBack { .. }) => ReleaseOutcome::RolledBack,
            DeviceState::Reported(Outcome::RejectedByPolicy { .. }) => ReleaseOutcome::Rejected,
        }
    }
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0))
}

fn outcome(s: &DeviceState) -> String {
    match s {
        DeviceState::Waiting => "waiting for its stage".into(),
        DeviceState::Assigned => "assigned, no outcome yet".into(),
        DeviceState::Reported(Outcome::Installed) => "installed".into(),
        DeviceState::Reported(Outcome::Failed { reason }) => format!("failed: {reason}"),
        DeviceState::Reported(Outcome::RolledBack { reason }) => format!("rolled back: {reason}"),
        DeviceState::Reported(other) => format!("{other:?}"),
    }
}
