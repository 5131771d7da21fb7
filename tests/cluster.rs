//! Many replicas act as one (SPEC section 13): several workers, in this process or as
//! processes, against a real redis-server of the test's own, a real broker and a real
//! receiver. Configurations are JSON (valid YAML) built with `serde_json::json!`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const REPLICAS: &str = "callback_dispatcher_cluster_replicas";
const ERRORS: &str = "callback_dispatcher_cluster_errors_total";

/// A whole configuration for `env`, sharing through `redis` under a prefix of the test's own.
fn config(env: &Env, redis: &str, profiles: Value) -> Value {
    json!({
        "amqp": {"url": amqp_url(), "queue": env.queue, "exchange": env.queue, "prefetch": 64},
        "delivery": {
            "concurrency": 64,
            "timeout": "5s",
            "connect_timeout": "1s",
            "allow_networks": ["127.0.0.0/8", "::1/128"]
        },
        "retry": {"initial_delay": "200ms", "max_delay": "1s", "max_attempts": 50},
        "metrics": {"listen": "127.0.0.1:0"},
        "log": {"format": "text"},
        "cluster": {"redis": redis, "key_prefix": prefix(env)},
        "profiles": profiles
    })
}

fn prefix(env: &Env) -> String {
    format!("cdtest-{}", env.queue)
}

/// A worker in this process.
async fn start(env: &Env, config: &Value) -> Running {
    env.start(env.config_text(&serde_json::to_string(config).unwrap()))
        .await
}

/// A worker process, its metrics on a port of its own.
fn spawn(env: &Env, config: &Value) -> Process {
    let mut config = config.clone();
    let port = free_port();
    config["metrics"]["listen"] = json!(format!("127.0.0.1:{port}"));
    let text = serde_json::to_string(&config).unwrap();
    env.config_text(&text);
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let path = dir.path().join("dispatcher.yaml");
    std::fs::write(&path, text).unwrap();
    Process::spawn_at(dir, path, port, "info")
}

fn delivered_ids(receiver: &Server) -> HashSet<String> {
    receiver
        .all()
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect()
}

/// The most requests that arrived within any one second.
fn busiest_second(times: &[Instant]) -> usize {
    let mut t = times.to_vec();
    t.sort_unstable();
    let (mut best, mut first) = (0, 0);
    for i in 0..t.len() {
        while t[i] - t[first] >= Duration::from_secs(1) {
            first += 1;
        }
        best = best.max(i - first + 1);
    }
    best
}

fn publish_props(profile: &str, id: &str) -> lapin::BasicProperties {
    event_props(Some(profile), id)
}

async fn gauge_everywhere(workers: &[&Running], name: &str, labels: &[(&str, &str)], want: f64) {
    wait_until(
        LIMIT,
        &format!("{name} = {want} on every worker"),
        || async {
            for w in workers {
                if w.metrics().await.value(name, labels) != want {
                    return false;
                }
            }
            true
        },
    )
    .await;
}

/// A redis-server with a password, on a port that stays the same across restarts.
struct Store {
    child: std::process::Child,
    port: u16,
}

const STORE_PASSWORD: &str = "cluster-SECRET-pw";

