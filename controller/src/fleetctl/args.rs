//! Argument parsers and the output format shared by every noun.

use clap::ValueEnum;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// An argument that should have been a `k=v` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not k=v")]
pub struct NotALabel(String);

/// Parses a `k=v` label.
///
/// # Errors
/// Anything else, quoted (clap shows it).
pub fn parse_label(s: &str) -> Result<(String, String), NotALabel> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| NotALabel(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(parse_label("site=barn"), Ok(("site".into(), "barn".into())));
        assert_eq!(parse_label("k="), Ok(("k".into(), String::new())));
        assert!(parse_label("=v").is_err() && parse_label("plain").is_err());
    }
}
