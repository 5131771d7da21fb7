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
//! - The table ([`V4_TABLE`], [`V6_TABLE`]) is the IANA IPv4 and IPv6 Special-Purpose Address
//!   Registries: every range they mark as not globally reachable is blocked, and the most
//!   specific row that holds an address decides (longest prefix). Added to the registries:
//!   multicast (`224.0.0.0/4`, `ff00::/8`), deprecated site-local `fec0::/10`, and every IPv6
//!   address outside global unicast `2000::/3` that no row names (unassigned space).
//! - Deliberately stricter than the registries: all of `192.0.0.0/24` and `2001::/23` are
//!   blocked, including the anycast addresses the registries mark globally reachable there
//!   (`192.0.0.9` PCP, `192.0.0.10` TURN, `2001:1::1`-`2001:1::3`): anycast reaches the
//!   *nearest* server, usually inside the operator's own network, and none of them is a
//!   webhook receiver. The deprecated 6to4 relay anycast `192.88.99.0/24` is blocked too.
//! - Addresses that carry an IPv4 address are judged by it: IPv4-mapped `::ffff:0:0/96`,
//!   IPv4-compatible `::/96`, IPv4-translated `::ffff:0:0:0/96`, NAT64 `64:ff9b::/96` and the
//!   local-use `64:ff9b:1::/48` (the IPv4 address in the last 32 bits, as with a /96 NAT64
//!   prefix carved from it), 6to4 `2002::/16` (bits 16 to 48) and Teredo `2001::/32` (the
//!   client's address: the last 32 bits inverted). Teredo itself is not blocked: a Teredo
//!   address stands for its client, and the client's address decides.
//! - Proxies from the environment are off (`no_proxy`): a proxy would resolve names where the
//!   guard cannot see. The configured egress proxy (SPEC section 17) is asked to connect to an
//!   address [`Guard::vetted`] returned, never to a name ([`crate::proxy`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;

/// What a row of the table says about the addresses in its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Blocked,
    /// A globally reachable range inside a blocked one.
    Allowed,
    /// Judged by the IPv4 address it carries.
    Carries(Carrier),
}

/// Where an IPv6 address carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The last 32 bits (mapped, compatible, translated, NAT64).
    Last32,
    /// Bits 16 to 48 (6to4).
    SixToFour,
    /// The last 32 bits inverted: the Teredo client's address.
    Teredo,
}

impl Carrier {
    fn extract(self, ip: Ipv6Addr) -> Ipv4Addr {
        let bits = u128::from(ip);
        match self {
            Carrier::Last32 => Ipv4Addr::from(bits as u32),
            Carrier::SixToFour => Ipv4Addr::from((bits >> 80) as u32),
            Carrier::Teredo => Ipv4Addr::from(!(bits as u32)),
        }
    }
}

/// One row of the table: a range, its name as the registry gives it, and its verdict.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    pub cidr: &'static str,
    pub name: &'static str,
    /// Said after the range, e.g. `cloud metadata`.
    pub note: &'static str,
    pub kind: Kind,
}

const fn row(cidr: &'static str, name: &'static str, kind: Kind) -> Row {
    Row {
        cidr,
        name,
        note: "",
        kind,
    }
}

const B: Kind = Kind::Blocked;

/// The IANA IPv4 Special-Purpose Address Registry's ranges that are not globally reachable,
/// and multicast.
pub const V4_TABLE: &[Row] = &[
    row("0.0.0.0/8", "unspecified", B),
    row("10.0.0.0/8", "private", B),
    row("100.64.0.0/10", "carrier-grade NAT", B),
    row("127.0.0.0/8", "loopback", B),
    Row {
        cidr: "169.254.0.0/16",
        name: "link-local",
        note: "cloud metadata",
        kind: B,
    },
    row("172.16.0.0/12", "private", B),
    row("192.0.0.0/24", "IETF protocol assignments", B),
    row("192.0.2.0/24", "documentation (TEST-NET-1)", B),
    row("192.88.99.0/24", "deprecated 6to4 relay anycast", B),
    row("192.168.0.0/16", "private", B),
    row("198.18.0.0/15", "benchmarking", B),
    row("198.51.100.0/24", "documentation (TEST-NET-2)", B),
    row("203.0.113.0/24", "documentation (TEST-NET-3)", B),
    row("224.0.0.0/4", "multicast", B),
    row("240.0.0.0/4", "reserved", B),
    row("255.255.255.255/32", "broadcast", B),
];

