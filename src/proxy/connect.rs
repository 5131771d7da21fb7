//! The connector of a client that sends through a proxy: it resolves the destination
//! itself, has the network guard vet every address, and only then asks the proxy to
//! `CONNECT` to the vetted address (or connects directly for `no_proxy`); TLS runs over the
//! tunnel with the URL's host as server name.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{Conn, Stream};

use crate::config::{NoProxy, Proxy};
use crate::guard::Guard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest answer head a proxy may send to `CONNECT`.
const MAX_HEAD: usize = 8 * 1024;

/// A failure of the proxy itself: unreachable, refused the credentials (401 or 407), or any
/// answer to `CONNECT` other than 2xx. Names the proxy as `http://host:port`, never its
/// credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyFailure {
    pub proxy: String,
    pub what: String,
}

impl std::fmt::Display for ProxyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proxy {} {}", self.proxy, self.what)
    }
}

impl std::error::Error for ProxyFailure {}

/// The destination did not accept a connection within `delivery.connect_timeout`.
#[derive(Debug)]
pub struct ConnectTimeout;

impl std::fmt::Display for ConnectTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection timed out")
    }
}

impl std::error::Error for ConnectTimeout {}

/// Everything a connection needs; shared by the client's connections.
pub(super) struct Route {
    pub guard: Guard,
    pub proxy: Proxy,
    pub no_proxy: NoProxy,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
}

#[derive(Clone)]
pub struct Connector(pub(super) Arc<Route>);

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let route = self.0.clone();
        Box::pin(async move { route.connect(dst).await })
    }
}

impl Route {
    async fn connect(&self, dst: Uri) -> Result<Conn, BoxError> {
        let https = match dst.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("only http and https URLs are sent".into()),
        };
        let host = dst
            .host()
            .ok_or("the URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = dst.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs = self.guard.vetted(&host, port).await?;
        let tcp = if self.no_proxy.direct(&host, addrs[0].ip()) {
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(&addrs[..]))
                .await
                .map_err(|_| ConnectTimeout)??
        } else {
            self.through_proxy(&addrs).await?
        };
        tcp.set_nodelay(true)?;
        let stream = if https {
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| "the URL's host is not a valid TLS server name")?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        Ok(Conn::new(stream))
    }

    /// A tunnel to the first of `addrs` the proxy reaches. An address the proxy answers
    /// with an error status for is followed by the next; a proxy that cannot be reached or
    /// refuses the credentials ends it.
    async fn through_proxy(&self, addrs: &[SocketAddr]) -> Result<TcpStream, BoxError> {
        let mut last = None;
        for &addr in addrs {
            match self.tunnel(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err((failure, true)) => last = Some(failure),
                Err((failure, false)) => return Err(failure.into()),
            }
        }
        Err(last.expect("vetted addresses are never empty").into())
    }

    /// A connection to the proxy, tunnelled to `target` (a vetted address); else the
    /// failure, and whether another address may do better.
    async fn tunnel(&self, target: SocketAddr) -> Result<TcpStream, (ProxyFailure, bool)> {
        let fail = |what: String| {
            (
                ProxyFailure {
                    proxy: self.proxy.to_string(),
                    what,
                },
                false,
            )
        };
        let within = humantime::format_duration(self.connect_timeout);
        let proxy_addr = (self.proxy.host.as_str(), self.proxy.port);
        let mut tcp = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(proxy_addr),
        )
        .await
        {
            Err(_) => return Err(fail(format!("did not accept a connection within {within}"))),
            Ok(Err(e)) => return Err(fail(format!("is unreachable: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = self.proxy.authorization() {
            head.push_str("Proxy-Authorization: ");
            head.push_str(auth.to_str().expect("base64 is visible ASCII"));
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let answer = tokio::time::timeout(self.connect_timeout, async {
            tcp.write_all(head.as_bytes()).await?;
            read_head(&mut tcp).await
        })
        .await;
        let status = match answer {
            Err(_) => {
                return Err(fail(format!(
                    "did not answer CONNECT {target} within {within}"
                )));
            }
            Ok(Err(e)) => return Err(fail(format!("failed during CONNECT {target}: {e}"))),
            Ok(Ok(head)) => status_of(&head)
                .ok_or_else(|| fail(format!("answered CONNECT {target} with no HTTP status")))?,
        };
        match status {
            200..=299 => Ok(tcp),
            // 407, or 401 as some proxies answer.
            401 | 407 => Err(fail(format!(
                "refused the credentials for CONNECT {target} (HTTP {status}): check the proxy URL's user and password"
            ))),
            s => {
                let (failure, _) = fail(format!("answered CONNECT {target} with HTTP {s}"));
                Err((failure, true))
            }
        }
    }
}

/// The proxy's answer up to the blank line, read byte by byte so that nothing of the
/// tunnelled stream is taken.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::other("answer head too long"));
        }
        let byte = tcp.read_u8().await?;
        head.push(byte);
    }
    Ok(head)
}

