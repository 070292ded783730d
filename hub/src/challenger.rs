//! The challenger loop's driver (`challenger run`): makes descendants of a capability's champion with an operator
//! (one the hub runs, or an external command), registers each as a package with lineage and provenance, evaluates
//! champion, no-op control and descendants interleaved on one suite under one budget, and decides by thresholds.
//!
//! No production impact: a cycle writes packages, evaluation records and its cycle record to the registry, and
//! nothing else — no TUF metadata, director assignment, release or device record (a test proves it byte for byte).
//! The decisions are `shared::challenger`'s; this module only does the I/O around them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use outpost_shared::challenger::{
    self, Candidate, CycleRecord, DerivedRisk, OperatorRun, Run, Subject, Thresholds, Verdict,
};
use outpost_shared::clock::{Clock, UnixSeconds, format_rfc3339};
use outpost_shared::manifest::{
    Baseline, Contract, Decision, DecisionOutcome, EvaluationCard, Lineage, LineageOperator, Provenance, Suite,
};
use outpost_shared::model::{self, ModelError};
use outpost_shared::operators::{self, Operator, OperatorError};
use outpost_shared::{Digest, Manifest};

use crate::boundary::{self, BoundaryError};
use crate::evaluate::{self, EvalError};
use crate::registry::{Registry, RegistryError};
use crate::store::Store;
use crate::tuf::TufRepo;

/// Most descendants one cycle may make.
pub const MAX_COUNT: u32 = 16;
/// Most rounds one cycle may run.
pub const MAX_ROUNDS: u32 = 20;
/// Default rounds: each subject is evaluated this many times, interleaved.
pub const DEFAULT_ROUNDS: u32 = 2;
/// Default time an external operator may take per descendant.
pub const DEFAULT_EXTERNAL_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a running external operator is checked on.
const EXTERNAL_POLL: Duration = Duration::from_millis(20);