/// The IANA IPv6 Special-Purpose Address Registry's ranges that are not globally reachable,
/// the forms that carry an IPv4 address, multicast and site-local. Every other address
/// outside `2000::/3` is blocked as unassigned ([`UNASSIGNED_V6`]).
pub const V6_TABLE: &[Row] = &[
    row("::/128", "unspecified", B),
    row("::1/128", "loopback", B),
    row("::/96", "IPv4-compatible", Kind::Carries(Carrier::Last32)),
    row(
        "::ffff:0:0/96",
        "IPv4-mapped",
        Kind::Carries(Carrier::Last32),
    ),
    row(
        "::ffff:0:0:0/96",
        "IPv4-translated",
        Kind::Carries(Carrier::Last32),
    ),
    row("64:ff9b::/96", "NAT64", Kind::Carries(Carrier::Last32)),
    row(
        "64:ff9b:1::/48",
        "local-use NAT64",
        Kind::Carries(Carrier::Last32),
    ),
    row("100::/64", "discard-only", B),
    row("100:0:0:1::/64", "dummy prefix", B),
    row("2001::/23", "IETF protocol assignments", B),
    row("2001::/32", "Teredo", Kind::Carries(Carrier::Teredo)),
    row("2001:3::/32", "AMT", Kind::Allowed),
    row("2001:4:112::/48", "AS112", Kind::Allowed),
    row("2001:20::/28", "ORCHIDv2", Kind::Allowed),
    row("2001:30::/28", "drone remote ID", Kind::Allowed),
    row("2001:db8::/32", "documentation", B),
    row("2002::/16", "6to4", Kind::Carries(Carrier::SixToFour)),
    row("3fff::/20", "documentation", B),
    row("5f00::/16", "segment routing", B),
    row("fc00::/7", "unique-local", B),
    row("fe80::/10", "link-local", B),
    row("fec0::/10", "site-local", B),
    row("ff00::/8", "multicast", B),
];

/// What an IPv6 address outside `2000::/3` that no row names is: not assigned for use.
pub const UNASSIGNED_V6: Row = row("not 2000::/3", "unassigned", B);

static PARSED: LazyLock<Vec<(IpNet, &'static Row)>> = LazyLock::new(|| {
    V4_TABLE
        .iter()
        .chain(V6_TABLE)
        .map(|r| (r.cidr.parse().expect("the table's CIDRs parse"), r))
        .collect()
});

/// The most specific row that holds `ip`, if any.
fn row_of(ip: IpAddr) -> Option<&'static Row> {
    PARSED
        .iter()
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, r)| *r)
}

/// An address the guard refused. Safe to log: it names the address and its range only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub addr: IpAddr,
    /// The blocked row: of `addr`, or of the IPv4 address it carries.
    pub row: &'static Row,
    /// The IPv6 form that carries an IPv4 address, and that address.
    pub carried: Option<(&'static Row, Ipv4Addr)>,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some((form, v4)) = self.carried {
            write!(f, " ({} {} of {v4})", form.name, single(form.cidr))?;
        }
        let Row {
            name, cidr, note, ..
        } = self.row;
        let cidr = single(cidr);
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(", {note}")
        };
        write!(
            f,
            " is {name} ({cidr}{note}), which the network guard blocks (allow it with delivery.allow_networks)"
        )
    }
}

impl std::error::Error for Blocked {}

/// A one-address range as the address alone (`::1`, not `::1/128`).
fn single(cidr: &str) -> &str {
    cidr.strip_suffix("/128")
        .or_else(|| cidr.strip_suffix("/32").filter(|a| !a.contains(':')))
        .unwrap_or(cidr)
}

/// The IPv4 address `ip` is judged by, if it carries one.
pub fn carried_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    match row_of(ip)?.kind {
        Kind::Carries(carrier) => Some(carrier.extract(v6)),
        _ => None,
    }
}

/// Why `ip` is blocked, if it is, before any `allow_networks`. Pure.
pub fn blocked(ip: IpAddr) -> Option<Blocked> {
    let row = match row_of(ip) {
        Some(row) => row,
        // Global unicast is 2000::/3: the first three bits 001.
        None if matches!(ip, IpAddr::V6(v6) if u128::from(v6) >> 125 != 0b001) => &UNASSIGNED_V6,
        None => return None,
    };
    match row.kind {
        Kind::Blocked => Some(Blocked {
            addr: ip,
            row,
            carried: None,
        }),
        Kind::Allowed => None,
        Kind::Carries(carrier) => {
            let IpAddr::V6(v6) = ip else { return None };
            let v4 = carrier.extract(v6);
            let inner = blocked(IpAddr::V4(v4))?;
            Some(Blocked {
                addr: ip,
                row: inner.row,
                carried: Some((row, v4)),
            })
        }
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

    /// Refuse `ip` if the table blocks it and no allowed network holds it, or the IPv4
    /// address it carries.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        let Some(refusal) = blocked(ip) else {
            return Ok(());
        };
        let canonical = carried_v4(ip).map_or(ip, IpAddr::V4);
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            Ok(())
        } else {
            Err(refusal)
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

impl Guard {
    /// Every address `host` resolves to (an IP literal is its own), with `port`, each
    /// allowed; one blocked address refuses the whole answer ([`Blocked`] in the error).
    pub async fn vetted(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
        };
        if addrs.is_empty() {
            return Err(format!("{host} resolves to no address").into());
        }
        for a in &addrs {
            self.check(a.ip())?;
        }
        Ok(addrs)
    }
}

/// The direct HTTP clients' DNS resolver: the system's answer, checked address by address.
#[derive(Debug, Clone)]
pub struct Resolver(pub Guard);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let addrs = guard.vetted(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests;
