//! WASM site-policy rules fail closed: a module that loops, runs too long, traps, over-allocates, answers
//! garbage or never answers makes the decision reject (policy error), within its limits, and the next module
//! still runs. The example module in the repo decides on real input.
#![cfg(feature = "wasm")]

use std::time::{Duration, Instant};

use outpost_agent::policy_wasm::{WasmError, WasmLimits, WasmRule};
use outpost_shared::policy::{Evaluation, Outcome, PackageFacts, RuleOutcome};
use outpost_shared::testkit::AffineManifest;

const IMPORTS: &str = r#"
  (import "outpost" "input_len" (func $input_len (result i32)))
  (import "outpost" "read_input" (func $read_input (param i32) (result i32)))
  (import "outpost" "decide" (func $decide (param i32 i32)))
  (memory (export "memory") 1)"#;

#[allow(clippy::disallowed_methods)] // The wall-clock limit is what is under test.
fn now() -> Instant {
    Instant::now()
}

fn facts(data_class: &str) -> PackageFacts {
    let text = AffineManifest::new("affine", "1.0.0", 2.0, 1.0)
        .toml()
        .replace("data_classification = \"internal\"", &format!("data_classification = \"{data_class}\""));
    PackageFacts::from_manifest(&outpost_shared::Manifest::from_toml(&text, "m.toml").unwrap(), Some(100))
}

fn module(body: &str) -> WasmRule {
    WasmRule::load("test", format!("(module {IMPORTS}\n{body})").as_bytes(), WasmLimits::default()).unwrap()
}

fn decide(rule: &WasmRule) -> RuleOutcome {
    rule.decide(&facts("internal"), 1_795_867_200, Some("plant-7"))
}

fn assert_policy_error(outcome: &RuleOutcome, cause: &str) {
    assert_eq!(outcome.outcome, Outcome::Reject, "{outcome:?}");
    assert!(outcome.detail.starts_with("policy error:"), "{outcome:?}");
    assert!(outcome.detail.contains(cause), "expected `{cause}` in {outcome:?}");
    assert_eq!(outcome.rule, "wasm:test");
}

/// `(data ...)` with a CBOR decision map of text values, and `evaluate` handing it over.
fn answering(pairs: &[(&str, &str)]) -> String {
    let text = |s: &str| {
        assert!(s.len() < 24);
        let mut b = vec![0x60 + s.len() as u8];
        b.extend_from_slice(s.as_bytes());
        b
    };
    let mut cbor = vec![0xa0 + pairs.len() as u8];
    for (k, v) in pairs {
        cbor.extend(text(k));
        cbor.extend(text(v));
    }
    let escaped: String = cbor.iter().map(|b| format!("\\{b:02x}")).collect();
    format!(
        "(data (i32.const 0) \"{escaped}\")\n(func (export \"evaluate\") (call $decide (i32.const 0) (i32.const {})))",
        cbor.len()
    )
}

#[test]
fn example_module_in_the_repo_rejects_restricted_data_and_accepts_the_rest() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/policies/deny-restricted.wat");
    let rule = WasmRule::load("deny-restricted", &std::fs::read(path).unwrap(), WasmLimits::default()).unwrap();
    let restricted = rule.decide(&facts("restricted"), 0, None);
    assert_eq!(restricted.outcome, Outcome::Reject);
    assert_eq!(restricted.detail, "deny-restricted: models for restricted data do not run at this site");
    let internal = rule.decide(&facts("internal"), 0, None);
    assert_eq!(internal.outcome, Outcome::Pass, "{internal:?}");
}

