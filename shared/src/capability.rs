//! Capabilities: the boundary a family of packages lives in — request contract, data classification, baseline,
//! risk tier, operational budget and the four named owners — and the pure rules packages are judged by against it.
//!
//! Invariants: a capability's contract uses the manifest's own [`Contract`] type, and [`contract_fits`] is the one
//! definition of "a package meets it" (the hub refuses at `package add` and `release publish` with its typed error).

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::config::{self, ConfigError};
use crate::manifest::{
    Baseline, Contract, DataClassification, Dim, Manifest, RiskTier, TensorSpec, validate_capability_name,
    validate_specs,
};

/// Largest capability TOML accepted, in bytes (a capability holds no tensors, only their specs).
pub const MAX_CAPABILITY_TOML_BYTES: usize = 256 * 1024;
/// Longest owner entry (a name, a team, an address), in bytes.
pub const MAX_OWNER_LEN: usize = 256;

/// A capability as registered: what every package of it must meet and who answers for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capability {
    /// Dotted identifier packages name in their manifest's `capability` (`ocr.text-direction`).
    pub name: String,
    /// One line for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The request contract: the tensors every package of the capability takes and gives.
    pub contract: Contract,
    /// The most sensitive class of data requests may carry; a package must be cleared for at least this class.
    pub data_classification: DataClassification,
    /// The least review a release of this capability gets; a package may declare a higher tier, never a lower one.
    pub risk_tier: RiskTier,
    /// What the capability is measured against (the manifest's baseline type).
    pub baseline: Baseline,
    /// What a package may cost to run.
    pub budget: Budget,
    /// Who answers for the capability; all four must be named before anything of it is published.
    #[serde(default)]
    pub owners: Owners,
}

/// The operational budget: latency on a stated machine, memory and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// 95th-percentile latency of one request, in milliseconds, on `cpu` with `threads` threads.
    pub p95_latency_ms: f64,
    /// The CPU the latency is stated for (as `/proc/cpuinfo`'s `model name` says it).
    pub cpu: String,
    /// Inference threads the latency is stated for.
    pub threads: u32,
    /// Peak resident memory of the model while it runs, in bytes.
    pub peak_memory_bytes: u64,
    /// Largest package file, in bytes.
    pub package_size_bytes: u64,
}

/// The four people (or teams) a capability names. Absent means not named yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// Owns the model: training, lineage, the package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Owns the evaluation suite and what it measures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<String>,
    /// Owns the security review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// Owns the capability in production (rollouts, rollback, on-call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<String>,
}

/// One of the four owner roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerRole {
    /// `owners.model`.
    Model,
    /// `owners.evaluation`.
    Evaluation,
    /// `owners.security`.
    Security,
    /// `owners.production`.
    Production,
}

impl fmt::Display for OwnerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OwnerRole::Model => "model",
            OwnerRole::Evaluation => "evaluation",
            OwnerRole::Security => "security",
            OwnerRole::Production => "production",
        })
    }
}

impl Owners {
    /// Each role and its owner, in a fixed order.
    pub fn roles(&self) -> [(OwnerRole, Option<&str>); 4] {
        [
            (OwnerRole::Model, self.model.as_deref()),
            (OwnerRole::Evaluation, self.evaluation.as_deref()),
            (OwnerRole::Security, self.security.as_deref()),
            (OwnerRole::Production, self.production.as_deref()),
        ]
    }

    /// The roles nobody is named for.
    pub fn missing(&self) -> Vec<OwnerRole> {
        self.roles().into_iter().filter(|(_, o)| o.is_none()).map(|(r, _)| r).collect()
    }
}

/// A capability that cannot publish yet: owners are missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "capability `{capability}` has no {} owner{}: name them in its TOML (`[owners]`) and `outpost-hub capability add` it again",
    missing.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    if missing.len() == 1 { "" } else { "s" }
)]
pub struct MissingOwners {
    /// The capability.
    pub capability: String,
    /// The roles nobody is named for, in the order model, evaluation, security, production.
    pub missing: Vec<OwnerRole>,
}

/// Which side of a contract a tensor is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `contract.inputs`.
    Inputs,
    /// `contract.outputs`.
    Outputs,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Inputs => "inputs",
            Side::Outputs => "outputs",
        })
    }
}

