//! HTTP servers on 127.0.0.1 port 0 that record every request and answer from a script,
//! in plain HTTP or TLS, and an independent check of Standard Webhooks signatures.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};

use super::wait_until;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The status the script answered (0 while it is being answered).
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(usize, &Recorded) -> Reply + Send + Sync;

/// An HTTP server on 127.0.0.1:0 that records every request and answers from a script:
/// `script(n, request)` where n counts requests from 0.
#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    pub scheme: &'static str,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Requests being answered now, and the most there ever were at once.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    pub async fn start(
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            script,
        )
        .await
    }

    pub async fn start_on(
        listener: tokio::net::TcpListener,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let (app, server) = Self::app(listener.local_addr().unwrap(), "http", script);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    /// The same over TLS: `config` holds the server's certificate and, if it wants one, how
    /// it verifies a client certificate. Handshakes that fail are dropped.
    pub async fn start_tls(
        config: rustls::ServerConfig,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (app, server) = Self::app(listener.local_addr().unwrap(), "https", script);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        server
    }

    fn app(
        addr: SocketAddr,
        scheme: &'static str,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> (axum::Router, Server) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let recs = requests.clone();
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let max_in_flight: Arc<AtomicUsize> = Arc::default();
        let (inf, maxf) = (in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (recs, script) = (recs.clone(), script.clone());
            let (inf, maxf) = (inf.clone(), maxf.clone());
            async move {
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                maxf.fetch_max(now, Ordering::SeqCst);
                struct Done(Arc<AtomicUsize>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _done = Done(inf);
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                let rec = Recorded {
                    method: parts.method,
                    uri: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                    at: Instant::now(),
                    status: 0,
                };
                let n = {
                    let mut r = recs.lock().unwrap();
                    r.push(rec.clone());
                    r.len() - 1
                };
                let reply = script(n, &rec);
                recs.lock().unwrap()[n].status = reply.status;
                if !reply.delay.is_zero() {
                    tokio::time::sleep(reply.delay).await;
                }
                let mut resp = axum::response::Response::new(axum::body::Body::from(reply.body));
                *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                for (k, v) in reply.headers {
                    resp.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                resp
            }
        });
        (
            app,
            Server {
                addr,
                scheme,
                requests,
                in_flight,
                max_in_flight,
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn now_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn most_in_flight(&self) -> usize {
        self.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        wait_until(
            limit,
            &format!("{n} request(s) at {}", self.addr),
            || async { self.count() >= n },
        )
        .await;
        self.all()
    }
}

/// A Standard Webhooks check written independently of the crate: HMAC-SHA256 over
/// `{id}.{ts}.{body}` with the base64 key after `whsec_`.
pub fn verify_signature(secret: &str, r: &Recorded) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let id = r.header("webhook-id").unwrap();
    let ts = r.header("webhook-timestamp").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    r.header("webhook-signature")
        .unwrap()
        .split(' ')
        .any(|s| s == format!("v1,{want}"))
}
