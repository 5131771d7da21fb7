//! The configuration file as tests write it: one typed struct per section of SPEC section 3,
//! serialized to YAML. A test sets exactly the keys it cares about; every key it sets is
//! written whatever the defaults are, and a key the loader does not know is an error there,
//! so no edit can silently do nothing. Tests about how the loader reads raw YAML text
//! (invalid files, `${VAR}`, line and column numbers, the shipped examples) keep raw text.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A duration as the file writes it (`250ms`, `5s`), or any text, for a test about a value
/// the loader refuses.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    Is(Duration),
    Text(String),
}

impl From<Duration> for Span {
    fn from(d: Duration) -> Self {
        Span::Is(d)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Span::Is(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            Span::Text(t) => s.serialize_str(t),
        }
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The whole file. Sections left at their default are written as `{}` (all defaults).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigFile {
    pub amqp: Amqp,
    pub delivery: Delivery,
    pub retry: Retry,
    pub metrics: MetricsSection,
    pub log: LogSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_cache: Option<TokenCache>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<Receipts>,
    pub profiles: Vec<Profile>,
}

impl ConfigFile {
    /// Only these profiles; every section at its defaults.
    pub fn with_profiles(profiles: impl IntoIterator<Item = Profile>) -> ConfigFile {
        ConfigFile {
            profiles: profiles.into_iter().collect(),
            ..ConfigFile::default()
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("the test configuration serializes")
    }

    /// The same file with `metrics.listen` on this port of 127.0.0.1.
    pub fn listening_on(&self, port: u16) -> ConfigFile {
        let mut file = self.clone();
        file.metrics.listen = Some(format!("127.0.0.1:{port}"));
        file
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Amqp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_profile_concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_networks: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Breaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<Vec<String>>,
}

/// `circuit_breaker`, in `delivery` or in a profile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Breaker {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_for: Option<Span>,
}

impl Breaker {
    /// `{failures: 0}`: for a test that is not about the breaker but makes endpoints fail.
    pub fn off() -> Breaker {
        Breaker {
            failures: Some(0),
            open_for: None,
        }
    }

    pub fn opens_after(failures: u32, open_for: Duration) -> Breaker {
        Breaker {
            failures: Some(failures),
            open_for: Some(open_for.into()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Retry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Span>,
}

impl Retry {
    /// Back-off from `initial` up to `max`, everything else at its default.
    pub fn backoff(initial: Duration, max: Duration) -> Retry {
        Retry {
            initial_delay: Some(initial.into()),
            max_delay: Some(max.into()),
            ..Retry::default()
        }
    }

    /// At most `n` attempts in all, everything else at its default.
    pub fn attempts(n: u32) -> Retry {
        Retry {
            max_attempts: Some(n),
            ..Retry::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LogSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The `tracing` section (SPEC section 16).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tracing {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
}

impl Tracing {
    /// Spans to this collector, everything else at its default.
    pub fn to(otlp_endpoint: &str) -> Tracing {
        Tracing {
            otlp_endpoint: Some(otlp_endpoint.into()),
            ..Tracing::default()
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Receipts {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<Span>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenCache {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub id: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<Breaker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
}

impl Profile {
    pub fn new(id: &str, url: &str) -> Profile {
        Profile {
            id: id.into(),
            url: url.into(),
            method: None,
            headers: BTreeMap::new(),
            timeout: None,
            concurrency: None,
            rate_limit: None,
            circuit_breaker: None,
            traceparent: None,
            tls: None,
            proxy: None,
            signing: None,
            auth: None,
        }
    }

    pub fn method(mut self, method: &str) -> Profile {
        self.method = Some(method.into());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Profile {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn concurrency(mut self, n: u32) -> Profile {
        self.concurrency = Some(n);
        self
    }

    pub fn rate_limit(mut self, limit: &str) -> Profile {
        self.rate_limit = Some(limit.into());
        self
    }

    pub fn breaker(mut self, breaker: Breaker) -> Profile {
        self.circuit_breaker = Some(breaker);
        self
    }

    /// `traceparent: on`: send the trace context with this profile's callbacks.
    pub fn traceparent(mut self, on: bool) -> Profile {
        self.traceparent = Some(on);
        self
    }

    pub fn tls(mut self, tls: Tls) -> Profile {
        self.tls = Some(tls);
        self
    }

    /// Its own `proxy`; `""` = direct.
    pub fn proxy(mut self, proxy: &str) -> Profile {
        self.proxy = Some(proxy.into());
        self
    }

    pub fn signing<S: Into<String>>(mut self, secrets: impl IntoIterator<Item = S>) -> Profile {
        self.signing = Some(Signing {
            secrets: secrets.into_iter().map(Into::into).collect(),
        });
        self
    }

    pub fn auth(mut self, auth: impl Into<Auth>) -> Profile {
        self.auth = Some(auth.into());
        self
    }
}

/// A profile's `tls`: PEM text or paths.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Signing {
    pub secrets: Vec<String>,
}

/// A profile's `auth`, by `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Auth {
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer {
        token: String,
    },
    ApiKey {
        #[serde(skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        value: String,
    },
    Oauth2(Box<OAuth2>),
}

impl From<OAuth2> for Auth {
    fn from(o: OAuth2) -> Auth {
        Auth::Oauth2(Box::new(o))
    }
}

/// `auth` with `type: oauth2` (Advanced Authentication).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OAuth2 {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub url: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_field_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_field_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type_field_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_before_expiry: Option<Span>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assertion_algorithm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl OAuth2 {
    /// Client credentials with a secret, in the request body (the defaults).
    pub fn new(url: &str, client_id: &str, client_secret: &str) -> OAuth2 {
        OAuth2 {
            url: url.into(),
            client_id: client_id.into(),
            client_secret: Some(client_secret.into()),
            ..OAuth2::default()
        }
    }

    /// `client_auth: private_key_jwt` with this key (PEM text or a path), no secret.
    pub fn private_key_jwt(url: &str, client_id: &str, private_key: &str) -> OAuth2 {
        OAuth2 {
            url: url.into(),
            client_id: client_id.into(),
            client_auth: Some("private_key_jwt".into()),
            private_key: Some(private_key.into()),
            ..OAuth2::default()
        }
    }

    /// The `method` of the auth request.
    pub fn method(mut self, method: &str) -> OAuth2 {
        self.method = Some(method.into());
        self
    }

    pub fn client_auth(mut self, how: &str) -> OAuth2 {
        self.client_auth = Some(how.into());
        self
    }

    pub fn scope(mut self, scope: &str) -> OAuth2 {
        self.scope = Some(scope.into());
        self
    }

    pub fn auth_algorithm(mut self, alg: &str) -> OAuth2 {
        self.auth_algorithm = Some(alg.into());
        self
    }
}
