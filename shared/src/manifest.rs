//! The package manifest: what a package claims about its payload (an ONNX model, or a firmware image for the
//! microcontrollers behind a gateway), written by authors as TOML beside it.
//!
//! Parsing is strict (unknown keys are errors) and every error names the file, the field and, where known, the
//! line. Inside a package the manifest is deterministic CBOR (see [`crate::canonical`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::digest::Digest;

/// Largest TOML manifest accepted, in bytes (smoke-test tensors live inline, so this is generous).
pub const MAX_MANIFEST_TOML_BYTES: usize = 16 * 1024 * 1024;
/// Most inputs or outputs a contract may declare.
pub const MAX_CONTRACT_TENSORS: usize = 256;
/// Highest tensor rank a contract or smoke test may declare.
pub const MAX_RANK: usize = 16;
/// Most elements one smoke-test tensor may hold.
pub const MAX_SMOKE_ELEMENTS: usize = 1 << 22;
/// Longest firmware hardware id, in bytes (what a secondary's compact manifest can carry).
pub const MAX_HARDWARE_ID_LEN: usize = 32;

/// Everything a package says about its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// What the package carries. Absent means `model`, so model manifests (and their digests) are unchanged.
    #[serde(default, skip_serializing_if = "PackageKind::is_model")]
    pub kind: PackageKind,
    /// Package name: lowercase letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// Semantic version of this package.
    pub version: semver::Version,
    /// What the model does, as a dotted identifier (`audio.vad`, `ocr.text-direction`). Site policy matches on it.
    pub capability: String,
    /// How much review a release needs.
    pub risk_tier: RiskTier,
    /// The most sensitive class of data the model is meant to see.
    pub data_classification: DataClassification,
    /// SPDX licence expression of the model weights.
    pub license: String,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What it takes to run the model.
    pub runtime: Runtime,
    /// The tensors the model takes and gives. Required for a model; a firmware package has none.
    #[serde(default, skip_serializing_if = "Contract::is_empty")]
    pub contract: Contract,
    /// Where the model came from.
    pub lineage: Lineage,
    /// How the model was evaluated and what was decided.
    pub evaluation: EvaluationCard,
    /// Who built it, from what, when.
    pub provenance: Provenance,
    /// A known input and its expected output, run before a model is accepted or activated. Required for a model;
    /// a firmware package has none (its secondary verifies the image hash and confirms after a trial boot).
    #[serde(default, skip_serializing_if = "SmokeTest::is_empty")]
    pub smoke_test: SmokeTest,
    /// The target hardware and anti-rollback counter of a firmware image; present exactly when `kind` is
    /// `firmware`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
}

/// What a package carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    /// An ONNX model the agent loads with tract (checked against the contract and smoke test on add).
    #[default]
    Model,
    /// A firmware image the agent never loads: a gateway agent hands it to a secondary microcontroller.
    Firmware,
    /// Routing rules (`crate::route::Router` as canonical CBOR): which capability answers which requests of a
    /// route. Versioned, signed, rolled out and rolled back on its own line, apart from the models it names.
    Router,
}

impl PackageKind {
    /// Whether this is the default kind (kept out of the encoded manifest so model digests never change).
    pub fn is_model(&self) -> bool {
        *self == PackageKind::Model
    }
}

/// The firmware-specific part of a firmware package's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// Hardware model the image is built for: 1–[`MAX_HARDWARE_ID_LEN`] of a-z, A-Z, 0-9, `-`, `_`, `.`.
    /// The director only assigns it to secondaries with this hardware id, and the secondary checks it again.
    pub hardware_id: String,
    /// Anti-rollback counter: a secondary refuses an image whose counter is below the one it has confirmed.
    pub release_counter: u64,
}

/// Review level of a release; high risk needs two independent signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RiskTier {
    /// Routine retrain or re-quantisation.
    Low,
    /// Behaviour changes within the same capability.
    Medium,
    /// New permissions, code, data class or policy semantics.
    High,
}

/// Data classification, from least to most sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataClassification {
    /// Public data.
    Public,
    /// Internal data.
    Internal,
    /// Confidential data.
    Confidential,
    /// Restricted data (personal, regulated).
    Restricted,
}

/// `Display` as the lowercase word used in manifests.
macro_rules! display_as_serde_name {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $name),+ })
            }
        }
    };
}

