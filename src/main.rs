//! The binary: parses the command line and calls the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use callback_dispatcher::config::{Config, LogFormat};
use callback_dispatcher::ops::{check_config, dead_letters, publish, signing_key, token};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    },
    /// Inspect or replay the dead-letter queue.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
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

/// Logs go to stderr through a writer thread that batches lines while the worker is busy
/// and flushes as soon as it is idle: the per-event log line costs a channel send, not a
/// write system call. The guard flushes what is left when `main` returns.
fn init_logs(
    format: LogFormat,
    default_level: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::prelude::*;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // lapin dumps whole AMQP frames at TRACE, the connection's SASL response (the broker
    // password) included: those never reach the output, whatever RUST_LOG says.
    let no_frames = tracing_subscriber::filter::filter_fn(|m| {
        !(m.target().starts_with("lapin") && *m.level() == tracing::Level::TRACE)
    });
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let layer = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(no_frames))
        .init();
    guard
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::FAILURE
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Run => {
            let _logs = init_logs(config.log.format, "info");
            for w in config.warnings() {
                tracing::warn!("{w}");
            }
            match callback_dispatcher::Worker::bind(config).await {
                Ok(worker) => {
                    worker
                        .watch(cli.config.clone())
                        .run(shutdown_signal())
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Command::CheckConfig => {
            print!("{}", check_config::report(&cli.config, &config));
            Ok(())
        }
        Command::Token { profile } => {
            let _logs = init_logs(LogFormat::Text, "warn");
            token::token(&config, &profile)
                .await
                .map(|report| print!("{report}"))
        }
        Command::SigningKey { profile } => {
            signing_key::signing_key(&config, &profile).map(|keys| print!("{keys}"))
        }
        Command::Publish {
            profile,
            file,
            message_id,
            content_type,
            count,
        } => {
            let _logs = init_logs(LogFormat::Text, "warn");
            let body = match file {
                Some(f) => {
                    std::fs::read(&f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))
                }
                None => {
                    let mut b = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut b)
                        .map(|_| b)
                        .map_err(anyhow::Error::from)
                }
            };
            match body {
                Err(e) => Err(e),
                Ok(body) => {
                    let req = publish::Request {
                        profile,
                        body,
                        message_id,
                        content_type,
                        count,
                    };
                    publish::publish(&config, &req)
                        .await
                        .map(|ids| match ids.as_slice() {
                            [one] => println!("published {one}"),
                            many => println!(
                                "published {} events ({} .. {})",
                                many.len(),
                                many[0],
                                many[many.len() - 1]
                            ),
                        })
                }
            }
        }
        Command::DeadLetters(DeadLetters::List { limit }) => {
            let _logs = init_logs(LogFormat::Text, "warn");
            dead_letters::list(&config, limit)
                .await
                .map(|(rows, total)| print!("{}", dead_letters::dead_letter_table(&rows, total)))
        }
        Command::DeadLetters(DeadLetters::Replay { profile, limit }) => {
            let _logs = init_logs(LogFormat::Text, "warn");
            dead_letters::replay(&config, profile.as_deref(), limit)
                .await
                .map(|r| println!("replayed {} event(s) to the work queue; {} of other profiles left in place", r.moved, r.skipped))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
