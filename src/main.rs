//! The binary: parses the command line and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use callback_dispatcher::config::{Config, LogFormat};
use callback_dispatcher::ops::{
    check_config, dead_letters, deliveries, publish, signing_key, token,
};
use callback_dispatcher::telemetry::init_logs;
use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "callback-dispatcher",
    version,
    about = "Delivers signed callbacks from RabbitMQ to customers' URLs, with OAuth 2.0 client-credentials tokens from their own auth servers."
)]
struct Cli {
    /// The YAML configuration.
    #[arg(
        long,
        global = true,
        env = "CALLBACK_DISPATCHER_CONFIG",
        default_value = "config/dispatcher.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or SIGINT; SIGHUP or a change of the file reloads it.
    Run,
    /// Load and validate the configuration: a summary and exit 0, or every error and exit 1.
    CheckConfig,
    /// Request a token for an oauth2 profile once and show its scheme and expiry (the token
    /// itself cut to 6 characters). Exits 1 with the auth server's status and body on failure.
    Token {
        /// The profile id.
        #[arg(long)]
        profile: String,
    },
    /// Publish one event to the work queue, confirmed by the broker (the body from --file or stdin).
    Publish {
        /// The profile id (the `profile` header).
        #[arg(long)]
        profile: String,
        /// The body; standard input when left out.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The event id (`message_id`, sent as `webhook-id`); generated when left out.
        #[arg(long)]
        message_id: Option<String>,
        /// The callback's Content-Type.
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Publish this many copies (ids get a -N suffix); for load runs.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Publish an ordered event with this key (needs amqp.partitions).
        #[arg(long)]
        ordering_key: Option<String>,
        /// A W3C trace context (`00-<trace id>-<span id>-<flags>`) sent as the `traceparent`
        /// header: the worker's spans for the event join that trace.
        #[arg(long)]
        traceparent: Option<String>,
    },
    /// Inspect or replay the dead-letter queue.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// Read the delivery log (receipts.log): what became of events, oldest first.
    Deliveries {
        /// Only this event's receipts.
        #[arg(long)]
        message_id: Option<String>,
        /// Only this profile's.
        #[arg(long)]
        profile: Option<String>,
        /// Only this type, e.g. delivery.dead_lettered or breaker.opened.
        #[arg(long = "type")]
        kind: Option<String>,
        /// How far back to read, e.g. 30m, 2h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Print at most this many entries (the oldest first).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Each entry's JSON on its own line.
        #[arg(long)]
        json: bool,
    },
    /// Print the whpk_ public key of each of a profile's whsk_ (ed25519) signing secrets, for
    /// the customer to verify v1a signatures with.
    SigningKey {
        /// The profile id.
        #[arg(long)]
        profile: String,
    },
}

#[derive(Subcommand)]
enum DeadLetters {
    /// Show dead-lettered events with their reasons, without removing or reordering them.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Move dead-lettered events back to the work queue with their attempt count reset.
    Replay {
        /// Only this profile's events.
        #[arg(long)]
        profile: Option<String>,
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        limit: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match cli.command {
        Command::Run => init_logs(config.log.format, "info", Some(&config.tracing)),
        _ => init_logs(LogFormat::Text, "warn", None),
    };
    let printed = match cli.command {
        Command::Run => run(config, cli.config).await.map(|()| String::new()),
        Command::CheckConfig => Ok(check_config::report(&cli.config, &config)),
        Command::Token { profile } => token::token(&config, &profile).await,
        Command::SigningKey { profile } => signing_key::signing_key(&config, &profile),
        Command::Publish {
            profile,
            file,
            message_id,
            content_type,
            count,
            ordering_key,
            traceparent,
        } => match publish::read_body(file.as_deref()) {
            Ok(body) => {
                let req = publish::Request {
                    profile,
                    body,
                    message_id,
                    content_type,
                    count,
                    ordering_key,
                    traceparent,
                };
                publish::run(&config, &req).await
            }
            Err(e) => Err(e),
        },
        Command::Deliveries {
            message_id,
            profile,
            kind,
            since,
            limit,
            json,
        } => {
            let q = deliveries::Query {
                message_id,
                profile,
                kind,
                since,
                limit,
                json,
            };
            deliveries::report(&config, &q).await
        }
        Command::DeadLetters(DeadLetters::List { limit }) => {
            dead_letters::list_report(&config, limit).await
        }
        Command::DeadLetters(DeadLetters::Replay { profile, limit }) => {
            dead_letters::replay_report(&config, profile.as_deref(), limit).await
        }
    };
    telemetry.flush().await;
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The worker, until SIGTERM or SIGINT.
async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let worker = callback_dispatcher::Worker::bind(config).await?.watch(path);
    // On a runtime worker thread rather than the main thread: the consume loop then hands
    // each delivery's task to the thread it runs on instead of across threads.
    tokio::spawn(worker.run(callback_dispatcher::worker::shutdown_signal()))
        .await
        .map_err(|e| anyhow::anyhow!("the worker stopped unexpectedly: {e}"))?
}
