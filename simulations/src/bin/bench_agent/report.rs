//! What the benchmarks report: latency summaries (median, p99) of timed samples, the rows of the final table
//! and its printing, and the machine's load average printed beside it.

use std::time::Duration;

/// Median and 99th percentile, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) median: f64,
    pub(crate) p99: f64,
}

pub(crate) fn latency(mut samples_us: Vec<f64>) -> Latency {
    samples_us.sort_by(|a, b| a.total_cmp(b));
    let n = samples_us.len();
    Latency { median: samples_us[n / 2], p99: samples_us[(n * 99 / 100).min(n - 1)] }
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One line of the final table.
pub(crate) struct Row {
    figure: String,
    ours: String,
    baseline: String,
    ratio: String,
    goal: String,
}

impl Row {
    pub(crate) fn new(figure: &str, ours: String, baseline: String, ratio: f64, goal: &str) -> Row {
        Row { figure: figure.into(), ours, baseline, ratio: format!("{ratio:.2}"), goal: goal.into() }
    }
}

pub(crate) fn print_table(rows: &[Row]) {
    let head = ["figure", "ours", "baseline", "ratio", "goal"];
    let cell = |r: &Row, i: usize| match i {
        0 => r.figure.clone(),
        1 => r.ours.clone(),
        2 => r.baseline.clone(),
        3 => r.ratio.clone(),
        _ => r.goal.clone(),
    };
    let widths: Vec<usize> =
        (0..5).map(|i| rows.iter().map(|r| cell(r, i).chars().count()).max().unwrap_or(0).max(head[i].len())).collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(head.iter().map(|s| s.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line((0..5).map(|i| cell(r, i)).collect());
    }
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}
