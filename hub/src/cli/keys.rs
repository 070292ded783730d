//! `outpost-hub keys …`: make and rotate the TUF signing keys.

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::{Out, audit};
use outpost_hub::tuf::GenerateOptions;
use outpost_hub::tuf::Key;
use outpost_hub::tuf::key_id;
use outpost_shared::audit::Action;
use std::path::PathBuf;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum KeysCmd {
    /// Create root and targets keys in an offline directory (keep it off the hub), online snapshot, timestamp and
    /// director keys in the data directory, and the first signed version of every TUF role.
    Generate {
        /// Where the offline root and targets keys are written. Keep them off the serving machine.
        #[arg(long, value_name = "DIR")]
        offline_dir: PathBuf,
        /// Number of root keys.
        #[arg(long, default_value_t = 1)]
        root_keys: usize,
        /// Root signatures required.
        #[arg(long, default_value_t = 1)]
        root_threshold: usize,
        /// Number of targets keys (at least 2: high-risk releases need two distinct signers).
        #[arg(long, default_value_t = 2)]
        targets_keys: usize,
    },
    /// Replace ROLE's key. root, targets, snapshot, timestamp: root N+1 signed by the current root keys (give
    /// --root-key) and the new ones; clients walk the chain. director: a new top-level targets version listing
    /// the new director key, signed with --targets-key.
    Rotate {
        /// root, targets, snapshot, timestamp or director.
        role: String,
        /// Where a new offline key is written.
        #[arg(long, value_name = "DIR")]
        offline_dir: Option<PathBuf>,
        /// Current root key file(s), as many as the current root threshold.
        #[arg(long = "root-key", value_name = "FILE")]
        root_keys: Vec<PathBuf>,
        /// Top-level targets key file (for rotating the director key).
        #[arg(long, value_name = "FILE")]
        targets_key: Option<PathBuf>,
    },
}

/// Runs `outpost-hub keys …`.
pub fn run(cmd: KeysCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let r = hub.repo();
    let now = hub.clock().wall();
    match cmd {
        KeysCmd::Generate { offline_dir, root_keys, root_threshold, targets_keys } => {
            let opts = GenerateOptions { root_keys, root_threshold, targets_keys };
            let written = r.generate(&offline_dir, opts, &mut **hub.rng(), now)?;
            for p in written {
                writeln!(o.err, "wrote {}", p.display())?;
            }
            writeln!(
                o.err,
                "signed root v1, targets v1 (delegating `standard` and `high-risk`), snapshot and timestamp"
            )?;
            writeln!(o.err, "move {} off this machine: `serve` never needs it", offline_dir.display())?;
            writeln!(o.out, "{}", r.metadata_dir().join("1.root.json").display())?;
        }
        KeysCmd::Rotate { role, targets_key: Some(targets_key), .. } if role == "director" => {
            let path = r.rotate_director(&Key::load(&targets_key)?, &targets_key, &mut **hub.rng(), now)?;
            writeln!(
                o.err,
                "rotated director: new key {} is listed by targets v{}",
                path.display(),
                r.latest_version("targets")?
            )?;
            audit(hub, &key_id(&Key::load(&targets_key)?.public_bytes()), Action::Rotate, "director", "")?;
        }
        KeysCmd::Rotate { role, .. } if role == "director" => {
            anyhow::bail!("rotating the director key needs --targets-key FILE (it is listed by the targets role)");
        }
        KeysCmd::Rotate { role, offline_dir, root_keys, .. } => {
            let offline_dir = offline_dir.context("--offline-dir DIR is required to rotate this role")?;
            if root_keys.is_empty() {
                anyhow::bail!("rotating {role} needs the current root key(s): --root-key FILE");
            }
            let roots = root_keys.into_iter().map(|p| Ok((Key::load(&p)?, p))).collect::<Result<Vec<_>>>()?;
            let written = r.rotate(&role, &offline_dir, &roots, &mut **hub.rng(), now)?;
            for p in written {
                writeln!(o.err, "wrote {}", p.display())?;
            }
            writeln!(
                o.err,
                "rotated {role}: root v{} is signed by the old and the new keys",
                r.read_meta::<outpost_hub::tuf::Signed<outpost_hub::tuf::metadata::Root>>("root.json")?.signed.version
            )?;
            audit(hub, "operator", Action::Rotate, &role, "root rotation")?;
        }
    }
    Ok(0)
}
