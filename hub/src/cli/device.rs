//! `outpost-hub device …`: approve, enrol, list, show and revoke devices; their TPM and their secondaries.

use anyhow::{Context, Result};
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use outpost_hub::service::Hub;

use super::{Out, devices};
use outpost_shared::clock::format_rfc3339;

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum DeviceCmd {
    /// Allow a device (its Ed25519 public key, hex) to connect and follow CHANNEL.
    Approve {
        /// The device's public key, 64 hex characters (`outpost-agent init` prints it).
        key: String,
        /// Release channel it follows.
        #[arg(long, value_name = "NAME", default_value = "stable")]
        channel: String,
        /// The site it belongs to (its site node, if any, may fetch and report on its behalf).
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
        /// The key is a site node's: it serves the devices of --site and fetches from the hub for them.
        #[arg(long, requires = "site")]
        site_node: bool,
    },
    /// Create a one-time enrolment token: the device that first presents it (`outpost-agent init --token T`) is
    /// approved on CHANNEL. Prints the token on stdout; only its hash is stored.
    Token {
        /// Seconds until the token stops working.
        #[arg(long, value_name = "SECS", default_value_t = 86_400)]
        expires: u64,
        /// Release channel the device follows.
        #[arg(long, value_name = "NAME", default_value = "stable")]
        channel: String,
        /// The site the device belongs to.
        #[arg(long, value_name = "NAME")]
        site: Option<String>,
    },
    /// List devices: status, channel, site, tier (software or hardware/TPM), last attestation result, active package.
    List,
    /// Show one device: status, tier, how it enrolled, hardware facts, its last attestation result and report.
    Show {
        /// The device's public key.
        key: String,
    },
    /// Record the TPM a device attests with, so it attests at the hardware tier: from then on its evidence must
    /// carry a quote by this attestation key over these boot PCR values and the agent and model it runs. FACTS is
    /// the hex line `outpost-agent tpm-facts` prints on the device (at provisioning, in a known-good state); `-`
    /// reads it from standard input. (Devices enrolling with a token send these facts themselves.)
    Tpm {
        /// The device's public key.
        key: String,
        /// The TPM enrolment facts, hex (or `-` for standard input).
        #[arg(required_unless_present = "clear")]
        facts: Option<String>,
        /// Forget the device's TPM: it attests at the software tier again.
        #[arg(long, conflicts_with = "facts")]
        clear: bool,
    },
    /// Refuse a device from now on; a serving hub cuts off its connections at their next request.
    Revoke {
        /// The device's public key.
        key: String,
    },
    /// Record the microcontrollers behind a gateway device: the director assigns them firmware through it.
    #[command(subcommand)]
    Secondary(SecondaryCmd),
    /// Offer a package again to a device that rolled back from it.
    Retry {
        /// The device's public key.
        key: String,
        /// The package.
        package: String,
    },
}

#[derive(Subcommand, Debug, Serialize, Deserialize)]
pub enum SecondaryCmd {
    /// Add (or update) a secondary behind GATEWAY_KEY; it gets the newest firmware package published to the
    /// gateway's channel for its hardware id.
    Add {
        /// The gateway device's public key.
        gateway_key: String,
        /// The secondary's device id, as provisioned into its firmware.
        #[arg(long, value_name = "ID")]
        device_id: String,
        /// The secondary's hardware id (matches `firmware.hardware_id` in firmware manifests).
        #[arg(long, value_name = "ID")]
        hardware_id: String,
    },
    /// Stop assigning firmware to a secondary.
    Remove {
        /// The gateway device's public key.
        gateway_key: String,
        /// The secondary's device id.
        #[arg(long, value_name = "ID")]
        device_id: String,
    },
}

