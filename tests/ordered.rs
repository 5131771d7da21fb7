//! Ordered delivery per key (SPEC section 15) on the real broker: the consistent-hash
//! exchange, partitions with a single active consumer, a failing head holding back only its
//! key, a dead-lettered head letting its key move on, order kept across a kill -9 and a
//! graceful handover, and what the design rests on: a quorum queue returning a closed
//! channel's unacknowledged messages in order, and handing a single active consumer's place
//! over at a cancel. The broker
//! restart is in tests/faults.rs (it stops the broker for every test).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;

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
    publish_ordered(&env, "o", &ordered_events(&["A", "B", "C"], 30)).await;
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
    publish_ordered(&env, "d", &ordered_events(&["K"], 3)).await;
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
    let published = ordered_events(&keys, 50);
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

/// A rolling restart: the active replica is stopped (SIGTERM) while a key's head is in
/// flight and the key's next events wait in its window. The standby must get nothing of the
/// key before the stopping replica has given those back (see the next test for why it would).
#[tokio::test]
async fn a_graceful_handover_keeps_each_key_in_order() {
    let env = Env::new("ordterm");
    // K-00 is answered after 3 s: still in flight when the first replica is told to stop.
    let receiver = Server::start(|_, r| {
        let slow = r.header("webhook-id").as_deref() == Some("K-00");
        Reply::status(204).after(if slow { secs(3) } else { ms(0) })
    })
    .await;
    let mut file = ordered_file(
        &env,
        1,
        Retry::attempts(5),
        Profile::new("g", &receiver.url("/")),
    );
    // A window of 4: the first replica holds K-00..K-03, the rest stays on the queue.
    file.amqp.prefetch = Some(4);
    env.config(&file);
    let mut first = Process::spawn(&file, "info");
    first.wait_ready().await;
    let second = Process::spawn(&file, "info");
    second.wait_ready().await;
    publish_ordered(&env, "g", &ordered_events(&["K"], 20)).await;
    wait_until(secs(30), "K-00 in flight", || async {
        receiver.count() >= 1
    })
    .await;
    first.signal("TERM");
    wait_until(secs(60), "all 20 delivered", || async {
        first_successes(&receiver).0.get("K").map_or(0, Vec::len) == 20
    })
    .await;
    let (order, all) = first_successes(&receiver);
    let want: Vec<String> = (0..20).map(|i| format!("K-{i:02}")).collect();
    assert_eq!(order["K"], want, "K out of order across the handover");
    assert_eq!(
        all.iter().filter(|id| *id == "K-00").count(),
        1,
        "the head in flight is finished by the replica that stops, not sent again"
    );
    assert!(
        second.metrics().await.deliveries("g", "delivered") > 0.0,
        "the standby took over"
    );
    // It has exited by now (its drain is bounded by delivery.timeout, 5 s).
    let status = first.child.wait().unwrap();
    assert!(status.success(), "{status}: {}", first.logs());
}

/// Why a stopping replica closes its partitions' channels instead of cancelling their
/// consumers: a quorum queue makes the next single active consumer active as soon as the
/// active one is cancelled, while the cancelled one still holds its unacknowledged messages
/// (the next one is sent what comes after them); a closed channel gives them back first.
#[tokio::test]
async fn a_single_active_consumer_hands_over_at_a_cancel_before_its_messages_come_back() {
    // 1..=3 held by the active consumer when it goes: what the standby is sent first.
    assert_eq!(handover("qqsaccancel", Going::Cancelled).await, [4, 5, 6]);
    assert_eq!(handover("qqsacclose", Going::Closed).await, [1, 2, 3]);
}

enum Going {
    Cancelled,
    Closed,
}

