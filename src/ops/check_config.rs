//! `check-config`: a valid file's one-line summary and warnings. (An invalid file never gets
//! here: `main` prints every error from loading it.)

use std::path::Path;

use crate::config::Config;

/// The report for a valid file: the summary, then one `warning:` line each.
pub fn report(path: &Path, config: &Config) -> String {
    let mut out = format!("{}: {}\n", path.display(), config.summary());
    for w in config.warnings() {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}
