//! Shared test harness: real RabbitMQ (AMQP_URL, default local guest), real HTTP servers on
//! 127.0.0.1 port 0, unique queue names per test, clean-up on drop (even after a panic), and
//! the configuration file built from typed sections.
#![allow(dead_code, unused_imports)]

mod broker;
pub mod config;
mod http;
mod load;
mod metrics;
mod ordered;
mod pki;
mod process;
mod redis;
mod tinyproxy;

use std::future::Future;
use std::time::{Duration, Instant};

pub use broker::*;
pub use config::{
    Auth, Breaker, ConfigFile, OAuth2, Profile, Receipts, Retry, Span, Tls, TokenCache, Tracing,
    ms, secs,
};
pub use http::*;
pub use load::*;
pub use metrics::*;
pub use ordered::*;
pub use pki::*;
pub use process::*;
pub use redis::*;
pub use tinyproxy::*;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Poll `check` every 20 ms until it is true; panic with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
