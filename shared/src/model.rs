//! Loading an ONNX model with tract, matching it against the manifest's contract, running its smoke test, and
//! running it on caller-supplied tensors ([`LoadedModel::run`]).
//!
//! Pure computation on bytes (no I/O): the hub runs it at `package add`, the agent before activation and to serve.
//! Every tract call is behind `guard`, so a panicking model becomes an error, not a crash; `run` checks names,
//! element types, ranks, fixed dimensions and element counts against the contract before tract sees a tensor.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as PbDim;
use tract_onnx::prelude::*;

use crate::manifest::{Dim, ElementType, Manifest, SmokeTensor, TensorSpec};
pub use crate::tensor::{NamedTensor, TensorData};

/// Most concrete plans a model keeps in [`Planning::PerShape`] (least recently used goes first). Each holds its
/// own copy of the weights, so this bounds memory at about this many times the model.
pub const MAX_SHAPE_PLANS: usize = 4;

/// In [`Planning::Symbolic`], a set of input shapes the symbolic plan has answered this many times (among the
/// [`RECENT_SHAPES`] last without a plan of their own) gets a concrete plan, built on a thread of its own.
pub const PLAN_RECURRING_AFTER: u32 = 3;

/// Sets of input shapes a symbolic model counts at once (least recently seen goes first).
pub const RECENT_SHAPES: usize = 16;

/// Which input shapes a load prepares for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShapeMode {
    /// The smoke test's concrete shapes only. What [`check`] and [`load`] use.
    #[default]
    SmokeTest,
    /// Every shape the contract allows. What a server wants; see [`Planning`] for how.
    Contract,
}

/// How a loaded model turns input shapes into tract plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planning {
    /// One plan, for the smoke test's shapes ([`ShapeMode::SmokeTest`]).
    SmokeShapes,
    /// One plan with the contract's symbolic dimensions left symbolic (one tract symbol per name, so `N` in two
    /// inputs must agree), bound per run; plus a concrete plan for the smoke test's shapes, which runs them
    /// (the contract lets the agent fix every dimension before optimising, and a fully concrete plan is
    /// faster: about 20% for silero-vad). The smoke test runs on both. Shapes that recur
    /// ([`PLAN_RECURRING_AFTER`]) get concrete plans too, up to [`MAX_SHAPE_PLANS`] with the smoke test's,
    /// built in the background: the symbolic plan answers until one is ready, so no request waits for planning.
    Symbolic,
    /// tract could not plan the symbolic model (a `Reshape` whose target is computed from the input's shape
    /// through an `int32` cast, as in the PP-OCR classifier, say): one concrete plan per distinct set of input
    /// shapes, built on first use and kept up to [`MAX_SHAPE_PLANS`]. The smoke test's plan is built at load.
    PerShape,
}

/// Where [`LoadedModel::profile`]'s runs spent their time.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProfile {
    /// Per operator, most expensive first.
    pub operators: Vec<OperatorTime>,
    /// Making and dropping a new tract run state, over every run: what a run of a plan that cannot reuse its
    /// states pays on top of its operators ([`LoadedModel::reuses_run_states`]).
    pub new_state: std::time::Duration,
    /// Whether this plan reuses its run states when serving.
    pub reuses_states: bool,
}

/// One operator's share of [`LoadedModel::profile`]'s runs.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorTime {
    /// tract's name for the operator, as `Conv` or `OptMatMul`.
    pub operator: String,
    /// How many nodes of the plan run it.
    pub nodes: usize,
    /// Time spent in those nodes over every run.
    pub total: std::time::Duration,
    /// The kernels tract runs these nodes on, where it names them (matrix products).
    pub kernels: Vec<String>,
}

/// Why a model was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// tract could not parse or load the model.
    #[error("model does not load in tract-onnx: {0}")]
    Load(String),
    /// The model's graph does not match the manifest's contract.
    #[error("model does not match the manifest: field `{field}`: {problem}")]
    Contract {
        /// Manifest field at fault.
        field: String,
        /// What differs.
        problem: String,
    },
    /// The smoke test could not run.
    #[error("smoke test failed to run: {0}")]
    SmokeRun(String),
    /// An output differs from the expected values by more than the tolerance.
    #[error(
        "smoke test output `{output}` is outside tolerance: element {index} is {actual}, expected {expected} \
         (|diff| {diff:.3e} > tolerance {tolerance:.3e})"
    )]
    SmokeMismatch {
        /// Output name.
        output: String,
        /// Flat index of the worst element.
        index: usize,
        /// Value produced.
        actual: f64,
        /// Value expected.
        expected: f64,
        /// Their absolute difference.
        diff: f64,
        /// The manifest's tolerance.
        tolerance: f64,
    },
    /// An output has a different shape than expected.
    #[error("smoke test output `{output}` has shape {actual:?}, expected {expected:?}")]
    SmokeShape {
        /// Output name.
        output: String,
        /// Shape produced.
        actual: Vec<usize>,
        /// Shape expected.
        expected: Vec<u64>,
    },
    /// The caller's tensors do not fit the contract: unknown, missing or repeated name, wrong element type, rank,
    /// dimension or element count. The caller's fault; the model never saw them.
    #[error("input `{input}`: {problem}")]
    BadInput {
        /// The input concerned.
        input: String,
        /// What is wrong, for a human.
        problem: String,
    },
    /// tract failed (or panicked) running tensors that fit the contract: the model's fault, not the caller's.
    #[error("inference failed: {0}")]
    Run(String),
    /// The model answered with NaN or infinity: a broken model, not an answer to serve (and a failure in the
    /// health window).
    #[error("output `{output}` element {index} is {value}: the model produced a non-finite value")]
    NonFinite {
        /// Output name.
        output: String,
        /// Flat index of the first non-finite element.
        index: usize,
        /// The value, as text (`NaN`, `inf`, `-inf`).
        value: String,
    },
}

