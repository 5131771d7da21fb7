//! Egress through an HTTP CONNECT proxy (SPEC section 17) without going around the network
//! guard.
//!
//! Design decisions:
//! - reqwest's own proxy support sends `CONNECT host:port` and lets the proxy resolve the
//!   name, where the guard cannot see the answer. A client that sends through a proxy is
//!   therefore a hyper client with its own connector ([`connect::Connector`]): the worker
//!   resolves the name, the guard vets every address (a blocked one ends the attempt before
//!   the proxy hears of it), and the proxy is asked to `CONNECT` to the vetted IP address.
//!   TLS runs over the tunnel with the URL's host as server name, and `Host` is the URL's.
//! - Requests and responses stay reqwest's types, so building a request (auth forms, JSON)
//!   and reading an answer are the same code for both kinds of client.
//! - The proxy's own address is the operator's and is not vetted. Its credentials are sent
//!   as `Proxy-Authorization: Basic` on `CONNECT` only, and no error names them.
//! - `no_proxy` is decided per connection: a host named there, or a vetted address in one
//!   of its networks, is connected to directly (still vetted).
//! - A failure of the proxy itself is a [`ProxyFailure`] in the error's chain, which the
//!   send stage reads as "not attempted" (the event is deferred, SPEC section 17).

mod connect;
mod stream;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reqwest::header::{HeaderValue, USER_AGENT};

pub use connect::{ConnectTimeout, ProxyFailure};

use crate::config::{NoProxy, Proxy, Tls};
use crate::guard::Guard;

static PROVIDER: LazyLock<Arc<rustls::crypto::CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// A client whose connections go through `proxy` (except for `no_proxy`).
#[derive(Clone)]
pub struct Tunnel {
    client: Client<connect::Connector, reqwest::Body>,
    timeout: Duration,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

/// Why a request through a [`Tunnel`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("timed out")]
    Timeout,
    #[error("request could not be sent: {0}")]
    Request(#[source] reqwest::Error),
    #[error(transparent)]
    Failed(hyper_util::client::legacy::Error),
}

impl Tunnel {
    pub fn new(
        guard: &Guard,
        proxy: &Proxy,
        no_proxy: &NoProxy,
        tls: Option<&Tls>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Tunnel {
        let route = connect::Route {
            guard: guard.clone(),
            proxy: proxy.clone(),
            no_proxy: no_proxy.clone(),
            tls: Arc::new(tls_config(tls)),
            connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connect::Connector(Arc::new(route)));
        Tunnel { client, timeout }
    }

    /// Send `request` (the client's timeout unless it has its own) and return the answer
    /// as reqwest's type.
    pub async fn execute(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, TunnelError> {
        let timeout = request.timeout().copied().unwrap_or(self.timeout);
        let mut request: hyper::Request<reqwest::Body> =
            request.try_into().map_err(TunnelError::Request)?;
        request
            .headers_mut()
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(crate::http::USER_AGENT));
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(TunnelError::Timeout),
            Ok(Err(e)) => Err(TunnelError::Failed(e)),
            Ok(Ok(response)) => Ok(reqwest::Response::from(response.map(reqwest::Body::wrap))),
        }
    }
}

/// TLS as the direct clients have it: the platform's trust roots and the profile's `ca`,
/// its client certificate for mutual TLS, HTTP/1.1.
fn tls_config(tls: Option<&Tls>) -> rustls::ClientConfig {
    let roots = tls.map_or_else(Vec::new, Tls::rustls_roots);
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, PROVIDER.clone())
            .expect("the platform's trust roots load; TLS material was checked at load");
    let builder = rustls::ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match tls.and_then(Tls::rustls_identity) {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("the client certificate and key were checked at load"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
