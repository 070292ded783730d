//! `outpost-tuf-conformance`: the agent's TUF client behind the client-under-test CLI of the TUF conformance suite
//! (theupdateframework/tuf-conformance, `CLIENT-CLI.md`): `init`, `refresh`, `download`; exit 0 on success, 1 on
//! any failure.
//!
//! It runs the agent's own path — `outpost_agent::tuf::updater` over the agent's HTTP mirror client, the same
//! store layout and `Updater::get_target` the driver uses for the director key — so the suite measures what
//! devices run. The suite wraps calls in `faketime`, so time is read from the OS clock here, through libc.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use outpost_agent::mirror::{Mirror, MirrorConfig};
use outpost_agent::{device, tuf};

/// The agent's TUF client, driven by the TUF conformance suite.
#[derive(Parser, Debug)]
#[command(name = "outpost-tuf-conformance", version, about)]
struct Cli {
    /// Where trusted metadata lives (`root.json`, `timestamp.json`... as the exact verified bytes).
    #[arg(long, value_name = "DIR")]
    metadata_dir: PathBuf,
    /// The repository's metadata directory URL.
    #[arg(long, value_name = "URL")]
    metadata_url: Option<String>,
    /// A target path to download; repeat for several, processed in order by one updater.
    #[arg(long = "target-name", value_name = "PATH")]
    target_names: Vec<String>,
    /// The repository's targets directory URL.
    #[arg(long, value_name = "URL")]
    target_base_url: Option<String>,
    /// Where verified targets are written.
    #[arg(long, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Trust TRUSTED_ROOT (copied into the metadata directory; no request is made).
    Init {
        /// The initial root metadata.
        trusted_root: PathBuf,
    },
    /// Refresh top-level metadata from the repository.
    Refresh,
    /// Refresh, then download and verify each `--target-name` into `--target-dir`.
    Download,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost-tuf-conformance: {}", outpost_shared::errors::one_line(e.chain()));
            ExitCode::FAILURE
        }
    }
}

/// Real time enters here (and `faketime` moves it); the library only ever takes it as an argument.
#[allow(clippy::disallowed_methods)]
fn now() -> Result<jiff::Timestamp> {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).context("the clock")?.as_secs();
    Ok(jiff::Timestamp::from_second(i64::try_from(secs)?)?)
}

async fn run(cli: Cli) -> Result<()> {
    let dir = &cli.metadata_dir;
    let (names, target_dir) = match &cli.command {
        Command::Init { trusted_root } => {
            let root = std::fs::read(trusted_root).with_context(|| format!("reading {}", trusted_root.display()))?;
            return Ok(tuf::pin_root(dir, &root)?);
        }
        Command::Refresh => (&[][..], None),
        Command::Download => {
            if cli.target_names.is_empty() {
                bail!("download needs --target-name");
            }
            (&cli.target_names[..], Some(cli.target_dir.as_deref().context("download needs --target-dir")?))
        }
    };
    let metadata_url = cli.metadata_url.as_deref().context("--metadata-url is required")?;
    // `refresh` fetches no target; the targets URL then only has to be well formed.
    let target_base_url = cli.target_base_url.as_deref().unwrap_or(metadata_url);
    let mirror = Mirror::new(&MirrorConfig::new(metadata_url, target_base_url)?)?;
    let now = now()?;
    let mut updater = tuf::updater(Arc::new(mirror), dir)?;
    updater.refresh(now).await.context("refresh")?;
    for name in names {
        // The agent's path for a target: resolve through delegations, reuse a verified cached copy, else
        // download and verify against the pinned length and hashes.
        let bytes = updater.get_target(name, now).await.with_context(|| format!("target {name:?}"))?;
        let out = target_dir.map(|d| d.join(file_name(name))).context("no target directory")?;
        write_if_changed(&out, &bytes)?;
    }
    Ok(())
}

/// One file per target path, whatever it contains: every byte outside `A-Z a-z 0-9 - _ . ~` percent-encoded
/// (so `/` and `..` cannot leave the directory), and the same path always maps to the same file.
fn file_name(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || b"-_~".contains(&b) || (b == b'.' && !out.is_empty()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Leaves an identical file alone (the suite checks a cached artifact is not rewritten).
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    device::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}
