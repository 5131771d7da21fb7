use super::*;

/// The guard's table, address by address: `None` = allowed, else the blocked range
/// (the carried IPv4 address's range for forms that carry one).
#[test]
fn blocked_ranges_table() {
    let cases: &[(&str, Option<&str>)] = &[
        // IPv4, registry rows and their edges.
        ("0.0.0.0", Some("0.0.0.0/8")),
        ("0.255.255.255", Some("0.0.0.0/8")),
        ("1.0.0.0", None),
        ("9.255.255.255", None),
        ("10.0.0.0", Some("10.0.0.0/8")),
        ("10.255.255.255", Some("10.0.0.0/8")),
        ("11.0.0.0", None),
        ("100.63.255.255", None),
        ("100.64.0.0", Some("100.64.0.0/10")),
        ("100.127.255.255", Some("100.64.0.0/10")),
        ("100.128.0.0", None),
        ("126.255.255.255", None),
        ("127.0.0.1", Some("127.0.0.0/8")),
        ("127.255.255.254", Some("127.0.0.0/8")),
        ("169.254.169.254", Some("169.254.0.0/16")),
        ("169.253.255.255", None),
        ("169.255.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.1", Some("172.16.0.0/12")),
        ("172.31.255.255", Some("172.16.0.0/12")),
        ("172.32.0.1", None),
        ("192.0.0.0", Some("192.0.0.0/24")),
        ("192.0.0.8", Some("192.0.0.0/24")),
        // Globally reachable per IANA (PCP and TURN anycast), blocked by decision.
        ("192.0.0.9", Some("192.0.0.0/24")),
        ("192.0.0.10", Some("192.0.0.0/24")),
        ("192.0.0.170", Some("192.0.0.0/24")),
        ("192.0.0.255", Some("192.0.0.0/24")),
        ("192.0.1.1", None),
        ("192.0.2.1", Some("192.0.2.0/24")),
        ("192.0.3.1", None),
        // AS112 and AMT are globally reachable.
        ("192.31.196.1", None),
        ("192.52.193.1", None),
        ("192.88.99.1", Some("192.88.99.0/24")),
        ("192.88.98.255", None),
        ("192.167.255.255", None),
        ("192.168.1.1", Some("192.168.0.0/16")),
        ("192.169.0.0", None),
        ("198.17.255.255", None),
        ("198.18.0.1", Some("198.18.0.0/15")),
        ("198.19.255.255", Some("198.18.0.0/15")),
        ("198.20.0.0", None),
        ("198.51.100.7", Some("198.51.100.0/24")),
        ("203.0.113.7", Some("203.0.113.0/24")),
        ("203.0.114.7", None),
        ("223.255.255.255", None),
        ("224.0.0.1", Some("224.0.0.0/4")),
        ("239.255.255.255", Some("224.0.0.0/4")),
        ("240.0.0.1", Some("240.0.0.0/4")),
        ("255.255.255.254", Some("240.0.0.0/4")),
        ("255.255.255.255", Some("255.255.255.255/32")),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        // IPv6 rows.
        ("::", Some("::/128")),
        ("::1", Some("::1/128")),
        ("100::1", Some("100::/64")),
        ("100:0:0:1::1", Some("100:0:0:1::/64")),
        ("100:0:0:2::1", Some("not 2000::/3")),
        ("2001:2::1", Some("2001::/23")),
        ("2001:1::1", Some("2001::/23")),
        ("2001:10::1", Some("2001::/23")),
        ("2001:1ff::1", Some("2001::/23")),
        ("2001:200::1", None),
        ("2001:3::1", None),
        ("2001:4:112::1", None),
        ("2001:20::1", None),
        ("2001:30::1", None),
        ("2001:db8::1", Some("2001:db8::/32")),
        ("2001:db9::1", None),
        ("3fff::1", Some("3fff::/20")),
        ("3fff:fff::1", Some("3fff::/20")),
        ("3fff:1000::1", None),
        ("5f00::1", Some("5f00::/16")),
        ("fc00::1", Some("fc00::/7")),
        ("fd12:3456::1", Some("fc00::/7")),
        ("fe80::1", Some("fe80::/10")),
        ("febf::1", Some("fe80::/10")),
        ("fec0::1", Some("fec0::/10")),
        ("ff02::1", Some("ff00::/8")),
        ("4000::1", Some("not 2000::/3")),
        ("1::1", Some("not 2000::/3")),
        ("2001:4860:4860::8888", None),
        ("2606:4700::1111", None),
        // IPv6 forms that carry an IPv4 address: judged by it.
        ("::ffff:127.0.0.1", Some("127.0.0.0/8")),
        ("::ffff:169.254.169.254", Some("169.254.0.0/16")),
        ("::ffff:10.0.0.1", Some("10.0.0.0/8")),
        ("::ffff:8.8.8.8", None),
        ("::127.0.0.1", Some("127.0.0.0/8")),
        ("::0.0.0.2", Some("0.0.0.0/8")),
        ("::8.8.8.8", None),
        ("::ffff:0:10.0.0.1", Some("10.0.0.0/8")),
        ("::ffff:0:8.8.8.8", None),
        ("64:ff9b::a9fe:a9fe", Some("169.254.0.0/16")),
        ("64:ff9b::808:808", None),
        ("64:ff9b::c633:6407", Some("198.51.100.0/24")),
        ("64:ff9b:1::a9fe:a9fe", Some("169.254.0.0/16")),
        ("64:ff9b:1:ab::7f00:1", Some("127.0.0.0/8")),
        ("64:ff9b:1::808:808", None),
        ("64:ff9b:2::808:808", Some("not 2000::/3")),
        ("2002:a9fe:a9fe::", Some("169.254.0.0/16")),
        ("2002:a9fe:a9fe:1::1", Some("169.254.0.0/16")),
        ("2002:7f00:1::", Some("127.0.0.0/8")),
        ("2002:c612:1::", Some("198.18.0.0/15")),
        ("2002:808:808::1", None),
        // Teredo: server 65.54.227.120, client = last 32 bits inverted.
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Some("10.0.0.0/8")),
        (
            "2001:0:4136:e378:8000:63bf:5601:56ab",
            Some("169.254.0.0/16"),
        ),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
    ];
    for (ip, want) in cases {
        let got = blocked(ip.parse().unwrap());
        assert_eq!(got.as_ref().map(|b| b.row.cidr), *want, "{ip}: {got:?}");
    }
}

