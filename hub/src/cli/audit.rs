//! `outpost-hub audit …`: print and verify the hash-chained log of admin actions.

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::Out;
use outpost_shared::clock::format_rfc3339;

/// How `audit verify` names the log on PostgreSQL (`[store] postgres`): its table.
const POSTGRES_LOG: &str = "audit_log (PostgreSQL)";

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum AuditCmd {
    /// Check the chain of the audit log: an edited, removed or reordered entry is named, and the exit status
    /// is non-zero.
    Verify,
    /// Print the audit log.
    Show,
}

/// Runs `outpost-hub audit …`.
pub fn run(cmd: AuditCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    match cmd {
        AuditCmd::Verify => {
            let store = hub.store()?;
            let anchor = store.audit().audit_anchor()?;
            let (place, v) = match store.postgres() {
                Some(_) => {
                    let place = std::path::Path::new(POSTGRES_LOG);
                    (
                        place.to_owned(),
                        outpost_hub::audit::verify_entries(&*store.audit_log()?, anchor.as_ref(), place)?,
                    )
                }
                None => {
                    let path = outpost_hub::audit::default_path(hub.dir());
                    let v = outpost_hub::audit::verify(&path, anchor.as_ref())?;
                    (path, v)
                }
            };
            let head = v.head.map_or("-".to_owned(), |a| format!("#{} {}", a.seq, a.hash.short()));
            writeln!(o.out, "audit log {}: {} entries, chain intact, head {head}", place.display(), v.entries)?;
            if v.incomplete_tail {
                writeln!(
                    o.err,
                    "warning: the log ends in an incomplete record (an interrupted append); it is not an entry"
                )?;
            }
        }
        AuditCmd::Show => {
            let store = hub.store()?;
            let entries = match store.postgres() {
                Some(_) => store.audit_log()?.audit_entries(0)?,
                None => outpost_hub::audit::read(&outpost_hub::audit::default_path(hub.dir()))?.0,
            };
            for e in entries {
                writeln!(
                    o.out,
                    "{:>5} {} {:<14} {:<13} {} {}",
                    e.seq,
                    format_rfc3339(e.at),
                    e.actor,
                    format!("{:?}", e.action).to_lowercase(),
                    e.subject,
                    e.detail
                )?;
            }
        }
    }
    Ok(0)
}