/// How descendants are made.
#[derive(Debug, Clone)]
pub enum OperatorChoice {
    /// An operator the hub runs ([`operators::Operator`]); descendant `i` uses [`Operator::variant`]`(i)`.
    Builtin(Operator),
    /// `COMMAND… INPUT OUTPUT`: the command line split on whitespace (no shell), run once per descendant with the
    /// champion's model at INPUT and `OUTPOST_CANDIDATE_INDEX` set; it must write an ONNX model to OUTPUT and exit 0.
    External {
        /// The command line.
        command: String,
        /// What the command does, for lineage (`fine-tune`, `distill`, …).
        lineage: LineageOperator,
        /// How long each run may take before it is killed.
        timeout: Duration,
    },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CycleRequest {
    /// The capability.
    pub capability: String,
    /// The champion; `None`: the capability's champion on `channel`.
    pub champion: Option<Digest>,
    /// The channel whose champion is meant.
    pub channel: String,
    /// The suite; `None`: the capability's only suite.
    pub suite: Option<Digest>,
    /// The operator.
    pub operator: OperatorChoice,
    /// How many descendants.
    pub count: u32,
    /// How many rounds.
    pub rounds: u32,
    /// What decides.
    pub thresholds: Thresholds,
}

/// Why a cycle could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChallengerError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The capability's boundary could not be read.
    #[error(transparent)]
    Boundary(#[from] BoundaryError),
    /// An evaluation failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The operator refused the champion's model.
    #[error("operator: {0}")]
    Operator(#[from] OperatorError),
    /// A descendant does not load or run in tract.
    #[error("descendant {index}: {source}")]
    Descendant {
        /// Which.
        index: u32,
        /// Why.
        source: ModelError,
    },
    /// No champion to start from.
    #[error(
        "capability `{capability}` has no champion on channel `{channel}`; publish one, or name it with --champion"
    )]
    NoChampion {
        /// The capability.
        capability: String,
        /// The channel.
        channel: String,
    },
    /// The champion is of another capability.
    #[error("the champion {champion} is of capability `{actual}`, not `{capability}`")]
    OtherCapability {
        /// The champion.
        champion: String,
        /// Its capability.
        actual: String,
        /// The one asked for.
        capability: String,
    },
    /// No suite, or several, and none named.
    #[error("capability `{capability}` has {count} suites; name one with --suite")]
    WhichSuite {
        /// The capability.
        capability: String,
        /// How many it has.
        count: usize,
    },
    /// A count or round number out of bounds.
    #[error("{what} must be 1–{max}, not {value}")]
    OutOfBounds {
        /// `--count` or `--rounds`.
        what: &'static str,
        /// The bound.
        max: u32,
        /// What was given.
        value: u32,
    },
    /// The external operator failed, timed out or wrote nothing usable.
    #[error("external operator `{command}` (descendant {index}): {problem}")]
    External {
        /// The command line.
        command: String,
        /// Which descendant.
        index: u32,
        /// What went wrong.
        problem: String,
    },
    /// A scratch file could not be written or read.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A descendant made and registered.
struct Made {
    package: Digest,
    label: String,
    model: Digest,
    parameters: BTreeMap<String, String>,
    risk: DerivedRisk,
}

/// Runs a cycle and returns its record, not yet stored (the caller may start a shadow release first and note it in
/// `follow_up`, then stores it with [`Registry::cycle_put`]).
pub fn run(
    store: &Store,
    repo: &TufRepo,
    clock: &Arc<dyn Clock>,
    req: &CycleRequest,
) -> Result<CycleRecord, ChallengerError> {
    for (what, value, max) in [("--count", req.count, MAX_COUNT), ("--rounds", req.rounds, MAX_ROUNDS)] {
        if value == 0 || value > max {
            return Err(ChallengerError::OutOfBounds { what, max, value });
        }
    }
    let reg = store.registry();
    let cap = reg
        .capability(&req.capability)?
        .ok_or_else(|| RegistryError::UnknownCapability(req.capability.clone()))?
        .capability;
    let champion = match req.champion {
        Some(d) => d,
        None => boundary::boundary(store, repo, &req.capability)?
            .channels
            .iter()
            .find(|c| c.channel == req.channel)
            .map(|c| c.champion)
            .ok_or_else(|| ChallengerError::NoChampion {
                capability: req.capability.clone(),
                channel: req.channel.clone(),
            })?,
    };
    let (_, parent) = reg.manifest(&champion)?;
    if parent.capability != req.capability {
        return Err(ChallengerError::OtherCapability {
            champion: format!("{}@{}", parent.name, parent.version),
            actual: parent.capability,
            capability: req.capability.clone(),
        });
    }
    let (suite, suite_manifest) = match req.suite {
        Some(d) => reg.suite(&d.to_hex())?,
        None => {
            let mut mine: Vec<_> =
                reg.suites()?.into_iter().filter(|(_, m)| m.suite.capability == req.capability).collect();
            if mine.len() != 1 {
                return Err(ChallengerError::WhichSuite { capability: req.capability.clone(), count: mine.len() });
            }
            mine.remove(0)
        }
    };
    let at = clock.wall();
    let parent_model = model_bytes(reg, &champion)?;
    let parent_ops = operators::op_types(&parent_model)?;
    let card_suite = Suite { name: suite_manifest.suite.name.clone(), digest: suite };

    let mut made = Vec::new();
    for i in 0..req.count {
        let (bytes, lineage_op, parameters) = match &req.operator {
            OperatorChoice::Builtin(op) => {
                let v = op.variant(i as usize);
                let mut p = v.parameters();
                p.insert("operator".into(), v.name().into());
                (v.apply(&parent_model)?.model, v.lineage(), p)
            }
            OperatorChoice::External { command, lineage, timeout } => {
                let bytes = external(reg, clock, command, &parent_model, i, at, *timeout)?;
                let p = [
                    ("command".to_owned(), command.clone()),
                    ("index".to_owned(), i.to_string()),
                    ("input".to_owned(), Digest::of(&parent_model).to_hex()),
                ]
                .into();
                (bytes, *lineage, p)
            }
        };
        let tag = match &req.operator {
            OperatorChoice::Builtin(op) => op.name(),
            OperatorChoice::External { .. } => "ext",
        };
        let child = descendant(&parent, champion, &card_suite, lineage_op, parameters.clone(), tag, at, i)?;
        made.push(register(reg, &parent, &parent_ops, &cap.contract, child, &bytes, i, parameters)?);
    }

    // Champion, no-op and descendants, interleaved round by round, on one suite and one budget.
    let mut runs = Vec::new();
    for (round, subject) in challenger::schedule(req.count, req.rounds) {
        let package = match subject {
            Subject::Champion | Subject::Noop => champion,
            Subject::Descendant(i) => made[i as usize].package,
        };
        let (record, metrics) = evaluate_once(reg, clock, &package, &suite)?;
        runs.push(Run { subject, round, record, metrics });
    }
    let verdicts = challenger::decide(&runs, req.count, &req.thresholds, Some(cap.budget.package_size_bytes));
    let candidates: Vec<Candidate> = made
        .into_iter()
        .zip(verdicts)
        .map(|(m, verdict): (Made, Verdict)| Candidate {
            package: m.package,
            label: m.label,
            model: m.model,
            parameters: m.parameters,
            risk: m.risk,
            verdict,
        })
        .collect();
    let promoted = candidates.iter().find(|c| c.verdict.outcome == challenger::Outcome::Promoted).map(|c| c.package);
    let operator = match &req.operator {
        OperatorChoice::Builtin(op) => OperatorRun::Builtin { name: op.name().into() },
        OperatorChoice::External { command, .. } => {
            OperatorRun::External { command: command.clone(), input: Digest::of(&parent_model) }
        }
    };
    Ok(CycleRecord {
        capability: req.capability.clone(),
        champion,
        suite,
        suite_name: suite_manifest.suite.name,
        operator,
        rounds: req.rounds,
        thresholds: req.thresholds,
        champion_metrics: challenger::medians(&runs, Subject::Champion),
        noop_metrics: challenger::medians(&runs, Subject::Noop),
        noise: challenger::noise(&runs),
        runs,
        candidates,
        promoted,
        follow_up: None,
        at,
    })
}

/// A package's model bytes, verified against their digest.
fn model_bytes(reg: &Registry, d: &Digest) -> Result<Vec<u8>, ChallengerError> {
    let record = reg.record(d)?.ok_or_else(|| RegistryError::UnknownPackage(d.to_hex()))?;
    Ok(reg.model_of(&record)?)
}

/// The descendant's manifest, derived from the champion's: same capability and contract; version
/// `X.Y.Z-<tag>.<time>.<i+1>`; lineage with operator, parameters and parent; provenance naming the hub and the
/// operator; an evaluation card that claims nothing (the cycle record holds the measurements and the decision).
#[allow(clippy::too_many_arguments)]
fn descendant(
    parent: &Manifest,
    champion: Digest,
    suite: &Suite,
    operator: LineageOperator,
    parameters: BTreeMap<String, String>,
    tag: &str,
    at: UnixSeconds,
    i: u32,
) -> Result<Manifest, ChallengerError> {
    let mut child = parent.clone();
    child.version.pre = semver::Prerelease::new(&format!("{tag}.{at}.{}", i + 1)).map_err(|e| {
        ChallengerError::Registry(RegistryError::Corrupt { key: "version".into(), problem: e.to_string() })
    })?;
    child.version.build = semver::BuildMetadata::EMPTY;
    let revision: Vec<String> = parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    child.lineage = Lineage { operator, parents: vec![champion], parameters };
    child.provenance = Provenance {
        built_by: "outpost-hub challenger".into(),
        source: format!("package {champion} ({}@{})", parent.name, parent.version),
        revision: revision.join(" "),
        built_at: format_rfc3339(at),
    };
    child.evaluation = EvaluationCard {
        suite: suite.clone(),
        metrics: BTreeMap::new(),
        baseline: Baseline {
            name: format!("champion {}@{}", parent.name, parent.version),
            package: Some(champion),
            metrics: BTreeMap::new(),
        },
        decision: Decision {
            outcome: DecisionOutcome::Rejected,
            by: "outpost-hub challenger".into(),
            reason: "a challenger descendant claims nothing: its cycle record (`outpost-hub challenger show`) holds \
                     the measurements and the decision"
                .into(),
        },
    };
    Ok(child)
}

/// Derives the descendant's risk, sets its tier to the effective one, gives it its own smoke-test expectations
/// (what tract answers for the champion's smoke inputs), and registers it through `package add`'s checks.
#[allow(clippy::too_many_arguments)]
fn register(
    reg: &Registry,
    parent: &Manifest,
    parent_ops: &BTreeSet<String>,
    contract: &Contract,
    mut child: Manifest,
    bytes: &[u8],
    i: u32,
    parameters: BTreeMap<String, String>,
) -> Result<Made, ChallengerError> {
    let new_ops: BTreeSet<String> = operators::op_types(bytes)?.difference(parent_ops).cloned().collect();
    let risk = challenger::derive_risk(parent, &child, &new_ops, Some(contract));
    child.risk_tier = risk.effective();
    let loaded = model::load(bytes, &child).map_err(|source| ChallengerError::Descendant { index: i, source })?;
    child.smoke_test.expected =
        loaded.smoke_outputs(&child).map_err(|source| ChallengerError::Descendant { index: i, source })?;
    let label = format!("{}@{}", child.name, child.version);
    let added = reg.add_parsed(child, bytes, &format!("descendant {i} ({label})"), Path::new(&label))?;
    Ok(Made { package: added.digest, label, model: Digest::of(bytes), parameters, risk })
}

/// One evaluation; an identical record already stored (the no-op measuring exactly what the champion did, on a
/// clock that did not move) is the same measurement, so its id stands.
fn evaluate_once(
    reg: &Registry,
    clock: &Arc<dyn Clock>,
    package: &Digest,
    suite: &Digest,
) -> Result<(Digest, BTreeMap<String, f64>), ChallengerError> {
    match evaluate::run(reg, clock, package, suite) {
        Ok(done) => Ok((done.id, done.record.metrics)),
        Err(EvalError::Registry(RegistryError::RecordExists(id))) => {
            let (_, r) = reg
                .evaluations(package)?
                .into_iter()
                .find(|(d, _)| *d == id)
                .ok_or_else(|| RegistryError::Corrupt { key: id.to_hex(), problem: "record vanished".into() })?;
            Ok((id, r.metrics))
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the external operator once: `COMMAND… INPUT OUTPUT` in a scratch directory under the data directory,
/// killed after `timeout`; returns the model it wrote (bounded by the hub's model size limit).
fn external(
    reg: &Registry,
    clock: &Arc<dyn Clock>,
    command: &str,
    input: &[u8],
    i: u32,
    at: UnixSeconds,
    timeout: Duration,
) -> Result<Vec<u8>, ChallengerError> {
    let fail = |problem: String| ChallengerError::External { command: command.to_owned(), index: i, problem };
    let dir = reg.dir().join("challenger").join(format!("{at}-{i}"));
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| ChallengerError::Io { op, path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    let (in_path, out_path) = (dir.join("input.onnx"), dir.join("output.onnx"));
    std::fs::write(&in_path, input).map_err(io("write", &in_path))?;
    let _ = std::fs::remove_file(&out_path);
    let mut words = command.split_whitespace();
    let program = words.next().ok_or_else(|| fail("empty command".into()))?;
    let mut child = Command::new(program)
        .args(words)
        .arg(&in_path)
        .arg(&out_path)
        .env("OUTPOST_CANDIDATE_INDEX", i.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let start = clock.monotonic();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| fail(e.to_string()))? {
            break status;
        }
        if clock.monotonic().saturating_sub(start) > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("did not finish within {} s; killed", timeout.as_secs())));
        }
        std::thread::sleep(EXTERNAL_POLL);
    };
    if !status.success() {
        return Err(fail(format!("exited with {status}")));
    }
    let limit = reg.config().limits.max_model_bytes;
    let len = std::fs::metadata(&out_path).map_err(|e| fail(format!("wrote no {}: {e}", out_path.display())))?.len();
    if len > limit {
        return Err(fail(format!("its output is {len} bytes, over limits.max_model_bytes {limit}")));
    }
    let bytes = std::fs::read(&out_path).map_err(io("read", &out_path))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bytes)
}
