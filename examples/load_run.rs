//! End-to-end load runs on this machine, each compared with a reference in the same
//! invocation, interleaved over several rounds; the figures are medians. `scripts/load.sh`
//! builds what it needs and runs it:
//!
//! - `throughput`: the worker (an oauth2 profile with a cached token, Standard Webhooks
//!   signing, metrics and the per-event log line on) against `examples/bare_consumer.rs`
//!   (consume -> POST -> ack, nothing else), same queue type, prefetch and concurrency.
//!   Prints `ratio_vs_baseline=`.
//! - `profiles`: the same load spread over 1,000 oauth2 profiles (1,000 tokens fetched
//!   first), against one profile. Prints `ratio_vs_one_profile=`.
//! - `protection`: a healthy profile alone, and beside a profile whose endpoint hangs until
//!   just before the timeout (events interleaved 1:1 at first). Prints
//!   `ratio_beside_hanging=`.
//! - `tracing`: the `throughput` load with every trace exported (`sample_ratio: 1.0`, to a
//!   collector that answers at once), against tracing off. Prints `ratio_tracing_on_vs_off=`.
//! - `receipts`: the `throughput` load with receipts and the delivery log on, against off.
//!   Prints `ratio_receipts_vs_off=`.
//! - `ordered`: 1,000 keys over 8 partitions against the same events unordered, then one hot
//!   key. Prints `ratio_ordered_vs_unordered=` and `ratio_one_key_vs_unordered=`.
//! - `backlog`: a fast profile's events alone, then behind a slow profile's backlog
//!   (`LOAD_BACKLOG=2000,20000` events answered after 4.5 s) queued ahead in the same queue,
//!   then with that backlog in a lane of its own (its own queue and a second worker process).
//!   Measured from the worker's start. Prints `ratio_beside_backlog_<n>=` and
//!   `ratio_beside_backlog_in_lane_<n>=`.
//!
//! Each round also prints the CPU the consumer and the broker (RabbitMQ's `beam.smp` on this
//! machine) spent per event.
//!
//! Events are queued before each consumer starts; a rate is measured at the receiver, from
//! the first measured request to the last. Each round uses its own queues and deletes them.
//! `load_run [SCENARIO] [EVENTS] [ROUNDS]`, SCENARIO = throughput | profiles | protection |
//! tracing | receipts | ordered | backlog | all.
//!
//! For investigating, not for the quoted figures: `LOAD_HANGING=N` hanging events (default
//! 200), `LOAD_DELIVERY_EXTRA=", key: value"` appended to the worker's `delivery` section,
//! `LOAD_RUST_LOG` for the worker, `LOAD_RECEIPTS_LOG=none` for receipts without the log, `LOAD_PERF=FILE` to record it with `perf`, `LOAD_KEEP=1` to
//! keep its logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callback_dispatcher::amqp::Topology;
use callback_dispatcher::config::Config;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Requests seen by the receiver: when, and whether they count for the rate.
#[derive(Default)]
struct Seen {
    measured: Vec<Instant>,
    other: usize,
    tokens: usize,
}

type Shared = Arc<Mutex<Seen>>;