/// Refuses a float output holding NaN or infinity.
fn check_finite(t: &NamedTensor) -> Result<(), ModelError> {
    match t.data.first_non_finite() {
        Some((index, value)) => Err(ModelError::NonFinite { output: t.name.clone(), index, value: value.to_string() }),
        None => Ok(()),
    }
}

/// What a passing smoke test measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SmokeReport {
    /// Per checked output: its name and the largest absolute difference seen.
    pub outputs: Vec<(String, f64)>,
}

/// A model loaded, matched against its contract, optimised for the shapes of its [`ShapeMode`], and ready to
/// run. `Send + Sync`: any number of threads may run it at once (each run has its own state).
pub struct LoadedModel {
    plans: Plans,
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// The contract's inputs, in the model's order, with the shapes `run` accepts (the smoke test's in
    /// [`ShapeMode::SmokeTest`]).
    inputs: Vec<TensorSpec>,
    /// The contract's outputs, in the model's order.
    outputs: Vec<TensorSpec>,
}

type Plan = Arc<Runner>;

/// Idle run states a [`Runner`] keeps at most: about as many as inferences run at once on a device.
const MAX_IDLE_STATES: usize = 4;

/// A runnable plan and, when none of its operators keeps anything from one run to the next, the run states it
/// made, kept for the next runs: a state holds its operators' scratch space, which a new state builds again.
/// A plan with a stateful operator (`Scan`, an LSTM's memory: whatever tract gives an inter-turn `OpState`) runs
/// every request on a new state, so no request ever sees what another one left.
struct Runner {
    plan: Arc<TypedRunnableModel>,
    /// `Some` for a stateless plan: its idle states, each left clean by a run that ended well (one that failed
    /// or panicked drops its state).
    idle: Option<Mutex<Vec<TypedSimpleState>>>,
}

impl Runner {
    fn new(plan: Arc<TypedRunnableModel>) -> TractResult<Runner> {
        // tract builds an `OpState` exactly for the nodes that keep something between turns.
        let first = plan.spawn()?;
        let idle = first.op_states.iter().all(Option::is_none).then(|| Mutex::new(vec![first]));
        Ok(Runner { plan, idle })
    }

    fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(idle) = &self.idle else { return self.plan.run(inputs) };
        let taken = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut state = match taken {
            Some(state) => state,
            None => self.plan.spawn()?,
        };
        let outputs = state.run(inputs)?;
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_STATES {
            idle.push(state);
        }
        Ok(outputs)
    }

    /// Whether runs reuse states (no operator of the plan keeps state between runs).
    fn reuses_states(&self) -> bool {
        self.idle.is_some()
    }
}

enum Plans {
    /// [`Planning::SmokeShapes`].
    One(Plan),
    /// [`Planning::Symbolic`]: the symbolic plan, and the concrete ones.
    Symbolic { plan: Plan, concrete: Arc<Concrete> },
    /// [`Planning::PerShape`]: the parsed model to plan from, and plans by input shapes, most recent first.
    PerShape { proto: Box<pb::ModelProto>, cache: Mutex<VecDeque<(Vec<Vec<usize>>, Plan)>> },
}

/// The concrete plans of a [`Planning::Symbolic`] model: the smoke test's, built at load, and those of the
/// shapes that recur, each built on a thread of its own while the symbolic plan answers.
struct Concrete {
    proto: pb::ModelProto,
    contract: Vec<TensorSpec>,
    smoke_shapes: Vec<Vec<usize>>,
    smoke_plan: Plan,
    state: Mutex<ConcreteState>,
}

#[derive(Default)]
struct ConcreteState {
    /// Plans beside the smoke test's, most recently used first: at most `MAX_SHAPE_PLANS - 1`.
    plans: VecDeque<(Vec<Vec<usize>>, Plan)>,
    /// Shapes without a plan and how often the symbolic plan answered them, most recent first.
    seen: VecDeque<(Vec<Vec<usize>>, u32)>,
    /// Shapes tract could not plan concretely: never tried again (the symbolic plan serves them).
    unplannable: VecDeque<Vec<Vec<usize>>>,
    /// A plan is being built (one at a time).
    planning: bool,
}

