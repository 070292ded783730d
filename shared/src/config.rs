//! Strict TOML configuration parsing shared by the hub's `hub.toml` and the agent's `agent.toml`: unknown keys,
//! bad values and syntax errors come back as one typed error that names the file and the dotted key.
//!
//! Reading the file is the caller's job (this crate does no I/O); `ConfigError::Read` is there for it to use.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key is missing, unknown or has a bad value.
    #[error("{}{}: key `{key}`: {problem}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line at fault, where known.
        line: Option<usize>,
        /// Dotted key at fault, or `(document)` for a syntax error.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A key asks for a part of the program that this build leaves out (a cargo feature that was not enabled):
    /// refused, so a configured part is never silently missing.
    #[error(
        "{}: key `{key}` needs the `{feature}` feature, which this build leaves out (build it with `--features {feature}`)",
        path.display()
    )]
    NotBuilt {
        /// The file.
        path: PathBuf,
        /// Dotted key that asks for the part.
        key: String,
        /// The cargo feature that provides it.
        feature: String,
    },
}

impl ConfigError {
    /// An invalid value for `key` in the file at `path`.
    pub fn invalid(path: &Path, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { path: path.into(), line: None, key: key.into(), problem: problem.into() }
    }
}

/// Parses TOML `text` into `T` (which should deny unknown fields); `path` names the file in errors.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let line = |e: &toml::de::Error| e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
        path: path.into(),
        line: line(&e),
        key: "(document)".into(),
        problem: e.message().to_owned(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let e = e.into_inner();
        ConfigError::Invalid { path: path.into(), line: line(&e), key, problem: e.message().to_owned() }
    })
}

/// Parses TOML `text` of at most `max_bytes` into `T`, then checks it with `validate` (which returns the dotted key
/// at fault and the problem); `path` names the file in errors.
pub fn parse_validated<T: DeserializeOwned>(
    text: &str,
    path: &Path,
    max_bytes: usize,
    validate: impl FnOnce(&T) -> Result<(), (String, String)>,
) -> Result<T, ConfigError> {
    if text.len() > max_bytes {
        let problem = format!("{} bytes, more than the limit of {max_bytes}", text.len());
        return Err(ConfigError::invalid(path, "(document)", problem));
    }
    let value: T = parse(text, path)?;
    validate(&value).map_err(|(key, problem)| ConfigError::invalid(path, &key, problem))?;
    Ok(value)
}
