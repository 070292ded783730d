//! What Linux's /proc says about a process the simulations started: its resident set and its open file
//! descriptors.

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
