//! Reloading the configuration without a restart (SPEC section 11): the worker as a process,
//! its file laid out as Kubernetes mounts a ConfigMap (a symlink swapped atomically), events
//! flowing the whole time.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// A config directory as the kubelet writes it: `dispatcher.yaml -> ..data/dispatcher.yaml`,
/// `..data -> ..v<N>`, and an update swaps `..data` in one rename.
struct ConfigMap {
    dir: Arc<tempfile::TempDir>,
    version: AtomicUsize,
    port: u16,
}

impl ConfigMap {
    /// Empty until the first [`ConfigMap::update`]; the worker will listen on `port`.
    fn new() -> ConfigMap {
        ConfigMap {
            dir: Arc::new(tempfile::tempdir().unwrap()),
            version: AtomicUsize::new(0),
            port: free_port(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("dispatcher.yaml")
    }

    /// A new version of the file, as it is.
    fn update(&self, file: &ConfigFile) {
        self.update_text(&file.to_yaml());
    }

    fn update_text(&self, text: &str) {
        let v = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        let root = self.dir.path();
        let data = root.join(format!("..v{v}"));
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("dispatcher.yaml"), text).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..v{v}"), &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        if v == 1 {
            std::os::unix::fs::symlink("..data/dispatcher.yaml", self.path()).unwrap();
        }
    }

    fn spawn(&self) -> Process {
        Process::spawn_at(self.dir.clone(), self.path(), self.port, "info")
    }
}

/// A profile whose requests carry `X-Version: version`.
fn versioned(id: &str, cb: &str, version: &str) -> Profile {
    Profile::new(id, cb).header("X-Version", version)
}

