//! The commands that run alone, never inside a serving hub: `init`, `migrate`, `identity`, and `serve`, which builds
//! the service configuration and hands over to `outpost_hub::service::run`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use outpost_attestation::identity::Identity;
use outpost_hub::clock::{SystemClock, SystemRng};
use outpost_hub::config::{CONFIG_FILE, HubConfig};
use outpost_hub::console::{ConsoleConfig, TlsFiles};
use outpost_hub::registry::{InitOutcome, Registry};
use outpost_hub::service::ServiceConfig;

use super::Out;

/// Runs `outpost-hub init`.
pub fn init(dir: &Path, o: &mut Out<'_>) -> Result<()> {
    match Registry::init(dir)? {
        InitOutcome::Created => {
            writeln!(o.err, "initialised a hub in {} (edit {}/hub.toml)", dir.display(), dir.display())?
        }
        InitOutcome::AlreadyInitialised => writeln!(o.err, "{} already holds a hub; nothing changed", dir.display())?,
    }
    Ok(())
}

/// Runs `outpost-hub migrate`: the database named by `--postgres`, else by `[store] postgres` in hub.toml.
pub fn migrate(dir: &Path, postgres: Option<String>, o: &mut Out<'_>) -> Result<()> {
    let url = match postgres {
        Some(url) => url,
        None => config(dir)?.store.postgres.with_context(|| {
            format!(
                "no database: give `--postgres URL`, or set `[store] postgres` in {}",
                dir.join(CONFIG_FILE).display()
            )
        })?,
    };
    let limits = outpost_hub::store::postgres::PgLimits::default();
    let done = outpost_hub::store::postgres::migrate(&url, &limits)?;
    if done.from == done.to {
        writeln!(o.err, "the database's schema is at version {}, the newest; nothing changed", done.to)?;
    } else {
        writeln!(o.err, "migrated the database's schema from version {} to {}", done.from, done.to)?;
    }
    writeln!(o.out, "{}", done.to)?;
    Ok(())
}

/// The configuration of the hub in `dir`, naming `init` if there is none.
pub fn config(dir: &Path) -> Result<HubConfig> {
    HubConfig::load(&dir.join(CONFIG_FILE)).with_context(|| {
        format!("no hub at {}: run `outpost-hub --data-dir {} init` first", dir.display(), dir.display())
    })
}

/// The hub's QUIC identity in `keys/hub.identity` of the directory the replicas share (`[store] shared_dir`; the
/// data directory by default), so every replica presents the one key agents pin; created on first use (then
/// `created` is told its path).
pub fn identity(dir: &Path, created: impl FnOnce(&Path) -> Result<()>) -> Result<Identity> {
    let keys = config(dir)?.store.shared(dir).join("keys");
    let path = keys.join("hub.identity");
    if !path.exists() {
        let mut seed = [0u8; 32];
        outpost_shared::rng::Rng::fill(&mut SystemRng, &mut seed);
        let id = Identity::from_seed(seed);
        std::fs::create_dir_all(&keys)?;
        id.save(&path)?;
        created(&path)?;
    }
    Ok(Identity::load(&path)?)
}

/// The console configuration `--console ADDR [--console-tls CERT KEY]` asks for.
pub fn console(
    bind: Option<std::net::SocketAddr>,
    tls: Option<Vec<std::path::PathBuf>>,
) -> Result<Option<ConsoleConfig>> {
    let Some(bind) = bind else { return Ok(None) };
    let mut config = ConsoleConfig::new(bind);
    config.tls = match tls.as_deref() {
        None => None,
        Some([cert, key]) => Some(TlsFiles { cert: cert.clone(), key: key.clone() }),
        Some(_) => anyhow::bail!("--console-tls takes two files: CERT KEY"),
    };
    Ok(Some(config))
}

/// What `serve` takes besides its addresses: the connection bound and the simulations' deliberate fault.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-connections`.
    pub max_connections: usize,
    /// Hidden `--sim-fault`.
    pub sim_fault: Option<outpost_hub::service::SimFault>,
}

/// Runs `outpost-hub serve` until interrupted.
pub fn serve(
    dir: &Path,
    bind: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
    console: Option<ConsoleConfig>,
    limits: Limits,
) -> Result<()> {
    let hub = config(dir)?;
    // The service logs (possibly as JSON): the one-time creation is a log event too.
    let identity = identity(dir, |path| {
        tracing::info!(path = %path.display(), "created the hub identity {}", path.display());
        Ok(())
    })?;
    let mut config = ServiceConfig::new(dir, hub, identity);
    config.bind = bind;
    config.metrics = metrics;
    config.console = console;
    config.admin = Some(Arc::new(super::Commands));
    config.max_connections = limits.max_connections;
    config.sim_fault = limits.sim_fault;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(outpost_hub::service::run(config, Arc::new(SystemClock), Box::new(SystemRng), async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(())
}