impl Store {
    async fn start(port: u16) -> Store {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                STORE_PASSWORD,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/ensure-test-tools.sh installs it)");
        let store = Store { child, port };
        wait_until(Duration::from_secs(10), "redis-server answers", || async {
            store.connection().await.is_some()
        })
        .await;
        store
    }

    fn url(&self) -> String {
        format!("redis://:{STORE_PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.ok()?;
        (pong == "PONG").then_some(conn)
    }

    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut conn = self.connection().await.expect("redis answers");
        redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} redis-server");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn without_a_cluster_the_replica_gauge_is_one() {
    let text = callback_dispatcher::metrics::Metrics::new().render();
    assert!(text.contains(&format!("{REPLICAS} 1\n")), "{text}");
    assert!(text.contains(&format!("{ERRORS} 0\n")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_count_each_other_and_one_that_stops_drops_out() {
    let redis = RedisServer::start().await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("clcount");
    let cfg = config(
        &env,
        &redis.url(),
        json!([{"id": "p", "url": receiver.url("/")}]),
    );
    let a = start(&env, &cfg).await;
    let b = start(&env, &cfg).await;
    let c = start(&env, &cfg).await;
    gauge_everywhere(&[&a, &b, &c], REPLICAS, &[], 3.0).await;
    let mut conn = redis.connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:replica:*", prefix(&env)))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=5000).contains(&ttl), "{k} expires within 5 s: {ttl}");
    }
    // One stops (gracefully): it leaves at once, the others see two within a heartbeat.
    let stopped = Instant::now();
    c.stop().await.unwrap();
    gauge_everywhere(&[&a, &b], REPLICAS, &[], 2.0).await;
    println!(
        "3 replicas counted; one stopped, the others counted 2 after {} ms",
        stopped.elapsed().as_millis()
    );
    assert!(stopped.elapsed() < Duration::from_secs(4));
    for w in [&a, &b] {
        assert_eq!(w.metrics().await.value(ERRORS, &[]), 0.0);
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_holds_for_the_deployment_and_a_killed_replicas_share_goes_to_the_other() {
    let redis = RedisServer::start().await;
    let receiver = Server::start(|_, _| Reply::status(204).after(Duration::from_millis(300))).await;
    let env = Env::new("clconc");
    let cfg = config(
        &env,
        &redis.url(),
        json!([{"id": "slow", "url": receiver.url("/"), "concurrency": 4}]),
    );
    let a = spawn(&env, &cfg);
    let mut b = spawn(&env, &cfg);
    for w in [&a, &b] {
        w.wait_ready().await;
    }
    wait_until(LIMIT, "both count 2 replicas", || async {
        a.metrics().await.value(REPLICAS, &[]) == 2.0
            && b.metrics().await.value(REPLICAS, &[]) == 2.0
    })
    .await;
    let n = 150;
    env.publish_many(n, |i| {
        (publish_props("slow", &format!("c-{i}")), b"{}".to_vec())
    })
    .await;
    receiver.wait_for(20, LIMIT).await;
    assert!(
        a.metrics().await.attempts("slow", "2xx") > 0.0
            && b.metrics().await.attempts("slow", "2xx") > 0.0,
        "both replicas deliver"
    );
    let before_kill = receiver.most_in_flight();
    // Killed with -9: it never leaves; its key expires, and then the other's share grows.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    wait_until(LIMIT, "the survivor counts 1 replica", || async {
        a.metrics().await.value(REPLICAS, &[]) == 1.0
    })
    .await;
    let noticed = killed.elapsed();
    wait_until(LIMIT, "the survivor alone has 4 in flight", || async {
        receiver.now_in_flight() == 4
    })
    .await;
    let grown = killed.elapsed();
    wait_until(LIMIT, "all delivered", || async {
        delivered_ids(&receiver).len() == n
    })
    .await;
    println!(
        "concurrency 4 across 2 replicas: at most {before_kill} in flight with both, {} overall; \
         one killed with -9: counted gone after {} ms, the survivor had 4 in flight after {} ms",
        receiver.most_in_flight(),
        noticed.as_millis(),
        grown.as_millis()
    );
    assert!(
        receiver.most_in_flight() <= 4,
        "never more than the profile's concurrency at the receiver: {}",
        receiver.most_in_flight()
    );
    assert!(noticed < Duration::from_secs(8), "{noticed:?}");
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_for_the_deployment() {
    let redis = RedisServer::start().await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("clrate");
    let cfg = config(
        &env,
        &redis.url(),
        json!([{"id": "limited", "url": receiver.url("/"), "rate_limit": "10/s"}]),
    );
    let workers = [
        start(&env, &cfg).await,
        start(&env, &cfg).await,
        start(&env, &cfg).await,
    ];
    let refs: Vec<&Running> = workers.iter().collect();
    gauge_everywhere(&refs, REPLICAS, &[], 3.0).await;
    let n = 100;
    let started = Instant::now();
    env.publish_many(n, |i| {
        (publish_props("limited", &format!("r-{i}")), b"{}".to_vec())
    })
    .await;
    wait_until(LIMIT, "all delivered", || async {
        delivered_ids(&receiver).len() == n
    })
    .await;
    let times: Vec<Instant> = receiver.all().iter().map(|r| r.at).collect();
    let busiest = busiest_second(&times);
    let first = *times.iter().min().unwrap();
    let span = *times.iter().max().unwrap() - first;
    let (mut deferrals, mut attempts, mut busy) = (0.0, 0.0, 0);
    for w in &workers {
        let m = w.metrics().await;
        deferrals += m.value(
            "callback_dispatcher_deferrals_total",
            &[("profile", "limited"), ("reason", "rate_limit")],
        );
        let mine = m.attempts("limited", "2xx");
        attempts += mine;
        busy += usize::from(mine > 0.0);
        assert_eq!(m.value(ERRORS, &[]), 0.0);
    }
    println!(
        "rate_limit 10/s across 3 replicas, {n} events: busiest second {busiest} (bound 20), \
         first to last {} ms, {deferrals} deferrals, {busy} replicas attempted, published {} ms before the first",
        span.as_millis(),
        (first - started).as_millis()
    );
    assert!(busiest <= 20, "limit + burst in any second: {busiest}");
    // A burst of 10, then 10/s: the 100th no sooner than 9 s after the first.
    assert!(span >= Duration::from_millis(8500), "{span:?}");
    assert_eq!(attempts, n as f64, "one attempt per event");
    assert!(
        deferrals > 0.0,
        "events over the limit are deferred and counted"
    );
    assert!(busy >= 2, "the replicas share the work");
    assert!(env.dead_letters().await.is_empty());
    let rate_keys = redis_keys(&redis, &format!("{}:rate:*", prefix(&env))).await;
    assert_eq!(rate_keys, vec![format!("{}:rate:limited", prefix(&env))]);
}

async fn redis_keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    let mut conn = redis.connection().await.unwrap();
    redis::cmd("KEYS")
        .arg(pattern)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_by_one_replica_stops_them_all_and_one_probe_decides() {
    let redis = RedisServer::start().await;
    let healthy = Arc::new(AtomicBool::new(false));
    let up = healthy.clone();
    let receiver = Server::start(move |_, _| {
        let status = if up.load(Ordering::SeqCst) { 204 } else { 503 };
        Reply::status(status).after(Duration::from_millis(20))
    })
    .await;
    let env = Env::new("clbreak");
    let failures = 5;
    let concurrency = 3;
    let cfg = config(
        &env,
        &redis.url(),
        json!([{
            "id": "down",
            "url": receiver.url("/"),
            "concurrency": concurrency,
            "circuit_breaker": {"failures": failures, "open_for": "2s"}
        }]),
    );
    let workers = [
        start(&env, &cfg).await,
        start(&env, &cfg).await,
        start(&env, &cfg).await,
    ];
    let refs: Vec<&Running> = workers.iter().collect();
    gauge_everywhere(&refs, REPLICAS, &[], 3.0).await;
    let n = 60;
    env.publish_many(n, |i| {
        (publish_props("down", &format!("b-{i}")), b"{}".to_vec())
    })
    .await;
    let open = [("profile", "down")];
    let gauge = "callback_dispatcher_circuit_open";
    wait_until(LIMIT, "one replica's breaker opens", || async {
        for w in &workers {
            if w.metrics().await.value(gauge, &open) == 1.0 {
                return true;
            }
        }
        false
    })
    .await;
    let first_open = Instant::now();
    gauge_everywhere(&refs, gauge, &open, 1.0).await;
    let all_open = Instant::now();
    let attempts_to_open = receiver.count();
    // Time passing is the point: within open_for (2 s) and the probe after it, the receiver
    // must see exactly one request, the deployment's one probe (which fails: open again).
    let window_end = first_open + Duration::from_millis(3500);
    tokio::time::sleep_until(window_end.into()).await;
    let during: Vec<Instant> = receiver
        .all()
        .iter()
        .map(|r| r.at)
        .filter(|at| *at > all_open && *at <= window_end)
        .collect();
    println!(
        "failures {failures}, 3 replicas (concurrency {concurrency} in all): {attempts_to_open} attempts before all were open; \
         all open {} ms after the first; {} request(s) in the next {} ms (the probe)",
        (all_open - first_open).as_millis(),
        during.len(),
        (window_end - all_open).as_millis()
    );
    assert!(
        all_open - first_open < Duration::from_millis(1500),
        "every replica treats it as open within a second"
    );
    assert!(
        attempts_to_open <= (failures + concurrency) as usize,
        "about `failures` attempts in all, not per replica: {attempts_to_open}"
    );
    assert_eq!(during.len(), 1, "one probe for the deployment");
    // The endpoint comes back: the next probe closes the breaker for everyone.
    healthy.store(true, Ordering::SeqCst);
    gauge_everywhere(&refs, gauge, &open, 0.0).await;
    wait_until(LIMIT, "all delivered", || async {
        delivered_ids(&receiver).len() == n
    })
    .await;
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_replicas_go_on_alone_and_share_again_when_it_is_back() {
    let port = free_port();
    let mut store = Store::start(port).await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("claway");
    let cfg = config(
        &env,
        &store.url(),
        json!([
            {"id": "limited", "url": receiver.url("/limited"), "rate_limit": "10/s"},
            {"id": "free", "url": receiver.url("/free")}
        ]),
    );
    let workers = [spawn(&env, &cfg), spawn(&env, &cfg)];
    for w in &workers {
        w.wait_ready().await;
    }
    wait_until(LIMIT, "both count 2 replicas", || async {
        for w in &workers {
            if w.metrics().await.value(REPLICAS, &[]) != 2.0 {
                return false;
            }
        }
        true
    })
    .await;
    let errors = || async {
        let mut sum = 0.0;
        for w in &workers {
            sum += w.metrics().await.value(ERRORS, &[]);
        }
        sum
    };
    let delivered = |prefix: &'static str| {
        let receiver = receiver.clone();
        move || {
            receiver
                .all()
                .iter()
                .filter(|r| r.uri.starts_with(prefix))
                .count()
        }
    };
    let limited = delivered("/limited");
    let free = delivered("/free");
    env.publish_many(20, |i| {
        (publish_props("limited", &format!("up-{i}")), b"{}".to_vec())
    })
    .await;
    wait_until(LIMIT, "delivered with Redis up", || async {
        limited() == 20
    })
    .await;
    assert_eq!(errors().await, 0.0);

    // 1. Redis hangs (SIGSTOP): calls time out; events go on with divided limits.
    store.signal("STOP");
    let hung = Instant::now();
    env.publish_many(50, |i| {
        (
            publish_props("limited", &format!("hung-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    env.publish_many(100, |i| {
        (publish_props("free", &format!("free-{i}")), b"{}".to_vec())
    })
    .await;
    wait_until(LIMIT, "the free profile's events delivered", || async {
        free() == 100
    })
    .await;
    let free_took = hung.elapsed();
    wait_until(LIMIT, "the limited profile's events delivered", || async {
        limited() == 70
    })
    .await;
    let limited_took = hung.elapsed();
    let away_times: Vec<Instant> = receiver
        .all()
        .iter()
        .filter(|r| r.uri.starts_with("/limited") && r.at > hung)
        .map(|r| r.at)
        .collect();
    let busiest_away = busiest_second(&away_times);
    wait_until(LIMIT, "the failures are counted", || async {
        let mut each = 0;
        for w in &workers {
            each += usize::from(w.metrics().await.value(ERRORS, &[]) > 0.0);
        }
        each == 2
    })
    .await;
    for w in &workers {
        assert_eq!(
            w.metrics().await.value(REPLICAS, &[]),
            2.0,
            "the last known count stays"
        );
    }
    println!(
        "redis hung: 100 events of a profile without rate_limit in {} ms; 50 of a 10/s profile in {} ms, \
         busiest second {busiest_away} (each replica 5/s, burst 5); {} cluster errors",
        free_took.as_millis(),
        limited_took.as_millis(),
        errors().await
    );
    assert!(busiest_away <= 20, "{busiest_away}");
    assert!(
        limited_took < Duration::from_secs(10),
        "the divided limits go on: {limited_took:?}"
    );

    // 2. It answers again: sharing resumes; then it is killed and restarted empty.
    store.signal("CONT");
    wait_until(LIMIT, "both replicas announced again", || async {
        store
            .keys(&format!("{}:replica:*", prefix(&env)))
            .await
            .len()
            == 2
    })
    .await;
    let settled = errors().await;
    store.kill();
    let killed = Instant::now();
    env.publish_many(20, |i| {
        (
            publish_props("limited", &format!("down-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    wait_until(LIMIT, "delivered with Redis down", || async {
        limited() == 90
    })
    .await;
    assert!(errors().await > settled, "the failures are counted again");
    store = Store::start(port).await;
    wait_until(
        LIMIT,
        "both replicas announced in the new Redis",
        || async {
            store
                .keys(&format!("{}:replica:*", prefix(&env)))
                .await
                .len()
                == 2
        },
    )
    .await;
    let back = killed.elapsed();
    env.publish_many(20, |i| {
        (
            publish_props("limited", &format!("back-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    wait_until(LIMIT, "delivered with Redis back", || async {
        limited() == 110
    })
    .await;
    assert_eq!(
        store.keys(&format!("{}:rate:*", prefix(&env))).await,
        vec![format!("{}:rate:limited", prefix(&env))],
        "the shared limiter is in use again"
    );
    let ids = delivered_ids(&receiver);
    assert_eq!(ids.len(), 210, "nothing lost");
    assert!(env.dead_letters().await.is_empty());
    for w in &workers {
        // Log lines reach stderr through a batching writer: wait until every outage this
        // replica warned about is also logged as over. A replica warns once per outage it
        // notices (a quick restart between two heartbeats may go unnoticed by one of them).
        wait_until(LIMIT, "each warned outage logged as over", || async {
            let logs = w.logs();
            logs.matches("cluster store (Redis) unavailable").count()
                == logs.matches("reachable again").count()
        })
        .await;
        let logs = w.logs();
        assert!(
            !logs.contains(STORE_PASSWORD),
            "the password is never logged"
        );
        let warnings = logs.matches("cluster store (Redis) unavailable").count();
        assert!(
            (1..=2).contains(&warnings),
            "one warning per outage, never one per failed call:\n{logs}"
        );
    }
    println!(
        "redis killed and restarted: shared again {} ms after the kill",
        back.as_millis()
    );
}
