use std::path::Path;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;
use crate::auth::Auth;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, Path::new("test.yaml"), |name| match name {
        "SECRET" => Some("s3cr3t-value".into()),
        _ => None,
    })
}

const MINIMAL: &str = "profiles:\n  - id: a\n    url: http://127.0.0.1:1/cb\n";

#[test]
fn the_example_file_is_valid() {
    let config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/dispatcher.yaml"
    )))
    .unwrap();
    assert_eq!(config.profiles.len(), 8);
    assert!(matches!(
        config.profiles.get("infobip").unwrap().auth,
        Auth::OAuth2(_)
    ));
}

#[test]
fn defaults_match_the_spec() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.amqp.url.expose_secret(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(
        (
            c.amqp.queue.as_str(),
            c.amqp.exchange.as_str(),
            c.amqp.prefetch
        ),
        ("callbacks", "callbacks", 256)
    );
    assert_eq!(c.delivery.concurrency, 256);
    assert_eq!(c.delivery.timeout, Duration::from_secs(15));
    assert_eq!(c.delivery.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.delivery.max_body_bytes, 1_048_576);
    assert_eq!(c.retry, RetryPolicy::default());
    assert_eq!(c.metrics.listen.to_string(), "0.0.0.0:9464");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.profiles.get("a").unwrap().method, reqwest::Method::POST);
}

#[test]
fn every_problem_is_listed_with_path_and_line() {
    let text = "\
delivery:
  timeout: soon
retry:
  jitter: 1.5
profiles:
  - id: ok
    url: http://127.0.0.1/x
  - id: ok
    url: ftp://nowhere
    method: TRACE
  - url: http://127.0.0.1/y
    auth:
      type: oauth2
      grant_type: authorization_code
      url: http://127.0.0.1/token
      client_id: c
      token_field_path: \"$$[\"
";
    let err = parse(text).unwrap_err();
    let got: Vec<(String, Option<u64>)> = err
        .issues
        .iter()
        .map(|i| (i.path.clone(), i.location.map(|l| l.0)))
        .collect();
    let want = [
        ("delivery.timeout", Some(2)),
        ("retry.jitter", Some(4)),
        ("profiles[1].id", Some(8)),
        ("profiles[1].url", Some(9)),
        ("profiles[1].method", Some(10)),
        ("profiles[2].id", Some(11)),
        ("profiles[2].auth.grant_type", Some(14)),
        ("profiles[2].auth.client_secret", Some(13)),
        ("profiles[2].auth.token_field_path", Some(17)),
    ];
    let want: Vec<(String, Option<u64>)> = want.iter().map(|(p, l)| (p.to_string(), *l)).collect();
    assert_eq!(got, want, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("test.yaml: 9 configuration errors"),
        "{text}"
    );
    assert!(
        text.contains("user to sign in interactively through a redirect URL"),
        "{text}"
    );
}

#[test]
fn unsupported_grants_say_why() {
    for grant in ["authorization_code", "pkce", "device_code", "refresh_token"] {
        let text = format!(
            "profiles:\n  - id: a\n    url: http://x/\n    auth: {{type: oauth2, grant_type: {grant}, url: http://x/t, client_id: c, client_secret: s}}\n"
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].path, "profiles[0].auth.grant_type");
        assert!(err.issues[0].message.contains("not supported"), "{err}");
    }
}

#[test]
fn unknown_keys_and_syntax_errors_have_a_location() {
    let err = parse("amqp:\n  queue: q\n  prefech: 5\nprofiles: []\n").unwrap_err();
    assert_eq!(err.issues.len(), 1);
    assert_eq!(err.issues[0].location.map(|l| l.0), Some(3), "{err}");
    assert!(err.issues[0].message.contains("prefech"), "{err}");
}

