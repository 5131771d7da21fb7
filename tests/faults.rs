//! The broker's faults: connections closed by force, a deleted work queue, a memory alarm,
//! a broker restart under ordered delivery. They change the broker's global state (or count
//! its connections), so they run one at a time, and scripts/test.sh runs this file after
//! every other test. The worker's and the endpoints' faults are in tests/endpoint_faults.rs.

mod common;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::*;

static SERIAL: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));
const LIMIT: Duration = Duration::from_secs(60);

fn close_all_connections() {
    rabbitmqctl(&["close_all_connections", "test: forced close"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_connection_closes_twice_the_worker_reconnects_and_delivers_everything() {
    let _serial = SERIAL.lock().await;
    let n = count_env("CD_RECONNECT_EVENTS", 2000);
    let receiver = Server::start(|_, _| Reply::status(200).after(Duration::from_millis(1))).await;
    let env = Env::new("reconnect");
    let file = env.file(
        Retry::backoff(ms(100), secs(1)),
        [load_profile(&receiver.url("/"))],
    );
    let worker = env.start(env.config(&file)).await;

    // Watch readiness continuously, to see it drop and come back.
    let addr = worker.metrics_addr;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                if let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await {
                    let s = r.status().as_u16();
                    let mut v = seen.lock().unwrap();
                    if v.last() != Some(&s) {
                        v.push(s);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    publish_load(&env, n / 2, "rc1").await;
    for round in 1..=2 {
        receiver.wait_for(round * n / 4, LIMIT).await;
        close_all_connections();
        wait_until(LIMIT, "ready again", || async {
            worker.get("/readyz").await.0 == 200
        })
        .await;
    }
    publish_load(&env, n - n / 2, "rc2").await;
    wait_until(LIMIT, "every event delivered", || async {
        per_id(&receiver).len() == n
    })
    .await;
    watcher.abort();
    let transitions = seen.lock().unwrap().clone();
    println!(
        "reconnect: published {n}, delivered {n} distinct, {} duplicate(s); /readyz went {transitions:?}",
        receiver.count() - n
    );
    assert!(
        transitions.iter().filter(|&&s| s == 503).count() >= 2,
        "/readyz must drop to 503 on each close: {transitions:?}"
    );
    assert_eq!(transitions.last(), Some(&200));
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}

/// Connections the broker has open under the worker's connection name.
fn worker_connections() -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&out.stdout)
        .matches("connection_name\",\"callback-dispatcher\"")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_work_queue_is_redeclared_without_leaking_a_connection() {
    let _serial = SERIAL.lock().await;
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("cancel");
    let file = env.file(
        Retry::backoff(ms(100), secs(1)),
        [load_profile(&receiver.url("/"))],
    );
    let worker = env.start(env.config(&file)).await;
    wait_until(LIMIT, "one worker connection", || async {
        worker_connections() == 1
    })
    .await;
    publish_load(&env, 10, "c1").await;
    receiver.wait_for(10, LIMIT).await;

    // The broker cancels the consumer; the connection itself stays up.
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(env.queue.as_str().into(), Default::default())
        .await
        .unwrap();
    conn.close(200, "".into()).await.unwrap();

    wait_until(LIMIT, "ready again", || async {
        worker.get("/readyz").await.0 == 200
    })
    .await;
    publish_load(&env, 10, "c2").await;
    receiver.wait_for(20, LIMIT).await;
    wait_until(LIMIT, "the old connection closed", || async {
        worker_connections() == 1
    })
    .await;
    println!(
        "consumer cancelled: 20 of 20 delivered, {} worker connection(s) open",
        worker_connections()
    );
    worker.stop().await.unwrap();
}

/// A broker memory alarm (publishers blocked) for as long as it lives: the watermark is set
/// so low that the alarm goes off, and the original is put back when dropped, even after a
/// panic. Only tests holding `SERIAL` may raise one.
struct MemoryAlarm {
    original: String,
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl MemoryAlarm {
    async fn raise() -> MemoryAlarm {
        let original = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."]);
        let original = if original.parse::<f64>().is_ok() {
            original
        } else {
            "0.4".into()
        };
        let alarm = MemoryAlarm { original };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.00001"]);
        wait_until(LIMIT, "the broker's memory alarm", || async {
            rabbitmqctl(&["eval", "rabbit_alarm:get_alarms()."]).contains("memory")
        })
        .await;
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", &self.original])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_memory_alarm_exits_in_time_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = SERIAL.lock().await;
    let n = 40;
    // Answers 503 until told otherwise: every event needs a republish, which the alarm blocks.
    let up = Arc::new(AtomicBool::new(false));
    let u = up.clone();
    let receiver = Server::start(move |_, _| {
        Reply::status(if u.load(Ordering::SeqCst) { 200 } else { 503 })
            .after(Duration::from_millis(200))
    })
    .await;
    let env = Env::new("alarm");
    let file = env.file(
        Retry {
            max_attempts: Some(50),
            ..Retry::backoff(ms(100), secs(1))
        },
        // Not about the breaker: every event fails until the end.
        [load_profile(&receiver.url("/")).breaker(Breaker::off())],
    );
    env.config(&file);
    publish_load(&env, n, "al").await; // before the alarm: it blocks publishers
    let mut worker = Process::spawn(&file, "info");
    receiver.wait_for(5, LIMIT).await;
    let alarm = MemoryAlarm::raise().await;
    receiver.wait_for(n, LIMIT).await; // every event attempted; none can be republished
    let t0 = Instant::now();
    worker.signal("TERM");
    let status = worker.child.wait().unwrap();
    let took = t0.elapsed();
    println!("memory alarm: SIGTERM -> exited {status} after {took:?}");
    assert!(status.success(), "{status}; logs:\n{}", worker.logs());
    assert!(
        took < Duration::from_secs(5 + 10),
        "bounded by delivery.timeout (5 s) plus a margin: {took:?}"
    );
    drop(alarm);
    up.store(true, Ordering::SeqCst);
    let restarted = Process::spawn(&file, "warn");
    wait_until(LIMIT, "every event delivered after the restart", || async {
        let delivered: std::collections::HashSet<String> = receiver
            .all()
            .iter()
            .filter(|r| r.at > t0)
            .map(|r| r.header("webhook-id").unwrap())
            .collect();
        delivered.len() == n
    })
    .await;
    drop(restarted);
    assert!(env.dead_letters().await.is_empty(), "nothing dead-lettered");
}

/// The broker's application stopped (`rabbitmqctl stop_app`) while this lives: started
/// again and awaited by [`BrokerStopped::start`], or when dropped, even after a panic, so
/// the tests after it still have a broker. Only tests holding `SERIAL` may stop it.
struct BrokerStopped {
    started: bool,
}

async fn rabbitmqctl_blocking(args: &'static [&'static str]) -> String {
    tokio::task::spawn_blocking(move || rabbitmqctl(args))
        .await
        .unwrap()
}

impl BrokerStopped {
    async fn stop() -> BrokerStopped {
        // Made first: a `stop_app` that fails halfway still gets its `start_app`.
        let stopped = BrokerStopped { started: false };
        rabbitmqctl_blocking(&["stop_app"]).await;
        stopped
    }

    async fn start(mut self) {
        self.started = true;
        rabbitmqctl_blocking(&["start_app"]).await;
        rabbitmqctl_blocking(&["await_startup", "--timeout", "120"]).await;
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if !self.started {
            for args in [&["start_app"][..], &["await_startup", "--timeout", "120"]] {
                let _ = std::process::Command::new("rabbitmqctl")
                    .args(args)
                    .output();
            }
        }
    }
}

/// SPEC section 15: order per key holds across a broker restart. The worker loses its
/// connection with callbacks in flight and events waiting in its lanes; its supervisor
/// reconnects, and the quorum partition queues (recovered from their log) give it back every
/// unacknowledged event in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_survives_a_broker_restart() {
    use std::collections::HashSet;
    let _serial = SERIAL.lock().await;
    let env = Env::new("ordrestart");
    // 100 ms per callback: a key's 50 events take 5 s at least, so the restart comes while
    // every key is midway.
    let receiver = Server::start(|_, _| Reply::status(204).after(ms(100))).await;
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let file = ordered_file(
        &env,
        4,
        Retry::attempts(5),
        Profile::new("r", &receiver.url("/")),
    );
    let worker = env.start(env.config(&file)).await;
    let published = ordered_events(&keys, 50);
    publish_ordered(&env, "r", &published).await;
    let delivered = |receiver: &Server| {
        first_successes(receiver)
            .0
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    receiver.wait_for(100, LIMIT).await;

    let t0 = Instant::now();
    let stopped = BrokerStopped::stop().await;
    let at_stop = delivered(&receiver);
    wait_until(
        LIMIT,
        "the worker not ready while the broker is down",
        || async { worker.get("/readyz").await.0 == 503 },
    )
    .await;
    stopped.start().await;
    let restarted = t0.elapsed();
    wait_until(secs(180), "all 500 delivered after the restart", || async {
        delivered(&receiver) == 500
    })
    .await;
    let (order, all) = first_successes(&receiver);
    println!(
        "broker restart: {at_stop} of 500 delivered when stop_app returned, broker back after \
         {restarted:?}, all 500 after {:?}, {} repeat(s)",
        t0.elapsed(),
        all.len() - 500
    );
    assert!(
        at_stop < 500,
        "the restart came after everything was delivered"
    );
    for key in &keys {
        let want: Vec<String> = (0..50).map(|i| format!("{key}-{i:02}")).collect();
        assert_eq!(order[*key], want, "key {key} out of order");
    }
    // A repeat is a callback sent again with its own webhook-id, never a new one.
    let ids: HashSet<String> = published.iter().map(|(_, id)| id.clone()).collect();
    assert!(all.iter().all(|id| ids.contains(id)));
    assert!(env.dead_letters().await.is_empty(), "nothing dead-lettered");
    worker.stop().await.unwrap();
}
