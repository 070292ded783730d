//! What every console page shares: the layout and navigation, the login form, small formatters, progress bars and
//! the chart of a release's devices per state over time (sampled while the console runs and stored, drawn as SVG).
//!
//! Nothing here reads the store except the sampler, which runs on the blocking pool at `sample_period`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use outpost_shared::clock::{UnixSeconds, format_rfc3339};
use outpost_shared::rollout::Stats;

use super::http::State;
use super::users::{Role, Session};

/// The page frame: head, navigation, who is logged in, the body, and how long the body took to render.
pub fn layout(title: &str, session: Option<&Session>, took: Duration, body: Markup) -> Markup {
    layout_live(title, session, took, None, body)
}

/// [`layout`], with live updates every `live` seconds (`live.js`) when set.
pub fn layout_live(title: &str, session: Option<&Session>, took: Duration, live: Option<u64>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Outpost hub" }
                link rel="stylesheet" href="/assets/console.css";
                @if live.is_some() { script src="/assets/live.js" defer {} }
            }
            body data-live-secs=[live] {
                header {
                    span.brand { "Outpost hub" }
                    @if let Some(s) = session {
                        nav {
                            a href="/releases" { "Releases" }
                            a href="/devices" { "Devices" }
                            a href="/sites" { "Sites" }
                            a href="/packages" { "Packages" }
                            a href="/audit" { "Audit log" }
                        }
                        form.logout method="post" action="/logout" {
                            span.who { (s.user) " (" (s.role.as_str()) ")" }
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
                @if session.is_some() {
                    footer { "rendered in " span id="render-ms" { (format!("{:.1}", took.as_secs_f64() * 1000.0)) } " ms" }
                }
            }
        }
    }
}

/// The login page, with an error line after a failed attempt.
pub fn login(error: Option<&str>, form_token: &str) -> Markup {
    let body = html! {
        h1 { "Log in" }
        @if let Some(e) = error { p.error { (e) } }
        form.login method="post" action="/login" {
            input type="hidden" name="login_csrf" value=(form_token);
            label { "User " input type="text" name="user" autocomplete="username" required; }
            label { "Password " input type="password" name="password" autocomplete="current-password" required; }
            button type="submit" { "Log in" }
        }
        p.note { "Credentials are issued on the hub: " code { "outpost-hub console user add NAME --role viewer|operator" } }
    };
    layout("Log in", None, Duration::ZERO, body)
}

/// A Unix time for people.
pub fn time(t: UnixSeconds) -> String {
    format_rfc3339(t)
}

/// A digest's first 12 hex characters, for tables.
pub fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Whether this session may act.
pub fn may_act(s: &Session) -> bool {
    s.role == Role::Operator
}

/// A horizontal bar of a stage's devices: installed, failed, rolled back, rejected by policy, pending (widths in
/// percent of the assigned devices), as SVG (the page's Content-Security-Policy allows no inline styles).
pub fn progress(s: &Stats) -> Markup {
    let total = s.assigned.max(1) as f64;
    let parts = [
        ("installed", s.installed),
        ("failed", s.failed),
        ("rolledback", s.rolled_back),
        ("rejected", s.rejected_by_policy),
        ("pending", s.pending),
    ];
    let mut x = 0.0;
    let mut rects = Vec::new();
    for (class, n) in parts {
        let w = n as f64 * 100.0 / total;
        if n > 0 {
            rects.push((class, x, w));
        }
        x += w;
    }
    html! {
        svg.bar viewBox="0 0 100 10" preserveAspectRatio="none" role="img" aria-label=(format!("{} installed, {} failed, {} rolled back, {} rejected by site policy, {} pending of {}",
            s.installed, s.failed, s.rolled_back, s.rejected_by_policy, s.pending, s.assigned)) {
            rect.track x="0" y="0" width="100" height="10" {}
            @for (class, x, w) in rects {
                rect class=(class) x=(format!("{x:.3}")) y="0" width=(format!("{w:.3}")) height="10" {}
            }
        }
    }
}

/// The legend of [`progress`] bars and the chart.
pub fn legend() -> Markup {
    html! {
        p.legend {
            span.key.installed {} "installed " span.key.failed {} "failed " span.key.rolledback {} "rolled back "
            span.key.rejected {} "rejected by site policy " span.key.pending {} "pending"
        }
    }
}

/// One sample of a release's cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// When.
    pub at: UnixSeconds,
    /// The counts of the devices it was judged on then (shadow devices while in shadow, else its cohort).
    pub stats: Stats,
}

/// Samples per release, newest last, bounded.
#[derive(Debug)]
pub struct History {
    by_release: Mutex<BTreeMap<String, VecDeque<Sample>>>,
    max: usize,
}

impl History {
    /// Empty, keeping at most `max` samples per release.
    pub fn new(max: usize) -> History {
        History { by_release: Mutex::default(), max: max.max(2) }
    }