#[test]
fn env_interpolation_and_missing_variables() {
    let c = parse("amqp:\n  prefetch: ${UNSET_PREFETCH:-12}\nprofiles:\n  - id: a\n    url: http://h/\n    auth: {type: bearer, token: \"${SECRET}\"}\n").unwrap();
    assert_eq!(c.amqp.prefetch, 12);
    let err =
        parse("amqp:\n  url: ${NOPE}\nprofiles:\n  - id: a\n    url: ${ALSO_NOPE}\n").unwrap_err();
    let names: Vec<_> = err
        .issues
        .iter()
        .map(|i| {
            (
                i.location.map(|l| l.0),
                i.message.split(' ').nth(2).unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            (Some(2), "NOPE".to_owned()),
            (Some(5), "ALSO_NOPE".to_owned())
        ]
    );
}

#[test]
fn secrets_never_appear_in_errors_or_debug() {
    // A numeric secret where a string is expected, a bad signing secret, and a valid config.
    let bad = "profiles:\n  - id: a\n    url: http://h/\n    signing: {secrets: [\"not base64 ${SECRET}\"]}\n    auth: {type: basic, username: u, password: 987654321}\n    timeout: nope\n";
    let err = parse(bad).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("s3cr3t-value") && !shown.contains("987654321"),
        "{shown}"
    );
    let good = "amqp: {url: \"amqp://u:s3cr3t-value@h:5672/%2f\"}\nprofiles:\n  - id: a\n    url: http://h/\n    signing: {secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]}\n    auth: {type: oauth2, url: http://h/t, client_id: c, client_secret: \"${SECRET}\"}\n  - {id: b, url: \"http://h/\", auth: {type: bearer, token: \"${SECRET}\"}}\n  - {id: c, url: \"http://h/\", auth: {type: api_key, value: \"App ${SECRET}\"}}\n";
    let config = parse(good).unwrap();
    let debug = format!("{config:?}");
    for secret in [
        "s3cr3t-value",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "czNjcjN0",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
}

#[test]
fn auth_keys_must_fit_the_type() {
    let err = parse("profiles:\n  - id: a\n    url: http://h/\n    auth: {type: bearer, token: t, client_id: c}\n").unwrap_err();
    assert_eq!(err.issues[0].path, "profiles[0].auth.client_id");
    assert_eq!(
        err.issues[0].message,
        "is not a key of auth type bearer (its keys: token)"
    );
    let err =
        parse("profiles:\n  - id: a\n    url: http://h/\n    auth: {type: basic, username: u}\n")
            .unwrap_err();
    assert_eq!(err.issues[0].path, "profiles[0].auth.password");

    // A missing key, a stray key and a key of the other client_auth, all at once.
    let err = parse("profiles:\n  - id: a\n    url: http://h/\n    auth: {type: oauth2, url: http://h/t, client_secret: s, private_key: k, scopes: x}\n").unwrap_err();
    let got: Vec<_> = err
        .issues
        .iter()
        .map(|i| (i.path.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.contains(&(
            "profiles[0].auth.client_id",
            "is required for auth type oauth2"
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "profiles[0].auth.private_key",
            "applies only with client_auth: private_key_jwt"
        )),
        "{got:?}"
    );
    assert!(got.iter().any(|(p, m)| *p == "profiles[0].auth.scopes" && m.starts_with("is not a key of auth type oauth2 (its keys: grant_type, method, url, client_id, client_auth, client_secret, private_key")), "{got:?}");

    let err = parse("profiles:\n  - id: a\n    url: http://h/\n    auth: {type: oauth2, url: http://h/t, client_id: c, client_auth: private_key_jwt, client_secret: s}\n").unwrap_err();
    let got: Vec<_> = err
        .issues
        .iter()
        .map(|i| (i.path.as_str(), i.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "profiles[0].auth.client_secret",
                "does not apply with client_auth: private_key_jwt (the signed assertion replaces the secret)"
            ),
            (
                "profiles[0].auth.private_key",
                "is required for auth type oauth2"
            ),
        ]
    );
}

#[test]
fn keys_and_cache_secrets_never_appear_in_debug() {
    let assertion_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let tls_key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["c".to_owned()])
        .unwrap()
        .self_signed(&tls_key)
        .unwrap();
    let indent = |pem: &str| -> String { pem.lines().map(|l| format!("        {l}\n")).collect() };
    let cache_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let yaml = format!(
        "token_cache: {{redis: \"redis://:redis-SECRET-pw@h:6379/0\", encryption_key: \"{cache_key}\"}}\nprofiles:\n  - id: a\n    url: https://h.example/\n    tls:\n      client_cert: |\n{}      client_key: |\n{}    auth:\n      type: oauth2\n      url: https://h.example/t\n      client_id: c\n      client_auth: private_key_jwt\n      private_key: |\n{}",
        indent(&cert.pem()),
        indent(&tls_key.serialize_pem()),
        indent(&assertion_key.serialize_pem()),
    );
    let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{config:?}");
    let mut secrets: Vec<String> = [assertion_key.serialize_pem(), tls_key.serialize_pem()]
        .iter()
        .flat_map(|pem| {
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    secrets.extend(["redis-SECRET-pw".to_owned(), cache_key.to_owned()]);
    for secret in secrets {
        assert!(!debug.contains(&secret), "{secret} in {debug}");
    }
    assert!(
        debug.contains("Assertion") && debug.contains("Tls"),
        "{debug}"
    );
}

/// Every duration key, as a YAML document with `VALUE` where its value goes, and its key path.
const DURATION_KEYS: [(&str, &str); 9] = [
    (
        "delivery: {timeout: VALUE}\nprofiles: [{id: a, url: \"http://h/\"}]\n",
        "delivery.timeout",
    ),
    (
        "delivery: {connect_timeout: VALUE}\nprofiles: [{id: a, url: \"http://h/\"}]\n",
        "delivery.connect_timeout",
    ),
    (
        "delivery: {circuit_breaker: {open_for: VALUE}}\nprofiles: [{id: a, url: \"http://h/\"}]\n",
        "delivery.circuit_breaker.open_for",
    ),
    (
        "retry: {initial_delay: VALUE}\nprofiles: [{id: a, url: \"http://h/\"}]\n",
        "retry.initial_delay",
    ),
    (
        "retry: {max_delay: VALUE}\nprofiles: [{id: a, url: \"http://h/\"}]\n",
        "retry.max_delay",
    ),
    (
        "retry: {max_age: VALUE}\nprofiles: [{id: a, url: \"http://h/\"}]\n",
        "retry.max_age",
    ),
    (
        "profiles: [{id: a, url: \"http://h/\", timeout: VALUE}]\n",
        "profiles[0].timeout",
    ),
    (
        "profiles: [{id: a, url: \"http://h/\", circuit_breaker: {open_for: VALUE}}]\n",
        "profiles[0].circuit_breaker.open_for",
    ),
    (
        "profiles: [{id: a, url: \"http://h/\", auth: {type: oauth2, url: \"http://h/t\", client_id: c, client_secret: s, refresh_before_expiry: VALUE}}]\n",
        "profiles[0].auth.refresh_before_expiry",
    ),
];

fn with_value(template: &str, value: &str) -> String {
    template.replace("VALUE", value)
}

#[test]
fn absurd_durations_are_errors_with_the_key_path() {
    for (template, path) in DURATION_KEYS {
        for value in [
            "500000000000y",
            "99999999999999y",
            "18446744073709551615s",
            "101y",
            "\"100y 1s\"",
        ] {
            let text = with_value(template, value);
            let err = match parse(&text) {
                Err(err) => err,
                Ok(_) => panic!("{path}: {value} was accepted"),
            };
            let issue = err
                .issues
                .iter()
                .find(|i| i.path == path)
                .unwrap_or_else(|| panic!("{path}: {value}: {err}"));
            assert!(
                issue.message.contains("100 years"),
                "{path}: {value}: {}",
                issue.message
            );
            assert!(issue.location.is_some(), "{path}: {value}");
        }
    }
}

#[test]
fn the_longest_durations_accepted_overflow_nothing() {
    use crate::profiles::breaker::{Breaker, Health};
    // 100 years wherever no tighter limit applies; retry delays up to their 24-day limit.
    let text = "delivery: {timeout: 100y, connect_timeout: 100y, circuit_breaker: {failures: 1, open_for: 100y}}\nretry: {initial_delay: 24d, max_delay: 24d, max_age: 100y, max_attempts: 1000, multiplier: 1.0e300}\nprofiles: [{id: a, url: \"http://h/\", timeout: 100y, auth: {type: oauth2, url: \"http://h/t\", client_id: c, client_secret: s, refresh_before_expiry: 100y}}]\n";
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.delivery.timeout, issues::MAX_DURATION);
    assert_eq!(c.retry.max_age, issues::MAX_DURATION);
    // The breaker opens for 100 years from now without overflowing the clock.
    let mut breaker = Breaker::new(c.delivery.circuit_breaker);
    let now = std::time::Instant::now();
    breaker.record(false, Health::Down, now);
    assert!(breaker.is_open());
    // Retry math at the extremes.
    let declared = c.retry.delay_queue_ms();
    assert!(declared.len() <= 1000 + 14, "{}", declared.len());
    let day24 = 24 * 24 * 3600 * 1000;
    let plan = c
        .retry
        .plan(u32::MAX, Some(Duration::MAX), 0.999, &declared);
    assert!(plan.expiration_ms <= plan.queue_delay_ms && plan.queue_delay_ms <= day24);
    assert!(!c.retry.expired(Duration::from_secs(99 * 31_557_600)));
    assert!(c.retry.expired(Duration::MAX));
    // Token reuse is capped whatever the margin.
    let reuse = crate::auth::token::reuse_for(Duration::MAX, issues::MAX_DURATION);
    assert!(now.checked_add(reuse).is_some());
    let policy = c.retry.defer_plan(Duration::MAX, &declared);
    assert!(policy.queue_delay_ms <= day24);
}

#[test]
fn max_attempts_is_bounded() {
    let err = parse("retry: {max_attempts: 4000000000}\nprofiles: [{id: a, url: \"http://h/\"}]\n")
        .unwrap_err();
    assert_eq!(err.issues[0].path, "retry.max_attempts");
    assert_eq!(err.issues[0].message, "must be at most 1000");
    assert!(
        parse("retry: {max_attempts: 1000}\nprofiles: [{id: a, url: \"http://h/\"}]\n").is_ok()
    );
}
