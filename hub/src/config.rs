//! The hub's data directory and its `hub.toml`: where the hub keeps state and the limits it enforces.
//!
//! The file is parsed strictly (unknown keys are errors naming the key and the file); every key has a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "hub.toml";

/// The commented configuration `outpost-hub init` writes.
pub const DEFAULT_CONFIG: &str = r#"# Outpost hub configuration.
# Every key is optional: the value shown is the default. Unknown keys are refused.

[limits]
# Largest ONNX model `package add` accepts, in bytes (2 GiB).
max_model_bytes = 2147483648
# Largest manifest TOML `package add` accepts, in bytes (16 MiB; smoke-test tensors are inline).
max_manifest_bytes = 16777216
# Device reports: the largest one report the hub stores (64 KiB), and each device's report file is rotated before it
# grows past max_report_file_bytes (1 MiB), keeping report_files_kept files (oldest dropped).
max_report_bytes = 65536
max_report_file_bytes = 1048576
report_files_kept = 4
# Distinct telemetry streams (device queues) the hub keeps per device; a batch on a new stream beyond this is
# refused and counted in outpost_hub_refused_total{bound="telemetry_streams"}.
max_telemetry_streams_per_device = 16

[repository]
# How long each TUF role's metadata stays valid, in seconds.
root_secs = 31536000         # 365 days; root is re-signed only at key rotation (offline keys)
targets_secs = 7776000       # 90 days; re-signed at each release with the offline targets key
snapshot_secs = 604800       # 7 days; online key
timestamp_secs = 86400       # 1 day; online key
# The serving hub re-signs snapshot and timestamp when less than this remains (6 hours).
resign_margin_secs = 21600

[attestation]
# Serve only connections whose device attested (evidence appraised against the central team's signed reference
# values in DIR/attestation/reference-values.cbor). With no team key or no valid reference values, nothing is
# served and `serve` says why. Turn off only for a lab hub.
required = true
# The central team's Ed25519 public key (64 hex) that signs reference values. Default: the one in
# DIR/attestation/team.pub (hex), if any.
# team_key = ""
# How long a challenge may be answered, and how long an attestation result lets a connection be served.
challenge_ttl_secs = 30
result_ttl_secs = 3600
# Most challenges outstanding at once that one site node relays for its devices (each device also has its own
# bound of 8): size it to the devices one site node may have attesting at the same time.
max_relayed_challenges_per_site_node = 1024

[store]
# The PostgreSQL database several hub replicas share (`postgres://user@host:5432/outpost`, or `host=… dbname=…`);
# `outpost-hub migrate` creates or upgrades its schema first. Unset: the embedded store in the data directory.
# postgres = ""
# The directory the replicas share for the TUF repository, its online keys, the hub's identity and the package
# blobs (a path every replica mounts; relative to the data directory). Unset: the data directory itself.
# shared_dir = ""
"#;

/// The validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Size limits.
    pub limits: Limits,
    /// TUF metadata expiry periods.
    pub repository: crate::tuf::Expiries,
    /// The attestation gate.
    pub attestation: Attestation,
    /// Where the shared state lives.
    pub store: StoreConfig,
}

/// `[store]`: the embedded store in the data directory (the default), or a PostgreSQL database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The PostgreSQL connection string (checked to parse when the file is read); `None`: the embedded store.
    pub postgres: Option<String>,
    /// Where the TUF repository (`repository/`), its online keys (`keys/`) and the blobs (`blobs/`) live, shared by
    /// the replicas; relative to the data directory. `None`: the data directory.
    pub shared_dir: Option<PathBuf>,
}

impl StoreConfig {
    /// The directory holding `repository/`, `keys/` and `blobs/` for the hub whose data directory is `data_dir`.
    pub fn shared(&self, data_dir: &Path) -> PathBuf {
        match &self.shared_dir {
            Some(dir) => data_dir.join(dir),
            None => data_dir.to_owned(),
        }
    }
}

