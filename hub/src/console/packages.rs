//! The Packages list and the Package page: manifest, lineage drawn as an inline SVG graph (ancestors to the left,
//! descendants to the right), evaluation records, the outcomes of its releases, and the challenger cycles and
//! controller proposals of its capability.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use maud::{Markup, html};

use outpost_shared::Digest;
use outpost_shared::Manifest;
use outpost_shared::rollout::State as RolloutState;

use super::http::{PageError, State, hub_err};
use super::render::{short, time};
use super::users::Session;

/// Generations of ancestors and of descendants the graph draws.
const LINEAGE_DEPTH: i32 = 4;
/// Packages per generation the graph draws (the rest are counted).
const LINEAGE_WIDTH: usize = 8;

/// The Packages page.
pub fn list(st: &State, _s: &Session) -> Result<Markup, PageError> {
    let store = st.hub.store().map_err(hub_err)?;
    let mut all = store.packages().list().map_err(hub_err)?;
    all.sort_by_key(|p| std::cmp::Reverse(p.added_at));
    let aliases = store.packages().aliases().map_err(hub_err)?;
    Ok(html! {
        h1 { "Packages" }
        table.packages {
            thead { tr { th { "package" } th { "digest" } th { "capability" } th { "risk" } th { "lineage" } th { "aliases" } th { "added" } } }
            tbody {
                @for p in &all {
                    @let m = store.packages().manifest(&p.digest).ok().map(|(_, m)| m);
                    tr {
                        td { a href=(format!("/packages/{}", p.digest.to_hex())) { (p.name) "@" (p.version) } }
                        td { code { (short(&p.digest.to_hex())) } }
                        td { (m.as_ref().map_or("-".into(), |m| m.capability.clone())) }
                        td { (m.as_ref().map_or("-".into(), |m| format!("{:?}", m.risk_tier).to_lowercase())) }
                        td { (m.as_ref().map_or("-".into(), operator)) }
                        td { @for (a, d) in &aliases { @if *d == p.digest { code { (a) } " " } } }
                        td { (time(p.added_at)) }
                    }
                }
            }
        }
    })
}

