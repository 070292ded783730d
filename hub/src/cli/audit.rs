//! `outpost-hub audit …`: print and verify the hash-chained log of admin actions.

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::Out;
use outpost_shared::clock::format_rfc3339;

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
            let path = outpost_hub::audit::default_path(hub.dir());
            let anchor = hub.store()?.audit().audit_anchor()?;
            let v = outpost_hub::audit::verify(&path, anchor.as_ref())?;
            let head = v.head.map_or("-".to_owned(), |a| format!("#{} {}", a.seq, a.hash.short()));
            writeln!(o.out, "audit log {}: {} entries, chain intact, head {head}", path.display(), v.entries)?;
            if v.incomplete_tail {
                writeln!(
                    o.err,
                    "warning: the log ends in an incomplete record (an interrupted append); it is not an entry"
                )?;
            }
        }
        AuditCmd::Show => {
            let (entries, _) = outpost_hub::audit::read(&outpost_hub::audit::default_path(hub.dir()))?;
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
