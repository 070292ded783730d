//! An error and its causes as one line, for a binary's last word. Many of our errors print their source in their
//! own message (`read /x.key: <io error>`) and expose it as their source too; each cause is printed once.

use std::error::Error;

/// The messages of `chain` (an error, then its sources, outermost first: `anyhow::Error::chain`) joined by `": "`,
/// leaving out a cause whose message the line already ends with.
pub fn one_line<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for cause in chain {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// [`one_line`] of `error` and its sources.
pub fn one_line_of(error: &(dyn Error + 'static)) -> String {
    one_line(std::iter::successors(Some(error), |&e| e.source()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("read {path}: {source}")]
    struct ReadKey {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the key")]
    struct Loading(#[source] ReadKey);

    #[test]
    fn error_chain_prints_each_cause_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let read = ReadKey { path: "/x.key".into(), source: io() };
        assert_eq!(one_line_of(&read), format!("read /x.key: {}", io()));
        // A cause that adds words of its own is kept.
        let outer = Loading(ReadKey { path: "/x.key".into(), source: io() });
        assert_eq!(one_line_of(&outer), format!("loading the key: read /x.key: {}", io()));
    }
}
