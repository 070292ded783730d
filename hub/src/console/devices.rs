//! The Devices list and the Device page. The list filters and pages an in-memory index of every device's few
//! filterable fields (rebuilt in the background when older than `device_index_max_age`, dropped after an action),
//! so a page over a 100,000-device fleet scans compact rows instead of decoding every device record.
//!
//! The Device page reads that one device's record, its place in each release and its telemetry fresh.

use std::collections::{BTreeMap, BTreeSet};

use maud::{Markup, html};
use serde::Deserialize;

use outpost_shared::Digest;
use outpost_shared::rollout::{DeviceState, Outcome};

use super::http::{PageError, State, hub_err};
use super::render::{may_act, short, time};
use super::users::Session;
use crate::registry::DeviceStatus;
use crate::service::Hub;

/// One device's filterable fields.
#[derive(Debug, Clone)]
pub struct Row {
    key: String,
    site: Option<String>,
    channel: String,
    hardware: bool,
    revoked: bool,
    site_node: bool,
    active: Option<Digest>,
    last_report: Option<u64>,
    attestation: Option<String>,
    refusals: usize,
}

/// What the Sites page shows of one site, gathered with the index.
#[derive(Debug, Clone, Default)]
pub struct SiteSummary {
    /// Keys of its site nodes.
    pub nodes: Vec<String>,
    /// Policy digests its devices last reported enforcing, with how many devices each.
    pub policies: BTreeMap<Digest, u64>,
    /// Its devices.
    pub devices: u64,
    /// Of them, revoked.
    pub revoked: u64,
    /// Packages refused now, per rule (devices' last reports).
    pub refusals: BTreeMap<String, u64>,
}

/// Every device's row, sorted by key, and the values the filters offer.
#[derive(Debug, Default)]
pub struct Index {
    rows: Vec<Row>,
    channels: BTreeSet<String>,
    /// Per site.
    pub sites: BTreeMap<String, SiteSummary>,
    packages: BTreeMap<Digest, (String, u64)>,
}

/// Builds the index from every device record.
pub fn build_index(hub: &Hub) -> Result<Index, PageError> {
    let store = hub.store().map_err(hub_err)?;
    let reg = store.registry();
    let mut ix = Index::default();
    for d in store.devices().devices().map_err(hub_err)? {
        ix.channels.insert(d.channel.clone());
        let revoked = d.status == DeviceStatus::Revoked;
        if let Some(site) = &d.site {
            let s = ix.sites.entry(site.clone()).or_default();
            s.devices += 1;
            s.revoked += u64::from(revoked);
            if d.site_node {
                s.nodes.push(d.key.clone());
            }
            if let Some(p) = d.policy {
                *s.policies.entry(p).or_default() += 1;
            }
            for r in &d.refusals {
                *s.refusals.entry(r.rule.clone()).or_default() += 1;
            }
        }
        if let Some(a) = d.active {
            let e = ix.packages.entry(a).or_insert_with(|| (String::new(), 0));
            e.1 += 1;
        }
        ix.rows.push(Row {
            hardware: d.tpm.is_some(),
            revoked,
            site_node: d.site_node,
            active: d.active,
            last_report: d.last_report,
            attestation: d.attestation.map(|a| a.status),
            refusals: d.refusals.len(),
            site: d.site,
            channel: d.channel,
            key: d.key,
        });
    }
    for (d, (label, _)) in ix.packages.iter_mut() {
        *label = match reg.record(d).map_err(hub_err)? {
            Some(r) => format!("{}@{}", r.name, r.version),
            None => short(&d.to_hex()).to_owned(),
        };
    }
    ix.rows.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(ix)
}

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
    /// `approved` or `revoked`.
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
    let built = st.index()?;
    let ix = &built.value;
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
    let revoked = match q.state.as_str() {
        "" => None,
        "approved" => Some(false),
        "revoked" => Some(true),
        other => return Err(PageError::BadRequest(format!("state `{other}` is not approved or revoked"))),
    };
    let matches = |r: &&Row| {
        (q.site.is_empty() || r.site.as_deref() == Some(q.site.as_str()))
            && (q.channel.is_empty() || r.channel == q.channel)
            && tier.is_none_or(|t| r.hardware == t)
            && revoked.is_none_or(|v| r.revoked == v)
            && package.is_none_or(|p| r.active == Some(p))
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
    let channels = ix.channels.iter().map(|c| (c.clone(), c.clone())).collect();
    let tiers = vec![("hardware".into(), "hardware (TPM)".into()), ("software".into(), "software".into())];
    let states = vec![("approved".into(), "approved".into()), ("revoked".into(), "revoked".into())];
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
                        td.num { (r.refusals) }
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
    let reg = store.registry();
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
