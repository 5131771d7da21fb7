//! The deployment files are checked with what this machine has: every manifest parses, the
//! ConfigMap's configuration is valid, and every metric the dashboard and alert rules query
//! is one the binary exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use callback_dispatcher::config::Config;
use callback_dispatcher::metrics::Metrics;
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy(rel)).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Family names, plus the series names a histogram adds.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in Metrics::new().render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_owned());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
        }
    }
    names
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("callback_dispatcher_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn manifests_parse_and_name_what_they_should() {
    let mut kinds = Vec::new();
    for f in [
        "k8s/configmap.yaml",
        "k8s/secret.example.yaml",
        "k8s/deployment.yaml",
        "k8s/service.yaml",
        "k8s/keda.yaml",
        "k8s/redis.yaml",
    ] {
        for doc in yaml_docs(f) {
            kinds.push(doc["kind"].as_str().unwrap().to_owned());
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "Deployment",
            "ScaledObject",
            "Secret",
            "Service",
            "Service",
            "ServiceMonitor",
            "TriggerAuthentication"
        ]
    );
    let dep = &yaml_docs("k8s/deployment.yaml")[0];
    let mount = &dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0];
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    let keda = &yaml_docs("k8s/keda.yaml")[1];
    assert_eq!(keda["spec"]["triggers"][0]["type"], "rabbitmq");
}

#[test]
fn the_configmap_holds_a_valid_configuration() {
    let cm = &yaml_docs("k8s/configmap.yaml")[0];
    let text = cm["data"]["dispatcher.yaml"].as_str().unwrap();
    let env = |redis: bool| {
        move |name: &str| match name {
            "AMQP_URL" => Some("amqp://u:p@rabbitmq:5672/%2f".into()),
            "ACME_SIGNING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            "REDIS_URL" | "TOKEN_CACHE_KEY" if !redis => None,
            "REDIS_URL" => Some("redis://callback-dispatcher-redis:6379/0".into()),
            "TOKEN_CACHE_KEY" => Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into()),
            _ => Some("x".into()),
        }
    };
    let without = Config::from_yaml(text, Path::new("configmap"), env(false))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(without.token_cache.is_none());
    let config = Config::from_yaml(text, Path::new("configmap"), env(true))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.token_cache.is_some(),
        "with REDIS_URL set, the shared cache is on"
    );
    assert_eq!(config.metrics.listen.port(), 9464);
    let keda = &yaml_docs("k8s/keda.yaml")[1];
    assert_eq!(
        keda["spec"]["triggers"][0]["metadata"]["queueName"],
        config.amqp.queue.as_str()
    );
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/dashboard.json")).unwrap())
            .unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let dashboard_count = all.len();
    for doc in yaml_docs("prometheus/alerts.yaml") {
        exprs(&doc, &mut all);
    }
    assert!(
        dashboard_count >= 9 && all.len() >= dashboard_count + 7,
        "{all:?}"
    );
    let mut used = BTreeSet::new();
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "query names no metric of ours: {e}");
        for n in names {
            assert!(
                exported.contains(&n),
                "{n} (in {e}) is not exported; exported: {exported:?}"
            );
            used.insert(n);
        }
    }
    assert!(
        used.len() >= 11,
        "the dashboard covers the metrics: {used:?}"
    );
}
