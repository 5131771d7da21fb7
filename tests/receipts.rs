//! Receipts, operator events and the delivery log (SPEC section 14), on the real broker:
//! what a queue bound to the receipts exchange receives, what `deliveries` reads back, and
//! that a refused receipt changes no event's fate.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callback_dispatcher::ops::deliveries;
use common::*;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const CLIENT_SECRET: &str = "cs-SECRET-4f1d";
const TOKEN: &str = "tok-SECRET-9c2e";

/// One receipt or operator event as a bound queue received it.
#[derive(Debug, Clone)]
struct Got {
    routing_key: String,
    amqp_id: String,
    raw: String,
    body: serde_json::Value,
}

impl Got {
    fn field(&self, k: &str) -> serde_json::Value {
        self.body.get(k).cloned().unwrap_or(serde_json::Value::Null)
    }
    fn kind(&self) -> String {
        self.field("type").as_str().unwrap_or_default().to_owned()
    }
}

/// The receipts exchange of one test, a queue of the test's bound to it, and clean-up of
/// both and of the delivery log.
struct Tap {
    exchange: String,
    got: Arc<Mutex<Vec<Got>>>,
    conn: Connection,
}

impl Tap {
    /// Bind a queue to `<queue>.receipts` with `#`; `args` for the queue (e.g. a limit).
    async fn new(env: &Env, args: FieldTable) -> Tap {
        let exchange = format!("{}.receipts", env.queue);
        let conn = env.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let queue = format!("{}.tap", env.queue);
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.as_str().into(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let into = got.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let raw = String::from_utf8_lossy(&d.data).into_owned();
                into.lock().unwrap().push(Got {
                    routing_key: d.routing_key.to_string(),
                    amqp_id: d
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    body: serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null),
                    raw,
                });
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
        });
        Tap {
            exchange,
            got,
            conn,
        }
    }

    fn section(&self, log: bool) -> Receipts {
        Receipts {
            exchange: Some(self.exchange.clone()),
            log: log.then(|| Span::Is(Duration::from_secs(3600))),
        }
    }

    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn of_kind(&self, kind: &str) -> Vec<Got> {
        self.all()
            .into_iter()
            .filter(|g| g.kind() == kind)
            .collect()
    }

    async fn wait(&self, what: &str, check: impl Fn(&[Got]) -> bool) {
        wait_until(secs(60), what, || async { check(&self.all()) }).await;
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let exchange = self.exchange.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(conn) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                let ch = conn.create_channel().await.unwrap();
                let log = format!("{exchange}.log");
                let _ = ch
                    .queue_delete(log.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = ch
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = conn.close(200, "".into()).await;
            });
        })
        .join()
        .unwrap();
        let _ = &self.conn;
    }
}

fn fast_retry() -> Retry {
    Retry {
        max_attempts: Some(3),
        multiplier: Some(2.0),
        jitter: Some(0.0),
        ..Retry::backoff(ms(200), secs(1))
    }
}

fn id_of(r: &Recorded) -> String {
    r.header("webhook-id").unwrap_or_default()
}

