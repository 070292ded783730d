//! `outpost-hub`: the central team's command line over the hub, and the serving hub itself (`serve`).
//!
//! Human-readable progress goes to stderr; the one value a script wants (a digest, a path) goes to stdout. While a
//! hub serves from the data directory, commands that touch its state run inside it, over its admin socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use outpost_hub::clock::{SystemClock, SystemRng};
use outpost_hub::config::default_data_dir;
use outpost_hub::service::Hub;

mod cli;

use cli::{Command, Out, Route};

/// Outpost hub: registers, signs and releases ONNX model packages for fleets of edge devices.
#[derive(Parser, Debug)]
#[command(name = "outpost-hub", version, about, long_about = None)]
struct Cli {
    /// Data directory holding hub.toml, the blob store and the index.
    /// Default: $OUTPOST_HUB_DIR, else $XDG_DATA_HOME/outpost/hub, else ~/.local/share/outpost/hub.
    #[arg(long, global = true, env = "OUTPOST_HUB_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data_dir = cli.data_dir.clone().unwrap_or_else(default_data_dir);
    // Unlocked handles (each write locks for itself): `serve` runs here for the process's life, and a lock held
    // across it would block every other thread that logs.
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let mut o = Out { out: &mut stdout, err: &mut stderr };
    match run(cli.command, &data_dir, &mut o) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            outpost_net::logging::fatal(&outpost_shared::errors::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

/// Runs `command` alone, in the serving hub, or against the store opened here; returns the exit code.
fn run(mut command: Command, dir: &std::path::Path, o: &mut Out<'_>) -> Result<u8> {
    let alone = matches!(command.route(), Route::Alone);
    match command {
        Command::Init => return cli::serve::init(dir, o).map(|()| 0),
        Command::Migrate { postgres } => return cli::serve::migrate(dir, postgres, o).map(|()| 0),
        Command::Identity => {
            let id =
                cli::serve::identity(dir, |path| Ok(writeln!(o.err, "created the hub identity {}", path.display())?))?;
            writeln!(o.out, "{}", id.public_key().to_hex())?;
            return Ok(0);
        }
        Command::Serve { bind, metrics, console, console_tls, log_format, log_level, max_connections, sim_fault } => {
            outpost_net::allocator::tune().context("re-executing the hub with its malloc tunables")?;
            let format = log_format.parse()?;
            outpost_net::logging::init(format, log_level.as_deref())?;
            let console = cli::serve::console(console, console_tls)?;
            let sim_fault = sim_fault.map(|_| outpost_hub::service::SimFault::NoRevocationPush);
            let limits = cli::serve::Limits { max_connections, sim_fault };
            return cli::serve::serve(dir, bind, metrics, console, limits).map(|()| 0);
        }
        Command::Completions { shell } => {
            o.out.write_all(&outpost_net::docs::completions(Cli::command(), shell))?;
            return Ok(0);
        }
        Command::Man { out } => {
            let pages = outpost_net::docs::write_man_pages(Cli::command(), &out)?;
            writeln!(o.err, "wrote {} man pages into {}", pages.len(), out.display())?;
            return Ok(0);
        }
        _ => {}
    }
    if alone {
        // Offline key work: the hub's directory need not even exist.
        let hub = Hub::detached(dir, Arc::new(SystemClock), Box::new(SystemRng));
        return cli::run(command, &hub, o);
    }
    command.resolve_locally(&std::env::current_dir().context("the current directory")?)?;
    let request = serde_json::to_vec(&command)?;
    if let Some(reply) = outpost_hub::admin::call(dir, &request, &outpost_hub::admin::Limits::default())? {
        o.out.write_all(reply.stdout.as_bytes())?;
        o.err.write_all(reply.stderr.as_bytes())?;
        return Ok(reply.code);
    }
    cli::serve::config(dir)?; // an initialised hub, or an error naming `init`
    let hub = Hub::load(dir, Arc::new(SystemClock), Box::new(SystemRng))?;
    cli::run(command, &hub, o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_man_pages_name_every_real_subcommand() {
        let paths = outpost_net::docs::subcommand_paths(&Cli::command());
        for known in ["package add", "release publish", "serve", "device approve", "completions", "man"] {
            assert!(paths.iter().any(|p| p == known), "{known} missing from {paths:?}");
        }
        assert_eq!(outpost_net::docs::missing(&Cli::command()), Vec::<String>::new());
    }
}