async fn servers(seen: Shared) -> anyhow::Result<String> {
    use axum::routing::{any, post};
    let (a, b, c) = (seen.clone(), seen.clone(), seen);
    let app = axum::Router::new()
        .route(
            "/cb",
            any(move |headers: axum::http::HeaderMap| {
                let seen = a.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("m");
                    let mut s = seen.lock().unwrap();
                    if id.starts_with('m') {
                        s.measured.push(Instant::now());
                    } else {
                        s.other += 1;
                    }
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/hang",
            any(move || {
                let _ = &b;
                async move {
                    tokio::time::sleep(Duration::from_millis(4500)).await;
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
        .route("/v1/traces", post(|| async { axum::http::StatusCode::OK }))
        .route(
            "/token",
            post(move || {
                let seen = c.clone();
                async move {
                    seen.lock().unwrap().tokens += 1;
                    (
                        [("content-type", "application/json")],
                        r#"{"access_token":"load-token","expires_in":3600}"#,
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Consumer {
    Bare,
    Worker,
}

/// One round's setup: the worker's profiles and the events, in queue order.
#[derive(Default)]
struct Load {
    profiles: String,
    /// (profile, message id); ids starting with `m` are measured.
    events: Vec<(String, String)>,
    prefetch: u16,
    concurrency: usize,
    /// Receipts and the delivery log on (to `<queue>.receipts`).
    receipts: bool,
    /// Ordered delivery: `amqp.partitions` and the number of keys events are spread over
    /// (round robin); 0 partitions = unordered.
    partitions: u16,
    keys: usize,
    /// Measure from the worker's start rather than from the first measured delivery (the
    /// backlog scenario: what is in front of the measured events is the point).
    from_start: bool,
    /// Top-level sections written before `profiles` (e.g. `tracing`).
    extra: String,
    /// The `slow` profile's events go to a queue of their own (`<queue>.lane`), consumed by
    /// a second worker process started beside the measured one: a lane an operator gives a
    /// big customer (the backlog scenario).
    lane: bool,
}

impl Load {
    /// The same settings, no events or profiles.
    fn clone_settings(&self) -> Load {
        Load {
            profiles: String::new(),
            events: Vec::new(),
            extra: self.extra.clone(),
            ..*self
        }
    }
}

struct Round {
    rate: f64,
    rss_mib: f64,
    /// CPU time (user + system) the consumer process spent per event, microseconds.
    cpu_us: f64,
    /// CPU time the broker (its `beam.smp`, when it runs on this machine) spent per event
    /// published from the consumer's start to the last measured request, microseconds.
    broker_us: f64,
}

/// The broker's Erlang VM on this machine, if there is one.
fn broker_pid() -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "beam.smp.* -s rabbit"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// User + system CPU seconds of a running process.
fn cpu_secs(pid: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().expect("examples/");
    let path = if name == "callback-dispatcher" {
        dir.parent().expect("target/<profile>/").join(name)
    } else {
        dir.join(name)
    };
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run scripts/load.sh (it builds the binary and the examples)",
        path.display()
    );
    Ok(path)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run_round(
    kind: Consumer,
    load: &Load,
    base: &str,
    seen: &Shared,
    dir: &Path,
) -> anyhow::Result<Round> {
    let queue = format!("load.{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut sections = load.extra.clone();
    if load.receipts {
        // LOAD_RECEIPTS_LOG=none: receipts without the delivery log (for investigating).
        let log = match std::env::var("LOAD_RECEIPTS_LOG").as_deref() {
            Ok("none") => String::new(),
            _ => ", log: 1h".to_owned(),
        };
        sections.push_str(&format!("receipts: {{exchange: {queue}.receipts{log}}}\n"));
    }
    let yaml_for = |queue: &str, metrics_port: u16, prefetch: u16| {
        format!(
            "amqp: {{url: \"{}\", queue: {queue}, exchange: {queue}, prefetch: {}, partitions: {}}}\ndelivery: {{concurrency: {}, allow_networks: [127.0.0.0/8], timeout: 5s{}}}\nretry: {{initial_delay: 1s, max_delay: 1m}}\nmetrics: {{listen: \"127.0.0.1:{metrics_port}\"}}\nlog: {{format: json}}\n{}profiles:\n{}",
            amqp_url(),
            prefetch,
            load.partitions,
            load.concurrency,
            std::env::var("LOAD_DELIVERY_EXTRA").unwrap_or_default(),
            sections,
            load.profiles
        )
    };
    let yaml = yaml_for(&queue, metrics_port, load.prefetch);
    let config_path = dir.join(format!("{queue}.yaml"));
    std::fs::write(&config_path, &yaml)?;
    let config = Config::from_yaml(&yaml, &config_path, |_| None)?;
    let topology = Topology::new(&config.amqp);
    let delays = config.retry.delay_queue_ms();

    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    topology.declare(&ch, &delays).await?;
    topology.declare_ordered(&ch).await?;
    // The lane: its own queue (and delay queues), its own worker process.
    let lane = if load.lane {
        let lane_queue = format!("{queue}.lane");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // A lane's prefetch is its customer's concurrency (a quarter of `concurrency` by
        // default): every event it is given can be attempted at once, so none waits or is
        // deferred, and the backlog stays on the broker until its turn.
        let per_profile = (load.concurrency / 4).max(1) as u16;
        let yaml = yaml_for(&lane_queue, port, per_profile);
        let path = dir.join(format!("{lane_queue}.yaml"));
        std::fs::write(&path, &yaml)?;
        let config = Config::from_yaml(&yaml, &path, |_| None)?;
        let topology = Topology::new(&config.amqp);
        topology.declare(&ch, &delays).await?;
        Some((lane_queue, path, topology))
    } else {
        None
    };
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let (exchange, routing_key) = if load.partitions > 0 {
        (topology.ordered_exchange(), String::new())
    } else {
        (queue.clone(), queue.clone())
    };
    let mut body = br#"{"event":"load","pad":""#.to_vec();
    body.resize(510, b'x');
    body.extend_from_slice(br#""}"#);
    for chunk in load.events.chunks(5000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (n, (profile, id)) in chunk.iter().enumerate() {
            let mut headers = FieldTable::default();
            headers.insert(
                "profile".into(),
                AMQPValue::LongString(LongString::from(profile.as_str())),
            );
            if load.partitions > 0 {
                headers.insert(
                    "ordering_key".into(),
                    AMQPValue::LongString(LongString::from(format!(
                        "key-{}",
                        n % load.keys.max(1)
                    ))),
                );
            }
            let props = BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_delivery_mode(2)
                .with_headers(headers);
            let (exchange, routing_key) = match &lane {
                Some((lane_queue, _, _)) if profile == "slow" => (lane_queue, lane_queue),
                _ => (&exchange, &routing_key),
            };
            pending.push(
                ch.basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            );
        }
        for p in pending {
            p.await?;
        }
    }
    let measured = load
        .events
        .iter()
        .filter(|(_, id)| id.starts_with('m'))
        .count();
    // The events the measured consumer is given (a lane's go to the other worker).
    let consumed = load
        .events
        .iter()
        .filter(|(profile, _)| !(load.lane && profile == "slow"))
        .count();
    *seen.lock().unwrap() = Seen::default();

    let spawn_worker = |config: &Path, log: std::fs::File| {
        Command::new(binary("callback-dispatcher")?)
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("LOAD_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(anyhow::Error::from)
    };
    let mut lane_child = match &lane {
        Some((lane_queue, path, _)) => Some(spawn_worker(
            path,
            std::fs::File::create(dir.join(format!("{lane_queue}.log")))?,
        )?),
        None => None,
    };
    let log = std::fs::File::create(dir.join(format!("{queue}.log")))?;
    let broker = broker_pid();
    let broker_cpu = broker.map_or(0.0, cpu_secs);
    let spawned = Instant::now();
    let mut child: Child = match kind {
        Consumer::Worker => spawn_worker(&config_path, log)?,
        Consumer::Bare => Command::new(binary("bare_consumer")?)
            .args([
                amqp_url(),
                queue.clone(),
                format!("{base}/cb"),
                load.prefetch.to_string(),
                load.concurrency.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    };
    // LOAD_PERF=FILE: record the worker's profile (`perf report -i FILE`).
    let perf = match (kind, std::env::var("LOAD_PERF")) {
        (Consumer::Worker, Ok(out)) => Some(
            Command::new("perf")
                .args([
                    "record",
                    "--call-graph",
                    "dwarf,16384",
                    "-F",
                    "499",
                    "-o",
                    &out,
                    "-p",
                    &child.id().to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ),
        _ => None,
    };
    let started = Instant::now();
    while seen.lock().unwrap().measured.len() < measured {
        tokio::time::sleep(Duration::from_millis(20)).await;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {measured} after 10 minutes",
            seen.lock().unwrap().measured.len()
        );
    }
    if kind == Consumer::Worker {
        let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await?
            .text()
            .await?;
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        let (deferred, retried) = (
            sum("callback_dispatcher_deferrals_total"),
            sum("callback_dispatcher_deliveries_total{outcome=\"retry_scheduled\""),
        );
        if deferred + retried > 0.0 {
            println!(
                "  (worker deferred {} and retried {} events)",
                deferred.abs(),
                retried.abs()
            );
        }
    }
    let rss = rss_mib(child.id());
    let cpu = cpu_secs(child.id());
    let broker_cpu = broker.map_or(0.0, |pid| cpu_secs(pid) - broker_cpu);
    if let Some(mut p) = perf {
        Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status()?;
        p.wait()?;
    }
    for c in std::iter::once(&mut child).chain(lane_child.as_mut()) {
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()?;
        c.wait()?;
    }
    if let Some((_, _, lane)) = &lane {
        delete(&ch, lane, &delays).await?;
    }
    let (first, last) = {
        let s = seen.lock().unwrap();
        (
            *s.measured.iter().min().unwrap(),
            *s.measured.iter().max().unwrap(),
        )
    };
    delete(&ch, &topology, &delays).await?;
    if load.partitions > 0 {
        for exchange in [topology.ordered_exchange(), topology.park_exchange()] {
            ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
    }
    if load.receipts {
        let receipts = format!("{queue}.receipts");
        ch.queue_delete(
            format!("{receipts}.log").as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await?;
        ch.exchange_delete(receipts.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    conn.close(200, "done".into()).await?;
    let rate = if load.from_start {
        measured as f64 / (last - spawned).as_secs_f64()
    } else {
        (measured - 1) as f64 / (last - first).as_secs_f64()
    };
    Ok(Round {
        rate,
        rss_mib: rss,
        cpu_us: cpu * 1e6 / consumed as f64,
        broker_us: broker_cpu * 1e6 / load.events.len() as f64,
    })
}

/// Delete a round's work queue, delay queues, dead-letter queue and exchange.
async fn delete(ch: &lapin::Channel, topology: &Topology, delays: &[u64]) -> anyhow::Result<()> {
    for q in topology.queues(delays) {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    ch.exchange_delete(
        topology.exchange.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn oauth_profile(id: &str, base: &str, path: &str) -> String {
    format!(
        "  - id: {id}\n    url: \"{base}{path}\"\n    signing: {{secrets: [\"{SECRET}\"]}}\n    auth: {{type: oauth2, url: \"{base}/token\", client_id: c-{id}, client_secret: s}}\n"
    )
}

/// What every round needs: the receiver's address, what it saw, where logs go.
struct Bench {
    base: String,
    seen: Shared,
    dir: PathBuf,
}

impl Bench {
    /// Run `a` and `b` in turn, `rounds` times; print each round and the median ratio a/b.
    async fn compare(
        &self,
        name: &str,
        rounds: usize,
        a: (&str, Consumer, &Load),
        b: (&str, Consumer, &Load),
    ) -> anyhow::Result<(f64, f64, f64)> {
        compare(name, rounds, a, b, &self.base, &self.seen, &self.dir).await
    }
}

/// Run `a` and `b` in turn, `rounds` times; print each round and the median ratio a/b.
async fn compare(
    name: &str,
    rounds: usize,
    a: (&str, Consumer, &Load),
    b: (&str, Consumer, &Load),
    base: &str,
    seen: &Shared,
    dir: &Path,
) -> anyhow::Result<(f64, f64, f64)> {
    let mut ratios = Vec::new();
    let (mut ra, mut rb, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let x = run_round(b.1, b.2, base, seen, dir).await?;
        let y = run_round(a.1, a.2, base, seen, dir).await?;
        println!(
            "{name} round {round}: {} {:.0}/s ({:.0} µs CPU/event, broker {:.0}), {} {:.0}/s ({:.0} µs CPU/event, broker {:.0}, peak RSS {:.1} MiB), ratio {:.3}",
            b.0,
            x.rate,
            x.cpu_us,
            x.broker_us,
            a.0,
            y.rate,
            y.cpu_us,
            y.broker_us,
            y.rss_mib,
            y.rate / x.rate
        );
        ratios.push(y.rate / x.rate);
        ra.push(y.rate);
        rb.push(x.rate);
        rss.push(y.rss_mib);
    }
    println!(
        "{name}: median {} {:.0}/s, {} {:.0}/s",
        b.0,
        median(rb),
        a.0,
        median(ra.clone())
    );
    Ok((
        median(ratios),
        median(ra),
        rss.into_iter().fold(0.0, f64::max),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "all".into());
    let n: usize = args.next().map_or(Ok(30_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let seen: Shared = Arc::default();
    let base = servers(seen.clone()).await?;
    let dir = tempfile_dir()?;
    let bench = Bench {
        base: base.clone(),
        seen: seen.clone(),
        dir: dir.clone(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "load run: {n} events of 512 bytes, {rounds} rounds, {cores} cores, receiver answers 204 at once, RabbitMQ quorum queue"
    );

    let measured = |profile_of: &dyn Fn(usize) -> String| -> Vec<(String, String)> {
        (0..n).map(|i| (profile_of(i), format!("m{i}"))).collect()
    };
    let one = Load {
        profiles: oauth_profile("load", &base, "/cb"),
        events: measured(&|_| "load".into()),
        prefetch: 256,
        concurrency: 256,
        ..Load::default()
    };
    if scenario == "all" || scenario == "throughput" {
        let (ratio, rate, rss) = bench
            .compare(
                "throughput",
                rounds,
                ("worker", Consumer::Worker, &one),
                ("bare", Consumer::Bare, &one),
            )
            .await?;
        println!(
            "throughput: worker median {rate:.0} events/s, peak RSS {rss:.1} MiB, prefetch 256, concurrency 256"
        );
        println!("ratio_vs_baseline={ratio:.3}");
    }
    if scenario == "all" || scenario == "tracing" {
        // The same run with every trace exported (sample_ratio 1.0) to a collector that
        // answers at once, against tracing off.
        let traced = Load {
            profiles: oauth_profile("load", &base, "/cb"),
            events: measured(&|_| "load".into()),
            prefetch: 256,
            concurrency: 256,
            extra: format!("tracing: {{otlp_endpoint: \"{base}\", sample_ratio: 1.0}}\n"),
            ..Load::default()
        };
        let (ratio, rate, rss) = bench
            .compare(
                "tracing",
                rounds,
                ("tracing on", Consumer::Worker, &traced),
                ("tracing off", Consumer::Worker, &one),
            )
            .await?;
        println!(
            "tracing: worker with every trace exported median {rate:.0} events/s, peak RSS {rss:.1} MiB"
        );
        println!("ratio_tracing_on_vs_off={ratio:.3}");
    }
    if scenario == "all" || scenario == "profiles" {
        let profiles: String = (0..1000)
            .map(|i| oauth_profile(&format!("p{i}"), &base, "/cb"))
            .collect();
        let mut events: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("p{i}"), format!("w{i}")))
            .collect();
        events.extend(measured(&|i| format!("p{}", i % 1000)));
        let many = Load {
            profiles,
            events,
            prefetch: 256,
            concurrency: 256,
            ..Load::default()
        };
        let (ratio, rate, _) = bench
            .compare(
                "profiles",
                rounds,
                ("1000 profiles", Consumer::Worker, &many),
                ("1 profile", Consumer::Worker, &one),
            )
            .await?;
        println!(
            "profiles: 1000 oauth2 profiles median {rate:.0} events/s after 1000 token requests"
        );
        println!("ratio_vs_one_profile={ratio:.3}");
    }
    if scenario == "all" || scenario == "protection" {
        // The issue's 200 hanging events by default; LOAD_HANGING=N for more.
        let hanging: usize = std::env::var("LOAD_HANGING")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let mut events = Vec::with_capacity(n + hanging);
        for i in 0..n {
            if i < hanging {
                events.push(("hang".to_owned(), format!("h{i}")));
            }
            events.push(("ok".to_owned(), format!("m{i}")));
        }
        let profiles = format!(
            "{}{}",
            oauth_profile("ok", &base, "/cb"),
            oauth_profile("hang", &base, "/hang")
        );
        let alone = Load {
            profiles: profiles.clone(),
            events: measured(&|_| "ok".into()),
            prefetch: 64,
            concurrency: 32,
            ..Load::default()
        };
        let beside = Load {
            profiles,
            events,
            prefetch: 64,
            concurrency: 32,
            ..Load::default()
        };
        let (ratio, rate, _) = bench
            .compare(
                "protection",
                rounds,
                ("beside hanging", Consumer::Worker, &beside),
                ("alone", Consumer::Worker, &alone),
            )
            .await?;
        println!(
            "protection: healthy profile beside a hanging one ({hanging} events answering after 4.5 s, timeout 5 s, interleaved 1:1 first) median {rate:.0} events/s, prefetch 64, concurrency 32"
        );
        println!("ratio_beside_hanging={ratio:.3}");
    }
    if scenario == "all" || scenario == "receipts" {
        let with = Load {
            profiles: one.profiles.clone(),
            events: one.events.clone(),
            receipts: true,
            ..one.clone_settings()
        };
        let (ratio, rate, rss) = bench
            .compare(
                "receipts",
                rounds,
                ("receipts and log on", Consumer::Worker, &with),
                ("receipts off", Consumer::Worker, &one),
            )
            .await?;
        println!(
            "receipts: worker with a receipt per event and the delivery log median {rate:.0} events/s, peak RSS {rss:.1} MiB"
        );
        println!("ratio_receipts_vs_off={ratio:.3}");
    }
    if scenario == "all" || scenario == "ordered" {
        let keyed = |partitions, keys| Load {
            profiles: one.profiles.clone(),
            events: one.events.clone(),
            partitions,
            keys,
            ..one.clone_settings()
        };
        let spread = keyed(8, 1000);
        let (ratio, rate, _) = bench
            .compare(
                "ordered",
                rounds,
                (
                    "ordered, 1000 keys over 8 partitions",
                    Consumer::Worker,
                    &spread,
                ),
                ("unordered", Consumer::Worker, &one),
            )
            .await?;
        println!("ordered: 1000 keys over 8 partitions median {rate:.0} events/s");
        println!("ratio_ordered_vs_unordered={ratio:.3}");
        let hot = Load {
            events: one.events[..one.events.len().min(3000)].to_vec(),
            ..keyed(8, 1)
        };
        let cold = Load {
            events: hot.events.clone(),
            ..keyed(0, 0)
        };
        let (ratio, rate, _) = bench
            .compare(
                "hot key",
                1,
                ("one key", Consumer::Worker, &hot),
                ("unordered", Consumer::Worker, &cold),
            )
            .await?;
        println!("hot key: all events on one key {rate:.0} events/s (one at a time)");
        println!("ratio_one_key_vs_unordered={ratio:.3}");
    }
    if scenario == "backlog" {
        // A slow customer's backlog queued ahead of a fast one's events (issue: isolation
        // under a deep backlog). LOAD_BACKLOG=2000,20000 by default.
        let backlogs: Vec<usize> = std::env::var("LOAD_BACKLOG")
            .unwrap_or_else(|_| "2000,20000".into())
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        let profiles = format!(
            "{}{}",
            oauth_profile("fast", &base, "/cb"),
            oauth_profile("slow", &base, "/hang")
        );
        let alone = Load {
            profiles: profiles.clone(),
            events: measured(&|_| "fast".into()),
            from_start: true,
            ..one.clone_settings()
        };
        for backlog in backlogs {
            let mut events: Vec<(String, String)> = (0..backlog)
                .map(|i| ("slow".to_owned(), format!("s{i}")))
                .collect();
            events.extend(alone.events.iter().cloned());
            let beside = Load {
                profiles: profiles.clone(),
                events,
                from_start: true,
                ..one.clone_settings()
            };
            // The same backlog in a lane of its own (a queue and a worker deployment for the
            // slow customer, SPEC section 9's way out for a backlog this deep).
            let in_lane = Load {
                profiles: profiles.clone(),
                events: beside.events.clone(),
                lane: true,
                ..beside.clone_settings()
            };
            for (name, what, load, key) in [
                ("backlog", "queued ahead", &beside, "ratio_beside_backlog"),
                (
                    "lane",
                    "in a lane of their own",
                    &in_lane,
                    "ratio_beside_backlog_in_lane",
                ),
            ] {
                let (ratio, rate, _) = bench
                    .compare(
                        &format!("{name} {backlog}"),
                        rounds,
                        (
                            &format!("beside the backlog {what}"),
                            Consumer::Worker,
                            load,
                        ),
                        ("alone", Consumer::Worker, &alone),
                    )
                    .await?;
                println!(
                    "{name}: fast profile with {backlog} slow events (4.5 s each, timeout 5 s) {what} median {rate:.0} events/s from start"
                );
                println!("{key}_{backlog}={ratio:.3}");
            }
        }
    }
    if std::env::var_os("LOAD_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs kept in {}", dir.display());
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("load-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
