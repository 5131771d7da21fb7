//! The network guard (SPEC section 10): callback and auth URLs come from customers, so the
//! worker refuses to connect to the operator's own network unless `delivery.allow_networks`
//! says otherwise.
//!
//! Design decisions:
//! - The check runs on every address a host name resolves to, inside the HTTP client's DNS
//!   resolver, i.e. at connection time: a DNS answer that changes between a check and the
//!   connection (rebinding) cannot smuggle a blocked address in. One blocked address in an
//!   answer refuses the whole answer.
//! - A URL whose host is an IP literal never reaches a resolver; the runtime checks it once,
//!   when the profile's runtime is built ([`Guard::check_literal`]).
//! - IPv4-mapped, IPv4-compatible and NAT64 (64:ff9b::/96) IPv6 forms are judged by the IPv4
//!   address they carry.
//! - Proxies are off (`no_proxy`): a proxy would resolve names where the guard cannot see.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// An address the guard refused. Safe to log: it names the address and its range only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{addr} is {range}, which the network guard blocks (allow it with delivery.allow_networks)"
)]
pub struct Blocked {
    pub addr: IpAddr,
    pub range: &'static str,
}

/// Which blocked range `ip` is in, if any. Pure.
pub fn blocked_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (0.0.0.0/8)",
        (127, _) => "loopback (127.0.0.0/8)",
        (10, _) => "private (10.0.0.0/8)",
        (172, 16..=31) => "private (172.16.0.0/12)",
        (192, 168) => "private (192.168.0.0/16)",
        (169, 254) => "link-local (169.254.0.0/16, cloud metadata)",
        (100, 64..=127) => "carrier-grade NAT (100.64.0.0/10)",
        (224..=239, _) => "multicast (224.0.0.0/4)",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    if let Some(v4) = embedded_v4(ip) {
        return v4_range(v4);
    }
    let first = ip.segments()[0];
    Some(match first {
        0xfc00..=0xfdff => "unique-local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (fec0::/10)",
        0xff00..=0xffff => "multicast (ff00::/8)",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address stands for: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        _ => None,
    }
}

/// The guard with the operator's exceptions.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Arc<Vec<IpNet>>,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow: Arc::new(allow),
        }
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let Some(range) = blocked_range(ip) else {
            return Ok(());
        };
        let canonical = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            Ok(())
        } else {
            Err(Blocked { addr: ip, range })
        }
    }

    /// A URL whose host is an IP literal, checked once; a host name passes here and is
    /// checked when it resolves.
    pub fn check_literal(&self, url: &reqwest::Url) -> Result<(), Blocked> {
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.check(ip),
            Err(_) => Ok(()),
        }
    }
}

/// The HTTP clients' DNS resolver: the system's answer, checked address by address.
#[derive(Debug, Clone)]
pub struct Resolver(pub Guard);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            for a in &addrs {
                guard.check(a.ip())?;
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_ranges_table() {
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("127.255.255.254", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.255", Some("private")),
            ("172.32.0.1", None),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("carrier-grade NAT")),
            ("100.127.255.255", Some("carrier-grade NAT")),
            ("100.128.0.1", None),
            ("0.0.0.0", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fd12:3456::1", Some("unique-local")),
            ("fc00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("::ffff:169.254.169.254", Some("link-local")),
            ("::ffff:10.0.0.1", Some("private")),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("64:ff9b::808:808", None),
            ("2001:4860:4860::8888", None),
        ] {
            let got = blocked_range(ip.parse().unwrap());
            assert_eq!(
                got.map(|r| r.split(" (").next().unwrap()),
                want,
                "{ip}: {got:?}"
            );
        }
    }

    #[test]
    fn allow_networks_let_addresses_through_in_every_form() {
        let guard = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        for ip in ["127.0.0.1", "::ffff:127.0.0.1", "fd00::5", "8.8.8.8"] {
            assert_eq!(guard.check(ip.parse().unwrap()), Ok(()), "{ip}");
        }
        for ip in ["::1", "10.0.0.1", "169.254.169.254", "fc00::1"] {
            assert!(guard.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
        let err = Guard::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is link-local (169.254.0.0/16, cloud metadata), which the network guard blocks (allow it with delivery.allow_networks)"
        );
    }

    #[test]
    fn literal_hosts_are_checked_and_names_pass_to_the_resolver() {
        let guard = Guard::default();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(guard.check_literal(&url("http://127.1:8080/x")).is_err());
        assert!(
            guard
                .check_literal(&url("http://[::ffff:7f00:1]/x"))
                .is_err()
        );
        assert!(guard.check_literal(&url("https://hooks.example/x")).is_ok());
        assert!(guard.check_literal(&url("https://8.8.8.8/x")).is_ok());
    }
}
