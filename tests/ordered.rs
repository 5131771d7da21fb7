//! Ordered delivery per key (SPEC section 15) on the real broker: the consistent-hash
//! exchange, partitions with a single active consumer, a failing head holding back only its
//! key, a dead-lettered head letting its key move on, and order kept across a kill -9.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;

/// Publish `events` (key, id) to the ordered exchange, in order, on one channel, with
/// confirms: what SPEC section 15 asks of a publisher.
async fn publish_ordered(env: &Env, profile: &str, events: &[(String, String)]) {
    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("{}.ordered", env.queue);
    let mut pending = Vec::new();
    for (key, id) in events {
        let mut headers = FieldTable::default();
        headers.insert("profile".into(), text(profile));
        headers.insert("ordering_key".into(), text(key));
        let props = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        pending.push(
            ch.basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"{}",
                props,
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), lapin::Confirmation::Ack(None));
    }
    conn.close(200, "".into()).await.unwrap();
}

/// `<key>-<nn>`, interleaved key by key: A-00, B-00, C-00, A-01, ...
fn events(keys: &[&str], per_key: usize) -> Vec<(String, String)> {
    (0..per_key)
        .flat_map(|i| {
            keys.iter()
                .map(move |k| (k.to_string(), format!("{k}-{i:02}")))
        })
        .collect()
}

/// Per key, the ids in the order of their first 2xx; and every id received.
fn first_successes(receiver: &Server) -> (HashMap<String, Vec<String>>, Vec<String>) {
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    for r in receiver.all() {
        let id = r.header("webhook-id").unwrap();
        all.push(id.clone());
        if r.status == 204 && seen.insert(id.clone()) {
            let key = id.split('-').next().unwrap().to_owned();
            order.entry(key).or_default().push(id);
        }
    }
    (order, all)
}

