//! Site-policy rules as sandboxed WebAssembly modules: each gets the package's facts as CBOR and returns a
//! decision; a module that loops, traps, over-allocates or answers garbage makes the decision reject (fail closed).
//!
//! # ABI (version 1)
//! A module imports only from `outpost`, and only these three functions:
//! - `input_len() -> i32`: length of the input in bytes;
//! - `read_input(ptr: i32) -> i32`: copies the input into the module's memory at `ptr`; returns its length, or
//!   -1 if it does not fit;
//! - `decide(ptr: i32, len: i32)`: hands over the decision (at most 4 KiB of CBOR); only the first call counts.
//!
//! It exports its `memory` and `evaluate: () -> ()`. The input is deterministic CBOR:
//! `{"now": u64, "package": PackageFacts, "site": text or null}`, with `PackageFacts` fields as in
//! `outpost_shared::policy`. The decision is a CBOR map: `{"decision": "accept" | "defer" | "reject",
//! "rule": text, "reason": text, "until": u64}` (`until` required for defer; `rule` and `reason` optional).
//! Limits: fuel (instructions), an epoch deadline (wall time), linear memory and table size; no WASI, no
//! threads, no component model. `fixtures/policies/deny-restricted.wat` is an example.

use std::time::Duration;

use outpost_shared::Digest;
use outpost_shared::policy::{Outcome, PackageFacts, RuleOutcome};
use serde::{Deserialize, Serialize};
use wasmtime::{Caller, Config, Engine, Extern, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};

/// Largest decision a module may hand over.
pub const MAX_DECISION_BYTES: usize = 4096;

/// What a module may use while deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmLimits {
    /// Fuel (roughly, WebAssembly instructions).
    pub fuel: u64,
    /// Wall time, enforced by epoch interruption.
    pub timeout: Duration,
    /// Linear memory, in bytes.
    pub memory_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits { fuel: 50_000_000, timeout: Duration::from_secs(1), memory_bytes: 16 << 20 }
    }
}

/// A module that could not be used at all (refused at load, like a malformed policy file).
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// Not valid WebAssembly (or WAT), or it does not fit the ABI.
    #[error("policy module {name}: {problem}")]
    Invalid {
        /// The module's name.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// A compiled policy module, ready to decide any number of times.
pub struct WasmRule {
    name: String,
    digest: Digest,
    engine: Engine,
    module: Module,
    limits: WasmLimits,
}

impl std::fmt::Debug for WasmRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRule").field("name", &self.name).field("digest", &self.digest).finish()
    }
}

const IMPORTS: [&str; 3] = ["input_len", "read_input", "decide"];

impl WasmRule {
    /// Compiles a module (binary or WAT text) named `name` and checks it against the ABI: imports only the
    /// `outpost` functions, exports `memory` and `evaluate`.
    pub fn load(name: &str, bytes: &[u8], limits: WasmLimits) -> Result<WasmRule, WasmError> {
        let invalid = |problem: String| WasmError::Invalid { name: name.to_owned(), problem };
        let mut config = Config::new();
        // Threads, WASI and the component model are compiled out (cargo features), not just switched off.
        config.consume_fuel(true).epoch_interruption(true).max_wasm_stack(256 << 10);
        let engine = Engine::new(&config).map_err(|e| invalid(format!("{e:#}")))?;
        let module = Module::new(&engine, bytes).map_err(|e| invalid(format!("not a valid module: {e:#}")))?;
        for import in module.imports() {
            if import.module() != "outpost" || !IMPORTS.contains(&import.name()) {
                return Err(invalid(format!(
                    "imports `{}.{}`: a policy module may import only outpost.{{{}}}",
                    import.module(),
                    import.name(),
                    IMPORTS.join(", ")
                )));
            }
        }
        for export in ["memory", "evaluate"] {
            if module.get_export(export).is_none() {
                return Err(invalid(format!("does not export `{export}`")));
            }
        }
        Ok(WasmRule { name: name.to_owned(), digest: Digest::of(bytes), engine, module, limits })
    }

    /// The module's name, as rules report it (`wasm:<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the module's bytes (part of the active policy's digest).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Runs the module on `facts` at `now`. Never fails: any fault is a rejection naming it.
    pub fn decide(&self, facts: &PackageFacts, now: u64, site: Option<&str>) -> RuleOutcome {
        let rule = format!("wasm:{}", self.name);
        match self.run(facts, now, site) {
            Ok((outcome, detail)) => RuleOutcome { rule, outcome, detail },
            Err(problem) => RuleOutcome { rule, outcome: Outcome::Reject, detail: format!("policy error: {problem}") },
        }
    }

