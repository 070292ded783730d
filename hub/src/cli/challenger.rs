//! `outpost-hub challenger …`: run a breeding cycle on a capability's champion (descendants by an operator,
//! evaluated interleaved with the champion and a no-op control, decided by thresholds), list cycles, show one.
//!
//! A cycle changes no TUF metadata, director assignment, release or device; only `--auto-shadow` goes further, and
//! only for a promoted candidate whose derived risk is low.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::challenger::{self as driver, CycleRequest, OperatorChoice};
use outpost_hub::service::Hub;
use outpost_shared::challenger::{CycleRecord, Outcome, Subject, Thresholds};
use outpost_shared::clock::format_rfc3339;
use outpost_shared::manifest::{LineageOperator, RiskTier};
use outpost_shared::operators::Operator;

use super::Out;
use super::release::ReleaseCmd;

/// Metrics the table shows, in order, when measured.
const COLUMNS: [(&str, &str); 7] = [
    ("top1_accuracy", "TOP1"),
    ("frame_accuracy", "FRAMES"),
    ("agreement", "AGREE"),
    ("max_abs_diff", "MAXDIFF"),
    ("latency_p50_ms", "P50 MS"),
    ("latency_p95_ms", "P95 MS"),
    ("size_bytes", "SIZE"),
];

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum ChallengerCmd {
    /// Run one breeding cycle: make COUNT descendants of the capability's champion with an operator, register each
    /// as a package (lineage: operator, parameters, parent digest; provenance; derived risk tier; its own smoke-test
    /// expectations; an evaluation card that claims nothing), evaluate champion, no-op control (the champion again,
    /// to measure noise) and descendants on one suite under its budget, interleaved round by round, and decide:
    /// a descendant is rejected when a quality metric drops beyond the no-op's noise band plus the allowed drop,
    /// max_abs_diff or p95 latency rise beyond theirs, it exceeds the capability's size budget, or it gains nothing
    /// (not --min-size-gain smaller, not faster beyond noise); the smallest passing one is promoted to shadow
    /// candidate. Stores the write-once cycle record and prints its id. Changes no TUF metadata, director
    /// assignment, release or device unless --auto-shadow starts a release.
    ///
    /// External operators (--operator-cmd CMD): CMD is split on whitespace (no shell) and run once per descendant
    /// as `CMD… INPUT OUTPUT`, INPUT the champion's ONNX model, OUTPUT where it must write the descendant's ONNX
    /// model, with OUTPOST_CANDIDATE_INDEX=i (0-based) in its environment, in the process that owns the store (the
    /// serving hub, if one runs: give absolute paths); it must exit 0 within --timeout-secs. The command line,
    /// the input digest and each output's digest are recorded.
    Run(Box<RunArgs>),
    /// Show a cycle: champion, suite, operator, thresholds, the decision and a table of every candidate against
    /// champion, no-op and the noise band, with each rejection's reasons.
    Show {
        /// The cycle id or a unique prefix (8+ hex).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List cycles, oldest first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `challenger run`'s arguments (boxed in the command: they dwarf the other variants).
#[derive(clap::Args, Debug, Serialize, Deserialize)]
pub struct RunArgs {
    /// The capability.
    pub capability: String,
    /// An operator the hub runs: `int8` (weight-only, symmetric, DequantizeLinear) or `fp16` (float16 weights
    /// with Cast).
    #[arg(long, value_name = "NAME", required_unless_present = "operator_cmd", conflicts_with = "operator_cmd")]
    pub operator: Option<String>,
    /// Operator parameters: `min_elements=N` (smallest weight rewritten, default 1024); int8 also
    /// `granularity=per-channel|per-tensor` (default per-channel). Descendant i>0 varies them (int8: the other
    /// granularity, then min_elements ×4; fp16: min_elements ×4^i).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// An external operator command (see above).
    #[arg(long, value_name = "CMD")]
    pub operator_cmd: Option<String>,
    /// What the external operator does, for lineage: fine-tune, distill, prune, merge, convert, quantize.
    #[arg(long, value_name = "OP", default_value = "fine-tune", requires = "operator_cmd")]
    pub lineage: String,
    /// Seconds each external run may take before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = driver::DEFAULT_EXTERNAL_TIMEOUT.as_secs())]
    pub timeout_secs: u64,
    /// How many descendants (1–16).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub count: u32,
    /// Rounds: each subject is evaluated this many times, interleaved (1–20).
    #[arg(long, value_name = "R", default_value_t = driver::DEFAULT_ROUNDS)]
    pub rounds: u32,
    /// The champion (digest, prefix, name@version or alias); default: the capability's champion on --channel.
    #[arg(long, value_name = "PACKAGE")]
    pub champion: Option<String>,
    /// The channel whose champion is challenged (and where --auto-shadow releases).
    #[arg(long, value_name = "NAME", default_value = "stable")]
    pub channel: String,
    /// The suite (name, digest or prefix); default: the capability's only suite.
    #[arg(long, value_name = "SUITE")]
    pub suite: Option<String>,
    /// Largest drop of top1_accuracy, frame_accuracy or agreement below the champion's, beyond the noise band.
    #[arg(long, value_name = "X", default_value_t = Thresholds::default().max_quality_drop)]
    pub max_quality_drop: f64,
    /// Largest rise of max_abs_diff above the champion's, beyond the noise band.
    #[arg(long, value_name = "X", default_value_t = Thresholds::default().max_diff_increase)]
    pub max_diff_increase: f64,
    /// Largest rise of p95 latency, as a share of the champion's, beyond the noise band.
    #[arg(long, value_name = "X", default_value_t = Thresholds::default().max_latency_regression)]
    pub max_latency_regression: f64,
    /// Smallest size reduction (share of the champion's) that counts as a gain.
    #[arg(long, value_name = "X", default_value_t = Thresholds::default().min_size_gain)]
    pub min_size_gain: f64,
    /// If a candidate is promoted and its derived risk is low, publish it to --channel with --key and start a
    /// release under PLAN (which must have a [shadow] stage). A medium or high risk candidate is not started:
    /// it needs `release publish`, a second signature and an approval.
    #[arg(long, value_name = "PLAN", requires = "key")]
    pub auto_shadow: Option<PathBuf>,
    /// Targets key file for --auto-shadow.
    #[arg(long, value_name = "FILE", requires = "auto_shadow")]
    pub key: Option<PathBuf>,
    /// Print the cycle record as JSON.
    #[arg(long)]
    pub json: bool,
}

impl ChallengerCmd {
    /// Makes paths absolute against `cwd` (the serving hub runs elsewhere): the plan, the key, and a relative
    /// program path in --operator-cmd.
    pub fn resolve(&mut self, cwd: &std::path::Path) {
        if let ChallengerCmd::Run(args) = self {
            let RunArgs { auto_shadow, key, operator_cmd, .. } = &mut **args;
            for p in auto_shadow.iter_mut().chain(key.iter_mut()) {
                if p.is_relative() {
                    *p = cwd.join(&*p);
                }
            }
            if let Some(cmd) = operator_cmd {
                let program = cmd.split_whitespace().next().unwrap_or_default().to_owned();
                if program.contains('/') && !program.starts_with('/') {
                    *cmd = cmd.replacen(&program, &cwd.join(&program).display().to_string(), 1);
                }
            }
        }
    }
}

/// Runs `outpost-hub challenger …`.
pub fn run(cmd: ChallengerCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let store = hub.store()?;
    match cmd {
        ChallengerCmd::Run(args) => {
            let RunArgs {
                capability,
                operator,
                params,
                operator_cmd,
                lineage,
                timeout_secs,
                count,
                rounds,
                champion,
                channel,
                suite,
                max_quality_drop,
                max_diff_increase,
                max_latency_regression,
                min_size_gain,
                auto_shadow,
                key,
                json,
            } = *args;
            let operator = match (operator, operator_cmd) {
                (Some(name), None) => {
                    let pairs = params
                        .iter()
                        .map(|p| {
                            p.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .with_context(|| format!("--param `{p}`: expected KEY=VALUE"))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    OperatorChoice::Builtin(Operator::parse(&name, &pairs)?)
                }
                (None, Some(command)) => {
                    if !params.is_empty() {
                        bail!("--param is for the hub's own operators; an external command takes its own arguments");
                    }
                    let lineage: LineageOperator = serde_json::from_value(serde_json::json!(lineage))
                        .with_context(|| format!("--lineage `{lineage}`: not a lineage operator"))?;
                    if lineage == LineageOperator::None {
                        bail!("--lineage none: a descendant has a parent");
                    }
                    OperatorChoice::External { command, lineage, timeout: Duration::from_secs(timeout_secs) }
                }
                _ => bail!("give exactly one of --operator and --operator-cmd"),
            };
            let thresholds = Thresholds { max_quality_drop, max_diff_increase, max_latency_regression, min_size_gain };
            if [max_quality_drop, max_diff_increase, max_latency_regression, min_size_gain]
                .iter()
                .any(|v| !v.is_finite() || *v < 0.0)
            {
                bail!("thresholds must be finite numbers ≥ 0");
            }
            let champion = champion.map(|c| store.packages().resolve(&c)).transpose()?;
            let suite = suite.map(|s| store.evaluations().suite(&s).map(|(d, _)| d)).transpose()?;
            let req = CycleRequest {
                capability,
                champion,
                channel: channel.clone(),
                suite,
                operator,
                count,
                rounds,
                thresholds,
            };
            writeln!(
                o.err,
                "challenger: {count} descendant(s), {rounds} round(s) interleaved with champion and no-op"
            )?;
            let mut record = driver::run(store, &hub.repo(), hub.clock(), &req)?;
            if let (Some(plan), Some(key)) = (auto_shadow, key) {
                record.follow_up = Some(auto_shadow_release(&record, &plan, &key, &channel, hub, o)?);
            }
            let id = store.cycles().cycle_put(&record)?;
            if json {
                writeln!(o.out, "{}", serde_json::to_string_pretty(&cycle_json(&id, &record))?)?;
            } else {
                show(&id, &record, o.err)?;
                writeln!(o.out, "{id}")?;
            }
        }
        ChallengerCmd::Show { id, json } => {
            let (id, record) = store.cycles().cycle(&id)?;
            if json {
                writeln!(o.out, "{}", serde_json::to_string_pretty(&cycle_json(&id, &record))?)?;
            } else {
                show(&id, &record, o.out)?;
            }
        }
        ChallengerCmd::List { json } => {
            let cycles = store.cycles().cycles()?;
            if json {
                let rows: Vec<serde_json::Value> = cycles.iter().map(|(id, r)| cycle_json(id, r)).collect();
                writeln!(o.out, "{}", serde_json::to_string_pretty(&rows)?)?;
            } else if cycles.is_empty() {
                writeln!(o.err, "no cycles yet: run one with `outpost-hub challenger run CAPABILITY --operator int8`")?;
            } else {
                writeln!(
                    o.out,
                    "{:<12}  {:<20} {:<24} {:<10} {:>10}  PROMOTED",
                    "CYCLE", "AT", "CAPABILITY", "OPERATOR", "CANDIDATES"
                )?;
                for (id, r) in cycles {
                    let promoted =
                        r.candidates.iter().find(|c| Some(c.package) == r.promoted).map_or("-", |c| &c.label);
                    writeln!(
                        o.out,
                        "{:<12}  {:<20} {:<24} {:<10} {:>10}  {promoted}",
                        id.short(),
                        format_rfc3339(r.at),
                        r.capability,
                        operator_name(&r),
                        r.candidates.len()
                    )?;
                }
            }
        }
    }
    Ok(0)
}

/// Publishes the promoted candidate and starts its shadow release, if its derived risk allows; returns what
/// happened, for the cycle record.
fn auto_shadow_release(
    record: &CycleRecord,
    plan: &std::path::Path,
    key: &std::path::Path,
    channel: &str,
    hub: &Hub,
    o: &mut Out<'_>,
) -> Result<String> {
    let Some(c) = record.candidates.iter().find(|c| Some(c.package) == record.promoted) else {
        return Ok("no shadow release: no candidate was promoted".into());
    };
    let tier = c.risk.effective();
    if tier != RiskTier::Low {
        let why =
            if c.risk.reasons.is_empty() { format!("declared {}", c.risk.declared) } else { c.risk.reasons.join("; ") };
        return Ok(format!(
            "no shadow release: {} is {tier} risk ({why}); it needs `release publish`, a second signature \
             (`release sign`) and an approval",
            c.label
        ));
    }
    let text = std::fs::read_to_string(plan).with_context(|| format!("reading {}", plan.display()))?;
    if outpost_shared::rollout::Plan::from_toml(&text, plan)?.shadow.is_none() {
        bail!("--auto-shadow {}: the plan has no [shadow] stage", plan.display());
    }
    let digest = c.package.to_hex();
    super::release::run(
        ReleaseCmd::Publish { package: digest.clone(), channel: channel.into(), key: key.to_owned() },
        hub,
        o,
    )?;
    let mut started = Vec::new();
    super::release::run(
        ReleaseCmd::Start { package: digest, plan: plan.to_owned(), channel: channel.into() },
        hub,
        &mut Out { out: &mut started, err: o.err },
    )?;
    let release = String::from_utf8_lossy(&started).trim().to_owned();
    Ok(format!("shadow release {release} of {} on channel {channel} under plan {}", c.label, plan.display()))
}

fn operator_name(r: &CycleRecord) -> String {
    match &r.operator {
        outpost_shared::challenger::OperatorRun::Builtin { name } => name.clone(),
        outpost_shared::challenger::OperatorRun::External { .. } => "external".into(),
    }
}

fn cycle_json(id: &outpost_shared::Digest, r: &CycleRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("id".into(), serde_json::json!(id));
    }
    v
}

/// The cycle as text: header, the decision, and the table of candidates against champion, no-op and noise.
fn show(id: &outpost_shared::Digest, r: &CycleRecord, w: &mut dyn std::io::Write) -> Result<()> {
    writeln!(w, "cycle       {id}")?;
    writeln!(w, "at          {}", format_rfc3339(r.at))?;
    writeln!(w, "capability  {}", r.capability)?;
    writeln!(w, "champion    {}", r.champion)?;
    writeln!(w, "suite       {} ({})", r.suite_name, r.suite.short())?;
    match &r.operator {
        outpost_shared::challenger::OperatorRun::Builtin { name } => writeln!(w, "operator    {name}")?,
        outpost_shared::challenger::OperatorRun::External { command, input } => {
            writeln!(w, "operator    external `{command}` (input model {input})")?
        }
    }
    writeln!(w, "runs        {} rounds × {} subjects, interleaved", r.rounds, r.candidates.len() + 2)?;
    let t = r.thresholds;
    writeln!(
        w,
        "thresholds  max_quality_drop={} max_diff_increase={} max_latency_regression={} min_size_gain={}",
        t.max_quality_drop, t.max_diff_increase, t.max_latency_regression, t.min_size_gain
    )?;
    match r.candidates.iter().find(|c| Some(c.package) == r.promoted) {
        Some(c) => writeln!(w, "decision    PROMOTED {} to shadow candidate", c.label)?,
        None => writeln!(w, "decision    NONE promoted: every candidate rejected")?,
    }
    if let Some(f) = &r.follow_up {
        writeln!(w, "follow-up   {f}")?;
    }
    let cols: Vec<(&str, &str)> =
        COLUMNS.iter().copied().filter(|(k, _)| r.champion_metrics.contains_key(*k)).collect();
    let cell = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
        m.get(k).map_or("-".to_owned(), |v| if k == "size_bytes" { format!("{v:.0}") } else { format!("{v:.4}") })
    };
    write!(w, "\n{:<44} {:<5}", "CANDIDATE", "RISK")?;
    for (_, h) in &cols {
        write!(w, " {h:>10}")?;
    }
    writeln!(w, "  OUTCOME")?;
    let row = |w: &mut dyn std::io::Write,
               name: &str,
               risk: &str,
               m: &std::collections::BTreeMap<String, f64>,
               tail: &str|
     -> Result<()> {
        write!(w, "{name:<44} {risk:<5}")?;
        for (k, _) in &cols {
            write!(w, " {:>10}", cell(m, k))?;
        }
        writeln!(w, "  {tail}")?;
        Ok(())
    };
    row(w, "champion", "", &r.champion_metrics, "")?;
    row(w, "no-op (champion again)", "", &r.noop_metrics, "")?;
    row(w, "noise band (spread of champion + no-op)", "", &r.noise, "")?;
    for c in &r.candidates {
        let outcome = match c.verdict.outcome {
            Outcome::Promoted => "PROMOTED",
            Outcome::Passed => "passed (not the best)",
            Outcome::Rejected => "REJECTED",
        };
        row(w, &c.label, &c.risk.effective().to_string(), &c.verdict.metrics, outcome)?;
        let params: Vec<String> = c.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(w, "    package {}  model {}  {}", c.package.short(), c.model.short(), params.join(" "))?;
        for reason in &c.verdict.reasons {
            writeln!(w, "    reason: {reason}")?;
        }
        for gain in &c.verdict.gains {
            writeln!(w, "    gain:   {gain}")?;
        }
        for reason in &c.risk.reasons {
            writeln!(w, "    risk:   {reason}")?;
        }
    }
    let order: Vec<String> = r
        .runs
        .iter()
        .map(|run| match run.subject {
            Subject::Champion => "C".to_owned(),
            Subject::Noop => "N".to_owned(),
            Subject::Descendant(i) => format!("D{}", i + 1),
        })
        .collect();
    writeln!(w, "\norder       {}", order.join(" "))?;
    Ok(())
}
