//! `outpost-sim`: fleet simulations against a real hub. `outpost-sim fleet --scenario FILE` runs one scenario of
//! `simulations/scenarios/` and exits 1 when one of its assertions fails (2 when it could not run at all).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use outpost_sim::fleet::{self, report, scenario::Scenario};

/// Fleet simulations for Outpost: many simulated devices in one process, against a real `outpost-hub serve`.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a fleet scenario: sets up a hub (the `outpost-hub` binary beside this one, or $OUTPOST_HUB_BIN) and
    /// the scenario's devices, each running the agent's own update driver (real QUIC, attestation, TUF, director,
    /// downloads, reports, telemetry) with a simulated body, plays the scenario's events, prints what it measured
    /// and judges its assertions. Time is scaled by the scenario: a poll interval of seconds stands for one of
    /// minutes, and every bound is stated in poll intervals. Exit status 1 when an assertion fails.
    Fleet {
        /// The scenario (TOML; see simulations/scenarios/).
        #[arg(long, value_name = "FILE")]
        scenario: PathBuf,
        /// Simulated devices, instead of the scenario's count.
        #[arg(long, value_name = "N")]
        devices: Option<usize>,
        /// Seconds the run lasts after the devices have started, instead of the scenario's.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Seconds between checks, instead of the scenario's: every time of the scenario (jitter, ramp, health
        /// window, events, run length) is scaled alike.
        #[arg(long, value_name = "SECS")]
        poll: Option<u64>,
        /// Working directory for the hub and the devices (emptied first).
        #[arg(long, value_name = "DIR", default_value = "fleet-data")]
        dir: PathBuf,
        /// Where the devices keep their files, instead of DIR/devices (emptied first). A tmpfs (/dev/shm/…) takes
        /// the devices' fsyncs (state, TUF metadata, telemetry) off the disk the hub writes to: one process stands
        /// for thousands of devices, each with a disk of its own.
        #[arg(long, value_name = "DIR")]
        devices_dir: Option<PathBuf>,
        /// UDP port of the hub on 127.0.0.1 (a site node, if any, takes the next two).
        #[arg(long, default_value_t = 17743)]
        port: u16,
        /// Where to draw devices per state over time (SVG); default: DIR/chart.svg.
        #[arg(long, value_name = "FILE")]
        chart: Option<PathBuf>,
        /// Seconds between progress lines on stderr.
        #[arg(long, default_value_t = 5)]
        progress: u64,
        /// UDP sockets the devices share (each on its own loopback address), instead of the scenario's: the hub
        /// bounds handshakes per source address (32 at once), as it would see a large fleet from many addresses.
        #[arg(long, value_name = "N")]
        sockets: Option<usize>,
        /// Worker threads of the devices' tokio runtime.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Route the devices through a relay that counts bytes each way, and print bytes per check.
        #[arg(long)]
        count_bytes: bool,
        /// Runs the hub broken on purpose (`no-revocation-push`), to see the scenario fail.
        #[arg(long, hide = true, value_name = "FAULT")]
        sim_fault: Option<String>,
    },
}

fn main() -> ExitCode {
    outpost_sim::log_warnings();
    let Cmd::Fleet {
        scenario,
        devices,
        duration,
        poll,
        dir,
        devices_dir,
        port,
        chart,
        progress,
        sockets,
        threads,
        count_bytes,
        sim_fault,
    } = Cli::parse().command;
    let result = (|| -> Result<bool> {
        let mut s = Scenario::load(&scenario)?;
        if let Some(n) = devices {
            s.devices = n;
        }
        if let Some(p) = poll {
            s.scale_time(p as f64 / s.timing.poll_secs as f64);
        }
        if let Some(k) = sockets {
            s.fleet.sockets = k.clamp(1, 250);
        }
        if let Some(d) = duration {
            s.duration_secs = d;
        }
        let chart = chart.unwrap_or_else(|| dir.join("chart.svg"));
        let opts = fleet::Options {
            dir,
            devices_dir,
            port,
            chart: Some(chart.clone()),
            sim_fault,
            progress: Some(Duration::from_secs(progress.max(1))),
            sample: Duration::from_millis(250),
            threads: threads.max(1),
            count_bytes,
        };
        let record = fleet::run(&s, &opts)?;
        let verdicts = report::judge(&record);
        print!("{}", report::render(&record, &verdicts));
        match report::chart(&record, &chart) {
            Ok(()) => println!("chart        {}", chart.display()),
            Err(e) => eprintln!("outpost-sim: chart: {e:#}"),
        }
        Ok(verdicts.iter().all(|v| v.held))
    })();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("outpost-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
