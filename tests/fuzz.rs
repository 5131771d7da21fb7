//! Property-based fuzzing (proptest) of the two parsers that take outside input at run time:
//! the config loader and the auth-response extraction. Arbitrary input must give a value or
//! an error, never a panic. The seeds in tests/fuzz-seeds/ are mutated as well, so the
//! inputs stay close to real files and responses.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callback_dispatcher::auth::token::{
    ExpirationFormat, FieldPath, ResponseShape, extract, parse_expiry,
};
use callback_dispatcher::config::Config;
use proptest::prelude::*;

fn seeds(dir: &str) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz-seeds")
            .join(dir),
    )
    .unwrap()
    .map(|e| e.unwrap().path())
    .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Replace a few spans of `seed` with short runs of syntax-heavy characters.
fn mutate(seed: &str, edits: &[(usize, usize, String)]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for (at, len, with) in edits {
        let start = at % (chars.len() + 1);
        let end = (start + len).min(chars.len());
        chars.splice(start..end, with.chars());
    }
    chars.into_iter().collect()
}

fn edits() -> impl Strategy<Value = Vec<(usize, usize, String)>> {
    prop::collection::vec(
        (
            any::<usize>(),
            0usize..12,
            "[-:{}\\[\\]\"' \n#$,&*!|>%@`a-z0-9.]{0,8}",
        ),
        1..6,
    )
}

fn shapes() -> Vec<ResponseShape> {
    let p = |s: &str| FieldPath::parse(s).unwrap();
    let formats = [
        ExpirationFormat::Auto,
        ExpirationFormat::Seconds,
        ExpirationFormat::UnixSeconds,
        ExpirationFormat::UnixMillis,
        ExpirationFormat::Rfc3339,
    ];
    formats
        .into_iter()
        .enumerate()
        .map(|(i, f)| ResponseShape {
            token: p([
                "$.access_token",
                "$.data.token",
                "$..token",
                "$.a[0]",
                "$.*",
            ][i]),
            expiration: Some(p([
                "$.expires_in",
                "$.data.expiresAt",
                "$..exp",
                "$.a[1]",
                "$.expires_on",
            ][i])),
            expiration_format: f,
            token_type: Some(p("$.token_type")),
            algorithm: (i % 2 == 0).then(|| "RS256".to_owned()),
        })
        .collect()
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
        ".{0,24}".prop_map(serde_json::Value::from),
        "[0-9]{1,14}".prop_map(serde_json::Value::from),
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](Z|[+-][0-2][0-9]:[0-5][0-9])".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("access_token".to_owned()),
                    Just("expires_in".to_owned()),
                    Just("data".to_owned()),
                    Just("token".to_owned()),
                    Just("token_type".to_owned()),
                    "[a-z]{1,6}".prop_map(|s| s)
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn load(text: &str) {
    let _ = Config::from_yaml(text, Path::new("fuzz.yaml"), |n| {
        (n.len() % 2 == 0).then(|| "v".to_owned())
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_loader_never_panics_on_arbitrary_text(text in "(?s).{0,400}") {
        load(&text);
    }

    #[test]
    fn config_loader_never_panics_on_mutated_seeds(seed in 0usize..5, edits in edits()) {
        let seeds = seeds("config");
        load(&mutate(&seeds[seed % seeds.len()], &edits));
    }

    #[test]
    fn auth_extraction_never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..300), shape in 0usize..5) {
        let _ = extract(&body, &shapes()[shape], SystemTime::now());
    }

    #[test]
    fn auth_extraction_never_panics_on_json(v in json_value(), shape in 0usize..5) {
        let _ = extract(v.to_string().as_bytes(), &shapes()[shape], SystemTime::now());
    }

    #[test]
    fn auth_extraction_never_panics_on_mutated_seeds(seed in 0usize..6, edits in edits(), shape in 0usize..5) {
        let seeds = seeds("auth");
        let body = mutate(&seeds[seed % seeds.len()], &edits);
        let _ = extract(body.as_bytes(), &shapes()[shape], SystemTime::now());
    }

    #[test]
    fn expiry_parsing_never_panics_and_is_never_in_the_past(v in json_value(), f in 0usize..5, now_s in 0u64..4_000_000_000) {
        let format = [ExpirationFormat::Auto, ExpirationFormat::Seconds, ExpirationFormat::UnixSeconds, ExpirationFormat::UnixMillis, ExpirationFormat::Rfc3339][f];
        let now = UNIX_EPOCH + Duration::from_secs(now_s);
        if let (Ok(at), ExpirationFormat::Seconds) = (parse_expiry(&v, format, now), format) {
            prop_assert!(at > now);
        }
    }
}

#[test]
fn every_seed_is_handled() {
    // The valid seeds stay valid; the invalid one gives errors, not a panic.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-seeds/config");
    for (file, valid) in [
        ("example.yaml", true),
        ("demo.yaml", true),
        ("minimal-oauth.yaml", true),
        ("invalid.yaml", false),
        ("configmap-wrapped.yaml", false),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let got = Config::from_yaml(&text, Path::new(file), |_| None);
        assert_eq!(
            got.is_ok(),
            valid,
            "{file}: {:?}",
            got.err().map(|e| e.to_string())
        );
    }
    let shapes = shapes();
    for body in seeds("auth") {
        for s in &shapes {
            let _ = extract(body.as_bytes(), s, SystemTime::now());
        }
    }
    let kaleyra = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-seeds/auth/kaleyra.json"),
    )
    .unwrap();
    let mut shape = shapes[0].clone();
    shape.algorithm = None;
    assert!(extract(kaleyra.as_bytes(), &shape, SystemTime::now()).is_ok());
}