/// `[attestation]`: whether and how the hub appraises devices before serving them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attestation {
    /// Serve only attested connections.
    pub required: bool,
    /// The central team's reference-values key (hex); `None`: `DIR/attestation/team.pub`.
    pub team_key: Option<String>,
    /// Seconds a challenge may be answered.
    pub challenge_ttl_secs: u64,
    /// Seconds an attestation result stays current.
    pub result_ttl_secs: u64,
    /// Most outstanding challenges one site node may have relayed for its devices.
    pub max_relayed_challenges_per_site_node: usize,
}

impl Default for Attestation {
    fn default() -> Self {
        Attestation {
            required: true,
            team_key: None,
            challenge_ttl_secs: 30,
            result_ttl_secs: 3600,
            max_relayed_challenges_per_site_node: outpost_attestation::VerifierConfig::default()
                .max_challenges_per_relay,
        }
    }
}

/// Size limits on what the registry accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest model file, in bytes.
    pub max_model_bytes: u64,
    /// Largest manifest file, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest device report stored, in bytes.
    pub max_report_bytes: u64,
    /// A device's report file is rotated before it grows past this, in bytes.
    pub max_report_file_bytes: u64,
    /// Report files kept per device (the current one included).
    pub report_files_kept: u32,
    /// Distinct telemetry streams kept per device.
    pub max_telemetry_streams_per_device: u32,
}

impl Limits {
    /// The bounds on device reports.
    pub fn reports(&self) -> crate::reports::ReportLimits {
        crate::reports::ReportLimits {
            max_report_bytes: self.max_report_bytes,
            max_file_bytes: self.max_report_file_bytes,
            files_kept: self.report_files_kept,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let reports = crate::reports::ReportLimits::default();
        Limits {
            max_model_bytes: 2 * 1024 * 1024 * 1024,
            max_manifest_bytes: 16 * 1024 * 1024,
            max_report_bytes: reports.max_report_bytes,
            max_report_file_bytes: reports.max_file_bytes,
            report_files_kept: reports.files_kept,
            max_telemetry_streams_per_device: crate::telemetry::DEFAULT_MAX_STREAMS_PER_DEVICE,
        }
    }
}

pub use outpost_shared::config::ConfigError;

impl HubConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<HubConfig, ConfigError> {
        let cfg: HubConfig = outpost_shared::config::parse(text, path)?;
        let l = &cfg.limits;
        for (key, v) in [
            ("limits.max_model_bytes", l.max_model_bytes),
            ("limits.max_manifest_bytes", l.max_manifest_bytes),
            ("limits.max_report_bytes", l.max_report_bytes),
            ("limits.max_report_file_bytes", l.max_report_file_bytes),
            ("limits.report_files_kept", u64::from(l.report_files_kept)),
            ("limits.max_telemetry_streams_per_device", u64::from(l.max_telemetry_streams_per_device)),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(path, key, "must be greater than zero"));
            }
        }
        if let Some(k) = &cfg.attestation.team_key
            && k.parse::<outpost_attestation::PublicKey>().is_err()
        {
            return Err(ConfigError::invalid(path, "attestation.team_key", "must be an Ed25519 public key, 64 hex"));
        }
        for (key, v) in [
            ("attestation.challenge_ttl_secs", cfg.attestation.challenge_ttl_secs),
            ("attestation.result_ttl_secs", cfg.attestation.result_ttl_secs),
            (
                "attestation.max_relayed_challenges_per_site_node",
                cfg.attestation.max_relayed_challenges_per_site_node as u64,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(path, key, "must be greater than zero"));
            }
        }
        if let Some(url) = &cfg.store.postgres
            && let Err(e) = crate::store::postgres::parse_url(url)
        {
            return Err(ConfigError::invalid(path, "store.postgres", e.to_string()));
        }
        Ok(cfg)
    }
}

