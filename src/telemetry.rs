//! Logs and traces: how the process writes them, set up once by the binary.
//!
//! Design decisions:
//! - Logs go to stderr through a writer thread that writes them in batches, at most 10 ms
//!   after the first line of a batch ([`batch`]): the per-event log line costs a copy into
//!   memory, not a thread wake-up and a write system call. The guard writes what is left
//!   when it is dropped.
//! - JSON lines carry the fields of the span they were written in (`span`: the event's id
//!   and profile, see [`crate::dispatch`]), not the whole list of enclosing spans.
//! - lapin dumps whole AMQP frames at TRACE, the connection's SASL response (the broker
//!   password) included: those never reach the output, whatever `RUST_LOG` says.
//! - With `tracing.otlp_endpoint` set, [`crate::trace`] exports spans that it builds with the
//!   OpenTelemetry SDK itself: no layer of the subscriber is involved, and `RUST_LOG` does not
//!   turn spans off.

use tracing_subscriber::EnvFilter;

pub mod batch;

use crate::config::{LogFormat, TracingConfig};
use crate::trace::Tracing;

/// Flushes the log writer when dropped; hold it for the life of the process.
pub type LogGuard = batch::BatchGuard;

/// The log writer and, when on, span export; hold it for the life of the process.
pub struct Telemetry {
    _logs: LogGuard,
    tracing: Option<Tracing>,
}

impl Telemetry {
    /// Export the spans still queued, waiting at most a few seconds; before the process ends.
    pub async fn flush(&self) {
        if let Some(t) = &self.tracing {
            t.flusher.flush(std::time::Duration::from_secs(5)).await;
        }
    }
}

/// Install the process's log output: `format`, level from `RUST_LOG`, else `default_level`;
/// and span export when `tracing` has an endpoint (inside a Tokio runtime).
pub fn init_logs(
    format: LogFormat,
    default_level: &str,
    tracing: Option<&TracingConfig>,
) -> Telemetry {
    use tracing_subscriber::prelude::*;
    let tracing = match tracing.map(crate::trace::start) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("tracing.otlp_endpoint: {e}; spans are not exported");
            None
        }
        None => None,
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let no_frames = tracing_subscriber::filter::filter_fn(|m| {
        !(m.target().starts_with("lapin") && *m.level() == tracing::Level::TRACE)
    });
    let (writer, guard) = batch::batched(std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let layer = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(no_frames))
        .init();
    Telemetry {
        _logs: guard,
        tracing,
    }
}
