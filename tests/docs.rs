//! The reference stays complete: every key the loader accepts appears in the commented example
//! (`config/dispatcher.yaml`) and in `docs/configuration.md`, every metric the binary exports
//! in `docs/metrics.md`, and the README points at the project's own docs. The keys are learnt
//! from the loader itself, through the errors it gives for a key it does not know.

use std::collections::BTreeSet;
use std::path::Path;

use callback_dispatcher::config::Config;
use callback_dispatcher::metrics::Metrics;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

const PROBE: &str = "zz_probe";

/// The keys the loader accepts where `yaml` has `zz_probe`, from its error message.
fn accepted(yaml: &str) -> Vec<String> {
    let err = Config::from_yaml(yaml, Path::new("probe.yaml"), |_| None)
        .expect_err("the probe key is refused");
    let message = err
        .issues
        .iter()
        .map(|i| i.message.clone())
        .find(|m| m.contains(PROBE) || m.contains("is not a key of auth type"))
        .unwrap_or_else(|| panic!("no message about the probe key in {err}"));
    let list = if let Some((_, rest)) = message.split_once("expected one of ") {
        rest.to_owned()
    } else if let Some((_, rest)) = message.split_once("(its keys: ") {
        rest.trim_end_matches(')').to_owned()
    } else {
        panic!("cannot read the accepted keys from {message:?}")
    };
    list.split(", ")
        .map(|k| k.trim_matches('`').to_owned())
        .collect()
}

/// Every key the loader accepts, with where it was found.
fn every_key() -> BTreeSet<(String, String)> {
    let profile = "profiles:\n  - id: a\n    url: https://h.example/\n";
    let places = [
        ("(top)", format!("{PROBE}: 1\n{profile}")),
        ("amqp", format!("amqp: {{{PROBE}: 1}}\n{profile}")),
        ("delivery", format!("delivery: {{{PROBE}: 1}}\n{profile}")),
        (
            "delivery.circuit_breaker",
            format!("delivery: {{circuit_breaker: {{{PROBE}: 1}}}}\n{profile}"),
        ),
        ("retry", format!("retry: {{{PROBE}: 1}}\n{profile}")),
        ("metrics", format!("metrics: {{{PROBE}: 1}}\n{profile}")),
        ("log", format!("log: {{{PROBE}: 1}}\n{profile}")),
        ("tracing", format!("tracing: {{{PROBE}: 1}}\n{profile}")),
        (
            "token_cache",
            format!("token_cache: {{{PROBE}: 1}}\n{profile}"),
        ),
        ("cluster", format!("cluster: {{{PROBE}: 1}}\n{profile}")),
        ("profiles[]", format!("{profile}    {PROBE}: 1\n")),
        (
            "profiles[].circuit_breaker",
            format!("{profile}    circuit_breaker: {{{PROBE}: 1}}\n"),
        ),
        (
            "profiles[].tls",
            format!("{profile}    tls: {{{PROBE}: 1}}\n"),
        ),
        (
            "profiles[].signing",
            format!("{profile}    signing: {{{PROBE}: 1}}\n"),
        ),
        (
            "auth basic",
            format!("{profile}    auth: {{type: basic, {PROBE}: 1}}\n"),
        ),
        (
            "auth bearer",
            format!("{profile}    auth: {{type: bearer, {PROBE}: 1}}\n"),
        ),
        (
            "auth api_key",
            format!("{profile}    auth: {{type: api_key, {PROBE}: 1}}\n"),
        ),
        (
            "auth oauth2",
            format!("{profile}    auth: {{type: oauth2, {PROBE}: 1}}\n"),
        ),
    ];
    let mut keys = BTreeSet::new();
    keys.insert(("auth".to_owned(), "type".to_owned()));
    for (place, yaml) in places {
        for key in accepted(&yaml) {
            keys.insert((place.to_owned(), key));
        }
    }
    keys
}

#[test]
fn every_key_the_loader_accepts_is_in_the_example_and_the_reference() {
    let example = read("config/dispatcher.yaml");
    let reference = read("docs/configuration.md");
    let keys = every_key();
    assert!(keys.len() > 60, "the probe found the keys: {keys:?}");
    let mut missing = Vec::new();
    for (place, key) in &keys {
        let in_example = example.lines().any(|l| {
            l.contains(&format!(" {key}:"))
                || l.contains(&format!("{{{key}:"))
                || l.starts_with(&format!("{key}:"))
        });
        // In the reference, inside backticks, alone or as the last part of a dotted path.
        let in_reference = reference.contains(&format!("`{key}`"))
            || reference.contains(&format!(".{key}`"))
            || reference.contains(&format!("`{key}.")) && place == "(top)";
        if !in_example {
            missing.push(format!("{place}.{key} is not in config/dispatcher.yaml"));
        }
        if !in_reference {
            missing.push(format!("{place}.{key} is not in docs/configuration.md"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dispatcher.yaml");
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_exported_metric_is_in_the_metrics_reference() {
    let reference = read("docs/metrics.md");
    let families: Vec<String> = Metrics::new()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    assert!(families.len() >= 16, "{families:?}");
    for f in families {
        assert!(
            reference.contains(&format!("`{f}`")),
            "{f} is not in docs/metrics.md"
        );
    }
}

#[test]
fn the_readme_links_the_projects_own_reference_only() {
    let readme = read("README.md");
    assert!(
        !readme.contains("../shared"),
        "README links a file outside the repository"
    );
    for doc in ["docs/configuration.md", "docs/events.md", "docs/metrics.md"] {
        assert!(readme.contains(doc), "README does not link {doc}");
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc).exists());
    }
}