#[tokio::test]
async fn every_event_has_one_final_receipt_and_each_retry_its_own() {
    let env = Env::new("rcpt");
    let tap = Tap::new(&env, FieldTable::default()).await;
    let tokens = Server::start(|_, _| {
        Reply::json(
            200,
            serde_json::json!({"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
        )
    })
    .await;
    // e0..e39 answered 204, e40..e49 400, e50..e59 503 the first time, then 204.
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let receiver = Server::start(move |_, r| {
        let id = id_of(r);
        let n: usize = id[1..].parse().unwrap();
        let mut seen = seen.lock().unwrap();
        let times = seen.entry(id).or_default();
        *times += 1;
        match n {
            0..=39 => Reply::status(204),
            40..=49 => Reply::status(400),
            _ if *times == 1 => Reply::status(503),
            _ => Reply::status(204),
        }
    })
    .await;
    let profile = Profile::new("acme", &receiver.url("/cb"))
        .signing([SIGNING])
        .auth(OAuth2::new(
            &tokens.url("/token"),
            "client-1",
            CLIENT_SECRET,
        ));
    let mut file = env.file(fast_retry(), [profile]);
    file.receipts = Some(tap.section(true));
    let config = env.config(&file);
    let worker = env.start(env.config(&file)).await;
    env.publish_many(60, |i| {
        (event_props(Some("acme"), &format!("e{i}")), b"{}".to_vec())
    })
    .await;

    let finals = |g: &[Got]| g.iter().filter(|g| g.kind() != "delivery.retrying").count();
    tap.wait("60 final receipts and 10 retrying", |g| {
        finals(g) >= 60 && g.len() >= 70
    })
    .await;
    worker.stop().await.unwrap();
    let all = tap.all();
    assert_eq!(all.len(), 70, "{all:#?}");
    let mut final_of = HashMap::new();
    for g in &all {
        for secret in [
            SIGNING,
            CLIENT_SECRET,
            TOKEN,
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            assert!(!g.raw.contains(secret), "a secret in a receipt: {}", g.raw);
        }
        let id = g.field("message_id").as_str().unwrap().to_owned();
        let attempt = g.field("attempt").as_u64().unwrap();
        assert_eq!(g.amqp_id, format!("{id}.{attempt}"));
        assert_eq!(g.routing_key, format!("acme.{}", g.kind()));
        assert_eq!(g.field("profile"), "acme");
        assert!(g.field("at").as_str().unwrap().ends_with('Z'), "{}", g.raw);
        if g.kind() != "delivery.retrying" {
            assert!(
                final_of.insert(id.clone(), g.clone()).is_none(),
                "two finals for {id}"
            );
        }
    }
    for i in 0..60 {
        let g = &final_of[&format!("e{i}")];
        let (kind, status, attempt, reason) = match i {
            0..=39 => ("delivery.succeeded", 204, 1, serde_json::Value::Null),
            40..=49 => ("delivery.dead_lettered", 400, 1, "permanent_status".into()),
            _ => ("delivery.succeeded", 204, 2, serde_json::Value::Null),
        };
        assert_eq!(
            (
                g.kind().as_str(),
                g.field("status"),
                g.field("attempt"),
                g.field("reason")
            ),
            (kind, status.into(), attempt.into(), reason),
            "e{i}: {}",
            g.raw
        );
    }
    let retrying = tap.of_kind("delivery.retrying");
    let ids: HashSet<String> = retrying
        .iter()
        .map(|g| g.field("message_id").as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, (50..60).map(|i| format!("e{i}")).collect());
    for g in &retrying {
        assert_eq!(
            (g.field("status"), g.field("attempt")),
            (503.into(), 1.into())
        );
        assert!(g.field("next_attempt_at").as_str().unwrap() > g.field("at").as_str().unwrap());
        assert_eq!(g.field("reason"), serde_json::Value::Null);
    }

    // The delivery log has the retried event's whole history, in order.
    let q = deliveries::Query {
        message_id: Some("e55".into()),
        profile: None,
        kind: None,
        since: secs(600),
        limit: 100,
        json: true,
    };
    let history = deliveries::read(&config, &q).await.unwrap();
    let kinds: Vec<_> = history
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["attempt"].as_u64().unwrap()))
        .collect();
    assert_eq!(kinds, [("delivery.retrying", 1), ("delivery.succeeded", 2)]);
    let printed = deliveries::report(&config, &q).await.unwrap();
    assert_eq!(printed.lines().count(), 2, "{printed}");
    let dead = deliveries::Query {
        message_id: None,
        kind: Some("delivery.dead_lettered".into()),
        json: false,
        ..q
    };
    let table = deliveries::report(&config, &dead).await.unwrap();
    assert_eq!(table.lines().count(), 11, "{table}");
    assert!(table.lines().nth(1).unwrap().contains("400"), "{table}");
}