impl Concrete {
    fn state(&self) -> std::sync::MutexGuard<'_, ConcreteState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The concrete plan for `shapes` if there is one; otherwise counts them, and starts planning them when
    /// they recur.
    fn plan_for(self: &Arc<Self>, shapes: Vec<Vec<usize>>) -> Option<Plan> {
        if shapes == self.smoke_shapes {
            return Some(self.smoke_plan.clone());
        }
        let mut st = self.state();
        if let Some(plan) = most_recent(&mut st.plans, &shapes) {
            return Some(plan);
        }
        if st.unplannable.contains(&shapes) {
            return None;
        }
        let count = match st.seen.iter().position(|(s, _)| *s == shapes).and_then(|ix| st.seen.remove(ix)) {
            Some((_, n)) => n + 1,
            None => 1,
        };
        st.seen.push_front((shapes.clone(), count));
        st.seen.truncate(RECENT_SHAPES);
        if count >= PLAN_RECURRING_AFTER && !st.planning {
            st.planning = true;
            let this = Arc::clone(self);
            let started = std::thread::Builder::new().name("outpost-plan".into()).spawn(move || this.build(shapes));
            st.planning = started.is_ok();
        }
        None
    }

    /// Builds the plan for `shapes` and keeps it (or remembers that tract cannot build it).
    fn build(&self, shapes: Vec<Vec<usize>>) {
        let specs = fixed_specs(&self.contract, &shapes);
        let built =
            guard(ModelError::Load, || build_plan(&self.proto, &specs).map_err(|e| ModelError::Load(format!("{e:#}"))));
        let mut st = self.state();
        st.planning = false;
        st.seen.retain(|(s, _)| *s != shapes);
        match built {
            Ok(plan) => {
                st.plans.push_front((shapes, plan));
                st.plans.truncate(MAX_SHAPE_PLANS - 1);
            }
            Err(_) => {
                st.unplannable.push_front(shapes);
                st.unplannable.truncate(RECENT_SHAPES);
            }
        }
    }
}

/// The plan for `shapes` in a most-recently-used-first list, moved to the front.
fn most_recent(plans: &mut VecDeque<(Vec<Vec<usize>>, Plan)>, shapes: &[Vec<usize>]) -> Option<Plan> {
    let ix = plans.iter().position(|(s, _)| s == shapes)?;
    let entry = plans.remove(ix)?;
    let plan = entry.1.clone();
    plans.push_front(entry);
    Some(plan)
}

/// `contract` with every dimension fixed to `shapes` (model order).
fn fixed_specs(contract: &[TensorSpec], shapes: &[Vec<usize>]) -> Vec<TensorSpec> {
    contract
        .iter()
        .zip(shapes)
        .map(|(spec, shape)| TensorSpec {
            shape: shape.iter().map(|&d| Dim::Fixed(d as u64)).collect(),
            ..spec.clone()
        })
        .collect()
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("inputs", &self.input_names)
            .field("outputs", &self.output_names)
            .field("planning", &self.planning())
            .finish_non_exhaustive()
    }
}

/// Loads `model_bytes`, checks it against `manifest.contract`, and runs `manifest.smoke_test`.
pub fn check(model_bytes: &[u8], manifest: &Manifest) -> Result<SmokeReport, ModelError> {
    let loaded = load(model_bytes, manifest)?;
    loaded.smoke_test(manifest)
}

/// Loads the model, checks the contract, and optimises it for the smoke test's input shapes.
pub fn load(model_bytes: &[u8], manifest: &Manifest) -> Result<LoadedModel, ModelError> {
    load_with(model_bytes, manifest, ShapeMode::SmokeTest)
}

/// Loads the model for serving ([`ShapeMode::Contract`]): checks the contract and prepares for every shape it
/// allows, with one symbolic plan when tract can build one and per-shape plans otherwise. Run the smoke test on
/// the result before trusting it.
pub fn load_for_serving(model_bytes: &[u8], manifest: &Manifest) -> Result<LoadedModel, ModelError> {
    load_with(model_bytes, manifest, ShapeMode::Contract)
}

/// Loads the model, checks the contract, and optimises it for the shapes `mode` names.
pub fn load_with(model_bytes: &[u8], manifest: &Manifest, mode: ShapeMode) -> Result<LoadedModel, ModelError> {
    guard(ModelError::Load, || load_inner(model_bytes, manifest, mode))
}

impl LoadedModel {
    /// Runs the manifest's smoke test on this model.
    pub fn smoke_test(&self, manifest: &Manifest) -> Result<SmokeReport, ModelError> {
        guard(ModelError::Load, || self.smoke_inner(manifest))
    }

