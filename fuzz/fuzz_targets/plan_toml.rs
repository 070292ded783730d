//! Fuzzes the release plan parser: any input gives a plan or a `ConfigError`, never a panic. A plan that loads
//! survives its persisted form, and drives a rollout through whatever events the bytes after a NUL spell,
//! without a panic and with its counts adding up.
#![no_main]
use std::path::Path;

use outpost_shared::canonical;
use outpost_shared::manifest::RiskTier;
use outpost_shared::rollout::{Command, Outcome, Plan, Release, Rollout, Stats};
use outpost_shared::Digest;

fn adds_up(s: &Stats) -> bool {
    s.assigned == s.pending + s.installed + s.failed + s.rolled_back + s.rejected_by_policy
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (text, events) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let Ok(plan) = Plan::from_toml(text, Path::new("fuzz.toml")) else { return };
    let persisted: Plan = canonical::from_slice(&canonical::to_vec(&plan).expect("a plan encodes")).expect("decodes");
    assert_eq!(persisted, plan);

    let devices: Vec<String> = (0..32u32).map(|i| format!("{i:064x}")).collect();
    let risk = if events.first().is_some_and(|b| b & 1 == 1) { RiskTier::High } else { RiskTier::Low };
    let release = Release {
        id: "fuzz".into(),
        package: Digest::of(b"new"),
        last_good: Some(Digest::of(b"old")),
        risk,
        signers: vec!["a".into(), "b".into()],
    };
    let Ok((mut r, _)) = Rollout::start(release, plan, devices.clone(), 0) else { return };
    let mut now = 0u64;
    for pair in events.chunks(2) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let dev = &devices[usize::from(arg) % devices.len()];
        now += u64::from(arg) * 60;
        let reason = || "fuzz".to_string();
        let _ = match op % 14 {
            0 => r.tick(now),
            1 => r.report(dev, Outcome::Installed, now),
            2 => r.report(dev, Outcome::Failed { reason: reason() }, now),
            3 => r.report(dev, Outcome::RolledBack { reason: reason() }, now),
            4 => r.report(dev, Outcome::RejectedByPolicy { rule: reason() }, now),
            5 => r.report_package(dev, Some(Digest::of(b"old")), now),
            6 => r.report_shadow(dev, u64::from(arg / 2), u64::from(arg), now),
            7 => r.enroll(&format!("late-{arg}"), now),
            8 => r.command(Command::Pause, now).unwrap_or_default(),
            9 => r.command(Command::Resume, now).unwrap_or_default(),
            10 => r.command(Command::RetryFailed, now).unwrap_or_default(),
            11 => r.leave(dev, now),
            12 => r.supersede("next", now),
            _ => {
                let cmd = match arg % 3 {
                    0 => Command::Approve { key_id: "a".into() },
                    1 => Command::Approve { key_id: "b".into() },
                    _ => Command::Abort { reason: reason() },
                };
                r.command(cmd, now).unwrap_or_default()
            }
        };
        let _ = r.directive(dev);
        let s = r.status();
        assert!(adds_up(&s.cohort) && s.stages.iter().all(adds_up));
        if let Some(rec) = s.recovery {
            assert!(rec.recovered <= rec.affected);
        }
    }
});
