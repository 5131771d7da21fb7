//! The HTTP clients and the small helpers both the auth and the send stage use.

use std::sync::Arc;
use std::time::Duration;

use crate::guard::{Blocked, Guard, Resolver};

/// A client for callbacks and auth requests.
///
/// Redirects are never followed: a callback or auth URL that redirects is a misconfiguration,
/// and following it would send signed bodies and credentials to another host. Proxies from
/// the environment are ignored (the network guard must see every address). `identity` is a
/// profile's client certificate, `roots` trust roots it adds to the system's.
pub fn client(
    connect_timeout: Duration,
    timeout: Duration,
    guard: &Guard,
    identity: Option<reqwest::Identity>,
    roots: Vec<reqwest::Certificate>,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(Resolver(guard.clone())))
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .user_agent(concat!("callback-dispatcher/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true);
    if !roots.is_empty() {
        b = b.tls_certs_merge(roots);
    }
    if let Some(identity) = identity {
        b = b.identity(identity);
    }
    b.build()
        .expect("the TLS backend initialises; TLS material was checked at load")
}

/// Read at most `cap` bytes of a response body; the rest is never downloaded.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    Ok(out)
}

/// The network guard's refusal inside a failed request, if that is why it failed.
pub fn blocked(err: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<Blocked>() {
            return Some(b.to_string());
        }
        source = s.source();
    }
    None
}

/// Whether a failed request failed in the TLS handshake (a certificate refused either way).
fn tls_handshake(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// A reqwest error as text, without the URL (an auth URL may carry credentials in its query).
pub fn describe(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if tls_handshake(&err) {
        "TLS handshake failed"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "response body error"
    } else {
        "request failed"
    };
    let err = err.without_url();
    let mut text = format!("{kind}: {err}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
