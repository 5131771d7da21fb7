//! `delivery.proxy`, `delivery.no_proxy` and a profile's `proxy` (SPEC section 17): the HTTP
//! CONNECT proxy callbacks and token requests go through, and what is reached without it.
//!
//! A proxy URL may carry credentials (`http://user:pass@host:port`), so the whole value is a
//! secret until it is parsed: no error quotes it, and the parsed [`Proxy`] shows only
//! `http://host:port` in `Debug`, `Display`, logs and errors.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde_saphyr::Location;

use super::issues::Issues;
use super::raw::{RawSecret, S};

/// An HTTP CONNECT proxy.
#[derive(Clone)]
pub struct Proxy {
    /// A name or an IP address (IPv6 without brackets). The operator's own: never vetted by
    /// the network guard.
    pub host: String,
    pub port: u16,
    /// `user:pass`, percent-decoded, for `Proxy-Authorization: Basic`.
    credentials: Option<SecretString>,
}

impl Proxy {
    /// Parse `http://[user:pass@]host[:port]`. The error never quotes the value.
    pub fn parse(text: &str) -> Result<Proxy, &'static str> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|_| "is not a URL such as http://proxy.internal:3128")?;
        if url.scheme() != "http" {
            return Err("must be an http:// URL (an HTTP CONNECT proxy)");
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("must be http://[user:pass@]host:port, without a path or query");
        }
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, pass) => Some(SecretString::from(format!(
                "{}:{}",
                decode(user),
                decode(pass.unwrap_or_default())
            ))),
        };
        Ok(Proxy {
            host,
            port: url.port_or_known_default().unwrap_or(80),
            credentials,
        })
    }

    /// The `Proxy-Authorization` value, if the URL carries credentials; marked sensitive.
    pub fn authorization(&self) -> Option<reqwest::header::HeaderValue> {
        use base64::Engine;
        let creds = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(creds.expose_secret());
        let mut value = reqwest::header::HeaderValue::try_from(format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        value.set_sensitive(true);
        Some(value)
    }

    fn key(&self) -> (&str, u16, Option<&str>) {
        (
            &self.host,
            self.port,
            self.credentials.as_ref().map(|c| c.expose_secret()),
        )
    }
}

/// `%xx` escapes of a URL's user or password, decoded.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `http://host:port`: never the credentials.
impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.to_string())
            .field("credentials", &self.credentials.is_some())
            .finish()
    }
}

impl PartialEq for Proxy {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Proxy {}

impl Hash for Proxy {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

/// `delivery.no_proxy`: hosts (exact, or `.suffix` for every name under it) and networks
/// (matched against the address the worker resolved and vetted) reached directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    hosts: Vec<String>,
    networks: Vec<IpNet>,
}

impl NoProxy {
    /// Whether a connection to `host` (as in the URL), resolved to `ip`, goes direct.
    pub fn direct(&self, host: &str, ip: IpAddr) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix('.') {
            Some(suffix) => host.ends_with(h.as_str()) || host == suffix,
            None => host == *h,
        }) || self.networks.iter().any(|n| n.contains(&ip))
    }
}

/// `delivery.proxy` or a profile's `proxy`: `None` for `""` (direct), else the proxy.
pub(crate) fn proxy(
    issues: &mut Issues,
    path: &str,
    at: Option<&Location>,
    raw: &RawSecret,
) -> Option<Proxy> {
    let text = raw.0.expose_secret();
    if text.trim().is_empty() {
        return None;
    }
    Proxy::parse(text)
        .map_err(|why| {
            issues.add(
                path,
                at,
                format!("{why}: http://[user:pass@]host:port (the value is not shown: it may hold credentials)"),
            )
        })
        .ok()
}

