//! What an operator must set (SPEC section 8): the worker's memory is bounded by
//! `amqp.prefetch` x the broker's `max_message_size`. The shipped broker settings set it, the
//! bound fits the Deployment's memory limit, and the README says so.

use std::path::Path;

use callback_dispatcher::config::Config;
use serde_json::Value;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// `key = value` from a rabbitmq.conf (sysctl format).
fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
}

/// Kubernetes quantity in bytes (`512Mi`, `1Gi`).
fn bytes(quantity: &str) -> u64 {
    let (n, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other}"),
    }
}

#[test]
fn the_shipped_broker_settings_bound_the_workers_memory() {
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    let max_message_size: u64 = conf_value(&conf, "max_message_size")
        .expect("deploy/rabbitmq/rabbitmq.conf sets max_message_size")
        .parse()
        .unwrap();

    let cm: Value = serde_saphyr::from_str(&read("deploy/k8s/configmap.yaml")).unwrap();
    let config = Config::from_yaml(
        cm["data"]["dispatcher.yaml"].as_str().unwrap(),
        Path::new("configmap"),
        |name| match name {
            "AMQP_URL" => Some("amqp://u:p@rabbitmq:5672/%2f".into()),
            "ACME_SIGNING_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            "REDIS_URL" | "TOKEN_CACHE_KEY" => None,
            _ => Some("x".into()),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        max_message_size > config.delivery.max_body_bytes as u64,
        "an event a little over max_body_bytes still reaches the worker, to be dead-lettered"
    );

    let dep: Value = serde_saphyr::from_multiple::<Value>(&read("deploy/k8s/deployment.yaml"))
        .unwrap()
        .remove(0);
    let limit = bytes(
        dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
            .as_str()
            .unwrap(),
    );
    let bound = u64::from(config.amqp.prefetch) * max_message_size;
    eprintln!(
        "memory bound: prefetch {} x max_message_size {max_message_size} = {} MiB, limit {} MiB",
        config.amqp.prefetch,
        bound >> 20,
        limit >> 20
    );
    assert!(
        bound * 3 / 2 <= limit,
        "prefetch x max_message_size ({bound}) leaves too little of the memory limit ({limit})"
    );

    let readme = read("README.md");
    let operating = &readme[readme
        .find("## Operating it")
        .expect("an Operating it section")..];
    for needed in [
        "max_message_size",
        "amqp.prefetch` x the broker's `max_message_size`",
        "deploy/rabbitmq/rabbitmq.conf",
        "callback_dispatcher_settle_failures_total",
    ] {
        assert!(
            operating.contains(needed),
            "README's operating section names {needed}"
        );
    }
}