#[tokio::test]
async fn the_deliveries_command_names_the_missing_setting() {
    let env = Env::new("rcptcli");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatcher.yaml");
    std::fs::write(
        &path,
        env.file(fast_retry(), [Profile::new("a", "http://127.0.0.1:9/")])
            .to_yaml(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
        .args(["deliveries", "--message-id", "x", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("receipts.log"), "{err}");
}

#[tokio::test]
async fn a_refused_receipt_changes_no_fate_and_is_counted() {
    let env = Env::new("rcptfull");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert("x-overflow".into(), text("reject-publish"));
    let tap = Tap::new(&env, args).await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let mut file = env.file(fast_retry(), [Profile::new("p", &receiver.url("/"))]);
    file.receipts = Some(tap.section(false));
    let worker = env.start(env.config(&file)).await;
    env.publish_many(20, |i| {
        (event_props(Some("p"), &format!("f{i}")), b"{}".to_vec())
    })
    .await;
    worker.wait_delivered("p", 20).await;
    wait_until(secs(30), "20 refused receipts counted", || async {
        worker
            .metrics()
            .await
            .value("callback_dispatcher_receipts_failed_total", &[])
            == 20.0
    })
    .await;
    let m = worker.metrics().await;
    worker.stop().await.unwrap();
    let ids: Vec<String> = receiver.all().iter().map(id_of).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (20, 20), "each callback once");
    assert_eq!(m.deliveries("p", "delivered"), 20.0);
    assert_eq!(
        m.value("callback_dispatcher_settle_failures_total", &[]),
        0.0
    );
    assert!(tap.all().is_empty());
}

#[tokio::test]
async fn operator_events_are_told_once_each() {
    let env = Env::new("rcptops");
    let tap = Tap::new(&env, FieldTable::default()).await;
    // Breaker: three 503s open it (failures 2), then the probe succeeds and closes it.
    let receiver = Server::start(|n, _| Reply::status(if n < 3 { 503 } else { 204 })).await;
    // Auth: the first token request fails, the next succeeds.
    let tokens = Server::start(|n, _| {
        if n == 0 {
            Reply::json(503, serde_json::json!({"error": "temporarily_unavailable"}))
        } else {
            Reply::json(
                200,
                serde_json::json!({"access_token": TOKEN, "expires_in": 3600}),
            )
        }
    })
    .await;
    let receiver2 = Server::start(|_, _| Reply::status(204)).await;
    let profiles = [
        Profile::new("flaky", &receiver.url("/")).breaker(Breaker::opens_after(2, ms(500))),
        Profile::new("authy", &receiver2.url("/")).auth(OAuth2::new(
            &tokens.url("/token"),
            "c",
            CLIENT_SECRET,
        )),
    ];
    let retry = Retry {
        max_attempts: Some(10),
        ..fast_retry()
    };
    let mut file = env.file(retry.clone(), profiles.clone());
    file.receipts = Some(tap.section(false));
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let port = free_port();
    let path = dir.path().join("dispatcher.yaml");
    std::fs::write(&path, file.listening_on(port).to_yaml()).unwrap();
    env.config(&file);
    let worker = Process::spawn_at(dir.clone(), path.clone(), port, "info");
    worker.wait_ready().await;
    env.publish(Some("flaky"), "b1", b"{}").await;
    env.publish(Some("authy"), "a1", b"{}").await;
    tap.wait(
        "breaker opened and closed, auth failing and recovered",
        |g| {
            let has = |k: &str| g.iter().any(|g| g.kind() == k);
            has("breaker.closed") && has("auth.recovered")
        },
    )
    .await;

    // A valid reload, then an invalid one.
    let mut changed = file.clone();
    changed.profiles[0] = profiles[0].clone().header("X-Version", "2");
    std::fs::write(&path, changed.listening_on(port).to_yaml()).unwrap();
    worker.signal("HUP");
    tap.wait("reload.succeeded", |g| {
        g.iter().any(|g| g.kind() == "reload.succeeded")
    })
    .await;
    std::fs::write(&path, "profiles: [{id: broken}]\n").unwrap();
    worker.signal("HUP");
    tap.wait("reload.failed", |g| {
        g.iter().any(|g| g.kind() == "reload.failed")
    })
    .await;

    // Operator events go out in order from one task: by the last, the earlier are all in.
    let all = tap.all();
    let ops: Vec<&Got> = all
        .iter()
        .filter(|g| g.routing_key.starts_with("ops."))
        .collect();
    let count = |k: &str| ops.iter().filter(|g| g.kind() == k).count();
    for k in [
        "breaker.opened",
        "breaker.closed",
        "auth.failing",
        "auth.recovered",
        "reload.succeeded",
        "reload.failed",
    ] {
        assert_eq!(count(k), 1, "{k} in {ops:#?}");
    }
    for g in &ops {
        assert_eq!(g.routing_key, format!("ops.{}", g.kind()));
        assert!(
            !g.raw.contains(CLIENT_SECRET) && !g.raw.contains(TOKEN),
            "{}",
            g.raw
        );
    }
    let one = |k: &str| *ops.iter().find(|g| g.kind() == k).unwrap();
    assert_eq!(one("breaker.opened").field("profile"), "flaky");
    assert!(
        one("breaker.opened")
            .field("error")
            .as_str()
            .unwrap()
            .contains("503"),
        "{:?}",
        one("breaker.opened")
    );
    assert_eq!(one("auth.failing").field("profile"), "authy");
    assert!(
        one("auth.failing")
            .field("error")
            .as_str()
            .unwrap()
            .contains("503")
    );
    assert_eq!(
        one("auth.recovered").field("error"),
        serde_json::Value::Null
    );
    assert_eq!(
        one("reload.succeeded").field("profile"),
        serde_json::Value::Null
    );
    assert!(
        one("reload.failed")
            .field("error")
            .as_str()
            .unwrap()
            .contains("url"),
        "{:?}",
        one("reload.failed")
    );
    // The events themselves were delivered.
    assert_eq!(receiver2.count(), 1);
}

#[tokio::test]
async fn after_a_kill_every_event_has_a_final_receipt_and_duplicates_share_their_id() {
    let env = Env::new("rcptkill");
    let tap = Tap::new(&env, FieldTable::default()).await;
    let receiver = Server::start(|_, _| Reply::status(204).after(ms(20))).await;
    let mut file = env.file(fast_retry(), [Profile::new("k", &receiver.url("/"))]);
    file.receipts = Some(tap.section(false));
    env.config(&file);
    let first = Process::spawn(&file, "warn");
    first.wait_ready().await;
    env.publish_many(300, |i| {
        (event_props(Some("k"), &format!("k{i}")), b"{}".to_vec())
    })
    .await;
    wait_until(secs(60), "some deliveries before the kill", || async {
        receiver.count() >= 50
    })
    .await;
    drop(first); // SIGKILL
    let second = Process::spawn(&file, "warn");
    second.wait_ready().await;
    tap.wait("a final receipt for each of 300 events", |g| {
        g.iter()
            .filter(|g| g.kind() == "delivery.succeeded")
            .map(|g| g.field("message_id").as_str().unwrap().to_owned())
            .collect::<HashSet<_>>()
            .len()
            == 300
    })
    .await;
    let mut ids_of: HashMap<String, HashSet<String>> = HashMap::new();
    for g in tap.of_kind("delivery.succeeded") {
        ids_of
            .entry(g.field("message_id").as_str().unwrap().to_owned())
            .or_default()
            .insert(g.amqp_id.clone());
    }
    for (event, ids) in ids_of {
        assert_eq!(ids, HashSet::from([format!("{event}.1")]), "{event}");
    }
    drop(second);
}
