//! `outpost-hub console …`: issue, list and remove the web console's operators; and the console's actions, run
//! here by the same command code the CLI runs, with the operator's name as the audit log's actor.

use anyhow::Result;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::console::users::{self, HashParams, Role};
use outpost_hub::console::{Action, User};
use outpost_hub::service::Hub;
use outpost_shared::audit::Action as Audited;
use outpost_shared::rollout::Command as Rollout;

use super::{Out, registry};

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum ConsoleCmd {
    /// The web console's users (`serve --console ADDR`).
    #[command(subcommand)]
    User(UserCmd),
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum UserCmd {
    /// Issue a credential: prints a new random password on stdout, once; only its Argon2id hash is stored. Adding
    /// a user that exists replaces their password and role (their open sessions end).
    Add {
        /// Login name (a-z, 0-9, `-`, `_`, `.`).
        name: String,
        /// `viewer` reads every page; `operator` may also pause, resume, abort and retry releases and revoke
        /// devices.
        #[arg(long, value_parser = ["viewer", "operator"])]
        role: String,
    },
    /// The console's users and roles.
    List,
    /// Remove a user (their open sessions end).
    Remove {
        /// Login name.
        name: String,
    },
}

/// Runs `outpost-hub console …`.
pub fn run(cmd: ConsoleCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    let reg = registry(hub)?;
    match cmd {
        ConsoleCmd::User(UserCmd::Add { name, role }) => {
            let role: Role = role.parse()?;
            let (user, password) =
                users::issue(&name, role, HashParams::default(), hub.clock().wall(), &mut **hub.rng())?;
            let replaced = reg.console_user(&name)?.is_some();
            reg.console_user_put(&user)?;
            writeln!(
                o.err,
                "{} console {} `{name}`; the password (shown once, only its hash is kept):",
                if replaced { "re-issued the credential of" } else { "added" },
                role.as_str()
            )?;
            writeln!(o.out, "{password}")?;
        }
        ConsoleCmd::User(UserCmd::List) => {
            writeln!(o.out, "{:<24} {:<9} ISSUED", "USER", "ROLE")?;
            for u in reg.console_users()? {
                let User { name, role, issued_at, .. } = u;
                writeln!(
                    o.out,
                    "{name:<24} {:<9} {}",
                    role.as_str(),
                    outpost_shared::clock::format_rfc3339(issued_at)
                )?;
            }
        }
        ConsoleCmd::User(UserCmd::Remove { name }) => {
            if !reg.console_user_remove(&name)? {
                anyhow::bail!("no console user `{name}`");
            }
            writeln!(o.err, "removed console user `{name}`")?;
        }
    }
    Ok(0)
}

/// Runs a console operator's action with the command code the CLI runs (`release pause`, `device revoke`, …),
/// audited under `actor`; returns the exit code.
pub fn act(hub: &Hub, actor: &str, action: &Action, o: &mut Out<'_>) -> Result<u8> {
    let now = hub.clock().wall();
    let release = |id: &str, a: Audited, cmd: Rollout, o: &mut Out<'_>| {
        super::release::release_command(hub, o, id, actor, a, cmd, now)
    };
    match action {
        Action::Pause { release: id } => release(id, Audited::Pause, Rollout::Pause, o)?,
        Action::Resume { release: id } => release(id, Audited::Resume, Rollout::Resume, o)?,
        Action::Abort { release: id, reason } => {
            release(id, Audited::Abort, Rollout::Abort { reason: reason.clone() }, o)?
        }
        Action::RetryFailed { release: id } => release(id, Audited::RetryFailed, Rollout::RetryFailed, o)?,
        Action::RevokeDevice { key } => super::device::revoke(hub, o, key, actor)?,
    }
    Ok(0)
}