/// `HTTP/1.x NNN ...` -> NNN.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A proxy on 127.0.0.1 that answers each `CONNECT` from `answers`, in turn, and
    /// records the request heads.
    async fn fake_proxy(answers: Vec<&'static str>) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut heads = Vec::new();
            for answer in answers {
                let (mut sock, _) = listener.accept().await.unwrap();
                let head = read_head(&mut sock).await.unwrap();
                heads.push(String::from_utf8(head).unwrap());
                sock.write_all(answer.as_bytes()).await.unwrap();
            }
            heads
        });
        (port, task)
    }

    fn route(proxy: &str) -> Route {
        Route {
            guard: Guard::default(),
            proxy: Proxy::parse(proxy).unwrap(),
            no_proxy: NoProxy::default(),
            tls: Arc::new(super::super::tls_config(None)),
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn an_address_the_proxy_cannot_reach_is_followed_by_the_next() {
        let (port, heads) = fake_proxy(vec![
            "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            "HTTP/1.1 200 Connection established\r\n\r\n",
        ])
        .await;
        let route = route(&format!("http://u%3Ax:p%40ss@127.0.0.1:{port}"));
        let addrs: Vec<SocketAddr> = vec![
            "[2606:4700::1111]:443".parse().unwrap(),
            "1.1.1.1:443".parse().unwrap(),
        ];
        route.through_proxy(&addrs).await.unwrap();
        let heads = heads.await.unwrap();
        assert!(
            heads[0].starts_with("CONNECT [2606:4700::1111]:443 HTTP/1.1\r\n"),
            "{heads:?}"
        );
        assert!(
            heads[1].starts_with("CONNECT 1.1.1.1:443 HTTP/1.1\r\n"),
            "{heads:?}"
        );
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode("u:x:p@ss");
        assert!(heads[1].contains(&format!("Proxy-Authorization: Basic {basic}\r\n")));
    }

    #[tokio::test]
    async fn refused_credentials_and_an_unreachable_proxy_end_it_without_showing_them() {
        let (port, heads) =
            fake_proxy(vec!["HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"]).await;
        let route = route(&format!("http://user:hunter2@127.0.0.1:{port}"));
        let addrs: Vec<SocketAddr> = vec![
            "1.1.1.1:443".parse().unwrap(),
            "1.0.0.1:443".parse().unwrap(),
        ];
        let err = route.through_proxy(&addrs).await.unwrap_err();
        let failure = err
            .downcast_ref::<ProxyFailure>()
            .expect("the proxy's failure");
        assert_eq!(failure.proxy, format!("http://127.0.0.1:{port}"));
        assert!(
            failure.what.contains("407") && !failure.to_string().contains("hunter2"),
            "{failure}"
        );
        assert_eq!(
            heads.await.unwrap().len(),
            1,
            "the next address is not tried"
        );
        // Nothing listens there any more.
        let err = route.through_proxy(&addrs).await.unwrap_err();
        let failure = err
            .downcast_ref::<ProxyFailure>()
            .expect("the proxy's failure");
        assert!(failure.what.starts_with("is unreachable"), "{failure}");
    }

    #[tokio::test]
    async fn a_blocked_destination_never_reaches_the_proxy() {
        let (port, heads) = fake_proxy(vec![]).await;
        let route = route(&format!("http://127.0.0.1:{port}"));
        let err = route
            .connect("http://169.254.169.254/latest".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            err.downcast_ref::<crate::guard::Blocked>().is_some(),
            "{err}"
        );
        assert!(heads.await.unwrap().is_empty());
    }

    #[test]
    fn connect_answers_are_read_by_their_status() {
        assert_eq!(
            status_of(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(status_of(b"HTTP/1.0 407 Proxy Auth\r\n\r\n"), Some(407));
        assert_eq!(status_of(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }
}