/// Ten messages on a quorum queue with a single active consumer; the active one (prefetch
/// 3) takes 1..=3 and goes, unacknowledged; the first three the standby is sent.
async fn handover(tag: &str, going: Going) -> Vec<u32> {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    let env = Env::new(tag);
    let queue = env.queue.as_str();
    let conn = quorum_queue(&env, 10, true).await;
    let consume = |tag: &'static str| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos(3, BasicQosOptions::default()).await.unwrap();
            let consumer = ch
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            (ch, consumer)
        }
    };
    async fn next(consumer: &mut lapin::Consumer) -> u32 {
        let next = tokio::time::timeout(secs(30), consumer.next());
        let d = next.await.expect("a message within 30 s").unwrap().unwrap();
        std::str::from_utf8(&d.data).unwrap().parse().unwrap()
    }
    let (active, mut first) = consume("first").await;
    let (standby, mut second) = consume("second").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut first).await);
    }
    assert_eq!(held, [1, 2, 3]);
    match going {
        Going::Cancelled => active
            .basic_cancel("first".into(), BasicCancelOptions::default())
            .await
            .unwrap(),
        Going::Closed => active.close(200, "".into()).await.unwrap(),
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut second).await);
    }
    let _ = active.close(200, "".into()).await;
    standby.close(200, "".into()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "".into()).await.unwrap();
    got
}

/// What the design above rests on, checked rather than assumed: a quorum queue returns the
/// messages a closed channel held unacknowledged to their places, so the next consumer gets
/// them in their original order (and before anything behind them), not only after a kill -9
/// but after any channel close.
#[tokio::test]
async fn a_closed_channel_returns_its_unacked_messages_in_order() {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;

    let env = Env::new("qqreturn");
    let queue = env.queue.as_str();
    let conn = quorum_queue(&env, 20, false).await;

    // Take `n` messages on a fresh channel with this prefetch; ack those `ack` picks, leave
    // the rest unacknowledged, then close the channel. Returns (body, redelivered).
    let take = |prefetch: u16, n: usize, ack: fn(u32) -> bool| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos(prefetch, BasicQosOptions::default())
                .await
                .unwrap();
            let mut consumer = ch
                .basic_consume(
                    queue.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < n {
                let d = tokio::time::timeout(secs(30), consumer.next())
                    .await
                    .expect("a message within 30 s")
                    .unwrap()
                    .unwrap();
                let body: u32 = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
                if ack(body) {
                    d.ack(BasicAckOptions::default()).await.unwrap();
                }
                got.push((body, d.redelivered));
            }
            ch.close(200, "".into()).await.unwrap();
            got
        }
    };
    // The first consumer holds 1..=10 (its prefetch), acks the multiples of 3, closes.
    let first = take(10, 10, |b| b % 3 == 0).await;
    assert_eq!(
        first,
        (1..=10).map(|b| (b, false)).collect::<Vec<_>>(),
        "first delivery in publish order"
    );
    // The next one gets the seven left unacked back in their order, then 11..=20, none lost
    // (the first channel may have been sent some of 11..=13 as its acks freed the window:
    // those come back too, in their places).
    let second = take(20, 17, |_| true).await;
    let bodies: Vec<u32> = second.iter().map(|(b, _)| *b).collect();
    let want: Vec<u32> = (1..=10).filter(|b| b % 3 != 0).chain(11..=20).collect();
    assert_eq!(bodies, want, "returned messages first, in their order");
    assert!(second[..7].iter().all(|(_, redelivered)| *redelivered));
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "".into()).await.unwrap();
}

/// The test's queue as a quorum queue (with a single active consumer or not) holding the
/// bodies "1" to "n", persistent and confirmed; the connection it was made on.
async fn quorum_queue(env: &Env, n: u32, single_active: bool) -> lapin::Connection {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};

    let conn = env.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    if single_active {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    // Gone a minute after its last use, even if the test fails before deleting it.
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare(
        env.queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 1..=n {
        ch.basic_publish(
            "".into(),
            env.queue.as_str().into(),
            BasicPublishOptions::default(),
            format!("{i}").as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    conn
}
