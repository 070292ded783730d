//! `outpost-hub alias …`: named pointers to packages (stable, canary, …), moved atomically with their history.

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::{Out, label, registry};
use outpost_shared::clock::format_rfc3339;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum AliasCmd {
    /// Point ALIAS at a package (atomically, with history).
    Set {
        /// Alias name: a-z, 0-9, `-`, `_`, `.`.
        alias: String,
        /// A digest, a unique digest prefix, or name@version.
        package: String,
    },
    /// Show every change of ALIAS, oldest first.
    History {
        /// Alias name.
        alias: String,
    },
    /// List aliases and the packages they name.
    List,
}

/// Runs `outpost-hub alias …`.
pub fn run(cmd: AliasCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    match cmd {
        AliasCmd::Set { alias, package } => {
            let reg = registry(hub)?;
            let d = reg.resolve(&package)?;
            let ev = reg.alias_set(&alias, &d)?;
            let was = ev.previous.map(|p| format!(" (was {})", p.short())).unwrap_or_default();
            writeln!(o.err, "{alias} → {}{was}, change #{}", label(reg, &d)?, ev.seq)?;
        }
        AliasCmd::History { alias } => {
            let reg = registry(hub)?;
            for ev in reg.alias_history(&alias)? {
                let was = ev.previous.map(|p| p.short()).unwrap_or_else(|| "-".into());
                writeln!(
                    o.out,
                    "#{:<4} {}  {}  {}  (was {was})",
                    ev.seq,
                    format_rfc3339(ev.at),
                    ev.digest,
                    label(reg, &ev.digest)?
                )?;
            }
        }
        AliasCmd::List => {
            let reg = registry(hub)?;
            for (alias, d) in reg.aliases()? {
                writeln!(o.out, "{alias:<16} {d}  {}", label(reg, &d)?)?;
            }
        }
    }
    Ok(0)
}
