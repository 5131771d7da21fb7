//! `check-config`: load and validate; a one-line summary (and warnings), or every error.

use std::path::Path;

use crate::config::{Config, ConfigError};

/// The report for a valid file: the summary, then one `warning:` line each.
pub fn report(path: &Path, config: &Config) -> String {
    let mut out = format!("{}: {}\n", path.display(), config.summary());
    for w in config.warnings() {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// Load `path` and report on it; `Err` holds every error.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    Config::load(path).map(|c| report(path, &c))
}
