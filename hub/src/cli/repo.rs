//! `outpost-hub repo …`: export the TUF repository as static files, or re-sign its online roles.

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::Out;
use outpost_hub::director::Director;
use std::path::PathBuf;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum RepoCmd {
    /// Write metadata and targets as static files (DIR/metadata, DIR/targets) for any HTTP server or CDN.
    Export {
        /// Output directory.
        dir: PathBuf,
    },
    /// Re-sign snapshot and timestamp (and the revocation list) if they expire within the configured margin.
    Refresh,
}

/// Runs `outpost-hub repo …`.
pub fn run(cmd: RepoCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    match cmd {
        RepoCmd::Export { dir: out } => {
            let n = hub.repo().export(&out)?;
            writeln!(o.err, "exported {n} files to {} (metadata/ and targets/)", out.display())?;
        }
        RepoCmd::Refresh => {
            let r = hub.repo();
            let now = hub.clock().wall();
            let resigned = r.refresh_online(now)?;
            Director::new(&r).refresh_revocations(now)?;
            writeln!(
                o.err,
                "{}",
                if resigned { "re-signed snapshot and timestamp" } else { "snapshot and timestamp are fresh" }
            )?;
        }
    }
    Ok(0)
}
