//! What Linux's /proc says about a process the simulations started: its resident set, its open file descriptors
//! and the CPU time it used.

use anyhow::{Context, Result};

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context(field.to_owned())?.parse()?)
}

/// How many file descriptors the process has open (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("/proc/{pid}/fd"))?.count())
}

/// Clock ticks per second of `/proc/PID/stat`'s CPU times (`USER_HZ`: 100 on every Linux the project runs on).
pub const TICKS_PER_SEC: f64 = 100.0;

/// CPU time the process has used, user and system, in clock ticks ([`TICKS_PER_SEC`]).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: fields are counted after its closing one.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/PID/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the state (field 3).
    let ticks = |i: usize| -> Result<u64> { Ok(fields.get(i).context("short /proc/PID/stat")?.parse()?) };
    Ok(ticks(11)? + ticks(12)?)
}