display_as_serde_name!(PackageKind { Model => "model", Firmware => "firmware", Router => "router" });
display_as_serde_name!(RiskTier { Low => "low", Medium => "medium", High => "high" });
display_as_serde_name!(DataClassification {
    Public => "public",
    Internal => "internal",
    Confidential => "confidential",
    Restricted => "restricted",
});
display_as_serde_name!(DecisionOutcome { Accepted => "accepted", Rejected => "rejected" });
display_as_serde_name!(ElementType { F32 => "f32", F64 => "f64", I8 => "i8", U8 => "u8", I32 => "i32", I64 => "i64", Bool => "bool" });
display_as_serde_name!(LineageOperator {
    None => "none",
    FineTune => "fine-tune",
    Quantize => "quantize",
    Distill => "distill",
    Prune => "prune",
    Merge => "merge",
    Convert => "convert",
});

/// Runtime needs of the model on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Oldest agent version that can run this package.
    pub min_agent_version: semver::Version,
    /// Memory the model may use while running, in bytes.
    pub memory_budget_bytes: u64,
}

/// The input/output contract of the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Model inputs, in the model's order.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs, in the model's order.
    pub outputs: Vec<TensorSpec>,
}

impl Contract {
    /// No tensors at all (a firmware package, or a model manifest missing its `[contract]`).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.outputs.is_empty()
    }
}

/// One named tensor of the contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The tensor's name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub dtype: ElementType,
    /// Dimensions: a number is fixed, a string is symbolic (`"batch"`).
    pub shape: Vec<Dim>,
    /// An input that may hold NaN or infinities (a model that reads NaN as "missing", say). Absent means
    /// `false`, and the key is left out of the encoded manifest, so older manifests (and their digests) are
    /// unchanged. By default a non-finite input is refused as the caller's fault; with this set it is served, and
    /// a non-finite output on such a request is the input's doing, never counted as the model's failure. Only for
    /// inputs: an output never declares it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_finite: bool,
}

impl TensorSpec {
    /// A spec with finite values only (the default contract).
    pub fn new(name: impl Into<String>, dtype: ElementType, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape, allow_non_finite: false }
    }
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(u64),
    /// A symbolic size, bound at run time.
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// Tensor element types Outpost accepts in contracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 8-bit signed integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// Boolean.
    Bool,
}

impl ElementType {
    /// The ONNX `TensorProto.DataType` code of this type.
    pub fn onnx_code(self) -> i32 {
        match self {
            ElementType::F32 => 1,
            ElementType::U8 => 2,
            ElementType::I8 => 3,
            ElementType::I32 => 6,
            ElementType::I64 => 7,
            ElementType::Bool => 9,
            ElementType::F64 => 11,
        }
    }

    /// The type with ONNX code `code`, if Outpost supports it.
    pub fn from_onnx_code(code: i32) -> Option<Self> {
        [Self::F32, Self::U8, Self::I8, Self::I32, Self::I64, Self::Bool, Self::F64]
            .into_iter()
            .find(|t| t.onnx_code() == code)
    }
}

/// How this model was derived from others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// The operation that produced the model from its parents.
    pub operator: LineageOperator,
    /// Package digests of the parents; empty exactly when `operator` is `none`.
    #[serde(default)]
    pub parents: Vec<Digest>,
    /// The operator's parameters as the tool that made the package recorded them (`min_elements = "1024"`, the
    /// command line of an external operator, …); absent for most packages.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

/// The operation that made a model from its parent packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LineageOperator {
    /// A root: trained from scratch or imported.
    None,
    /// Further training of the parent.
    FineTune,
    /// Lower-precision weights.
    Quantize,
    /// Trained to imitate the parent(s).
    Distill,
    /// Weights or channels removed.
    Prune,
    /// Weights of several parents combined.
    Merge,
    /// Same model, different format or opset.
    Convert,
}

/// The evaluation card: what the model was measured on and what was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationCard {
    /// The evaluation suite.
    pub suite: Suite,
    /// Metric name → value on the suite.
    pub metrics: BTreeMap<String, f64>,
    /// What the metrics were compared against.
    pub baseline: Baseline,
    /// The decision recorded after evaluation.
    pub decision: Decision,
}

/// An evaluation suite, pinned by digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Suite name.
    pub name: String,
    /// SHA-256 of the suite's data and code.
    pub digest: Digest,
}

/// The reference the metrics were compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// What the baseline is (a model name, "previous release", a published figure).
    pub name: String,
    /// Package digest of the baseline, when it is a package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<Digest>,
    /// The baseline's metrics on the same suite.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// The recorded outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Accepted for release, or not.
    pub outcome: DecisionOutcome,
    /// Who decided.
    pub by: String,
    /// Why, in a sentence.
    pub reason: String,
}

/// Evaluation outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionOutcome {
    /// Fit for release.
    Accepted,
    /// Not fit for release (kept for lineage and audit).
    Rejected,
}

