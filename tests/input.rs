//! Bad input from publishers and receivers (issue 17, "Bad input"), end to end: a worker in
//! this process against the real RabbitMQ and real HTTP receivers. Self-contained on purpose
//! (no `tests/common`): a raw HTTP/1.1 receiver that records each request as it came off the
//! wire, and lapin for publishing and reading dead letters.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callback_dispatcher::amqp::Topology;
use callback_dispatcher::config::Config;
use callback_dispatcher::ops::dead_letters;
use hmac::{Hmac, KeyInit, Mac};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const LIMIT: Duration = Duration::from_secs(30);

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One request as the receiver read it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// The request target exactly as sent (`/path?query`).
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP/1.1 receiver: `reply(n)` is the status and body of the n-th request (from 0).
/// One request per connection (`connection: close`), so parsing stays trivial.
struct Receiver {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    async fn start(reply: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (reply, seen) = (Arc::new(reply), got.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (reply, seen) = (reply.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or_default().split(' ');
                    let method = first.next().unwrap_or_default().to_owned();
                    let target = first.next().unwrap_or_default().to_owned();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + 4 + length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(Request {
                            method,
                            target,
                            headers,
                        });
                        seen.len() - 1
                    };
                    let (status, body) = reply(n);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Receiver { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn all(&self) -> Vec<Request> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Request> {
        wait_until("requests at the receiver", || self.all().len() >= n).await;
        self.all()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker of its own queue, running in this process.
struct Worker {
    config: Config,
    queue: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Worker {
    async fn start(tag: &str, retry: &str, profiles: &str) -> Worker {
        let queue = format!(
            "cdtest.input.{tag}.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let yaml = format!(
            "amqp:\n  url: \"{}\"\n  queue: {queue}\n  exchange: {queue}\n  prefetch: 16\ndelivery:\n  timeout: 5s\n  connect_timeout: 1s\n  allow_networks: [127.0.0.0/8]\nretry:\n{retry}\nmetrics:\n  listen: 127.0.0.1:0\nlog:\n  format: text\nprofiles:\n{profiles}",
            amqp_url()
        );
        let config = Config::from_yaml(&yaml, Path::new("input.yaml"), |_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        let worker = callback_dispatcher::Worker::bind(
            Config::from_yaml(&yaml, Path::new("input.yaml"), |_| None).unwrap(),
        )
        .await
        .unwrap();
        let ready = format!("http://{}/readyz", worker.metrics_addr());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let join = tokio::spawn(worker.run(async move {
            let _ = rx.await;
        }));
        let deadline = Instant::now() + LIMIT;
        loop {
            let ok = reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "the worker never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Worker {
            config,
            queue,
            stop: Some(tx),
            join: Some(join),
        }
    }

    async fn connect(&self) -> Connection {
        Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap()
    }

    /// Publish with confirms, as a publisher should.
    async fn publish(&self, events: Vec<(BasicProperties, Vec<u8>)>) {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for (props, body) in events {
            let confirm = ch
                .basic_publish(
                    self.queue.as_str().into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
                    props.with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert_eq!(confirm, lapin::Confirmation::Ack(None));
        }
        conn.close(200, "".into()).await.unwrap();
    }

    /// Wait for `n` dead letters and take them off the queue.
    async fn take_dead(&self, n: usize) -> Vec<lapin::message::Delivery> {
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let dead = format!("{}.dead", self.queue);
        let mut out = Vec::new();
        let deadline = Instant::now() + LIMIT;
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} dead letters, have {}",
                out.len()
            );
            match ch
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
            {
                Some(m) => {
                    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
                    out.push(m.delivery);
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        conn.close(200, "".into()).await.unwrap();
        out
    }

    /// Stop the worker and delete everything it declared.
    async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            let _ = tokio::time::timeout(LIMIT, join).await;
        }
        let topology = Topology::new(&self.config.amqp);
        let conn = self.connect().await;
        let ch = conn.create_channel().await.unwrap();
        for q in topology.queues(&self.config.retry.delay_queue_ms()) {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = ch
            .exchange_delete(
                topology.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "".into()).await;
    }
}

fn props(profile: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "profile".into(),
        AMQPValue::LongString(LongString::from(profile)),
    );
    BasicProperties::default()
        .with_headers(headers)
        .with_content_type("application/json".into())
}

fn header_text(d: &lapin::message::Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The id docs/events.md documents for an event without `message_id`, computed here
/// independently of the worker's code.
fn documented_id(profile: &str, timestamp: Option<u64>, body: &[u8]) -> String {
    use sha2::Digest;
    let mut input = (profile.len() as u64).to_be_bytes().to_vec();
    input.extend_from_slice(profile.as_bytes());
    match timestamp {
        None => input.push(0),
        Some(ts) => {
            input.push(1);
            input.extend_from_slice(&ts.to_be_bytes());
        }
    }
    input.extend_from_slice(&(body.len() as u64).to_be_bytes());
    input.extend_from_slice(body);
    let digest = sha2::Sha256::digest(&input);
    // Base32 (RFC 4648, lowercase) of the digest's first 130 bits.
    let bits: Vec<u8> = digest
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let chars: String = bits
        .chunks(5)
        .take(26)
        .map(|c| alphabet[c.iter().fold(0usize, |acc, b| acc * 2 + usize::from(*b))] as char)
        .collect();
    format!("msg_{chars}")
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a receiver does: HMAC-SHA256 over `id.timestamp.` and the body, or for GET and
/// DELETE the raw query string after the `?`.
fn verifies(r: &Request, signed_part: &str) -> bool {
    let key = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.{signed_part}",
            r.header("webhook-id").unwrap_or_default(),
            r.header("webhook-timestamp").unwrap_or_default()
        )
        .as_bytes(),
    );
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    r.header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .any(|s| s == want)
}

#[tokio::test]
async fn an_event_without_message_id_carries_one_derived_id_on_every_delivery() {
    // The first attempt fails, so the event is retried; the same message is also published
    // twice, which the worker cannot tell from a redelivery after a crash.
    let receiver = Receiver::start(|n| if n == 0 { (503, "busy") } else { (204, "") }).await;
    let worker = Worker::start(
        "id",
        "  initial_delay: 200ms\n  max_delay: 1s\n",
        &format!("  - {{id: acme, url: \"{}\"}}\n", receiver.url("/cb")),
    )
    .await;
    let ts = unix_secs();
    let body = br#"{"amount":1}"#.to_vec();
    let event = (props("acme").with_timestamp(ts), body.clone());
    worker.publish(vec![event.clone()]).await;
    receiver.wait_for(2).await;
    worker.publish(vec![event]).await;
    let got = receiver.wait_for(3).await;
    let want = documented_id("acme", Some(ts), &body);
    for r in &got {
        assert_eq!(r.header("webhook-id"), Some(want.as_str()), "{r:?}");
    }
    assert_eq!(
        documented_id("acme", Some(1614265330), br#"{"test": 2432232314}"#),
        "msg_yqu5ew7khim7afzbrfcev6llmc",
        "the example in docs/events.md"
    );
    worker.finish().await;
}

#[tokio::test]
async fn bad_message_ids_are_dead_lettered() {
    let receiver = Receiver::start(|_| (204, "")).await;
    let worker = Worker::start(
        "badid",
        "  initial_delay: 200ms\n",
        &format!("  - {{id: acme, url: \"{}\"}}\n", receiver.url("/cb")),
    )
    .await;
    let events = ["evt 1", "caf\u{e9}", "evt\u{1b}[2J", "evt-ok"]
        .into_iter()
        .map(|id| (props("acme").with_message_id(id.into()), b"{}".to_vec()))
        .collect();
    worker.publish(events).await;
    let dead = worker.take_dead(3).await;
    for d in &dead {
        assert_eq!(
            header_text(d, "x-dead-reason").as_deref(),
            Some("invalid_message_id")
        );
    }
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].header("webhook-id"), Some("evt-ok"));
    worker.finish().await;
}

#[tokio::test]
async fn timestamps_in_milliseconds_or_in_the_future_do_not_switch_max_age_off() {
    // Every attempt fails and attempts are plenty: only max_age can end these events.
    let receiver = Receiver::start(|_| (503, "down")).await;
    let worker = Worker::start(
        "age",
        "  max_attempts: 1000\n  initial_delay: 200ms\n  max_delay: 300ms\n  jitter: 0\n  max_age: 3s\n",
        &format!("  - {{id: acme, url: \"{}\"}}\n", receiver.url("/cb")),
    )
    .await;
    let now = unix_secs();
    let stamps = [
        ("millis", now * 1000),
        ("future-seconds", now + 365 * 86_400),
        ("future-millis", (now + 3600) * 1000),
        ("far-future", 4_000_000_000),
    ];
    let events = stamps
        .iter()
        .map(|(name, ts)| {
            (
                props("acme")
                    .with_message_id((*name).into())
                    .with_timestamp(*ts),
                b"{}".to_vec(),
            )
        })
        .collect();
    let started = Instant::now();
    worker.publish(events).await;
    let dead = worker.take_dead(stamps.len()).await;
    for d in &dead {
        assert_eq!(
            header_text(d, "x-dead-reason").as_deref(),
            Some("expired"),
            "{:?}",
            d.properties.message_id()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    worker.finish().await;
}

#[tokio::test]
async fn get_and_delete_callbacks_sign_the_query_string() {
    let receiver = Receiver::start(|_| (204, "")).await;
    let worker = Worker::start(
        "query",
        "  initial_delay: 200ms\n",
        &format!(
            "  - {{id: get, method: GET, url: \"{}\", signing: {{secrets: [\"{SECRET}\"]}}}}\n  - {{id: del, method: DELETE, url: \"{}\", signing: {{secrets: [\"{SECRET}\"]}}}}\n",
            receiver.url("/cb?tenant=acme"),
            receiver.url("/cb")
        ),
    )
    .await;
    let body = br#"{"amount":1,"note":"a b&c=d","ok":true}"#.to_vec();
    worker
        .publish(vec![
            (props("get").with_message_id("g1".into()), body.clone()),
            (props("del").with_message_id("d1".into()), body),
        ])
        .await;
    let got = receiver.wait_for(2).await;
    for r in &got {
        let (_, query) = r.target.split_once('?').expect("a query string");
        assert!(query.contains("amount=1"), "{r:?}");
        assert!(verifies(r, query), "{r:?}");
        // Tampering with the data breaks the signature.
        assert!(!verifies(r, &query.replace("amount=1", "amount=1000")));
        // ... and so does signing an empty body, as before.
        assert!(!verifies(r, ""));
    }
    let methods: Vec<&str> = got.iter().map(|r| r.method.as_str()).collect();
    assert!(methods.contains(&"GET") && methods.contains(&"DELETE"));
    worker.finish().await;
}

#[tokio::test]
async fn a_6to4_address_of_the_metadata_service_is_blocked() {
    let worker = Worker::start(
        "guard",
        "  initial_delay: 200ms\n",
        "  - {id: meta, url: \"http://[2002:a9fe:a9fe::]/latest/meta-data/\"}\n",
    )
    .await;
    worker
        .publish(vec![(
            props("meta").with_message_id("m1".into()),
            b"{}".to_vec(),
        )])
        .await;
    let dead = worker.take_dead(1).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("blocked_destination")
    );
    let error = header_text(&dead[0], "x-last-error").unwrap_or_default();
    assert!(
        error.contains("169.254.169.254") && error.contains("6to4"),
        "{error}"
    );
    worker.finish().await;
}

#[tokio::test]
async fn dead_letters_list_escapes_what_receivers_wrote() {
    let receiver =
        Receiver::start(|_| (400, "\u{1b}]0;owned\u{7}\u{1b}[2J\u{1b}[31mbad\r\nrequest")).await;
    let worker = Worker::start(
        "list",
        "  initial_delay: 200ms\n",
        &format!("  - {{id: acme, url: \"{}\"}}\n", receiver.url("/cb")),
    )
    .await;
    worker
        .publish(vec![(
            props("acme").with_message_id("evt-esc".into()),
            b"{}".to_vec(),
        )])
        .await;
    receiver.wait_for(1).await;
    // Wait until it is dead-lettered, without taking it off the queue.
    let mut table = String::new();
    let deadline = Instant::now() + LIMIT;
    while !table.contains("evt-esc") {
        assert!(Instant::now() < deadline, "never dead-lettered: {table}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (rows, total) = dead_letters::list(&worker.config, 10).await.unwrap();
        table = dead_letters::dead_letter_table(&rows, total);
    }
    assert!(
        !table.chars().any(|c| c != '\n' && c.is_control()),
        "{table:?}"
    );
    assert!(
        table.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2J"),
        "{table:?}"
    );
    worker.finish().await;
}
