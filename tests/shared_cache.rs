//! A token cache shared by replicas (SPEC section 12): worker processes against a real
//! redis-server of the test's own, a real auth server and a real receiver.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, base64

/// One profile with OAuth 2.0 (`secret` tells its auth settings apart), tokens shared
/// through `redis` under this test's own key prefix.
fn file(
    env: &Env,
    redis: &RedisServer,
    auth: &Server,
    receiver: &Server,
    secret: &str,
) -> ConfigFile {
    let mut file = env.file(
        Retry::backoff(ms(200), secs(1)),
        [Profile::new("shared", &receiver.url("/")).auth(OAuth2::new(
            &auth.url("/token"),
            "c",
            secret,
        ))],
    );
    file.token_cache = Some(TokenCache {
        redis: Some(redis.url()),
        key_prefix: Some(format!("cdtest-{}", env.queue)),
        encryption_key: Some(KEY.into()),
    });
    file
}

fn delivered_ids(receiver: &Server) -> HashSet<String> {
    receiver
        .all()
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_make_one_token_request_and_store_it_encrypted() {
    let redis = RedisServer::start().await;
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("shared-token-{n}"), "expires_in": 3600}),
        )
        .after(Duration::from_millis(300))
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("shared4");
    let config = file(&env, &redis, &auth, &receiver, "s1");
    env.config(&config);
    let n = 1000;
    env.publish_many(n, |i| {
        (
            event_props(Some("shared"), &format!("s-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    let workers: Vec<Process> = (0..4).map(|_| Process::spawn(&config, "info")).collect();
    wait_until(LIMIT, "all delivered", || async {
        delivered_ids(&receiver).len() == n
    })
    .await;
    assert_eq!(auth.count(), 1, "one token request for four replicas");
    let mut busy = 0;
    for w in &workers {
        let m = w.metrics().await;
        if m.deliveries("shared", "delivered") > 0.0 {
            busy += 1;
        }
        assert_eq!(
            m.value("callback_dispatcher_token_cache_errors_total", &[]),
            0.0
        );
    }
    assert!(
        busy >= 2,
        "the events were shared between replicas ({busy} delivered some)"
    );
    assert!(
        receiver
            .all()
            .iter()
            .all(|r| r.header("authorization").as_deref() == Some("Bearer shared-token-0"))
    );
    // At rest the token is encrypted, under a key named by the profile and a digest.
    let mut conn = redis.connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("cdtest-{}:token:*", env.queue))
        .query_async(&mut conn)
        .await
        .unwrap();
    let token_keys: Vec<&String> = keys.iter().filter(|k| !k.ends_with(":lock")).collect();
    assert_eq!(token_keys.len(), 1, "{keys:?}");
    assert!(token_keys[0].starts_with(&format!("cdtest-{}:token:shared:", env.queue)));
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(token_keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("shared-token"),
        "stored in clear"
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(token_keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 3_000_000 && ttl <= 3_570_000,
        "TTL = the reuse window (3600 s - 30 s): {ttl}"
    );

    // A replica whose profile has other auth settings never reads that token.
    drop(workers);
    let changed = Process::spawn(&file(&env, &redis, &auth, &receiver, "s2"), "info");
    changed.wait_ready().await;
    env.publish(Some("shared"), "s-changed", b"{}").await;
    wait_until(LIMIT, "delivered", || async {
        delivered_ids(&receiver).contains("s-changed")
    })
    .await;
    let via = receiver
        .all()
        .iter()
        .find(|r| r.header("webhook-id").as_deref() == Some("s-changed"))
        .and_then(|r| r.header("authorization"));
    assert_eq!(
        via.as_deref(),
        Some("Bearer shared-token-1"),
        "its own token"
    );
    assert_eq!(auth.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_others_get_a_token_when_the_lock_holder_dies_mid_fetch() {
    let redis = RedisServer::start().await;
    // The first token request hangs: its replica is killed while it holds the lock.
    let auth = Server::start(|n, _| {
        let reply = Reply::json(
            200,
            json!({"access_token": format!("t{n}"), "expires_in": 3600}),
        );
        if n == 0 {
            reply.after(Duration::from_secs(20))
        } else {
            reply
        }
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("shareddie");
    let config = file(&env, &redis, &auth, &receiver, "s");
    env.config(&config);
    let n = 20;
    env.publish_many(n, |i| {
        (
            event_props(Some("shared"), &format!("d-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    let mut holder = Process::spawn(&config, "info");
    auth.wait_for(1, LIMIT).await; // it holds the lock and waits for the auth server
    holder.child.kill().unwrap(); // SIGKILL: the lock stays until it expires
    holder.child.wait().unwrap();
    let others: Vec<Process> = (0..2).map(|_| Process::spawn(&config, "info")).collect();
    wait_until(LIMIT, "all delivered by the others", || async {
        delivered_ids(&receiver).len() == n
    })
    .await;
    let tokens = auth.count();
    println!(
        "lock holder killed mid-fetch: {n} delivered by the other replicas after {tokens} token requests"
    );
    assert!(
        (2..=3).contains(&tokens),
        "the hung one, then one (or one each) by the others: {tokens}"
    );
    assert!(env.dead_letters().await.is_empty());
    drop(others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_loses_nothing() {
    let mut redis = RedisServer::start().await;
    // Tokens live 2 s (reused for 1 s), so replicas keep needing new ones while Redis is down.
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("t{n}"), "expires_in": 2}),
        )
    })
    .await;
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("shareddown");
    let config = file(&env, &redis, &auth, &receiver, "s");
    env.config(&config);
    let workers: Vec<Process> = (0..2).map(|_| Process::spawn(&config, "info")).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    env.publish_many(100, |i| {
        (
            event_props(Some("shared"), &format!("before-{i}")),
            b"{}".to_vec(),
        )
    })
    .await;
    wait_until(LIMIT, "delivered with Redis up", || async {
        delivered_ids(&receiver).len() == 100
    })
    .await;
    redis.stop();
    for round in 0..3 {
        env.publish_many(100, |i| {
            (
                event_props(Some("shared"), &format!("down-{round}-{i}")),
                b"{}".to_vec(),
            )
        })
        .await;
        // Time passing is the point here: each round needs a token past the last one's reuse.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    wait_until(LIMIT, "delivered with Redis down", || async {
        delivered_ids(&receiver).len() == 400
    })
    .await;
    let mut errors = 0.0;
    for w in &workers {
        errors += w
            .metrics()
            .await
            .value("callback_dispatcher_token_cache_errors_total", &[]);
    }
    let logs: String = workers.iter().map(Process::logs).collect();
    println!(
        "redis stopped: 400 delivered, {} token requests, {errors} shared-cache errors",
        auth.count()
    );
    assert!(errors > 0.0, "the failures are counted");
    assert!(
        logs.contains("shared token cache unavailable"),
        "and logged at warn"
    );
    assert!(env.dead_letters().await.is_empty(), "nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_drops_the_shared_token_only_while_it_is_still_the_rejected_one() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let redis = RedisServer::start().await;
    let auth = Server::start(|n, _| {
        Reply::json(
            200,
            json!({"access_token": format!("t{n}"), "expires_in": 3600}),
        )
    })
    .await;
    // Once `stale` is set, the callback URL refuses the first token.
    let stale = Arc::new(AtomicBool::new(false));
    let s = stale.clone();
    let receiver = Server::start(move |_, r| {
        let refused =
            s.load(Ordering::SeqCst) && r.header("authorization").as_deref() == Some("Bearer t0");
        Reply::status(if refused { 401 } else { 200 })
    })
    .await;
    let env = Env::new("shared401");
    let config = file(&env, &redis, &auth, &receiver, "s");
    env.config(&config);
    let workers: Vec<Process> = (0..2).map(|_| Process::spawn(&config, "info")).collect();
    for w in &workers {
        w.wait_ready().await;
    }
    let sum = |name: &'static str, labels: &'static [(&'static str, &'static str)]| {
        let workers = &workers;
        async move {
            let mut v = Vec::new();
            for w in workers {
                v.push(w.metrics().await.value(name, labels));
            }
            v
        }
    };
    // Both replicas hold t0 (read from the shared cache by one of them).
    let mut batch = 0;
    wait_until(LIMIT, "both replicas delivered with t0", || {
        batch += 1;
        let env = &env;
        let sum = &sum;
        async move {
            env.publish_many(10, |i| {
                (
                    event_props(Some("shared"), &format!("warm-{batch}-{i}")),
                    b"{}".to_vec(),
                )
            })
            .await;
            let d = sum(
                "callback_dispatcher_deliveries_total",
                &[("profile", "shared"), ("outcome", "delivered")],
            )
            .await;
            d.iter().all(|&x| x > 0.0)
        }
    })
    .await;
    assert_eq!(auth.count(), 1);
    // One replica meets the 401, drops t0 everywhere and stores t1...
    stale.store(true, Ordering::SeqCst);
    env.publish(Some("shared"), "first-401", b"{}").await;
    wait_until(LIMIT, "t1 in use", || async {
        receiver
            .all()
            .iter()
            .any(|r| r.header("authorization").as_deref() == Some("Bearer t1"))
    })
    .await;
    // ...then the other meets it with its own copy of t0: t1 must survive its 401.
    let attempts_4xx = || {
        sum(
            "callback_dispatcher_delivery_attempts_total",
            &[("profile", "shared"), ("result", "4xx")],
        )
    };
    let mut batch = 0;
    wait_until(LIMIT, "both replicas met the 401", || {
        batch += 1;
        let env = &env;
        let attempts_4xx = &attempts_4xx;
        async move {
            env.publish_many(10, |i| {
                (
                    event_props(Some("shared"), &format!("after-{batch}-{i}")),
                    b"{}".to_vec(),
                )
            })
            .await;
            attempts_4xx().await.iter().all(|&x| x > 0.0)
        }
    })
    .await;
    wait_until(LIMIT, "all delivered", || async {
        let m = sum(
            "callback_dispatcher_deliveries_total",
            &[("profile", "shared"), ("outcome", "delivered")],
        )
        .await;
        let published = receiver
            .all()
            .iter()
            .filter_map(|r| r.header("webhook-id"))
            .collect::<HashSet<_>>();
        m.iter().sum::<f64>() == published.len() as f64
    })
    .await;
    println!(
        "401 with a shared token: {} token requests for two replicas",
        auth.count()
    );
    // Had the second 401 deleted whatever was shared by then (the fresh t1), a third token
    // would have been fetched.
    assert_eq!(
        auth.count(),
        2,
        "one stale token, one refresh, for both replicas"
    );
    assert!(env.dead_letters().await.is_empty());
}
