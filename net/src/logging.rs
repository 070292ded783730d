//! The log subscriber the long-running binaries install (`outpost-hub serve`, `outpost-agent run`, the simulations):
//! text for people (no colour unless stderr is a terminal) or one JSON object per line, filtered like `RUST_LOG`.
//!
//! Libraries only emit `tracing` events and spans; nothing here runs unless a binary calls [`init`]. Logs go to
//! stderr, so a one-shot command's stdout stays what a script reads.

use std::io::IsTerminal;
use std::sync::OnceLock;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line per event for a person: time, level, the span fields, the message and its fields.
    #[default]
    Text,
    /// One JSON object per event (journald, a log pipeline): `timestamp`, `level`, `target`, the event's fields
    /// (`message` among them) at the top level, `span` (the innermost span's fields) and `spans` (all of them).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LoggingError::Format(other.to_owned())),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The filter used when neither `--log-level` nor `RUST_LOG` gives one.
pub const DEFAULT_FILTER: &str = "info";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// A log format other than `text` or `json`.
    #[error("unknown log format `{0}` (text or json)")]
    Format(String),
    /// The filter (`--log-level` or `RUST_LOG`) does not parse.
    #[error("log filter `{filter}`: {reason}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A subscriber was already installed in this process.
    #[error("a log subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the process's subscriber: `format` on stderr, filtered by `level` (`RUST_LOG` syntax: `debug`,
/// `outpost_net=debug,info`), else by `RUST_LOG`, else [`DEFAULT_FILTER`].
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), LoggingError> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|s| !s.trim().is_empty());
    let filter = level.map(str::to_owned).or(from_env).unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    let env_filter = tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| LoggingError::Filter { filter: filter.clone(), reason: e.to_string() })?;
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(true).try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)?;
    let _ = INSTALLED.set(format);
    Ok(())
}

/// The format [`init`] installed, if it ran.
static INSTALLED: OnceLock<LogFormat> = OnceLock::new();

/// A binary's last word on a fatal error: a JSON `error` event when the process logs JSON (a log pipeline reads
/// every line), else the plain `error: …` line people read.
pub fn fatal(message: &str) {
    if INSTALLED.get() == Some(&LogFormat::Json) {
        tracing::error!(error = message, "fatal");
    } else {
        eprintln!("error: {message}");
    }
}

/// The short form of a key or digest in log fields and spans: its first 12 hex characters, like
/// `Digest::short` (the CLI accepts such a prefix).
pub fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_parses_the_two_names_and_refuses_others() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert!(matches!("yaml".parse::<LogFormat>(), Err(LoggingError::Format(f)) if f == "yaml"));
    }

    #[test]
    fn a_filter_that_does_not_parse_is_refused_before_anything_is_installed() {
        let e = init(LogFormat::Text, Some("outpost_net=loud")).unwrap_err();
        assert!(matches!(&e, LoggingError::Filter { filter, .. } if filter == "outpost_net=loud"), "{e}");
    }
}
