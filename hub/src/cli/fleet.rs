//! `outpost-hub fleet …` and `rejections`: the fleet per site with its telemetry, and packages refused by site
//! policies.

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::{Out, devices};

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum FleetCmd {
    /// Per site: devices, what they run, and their telemetry (update steps, rollbacks, policy rejections,
    /// errors, inferences with p50/p95 latency); per route: requests, and per candidate answers, errors,
    /// fallbacks by reason and p50/p95, with the top candidate's share and the HHI of the shares.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `outpost-hub fleet status`.
pub fn status(hub: &Hub, json: bool, o: &mut Out<'_>) -> Result<()> {
    use outpost_hub::telemetry::{Filter, GroupBy};
    use std::collections::BTreeMap;
    let devices = devices(hub)?.devices()?;
    let store = hub.store()?.telemetry();
    let by_site: BTreeMap<String, outpost_hub::telemetry::Summary> =
        store.aggregate(GroupBy::Site, &Filter::default())?.into_iter().map(|g| (g.key, g.summary)).collect();
    let mut sites: BTreeMap<String, Vec<&outpost_hub::registry::DeviceRecord>> = BTreeMap::new();
    for d in devices.iter().filter(|d| !d.site_node) {
        sites.entry(d.shown_site().unwrap_or("-").to_owned()).or_default().push(d);
    }
    if json {
        let out: Vec<serde_json::Value> = sites
            .iter()
            .map(|(site, ds)| {
                let running: BTreeMap<String, usize> = ds.iter().fold(BTreeMap::new(), |mut m, d| {
                    *m.entry(d.active.map_or("-".into(), |a| a.to_hex())).or_default() += 1;
                    m
                });
                serde_json::json!({"site": site, "devices": ds.len(), "running": running, "telemetry": by_site.get(site)})
            })
            .collect();
        writeln!(o.out, "{}", serde_json::to_string_pretty(&out)?)?;
        return Ok(());
    }
    writeln!(
        o.out,
        "{:<14} {:>7} {:<34} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9} {:>9}",
        "SITE", "DEVICES", "RUNNING", "EVENTS", "ROLLBACKS", "REJECTED", "ERRORS", "INFERENCES", "P50", "P95"
    )?;
    for (site, ds) in &sites {
        let mut running: BTreeMap<String, usize> = BTreeMap::new();
        for d in ds {
            *running.entry(d.active.map_or("-".into(), |a| a.short())).or_default() += 1;
        }
        let running: Vec<String> = running.iter().map(|(p, n)| format!("{p}×{n}")).collect();
        let t = by_site.get(site.as_str()).cloned().unwrap_or_default();
        let inferences: u64 = t.inference.values().map(|i| i.count).sum();
        let p = |f: fn(&outpost_hub::telemetry::InferenceSummary) -> Option<u64>| {
            t.inference
                .values()
                .filter_map(f)
                .max()
                .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0))
        };
        let rejected: u64 = t.rejections_by_rule.values().sum();
        writeln!(
            o.out,
            "{site:<14} {:>7} {:<34} {:>7} {:>9} {:>8} {:>6} {:>10} {:>9} {:>9}",
            ds.len(),
            running.join(" "),
            t.events,
            t.rollbacks,
            rejected,
            t.errors,
            inferences,
            p(|i| i.p50_us),
            p(|i| i.p95_us)
        )?;
    }
    routes(&by_site, o)
}