/// Who built the package, from what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Person or pipeline that built it.
    pub built_by: String,
    /// Source it was built from (repository URL, dataset, upstream package).
    pub source: String,
    /// Revision of the source (commit, tag, package version).
    pub revision: String,
    /// When it was built, RFC 3339 with offset (`2026-11-28T12:00:00Z`).
    pub built_at: String,
}

/// The package's smoke test: inputs, expected outputs, tolerance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    /// Largest absolute difference allowed between an expected and an actual output element.
    pub tolerance: f64,
    /// One tensor per model input.
    pub inputs: Vec<SmokeTensor>,
    /// Expected values of some or all outputs.
    pub expected: Vec<SmokeTensor>,
}

impl SmokeTest {
    /// No tensors and no tolerance (a firmware package, or a model manifest missing its `[smoke_test]`).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty() && self.expected.is_empty() && self.tolerance == 0.0
    }
}

/// A concrete tensor in a smoke test: either explicit values or a constant fill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTensor {
    /// Tensor name (a contract input or output).
    pub name: String,
    /// Concrete shape.
    pub shape: Vec<u64>,
    /// Row-major values; exactly one of `values` and `fill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<f64>>,
    /// A constant for every element; exactly one of `values` and `fill`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<f64>,
}

impl SmokeTensor {
    /// Number of elements the shape implies (saturating).
    pub fn element_count(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// The values, expanding a fill.
    pub fn materialize(&self) -> Vec<f64> {
        match (&self.values, self.fill) {
            (Some(v), _) => v.clone(),
            (None, Some(f)) => vec![f; self.element_count() as usize],
            (None, None) => Vec::new(),
        }
    }
}

/// A manifest that is not acceptable, with the file and field it concerns.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}{}: field `{field}`: {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ManifestError {
    /// The file the manifest came from (or `<package>` for a manifest inside a package).
    pub file: String,
    /// Dotted path of the field at fault (`contract.inputs[0].shape`); `(document)` for syntax errors.
    pub field: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, for a human.
    pub problem: String,
}