fn operator(m: &Manifest) -> String {
    serde_json::to_value(m.lineage.operator).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The Package page.
pub fn page(st: &State, _s: &Session, reference: &str) -> Result<Markup, PageError> {
    let store = st.hub.store().map_err(hub_err)?;
    let packages = store.packages();
    let d = packages.resolve(reference).map_err(|e| PageError::NotFound(format!("package {reference}: {e}")))?;
    let record = packages.record(&d).map_err(hub_err)?.ok_or_else(|| PageError::NotFound(format!("package {d}")))?;
    let (_, manifest) = packages.manifest(&d).map_err(hub_err)?;
    let manifests: BTreeMap<Digest, Manifest> = packages
        .list()
        .map_err(hub_err)?
        .into_iter()
        .filter_map(|p| packages.manifest(&p.digest).ok().map(|(_, m)| (p.digest, m)))
        .collect();
    let evaluations = store.evaluations().evaluations(&d).map_err(hub_err)?;
    let built = st.releases()?;
    let releases: Vec<_> = built.value.iter().filter(|r| r.record.rollout.release.package == d).collect();
    let cycles: Vec<_> = store
        .cycles()
        .cycles()
        .map_err(hub_err)?
        .into_iter()
        .filter(|(_, c)| c.capability == manifest.capability)
        .collect();
    let proposals: Vec<_> = store
        .registry()
        .proposals()
        .map_err(hub_err)?
        .into_iter()
        .filter(|(_, p, _)| p.capability == manifest.capability)
        .collect();
    let manifest_toml = serde_json::to_string_pretty(&manifest).unwrap_or_else(|e| format!("(cannot show: {e})"));
    Ok(html! {
        h1 { (record.name) "@" (record.version) }
        p { code.key { (d.to_hex()) } }
        p { "capability " strong { (manifest.capability) } ", risk " (format!("{:?}", manifest.risk_tier).to_lowercase())
            ", " (record.package_len) " bytes, added " (time(record.added_at)) }
        @if let Some(desc) = &manifest.description { p { (desc) } }
        h2 { "Lineage" }
        (lineage(&d, &manifests))
        h2 { "Evaluation records" }
        @if evaluations.is_empty() { p { "None (" code { "outpost-hub eval run" } ")." } }
        @else {
            table { thead { tr { th { "record" } th { "suite" } th { "when" } th { "metrics" } th { "machine" } } }
                tbody { @for (id, r) in &evaluations { tr {
                    td { code { (id.short()) } } td { (r.suite_name) } td { (time(r.at)) }
                    td { @for (k, v) in &r.metrics { (k) "=" (format!("{v:.4}")) " " } }
                    td { (r.machine.cpu) }
                } } } }
        }
        h2 { "Release outcomes" }
        @if releases.is_empty() { p { "Never released in stages." } }
        @else {
            table { thead { tr { th { "release" } th { "channel" } th { "state" } th { "installed" } th { "failed" } th { "rolled back" } th { "rejected" } } }
                tbody { @for v in &releases {
                    @let (id, r, status) = (&v.id, &v.record, &v.status);
                    tr { td { a href=(format!("/releases#release-{id}")) { (id) } } td { (r.channel) }
                        td { (crate::rollouts::state_word(status))
                             @if let RolloutState::Aborted { reason, .. } = &status.state { ": " (reason.to_string()) } }
                        td.num { (status.cohort.installed) } td.num { (status.cohort.failed) }
                        td.num { (status.cohort.rolled_back) } td.num { (status.cohort.rejected_by_policy) } }
                } } }
        }
        h2 { "Challenger cycles of " (manifest.capability) }
        @if cycles.is_empty() { p { "None." } }
        @for (id, c) in &cycles {
            details {
                summary { code { (id.short()) } " at " (time(c.at)) ", champion " (label(&manifests, &c.champion))
                    ", " (c.candidates.len()) " candidates"
                    @if let Some(p) = c.promoted { ", promoted " (label(&manifests, &p)) } @else { ", none promoted" } }
                ul { @for cand in &c.candidates { li {
                    a href=(format!("/packages/{}", cand.package.to_hex())) { (cand.label) } ": "
                    (format!("{:?}", cand.verdict.outcome).to_lowercase())
                    @for r in &cand.verdict.reasons { "; " (r) }
                    @for g in &cand.verdict.gains { "; " (g) }
                } } }
                @if let Some(f) = &c.follow_up { p { "follow-up: " (f) } }
            }
        }
        h2 { "Controller proposals for " (manifest.capability) }
        @if proposals.is_empty() { p { "None." } }
        @else {
            table { thead { tr { th { "proposal" } th { "package" } th { "action" } th { "rule" } th { "when" } th { "decision" } } }
                tbody { @for (id, p, decision) in &proposals { tr {
                    td { code { (id.short()) } } td { (p.label) } td { (p.action.to_string()) } td { (p.rule) }
                    td { (time(p.at)) }
                    td { @match decision { Some(dr) => { @if dr.approved { "approved" } @else { "rejected" } " by " (dr.by) }
                        None => { "pending (" code { "outpost-hub controller approve|reject" } ": needs an offline key)" } } }
                } } } }
        }
        h2 { "Manifest" }
        pre.manifest { (manifest_toml) }
    })
}

/// A label cut to what a lineage box holds (the full one is the node's tooltip).
fn fit(label: &str) -> String {
    const MAX: usize = 32;
    if label.chars().count() <= MAX {
        return label.to_owned();
    }
    let mut cut: String = label.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

fn label(manifests: &BTreeMap<Digest, Manifest>, d: &Digest) -> String {
    manifests.get(d).map_or_else(|| d.short().to_string(), |m| format!("{}@{}", m.name, m.version))
}

/// The lineage graph around `d`: columns by generation (ancestors negative, descendants positive), an edge from
/// each parent to its child, drawn as SVG by the template engine (every label escaped).
fn lineage(d: &Digest, manifests: &BTreeMap<Digest, Manifest>) -> Markup {
    let mut children: BTreeMap<Digest, Vec<Digest>> = BTreeMap::new();
    for (c, m) in manifests {
        for p in &m.lineage.parents {
            children.entry(*p).or_default().push(*c);
        }
    }
    // Generation of each node reached from `d` (first reach wins), walking up parents and down children.
    let mut generation: BTreeMap<Digest, i32> = BTreeMap::from([(*d, 0)]);
    let mut queue = VecDeque::from([(*d, 0i32, 0i8)]);
    while let Some((n, g, dir)) = queue.pop_front() {
        if dir <= 0 && g > -LINEAGE_DEPTH {
            for p in manifests.get(&n).map(|m| m.lineage.parents.clone()).unwrap_or_default() {
                if let std::collections::btree_map::Entry::Vacant(e) = generation.entry(p) {
                    e.insert(g - 1);
                    queue.push_back((p, g - 1, -1));
                }
            }
        }
        if dir >= 0 && g < LINEAGE_DEPTH {
            for c in children.get(&n).cloned().unwrap_or_default() {
                if let std::collections::btree_map::Entry::Vacant(e) = generation.entry(c) {
                    e.insert(g + 1);
                    queue.push_back((c, g + 1, 1));
                }
            }
        }
    }
    let mut columns: BTreeMap<i32, Vec<Digest>> = BTreeMap::new();
    for (n, g) in &generation {
        columns.entry(*g).or_default().push(*n);
    }
    let hidden: usize = columns.values().map(|c| c.len().saturating_sub(LINEAGE_WIDTH)).sum();
    let (box_w, box_h, gap_x, gap_y) = (210i32, 34i32, 44i32, 14i32);
    let min_g = columns.keys().next().copied().unwrap_or(0);
    let mut at: BTreeMap<Digest, (i32, i32)> = BTreeMap::new();
    for (g, nodes) in &columns {
        for (i, n) in nodes.iter().take(LINEAGE_WIDTH).enumerate() {
            let row = i32::try_from(i).unwrap_or(0);
            at.insert(*n, (10 + (g - min_g) * (box_w + gap_x), 10 + row * (box_h + gap_y)));
        }
    }
    let width = 20 + i32::try_from(columns.len()).unwrap_or(1) * (box_w + gap_x);
    let rows = columns.values().map(|c| c.len().min(LINEAGE_WIDTH)).max().unwrap_or(1);
    let height = 20 + i32::try_from(rows).unwrap_or(1) * (box_h + gap_y);
    let edges: BTreeSet<(Digest, Digest)> = at
        .keys()
        .flat_map(|c| {
            manifests.get(c).map(|m| m.lineage.parents.clone()).unwrap_or_default().into_iter().map(move |p| (p, *c))
        })
        .filter(|(p, _)| at.contains_key(p))
        .collect();
    let ops: BTreeMap<Digest, String> = manifests.iter().map(|(k, m)| (*k, operator(m))).collect();
    html! {
        svg.lineage xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="lineage graph" {
            @for (p, c) in &edges {
                @if let (Some((px, py)), Some((cx, cy))) = (at.get(p), at.get(c)) {
                    line.edge x1=(px + box_w) y1=(py + box_h / 2) x2=(cx) y2=(cy + box_h / 2) {}
                }
            }
            @for (n, (x, y)) in &at {
                a href=(format!("/packages/{}", n.to_hex())) {
                    title { (label(manifests, n)) }
                    rect class=(if n == d { "node self" } else { "node" }) x=(x) y=(y) width=(box_w) height=(box_h) rx="4" {}
                    text x=(x + 6) y=(y + 14) { (fit(&label(manifests, n))) }
                    text.op x=(x + 6) y=(y + 28) { (ops.get(n).map_or("(not registered)", String::as_str)) }
                }
            }
        }
        @if hidden > 0 { p.note { (hidden) " more packages in these generations are not drawn." } }
        @if generation.len() == 1 { p.note { "A root with no registered descendants." } }
    }
}
