//! The agent's `agent.toml`: where the hub is and who it is, where the device keeps its state, and the update
//! and health-window settings. Parsed strictly (unknown keys are errors naming the key and the file).
//!
//! Paths in the file are relative to the file's directory, so a device directory can be moved whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use outpost_attestation::identity::PublicKey;
use serde::Deserialize;

#[cfg(feature = "mirror")]
use crate::mirror::MirrorConfig;
use crate::site_policy::PolicySource;

pub use outpost_shared::config::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    hub: RawHub,
    #[serde(default)]
    device: RawDevice,
    #[serde(default)]
    updates: Updates,
    #[serde(default)]
    inference: RawInference,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    site: RawSite,
    #[serde(default)]
    attestation: Option<RawAttestation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    tpm: String,
    #[serde(default = "default_boot_pcrs")]
    boot_pcrs: Vec<u8>,
}

fn default_boot_pcrs() -> Vec<u8> {
    (0..8).collect()
}

/// The TPM the device attests with (`[attestation]`): hardware-tier evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmConfig {
    /// TCTI string naming the TPM, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// The measured-boot PCRs quoted besides the measurement PCR (bit `i` is PCR `i`).
    pub boot_pcrs: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    #[serde(default = "default_site_bind")]
    bind: String,
    #[serde(default = "default_cache_max_mib")]
    cache_max_mib: u64,
}

fn default_site_bind() -> String {
    "0.0.0.0:7443".into()
}

fn default_cache_max_mib() -> u64 {
    4096
}

