//! `deliveries`: read the delivery log, the stream queue `<receipts.exchange>.log` (SPEC
//! section 14), from a point in time.
//!
//! The stream is read from `--since` ago (`x-stream-offset` as a timestamp) up to the
//! moment the command started: it stops at the first entry published after that, or when
//! the broker has sent nothing for [`IDLE`] (the end of the log). Reading leaves the log as
//! it was: a stream is not consumed by being read. `--message-id` is matched against each
//! entry's AMQP `message_id` (`<event id>.<attempt>`) before its body is parsed, so finding
//! one event among many receipts costs little more than the broker sending them.
//!
//! With `--limit N`, the first N matching entries (oldest first) are printed and reading
//! stops there.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::dead_letters::printable;
use crate::amqp;
use crate::config::Config;

/// The end of the log: the broker has sent nothing for this long.
const IDLE: Duration = Duration::from_secs(1);
/// Entries the broker may send ahead of the acks.
const PREFETCH: u16 = 2000;

/// What to look for.
#[derive(Debug, Clone)]
pub struct Query {
    pub message_id: Option<String>,
    pub profile: Option<String>,
    /// A receipt or operator event type, e.g. `delivery.dead_lettered`.
    pub kind: Option<String>,
    pub since: Duration,
    pub limit: usize,
    pub json: bool,
}

/// The entries of the log that match `q`, oldest first, as JSON values.
pub async fn read(config: &Config, q: &Query) -> anyhow::Result<Vec<serde_json::Value>> {
    let Some(log) = config
        .receipts
        .as_ref()
        .filter(|r| r.log.is_some())
        .map(|r| r.log_queue())
    else {
        bail!(
            "the delivery log is not configured: set receipts.exchange and receipts.log (e.g. `log: 7d`) in the configuration"
        );
    };
    let conn = amqp::connect(&config.amqp.url, "callback-dispatcher deliveries")
        .await
        .with_context(|| format!("connecting to {}", amqp::redacted(&config.amqp.url)))?;
    let result = scan(&conn, &log, q).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "done".into())).await;
    result
}

async fn scan(
    conn: &lapin::Connection,
    log: &str,
    q: &Query,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let channel = conn.create_channel().await?;
    channel
        .queue_declare(
            log.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!("the delivery log `{log}` does not exist yet: start the worker with receipts.log set")
        })?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let started = SystemTime::now();
    let from = started
        .checked_sub(q.since)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::Timestamp(from),
    );
    let mut consumer = channel
        .basic_consume(
            log.into(),
            "callback-dispatcher-deliveries".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    let until = started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut out = Vec::new();
    let mut unacked = 0u32;
    while out.len() < q.limit {
        let next = match tokio::time::timeout(IDLE, consumer.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(d)) => d?,
        };
        unacked += 1;
        if unacked >= u32::from(PREFETCH) / 2 {
            next.ack(BasicAckOptions { multiple: true }).await?;
            unacked = 0;
        }
        let props = &next.properties;
        if props.timestamp().is_some_and(|t| t > until) {
            break;
        }
        if let Some(want) = &q.message_id {
            let id = props.message_id().as_ref().map(|m| m.as_str());
            let event = id.map(|i| i.rsplit_once('.').map_or(i, |(e, _)| e));
            if event != Some(want.as_str()) {
                continue;
            }
        }
        let Ok(entry) = serde_json::from_slice::<serde_json::Value>(&next.data) else {
            continue;
        };
        let field = |k: &str| entry.get(k).and_then(|v| v.as_str());
        if q.profile
            .as_deref()
            .is_some_and(|p| field("profile") != Some(p))
            || q.kind.as_deref().is_some_and(|k| field("type") != Some(k))
        {
            continue;
        }
        out.push(entry);
    }
    Ok(out)
}

/// The command's output: one line per entry, or its JSON with `--json`.
pub fn render(entries: &[serde_json::Value], json: bool) -> String {
    let mut out = String::new();
    if json {
        for e in entries {
            out.push_str(&e.to_string());
            out.push('\n');
        }
        return out;
    }
    let text = |e: &serde_json::Value, k: &str| match e.get(k) {
        None | Some(serde_json::Value::Null) => "-".to_owned(),
        Some(serde_json::Value::String(s)) => printable(s),
        Some(v) => printable(&v.to_string()),
    };
    out.push_str("TIME                      PROFILE          MESSAGE ID                 TYPE                    ATTEMPT STATUS ERROR\n");
    for e in entries {
        out.push_str(&format!(
            "{:<25} {:<16} {:<26} {:<23} {:>7} {:>6} {}\n",
            text(e, "at"),
            text(e, "profile"),
            text(e, "message_id"),
            text(e, "type"),
            text(e, "attempt"),
            text(e, "status"),
            text(e, "error"),
        ));
    }
    if entries.is_empty() {
        out.push_str("(no matching entries)\n");
    }
    out
}

/// `deliveries` as the command prints it.
pub async fn report(config: &Config, q: &Query) -> anyhow::Result<String> {
    Ok(render(&read(config, q).await?, q.json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_one_line_per_entry_and_escapes_what_it_prints() {
        let e = serde_json::json!({"type": "delivery.retrying", "message_id": "evt-1", "profile": "acme",
            "attempt": 1, "status": 503, "error": "HTTP 503\u{1b}[2J", "duration_ms": 3, "reason": null,
            "next_attempt_at": "2026-12-02T10:00:05.000Z", "at": "2026-12-02T10:00:00.123Z"});
        let text = render(std::slice::from_ref(&e), false);
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("2026-12-02T10:00:00.123Z  acme"), "{line}");
        assert!(
            line.contains("delivery.retrying") && line.contains(" 503 "),
            "{line}"
        );
        assert!(line.ends_with("HTTP 503\\u{1b}[2J"), "{line}");
        assert_eq!(render(std::slice::from_ref(&e), true), format!("{e}\n"));
        assert!(render(&[], false).contains("no matching entries"));
    }
}
