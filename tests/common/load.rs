//! The fault tests' load: events of one signed profile, and how often each id was received.

use std::collections::HashMap;

use super::{Env, Profile, Server, event_props};

/// A count from the environment (a test's size can be raised by hand), else `default`.
pub fn count_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The profile of the fault tests' load: signed, named `load`.
pub fn load_profile(url: &str) -> Profile {
    Profile::new("load", url).signing(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
}

/// Requests per webhook-id.
pub fn per_id(server: &Server) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in server.all() {
        *m.entry(r.header("webhook-id").unwrap()).or_default() += 1;
    }
    m
}

/// `n` events of profile `load` with ids `<tag>-<i>`, published 5,000 at a time.
pub async fn publish_load(env: &Env, n: usize, tag: &str) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let (start, len) = (chunk[0], chunk.len());
        let tag = tag.to_owned();
        env.publish_many(len, move |i| {
            (
                event_props(Some("load"), &format!("{tag}-{}", start + i)),
                br#"{"n":1}"#.to_vec(),
            )
        })
        .await;
    }
}