    /// Runs the model on `inputs` (one tensor per contract input, any order) and returns every output, in the
    /// model's order, with the contract's element type.
    ///
    /// Refuses with [`ModelError::BadInput`] before running anything when a name is unknown, missing or repeated,
    /// an element type differs from the contract's, the rank differs, a fixed dimension differs, a symbolic one
    /// is 0, one symbolic name is bound to two sizes, the data length is not the shape's product, or (in
    /// [`Planning::PerShape`]) tract cannot plan the shapes. A tract error or panic while running tensors that
    /// fit is [`ModelError::Run`].
    ///
    /// A non-finite output is [`ModelError::NonFinite`], the model's failure, unless an input whose contract
    /// allows non-finite values ([`TensorSpec::allow_non_finite`]) holds one: the output then answers what the
    /// caller asked, and is returned as it is ([`LoadedModel::non_finite_by_contract`] tells such a request).
    pub fn run(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, ModelError> {
        let ordered = self.check_inputs(inputs)?;
        let caller_non_finite = self.non_finite_by_contract(&ordered);
        let outputs = guard(ModelError::Run, || self.run_inner(ordered))?;
        if !caller_non_finite {
            outputs.iter().try_for_each(check_finite)?;
        }
        Ok(outputs)
    }

    /// Whether one of `inputs` holds a NaN or an infinity its contract allows: what such a request makes of the
    /// model's outputs is the caller's doing, not the model's.
    pub fn non_finite_by_contract(&self, inputs: &[NamedTensor]) -> bool {
        inputs.iter().any(|t| {
            self.inputs.iter().any(|s| s.name == t.name && s.allow_non_finite) && t.data.first_non_finite().is_some()
        })
    }

    /// How this model plans input shapes.
    pub fn planning(&self) -> Planning {
        match &self.plans {
            Plans::One(_) => Planning::SmokeShapes,
            Plans::Symbolic { .. } => Planning::Symbolic,
            Plans::PerShape { .. } => Planning::PerShape,
        }
    }

    /// Plans held now: 1; in [`Planning::Symbolic`] the symbolic one and up to [`MAX_SHAPE_PLANS`] concrete ones;
    /// in [`Planning::PerShape`] up to [`MAX_SHAPE_PLANS`].
    pub fn cached_plans(&self) -> usize {
        match &self.plans {
            Plans::One(_) => 1,
            Plans::Symbolic { concrete, .. } => 2 + concrete.state().plans.len(),
            Plans::PerShape { cache, .. } => cache.lock().unwrap_or_else(PoisonError::into_inner).len(),
        }
    }

    /// Where the time of a run goes: runs `inputs` `runs` times on the plan that serves their shapes, timing
    /// every node with `elapsed` (a monotonic clock, injected), and returns the total per operator (tract's name
    /// for it, as `Conv` or `OptMatMul`) with the nodes it covers, most expensive first, and what making a new
    /// run state costs. A diagnostic for benchmarks: the answers are not checked.
    pub fn profile(
        &self,
        inputs: Vec<NamedTensor>,
        runs: usize,
        elapsed: &dyn Fn() -> std::time::Duration,
    ) -> Result<RunProfile, ModelError> {
        let ordered = self.check_inputs(inputs)?;
        let plan = self.plan_for(ordered.iter().map(|t| t.shape.clone()).collect())?;
        let run = |e: TractError| ModelError::Run(format!("{e:#}"));
        let tensors: Vec<Tensor> = ordered.into_iter().map(to_tract).collect::<Result<_, _>>().map_err(run)?;
        let mut by_op: Vec<OperatorTime> = Vec::new();
        let mut new_state = std::time::Duration::ZERO;
        guard(ModelError::Run, || {
            for _ in 0..runs {
                let start = elapsed();
                drop(plan.plan.spawn().map_err(run)?);
                new_state += elapsed().saturating_sub(start);
                let mut state = plan.plan.spawn().map_err(run)?;
                let inputs = tensors.iter().cloned().map(IntoTValue::into_tvalue).collect();
                state
                    .run_plan_with_eval(inputs, |ctx, op_state, node, inputs| {
                        let start = elapsed();
                        let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                        let took = elapsed().saturating_sub(start);
                        let op = node.op().name();
                        match by_op.iter_mut().find(|t| t.operator == op) {
                            Some(t) => t.total += took,
                            None => by_op.push(OperatorTime {
                                operator: op.to_string(),
                                nodes: 0,
                                total: took,
                                kernels: Vec::new(),
                            }),
                        }
                        out
                    })
                    .map_err(run)?;
            }
            Ok(())
        })?;
        for t in &mut by_op {
            let nodes: Vec<_> =
                plan.plan.model().nodes().iter().filter(|n| n.op().name() == t.operator.as_str()).collect();
            t.nodes = nodes.len();
            // tract names the kernel a matrix product runs on (chosen by the CPU's features) in its `Mult:` line.
            for line in nodes.iter().flat_map(|n| n.op().info().unwrap_or_default()) {
                let Some(mult) = line.strip_prefix("Mult: ") else { continue };
                let kernel = mult.rsplit_once(" with ").map_or(mult, |(_, k)| k).to_owned();
                if !t.kernels.contains(&kernel) {
                    t.kernels.push(kernel);
                }
            }
        }
        by_op.sort_by_key(|t| std::cmp::Reverse(t.total));
        Ok(RunProfile { operators: by_op, new_state, reuses_states: plan.reuses_states() })
    }

    /// Whether no plan is being built in the background ([`Planning::Symbolic`] plans recurring shapes so).
    pub fn settled(&self) -> bool {
        match &self.plans {
            Plans::Symbolic { concrete, .. } => !concrete.state().planning,
            Plans::One(_) | Plans::PerShape { .. } => true,
        }
    }

    /// Whether runs reuse tract run states (kept between requests): only when no operator of any plan held keeps
    /// state from one run to the next; a model with such an operator runs each request on a fresh state.
    pub fn reuses_run_states(&self) -> bool {
        match &self.plans {
            Plans::One(plan) => plan.reuses_states(),
            Plans::Symbolic { plan, concrete } => {
                plan.reuses_states()
                    && concrete.smoke_plan.reuses_states()
                    && concrete.state().plans.iter().all(|(_, p)| p.reuses_states())
            }
            Plans::PerShape { cache, .. } => {
                cache.lock().unwrap_or_else(PoisonError::into_inner).iter().all(|(_, p)| p.reuses_states())
            }
        }
    }

    /// The inputs `run` accepts, in the model's order: the contract's, or the smoke test's concrete shapes in
    /// [`ShapeMode::SmokeTest`].
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// The contract's outputs, in the model's order.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Matches `inputs` to the model's inputs and checks each against its spec; returns them in model order.
    fn check_inputs(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, ModelError> {
        let bad = |input: &str, problem: String| ModelError::BadInput { input: input.to_owned(), problem };
        let mut slots: Vec<Option<NamedTensor>> = self.inputs.iter().map(|_| None).collect();
        for t in inputs {
            let Some(ix) = self.inputs.iter().position(|s| s.name == t.name) else {
                let known: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
                return Err(bad(&t.name, format!("not an input of this model (its inputs: {})", known.join(", "))));
            };
            if slots[ix].is_some() {
                return Err(bad(&t.name, "given more than once".into()));
            }
            slots[ix] = Some(t);
        }
        let mut bound: Vec<(&str, usize)> = Vec::new();
        let mut ordered = Vec::with_capacity(slots.len());
        for (spec, slot) in self.inputs.iter().zip(slots) {
            let Some(t) = slot else {
                return Err(bad(&spec.name, "missing: every input of the model must be given".into()));
            };
            let declared = || spec.shape.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ");
            if t.dtype() != spec.dtype {
                return Err(bad(&t.name, format!("element type is {}, the model takes {}", t.dtype(), spec.dtype)));
            }
            if t.shape.len() != spec.shape.len() {
                return Err(bad(
                    &t.name,
                    format!(
                        "shape {:?} has rank {}, the model takes rank {} [{}]",
                        t.shape,
                        t.shape.len(),
                        spec.shape.len(),
                        declared()
                    ),
                ));
            }
            for (axis, (d, &n)) in spec.shape.iter().zip(&t.shape).enumerate() {
                match d {
                    Dim::Fixed(want) if *want != n as u64 => {
                        return Err(bad(
                            &t.name,
                            format!("shape {:?}: dimension {axis} is {n}, the model takes [{}]", t.shape, declared()),
                        ));
                    }
                    Dim::Fixed(_) => {}
                    // tract's handling of empty tensors varies by operator; refuse them here, as the caller's
                    // problem, rather than risk a model failure that would count against a healthy model.
                    Dim::Symbol(sym) if n == 0 => {
                        return Err(bad(&t.name, format!("shape {:?}: dimension {axis} (`{sym}`) is 0", t.shape)));
                    }
                    Dim::Symbol(sym) => match bound.iter().find(|(s, _)| s == sym) {
                        Some(&(_, earlier)) if earlier != n => {
                            return Err(bad(
                                &t.name,
                                format!(
                                    "shape {:?}: dimension {axis} (`{sym}`) is {n}, but another input bound `{sym}` \
                                     to {earlier}",
                                    t.shape
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => bound.push((sym, n)),
                    },
                }
            }
            let count = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if count != Some(t.data.len()) {
                let count = count.map_or_else(|| "more than usize::MAX".to_owned(), |c| c.to_string());
                return Err(bad(
                    &t.name,
                    format!("shape {:?} holds {count} elements, {} were given", t.shape, t.data.len()),
                ));
            }
            ordered.push(t);
        }
        Ok(ordered)
    }

    /// The plan for these input shapes (model order). In [`Planning::PerShape`] a shape tract cannot plan is the
    /// caller's problem (`BadInput`): the smoke test's shapes were planned at load.
    fn plan_for(&self, shapes: Vec<Vec<usize>>) -> Result<Plan, ModelError> {
        let (proto, cache) = match &self.plans {
            Plans::One(plan) => return Ok(plan.clone()),
            Plans::Symbolic { plan, concrete } => return Ok(concrete.plan_for(shapes).unwrap_or_else(|| plan.clone())),
            Plans::PerShape { proto, cache } => (proto, cache),
        };
        // Planning takes long, so the lock is held only to look up and to insert (two threads may plan the
        // same new shapes at once; both plans work, one is kept).
        if let Some(plan) = most_recent(&mut cache.lock().unwrap_or_else(PoisonError::into_inner), &shapes) {
            return Ok(plan);
        }
        let plan = build_plan(proto, &fixed_specs(&self.inputs, &shapes)).map_err(|e| ModelError::BadInput {
            input: self.input_names.join(", "),
            problem: format!("the model cannot be planned for shapes {shapes:?}: {e:#}"),
        })?;
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if !cache.iter().any(|(s, _)| *s == shapes) {
            cache.push_front((shapes, plan.clone()));
            cache.truncate(MAX_SHAPE_PLANS);
        }
        Ok(plan)
    }

    fn run_inner(&self, ordered: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, ModelError> {
        let run = |e: TractError| ModelError::Run(format!("{e:#}"));
        let plan = self.plan_for(ordered.iter().map(|t| t.shape.clone()).collect())?;
        let inputs: TVec<TValue> = ordered
            .into_iter()
            .map(|t| to_tract(t).map(IntoTValue::into_tvalue))
            .collect::<Result<_, _>>()
            .map_err(run)?;
        let outputs = plan.run(inputs).map_err(run)?;
        self.outputs
            .iter()
            .zip(outputs)
            .map(|(spec, value)| {
                let typed = value.cast_to_dt(datum_type(spec.dtype)).map_err(run)?;
                from_tract(&spec.name, &typed, spec.dtype).map_err(run)
            })
            .collect()
    }

    /// The smoke test's input tensors in the model's order, and their shapes.
    fn smoke_inputs(&self, manifest: &Manifest) -> Result<(TVec<TValue>, Vec<Vec<usize>>), ModelError> {
        let st = &manifest.smoke_test;
        let mut inputs = TVec::new();
        let mut shapes = Vec::new();
        for name in &self.input_names {
            let t = st
                .inputs
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| ModelError::SmokeRun(format!("no smoke-test tensor for input `{name}`")))?;
            let spec = manifest
                .contract
                .inputs
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| ModelError::SmokeRun(format!("input `{name}` is not in the contract")))?;
            inputs.push(to_tensor(t, spec.dtype)?.into_tvalue());
            shapes.push(t.shape.iter().map(|&d| d as usize).collect());
        }
        Ok((inputs, shapes))
    }

    fn smoke_inner(&self, manifest: &Manifest) -> Result<SmokeReport, ModelError> {
        let (inputs, shapes) = self.smoke_inputs(manifest)?;
        let plan = self.plan_for(shapes).map_err(|e| ModelError::SmokeRun(e.to_string()))?;
        let mut report = self.smoke_check(manifest, &plan, inputs.clone())?;
        // A symbolic model serves every other shape on its symbolic plan: that one must pass too.
        if let Plans::Symbolic { plan, .. } = &self.plans {
            let symbolic = self.smoke_check(manifest, plan, inputs)?;
            for ((_, worst), (_, other)) in report.outputs.iter_mut().zip(symbolic.outputs) {
                *worst = worst.max(other);
            }
        }
        Ok(report)
    }

    /// Runs the manifest's smoke-test inputs and returns what this model answers for each output the smoke test
    /// checks: the expectations of a package derived from the manifest's (a quantised descendant answers a little
    /// differently, and its own smoke test must hold it to what the hub saw).
    pub fn smoke_outputs(&self, manifest: &Manifest) -> Result<Vec<SmokeTensor>, ModelError> {
        guard(ModelError::Load, || {
            let st = &manifest.smoke_test;
            let (inputs, shapes) = self.smoke_inputs(manifest)?;
            let plan = self.plan_for(shapes).map_err(|e| ModelError::SmokeRun(e.to_string()))?;
            let outputs = plan.run(inputs).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
            let mut found = Vec::new();
            for expected in &st.expected {
                let (shape, values) = self.output_values(&outputs, &expected.name)?;
                found.push(SmokeTensor {
                    name: expected.name.clone(),
                    shape: shape.iter().map(|&d| d as u64).collect(),
                    values: Some(values),
                    fill: None,
                });
            }
            Ok(found)
        })
    }

    /// The output `name` of a run: its shape and its values as f64.
    fn output_values(&self, outputs: &[TValue], name: &str) -> Result<(Vec<usize>, Vec<f64>), ModelError> {
        let ix = self
            .output_names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| ModelError::SmokeRun(format!("model has no output `{name}`")))?;
        let actual = outputs[ix].cast_to::<f64>().map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
        let values = actual
            .to_plain_array_view::<f64>()
            .map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?
            .iter()
            .copied()
            .collect();
        Ok((actual.shape().to_vec(), values))
    }

    /// Runs the smoke test's `inputs` on `plan` and compares the outputs with the expected values.
    fn smoke_check(&self, manifest: &Manifest, plan: &Plan, inputs: TVec<TValue>) -> Result<SmokeReport, ModelError> {
        let st = &manifest.smoke_test;
        let outputs = plan.run(inputs).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
        let mut report = Vec::new();
        for expected in &st.expected {
            let (shape, got) = self.output_values(&outputs, &expected.name)?;
            let shape_ok =
                shape.len() == expected.shape.len() && shape.iter().zip(&expected.shape).all(|(&a, &e)| a as u64 == e);
            if !shape_ok {
                return Err(ModelError::SmokeShape {
                    output: expected.name.clone(),
                    actual: shape,
                    expected: expected.shape.clone(),
                });
            }
            let want = expected.materialize();
            let mut worst = (0usize, 0.0f64);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = (g - w).abs();
                // NaN compares false everywhere: treat it as infinitely far off.
                let d = if d.is_nan() { f64::INFINITY } else { d };
                if d > worst.1 {
                    worst = (i, d);
                }
            }
            if worst.1 > st.tolerance {
                return Err(ModelError::SmokeMismatch {
                    output: expected.name.clone(),
                    index: worst.0,
                    actual: got[worst.0],
                    expected: want[worst.0],
                    diff: worst.1,
                    tolerance: st.tolerance,
                });
            }
            report.push((expected.name.clone(), worst.1));
        }
        Ok(SmokeReport { outputs: report })
    }

    /// Input names in the model's order.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Output names in the model's order.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }
}

/// Runs `f`, turning a panic into `wrap("tract panicked: ...")`.
fn guard<T>(wrap: fn(String) -> ModelError, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(wrap(format!("tract panicked: {msg}")))
    })
}

fn load_inner(model_bytes: &[u8], manifest: &Manifest, mode: ShapeMode) -> Result<LoadedModel, ModelError> {
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_read(&mut &model_bytes[..]).map_err(|e| ModelError::Load(format!("{e:#}")))?;
    let graph = proto.graph.as_ref().ok_or_else(|| ModelError::Load("the model has no graph".into()))?;
    // Older exporters list initializers among the inputs; those are weights, not inputs.
    let graph_inputs: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !graph.initializer.iter().any(|w| w.name == i.name)).collect();
    let graph_outputs: Vec<&pb::ValueInfoProto> = graph.output.iter().collect();
    match_contract("inputs", &manifest.contract.inputs, &graph_inputs)?;
    match_contract("outputs", &manifest.contract.outputs, &graph_outputs)?;

