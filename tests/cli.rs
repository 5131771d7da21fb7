//! The command line as an operator uses it: check-config, token, publish, dead-letters.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use serde_json::json;

fn bin(args: &[&str], config: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, file: &ConfigFile) -> std::path::PathBuf {
    write_text(dir, &file.to_yaml())
}

fn write_text(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("dispatcher.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_prints_a_summary_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let ok = bin(
        &["check-config"],
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/dispatcher.yaml"
        )),
    );
    let (out, _) = text(&ok);
    assert!(ok.status.success());
    assert!(
        out.contains("ok: 8 profile(s) (3 with oauth2), queue callbacks"),
        "{out}"
    );

    // Raw text: the errors name its lines, and `${VAR:-default}` is read from it.
    let bad = write_text(
        &dir,
        "retry:\n  max_delay: 1ms\n  initial_delay: 1s\nprofiles:\n  - id: \"bad id!\"\n    url: nope\n    auth: {type: oauth2, grant_type: pkce, url: http://x/t, client_id: c, client_secret: \"${UNSET_SECRET:-s}\"}\n",
    );
    let o = bin(&["check-config"], &bad);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    for want in [
        "4 configuration errors",
        "retry.max_delay",
        "profiles[0].id",
        "profiles[0].url",
        "profiles[0].auth.grant_type",
        "dispatcher.yaml:2:",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_config_warns_about_literal_hosts_the_network_guard_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = ConfigFile::with_profiles([
        Profile::new("meta", "http://169.254.169.254/latest"),
        Profile::new("ok", "http://10.20.1.2/hook").auth(OAuth2::new(
            "http://[::1]:8080/token",
            "c",
            "s",
        )),
        Profile::new("named", "https://hooks.example/"),
    ]);
    file.delivery.allow_networks = Some(vec!["10.20.0.0/16".into()]);
    let config = write(&dir, &file);
    let o = bin(&["check-config"], &config);
    let (out, err) = text(&o);
    assert!(o.status.success(), "valid, with warnings: {out}{err}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(
        warnings,
        vec![
            "warning: profiles[0].url: 169.254.169.254 is link-local (169.254.0.0/16, cloud metadata), which the network guard blocks (allow it with delivery.allow_networks); every callback to it will be refused",
            "warning: profiles[1].auth.url: ::1 is loopback (::1), which the network guard blocks (allow it with delivery.allow_networks); every token request to it will be refused",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_command_shows_scheme_expiry_and_a_redacted_token() {
    let auth = Server::start(|n, _| {
        if n == 0 {
            Reply::json(200, json!({"data": {"token": "abcdef-the-rest-is-secret", "tokenType": "IBSSO", "expiresIn": "3599"}}))
        } else {
            Reply::json(401, json!({"error": "invalid_client", "error_description": "unknown client"}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut file =
        ConfigFile::with_profiles([Profile::new("ib", "http://127.0.0.1:9/").auth(OAuth2 {
            token_field_path: Some("$.data.token".into()),
            token_type_field_path: Some("$.data.tokenType".into()),
            expiration_field_path: Some("$.data.expiresIn".into()),
            ..OAuth2::new(&auth.url("/session"), "c", "tok-cmd-secret")
        })]);
    file.delivery.allow_networks = Some(vec!["127.0.0.0/8".into()]);
    let config = write(&dir, &file);
    let config2 = config.clone();
    let o = tokio::task::spawn_blocking(move || bin(&["token", "--profile", "ib"], &config2))
        .await
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("scheme:  IBSSO"), "{out}");
    assert!(out.contains("abcdef…"), "{out}");
    assert!(!out.contains("the-rest-is-secret"), "{out}");
    assert!(out.contains("(in 59m 5"), "expiry relative to now: {out}");

    let o = tokio::task::spawn_blocking(move || bin(&["token", "--profile", "ib"], &config))
        .await
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("auth server answered 401"), "{err}");
    assert!(
        err.contains("unknown client"),
        "the error body is shown: {err}"
    );
    assert!(!format!("{out}{err}").contains("tok-cmd-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_dead_letters_list_and_replay() {
    let receiver = Server::start(|n, _| Reply::status(if n < 3 { 410 } else { 200 })).await;
    let env = Env::new("cli");
    let file = env.file(
        Retry::attempts(2),
        [
            Profile::new("a", &receiver.url("/a")),
            Profile::new("b", &receiver.url("/b")),
        ],
    );
    let config = env.config(&file);
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, &file);
    let worker = env.start(config).await;

    let body = dir.path().join("event.json");
    std::fs::write(&body, br#"{"status":"DELIVERED"}"#).unwrap();
    for (k, (profile, id)) in [("a", "cli-a1"), ("b", "cli-b1"), ("a", "cli-a2")]
        .into_iter()
        .enumerate()
    {
        let o = bin(
            &[
                "publish",
                "--profile",
                profile,
                "--message-id",
                id,
                "--file",
                body.to_str().unwrap(),
            ],
            &path,
        );
        assert!(o.status.success(), "{:?}", text(&o));
        assert_eq!(text(&o).0.trim(), format!("published {id}"));
        // One at a time, so the receiver's first three answers (410) go to these three.
        receiver.wait_for(k + 1, Duration::from_secs(60)).await;
    }
    wait_until(Duration::from_secs(60), "3 dead letters", || async {
        worker.metrics().await.deliveries("a", "dead_lettered") == 2.0
    })
    .await;

    for _ in 0..2 {
        // Listing twice shows the same rows in the same order: nothing consumed or reordered.
        let o = bin(&["dead-letters", "list"], &path);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let rows: Vec<&str> = out.lines().skip(2).collect();
        assert!(
            out.starts_with("3 dead-lettered event(s) in the queue, showing 3"),
            "{out}"
        );
        assert_eq!(rows.len(), 3, "{out}");
        for (row, id) in rows.iter().zip(["cli-a1", "cli-b1", "cli-a2"]) {
            assert!(row.starts_with(id), "{row}");
            assert!(
                row.contains("permanent_status") && row.contains("410"),
                "{row}"
            );
        }
    }

    let o = bin(&["dead-letters", "replay", "--profile", "a"], &path);
    assert_eq!(
        text(&o).0.trim(),
        "replayed 2 event(s) to the work queue; 1 of other profiles left in place"
    );
    worker.wait_delivered("a", 2).await;
    let replayed: Vec<_> = receiver.all().into_iter().skip(3).collect();
    assert_eq!(replayed.len(), 2);
    assert!(
        replayed
            .iter()
            .all(|r| r.uri == "/a" && &r.body[..] == br#"{"status":"DELIVERED"}"#)
    );
    let left = env.dead_letters().await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].properties.message_id().as_ref().unwrap().as_str(),
        "cli-b1"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_exactly_the_spec_families_and_health_endpoints() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("metrics");
    let worker = env
        .start(env.config(&env.file(Retry::attempts(2), [Profile::new("m", &receiver.url("/"))])))
        .await;
    env.publish(Some("m"), "m-1", b"{}").await;
    receiver.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(worker.get("/healthz").await.0, 200);
    assert_eq!(worker.get("/readyz").await.0, 200);
    let (_, raw) = worker.get("/metrics").await;
    let mut families: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    families.sort();
    assert_eq!(
        families,
        vec![
            "callback_dispatcher_amqp_connected gauge",
            "callback_dispatcher_circuit_open gauge",
            "callback_dispatcher_cluster_errors_total counter",
            "callback_dispatcher_cluster_replicas gauge",
            "callback_dispatcher_config_reloads_total counter",
            "callback_dispatcher_deferrals_total counter",
            "callback_dispatcher_deliveries_total counter",
            "callback_dispatcher_delivery_attempts_total counter",
            "callback_dispatcher_delivery_duration_seconds histogram",
            "callback_dispatcher_events_consumed_total counter",
            "callback_dispatcher_inflight_deliveries gauge",
            "callback_dispatcher_ordered_waiting gauge",
            "callback_dispatcher_proxy_errors_total counter",
            "callback_dispatcher_receipts_failed_total counter",
            "callback_dispatcher_settle_failures_total counter",
            // SPEC section 16: spans that could not be exported (docs/tracing.md).
            "callback_dispatcher_spans_dropped_total counter",
            // Beyond SPEC section 7: the shared token cache's failures (docs/metrics.md).
            "callback_dispatcher_token_cache_errors_total counter",
            "callback_dispatcher_token_cache_hits_total counter",
            "callback_dispatcher_token_requests_total counter",
        ]
    );
    let m = Metrics::parse(&raw);
    assert_eq!(m.value("callback_dispatcher_amqp_connected", &[]), 1.0);
    assert_eq!(
        m.value(
            "callback_dispatcher_delivery_duration_seconds_count",
            &[("profile", "m")]
        ),
        1.0
    );
    worker.stop().await.unwrap();
}