/// The first way a package's contract fails its capability's. Names are the capability's tensor names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractMismatch {
    /// The capability's tensor is not in the package's contract.
    #[error("contract.{side}: the capability's `{name}` is missing from the package")]
    Missing {
        /// Inputs or outputs.
        side: Side,
        /// The tensor's name.
        name: String,
    },
    /// The package has a tensor the capability does not: a request could not supply it (input), or a client
    /// would get what the contract does not promise (output).
    #[error("contract.{side}: the package's `{name}` is not in the capability's contract")]
    Extra {
        /// Inputs or outputs.
        side: Side,
        /// The tensor's name.
        name: String,
    },
    /// Element types differ.
    #[error("contract.{side}.`{name}`: element type is {package}, the capability's is {capability}")]
    ElementType {
        /// Inputs or outputs.
        side: Side,
        /// The tensor's name.
        name: String,
        /// The capability's type.
        capability: crate::manifest::ElementType,
        /// The package's type.
        package: crate::manifest::ElementType,
    },
    /// Ranks differ.
    #[error("contract.{side}.`{name}`: rank is {package}, the capability's is {capability}")]
    Rank {
        /// Inputs or outputs.
        side: Side,
        /// The tensor's name.
        name: String,
        /// The capability's rank.
        capability: usize,
        /// The package's rank.
        package: usize,
    },
    /// A dimension the capability allows is one the package does not accept (input), or the package may give a
    /// size the capability does not promise (output).
    #[error("contract.{side}.`{name}`.shape[{axis}]: the package has {package}, the capability has {capability}")]
    Dimension {
        /// Inputs or outputs.
        side: Side,
        /// The tensor's name.
        name: String,
        /// The axis.
        axis: usize,
        /// The capability's dimension, as written.
        capability: String,
        /// The package's dimension, as written.
        package: String,
    },
    /// The package ties two input dimensions together (one symbol) that the capability lets differ.
    #[error(
        "contract.inputs.`{name}`.shape[{axis}]: the package's symbol `{symbol}` is bound to both {first} and \
         {second} by the capability's contract"
    )]
    SymbolConflict {
        /// The input where the conflict shows.
        name: String,
        /// The axis.
        axis: usize,
        /// The package's symbol.
        symbol: String,
        /// What the capability puts there first.
        first: String,
        /// What it puts there here.
        second: String,
    },
}

/// Why a package does not belong to a capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    /// The package names another capability.
    #[error("the package's capability is `{package}`, not `{capability}`")]
    OtherCapability {
        /// The capability judged against.
        capability: String,
        /// The manifest's.
        package: String,
    },
    /// The contract does not fit.
    #[error("{0}")]
    Contract(#[from] ContractMismatch),
    /// The package is cleared for less sensitive data than the capability's requests carry.
    #[error(
        "data_classification: the package is cleared for {package} data, the capability's requests carry {capability}"
    )]
    DataClassification {
        /// The capability's class.
        capability: DataClassification,
        /// The package's class.
        package: DataClassification,
    },
    /// The package declares less review than the capability requires.
    #[error("risk_tier: the package declares {package}, below the capability's {capability}")]
    RiskTier {
        /// The capability's tier.
        capability: RiskTier,
        /// The package's tier.
        package: RiskTier,
    },
}

impl Capability {
    /// Parses and validates a capability TOML; `path` names the file in errors, which name the dotted field.
    pub fn from_toml(text: &str, path: &Path) -> Result<Capability, ConfigError> {
        config::parse_validated(text, path, MAX_CAPABILITY_TOML_BYTES, Capability::validate)
    }

    /// Decodes a stored capability (canonical CBOR) and validates it.
    pub fn from_cbor(bytes: &[u8]) -> Result<Capability, String> {
        let cap: Capability = canonical::from_slice(bytes).map_err(|e| e.to_string())?;
        cap.validate().map_err(|(key, problem)| format!("field `{key}`: {problem}"))?;
        Ok(cap)
    }

    /// The capability as canonical CBOR, the form the registry stores.
    pub fn to_cbor(&self) -> Vec<u8> {
        // Strings, numbers, sequences and string-keyed maps only: encoding cannot fail.
        canonical::to_vec(self).unwrap_or_default()
    }