impl Manifest {
    /// Parses and validates a TOML manifest. `file` names the source in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Manifest, ManifestError> {
        let err = |field: String, line: Option<usize>, problem: String| ManifestError {
            file: file.to_owned(),
            field,
            line,
            problem,
        };
        if text.len() > MAX_MANIFEST_TOML_BYTES {
            return Err(err(
                "(document)".into(),
                None,
                format!("manifest is {} bytes, more than the limit of {MAX_MANIFEST_TOML_BYTES}", text.len()),
            ));
        }
        let line_of = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1)
        };
        let de = toml::Deserializer::parse(text)
            .map_err(|e| err("(document)".into(), line_of(e.span()), e.message().to_owned()))?;
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_owned();
            let field = field_from_message(&path, &message);
            err(field, line_of(inner.span()), message)
        })?;
        manifest.validate().map_err(|(field, problem)| err(field, None, problem))?;
        Ok(manifest)
    }

    /// Decodes a manifest from a package (deterministic CBOR) and validates it.
    pub fn from_cbor(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = canonical::from_slice_exact(bytes).map_err(|e| ManifestError {
            file: "<package>".into(),
            field: "(document)".into(),
            line: None,
            problem: e.to_string(),
        })?;
        m.validate().map_err(|(field, problem)| ManifestError {
            file: "<package>".into(),
            field,
            line: None,
            problem,
        })?;
        Ok(m)
    }

    /// The manifest as deterministic CBOR, the form that goes into packages.
    pub fn to_cbor(&self) -> Vec<u8> {
        // Every field is a string, number, bool, sequence or string-keyed map: encoding cannot fail.
        canonical::to_vec(self).unwrap_or_default()
    }

    /// Checks the rules that types alone cannot express. Returns the field at fault and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, p: String| Err((f.to_owned(), p));
        if !is_identifier(&self.name, false) {
            return fail("name", format!("`{}` must be 1–128 of a-z, 0-9, `-`, `_`, `.`", self.name));
        }
        validate_capability_name(&self.capability).or_else(|p| fail("capability", p))?;
        if self.license.trim().is_empty() {
            return fail("license", "must name an SPDX licence expression".into());
        }
        if self.runtime.memory_budget_bytes == 0 {
            return fail("runtime.memory_budget_bytes", "must be greater than zero".into());
        }
        self.validate_kind()?;
        let contract: &[(&str, &Vec<TensorSpec>)] = match self.kind {
            PackageKind::Model => &[("inputs", &self.contract.inputs), ("outputs", &self.contract.outputs)],
            PackageKind::Firmware | PackageKind::Router => &[],
        };
        for &(side, specs) in contract {
            validate_specs(side, specs)?;
        }
        match (self.lineage.operator, self.lineage.parents.is_empty()) {
            (LineageOperator::None, false) => {
                return fail("lineage.parents", "a root (`operator = \"none\"`) has no parents".into());
            }
            (op, true) if op != LineageOperator::None => {
                return fail("lineage.parents", format!("operator `{op}` needs at least one parent digest"));
            }
            _ => {}
        }
        for (k, v) in self.evaluation.metrics.iter().chain(&self.evaluation.baseline.metrics) {
            if !v.is_finite() {
                return fail(&format!("evaluation.metrics.{k}"), "must be a finite number".into());
            }
        }
        if !crate::clock::is_rfc3339(&self.provenance.built_at) {
            return fail(
                "provenance.built_at",
                format!("`{}` is not an RFC 3339 time with offset", self.provenance.built_at),
            );
        }
        match self.kind {
            PackageKind::Model => self.validate_smoke_test(),
            PackageKind::Firmware | PackageKind::Router => Ok(()),
        }
    }

    /// Model packages need a contract and a smoke test and no `[firmware]`; firmware packages the reverse.
    fn validate_kind(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, p: &str| Err((f.to_owned(), p.to_owned()));
        match (self.kind, &self.firmware) {
            (PackageKind::Model, Some(_)) => {
                fail("firmware", "only a `kind = \"firmware\"` package has a [firmware] table")
            }
            (PackageKind::Model, None) if self.contract.is_empty() => {
                fail("contract", "a model package needs a [contract] (inputs and outputs)")
            }
            (PackageKind::Model, None) if self.smoke_test.is_empty() => {
                fail("smoke_test", "a model package needs a [smoke_test]")
            }
            (PackageKind::Model, None) => Ok(()),
            (PackageKind::Router, Some(_)) => fail("firmware", "a router package has no [firmware] table"),
            (PackageKind::Router, None) if !self.contract.is_empty() => {
                fail("contract", "a router package has no tensor contract: each route states its own")
            }
            (PackageKind::Router, None) if !self.smoke_test.is_empty() => {
                fail("smoke_test", "a router package has no smoke test")
            }
            (PackageKind::Router, None) => Ok(()),
            (PackageKind::Firmware, None) => {
                fail("firmware", "a firmware package needs a [firmware] table (hardware_id, release_counter)")
            }
            (PackageKind::Firmware, Some(_)) if !self.contract.is_empty() => {
                fail("contract", "a firmware package has no tensor contract")
            }
            (PackageKind::Firmware, Some(_)) if !self.smoke_test.is_empty() => {
                fail("smoke_test", "a firmware package has no smoke test")
            }
            (PackageKind::Firmware, Some(fw)) => {
                if !is_secondary_id(&fw.hardware_id) {
                    return fail(
                        "firmware.hardware_id",
                        &format!("must be 1–{MAX_HARDWARE_ID_LEN} of a-z, A-Z, 0-9, `-`, `_`, `.`"),
                    );
                }
                Ok(())
            }
        }
    }

    fn validate_smoke_test(&self) -> Result<(), (String, String)> {
        let st = &self.smoke_test;
        if !(st.tolerance.is_finite() && st.tolerance >= 0.0) {
            return Err(("smoke_test.tolerance".into(), "must be a finite number ≥ 0".into()));
        }
        let check = |side: &str, tensors: &[SmokeTensor], specs: &[TensorSpec]| -> Result<(), (String, String)> {
            for (i, t) in tensors.iter().enumerate() {
                let at = format!("smoke_test.{side}[{i}]");
                let Some(spec) = specs.iter().find(|s| s.name == t.name) else {
                    return Err((format!("{at}.name"), format!("`{}` is not in the contract's {side}", t.name)));
                };
                if tensors[..i].iter().any(|o| o.name == t.name) {
                    return Err((format!("{at}.name"), format!("`{}` is given twice", t.name)));
                }
                if !shape_fits(&spec.shape, &t.shape) {
                    let declared: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
                    return Err((
                        format!("{at}.shape"),
                        format!("{:?} does not fit the contract shape [{}]", t.shape, declared.join(", ")),
                    ));
                }
                let n = t.element_count();
                if n > MAX_SMOKE_ELEMENTS as u64 {
                    return Err((format!("{at}.shape"), format!("{n} elements exceed {MAX_SMOKE_ELEMENTS}")));
                }
                match (&t.values, t.fill) {
                    (Some(v), None) if v.len() as u64 == n => {}
                    (Some(v), None) => {
                        return Err((format!("{at}.values"), format!("{} values for {n} elements", v.len())));
                    }
                    (None, Some(_)) => {}
                    _ => return Err((at, "give exactly one of `values` and `fill`".into())),
                }
                if t.materialize().iter().any(|x| !x.is_finite()) {
                    return Err((format!("{at}.values"), "must be finite numbers".into()));
                }
            }
            Ok(())
        };
        check("inputs", &st.inputs, &self.contract.inputs)?;
        check("expected", &st.expected, &self.contract.outputs)?;
        if let Some(missing) = self.contract.inputs.iter().find(|s| !st.inputs.iter().any(|t| t.name == s.name)) {
            return Err(("smoke_test.inputs".into(), format!("no tensor for contract input `{}`", missing.name)));
        }
        if st.expected.is_empty() {
            return Err(("smoke_test.expected".into(), "must check at least one output".into()));
        }
        Ok(())
    }
}