    fn run(&self, facts: &PackageFacts, now: u64, site: Option<&str>) -> Result<(Outcome, String), String> {
        let input = outpost_shared::canonical::to_vec(&Input { now, package: facts, site })
            .map_err(|e| format!("encoding the input: {e}"))?;
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .table_elements(10_000)
            .instances(1)
            .tables(1)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, Host { input, decision: None, limits });
        store.limiter(|h| &mut h.limits);
        store.set_fuel(self.limits.fuel).map_err(|e| e.to_string())?;
        store.set_epoch_deadline(1);
        let linker = self.linker().map_err(|e| format!("{e:#}"))?;

        // The wall-clock backstop: one epoch tick after the timeout interrupts the module.
        let (done, timer) = std::sync::mpsc::channel::<()>();
        let engine = self.engine.clone();
        let timeout = self.limits.timeout;
        let ticker = std::thread::spawn(move || {
            if timer.recv_timeout(timeout).is_err() {
                engine.increment_epoch();
            }
        });
        let result = linker
            .instantiate(&mut store, &self.module)
            .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "evaluate"))
            .and_then(|evaluate| evaluate.call(&mut store, ()));
        let _ = done.send(());
        let _ = ticker.join();
        let fuel_left = store.get_fuel().unwrap_or(0);
        result.map_err(|e| {
            if fuel_left == 0 {
                format!("ran out of fuel ({} units)", self.limits.fuel)
            } else {
                format!("{}", e.root_cause())
            }
        })?;
        let bytes = store.into_data().decision.ok_or("the module returned without a decision")?;
        parse_decision(&bytes)
    }

    fn linker(&self) -> wasmtime::Result<Linker<Host>> {
        let mut linker = Linker::new(&self.engine);
        linker.func_wrap("outpost", "input_len", |caller: Caller<'_, Host>| caller.data().input.len() as i32)?;
        linker.func_wrap("outpost", "read_input", |mut caller: Caller<'_, Host>, ptr: i32| -> i32 {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else { return -1 };
            let input = caller.data().input.clone();
            match memory.write(&mut caller, ptr as u32 as usize, &input) {
                Ok(()) => input.len() as i32,
                Err(_) => -1,
            }
        })?;
        linker.func_wrap(
            "outpost",
            "decide",
            |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
                if caller.data().decision.is_some() {
                    return Ok(());
                }
                let len = len as u32 as usize;
                if len > MAX_DECISION_BYTES {
                    wasmtime::bail!("decision of {len} bytes is over the {MAX_DECISION_BYTES}-byte limit");
                }
                let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                    wasmtime::bail!("no exported memory");
                };
                let mut buf = vec![0; len];
                memory.read(&caller, ptr as u32 as usize, &mut buf)?;
                caller.data_mut().decision = Some(buf);
                Ok(())
            },
        )?;
        Ok(linker)
    }
}

struct Host {
    input: Vec<u8>,
    decision: Option<Vec<u8>>,
    limits: StoreLimits,
}

#[derive(Serialize)]
struct Input<'a> {
    now: u64,
    package: &'a PackageFacts,
    site: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WasmDecision {
    decision: String,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    until: Option<u64>,
}

fn parse_decision(bytes: &[u8]) -> Result<(Outcome, String), String> {
    let d: WasmDecision =
        ciborium::from_reader(bytes).map_err(|e| format!("the decision is not the expected CBOR map: {e}"))?;
    let detail = match (&d.rule, &d.reason) {
        (Some(rule), Some(reason)) => format!("{rule}: {reason}"),
        (Some(x), None) | (None, Some(x)) => x.clone(),
        (None, None) => String::new(),
    };
    let outcome = match (d.decision.as_str(), d.until) {
        ("accept", _) => Outcome::Pass,
        ("reject", _) => Outcome::Reject,
        ("defer", Some(until)) => Outcome::Defer(until),
        ("defer", None) => return Err("a deferral without `until`".into()),
        (other, _) => return Err(format!("unknown decision `{other}`")),
    };
    Ok((outcome, if detail.is_empty() { d.decision } else { detail }))
}
