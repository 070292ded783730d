//! `outpost-hub attestation …`: the central team's key and the signed reference values the hub attests against.

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::Out;
use outpost_attestation::identity::Identity;
use outpost_shared::clock::format_rfc3339;
use std::path::PathBuf;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum AttestationCmd {
    /// Make the central team's Ed25519 key (keep it offline). Prints its public key for hub.toml
    /// `[attestation] team_key`.
    TeamKey {
        /// Where the secret key is written (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Signed reference values: the agent builds (name, version, SHA-256) the hub attests.
    #[command(subcommand)]
    Reference(ReferenceCmd),
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum ReferenceCmd {
    /// Sign a reference-values document listing one agent version (one --sha256 per build of it), carrying over
    /// the entries of --base.
    Sign {
        /// The team's secret key file.
        #[arg(long, value_name = "FILE")]
        team_key: PathBuf,
        /// Software name, as the agent reports it.
        #[arg(long, default_value = "outpost-agent")]
        name: String,
        /// Software version, as the agent reports it.
        #[arg(long)]
        version: String,
        /// SHA-256 of a build's binary (`sha256sum outpost-agent`); repeat for several builds.
        #[arg(long = "sha256", value_name = "HEX", required = true)]
        sha256: Vec<String>,
        /// A signed document whose entries are carried over (its serial + 1 becomes the default serial).
        #[arg(long, value_name = "FILE")]
        base: Option<PathBuf>,
        /// Serial (must exceed the installed one). Default: --base's + 1, else the current Unix time.
        #[arg(long)]
        serial: Option<u64>,
        /// Seconds until the document expires (every appraisal fails after that).
        #[arg(long, value_name = "SECS", default_value_t = 30 * 86_400)]
        expires_in: u64,
        /// Where the signed document is written.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Install a signed document into the hub (checked against the team key, expiry and serial); a serving hub
    /// picks it up at its next challenge.
    Install {
        /// The signed document.
        file: PathBuf,
    },
    /// Re-sign the installed document with VERSION marked revoked (serial + 1) and install it: agents reporting
    /// it are refused from their next attestation.
    Revoke {
        /// The version to revoke.
        #[arg(long)]
        version: String,
        /// Software name.
        #[arg(long, default_value = "outpost-agent")]
        name: String,
        /// The team's secret key file.
        #[arg(long, value_name = "FILE")]
        team_key: PathBuf,
        /// Seconds until the new document expires.
        #[arg(long, value_name = "SECS", default_value_t = 30 * 86_400)]
        expires_in: u64,
    },
    /// Print the installed document.
    Show,
}

/// Runs `outpost-hub attestation …`.
pub fn run(cmd: AttestationCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    use outpost_attestation::{ReferenceValues, SoftwareRef, TrustedReferenceValues};
    let now = hub.clock().wall();
    match cmd {
        AttestationCmd::TeamKey { out } => {
            let mut seed = [0u8; 32];
            outpost_shared::rng::Rng::fill(&mut **hub.rng(), &mut seed);
            let id = Identity::from_seed(seed);
            if out.exists() {
                anyhow::bail!("{} exists; refusing to overwrite a key", out.display());
            }
            id.save(&out)?;
            writeln!(o.err, "wrote the team key {} (keep it offline); its public key, for hub.toml:", out.display())?;
            writeln!(o.out, "{}", id.public_key().to_hex())?;
        }
        AttestationCmd::Reference(ReferenceCmd::Sign {
            team_key,
            name,
            version,
            sha256,
            base,
            serial,
            expires_in,
            out,
        }) => {
            let team = Identity::load(&team_key)?;
            let mut software = Vec::new();
            let mut base_serial = None;
            if let Some(base) = base {
                let bytes = std::fs::read(&base).with_context(|| format!("reading {}", base.display()))?;
                let doc = TrustedReferenceValues::verify(&bytes, &team.public_key())
                    .with_context(|| format!("{} is not signed by this team key", base.display()))?;
                base_serial = Some(doc.document().serial);
                software = doc.document().software.clone();
            }
            for hex in sha256 {
                let digest: outpost_shared::Digest =
                    hex.trim().parse().map_err(|e| anyhow::anyhow!("--sha256 {hex}: {e}"))?;
                software.retain(|s| s.sha256 != digest);
                software.push(SoftwareRef {
                    name: name.clone(),
                    version: version.clone(),
                    sha256: digest,
                    revoked: false,
                });
            }
            let doc = ReferenceValues {
                serial: serial.unwrap_or_else(|| base_serial.map_or(now, |s| s + 1)),
                issued_at: now,
                expires: now + expires_in,
                software,
            };
            outpost_hub::blobs::write_atomic(&out, &doc.sign(&team))?;
            writeln!(
                o.err,
                "signed reference values serial {} ({} entries, expires {}) to {}",
                doc.serial,
                doc.software.len(),
                format_rfc3339(doc.expires),
                out.display()
            )?;
        }
        AttestationCmd::Reference(ReferenceCmd::Install { file }) => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let config = hub.config();
            let serial = outpost_hub::attest::install_reference_values(
                hub.dir(),
                &config.attestation,
                &bytes,
                hub.clock().clone(),
            )
            .map_err(anyhow::Error::msg)?;
            writeln!(
                o.err,
                "installed reference values serial {serial}; a serving hub uses them from its next challenge"
            )?;
        }
        AttestationCmd::Reference(ReferenceCmd::Revoke { version, name, team_key, expires_in }) => {
            let team = Identity::load(&team_key)?;
            let config = hub.config();
            let trusted = outpost_hub::attest::team_key(hub.dir(), &config.attestation).map_err(anyhow::Error::msg)?;
            if trusted != team.public_key() {
                anyhow::bail!("{} is not the team key this hub trusts", team_key.display());
            }
            let path = hub.dir().join(outpost_hub::attest::REFERENCE_VALUES_FILE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("no installed reference values at {}", path.display()))?;
            let current = TrustedReferenceValues::verify(&bytes, &trusted)?;
            let mut doc = current.document().clone();
            let mut hit = 0;
            for s in doc.software.iter_mut().filter(|s| s.name == name && s.version == version) {
                s.revoked = true;
                hit += 1;
            }
            if hit == 0 {
                anyhow::bail!("the installed reference values list no {name} {version}");
            }
            doc.serial += 1;
            doc.issued_at = now;
            doc.expires = now + expires_in;
            let signed = doc.sign(&team);
            let serial = outpost_hub::attest::install_reference_values(
                hub.dir(),
                &config.attestation,
                &signed,
                hub.clock().clone(),
            )
            .map_err(anyhow::Error::msg)?;
            writeln!(o.err, "revoked {name} {version} ({hit} build(s)); reference values serial {serial} installed")?;
        }
        AttestationCmd::Reference(ReferenceCmd::Show) => {
            let config = hub.config();
            let trusted = outpost_hub::attest::team_key(hub.dir(), &config.attestation).map_err(anyhow::Error::msg)?;
            let path = hub.dir().join(outpost_hub::attest::REFERENCE_VALUES_FILE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("no installed reference values at {}", path.display()))?;
            let doc = TrustedReferenceValues::verify(&bytes, &trusted)?;
            let d = doc.document();
            writeln!(
                o.out,
                "serial {}  issued {}  expires {}",
                d.serial,
                format_rfc3339(d.issued_at),
                format_rfc3339(d.expires)
            )?;
            for s in &d.software {
                writeln!(
                    o.out,
                    "{:<16} {:<12} {}{}",
                    s.name,
                    s.version,
                    s.sha256,
                    if s.revoked { "  REVOKED" } else { "" }
                )?;
            }
        }
    }
    Ok(0)
}