/// Checks one side of a contract (`inputs` or `outputs`): 1–[`MAX_CONTRACT_TENSORS`] uniquely named tensors of
/// rank at most [`MAX_RANK`], every symbolic dimension named. Returns the dotted field at fault and the problem.
pub fn validate_specs(side: &str, specs: &[TensorSpec]) -> Result<(), (String, String)> {
    if specs.is_empty() || specs.len() > MAX_CONTRACT_TENSORS {
        return Err((format!("contract.{side}"), format!("must list 1–{MAX_CONTRACT_TENSORS} tensors")));
    }
    for (i, t) in specs.iter().enumerate() {
        let at = format!("contract.{side}[{i}]");
        if t.name.is_empty() {
            return Err((format!("{at}.name"), "must not be empty".into()));
        }
        if specs[..i].iter().any(|o| o.name == t.name) {
            return Err((format!("{at}.name"), format!("`{}` is declared twice", t.name)));
        }
        if t.shape.len() > MAX_RANK {
            return Err((format!("{at}.shape"), format!("rank {} exceeds {MAX_RANK}", t.shape.len())));
        }
        if let Some(j) = t.shape.iter().position(|d| matches!(d, Dim::Symbol(s) if s.is_empty())) {
            return Err((format!("{at}.shape[{j}]"), "a symbolic dimension needs a name".into()));
        }
        if t.allow_non_finite && side == "outputs" {
            return Err((
                format!("{at}.allow_non_finite"),
                "only an input may allow non-finite values: a non-finite output is the model's failure".into(),
            ));
        }
        if t.allow_non_finite && !matches!(t.dtype, ElementType::F32 | ElementType::F64) {
            return Err((format!("{at}.allow_non_finite"), format!("{} values are always finite", t.dtype)));
        }
    }
    Ok(())
}

/// Checks a capability name (`ocr.text-direction`): a dotted lowercase identifier of at most 128 bytes.
pub fn validate_capability_name(name: &str) -> Result<(), String> {
    if is_identifier(name, true) { Ok(()) } else { Err(format!("`{name}` must be a dotted lowercase identifier")) }
}

/// Whether `s` can be a secondary's hardware id or device id: 1–[`MAX_HARDWARE_ID_LEN`] of a-z, A-Z, 0-9, `-`,
/// `_`, `.` (what a compact firmware manifest carries, printable so operators can type it).
pub fn is_secondary_id(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !s.is_empty() && s.len() <= MAX_HARDWARE_ID_LEN && s.chars().all(ok)
}

/// Whether a concrete shape fits a declared one (same rank, fixed dimensions equal).
pub fn shape_fits(declared: &[Dim], concrete: &[u64]) -> bool {
    declared.len() == concrete.len()
        && declared.iter().zip(concrete).all(|(d, &c)| match d {
            Dim::Fixed(n) => *n == c,
            Dim::Symbol(_) => true,
        })
}

fn is_identifier(s: &str, dotted: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    !s.is_empty()
        && s.len() <= 128
        && s.chars().all(ok_char)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && (!dotted || s.split('.').all(|p| !p.is_empty()))
}

/// serde reports a missing field on its parent; name the field itself.
fn field_from_message(path: &str, message: &str) -> String {
    // (An unknown field is already the last element of the path.)
    let named = message.strip_prefix("missing field `").and_then(|r| r.split('`').next());
    match (path, named) {
        (".", Some(f)) | ("", Some(f)) => f.to_owned(),
        (p, Some(f)) => format!("{p}.{f}"),
        (".", None) | ("", None) => "(document)".into(),
        (p, None) => p.to_owned(),
    }
}