/// Runs `outpost-hub device …`.
pub fn run(cmd: DeviceCmd, hub: &Hub, o: &mut Out<'_>) -> Result<u8> {
    match cmd {
        DeviceCmd::Token { expires, channel, site } => {
            let token = devices(hub)?.token_create(&channel, site.as_deref(), expires, &mut **hub.rng())?;
            writeln!(
                o.err,
                "one-time enrolment token for channel {channel}{}, valid {expires} s (only its hash is stored):",
                site.map(|s| format!(" at site {s}")).unwrap_or_default()
            )?;
            writeln!(o.out, "{token}")?;
        }
        DeviceCmd::Show { key } => {
            let reg = devices(hub)?;
            let lower = key.trim().to_ascii_lowercase();
            let d = reg.device(&lower)?.with_context(|| format!("no device with key {key}"))?;
            print_device(&d, o)?;
        }
        DeviceCmd::Approve { key, channel, site, site_node } => {
            let reg = devices(hub)?;
            let mut d = reg.device_approve(&key, &channel)?;
            if site.is_some() || d.site.is_some() {
                d = reg.device_set_site(&key, site.as_deref(), site_node)?;
            }
            let role = if d.site_node { "site node" } else { "device" };
            let site = d.site.as_deref().map(|s| format!(" at site {s}")).unwrap_or_default();
            writeln!(o.err, "approved {role} {} on channel {}{site}", d.key, d.channel)?;
        }
        DeviceCmd::List => {
            for d in devices(hub)?.devices()? {
                let active = d.active.map_or("-".to_owned(), |a| a.short());
                let rolled: Vec<String> = d.rolled_back.iter().map(|r| r.short()).collect();
                let site = match (d.shown_site(), d.site_node) {
                    (Some(s), true) => format!("node:{s}"),
                    (Some(s), false) => s.to_owned(),
                    (None, _) => "-".into(),
                };
                let tier = if d.tpm.is_some() { "hardware" } else { "software" };
                let attested = d.attestation.as_ref().map_or("never".to_owned(), |a| a.status.clone());
                writeln!(
                    o.out,
                    "{}  {:<8} {:<10} {:<12} {:<8} attested {:<15} active {:<12} assignment v{:<4} rolled back [{}]  policy {}  last report {}",
                    d.key,
                    format!("{:?}", d.status).to_lowercase(),
                    d.channel,
                    site,
                    tier,
                    attested,
                    active,
                    d.assignment_version,
                    rolled.join(", "),
                    d.policy.map_or("-".to_owned(), |p| p.short()),
                    d.last_report.map_or("never".to_owned(), format_rfc3339)
                )?;
                for s in &d.secondaries {
                    writeln!(o.out, "  secondary {} (hardware {})", s.device_id, s.hardware_id)?;
                }
            }
        }
        DeviceCmd::Secondary(SecondaryCmd::Add { gateway_key, device_id, hardware_id }) => {
            let d = devices(hub)?.device_secondary_add(&gateway_key, &device_id, &hardware_id)?;
            writeln!(
                o.err,
                "gateway {} now has {} secondar{}; {device_id} gets firmware for {hardware_id}",
                d.key,
                d.secondaries.len(),
                if d.secondaries.len() == 1 { "y" } else { "ies" }
            )?;
        }
        DeviceCmd::Secondary(SecondaryCmd::Remove { gateway_key, device_id }) => {
            let d = devices(hub)?.device_secondary_remove(&gateway_key, &device_id)?;
            writeln!(o.err, "gateway {} no longer assigns firmware to {device_id}", d.key)?;
        }
        DeviceCmd::Retry { key, package } => {
            let d = hub.store()?.packages().resolve(&package)?;
            devices(hub)?.device_retry(&key, &d)?;
            writeln!(
                o.err,
                "device {key} will be offered {} again (the device itself still refuses a package it rolled back from until its state is reset)",
                d.short()
            )?;
        }
        DeviceCmd::Tpm { key, facts, clear } => {
            let record = match facts {
                None => None,
                Some(text) => {
                    let text = if text == "-" { std::io::read_to_string(std::io::stdin())? } else { text };
                    let bytes = hex::decode(text.trim())
                        .context("TPM facts must be the hex line `outpost-agent tpm-facts` prints")?;
                    let e = outpost_attestation::TpmEnrolment::from_bytes(&bytes).context("TPM facts refused")?;
                    Some(outpost_hub::registry::TpmRecord::of(&e))
                }
            };
            let d = devices(hub)?.device_set_tpm(&key, record)?;
            match (&d.tpm, clear) {
                (Some(t), _) => writeln!(
                    o.err,
                    "device {} attests at the hardware tier: TPM key {}…, boot PCRs {:#x} (its next evidence must carry a quote)",
                    d.key,
                    t.ak.get(..16).unwrap_or(&t.ak),
                    t.pcrs
                )?,
                (None, _) => writeln!(o.err, "device {} attests at the software tier", d.key)?,
            }
        }
        DeviceCmd::Revoke { key } => revoke(hub, o, &key, "operator")?,
    }
    Ok(0)
}

