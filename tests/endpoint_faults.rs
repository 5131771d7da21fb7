//! Faults of the worker and of customers' endpoints: a killed worker, SIGTERM under load, a
//! receiver that is down or slow. Each test prints its figures. Nothing here changes the
//! broker's global state, so these run beside the other tests (the broker's own faults are
//! in tests/faults.rs, one at a time).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_then_restart_delivers_every_event_at_least_once() {
    let n = count_env("CD_KILL9_EVENTS", 3000);
    let receiver = Server::start(|_, _| Reply::status(200).after(Duration::from_millis(1))).await;
    let env = Env::new("kill9");
    let file = env.file(
        Retry::backoff(ms(100), secs(1)),
        [load_profile(&receiver.url("/"))],
    );
    env.config(&file);
    publish_load(&env, n, "k9").await;
    let mut first = Process::spawn(&file, "warn");
    receiver.wait_for(n / 10, LIMIT).await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let at_kill = receiver.count();
    let second = Process::spawn(&file, "warn");
    wait_until(
        Duration::from_secs(120),
        "every event delivered",
        || async { per_id(&receiver).len() == n },
    )
    .await;
    // Let anything in flight settle, then look for leftovers.
    wait_until(LIMIT, "in-flight gauge back to 0", || async {
        second.get("/metrics").await.is_some_and(|(_, m)| {
            Metrics::parse(&m).value("callback_dispatcher_inflight_deliveries", &[]) == 0.0
        })
    })
    .await;
    let total = receiver.count();
    let duplicates = total - n;
    println!(
        "kill -9: published {n}, delivered {n} distinct, {at_kill} requests before the kill, {duplicates} duplicate(s), 0 dead-lettered"
    );
    assert!(
        env.dead_letters().await.is_empty(),
        "nothing is dead-lettered"
    );
    assert!(
        duplicates <= 64,
        "duplicates ({duplicates}) are bounded by prefetch (64)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_deliveries_in_flight_exits_0_and_loses_nothing() {
    let n = 200;
    let receiver = Server::start(|_, _| Reply::status(200).after(Duration::from_secs(2))).await;
    let env = Env::new("sigterm");
    let mut file = env.file(
        Retry::backoff(ms(100), secs(1)),
        [load_profile(&receiver.url("/"))],
    );
    // Room for all 200 at once.
    file.amqp.prefetch = Some(256);
    file.delivery.concurrency = Some(256);
    file.delivery.per_profile_concurrency = Some(256);
    env.config(&file);
    publish_load(&env, n, "st").await;
    let mut worker = Process::spawn(&file, "info");
    receiver.wait_for(n, LIMIT).await; // all 200 requests are at the slow receiver: in flight
    let t0 = Instant::now();
    worker.signal("TERM");
    let status = worker.child.wait().unwrap();
    let took = t0.elapsed();
    println!(
        "SIGTERM: exited {status} after {took:?} with {} request(s) made",
        receiver.count()
    );
    assert!(
        status.success(),
        "exit status {status}; logs:\n{}",
        worker.logs()
    );
    assert!(
        took < Duration::from_secs(5 + 10),
        "shutdown is bounded by delivery.timeout (5s) plus a margin: {took:?}"
    );
    let logs = worker.logs();
    assert!(logs.contains("settling deliveries in flight"), "{logs}");
    // Every event settled within the grace was acked before the channel closed (acks that
    // were waiting for a batch included): once the broker has dropped the consumer, nothing
    // is back on the queue.
    if !logs.contains("shutdown limit reached") {
        wait_until(LIMIT, "the worker's consumer gone", || async {
            env.queue_counts().await.1 == 0
        })
        .await;
        let (ready, _) = env.queue_counts().await;
        assert_eq!(
            ready, 0,
            "settled events back on the queue after SIGTERM; logs:\n{logs}"
        );
    }
    let restarted = Process::spawn(&file, "warn");
    wait_until(LIMIT, "all delivered after restart", || async {
        per_id(&receiver).len() == n
    })
    .await;
    drop(restarted);
    println!(
        "SIGTERM: published {n}, delivered {n} distinct, {} duplicate(s)",
        receiver.count() - n
    );
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_back_the_breaker_opens_and_every_event_arrives() {
    let down = Duration::from_secs(count_env("CD_RECEIVER_DOWN_SECS", 30) as u64);
    let n = 100;
    let port = free_port(); // nothing listens there yet: connection refused
    let env = Env::new("down");
    let retry = Retry {
        max_attempts: Some(30),
        multiplier: Some(2.0),
        ..Retry::backoff(ms(250), secs(4))
    };
    let worker = env
        .start(
            env.config(
                &env.file(
                    retry,
                    [load_profile(&format!("http://127.0.0.1:{port}/"))]
                        .map(|p| p.breaker(Breaker::opens_after(20, secs(5)))),
                ),
            ),
        )
        .await;
    publish_load(&env, n, "dn").await;
    tokio::time::sleep(down).await; // the outage itself: nothing to poll for
    let m = worker.metrics().await;
    let refused = m.attempts("load", "connect_error");
    let deferred = m.value(
        "callback_dispatcher_deferrals_total",
        &[("profile", "load"), ("reason", "circuit_open")],
    );
    let open = m.value("callback_dispatcher_circuit_open", &[("profile", "load")]);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let receiver = Server::start_on(listener, |_, _| Reply::status(200)).await;
    wait_until(LIMIT, "all delivered after the outage", || async {
        per_id(&receiver).len() == n
    })
    .await;
    println!(
        "receiver down {down:?}: {n} published, {refused} refused attempts and {deferred} deferrals while the breaker was open, {n} delivered, 0 dead-lettered"
    );
    assert_eq!(open, 1.0, "the breaker is open during the outage");
    assert!(
        (20.0..n as f64).contains(&refused),
        "the breaker opened after 20 failures and spared the rest: {refused} refused attempts"
    );
    assert!(
        deferred > 0.0,
        "events waited in delay queues without spending attempts"
    );
    assert!(env.dead_letters().await.is_empty());
    let m = worker.metrics().await;
    assert_eq!(
        m.value("callback_dispatcher_circuit_open", &[("profile", "load")]),
        0.0
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_slower_than_the_timeout_is_retried_and_nothing_leaks() {
    let n = 20;
    // The first two requests of each event hang past the timeout.
    let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, usize>>> = Default::default();
    let s2 = seen.clone();
    let receiver = Server::start(move |_, r| {
        let id = r.header("webhook-id").unwrap();
        let mut m = s2.lock().unwrap();
        let k = m.entry(id).or_default();
        *k += 1;
        if *k <= 2 {
            Reply::status(200).after(Duration::from_secs(2))
        } else {
            Reply::status(200)
        }
    })
    .await;
    let env = Env::new("slow");
    let mut file = env.file(
        Retry {
            max_attempts: Some(5),
            ..Retry::backoff(ms(100), secs(1))
        },
        // Not about the breaker: 40 timeouts would open it at its default of 20 in a row,
        // and whether they come in a row depends on scheduling.
        [load_profile(&receiver.url("/")).breaker(Breaker::off())],
    );
    file.delivery.timeout = Some(ms(500).into());
    let worker = env.start(env.config(&file)).await;
    publish_load(&env, n, "sl").await;
    worker.wait_delivered("load", n).await;
    let m = worker.metrics().await;
    let timeouts = m.attempts("load", "timeout");
    println!("slow receiver: {n} events, {timeouts} timeouts, {n} delivered");
    assert_eq!(timeouts, 2.0 * n as f64, "two timed-out attempts per event");
    assert_eq!(
        m.value("callback_dispatcher_inflight_deliveries", &[]),
        0.0,
        "no delivery task left behind"
    );
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}
