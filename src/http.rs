//! The HTTP clients and the small helpers both the auth and the send stage use.
//! A client sends directly (reqwest's, with the network guard as its resolver) or through
//! a proxy ([`crate::proxy`]); both take and give reqwest's requests and responses.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{NoProxy, Proxy, Tls};
use crate::guard::{Blocked, Guard, Resolver};
use crate::proxy::{ConnectTimeout, ProxyFailure, Tunnel, TunnelError};

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("callback-dispatcher/", env!("CARGO_PKG_VERSION"));

/// A client for callbacks and auth requests: reqwest's, or through a proxy a [`Tunnel`].
#[derive(Clone, Debug)]
pub struct Client {
    /// Sends direct requests, and builds every request.
    direct: reqwest::Client,
    tunnel: Option<Tunnel>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Direct(#[from] reqwest::Error),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
}

impl Client {
    /// Redirects are never followed: a callback or auth URL that redirects is a
    /// misconfiguration, and following it would send signed bodies and credentials to
    /// another host. Proxies from the environment are ignored (the network guard must see
    /// every address); `proxy` is the configured one, with the hosts and networks reached
    /// without it. `tls` is the profile's client certificate and extra trust roots.
    pub fn new(
        connect_timeout: Duration,
        timeout: Duration,
        guard: &Guard,
        tls: Option<&Tls>,
        proxy: Option<(&Proxy, &NoProxy)>,
    ) -> Client {
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Resolver(guard.clone())))
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            let roots = tls.roots();
            if !roots.is_empty() {
                b = b.tls_certs_merge(roots);
            }
            if let Some(identity) = tls.identity() {
                b = b.identity(identity);
            }
        }
        let direct = b
            .build()
            .expect("the TLS backend initialises; TLS material was checked at load");
        let tunnel = proxy.map(|(proxy, no_proxy)| {
            Tunnel::new(guard, proxy, no_proxy, tls, connect_timeout, timeout)
        });
        Client { direct, tunnel }
    }

    /// A request to build, sent with [`Client::execute`].
    pub fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        self.direct.request(method, url)
    }

    pub async fn execute(&self, request: reqwest::Request) -> Result<reqwest::Response, Error> {
        match &self.tunnel {
            None => Ok(self.direct.execute(request).await?),
            Some(tunnel) => Ok(tunnel.execute(request).await?),
        }
    }
}

impl Error {
    fn root(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            Error::Direct(e) => e,
            Error::Tunnel(e) => e,
        }
    }

    /// The network guard's refusal, if that is why it failed.
    pub fn blocked(&self) -> Option<String> {
        find::<Blocked>(self.root()).map(ToString::to_string)
    }

    /// The proxy's own failure, if that is why it failed: not the destination's fault.
    pub fn proxy(&self) -> Option<String> {
        find::<ProxyFailure>(self.root()).map(ToString::to_string)
    }

    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Direct(e) => e.is_timeout(),
            Error::Tunnel(TunnelError::Timeout) => true,
            Error::Tunnel(e) => find::<ConnectTimeout>(e).is_some(),
        }
    }

    /// As text, without the URL (an auth URL may carry credentials in its query).
    pub fn describe(self) -> String {
        match self {
            Error::Direct(e) => describe(e),
            Error::Tunnel(e) => {
                let kind =
                    if matches!(e, TunnelError::Timeout) || find::<ConnectTimeout>(&e).is_some() {
                        "timeout"
                    } else if tls_handshake(&e) {
                        "TLS handshake failed"
                    } else {
                        "connection failed"
                    };
                format!("{kind}: {}", chain(&e))
            }
        }
    }
}

/// The first error of type `T` in `err`'s chain.
fn find<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut source = Some(err);
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref::<T>() {
            return Some(found);
        }
        source = s.source();
    }
    None
}

/// `err: its source: ...`.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

/// Whether a failed request failed in the TLS handshake (a certificate refused either way).
fn tls_handshake(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io_wraps_rustls(io)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// An `io::Error`'s `source()` skips the error it wraps, and connectors wrap one `io::Error`
/// in another (`Other` around tokio-rustls' `InvalidData`), so they are unwrapped here.
fn io_wraps_rustls(io: &std::io::Error) -> bool {
    match io.get_ref() {
        Some(inner) if inner.is::<rustls::Error>() => true,
        Some(inner) => inner
            .downcast_ref::<std::io::Error>()
            .is_some_and(io_wraps_rustls),
        None => false,
    }
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
    } else if find::<hyper::Error>(&err).is_some_and(hyper::Error::is_canceled) {
        // hyper drops the connection's own error here; the usual cause is a TLS 1.3 server
        // refusing the client certificate just after the handshake.
        "connection closed before the request was sent"
    } else {
        "request failed"
    };
    let err = err.without_url();
    format!("{kind}: {}", chain(&err))
}