/// `delivery.no_proxy`: each entry a CIDR, an address, a host name or a `.suffix`.
pub(crate) fn no_proxy(issues: &mut Issues, raw: &[S<String>]) -> NoProxy {
    let mut out = NoProxy::default();
    for (i, v) in raw.iter().enumerate() {
        let text = v.value.trim().trim_start_matches('[').trim_end_matches(']');
        if let Ok(net) = text.parse::<IpNet>() {
            out.networks.push(net.trunc());
        } else if let Ok(ip) = text.parse::<IpAddr>() {
            out.networks.push(IpNet::from(ip));
        } else if valid_host(text) {
            out.hosts
                .push(text.trim_end_matches('.').to_ascii_lowercase());
        } else {
            issues.add(
                format!("delivery.no_proxy[{i}]"),
                Some(&v.referenced),
                format!(
                    "{text:?} is not a host (hooks.example.com), a suffix (.example.com) or a CIDR (10.0.0.0/8)"
                ),
            );
        }
    }
    out
}

fn valid_host(text: &str) -> bool {
    let name = text.strip_prefix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_parse_and_never_show_credentials() {
        let p = Proxy::parse("http://us%40er:p%3Ass@egress.internal:3128").unwrap();
        assert_eq!(p.to_string(), "http://egress.internal:3128");
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("p:ss") && !debug.contains("us@er"),
            "{debug}"
        );
        let auth = p.authorization().unwrap();
        assert!(auth.is_sensitive());
        use base64::Engine;
        let want = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(auth.to_str().unwrap(), format!("Basic {want}"));
        let v6 = Proxy::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.to_string()),
            ("::1", "http://[::1]:8080".into())
        );
        assert!(v6.authorization().is_none());
        assert_eq!(Proxy::parse("http://egress").unwrap().port, 80);
        for bad in [
            "https://egress:3128",
            "socks5://egress:1080",
            "egress:3128",
            "http://egress:3128/path",
            "not a url",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_proxy_problem_is_reported_at_once_without_the_value() {
        let yaml = r#"
delivery:
  proxy: "https://user:hunter2@egress:3128"
  no_proxy: ["10.0.0.0/8", "bad host!", ".internal.example"]
profiles:
  - id: a
    url: https://a.example/
    proxy: "socks5://user:hunter3@egress:1080"
  - id: b
    url: https://b.example/
    proxy: ""
"#;
        let err = crate::config::Config::from_yaml(yaml, std::path::Path::new("p.yaml"), |_| None)
            .unwrap_err();
        let paths: Vec<&str> = err.issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "delivery.proxy",
                "delivery.no_proxy[1]",
                "profiles[0].proxy"
            ],
            "{err}"
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter"), "{text}");
        let ok = yaml
            .replace("https://user", "http://user")
            .replace("socks5://user", "http://user")
            .replace("\"bad host!\", ", "");
        let config =
            crate::config::Config::from_yaml(&ok, std::path::Path::new("p.yaml"), |_| None)
                .unwrap();
        assert!(!format!("{config:?}").contains("hunter"));
        let a = config.profiles.get("a").unwrap();
        let b = config.profiles.get("b").unwrap();
        assert_eq!(
            a.proxy(&config.delivery).unwrap().to_string(),
            "http://egress:1080"
        );
        assert!(b.proxy(&config.delivery).is_none(), "\"\" is direct");
        assert_eq!(
            config.delivery.proxy.as_ref().unwrap().to_string(),
            "http://egress:3128"
        );
    }

    #[test]
    fn no_proxy_matches_hosts_suffixes_and_networks() {
        let rules = NoProxy {
            hosts: vec!["hooks.example.com".into(), ".internal.example".into()],
            networks: vec!["10.0.0.0/8".parse().unwrap()],
        };
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        for (host, ip, want) in [
            ("hooks.example.com", public, true),
            ("HOOKS.example.com.", public, true),
            ("other.example.com", public, false),
            ("a.b.internal.example", public, true),
            ("internal.example", public, true),
            ("xinternal.example", public, false),
            ("anything.example", "10.1.2.3".parse().unwrap(), true),
            ("anything.example", "11.1.2.3".parse().unwrap(), false),
        ] {
            assert_eq!(rules.direct(host, ip), want, "{host} {ip}");
        }
        assert!(valid_host(".example.com") && valid_host("localhost"));
        assert!(!valid_host("") && !valid_host("a b") && !valid_host("a..b"));
    }
}