#[test]
fn the_table_is_consistent() {
    for r in V4_TABLE.iter().chain(V6_TABLE) {
        let net: IpNet = r.cidr.parse().unwrap();
        assert_eq!(net, net.trunc(), "{} is not a network address", r.cidr);
    }
    // One row per range.
    let mut cidrs: Vec<_> = V4_TABLE.iter().chain(V6_TABLE).map(|r| r.cidr).collect();
    cidrs.sort_unstable();
    let n = cidrs.len();
    cidrs.dedup();
    assert_eq!(cidrs.len(), n);
}

#[test]
fn refusals_name_the_carried_address() {
    let text = |ip: &str| blocked(ip.parse().unwrap()).unwrap().to_string();
    assert_eq!(
        text("2002:a9fe:a9fe::"),
        "2002:a9fe:a9fe:: (6to4 2002::/16 of 169.254.169.254) is link-local (169.254.0.0/16, cloud metadata), which the network guard blocks (allow it with delivery.allow_networks)"
    );
    assert_eq!(
        text("::1"),
        "::1 is loopback (::1), which the network guard blocks (allow it with delivery.allow_networks)"
    );
    assert_eq!(
        text("198.18.0.1"),
        "198.18.0.1 is benchmarking (198.18.0.0/15), which the network guard blocks (allow it with delivery.allow_networks)"
    );
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
    // An allowed IPv4 network covers every IPv6 form that carries its addresses.
    let guard = Guard::new(vec!["169.254.0.0/16".parse().unwrap()]);
    for ip in [
        "169.254.169.254",
        "2002:a9fe:a9fe::",
        "64:ff9b::a9fe:a9fe",
        "::ffff:169.254.169.254",
        "2001:0:4136:e378:8000:63bf:5601:5601",
    ] {
        assert_eq!(guard.check(ip.parse().unwrap()), Ok(()), "{ip}");
    }
    assert!(guard.check("2002:a00:1::".parse().unwrap()).is_err());
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