    /// Adds a sample: one at the newest's second replaces it, an older one (a clock gone back, a copy built
    /// before the newest) is dropped, so samples stay in time order. Whether the counts changed (worth storing).
    pub fn record(&self, release: &str, sample: Sample) -> bool {
        let mut all = self.by_release.lock().unwrap_or_else(|p| p.into_inner());
        let q = all.entry(release.to_owned()).or_default();
        let changed = q.back().is_none_or(|b| b.stats != sample.stats);
        match q.back() {
            Some(b) if sample.at < b.at => return false,
            Some(b) if sample.at == b.at => {
                q.pop_back();
            }
            _ => {}
        }
        q.push_back(sample);
        while q.len() > self.max {
            q.pop_front();
        }
        changed
    }

    /// Puts back the samples stored before a restart (each release's, unless it has some already).
    pub fn restore(&self, stored: Vec<(String, Vec<Sample>)>) {
        let mut all = self.by_release.lock().unwrap_or_else(|p| p.into_inner());
        for (release, samples) in stored {
            let q = all.entry(release).or_default();
            if q.is_empty() {
                q.extend(samples.into_iter().rev().take(self.max).rev());
            }
        }
    }

    /// A release's samples, oldest first.
    pub fn samples(&self, release: &str) -> Vec<Sample> {
        let all = self.by_release.lock().unwrap_or_else(|p| p.into_inner());
        all.get(release).map(|q| q.iter().copied().collect()).unwrap_or_default()
    }
}

/// Samples every release's cohort counts for the chart, every `sample_period`.
pub async fn sample_releases(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.config.sample_period);
    let mut first = true;
    loop {
        tick.tick().await;
        let st = state.clone();
        let restore = std::mem::take(&mut first);
        let sampled = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let reg = st.hub.store().map_err(|e| e.to_string())?.registry();
            if restore {
                st.history.restore(reg.console_charts().map_err(|e| e.to_string())?);
            }
            // Keeps the releases warm, and the device index current (built on the first tick, at start), so a
            // page finds little to catch up on.
            let built = st.releases().map_err(|e| e.to_string())?;
            st.devices.catch_up(&st.hub).map_err(|e| e.to_string())?;
            for r in &built.value {
                // The devices the release is judged on now: the shadow cohort while in shadow, else the serving one.
                let stats = match (r.status.position, r.status.shadow) {
                    (outpost_shared::rollout::Position::Shadow, Some(shadow)) => shadow,
                    _ => r.status.cohort,
                };
                // A change is stored (the samples between two changes are flat: the chart keeps its shape).
                if st.history.record(&r.id, Sample { at: built.wall, stats }) {
                    reg.console_chart_put(&r.id, &st.history.samples(&r.id)).map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        })
        .await;
        match sampled {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "console: sampling releases"),
            Err(e) => tracing::warn!(error = %e, "console: sampling releases task"),
        }
    }
}

/// The chart of a release's devices per state over time: one line per state, as inline SVG.
pub fn chart(samples: &[Sample]) -> Markup {
    if samples.len() < 2 {
        return html! { p.note { "The chart of devices per state fills in as the console samples this release (every few seconds while it runs)." } };
    }
    let (w, h, pad) = (640.0_f64, 160.0_f64, 28.0_f64);
    let t0 = samples.first().map_or(0, |s| s.at);
    let t1 = samples.last().map_or(1, |s| s.at).max(t0 + 1);
    let top = samples.iter().map(|s| s.stats.assigned).max().unwrap_or(1).max(1) as f64;
    let x = |t: UnixSeconds| pad + t.saturating_sub(t0) as f64 / (t1 - t0) as f64 * (w - 2.0 * pad);
    let y = |n: u64| h - pad - (n as f64 / top).min(1.0) * (h - 2.0 * pad);
    type Series = (&'static str, fn(&Stats) -> u64);
    let series: [Series; 5] = [
        ("installed", |s| s.installed),
        ("failed", |s| s.failed),
        ("rolledback", |s| s.rolled_back),
        ("rejected", |s| s.rejected_by_policy),
        ("pending", |s| s.pending),
    ];
    let mut svg = format!(
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="devices per state over time"><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" class="axis"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" class="axis"/><text x="2" y="{pad}" class="tick">{top}</text><text x="2" y="{b}" class="tick">0</text>"#,
        b = h - pad,
        r = w - pad,
    );
    for (class, f) in series {
        let points: Vec<String> = samples.iter().map(|s| format!("{:.1},{:.1}", x(s.at), y(f(&s.stats)))).collect();
        svg.push_str(&format!(r#"<polyline class="{class}" points="{}"/>"#, points.join(" ")));
    }
    svg.push_str("</svg>");
    html! {
        // Built from numbers and fixed class names only: nothing from the store reaches this string as text.
        (PreEscaped(svg))
        p.note { (time(t0)) " to " (time(t1)) " (sampled while the console runs; kept across restarts)" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_sample_is_dropped_and_the_chart_draws_in_time_order() {
        let h = History::new(10);
        let stats = Stats { assigned: 2, pending: 2, ..Stats::default() };
        for at in [100, 105, 103, 105, 110] {
            h.record("r1", Sample { at, stats });
        }
        let at: Vec<u64> = h.samples("r1").iter().map(|s| s.at).collect();
        assert_eq!(at, [100, 105, 110]);
        assert!(chart(&h.samples("r1")).into_string().contains("<polyline class=\"pending\""));
    }
}