    /// Checks what types cannot say. Returns the dotted field at fault and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, p: String| Err((f.to_owned(), p));
        // The same identifier rule as a manifest's `capability`, so every registered name can be named by one.
        validate_capability_name(&self.name).or_else(|p| fail("name", p))?;
        for (side, specs) in [("inputs", &self.contract.inputs), ("outputs", &self.contract.outputs)] {
            validate_specs(side, specs)?;
        }
        let b = &self.budget;
        if !(b.p95_latency_ms.is_finite() && b.p95_latency_ms > 0.0) {
            return fail("budget.p95_latency_ms", "must be a finite number of milliseconds above 0".into());
        }
        if b.cpu.trim().is_empty() {
            return fail("budget.cpu", "must name the CPU the latency is stated for".into());
        }
        if b.threads == 0 {
            return fail("budget.threads", "must be at least 1".into());
        }
        if b.peak_memory_bytes == 0 {
            return fail("budget.peak_memory_bytes", "must be greater than zero".into());
        }
        if b.package_size_bytes == 0 {
            return fail("budget.package_size_bytes", "must be greater than zero".into());
        }
        if self.baseline.name.trim().is_empty() {
            return fail("baseline.name", "must say what the capability is measured against".into());
        }
        if let Some((k, _)) = self.baseline.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return fail(&format!("baseline.metrics.{k}"), "must be a finite number".into());
        }
        for (role, owner) in self.owners.roles() {
            match owner {
                Some(o) if o.trim().is_empty() || o.len() > MAX_OWNER_LEN => {
                    return fail(
                        &format!("owners.{role}"),
                        format!("must be 1–{MAX_OWNER_LEN} bytes (leave it out while nobody is named)"),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether anything of this capability may be published: all four owners named.
    pub fn check_publishable(&self) -> Result<(), MissingOwners> {
        let missing = self.owners.missing();
        if missing.is_empty() {
            return Ok(());
        }
        Err(MissingOwners { capability: self.name.clone(), missing })
    }

    /// Whether the package with manifest `m` belongs to this capability: same capability name, a contract that
    /// fits ([`contract_fits`]), cleared for at least the capability's data class, and at least its risk tier.
    pub fn admits(&self, m: &Manifest) -> Result<(), Unfit> {
        if m.capability != self.name {
            return Err(Unfit::OtherCapability { capability: self.name.clone(), package: m.capability.clone() });
        }
        contract_fits(&self.contract, &m.contract)?;
        if m.data_classification < self.data_classification {
            return Err(Unfit::DataClassification {
                capability: self.data_classification,
                package: m.data_classification,
            });
        }
        if m.risk_tier < self.risk_tier {
            return Err(Unfit::RiskTier { capability: self.risk_tier, package: m.risk_tier });
        }
        Ok(())
    }
}

/// Whether a package's contract meets its capability's, or the first mismatch.
///
/// Both sides must name the same tensors (any order) with the same element types and ranks. An input must accept
/// every request the capability allows: a fixed capability dimension needs the same size or a symbol in the
/// package, a symbolic one needs a symbol, and one package symbol may not stand for two things the capability
/// lets differ. An output must only give what the capability promises: a fixed capability dimension needs the
/// same size, or a package symbol the inputs bind to that size; a symbolic capability dimension takes anything.
pub fn contract_fits(capability: &Contract, package: &Contract) -> Result<(), ContractMismatch> {
    let inputs = pair_up(Side::Inputs, &capability.inputs, &package.inputs)?;
    // What each package symbol stands for, as the capability's inputs bind it.
    let mut bound: Vec<(&str, &Dim)> = Vec::new();
    for &(c, p) in &inputs {
        let (cs, ps) = (&capability.inputs[c], &package.inputs[p]);
        same_type_and_rank(Side::Inputs, cs, ps)?;
        for (axis, (cd, pd)) in cs.shape.iter().zip(&ps.shape).enumerate() {
            let ok = match (cd, pd) {
                (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
                (_, Dim::Symbol(sym)) => {
                    match bound.iter().find(|(s, _)| *s == sym.as_str()) {
                        Some((_, first)) if *first != cd => {
                            return Err(ContractMismatch::SymbolConflict {
                                name: cs.name.clone(),
                                axis,
                                symbol: sym.clone(),
                                first: first.to_string(),
                                second: cd.to_string(),
                            });
                        }
                        Some(_) => {}
                        None => bound.push((sym, cd)),
                    }
                    true
                }
                (Dim::Symbol(_), Dim::Fixed(_)) => false,
            };
            if !ok {
                return Err(dimension(Side::Inputs, cs, axis, cd, pd));
            }
        }
    }
    for (c, p) in pair_up(Side::Outputs, &capability.outputs, &package.outputs)? {
        let (cs, ps) = (&capability.outputs[c], &package.outputs[p]);
        same_type_and_rank(Side::Outputs, cs, ps)?;
        for (axis, (cd, pd)) in cs.shape.iter().zip(&ps.shape).enumerate() {
            let ok = match (cd, pd) {
                (Dim::Symbol(_), _) => true,
                (Dim::Fixed(a), Dim::Fixed(b)) => a == b,
                (Dim::Fixed(_), Dim::Symbol(sym)) => bound.iter().any(|(s, d)| *s == sym.as_str() && *d == cd),
            };
            if !ok {
                return Err(dimension(Side::Outputs, cs, axis, cd, pd));
            }
        }
    }
    Ok(())
}

/// Matches tensors by name: (capability index, package index) for each of the capability's tensors.
fn pair_up(side: Side, cap: &[TensorSpec], pkg: &[TensorSpec]) -> Result<Vec<(usize, usize)>, ContractMismatch> {
    let mut out = Vec::with_capacity(cap.len());
    for (c, cs) in cap.iter().enumerate() {
        match pkg.iter().position(|ps| ps.name == cs.name) {
            Some(p) => out.push((c, p)),
            None => return Err(ContractMismatch::Missing { side, name: cs.name.clone() }),
        }
    }
    if let Some(extra) = pkg.iter().find(|ps| !cap.iter().any(|cs| cs.name == ps.name)) {
        return Err(ContractMismatch::Extra { side, name: extra.name.clone() });
    }
    Ok(out)
}

fn same_type_and_rank(side: Side, cs: &TensorSpec, ps: &TensorSpec) -> Result<(), ContractMismatch> {
    if cs.dtype != ps.dtype {
        return Err(ContractMismatch::ElementType {
            side,
            name: cs.name.clone(),
            capability: cs.dtype,
            package: ps.dtype,
        });
    }
    if cs.shape.len() != ps.shape.len() {
        return Err(ContractMismatch::Rank {
            side,
            name: cs.name.clone(),
            capability: cs.shape.len(),
            package: ps.shape.len(),
        });
    }
    Ok(())
}

fn dimension(side: Side, cs: &TensorSpec, axis: usize, cd: &Dim, pd: &Dim) -> ContractMismatch {
    ContractMismatch::Dimension {
        side,
        name: cs.name.clone(),
        axis,
        capability: cd.to_string(),
        package: pd.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ElementType;

    fn spec(name: &str, dtype: ElementType, shape: &[&str]) -> TensorSpec {
        let shape = shape.iter().map(|d| d.parse().map_or_else(|_| Dim::Symbol((*d).into()), Dim::Fixed)).collect();
        TensorSpec::new(name, dtype, shape)
    }

    fn contract(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> Contract {
        Contract { inputs, outputs }
    }

    /// The text-direction capability's contract: `x[N,3,48,192]` → `y[N,2]`.
    fn ocr() -> Contract {
        contract(
            vec![spec("x", ElementType::F32, &["N", "3", "48", "192"])],
            vec![spec("y", ElementType::F32, &["N", "2"])],
        )
    }

    const CAPABILITY: &str = include_str!("../../fixtures/capabilities/ocr-text-direction.toml");

    fn fixture() -> Capability {
        Capability::from_toml(CAPABILITY, Path::new("ocr-text-direction.toml")).unwrap()
    }

    #[test]
    fn a_package_more_general_than_its_capability_fits() {
        // Symbolic H and W accept the capability's fixed 48×192; the output's N is bound through the input.
        let pkg = contract(
            vec![spec("x", ElementType::F32, &["B", "3", "H", "W"])],
            vec![spec("y", ElementType::F32, &["B", "2"])],
        );
        assert_eq!(contract_fits(&ocr(), &pkg), Ok(()));
        assert_eq!(contract_fits(&ocr(), &ocr()), Ok(()));
    }

    #[test]
    fn a_package_narrower_than_the_request_contract_is_refused_at_the_first_mismatch() {
        // Fixing the batch to 1 refuses requests the capability allows.
        let pkg = contract(
            vec![spec("x", ElementType::F32, &["1", "3", "48", "192"])],
            vec![spec("y", ElementType::F32, &["1", "2"])],
        );
        assert_eq!(
            contract_fits(&ocr(), &pkg),
            Err(ContractMismatch::Dimension {
                side: Side::Inputs,
                name: "x".into(),
                axis: 0,
                capability: "N".into(),
                package: "1".into()
            })
        );
    }

    #[test]
    fn names_types_ranks_and_output_sizes_must_match() {
        let renamed = contract(vec![spec("image", ElementType::F32, &["N", "3", "48", "192"])], ocr().outputs);
        assert_eq!(
            contract_fits(&ocr(), &renamed),
            Err(ContractMismatch::Missing { side: Side::Inputs, name: "x".into() })
        );
        let extra = contract(ocr().inputs, vec![ocr().outputs[0].clone(), spec("z", ElementType::F32, &["N"])]);
        assert_eq!(
            contract_fits(&ocr(), &extra),
            Err(ContractMismatch::Extra { side: Side::Outputs, name: "z".into() })
        );
        let f64_in = contract(vec![spec("x", ElementType::F64, &["N", "3", "48", "192"])], ocr().outputs);
        assert!(matches!(contract_fits(&ocr(), &f64_in), Err(ContractMismatch::ElementType { .. })));
        let rank3 = contract(vec![spec("x", ElementType::F32, &["N", "3", "9216"])], ocr().outputs);
        assert!(matches!(contract_fits(&ocr(), &rank3), Err(ContractMismatch::Rank { capability: 4, package: 3, .. })));
        // Three classes where the capability promises two.
        let wide = contract(ocr().inputs, vec![spec("y", ElementType::F32, &["N", "3"])]);
        assert!(matches!(
            contract_fits(&ocr(), &wide),
            Err(ContractMismatch::Dimension { side: Side::Outputs, axis: 1, .. })
        ));
        // An output size the inputs do not pin is not one the capability can promise.
        let free = contract(ocr().inputs, vec![spec("y", ElementType::F32, &["N", "K"])]);
        assert!(matches!(contract_fits(&ocr(), &free), Err(ContractMismatch::Dimension { axis: 1, .. })));
    }

    #[test]
    fn one_package_symbol_cannot_tie_what_the_capability_lets_differ() {
        let cap = contract(
            vec![spec("a", ElementType::F32, &["N"]), spec("b", ElementType::F32, &["M"])],
            vec![spec("y", ElementType::F32, &["N"])],
        );
        let pkg = contract(
            vec![spec("a", ElementType::F32, &["N"]), spec("b", ElementType::F32, &["N"])],
            vec![spec("y", ElementType::F32, &["N"])],
        );
        assert!(
            matches!(contract_fits(&cap, &pkg), Err(ContractMismatch::SymbolConflict { symbol, .. }) if symbol == "N")
        );
    }

    #[test]
    fn admits_checks_name_contract_data_class_and_risk_tier() {
        let cap = fixture();
        let mut m = crate::testkit::AffineManifest::new("d", "1.0.0", 1.0, 0.0).manifest();
        assert!(matches!(cap.admits(&m), Err(Unfit::OtherCapability { .. })));
        m.capability = cap.name.clone();
        assert!(matches!(cap.admits(&m), Err(Unfit::Contract(ContractMismatch::Rank { .. }))));
        m.contract = cap.contract.clone();
        assert_eq!(cap.admits(&m), Ok(()));
        m.data_classification = DataClassification::Public;
        assert_eq!(
            cap.admits(&m),
            Err(Unfit::DataClassification {
                capability: DataClassification::Internal,
                package: DataClassification::Public
            })
        );
        m.data_classification = DataClassification::Restricted;
        let mut high = cap.clone();
        high.risk_tier = RiskTier::High;
        assert_eq!(high.admits(&m), Err(Unfit::RiskTier { capability: RiskTier::High, package: RiskTier::Low }));
    }

    #[test]
    fn a_capability_without_its_four_owners_is_not_publishable() {
        let mut cap = fixture();
        assert_eq!(cap.check_publishable(), Ok(()));
        cap.owners.security = None;
        cap.owners.model = None;
        let err = cap.check_publishable().unwrap_err();
        assert_eq!(err.missing, vec![OwnerRole::Model, OwnerRole::Security]);
        assert!(err.to_string().contains("no model, security owners"), "{err}");
    }

    #[test]
    fn capability_toml_errors_name_the_field() {
        let at = |text: &str| match Capability::from_toml(text, Path::new("cap.toml")) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(&CAPABILITY.replace("threads = 1", "threads = \"one\"")), "budget.threads");
        assert_eq!(at(&CAPABILITY.replace("threads = 1", "threads = 0")), "budget.threads");
        assert_eq!(at(&CAPABILITY.replace("production = ", "producton = ")), "owners.producton");
        assert_eq!(at(&CAPABILITY.replace("shape = [\"N\", 2]", "shape = [\"\", 2]")), "contract.outputs[0].shape[0]");
        assert_eq!(at(&CAPABILITY.replace("model = \"ocr-models@example.invalid\"", "model = \" \"")), "owners.model");
        assert_eq!(at(&"#".repeat(MAX_CAPABILITY_TOML_BYTES + 1)), "(document)");
    }

    #[test]
    fn capabilities_round_trip_through_canonical_cbor() {
        let cap = fixture();
        assert_eq!(Capability::from_cbor(&cap.to_cbor()), Ok(cap));
    }
}