#[test]
fn module_decisions_accept_defer_and_reject() {
    let accept = module(&answering(&[("decision", "accept")]));
    assert_eq!(decide(&accept).outcome, Outcome::Pass);
    let reject = module(&answering(&[("decision", "reject"), ("rule", "no-vad"), ("reason", "not here")]));
    let out = decide(&reject);
    assert_eq!((out.outcome, out.detail.as_str()), (Outcome::Reject, "no-vad: not here"));
    // A WASM rejection decides, after the declarative rules passed.
    let e = Evaluation::of(vec![]).with([out]);
    assert!(matches!(e.decision, outpost_shared::policy::Decision::Reject { ref rule, .. } if rule == "wasm:test"));
}

#[test]
fn looping_module_fails_closed_when_its_fuel_runs_out() {
    let rule = module("(func (export \"evaluate\") (loop $forever (br $forever)))");
    let started = now();
    assert_policy_error(&decide(&rule), "ran out of fuel");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn slow_module_fails_closed_at_the_wall_clock_deadline() {
    let limits = WasmLimits { fuel: u64::MAX, timeout: Duration::from_millis(200), ..WasmLimits::default() };
    let wat = format!("(module {IMPORTS}\n(func (export \"evaluate\") (loop $forever (br $forever))))");
    let rule = WasmRule::load("test", wat.as_bytes(), limits).unwrap();
    let started = now();
    assert_policy_error(&decide(&rule), "interrupt");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[test]
fn trapping_module_fails_closed() {
    assert_policy_error(&decide(&module("(func (export \"evaluate\") unreachable)")), "unreachable");
}

#[test]
fn memory_hungry_module_fails_closed_at_the_memory_limit() {
    // 16 MiB is the limit: ask for 64 MiB more.
    let rule = module("(func (export \"evaluate\") (drop (memory.grow (i32.const 1024))))");
    assert_policy_error(&decide(&rule), "memory");
}

#[test]
fn garbage_decisions_fail_closed() {
    let garbage = module(
        "(data (i32.const 0) \"\\ff\\00\\13\")\n(func (export \"evaluate\") (call $decide (i32.const 0) (i32.const 3)))",
    );
    assert_policy_error(&decide(&garbage), "not the expected CBOR map");
    let unknown = module(&answering(&[("decision", "maybe")]));
    assert_policy_error(&decide(&unknown), "unknown decision `maybe`");
    let defer_without_time = module(&answering(&[("decision", "defer")]));
    assert_policy_error(&decide(&defer_without_time), "without `until`");
    let oversized = module("(func (export \"evaluate\") (call $decide (i32.const 0) (i32.const 60000)))");
    assert_policy_error(&decide(&oversized), "over the 4096-byte limit");
    let out_of_bounds = module("(func (export \"evaluate\") (call $decide (i32.const 65000) (i32.const 4000)))");
    assert_policy_error(&decide(&out_of_bounds), "out of bounds");
}

#[test]
fn module_that_never_decides_fails_closed() {
    assert_policy_error(&decide(&module("(func (export \"evaluate\"))")), "without a decision");
}

#[test]
fn module_importing_anything_else_is_refused_at_load() {
    let wat = r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1) (func (export "evaluate")))"#;
    let WasmError::Invalid { problem, .. } = WasmRule::load("w", wat.as_bytes(), WasmLimits::default()).unwrap_err();
    assert!(problem.contains("wasi_snapshot_preview1.fd_write"), "{problem}");
    let no_evaluate = format!("(module {IMPORTS})");
    let WasmError::Invalid { problem, .. } =
        WasmRule::load("w", no_evaluate.as_bytes(), WasmLimits::default()).unwrap_err();
    assert!(problem.contains("does not export `evaluate`"), "{problem}");
    assert!(WasmRule::load("w", b"\0asm garbage", WasmLimits::default()).is_err());
}

#[test]
fn a_failed_module_leaves_the_next_decision_unaffected() {
    let bad = module("(func (export \"evaluate\") unreachable)");
    let good = module(&answering(&[("decision", "accept")]));
    for _ in 0..3 {
        assert_eq!(decide(&bad).outcome, Outcome::Reject);
        assert_eq!(decide(&good).outcome, Outcome::Pass);
    }
}