    let input_names: Vec<String> = graph_inputs.iter().map(|i| i.name.clone()).collect();
    let output_names: Vec<String> = graph_outputs.iter().map(|o| o.name.clone()).collect();
    // match_contract checked that the contract lists the graph's tensors in the graph's order.
    let contract = manifest.contract.inputs.clone();
    let mut smoke_shapes: Vec<Vec<usize>> = Vec::with_capacity(contract.len());
    for spec in &contract {
        let Some(smoke) = manifest.smoke_test.inputs.iter().find(|t| t.name == spec.name) else {
            return Err(ModelError::Load(format!("the smoke test has no tensor for input `{}`", spec.name)));
        };
        smoke_shapes.push(smoke.shape.iter().map(|&d| d as usize).collect());
    }
    let smoke_shaped = fixed_specs(&contract, &smoke_shapes);
    let loaded = |plans, inputs| LoadedModel {
        plans,
        input_names: input_names.clone(),
        output_names: output_names.clone(),
        inputs,
        outputs: manifest.contract.outputs.clone(),
    };
    let load = |e: TractError| ModelError::Load(format!("{e:#}"));
    if mode == ShapeMode::Contract {
        // A failure (or panic) here only means tract cannot plan the symbolic shapes; per-shape plans remain.
        // A symbolic plan must also run the smoke test's shapes, or it is no use.
        let symbolic = guard(ModelError::Load, || {
            let plan = build_plan(&proto, &contract).map_err(load)?;
            let probe = contract
                .iter()
                .zip(&smoke_shapes)
                .map(|(spec, shape)| Tensor::zero_dt(datum_type(spec.dtype), shape).map(IntoTValue::into_tvalue))
                .collect::<TractResult<TVec<TValue>>>()
                .map_err(load)?;
            plan.run(probe).map_err(load)?;
            Ok(plan)
        });
        if let Ok(plan) = symbolic {
            let smoke_plan = build_plan(&proto, &smoke_shaped).map_err(load)?;
            let concrete = Arc::new(Concrete {
                proto,
                contract: contract.clone(),
                smoke_shapes,
                smoke_plan,
                state: Mutex::default(),
            });
            return Ok(loaded(Plans::Symbolic { plan, concrete }, contract));
        }
    }
    let plan = build_plan(&proto, &smoke_shaped).map_err(load)?;
    Ok(match mode {
        ShapeMode::SmokeTest => loaded(Plans::One(plan), smoke_shaped),
        ShapeMode::Contract => {
            let cache = Mutex::new(VecDeque::from([(smoke_shapes, plan)]));
            loaded(Plans::PerShape { proto: Box::new(proto), cache }, contract)
        }
    })
}

