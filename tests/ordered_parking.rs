//! Parking (SPEC section 15, docs/events.md "Memory and the window"): a key whose head waits
//! holds at most its share of its partition's window; the rest of it moves to a queue of its
//! own, in order, so the partition's other keys go on; across a kill -9 and a rolling restart too.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;

/// 204, except the first `fails` requests for `A-00`: 503.
async fn receiver(fails: u32) -> Server {
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    Server::start(move |_, r| {
        let id = r.header("webhook-id").unwrap_or_default();
        let mut c = counts.lock().unwrap();
        let n = c.entry(id.clone()).or_default();
        *n += 1;
        Reply::status(if id == "A-00" && *n <= fails {
            503
        } else {
            204
        })
    })
    .await
}

/// A-00 fails three times, 2 s apart; 40 events of A, then 10 each of B, C and D, all in
/// one partition whose window is 8.
fn setup(env: &Env, receiver: &Server) -> ConfigFile {
    let retry = Retry {
        max_attempts: Some(10),
        multiplier: Some(1.0),
        jitter: Some(0.0),
        ..Retry::backoff(secs(2), secs(2))
    };
    let mut file = ordered_file(env, 1, retry, Profile::new("o", &receiver.url("/")));
    file.amqp.prefetch = Some(8);
    file
}

fn events() -> Vec<(String, String)> {
    let mut all = ordered_events(&["A"], 40);
    all.extend(ordered_events(&["B", "C", "D"], 10));
    all
}

fn assert_in_order(receiver: &Server) {
    let (order, _) = first_successes(receiver);
    for (key, n) in [("A", 40), ("B", 10), ("C", 10), ("D", 10)] {
        let want: Vec<String> = (0..n).map(|i| format!("{key}-{i:02}")).collect();
        assert_eq!(order[key], want, "key {key} out of order");
    }
}

#[tokio::test]
async fn a_waiting_key_is_parked_and_the_other_keys_go_on() {
    let env = Env::new("park");
    let receiver = receiver(3).await;
    let worker = env.start(env.config(&setup(&env, &receiver))).await;
    publish_ordered(&env, "o", &events()).await;
    wait_until(secs(30), "A parked in a queue of its own", || async {
        park_queue_exists(&env, 0, "o", "A").await
    })
    .await;
    worker.wait_delivered("o", 70).await;
    wait_until(
        secs(30),
        "A's park queue deleted once it is drained",
        || async { !park_queue_exists(&env, 0, "o", "A").await },
    )
    .await;
    let m = worker.metrics().await;
    worker.stop().await.unwrap();
    assert_in_order(&receiver);

    let requests = receiver.all();
    let times = |id: &str| -> Vec<(std::time::Instant, u16)> {
        requests
            .iter()
            .filter(|r| r.header("webhook-id").as_deref() == Some(id))
            .map(|r| (r.at, r.status))
            .collect()
    };
    let a00 = times("A-00");
    // Parked in the middle of its back-off, A-00 still waited it out: three failures and
    // one success, 2 s apart, no extra attempt.
    assert_eq!(
        a00.iter().map(|(_, s)| *s).collect::<Vec<_>>(),
        [503, 503, 503, 204]
    );
    for pair in a00.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= ms(1900), "{a00:?}");
    }
    let a00_done = a00[3].0;
    // The other keys' 30 events, published behind A's 40 with a window of 8, were all
    // delivered while A-00 waited: A gave up the window.
    for r in &requests {
        let id = r.header("webhook-id").unwrap();
        if !id.starts_with('A') {
            assert!(r.at < a00_done, "{id} waited for A-00");
        }
    }
    // Every event once: nothing was lost or sent twice by the move.
    assert_eq!(requests.len(), 70 + 3);
    assert_eq!(m.deliveries("o", "delivered"), 70.0);
    assert_eq!(
        m.value("callback_dispatcher_ordered_waiting", &[("profile", "o")]),
        0.0
    );
}

/// The replica that parked A is killed as soon as A's park queue exists: A's events are
/// partly in it, partly on their way, partly still on the partition; the next replica finds
/// the queue by asking with A's next event.
#[tokio::test]
async fn a_parked_key_keeps_its_order_across_a_kill_9_while_it_is_parked() {
    killed_while_parked("parkkill", |ready| ready.is_some(), Going::Killed).await;
}

/// A rolling restart while A is parked: the stopping replica finishes what is in flight and
/// closes its channels; the other one goes on from A's park queue.
#[tokio::test]
async fn a_parked_key_keeps_its_order_across_a_rolling_restart() {
    killed_while_parked("parkterm", |ready| ready >= Some(39), Going::Stopped).await;
}

enum Going {
    Killed,
    Stopped,
}

/// Killed once every event of A is in its park queue: nothing of A is left on the partition
/// but its lease, which leads the next replica to the queue.
#[tokio::test]
async fn a_parked_key_with_nothing_left_on_its_partition_is_found_by_its_lease() {
    killed_while_parked("parklease", |ready| ready >= Some(39), Going::Killed).await;
}

async fn killed_while_parked(tag: &str, kill_when: fn(Option<u32>) -> bool, going: Going) {
    let env = Env::new(tag);
    let receiver = receiver(3).await;
    let file = setup(&env, &receiver);
    env.config(&file);
    let mut first = Process::spawn(&file, "info");
    first.wait_ready().await;
    let second = Process::spawn(&file, "info");
    second.wait_ready().await;
    publish_ordered(&env, "o", &events()).await;
    wait_until(secs(30), "A parked by the first replica", || async {
        kill_when(park_queue_ready(&env, 0, "o", "A").await)
    })
    .await;
    match going {
        Going::Killed => drop(first),
        Going::Stopped => {
            first.signal("TERM");
            let status = first.child.wait().unwrap();
            assert!(status.success(), "{status}: {}", first.logs());
        }
    }
    let deadline = std::time::Instant::now() + secs(90);
    while first_successes(&receiver)
        .0
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < 70
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not all 70 delivered: {:?}\nthe standby's log:\n{}",
            first_successes(&receiver).0,
            second.logs()
        );
        tokio::time::sleep(ms(100)).await;
    }
    assert_in_order(&receiver);
    // A repeat is a callback sent again with its own webhook-id, never a new one.
    let ids: std::collections::HashSet<String> = events().into_iter().map(|(_, id)| id).collect();
    assert!(
        first_successes(&receiver)
            .1
            .iter()
            .all(|id| ids.contains(id))
    );
    let deadline = std::time::Instant::now() + secs(30);
    while park_queue_exists(&env, 0, "o", "A").await {
        assert!(
            std::time::Instant::now() < deadline,
            "A's park queue is still there; the standby's log:\n{}",
            second.logs()
        );
        tokio::time::sleep(ms(100)).await;
    }
    assert!(
        second.metrics().await.deliveries("o", "delivered") > 0.0,
        "the standby took over"
    );
    // Nothing left behind on the partition: no lease, no event.
    wait_until(secs(30), "the partition empty", || async {
        env.partition_counts(0).await == (0, 1)
    })
    .await;
}