/// A receiver answering 204, except what `fail` says (by id and the how-many-th request for
/// it).
async fn receiver(fail: impl Fn(&str, u32) -> Option<u16> + Send + Sync + 'static) -> Server {
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    Server::start(move |_, r| {
        let id = r.header("webhook-id").unwrap_or_default();
        let n = {
            let mut c = counts.lock().unwrap();
            let n = c.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        Reply::status(fail(&id, n).unwrap_or(204))
    })
    .await
}

fn ordered_file(env: &Env, partitions: u32, retry: Retry, profile: Profile) -> ConfigFile {
    let mut file = env.file(retry, [profile]);
    file.amqp.partitions = Some(partitions);
    file
}

#[tokio::test]
async fn a_failing_head_holds_back_only_its_own_key() {
    let env = Env::new("ord");
    // A-05 fails twice; the retries wait 3 s each.
    let receiver = receiver(|id, n| (id == "A-05" && n <= 2).then_some(503)).await;
    let retry = Retry {
        max_attempts: Some(5),
        multiplier: Some(1.0),
        jitter: Some(0.0),
        ..Retry::backoff(secs(3), secs(3))
    };
    // One partition: the three keys share it, so "other keys go on" holds inside it.
    let file = ordered_file(&env, 1, retry, Profile::new("o", &receiver.url("/")));
    let worker = env.start(env.config(&file)).await;
    publish_ordered(&env, "o", &events(&["A", "B", "C"], 30)).await;
    // Unordered events beside them are not held back either.
    env.publish_many(20, |i| {
        (event_props(Some("o"), &format!("U-{i:02}")), b"{}".to_vec())
    })
    .await;

    // While A-05 waits, A's 24 later events wait behind it, counted.
    wait_until(secs(60), "A-06..A-29 waiting behind A-05", || async {
        worker
            .metrics()
            .await
            .value("callback_dispatcher_ordered_waiting", &[("profile", "o")])
            == 24.0
    })
    .await;
    worker.wait_delivered("o", 110).await;
    let m = worker.metrics().await;
    worker.stop().await.unwrap();
    assert_eq!(
        m.value("callback_dispatcher_ordered_waiting", &[("profile", "o")]),
        0.0
    );
    assert_eq!(m.deliveries("o", "retry_scheduled"), 2.0);

    let (order, _) = first_successes(&receiver);
    for key in ["A", "B", "C"] {
        let want: Vec<String> = (0..30).map(|i| format!("{key}-{i:02}")).collect();
        assert_eq!(order[key], want, "key {key} out of order");
    }
    let requests = receiver.all();
    let at = |id: &str, status: u16| {
        requests
            .iter()
            .filter(|r| r.header("webhook-id").as_deref() == Some(id))
            .filter(|r| r.status == status)
            .map(|r| r.at)
            .collect::<Vec<Instant>>()
    };
    let a05_done = at("A-05", 204)[0];
    assert_eq!(at("A-05", 503).len(), 2);
    // Nothing of A after A-05 was even tried before A-05 succeeded.
    for i in 6..30 {
        let first = requests
            .iter()
            .find(|r| r.header("webhook-id").as_deref() == Some(&format!("A-{i:02}")))
            .unwrap();
        assert!(first.at > a05_done, "A-{i:02} sent before A-05 succeeded");
    }
    // B, C and the unordered events were all delivered while A-05 waited.
    for r in &requests {
        let id = r.header("webhook-id").unwrap();
        if !id.starts_with('A') {
            assert!(r.at < a05_done, "{id} waited for A-05");
        }
    }
}

#[tokio::test]
async fn a_dead_lettered_head_lets_its_key_move_on() {
    let env = Env::new("orddead");
    let receiver = receiver(|id, _| (id == "K-01").then_some(500)).await;
    let retry = Retry {
        max_attempts: Some(2),
        jitter: Some(0.0),
        ..Retry::backoff(ms(200), secs(1))
    };
    let file = ordered_file(&env, 2, retry, Profile::new("d", &receiver.url("/")));
    let worker = env.start(env.config(&file)).await;
    publish_ordered(&env, "d", &events(&["K"], 3)).await;
    let dead = env.wait_dead(1, secs(60)).await;
    worker.wait_delivered("d", 2).await;
    worker.stop().await.unwrap();
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("max_attempts")
    );
    assert_eq!(header_int(&dead[0], "x-attempt"), Some(2));
    let ids: Vec<String> = receiver
        .all()
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids, ["K-00", "K-01", "K-01", "K-02"]);
}

#[tokio::test]
async fn order_per_key_survives_a_kill_9_and_the_other_replica_takes_over() {
    let env = Env::new("ordkill");
    let receiver = Server::start(|_, _| Reply::status(204).after(ms(5))).await;
    let keys: Vec<String> = (0..10).map(|k| format!("k{k}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let file = ordered_file(
        &env,
        4,
        Retry::attempts(5),
        Profile::new("r", &receiver.url("/")),
    );
    env.config(&file);
    let first = Process::spawn(&file, "warn");
    first.wait_ready().await;
    let second = Process::spawn(&file, "warn");
    second.wait_ready().await;
    let published = events(&keys, 50);
    publish_ordered(&env, "r", &published).await;
    wait_until(secs(60), "some deliveries before the kill", || async {
        receiver.count() >= 100
    })
    .await;
    // The first replica consumes every partition (it subscribed first); kill it.
    drop(first);
    let ids: HashSet<String> = published.iter().map(|(_, id)| id.clone()).collect();
    wait_until(secs(120), "all 500 delivered", || async {
        first_successes(&receiver)
            .0
            .values()
            .map(Vec::len)
            .sum::<usize>()
            == 500
    })
    .await;
    let (order, all) = first_successes(&receiver);
    for key in &keys {
        let want: Vec<String> = (0..50).map(|i| format!("{key}-{i:02}")).collect();
        assert_eq!(order[*key], want, "key {key} out of order");
    }
    // A repeat is a callback sent again with its own webhook-id, never a new one.
    assert!(all.iter().all(|id| ids.contains(id)));
    assert!(
        second.metrics().await.deliveries("r", "delivered") > 0.0,
        "the standby took over"
    );
}
