//! Settlements the broker refuses or cannot route (SPEC section 8): a dead-letter queue that
//! rejects every publish (`x-max-length: 0`, `x-overflow: reject-publish`) and a deleted
//! delay queue. The event goes back to the queue only after a back-off, the callback is
//! never re-sent in a loop, and once the queues are back nothing has been lost. The worker
//! runs as a process, against the real broker, for its log.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

/// The back-off before the n-th return to the queue: 1 s doubling up to 1 min.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << (n - 1).min(6)).min(Duration::from_secs(60))
}

/// The most callbacks one event can cause within `window` of its first when every
/// settlement is refused: each return to the queue waits the next back-off.
fn callback_bound(window: Duration) -> usize {
    let mut at = Duration::ZERO;
    let mut n = 1;
    loop {
        at += backoff(n as u32);
        if at > window {
            return n;
        }
        n += 1;
    }
}

/// Publish one event with confirms, without declaring anything (the test has broken the
/// topology on purpose).
async fn publish(env: &Env, profile: &str, id: &str) {
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            env.queue.as_str().into(),
            env.queue.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"{}",
            event_props(Some(profile), id).with_delivery_mode(2),
        )
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), lapin::Confirmation::Ack(None));
    conn.close(200, "".into()).await.unwrap();
}

/// Replace queue `name` by one with `args` (empty: a plain durable queue).
async fn redeclare(env: &Env, name: &str, args: &[(&str, AMQPValue)]) {
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table,
    )
    .await
    .unwrap();
    conn.close(200, "".into()).await.unwrap();
}

/// Callbacks within `window` of the first.
fn within(server: &Server, window: Duration) -> usize {
    let all = server.all();
    let first = all[0].at;
    all.iter().filter(|r| r.at - first <= window).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_settlements_back_off_and_the_callback_is_never_resent_in_a_loop() {
    // "dead": every callback answers 400, so every event is dead-lettered; "delay": 503
    // until told otherwise, so every event is retried through the 5 s delay queue.
    let dead_cb = Server::start(|_, _| Reply::status(400)).await;
    let healed = Arc::new(AtomicBool::new(false));
    let h = healed.clone();
    let delay_cb =
        Server::start(move |_, _| Reply::status(if h.load(Ordering::SeqCst) { 200 } else { 503 }))
            .await;

    let env = Env::new("settlefault");
    let port = free_port();
    let config = json!({
        "amqp": {"url": amqp_url(), "queue": env.queue, "exchange": env.queue, "prefetch": 16},
        "delivery": {"timeout": "5s", "connect_timeout": "1s", "allow_networks": ["127.0.0.0/8"]},
        "retry": {"initial_delay": "5s", "multiplier": 2.0, "max_delay": "20s", "max_attempts": 5},
        "metrics": {"listen": format!("127.0.0.1:{port}")},
        "log": {"format": "text"},
        "profiles": [
            {"id": "dead", "url": dead_cb.url("/")},
            {"id": "delay", "url": delay_cb.url("/")},
        ],
    });
    let config_text = serde_json::to_string(&config).unwrap();
    env.config_text(&config_text); // its queues are deleted when the test ends
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("dispatcher.yaml");
    std::fs::write(&path, &config_text).unwrap();
    let worker = Process::spawn_at(dir, path, port, "info");
    worker.wait_ready().await;

    // Break the topology under the running worker.
    let dead_queue = format!("{}.dead", env.queue);
    let delay_queue = format!("{}.delay.5000", env.queue);
    redeclare(
        &env,
        &dead_queue,
        &[
            ("x-max-length", AMQPValue::LongLongInt(0)),
            ("x-overflow", text("reject-publish")),
        ],
    )
    .await;
    {
        let conn = env.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(delay_queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        conn.close(200, "".into()).await.unwrap();
    }
    publish(&env, "dead", "settle-dead").await;
    publish(&env, "delay", "settle-delay").await;

    // Watch both for a while.
    let window = Duration::from_secs(10);
    wait_until(Duration::from_secs(30), "a window of callbacks", || async {
        [&dead_cb, &delay_cb]
            .iter()
            .all(|s| s.all().first().is_some_and(|r| r.at.elapsed() > window))
    })
    .await;
    let bound = callback_bound(window + Duration::from_millis(500));
    let dead_n = within(&dead_cb, window);
    let delay_n = within(&delay_cb, window);
    let failures = worker
        .metrics()
        .await
        .value("callback_dispatcher_settle_failures_total", &[]);
    eprintln!(
        "refused settlements: callbacks within {window:?} of the first: dead-letter refused {dead_n}, \
         delay queue missing {delay_n} (bound {bound}); settle_failures_total {failures}"
    );
    assert!(
        dead_n >= 2 && dead_n <= bound,
        "dead-letter queue full: {dead_n} callbacks"
    );
    assert!(
        delay_n >= 2 && delay_n <= bound,
        "delay queue missing: {delay_n} callbacks"
    );
    assert!(failures >= (dead_n + delay_n - 2) as f64, "{failures}");
    let logs = worker.logs();
    for queue in [&dead_queue, &delay_queue] {
        assert!(
            logs.lines().any(|l| l.contains("ERROR")
                && l.contains("refused or could not route")
                && l.contains(queue.as_str())),
            "an error line names {queue}:\n{logs}"
        );
    }

    // The queues come back: the events reach them, nothing was lost.
    redeclare(&env, &dead_queue, &[]).await;
    {
        let conn = env.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let topology = callback_dispatcher::amqp::Topology {
            exchange: env.queue.clone(),
            queue: env.queue.clone(),
            dead_queue: dead_queue.clone(),
            partitions: 0,
        };
        topology.declare_delays(&ch, &[5000]).await.unwrap();
        conn.close(200, "".into()).await.unwrap();
    }
    healed.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let dead = env.wait_dead(1, Duration::from_secs(90)).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("permanent_status")
    );
    wait_until(
        Duration::from_secs(90),
        "the retried event delivered",
        || async { worker.metrics().await.deliveries("delay", "delivered") == 1.0 },
    )
    .await;
    eprintln!(
        "refused settlements: both events settled {:?} after the queues came back",
        started.elapsed()
    );
}