impl Default for RawSite {
    fn default() -> Self {
        RawSite { bind: default_site_bind(), cache_max_mib: default_cache_max_mib() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: String,
    #[serde(default)]
    wasm: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    addresses: Option<Vec<String>>,
    key: String,
    #[serde(default)]
    mirror: Option<String>,
    #[serde(default)]
    mirror_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    #[serde(default = "default_data_dir")]
    data_dir: String,
}

fn default_data_dir() -> String {
    ".".into()
}

impl Default for RawDevice {
    fn default() -> Self {
        RawDevice { data_dir: default_data_dir() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInference {
    #[serde(default = "default_inference_bind")]
    bind: String,
    #[serde(default = "default_shadow_percent")]
    shadow_percent: u32,
    #[serde(default)]
    token_file: Option<String>,
    #[serde(default)]
    socket: Option<String>,
}

fn default_shadow_percent() -> u32 {
    10
}

fn default_inference_bind() -> String {
    "127.0.0.1:8080".into()
}

impl Default for RawInference {
    fn default() -> Self {
        RawInference {
            bind: default_inference_bind(),
            shadow_percent: default_shadow_percent(),
            token_file: None,
            socket: None,
        }
    }
}

/// Update-loop settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Updates {
    /// Seconds between update checks.
    pub poll_secs: u64,
    /// Up to this many seconds are added at random to each wait, so a fleet does not check in lockstep.
    pub jitter_secs: u64,
    /// Successful inferences that confirm a new package.
    pub health_inferences: u32,
    /// Seconds without an error that confirm a new package (whichever comes first).
    pub health_secs: u64,
    /// Longest a whole update check may take (connect, attest, TUF, assignment, downloads, staging, reports):
    /// past it the check fails with `CheckError::Deadline` and the loop goes on, so a hub, site node or mirror
    /// that sends a byte now and then cannot freeze it. A download cut short resumes at the next check.
    pub check_deadline_secs: u64,
    /// Memory the device gives its models, in bytes (`None`: unbounded). Before a package is downloaded, the memory
    /// budgets (`runtime.memory_budget_bytes`) of every model the device would then hold are summed — each other
    /// capability's, this capability's active model (it stays loaded through the new package's health window) and
    /// the new package — and a package past this limit is refused (rule `memory_budget`, reported to the hub).
    pub memory_limit_bytes: Option<u64>,
}

/// Default of [`Updates::check_deadline_secs`]: ten minutes, room for a large model on a slow link (and a
/// download cut short resumes where it stopped).
pub const DEFAULT_CHECK_DEADLINE_SECS: u64 = 600;

impl Default for Updates {
    fn default() -> Self {
        Updates {
            poll_secs: 60,
            jitter_secs: 10,
            health_inferences: 20,
            health_secs: 300,
            check_deadline_secs: DEFAULT_CHECK_DEADLINE_SECS,
            memory_limit_bytes: None,
        }
    }
}

/// Most hub replicas `[hub] addresses` may list.
pub const MAX_HUB_ADDRESSES: usize = 16;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The hub's UDP addresses: one (`[hub] address`), or its replicas in the order they are tried (`[hub]
    /// addresses`). Never empty; replicas share the hub's identity, so one key pins them all.
    pub hub_addresses: Vec<SocketAddr>,
    /// The hub's pinned public key (every replica presents it).
    pub hub_key: PublicKey,
    /// A static mirror of the hub's TUF repository to read metadata and packages from instead of the hub
    /// (feature `mirror`; without it, `[hub] mirror` is refused).
    #[cfg(feature = "mirror")]
    pub mirror: Option<MirrorConfig>,
    /// Where identity, TUF metadata, state, staging and slots live.
    pub data_dir: PathBuf,
    /// Update settings.
    pub updates: Updates,
    /// Address of the local inference API.
    pub inference_bind: SocketAddr,
    /// Share of answered requests (percent) a shadow package also runs on, during a rollout's shadow stage.
    pub shadow_percent: u32,
    /// A file holding the bearer token the inference API requires (`None`: no token, anyone who can reach
    /// `inference_bind` may call it). Read at start (`outpost_agent::inference::BearerToken::load`).
    pub inference_token_file: Option<PathBuf>,
    /// A Unix socket the inference API is also served on (`None`: TCP only).
    pub inference_socket: Option<PathBuf>,
    /// The site policy this device enforces, if any.
    pub policy: Option<PolicySource>,
    /// Where a site node (`run --mode site`) serves its devices.
    pub site_bind: SocketAddr,
    /// Most bytes of packages a site node keeps in its cache (the least recently served go first).
    pub site_cache_max_bytes: u64,
    /// The TPM this device attests with, if any (software-tier evidence otherwise).
    pub tpm: Option<TpmConfig>,
}

/// The commented file `outpost-agent init` writes.
pub fn render(hub_address: &str, hub_key: &str) -> String {
    format!(
        r#"# Outpost agent configuration. Paths are relative to this file's directory.

[hub]
# UDP address of the hub (or of this site's node).
address = "{hub_address}"
# Or, for a hub served by several replicas (`outpost-hub serve` on other machines, over the same hub data and
# identity), every replica's address instead of `address`: the agent talks to one at a time and, when it cannot
# reach it (connecting fails, the connection is lost or goes silent), moves to the next; the next round starts at
# the one that answered last, after the poll interval. A download cut short resumes from the next replica.
# addresses = ["10.0.0.5:7443", "10.0.1.5:7443"]
# The hub's Ed25519 public key (`outpost-hub identity`): a hub presenting any other key is refused. Replicas share
# the hub's identity key, so this one key pins them all.
key = "{hub_key}"
# Optional, in an agent built with the `mirror` feature: read TUF metadata and packages from a static mirror of
# the hub's repository instead of from the hub (`outpost-hub repo export DIR`, served by any web server or CDN; the
# URL is the directory holding metadata/ and targets/). The mirror is not trusted: everything it serves is verified against the TUF root pinned at init, so
# a tampered, stale or rolled-back mirror is refused. The hub above still assigns packages and receives reports.
# https:// also hides which packages the device fetches; http:// works too.
# mirror = "https://updates.example.com/outpost"
# PEM file of the CA for an https mirror; when set, only it is trusted for the mirror (default: system roots).
# mirror_ca = "mirror-ca.pem"

[device]
# Identity key, trusted TUF metadata, update state, staging area and the two model slots live here.
data_dir = "."

[updates]
# Seconds between update checks, plus up to jitter_secs at random.
poll_secs = 60
jitter_secs = 10
# A new package is confirmed after this many successful inferences or this many seconds without an error,
# whichever comes first; any failure before that rolls back to the last good package.
health_inferences = 20
health_secs = 300
# Longest a whole update check may take (connect, TUF, assignment, downloads, staging, reports). Past it the check
# fails and is retried at the next poll, so a hub, site node or mirror sending a byte now and then cannot hold the
# agent; a download cut short resumes where it stopped.
check_deadline_secs = 600
# Optional: memory the device gives its models, in bytes. Before a package is downloaded the memory budgets
# (runtime.memory_budget_bytes) of every model the device would then hold are summed, each capability's; a package
# past the limit is refused (rule `memory_budget`) and the others keep serving. Default: no limit.
# memory_limit_bytes = 268435456

[inference]
# The local Open Inference Protocol v2 API (KServe / Triton compatible). Keep it on localhost.
bind = "127.0.0.1:8080"
# Optional: a file holding a bearer token (16 or more of A-Z a-z 0-9 -._~+/) every request must present as
# `Authorization: Bearer <token>`, for devices where other local processes are not trusted. Without it, anyone who
# can reach `bind` may call the API. The health probes (/v2/health/live, /v2/health/ready) never need it; /metrics
# and the model routes do. Make the file readable by the agent and its callers only (mode 0640 or tighter).
# token_file = "inference.token"
# Optional: also serve the API on this Unix socket (relative to this file's directory; mode 0660, replaced at each
# start), for clients on the device: no TCP stack in the way. `curl --unix-socket PATH http://localhost/v2`.
# socket = "inference.sock"
# During a release's shadow stage the hub has the device run the new package beside the active one, on this share
# of answered requests (percent), comparing answers; the shadow never serves.
shadow_percent = 10

# Optional: the site's policy. Each package is judged on its signed metadata before download and on its verified
# manifest after; a rejected package is never downloaded (again), a deferred one waits, and the hub is told the
# rule that fired. Check a policy with `outpost-agent policy check`. A file that stops loading is reported and the
# last good policy stays in force.
# [policy]
# file = "site.toml"
# wasm = ["rule.wasm"]

# Optional, on a device with a TPM 2.0 (an agent built with the `tpm` feature): attest at the hardware tier. Before
# each attestation the agent resets PCR 23 and extends its own binary's SHA-256 and its active model's into it;
# the TPM's attestation key quotes that PCR and the boot PCRs below, over the hub's nonce, and the hub checks the
# quote. `outpost-agent tpm-facts` prints what the hub records for this TPM (`outpost-hub device tpm`); a device
# enrolling with a token sends it itself.
# [attestation]
# tpm = "device:/dev/tpmrm0"
# boot_pcrs = [0, 1, 2, 3, 4, 5, 6, 7]

# Only for a site node (`outpost-agent run --mode site`): the UDP address its site's devices connect to. Its
# [policy] then applies to the whole site, and its blob cache lives in data_dir/cache: past cache_max_mib, the
# packages served least recently leave it (one still wanted is fetched from the hub again).
[site]
bind = "0.0.0.0:7443"
cache_max_mib = 4096
"#
    )
}

/// [`render`] for a hub served by `replicas` (their addresses in the order they are tried): one replica is
/// written as `address`, several as `addresses`.
pub fn render_replicas(replicas: &[String], hub_key: &str) -> String {
    match replicas {
        [one] => render(one, hub_key),
        _ => {
            let list = replicas.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
            let placeholder = "0.0.0.0:0";
            render(placeholder, hub_key)
                .replace(&format!("address = \"{placeholder}\"\n"), &format!("addresses = [{list}]\n"))
        }
    }
}

impl AgentConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::invalid(path, key, problem);
        let raw: Raw = outpost_shared::config::parse(text, path)?;
        let hub_addresses = hub_addresses(raw.hub.address.as_deref(), raw.hub.addresses.as_deref(), path)?;
        let hub_key = raw
            .hub
            .key
            .parse()
            .map_err(|_| invalid("hub.key", "expected the hub's Ed25519 public key, 64 hex characters".into()))?;
        let inference_bind = raw
            .inference
            .bind
            .parse()
            .map_err(|e| invalid("inference.bind", format!("`{}` is not an address: {e}", raw.inference.bind)))?;
        if raw.inference.shadow_percent > 100 {
            return Err(invalid("inference.shadow_percent", "must be 0 to 100".into()));
        }
        if raw.updates.poll_secs == 0 {
            return Err(invalid("updates.poll_secs", "must be at least 1".into()));
        }
        if raw.updates.check_deadline_secs == 0 {
            return Err(invalid("updates.check_deadline_secs", "must be at least 1".into()));
        }
        if raw.updates.memory_limit_bytes == Some(0) {
            return Err(invalid("updates.memory_limit_bytes", "must be at least 1 (leave it out for no limit)".into()));
        }
        if raw.updates.health_inferences == 0 && raw.updates.health_secs == 0 {
            return Err(invalid("updates.health_secs", "a health window of zero confirms nothing".into()));
        }
        let site_bind = raw
            .site
            .bind
            .parse()
            .map_err(|e| invalid("site.bind", format!("`{}` is not an address: {e}", raw.site.bind)))?;
        if raw.site.cache_max_mib == 0 {
            return Err(invalid("site.cache_max_mib", "must be at least 1".into()));
        }
        let tpm = match raw.attestation {
            None => None,
            Some(a) => {
                let mut mask = 0u32;
                for &pcr in &a.boot_pcrs {
                    if pcr >= outpost_attestation::quote::MEASUREMENT_PCR || mask & 1 << pcr != 0 {
                        return Err(invalid(
                            "attestation.boot_pcrs",
                            format!("PCR {pcr} is repeated or not a boot PCR (0-22; 23 is the agent's own)"),
                        ));
                    }
                    mask |= 1 << pcr;
                }
                if mask.count_ones() > outpost_attestation::quote::MAX_BOOT_PCRS {
                    return Err(invalid("attestation.boot_pcrs", "at most 8 PCRs".into()));
                }
                if a.tpm.trim().is_empty() {
                    return Err(invalid("attestation.tpm", "name the TPM, e.g. `device:/dev/tpmrm0`".into()));
                }
                Some(TpmConfig { tcti: a.tpm, boot_pcrs: mask })
            }
        };
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        #[cfg(feature = "mirror")]
        let mirror = match (raw.hub.mirror, raw.hub.mirror_ca) {
            (None, None) => None,
            (None, Some(_)) => return Err(invalid("hub.mirror_ca", "set `hub.mirror` too, or remove it".into())),
            (Some(url), ca) => {
                let mut mirror = MirrorConfig::export(&url).map_err(|e| invalid("hub.mirror", e.to_string()))?;
                mirror.ca = ca.map(|ca| base.join(ca));
                Some(mirror)
            }
        };
        #[cfg(not(feature = "mirror"))]
        if let Some(key) = [("hub.mirror", &raw.hub.mirror), ("hub.mirror_ca", &raw.hub.mirror_ca)]
            .into_iter()
            .find_map(|(key, value)| value.as_ref().map(|_| key))
        {
            return Err(ConfigError::NotBuilt { path: path.into(), key: key.into(), feature: "mirror".into() });
        }
        Ok(AgentConfig {
            hub_addresses,
            hub_key,
            #[cfg(feature = "mirror")]
            mirror,
            data_dir: base.join(&raw.device.data_dir),
            updates: raw.updates,
            inference_bind,
            shadow_percent: raw.inference.shadow_percent,
            inference_token_file: raw.inference.token_file.map(|f| base.join(f)),
            inference_socket: raw.inference.socket.map(|f| base.join(f)),
            site_bind,
            site_cache_max_bytes: raw.site.cache_max_mib.saturating_mul(1 << 20),
            tpm,
            policy: raw
                .policy
                .map(|p| PolicySource { file: base.join(p.file), wasm: p.wasm.iter().map(|w| base.join(w)).collect() }),
        })
    }
}

/// `[hub] address` or `[hub] addresses` (one of the two), validated: at least one address, at most
/// [`MAX_HUB_ADDRESSES`], none twice.
fn hub_addresses(
    address: Option<&str>,
    addresses: Option<&[String]>,
    path: &Path,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let invalid = |key: &str, problem: String| ConfigError::invalid(path, key, problem);
    let parse =
        |key: &str, a: &str| a.parse::<SocketAddr>().map_err(|e| invalid(key, format!("`{a}` is not an address: {e}")));
    let list = match (address, addresses) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "hub.addresses",
                "set `hub.address` (one hub) or `hub.addresses` (its replicas), not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid("hub.address", "missing: the hub's address (or `hub.addresses`, its replicas)".into()));
        }
        (Some(a), None) => return Ok(vec![parse("hub.address", a)?]),
        (None, Some(list)) => list,
    };
    if list.is_empty() {
        return Err(invalid("hub.addresses", "the list is empty: name at least one hub replica".into()));
    }
    if list.len() > MAX_HUB_ADDRESSES {
        return Err(invalid("hub.addresses", format!("at most {MAX_HUB_ADDRESSES} replicas")));
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for a in list {
        let addr = parse("hub.addresses", a)?;
        if out.contains(&addr) {
            return Err(invalid("hub.addresses", format!("`{a}` is listed twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0472f1b725f44c406c734e311f498aee3ac26f766d4e5b88162c719f4a78d453";

    #[test]
    fn rendered_config_parses_with_defaults() {
        let c = AgentConfig::parse(&render("127.0.0.1:7443", KEY), Path::new("/dev0/agent.toml")).unwrap();
        assert_eq!(c.hub_key.to_hex(), KEY);
        assert_eq!(c.data_dir, Path::new("/dev0/."));
        assert_eq!(c.updates, Updates::default());
        #[cfg(feature = "mirror")]
        assert_eq!(c.mirror, None, "the mirror is commented out by default");
    }

    #[test]
    #[cfg(feature = "mirror")]
    fn mirror_lines_uncommented_select_the_export_layout_and_a_ca_beside_the_file() {
        let text = render("127.0.0.1:7443", KEY).replace("# mirror", "mirror");
        let c = AgentConfig::parse(&text, Path::new("/dev0/agent.toml")).unwrap();
        let mirror = c.mirror.unwrap();
        assert_eq!(mirror.metadata_url.as_str(), "https://updates.example.com/outpost/metadata/");
        assert_eq!(mirror.targets_url.as_str(), "https://updates.example.com/outpost/targets/");
        assert_eq!(mirror.ca.as_deref(), Some(Path::new("/dev0/mirror-ca.pem")));
    }

    #[test]
    #[cfg(feature = "mirror")]
    fn bad_mirror_settings_name_the_key() {
        let text = render("127.0.0.1:7443", KEY).replace("# mirror = \"https://", "mirror = \"ftp://");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`hub.mirror`") && e.contains("http"), "{e}");
        let text = render("127.0.0.1:7443", KEY).replace("# mirror_ca", "mirror_ca");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`hub.mirror_ca`"), "{e}");
    }

    #[test]
    #[cfg(not(feature = "mirror"))]
    fn a_mirror_is_refused_by_a_build_without_the_mirror_feature() {
        let text = render("127.0.0.1:7443", KEY).replace("# mirror", "mirror");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::NotBuilt { key, feature, .. } if key == "hub.mirror" && feature == "mirror"),
            "{e}"
        );
    }

    #[test]
    fn the_check_deadline_and_the_inference_token_file_have_defaults_and_name_their_key() {
        let c = AgentConfig::parse(&render("127.0.0.1:7443", KEY), Path::new("/dev0/agent.toml")).unwrap();
        assert_eq!(c.updates.check_deadline_secs, DEFAULT_CHECK_DEADLINE_SECS);
        assert_eq!(c.inference_token_file, None, "no token by default");
        let text = render("127.0.0.1:7443", KEY).replace("# token_file", "token_file");
        let c = AgentConfig::parse(&text, Path::new("/dev0/agent.toml")).unwrap();
        assert_eq!(c.inference_token_file.as_deref(), Some(Path::new("/dev0/inference.token")));
        let text = render("127.0.0.1:7443", KEY).replace("check_deadline_secs = 600", "check_deadline_secs = 0");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`updates.check_deadline_secs`"), "{e}");
    }

    #[test]
    fn the_site_cache_budget_defaults_to_4_gib_and_refuses_zero() {
        let c = AgentConfig::parse(&render("127.0.0.1:7443", KEY), Path::new("a.toml")).unwrap();
        assert_eq!(c.site_cache_max_bytes, 4096 << 20);
        let text = render("127.0.0.1:7443", KEY).replace("cache_max_mib = 4096", "cache_max_mib = 0");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`site.cache_max_mib`"), "{e}");
    }

    #[test]
    fn attestation_section_names_the_tpm_and_its_boot_pcrs() {
        let text = render("127.0.0.1:7443", KEY).replace("# [attestation]", "[attestation]").replace("# tpm", "tpm");
        let c = AgentConfig::parse(&text, Path::new("a.toml")).unwrap();
        assert_eq!(c.tpm, Some(TpmConfig { tcti: "device:/dev/tpmrm0".into(), boot_pcrs: 0xff }));
        let bad = text.replace("tpm = \"device:/dev/tpmrm0\"", "tpm = \"device:/dev/tpmrm0\"\nboot_pcrs = [7, 23]");
        let e = AgentConfig::parse(&bad, Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`attestation.boot_pcrs`") && e.contains("23"), "{e}");
        assert_eq!(AgentConfig::parse(&render("127.0.0.1:7443", KEY), Path::new("a.toml")).unwrap().tpm, None);
    }

    #[test]
    #[cfg(feature = "mirror")] // the reference's complete example sets `hub.mirror` (the tests build every feature)
    fn the_configuration_reference_matches_the_parser() {
        let keys = outpost_shared::config_reference::keys::<Raw>().unwrap();
        assert!(keys.contains(&"attestation.boot_pcrs".to_owned()) && keys.len() > 15, "{keys:?}");
        let parse = |text: &str| {
            AgentConfig::parse(text, Path::new("/dev0/agent.toml")).map(|c| format!("{c:?}")).map_err(|e| e.to_string())
        };
        let doc = include_str!("../../docs/CONFIG.md");
        assert_eq!(outpost_shared::config_reference::check(doc, "agent.toml", &keys, parse), Vec::<String>::new());
    }

    #[test]
    fn hub_replicas_are_listed_in_order_under_one_key() {
        let one = AgentConfig::parse(&render("127.0.0.1:7443", KEY), Path::new("a.toml")).unwrap();
        assert_eq!(one.hub_addresses, ["127.0.0.1:7443".parse::<SocketAddr>().unwrap()]);
        let text = render("127.0.0.1:7443", KEY)
            .replace("address = \"127.0.0.1:7443\"\n", "")
            .replace("# addresses = ", "addresses = ");
        let c = AgentConfig::parse(&text, Path::new("a.toml")).unwrap();
        let want: Vec<SocketAddr> = vec!["10.0.0.5:7443".parse().unwrap(), "10.0.1.5:7443".parse().unwrap()];
        assert_eq!(c.hub_addresses, want);
        assert_eq!(c.hub_key.to_hex(), KEY);
    }

    #[test]
    fn init_with_several_hubs_writes_their_addresses_in_order() {
        let hubs = ["10.0.0.7:7443".to_owned(), "[2001:db8::1]:7443".to_owned()];
        let c = AgentConfig::parse(&render_replicas(&hubs, KEY), Path::new("a.toml")).unwrap();
        let want: Vec<SocketAddr> = hubs.iter().map(|h| h.parse().unwrap()).collect();
        assert_eq!(c.hub_addresses, want);
        let c = AgentConfig::parse(&render_replicas(&hubs[..1], KEY), Path::new("a.toml")).unwrap();
        assert_eq!(c.hub_addresses, want[..1]);
        let e = AgentConfig::parse(&render_replicas(&[], KEY), Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`hub.addresses`") && e.contains("empty"), "{e}");
    }

    #[test]
    fn config_with_both_address_and_addresses_is_refused() {
        let text = render("127.0.0.1:7443", KEY).replace("# addresses = ", "addresses = ");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { key, problem, .. } if key == "hub.addresses" && problem.contains("not both")),
            "{e}"
        );
        assert!(e.to_string().starts_with("a.toml: key `hub.addresses`"), "{e}");
    }

    #[test]
    fn an_empty_a_repeated_or_a_bad_replica_list_and_no_address_at_all_name_the_key() {
        let without = render("127.0.0.1:7443", KEY).replace("address = \"127.0.0.1:7443\"\n", "");
        let refused = |list: &str| {
            let text = without.replace("# addresses = [\"10.0.0.5:7443\", \"10.0.1.5:7443\"]", list);
            match AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err() {
                ConfigError::Invalid { key, problem, .. } => (key, problem),
                other => panic!("{other}"),
            }
        };
        let (key, problem) = refused("addresses = []");
        assert_eq!(key, "hub.addresses");
        assert!(problem.contains("empty"), "{problem}");
        let (key, problem) = refused("addresses = [\"10.0.0.5:7443\", \"10.0.0.5:7443\"]");
        assert_eq!((key.as_str(), problem.contains("twice")), ("hub.addresses", true), "{problem}");
        let (key, problem) = refused("addresses = [\"10.0.0.5:7443\", \"hub-b\"]");
        assert_eq!((key.as_str(), problem.contains("`hub-b`")), ("hub.addresses", true), "{problem}");
        let (key, problem) = refused("");
        assert_eq!((key.as_str(), problem.contains("hub.addresses")), ("hub.address", true), "{problem}");
    }

    #[test]
    fn bad_values_and_unknown_keys_name_the_key_and_file() {
        let text = render("127.0.0.1:7443", KEY).replace("poll_secs = 60", "poll_secs = 60\nturbo = true");
        let e = AgentConfig::parse(&text, Path::new("a.toml")).unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("turbo")).unwrap() + 1;
        assert!(e.starts_with(&format!("a.toml:{line}: key `updates.turbo`")), "{e}");
        let e = AgentConfig::parse(&render("nowhere", KEY), Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`hub.address`"), "{e}");
        let e = AgentConfig::parse(&render("127.0.0.1:1", "abc"), Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("`hub.key`"), "{e}");
    }
}