/// Publishes `stable` events one after another until stopped; returns their ids.
async fn keep_publishing(queue: String, stop: Arc<AtomicBool>) -> Vec<String> {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut ids = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let id = format!("flow-{}", ids.len());
        ch.basic_publish(
            queue.as_str().into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            event_props(Some("stable"), &id).with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    conn.close(200, "".into()).await.unwrap();
    ids
}

async fn reloads(p: &Process, outcome: &str) -> f64 {
    p.metrics().await.value(
        "callback_dispatcher_config_reloads_total",
        &[("outcome", outcome)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_while_events_flow_lose_delay_and_duplicate_nothing() {
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("t{n}"), "expires_in": 3600}),
        )
    })
    .await;
    // `retry-me` fails once, so its retry goes through a delay queue that a reload added.
    let failed = Arc::new(AtomicBool::new(false));
    let receiver = Server::start(move |_, r| {
        let first = r.header("webhook-id").as_deref() == Some("retry-me")
            && !failed.swap(true, Ordering::SeqCst);
        Reply::status(if first { 503 } else { 200 })
    })
    .await;
    let (cb, token) = (receiver.url("/cb"), auth.url("/token"));
    let env = Env::new("reload");
    let cm = ConfigMap::new();
    let retry = |initial: Duration| Retry {
        jitter: Some(0.0),
        ..Retry::backoff(initial, secs(1))
    };
    let version =
        |retry: Retry, profiles: Vec<Profile>| env.file(retry, profiles).listening_on(cm.port);
    let stable = Profile::new("stable", &cb).auth(OAuth2::new(&token, "c-stable", "s"));
    let v1 = version(
        retry(ms(500)),
        vec![
            stable.clone(),
            versioned("changing", &cb, "v1"),
            Profile::new("removed", &cb),
        ],
    );
    // v2 adds a profile and changes one; v3 removes one and changes the retry schedule;
    // v4 is invalid; v5 fixes it and also changes metrics.listen, which needs a restart.
    let v2 = version(
        retry(ms(500)),
        vec![
            stable.clone(),
            versioned("changing", &cb, "v2"),
            Profile::new("removed", &cb),
            Profile::new("added", &cb),
        ],
    );
    let v3 = version(
        retry(ms(700)),
        vec![
            stable.clone(),
            versioned("changing", &cb, "v3"),
            Profile::new("added", &cb),
        ],
    );
    let mut v4 = v3.clone();
    v4.profiles[1] = versioned("changing", &cb, "v4");
    v4.retry.initial_delay = Some(Span::Text("soon".into()));
    let mut v5 = version(
        retry(ms(700)),
        vec![
            stable,
            versioned("changing", &cb, "v5"),
            Profile::new("added", &cb),
        ],
    );
    v5.metrics.listen = Some("127.0.0.1:1".into());
    for file in [&v1, &v2, &v3, &v5] {
        env.config(file); // every delay queue any version declares, for clean-up
    }
    cm.update(&v1);
    let worker = cm.spawn();
    worker.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let flow = tokio::spawn(keep_publishing(env.queue.clone(), stop.clone()));
    let publish = |p: &'static str, id: String| {
        let env = &env;
        async move { env.publish(Some(p), &id, b"{}").await }
    };

    publish("changing", "c-v1".into()).await;
    publish("added", "a-v1".into()).await; // not there yet: unknown_profile

    // v2 by a file change (the symlink swap), noticed by the poll.
    cm.update(&v2);
    wait_until(LIMIT, "reload 1", || async {
        reloads(&worker, "success").await == 1.0
    })
    .await;
    publish("changing", "c-v2".into()).await;
    publish("added", "a-v2".into()).await;
    publish("removed", "r-v2".into()).await;

    // v3 by SIGHUP right after the swap: a new delay queue is declared before it applies.
    cm.update(&v3);
    worker.signal("HUP");
    // The poll may notice the swap before the signal arrives: then v3 is applied twice, and
    // the SIGHUP reload is the last either way.
    wait_until(LIMIT, "the SIGHUP reload", || async {
        worker.logs().contains("trigger=\"SIGHUP\"")
    })
    .await;
    let after_v3 = reloads(&worker, "success").await;
    assert!((2.0..=3.0).contains(&after_v3), "{after_v3}");
    publish("changing", "c-v3".into()).await;
    publish("removed", "r-v3".into()).await; // removed: unknown_profile
    publish("changing", "retry-me".into()).await;

    // v4 is invalid: nothing changes.
    cm.update(&v4);
    wait_until(LIMIT, "the failed reload", || async {
        reloads(&worker, "failure").await == 1.0
    })
    .await;
    publish("changing", "c-v4".into()).await;

    // v5: valid again, with a metrics.listen change that is not applied.
    cm.update(&v5);
    wait_until(LIMIT, "reload after the fix", || async {
        reloads(&worker, "success").await == after_v3 + 1.0
    })
    .await;
    publish("changing", "c-v5".into()).await;

    stop.store(true, Ordering::SeqCst);
    let flowed = flow.await.unwrap();
    wait_until(LIMIT, "every flowing event delivered", || async {
        let seen: std::collections::HashSet<String> = receiver
            .all()
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .collect();
        flowed.iter().all(|id| seen.contains(id))
    })
    .await;
    wait_until(LIMIT, "the retry delivered", || async {
        receiver
            .all()
            .iter()
            .filter(|r| r.header("webhook-id").as_deref() == Some("retry-me"))
            .count()
            == 2
    })
    .await;

    let all = receiver.all();
    let mut per_id: HashMap<String, Vec<&Recorded>> = HashMap::new();
    for r in &all {
        per_id
            .entry(r.header("webhook-id").unwrap())
            .or_default()
            .push(r);
    }
    // Exactly once, each flowing event.
    for id in &flowed {
        assert_eq!(per_id.get(id).map(Vec::len), Some(1), "{id}");
    }
    // With the settings in force when consumed.
    for (id, want) in [
        ("c-v1", "v1"),
        ("c-v2", "v2"),
        ("c-v3", "v3"),
        ("c-v4", "v3"),
        ("c-v5", "v5"),
    ] {
        let r = &per_id[id];
        assert_eq!(r.len(), 1, "{id}");
        assert_eq!(r[0].header("x-version").as_deref(), Some(want), "{id}");
    }
    assert!(per_id.contains_key("a-v2") && !per_id.contains_key("a-v1"));
    assert!(per_id.contains_key("r-v2") && !per_id.contains_key("r-v3"));
    let retried = &per_id["retry-me"];
    let gap = retried[1].at - retried[0].at;
    assert!(
        gap >= Duration::from_millis(650),
        "the v3 back-off (700 ms): {gap:?}"
    );
    let mut dead: Vec<(String, String)> = env
        .dead_letters()
        .await
        .iter()
        .map(|d| {
            (
                d.properties.message_id().as_ref().unwrap().to_string(),
                header_text(d, "x-dead-reason").unwrap(),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        vec![
            ("a-v1".to_owned(), "unknown_profile".to_owned()),
            ("r-v3".to_owned(), "unknown_profile".to_owned()),
        ]
    );
    // The unchanged oauth2 profile kept its token through every reload.
    assert_eq!(auth.count(), 1, "one token request for `stable` in all");
    let m = worker.metrics().await;
    assert_eq!(
        m.value(
            "callback_dispatcher_config_reloads_total",
            &[("outcome", "failure")]
        ),
        1.0
    );
    let logs = worker.logs();
    assert!(
        logs.contains(&format!("{}:", cm.path().display()))
            && logs.contains("retry.initial_delay: \"soon\" is not a duration"),
        "errors logged as check-config prints them:\n{logs}"
    );
    assert!(
        logs.contains("need a restart") && logs.contains("metrics"),
        "{logs}"
    );
    assert!(
        worker.get("/healthz").await.is_some(),
        "metrics.listen did not move"
    );
    println!(
        "reload: {} flowing events delivered exactly once across 4 reloads and 1 failed one; 1 token request",
        flowed.len()
    );
}

#[test]
fn the_config_map_layout_is_what_the_test_thinks() {
    // The test above relies on reading through both symlinks.
    let cm = ConfigMap::new();
    cm.update_text("a: 1\n");
    cm.update_text("a: 2\n");
    assert_eq!(std::fs::read_to_string(cm.path()).unwrap(), "a: 2\n");
    assert!(Path::new(&cm.path()).is_symlink());
}