/// Revokes a device and records it in the audit log under `actor`.
pub(super) fn revoke(hub: &Hub, o: &mut Out<'_>, key: &str, actor: &str) -> Result<()> {
    let d = devices(hub)?.device_revoke(key)?;
    super::audit(hub, actor, outpost_shared::audit::Action::Revoke, &d.key, "device")?;
    writeln!(
        o.err,
        "revoked device {}: its connections are refused from now on (a serving hub cuts off attested ones at their next request)",
        d.key
    )?;
    Ok(())
}

fn print_device(d: &outpost_hub::registry::DeviceRecord, o: &mut Out<'_>) -> Result<()> {
    let tier = match &d.tpm {
        Some(t) => format!("hardware (TPM key {}…, boot PCRs {:#x})", t.ak.get(..16).unwrap_or(&t.ak), t.pcrs),
        None => "software".into(),
    };
    writeln!(o.out, "device      {}", d.key)?;
    writeln!(o.out, "status      {}", format!("{:?}", d.status).to_lowercase())?;
    writeln!(o.out, "tier        {tier}")?;
    writeln!(
        o.out,
        "enrolled    {} by {}",
        format_rfc3339(d.approved_at),
        d.enrolled_by.as_deref().unwrap_or("operator")
    )?;
    writeln!(o.out, "hardware    {}", d.hardware.as_deref().unwrap_or("-"))?;
    writeln!(o.out, "channel     {}", d.channel)?;
    let site =
        d.shown_site().map_or("-".to_owned(), |s| if d.site_node { format!("{s} (site node)") } else { s.into() });
    writeln!(o.out, "site        {site}")?;
    writeln!(o.out, "active      {}", d.active.map_or("-".to_owned(), |a| a.to_string()))?;
    writeln!(o.out, "policy      {}", d.policy.map_or("-".to_owned(), |p| p.to_string()))?;
    writeln!(o.out, "last report {}", d.last_report.map_or("never".to_owned(), format_rfc3339))?;
    match &d.attestation {
        None => writeln!(o.out, "attestation never")?,
        Some(a) => {
            writeln!(o.out, "attestation {} at {}", a.status, format_rfc3339(a.at))?;
            if let Some(t) = &a.tier {
                writeln!(o.out, "  tier      {t}")?;
            }
            if let Some(e) = a.expires {
                writeln!(o.out, "  expires   {}", format_rfc3339(e))?;
            }
            if let Some(sw) = &a.software {
                writeln!(o.out, "  software  {sw}")?;
            }
            if let Some(b) = a.bootcount {
                writeln!(o.out, "  bootcount {b}")?;
            }
            if let Some(m) = a.model {
                writeln!(o.out, "  model     {m}")?;
            }
            if let Some(p) = a.policy {
                writeln!(o.out, "  policy    {p}")?;
            }
            if let Some(detail) = &a.detail {
                writeln!(o.out, "  detail    {detail}")?;
            }
        }
    }
    Ok(())
}