/// The fleet's route quality: every site's telemetry merged per route.
fn routes(
    by_site: &std::collections::BTreeMap<String, outpost_hub::telemetry::Summary>,
    o: &mut Out<'_>,
) -> Result<()> {
    let mut routes: std::collections::BTreeMap<&str, outpost_shared::route::quality::RouteQuality> = Default::default();
    for (route, q) in by_site.values().flat_map(|t| &t.routes) {
        routes.entry(route).or_default().merge(q);
    }
    if routes.is_empty() {
        return Ok(());
    }
    writeln!(o.out)?;
    writeln!(
        o.out,
        "{:<20} {:<32} {:>9} {:>7} {:>9} {:>9}  FALLBACKS",
        "ROUTE", "CANDIDATE", "ANSWERS", "ERRORS", "P50", "P95"
    )?;
    let ms = |us: Option<u64>| us.map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0));
    for (route, q) in &routes {
        let concentration = q
            .concentration()
            .map_or("-".to_owned(), |c| format!("top {} {:.0}%, HHI {:.2}", c.top, c.top_share * 100.0, c.hhi));
        writeln!(o.out, "{route:<20} {} requests, {} unanswered; {concentration}", q.requests, q.unanswered)?;
        for (candidate, c) in &q.candidates {
            let fallbacks: Vec<String> = c.fallbacks.iter().map(|(r, n)| format!("{}×{n}", r.name())).collect();
            writeln!(
                o.out,
                "{:<20} {candidate:<32} {:>9} {:>7} {:>9} {:>9}  {}",
                "",
                c.answered,
                c.errors,
                ms(c.latency.quantile_us(0.50)),
                ms(c.latency.quantile_us(0.95)),
                if fallbacks.is_empty() { "-".to_owned() } else { fallbacks.join(" ") }
            )?;
        }
    }
    Ok(())
}

/// Prints site-policy refusals per release and per site (`outpost-hub rejections`).
pub fn rejections(devices: &[outpost_hub::registry::DeviceRecord], json: bool, o: &mut Out<'_>) -> Result<()> {
    use std::collections::BTreeMap;
    // (package, digest) -> (site, rule, verb, by_site) -> devices
    type Release = (String, String);
    type Decision<'a> = (String, String, &'a str, bool);
    let mut by_release: BTreeMap<Release, BTreeMap<Decision, Vec<String>>> = BTreeMap::new();
    for d in devices {
        for r in &d.refusals {
            let site = d.shown_site().unwrap_or("-").to_owned();
            by_release
                .entry((r.package.clone(), r.digest.to_hex()))
                .or_default()
                .entry((site, r.rule.clone(), r.verb(), r.by_site || d.site_node))
                .or_default()
                .push(d.key.clone());
        }
    }
    if json {
        let rows: Vec<serde_json::Value> = by_release
            .iter()
            .flat_map(|((package, digest), rows)| {
                rows.iter().map(move |((site, rule, verb, site_level), keys)| {
                    serde_json::json!({
                        "package": package, "digest": digest, "site": site, "rule": rule, "decision": verb,
                        "site_level": site_level, "devices": keys,
                    })
                })
            })
            .collect();
        writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if by_release.is_empty() {
        writeln!(o.out, "no package is refused by any site policy")?;
        return Ok(());
    }
    writeln!(o.out, "PER RELEASE")?;
    writeln!(o.out, "{:<28} {:<12} {:>9} {:>9}  RULES", "PACKAGE", "DIGEST", "REJECTED", "DEFERRED")?;
    for ((package, digest), rows) in &by_release {
        let count = |verb: &str| rows.iter().filter(|(k, _)| k.2 == verb).map(|(_, v)| v.len()).sum::<usize>();
        let rules: std::collections::BTreeSet<&str> = rows.keys().map(|k| k.1.as_str()).collect();
        let rules: Vec<&str> = rules.into_iter().collect();
        writeln!(
            o.out,
            "{:<28} {:<12} {:>9} {:>9}  {}",
            package,
            &digest[..12],
            count("rejected"),
            count("deferred"),
            rules.join(", ")
        )?;
    }
    writeln!(o.out, "\nPER SITE")?;
    writeln!(o.out, "{:<16} {:<28} {:<10} {:<22} DECIDED BY", "SITE", "PACKAGE", "DECISION", "RULE")?;
    let mut by_site: BTreeMap<(&str, &str, &str, &str, bool), usize> = BTreeMap::new();
    for ((package, _), rows) in &by_release {
        for ((site, rule, verb, site_level), keys) in rows {
            *by_site.entry((site, package, verb, rule, *site_level)).or_default() += keys.len();
        }
    }
    for ((site, package, verb, rule, site_level), n) in by_site {
        let who = match (site_level, n) {
            (true, _) => "the site node, for the whole site".to_owned(),
            (false, 1) => "1 device's policy".to_owned(),
            (false, n) => format!("{n} devices' policies"),
        };
        writeln!(o.out, "{site:<16} {package:<28} {verb:<10} {rule:<22} {who}")?;
    }
    Ok(())
}
