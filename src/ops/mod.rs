//! The operator commands. Each returns what it prints, so tests can call them; `main` only
//! parses the command line and prints.

pub mod check_config;
pub mod dead_letters;
pub mod deliveries;
pub mod publish;
pub mod signing_key;
pub mod token;

use std::time::Duration;

/// A duration rounded down to whole seconds, for people.
fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}
