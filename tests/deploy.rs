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

fn root(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The runtime stage's instructions (the last `FROM` on), continuation lines joined, as
/// (instruction, arguments).
fn runtime_stage() -> Vec<(String, String)> {
    let text = root("deploy/Dockerfile").replace("\\\n", " ");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last_from..]
        .iter()
        .map(|l| {
            let (i, rest) = l.split_once(' ').unwrap();
            (i.to_owned(), rest.trim().to_owned())
        })
        .collect()
}

fn instruction(stage: &[(String, String)], name: &str) -> String {
    let mut found = stage
        .iter()
        .filter(|(i, _)| i == name)
        .map(|(_, a)| a.clone());
    let first = found
        .next()
        .unwrap_or_else(|| panic!("no {name} in the runtime stage"));
    assert!(found.next().is_none(), "one {name} in the runtime stage");
    first
}

#[test]
fn the_image_and_the_deployment_agree() {
    let stage = runtime_stage();
    assert!(
        stage[0].1.ends_with(" AS runtime"),
        "the last stage is the runtime: {:?}",
        stage[0]
    );
    let dep = &yaml_docs("k8s/deployment.yaml")[0];
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    // The user and group the image runs as are a real user and group 10001, and the pod's.
    assert_eq!(instruction(&stage, "USER"), "10001:10001");
    let run = instruction(&stage, "RUN");
    assert!(
        run.contains("groupadd --gid 10001 dispatcher")
            && run.contains("useradd --uid 10001 --gid 10001")
            && !run.contains("--system"),
        "{run}"
    );
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(pod["securityContext"]["runAsGroup"], 10001);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");

    // Port, command, configuration path: the pod's are the image's.
    assert_eq!(instruction(&stage, "EXPOSE"), "9464");
    assert_eq!(c["ports"][0]["containerPort"], 9464);
    assert_eq!(
        instruction(&stage, "ENTRYPOINT"),
        r#"["/usr/local/bin/callback-dispatcher"]"#,
        "exec form: no shell at run time"
    );
    assert_eq!(instruction(&stage, "CMD"), r#"["run"]"#);
    assert_eq!(c["args"][0], "run");
    let env = instruction(&stage, "ENV");
    let path = env
        .strip_prefix("CALLBACK_DISPATCHER_CONFIG=")
        .expect("the image names its configuration");
    let in_pod = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CALLBACK_DISPATCHER_CONFIG")
        .expect("the pod names the configuration");
    assert_eq!(in_pod["value"], path);
    let dir = Path::new(path).parent().unwrap().to_str().unwrap();
    assert_eq!(
        c["volumeMounts"][0]["mountPath"], dir,
        "the ConfigMap's directory"
    );
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    assert!(
        stage
            .iter()
            .any(|(i, a)| i == "COPY" && a.ends_with(&format!(" {path}"))),
        "the image holds a default configuration at {path}"
    );

    // The tag is the crate's version.
    let version = root("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    assert_eq!(
        c["image"],
        format!("callback-dispatcher:{version}").as_str()
    );

    // The grace period outlasts delivery.timeout, and scripts/image.sh stops with it.
    let cm = &yaml_docs("k8s/configmap.yaml")[0];
    let config = Config::from_yaml(
        cm["data"]["dispatcher.yaml"].as_str().unwrap(),
        Path::new("configmap"),
        |name| match name {
            "AMQP_URL" => Some("amqp://u:p@rabbitmq:5672/%2f".into()),
            "REDIS_URL" | "TOKEN_CACHE_KEY" => None,
            _ => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.delivery.timeout.as_secs(),
        "grace {grace}s vs delivery.timeout {:?}",
        config.delivery.timeout
    );
    assert!(
        root("scripts/image.sh").contains(&format!("\nGRACE={grace} ")),
        "scripts/image.sh stops with the Deployment's grace period"
    );
}

#[test]
fn the_image_holds_a_stripped_binary_from_a_small_build_context() {
    // The image's binary is the Cargo profile `image`: release without debug info, stripped.
    let cargo = root("Cargo.toml");
    let profile = cargo
        .split("\n[profile.image]\n")
        .nth(1)
        .expect("a [profile.image]");
    let profile = profile.split("\n[").next().unwrap();
    for line in ["inherits = \"release\"", "debug = false", "strip = true"] {
        assert!(
            profile.lines().any(|l| l == line),
            "[profile.image] has {line}"
        );
    }
    let dockerfile = root("deploy/Dockerfile");
    assert!(dockerfile.contains("cargo build --locked --profile image --bin callback-dispatcher"));
    assert!(
        dockerfile.contains("--mount=type=cache"),
        "a cache mount for the dependencies"
    );
    for label in [
        "title",
        "description",
        "licenses",
        "version",
        "revision",
        "created",
    ] {
        assert!(
            dockerfile.contains(&format!("org.opencontainers.image.{label}=")),
            "OCI label {label}"
        );
    }

    // .dockerignore is an allowlist, and allows every path the Dockerfile copies from the
    // context: never target/ beyond the one binary.
    let ignore = root(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules[0], "*", "everything is excluded first");
    let allowed: Vec<&str> = rules[1..]
        .iter()
        .map(|r| r.strip_prefix('!').expect("then only exceptions"))
        .collect();
    assert!(
        allowed
            .iter()
            .filter(|a| a.starts_with("target"))
            .all(|a| *a == "target/image/callback-dispatcher"),
        "{allowed:?}"
    );
    for line in dockerfile.lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                allowed.iter().any(|a| a.trim_end_matches('/') == src),
                "COPY {src}: not in .dockerignore's allowlist {allowed:?}"
            );
        }
    }
}
