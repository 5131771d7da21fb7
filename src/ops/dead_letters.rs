//! `dead-letters list` and `dead-letters replay`: look at and recover what could not be
//! delivered, without losing any of it.
//!
//! Listing reads messages with `basic.get` (unacked) and then requeues all of them at once;
//! the dead-letter queue is a classic queue, which puts requeued messages back in their
//! original place, so listing neither consumes nor reorders. Replaying publishes each event
//! back to the work queue with its retry headers removed, waits for the broker's confirm,
//! and only then acks it off the dead-letter queue: a crash in between leaves it in both
//! queues (delivered again with the same `webhook-id`), never in neither.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use super::round_secs;
use crate::amqp::headers::{self, DeadInfo, RETRY_STATE};
use crate::amqp::{self, Topology};
use crate::config::Config;
use crate::decide::{DeadReason, Label};

/// One dead-lettered event, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: String,
    pub profile: String,
    /// `None`: no `x-dead-reason`, or one this version does not know.
    pub reason: Option<DeadReason>,
    pub last_status: Option<u16>,
    pub last_error: String,
    pub attempts: u32,
    /// Since it was dead-lettered.
    pub age: Option<Duration>,
    pub body_bytes: usize,
}

fn describe(props: &BasicProperties, body_bytes: usize) -> DeadLetter {
    let h = props.headers().as_ref();
    let info = DeadInfo::read(h);
    DeadLetter {
        id: props
            .message_id()
            .as_ref()
            .map_or("-".into(), |s| s.to_string()),
        profile: headers::profile(h).unwrap_or_else(|_| "-".into()),
        reason: info.reason,
        last_status: info.status,
        last_error: info.error,
        attempts: info.attempts,
        age: info.dead_at_ms.and_then(|ms| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH + Duration::from_millis(ms))
                .ok()
        }),
        body_bytes,
    }
}

async fn open(config: &Config) -> anyhow::Result<(Connection, Channel, Topology, u32)> {
    let conn = amqp::connect(&config.amqp.url, "callback-dispatcher dead-letters")
        .await
        .with_context(|| format!("connecting to {}", amqp::redacted(&config.amqp.url)))?;
    let channel = conn.create_channel().await?;
    let topology = Topology::new(&config.amqp);
    let queue = channel
        .queue_declare(
            topology.dead_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!(
                "queue {} does not exist yet (the worker declares it at start)",
                topology.dead_queue
            )
        })?;
    Ok((conn, channel, topology, queue.message_count()))
}