/// Sets `[attestation] required` in the `hub.toml` of the hub in `dir` (for labs and benchmarks that measure the
/// update path alone; a production hub keeps the default, `true`).
///
/// # Errors
/// The file cannot be read or written, or has no `required = ` line under `[attestation]` to change.
pub fn set_attestation_required(dir: &Path, required: bool) -> std::io::Result<()> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path)?;
    let mut in_section = false;
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_section = trimmed.starts_with("[attestation]");
        }
        if in_section && trimmed.starts_with("required") && trimmed.contains('=') {
            out.push_str(&format!("required = {required}\n"));
            changed = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !changed {
        return Err(std::io::Error::other(format!("{}: no `required = ` under [attestation]", path.display())));
    }
    std::fs::write(&path, out)
}

/// The data directory used when neither `--data-dir` nor `$OUTPOST_HUB_DIR` is given:
/// `$XDG_DATA_HOME/outpost/hub`, else `$HOME/.local/share/outpost/hub`, else `./outpost-hub`.
pub fn default_data_dir() -> PathBuf {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = nonempty("XDG_DATA_HOME") {
        return x.join("outpost").join("hub");
    }
    match nonempty("HOME") {
        Some(h) => h.join(".local/share/outpost/hub"),
        None => PathBuf::from("outpost-hub"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_text_parses_to_the_defaults() {
        assert_eq!(HubConfig::parse(DEFAULT_CONFIG, Path::new("hub.toml")).unwrap(), HubConfig::default());
    }

    #[test]
    fn attestation_is_required_by_default_and_a_bad_team_key_names_its_key() {
        let cfg = HubConfig::parse("", Path::new("hub.toml")).unwrap();
        assert!(cfg.attestation.required);
        let e = HubConfig::parse("[attestation]\nteam_key = \"abc\"\n", Path::new("hub.toml")).unwrap_err();
        assert!(e.to_string().contains("attestation.team_key"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), DEFAULT_CONFIG).unwrap();
        set_attestation_required(dir.path(), false).unwrap();
        let cfg = HubConfig::load(&dir.path().join(CONFIG_FILE)).unwrap();
        assert!(!cfg.attestation.required);
    }

    #[test]
    fn the_configuration_reference_matches_the_parser() {
        let keys = outpost_shared::config_reference::keys::<HubConfig>().unwrap();
        assert!(keys.contains(&"attestation.team_key".to_owned()) && keys.len() > 10, "{keys:?}");
        let parse = |text: &str| {
            HubConfig::parse(text, Path::new("hub.toml")).map(|c| format!("{c:?}")).map_err(|e| e.to_string())
        };
        let doc = include_str!("../../docs/CONFIG.md");
        assert_eq!(outpost_shared::config_reference::check(doc, CONFIG_FILE, &keys, parse), Vec::<String>::new());
    }

    #[test]
    fn a_malformed_store_postgres_url_names_its_key_and_file() {
        let e = HubConfig::parse("[store]\npostgres = \"postgres://hub@db:port/outpost\"\n", Path::new("/d/hub.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/d/hub.toml") && e.contains("`store.postgres`"), "{e}");
        let cfg = HubConfig::parse("[store]\npostgres = \"postgres://hub@db:5432/outpost\"\n", Path::new("hub.toml"));
        assert_eq!(cfg.unwrap().store.postgres.as_deref(), Some("postgres://hub@db:5432/outpost"));
        assert_eq!(HubConfig::default().store.postgres, None, "the embedded store is the default");
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_key_and_file() {
        let e = HubConfig::parse("[limits]\nmax_blob = 1\n", Path::new("/d/hub.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/d/hub.toml:2: key `limits.max_blob`"), "{e}");
        let e = HubConfig::parse("[limits]\nmax_model_bytes = \"big\"\n", Path::new("hub.toml")).unwrap_err();
        assert!(e.to_string().contains("`limits.max_model_bytes`"), "{e}");
    }
}