/// Parses `proto` into tract, pins the inputs to `specs` (symbols stay symbols), and optimises.
fn build_plan(proto: &pb::ModelProto, specs: &[TensorSpec]) -> TractResult<Plan> {
    let mut model = tract_onnx::onnx().model_for_proto_model(proto)?;
    for (ix, spec) in specs.iter().enumerate() {
        let shape: TVec<TDim> = spec
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => (*n as usize).to_dim(),
                Dim::Symbol(name) => TDim::Sym(model.symbols.sym(name)),
            })
            .collect();
        model.set_input_fact(ix, InferenceFact::dt_shape(datum_type(spec.dtype), shape))?;
    }
    Runner::new(model.into_optimized()?.into_runnable()?).map(Arc::new)
}

fn match_contract(side: &str, specs: &[TensorSpec], graph: &[&pb::ValueInfoProto]) -> Result<(), ModelError> {
    let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
    if specs.len() != graph.len() {
        return Err(ModelError::Contract {
            field: format!("contract.{side}"),
            problem: format!(
                "declares {} [{}], the model has {} [{}]",
                specs.len(),
                names(&mut specs.iter().map(|s| s.name.as_str())),
                graph.len(),
                names(&mut graph.iter().map(|g| g.name.as_str())),
            ),
        });
    }
    for (i, (spec, g)) in specs.iter().zip(graph).enumerate() {
        let at = format!("contract.{side}[{i}]");
        if spec.name != g.name {
            return Err(ModelError::Contract {
                field: format!("{at}.name"),
                problem: format!("declared `{}`, the model's {side} #{i} is `{}`", spec.name, g.name),
            });
        }
        let Some(pb::type_proto::Value::TensorType(tt)) = g.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err(ModelError::Contract {
                field: format!("{at}.dtype"),
                problem: format!("the model does not declare a tensor type for `{}`", g.name),
            });
        };
        if tt.elem_type != spec.dtype.onnx_code() {
            let model_ty = ElementType::from_onnx_code(tt.elem_type)
                .map(|t| t.to_string())
                .unwrap_or_else(|| format!("ONNX type {}", tt.elem_type));
            return Err(ModelError::Contract {
                field: format!("{at}.dtype"),
                problem: format!("declared {}, the model has {model_ty}", spec.dtype),
            });
        }
        let model_dims: Vec<Option<i64>> = tt
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(PbDim::DimValue(v)) if *v >= 0 => Some(*v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fmt_model = |d: &[Option<i64>]| {
            d.iter().map(|x| x.map_or_else(|| "?".to_owned(), |v| v.to_string())).collect::<Vec<_>>().join(", ")
        };
        let dims_match = model_dims.len() == spec.shape.len()
            && spec.shape.iter().zip(&model_dims).all(|(s, m)| match (s, m) {
                (Dim::Fixed(n), Some(v)) => *v >= 0 && *n == *v as u64,
                (Dim::Symbol(_), None) => true,
                _ => false,
            });
        if !dims_match {
            let declared: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
            return Err(ModelError::Contract {
                field: format!("{at}.shape"),
                problem: format!("declared [{}], the model has [{}]", declared.join(", "), fmt_model(&model_dims)),
            });
        }
    }
    Ok(())
}