/// Give back every unacked message up to `last` (in their original order: the queue is
/// classic), then close.
async fn finish(conn: Connection, channel: Channel, last: Option<u64>) -> anyhow::Result<()> {
    if let Some(tag) = last {
        let requeue = BasicNackOptions {
            multiple: true,
            requeue: true,
        };
        channel.basic_nack(tag, requeue).await?;
    }
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The next dead letter, unacked (a classic queue puts it back in place if it is requeued).
async fn next(
    channel: &Channel,
    topology: &Topology,
) -> Result<Option<lapin::message::BasicGetMessage>, lapin::Error> {
    channel
        .basic_get(
            topology.dead_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
}

/// Up to `limit` dead letters, oldest first, left in place and in order.
pub async fn list(config: &Config, limit: usize) -> anyhow::Result<(Vec<DeadLetter>, u32)> {
    let (conn, channel, topology, total) = open(config).await?;
    let mut out = Vec::new();
    let mut last_tag = None;
    while out.len() < limit {
        let Some(msg) = next(&channel, &topology).await? else {
            break;
        };
        last_tag = Some(msg.delivery.delivery_tag);
        out.push(describe(&msg.delivery.properties, msg.delivery.data.len()));
    }
    finish(conn, channel, last_tag).await?;
    Ok((out, total))
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replayed {
    pub moved: usize,
    /// Looked at but left in place (another profile).
    pub skipped: usize,
}

/// Move up to `limit` dead letters (of `profile`, if given) back to the work queue.
pub async fn replay(
    config: &Config,
    profile: Option<&str>,
    limit: usize,
) -> anyhow::Result<Replayed> {
    let (conn, channel, topology, total) = open(config).await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut done = Replayed::default();
    let mut kept = None;
    // At most the messages present at the start: events that fail again while we replay are
    // not picked up a second time.
    for _ in 0..total {
        if done.moved >= limit {
            break;
        }
        let Some(msg) = next(&channel, &topology).await? else {
            break;
        };
        let d = msg.delivery;
        let h = d.properties.headers().as_ref();
        if profile.is_some_and(|p| headers::profile(h).ok().as_deref() != Some(p)) {
            kept = Some(d.delivery_tag);
            done.skipped += 1;
            continue;
        }
        let fresh = headers::copy(&d.properties, &RETRY_STATE);
        let props = d.properties.clone().with_headers(fresh);
        amqp::publish_confirmed(
            &publisher,
            &topology.exchange,
            &topology.queue,
            &d.data,
            props,
        )
        .await
        .with_context(|| {
            format!(
                "replaying {:?}; it stays dead-lettered",
                d.properties.message_id()
            )
        })?;
        d.ack(BasicAckOptions::default()).await?;
        done.moved += 1;
    }
    finish(conn, channel, kept).await?;
    Ok(done)
}

/// Text from a dead letter (its id, profile, reason, last error: set by publishers and
/// receivers), made safe for a terminal: control characters (C0, DEL, C1) and the
/// invisible characters that reorder or hide text (bidi controls, zero-width, BOM) are
/// written as `\u{..}` escapes, and a backslash as `\\`, so an ESC sequence or a
/// right-to-left override never reaches the operator's terminal and the escapes cannot be
/// confused with the text.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}'
        );
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || hidden => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `dead-letters list` as a table.
pub fn dead_letter_table(rows: &[DeadLetter], total: u32) -> String {
    let mut out = format!(
        "{} dead-lettered event(s) in the queue, showing {}\n{:<36} {:<16} {:<18} {:>6} {:>8} {:>10}  {}\n",
        total,
        rows.len(),
        "ID",
        "PROFILE",
        "REASON",
        "STATUS",
        "ATTEMPTS",
        "AGE",
        "LAST ERROR"
    );
    for r in rows {
        let status = r.last_status.map_or("-".into(), |s| s.to_string());
        let age = r.age.map_or("-".into(), |a| {
            humantime::format_duration(round_secs(a)).to_string()
        });
        let error: String = printable(&r.last_error).chars().take(120).collect();
        out.push_str(&format!(
            "{:<36} {:<16} {:<18} {:>6} {:>8} {:>10}  {}\n",
            printable(&r.id),
            printable(&r.profile),
            r.reason.map_or("-", DeadReason::as_str),
            status,
            r.attempts,
            age,
            error
        ));
    }
    out
}

/// `dead-letters list` as the command prints it.
pub async fn list_report(config: &Config, limit: usize) -> anyhow::Result<String> {
    let (rows, total) = list(config, limit).await?;
    Ok(dead_letter_table(&rows, total))
}

/// `dead-letters replay` as the command prints it.
pub async fn replay_report(
    config: &Config,
    profile: Option<&str>,
    limit: usize,
) -> anyhow::Result<String> {
    let r = replay(config, profile, limit).await?;
    Ok(format!(
        "replayed {} event(s) to the work queue; {} of other profiles left in place\n",
        r.moved, r.skipped
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        for (raw, want) in [
            ("HTTP 500: oops", "HTTP 500: oops"),
            ("caf\u{e9} \u{1f600}", "caf\u{e9} \u{1f600}"),
            (
                "\u{1b}[2J\u{1b}]0;owned\u{7}",
                "\\u{1b}[2J\\u{1b}]0;owned\\u{7}",
            ),
            ("a\r\nb\tc", "a\\u{d}\\u{a}b\\u{9}c"),
            ("del\u{7f} csi\u{9b}", "del\\u{7f} csi\\u{9b}"),
            ("abc\u{202e}gpj.exe", "abc\\u{202e}gpj.exe"),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("back\\u{1b}slash", "back\\\\u{1b}slash"),
        ] {
            assert_eq!(printable(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn the_table_carries_no_control_character() {
        let row = DeadLetter {
            id: "evt\u{1b}[31m".into(),
            profile: "acme\u{7}".into(),
            reason: Some(DeadReason::PermanentStatus),
            last_status: Some(400),
            last_error: format!(
                "HTTP 400: \u{1b}]52;c;{}\u{7}\r\n\u{1b}[2K",
                "A".repeat(200)
            ),
            attempts: 1,
            age: None,
            body_bytes: 2,
        };
        let table = dead_letter_table(&[row], 1);
        assert!(
            table
                .chars()
                .all(|c| c == '\n' || !(c.is_control() || c == '\u{202e}')),
            "{table:?}"
        );
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.contains("HTTP 400: \\u{1b}]52;c;AAA"), "{table}");
        assert!(table.contains("evt\\u{1b}[31m"), "{table}");
    }
}