fn datum_type(t: ElementType) -> DatumType {
    match t {
        ElementType::F32 => f32::datum_type(),
        ElementType::F64 => f64::datum_type(),
        ElementType::I8 => i8::datum_type(),
        ElementType::U8 => u8::datum_type(),
        ElementType::I32 => i32::datum_type(),
        ElementType::I64 => i64::datum_type(),
        ElementType::Bool => bool::datum_type(),
    }
}

fn to_tensor(t: &SmokeTensor, dtype: ElementType) -> Result<Tensor, ModelError> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let values = t.materialize();
    let as_f64 = Tensor::from_shape::<f64>(&shape, &values).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))?;
    as_f64.cast_to_dt(datum_type(dtype)).map(|c| c.into_owned()).map_err(|e| ModelError::SmokeRun(format!("{e:#}")))
}

fn to_tract(t: NamedTensor) -> TractResult<Tensor> {
    let shape = &t.shape;
    match &t.data {
        TensorData::F32(v) => Tensor::from_shape(shape, v),
        TensorData::F64(v) => Tensor::from_shape(shape, v),
        TensorData::I8(v) => Tensor::from_shape(shape, v),
        TensorData::U8(v) => Tensor::from_shape(shape, v),
        TensorData::I32(v) => Tensor::from_shape(shape, v),
        TensorData::I64(v) => Tensor::from_shape(shape, v),
        TensorData::Bool(v) => Tensor::from_shape(shape, v),
    }
}

fn from_tract(name: &str, t: &Tensor, dtype: ElementType) -> TractResult<NamedTensor> {
    fn values<T: Datum + Copy>(t: &Tensor) -> TractResult<Vec<T>> {
        let view = t.to_plain_array_view::<T>()?;
        // A contiguous output (the usual case) is one copy of its memory.
        Ok(view.as_slice().map_or_else(|| view.iter().copied().collect(), <[T]>::to_vec))
    }
    let data = match dtype {
        ElementType::F32 => TensorData::F32(values(t)?),
        ElementType::F64 => TensorData::F64(values(t)?),
        ElementType::I8 => TensorData::I8(values(t)?),
        ElementType::U8 => TensorData::U8(values(t)?),
        ElementType::I32 => TensorData::I32(values(t)?),
        ElementType::I64 => TensorData::I64(values(t)?),
        ElementType::Bool => TensorData::Bool(values(t)?),
    };
    Ok(NamedTensor { name: name.to_owned(), shape: t.shape().to_vec(), data })
}
