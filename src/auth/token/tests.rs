use super::*;
use secrecy::ExposeSecret;
use serde_json::json;
use std::time::UNIX_EPOCH;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const NOW: u64 = 1_700_000_000;

fn jwt(header: Value, claims: Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.sig", enc(&header), enc(&claims))
}

fn shape(token: &str, exp: Option<&str>, fmt: ExpirationFormat, ty: Option<&str>) -> ResponseShape {
    ResponseShape {
        token: FieldPath::parse(token).unwrap(),
        expiration: exp.map(|p| FieldPath::parse(p).unwrap()),
        expiration_format: fmt,
        token_type: ty.map(|p| FieldPath::parse(p).unwrap()),
        algorithm: None,
    }
}

#[test]
fn expiry_table() {
    use ExpirationFormat::*;
    let now = at(NOW);
    let cases: Vec<(Value, ExpirationFormat, Result<SystemTime, ()>)> = vec![
        (json!(3599), Auto, Ok(at(NOW + 3599))),
        (json!("3599"), Auto, Ok(at(NOW + 3599))),
        (json!(" 600 "), Seconds, Ok(at(NOW + 600))),
        (json!(1.5), Seconds, Ok(now + Duration::from_millis(1500))),
        (json!(0.5), Seconds, Err(())),
        (json!(4e-13), Auto, Err(())),
        (json!(1_686_632_570u64), Auto, Ok(at(1_686_632_570))),
        (json!("1686632570"), UnixSeconds, Ok(at(1_686_632_570))),
        (json!(1_700_000_600_000u64), Auto, Ok(at(NOW + 600))),
        (json!("1700000600000"), UnixMillis, Ok(at(NOW + 600))),
        (json!("2023-11-14T22:13:20Z"), Auto, Ok(at(NOW))),
        (json!("2023-11-15T00:13:20+02:00"), Rfc3339, Ok(at(NOW))),
        (json!("2023-11-14T21:13:20-01:00"), Auto, Ok(at(NOW))),
        (
            json!("2023-11-14T22:13:20.5Z"),
            Rfc3339,
            Ok(at(NOW) + Duration::from_millis(500)),
        ),
        (json!(0), Seconds, Err(())),
        (json!(-5), Auto, Err(())),
        (json!("soon"), Auto, Err(())),
        (json!("soon"), Seconds, Err(())),
        (json!(600), Rfc3339, Err(())),
        (json!(true), Auto, Err(())),
        (json!({"a": 1}), Auto, Err(())),
        (json!(1e300), Seconds, Err(())),
        (json!(1e300), UnixMillis, Err(())),
        (json!("NaN"), Seconds, Err(())),
        (json!("2023-11-14 22:13:20"), Rfc3339, Err(())),
    ];
    for (value, format, want) in cases {
        let got = parse_expiry(&value, format, now).map_err(|_| ());
        assert_eq!(got, want, "{value} as {format:?}");
    }
}

#[test]
fn scheme_table() {
    for (raw, want) in [
        ("Bearer", "Bearer"),
        ("bearer", "Bearer"),
        ("BEARER", "Bearer"),
        (" IBSSO ", "IBSSO"),
        ("MAC", "MAC"),
        ("", "Bearer"),
        ("two words", "Bearer"),
        ("bad\r\nheader", "Bearer"),
    ] {
        assert_eq!(normalize_scheme(raw), want, "{raw:?}");
    }
}

#[test]
fn jwt_table() {
    let good = jwt(
        json!({"alg": "RS256", "typ": "JWT"}),
        json!({"exp": 1_700_000_600}),
    );
    assert_eq!(
        Jwt::read(&good),
        Some(Jwt {
            alg: Some("RS256".into()),
            exp: Some(1_700_000_600)
        })
    );
    let no_exp = jwt(json!({"alg": "HS256"}), json!({"sub": "x"}));
    assert_eq!(Jwt::read(&no_exp).unwrap().exp, None);
    for not_jwt in [
        "opaque-token",
        "a.b",
        "a.b.c.d",
        "!!!.###.sig",
        &format!("{}.e30.x", URL_SAFE_NO_PAD.encode("[1]")),
    ] {
        assert_eq!(Jwt::read(not_jwt), None, "{not_jwt}");
    }
}

#[test]
fn basic_encoding_urlencodes_each_part_first_with_a_space_as_percent_20() {
    // RFC 6749 2.3.1: urlencode, then base64. A space is %20, never `+` (SPEC section 4).
    for (id, secret, encoded) in [
        ("client id", "s$ @+/=", "client%20id:s%24%20%40%2B%2F%3D"),
        ("abc", "def", "abc:def"),
        ("a-b.c_d*", "~x", "a-b.c_d*:%7Ex"),
        ("ü", ":", "%C3%BC:%3A"),
    ] {
        assert_eq!(
            basic_credentials(id, secret),
            format!("Basic {}", STANDARD.encode(encoded)),
            "{id:?} {secret:?}"
        );
    }
}

#[test]
fn reuse_table() {
    let s = Duration::from_secs;
    for (lifetime, margin, want) in [
        (s(3599), s(30), s(3569)),
        (s(60), s(30), s(30)),
        (s(59), s(30), Duration::from_millis(29_500)),
        (s(10), s(30), s(5)),
        (s(10), s(0), s(10)),
        (s(400 * 24 * 3600), s(30), MAX_REUSE),
    ] {
        assert_eq!(reuse_for(lifetime, margin), want, "{lifetime:?} {margin:?}");
    }
}

#[test]
fn kaleyra_style_string_numbers() {
    let body = br#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1686632570","not_before":"1686628670","resource":"00000002-0000-0000-c000-000000000000","access_token":"eyJ0eXAi"}"#;
    let s = shape(
        "$.access_token",
        Some("$.expires_in"),
        ExpirationFormat::Auto,
        Some("$.token_type"),
    );
    let got = extract(body, &s, at(NOW)).unwrap();
    assert_eq!(got.token.expose_secret(), "eyJ0eXAi");
    assert_eq!(got.scheme, "Bearer");
    assert_eq!(got.expires_at, at(NOW + 3599));
}

#[test]
fn infobip_style_nested_with_scheme() {
    let body = br#"{"data":{"token":"tok-123","tokenType":"IBSSO","expiresAt":1700003600}}"#;
    let s = shape(
        "$.data.token",
        Some("$.data.expiresAt"),
        ExpirationFormat::UnixSeconds,
        Some("$.data.tokenType"),
    );
    let got = extract(body, &s, at(NOW)).unwrap();
    assert_eq!(got.token.expose_secret(), "tok-123");
    assert_eq!(got.scheme, "IBSSO");
    assert_eq!(got.expires_at, at(NOW + 3600));
}

#[test]
fn jwt_exp_is_the_fallback_then_300s() {
    let token = jwt(json!({"alg": "RS256"}), json!({"exp": NOW + 900}));
    let body = json!({ "access_token": token }).to_string();
    let s = shape(
        "$.access_token",
        Some("$.expires_in"),
        ExpirationFormat::Auto,
        None,
    );
    assert_eq!(
        extract(body.as_bytes(), &s, at(NOW)).unwrap().expires_at,
        at(NOW + 900)
    );
    let opaque = br#"{"access_token":"opaque"}"#;
    assert_eq!(
        extract(opaque, &s, at(NOW)).unwrap().expires_at,
        at(NOW + 300)
    );
    let null_expiry = br#"{"access_token":"opaque","expires_in":null}"#;
    assert_eq!(
        extract(null_expiry, &s, at(NOW)).unwrap().expires_at,
        at(NOW + 300)
    );
}

#[test]
fn bad_responses_table() {
    let s = shape(
        "$.access_token",
        Some("$.expires_in"),
        ExpirationFormat::Auto,
        Some("$.token_type"),
    );
    let expired_jwt = jwt(json!({"alg": "RS256"}), json!({"exp": NOW - 1}));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"<html>oops</html>".to_vec(), "response is not JSON"),
        (b"".to_vec(), "response is not JSON"),
        (br#"{"token":"x"}"#.to_vec(), "no token at $.access_token"),
        (
            br#"{"access_token":""}"#.to_vec(),
            "no token at $.access_token",
        ),
        (
            br#"{"error":"invalid_client","error_description":"bad secret"}"#.to_vec(),
            "no token at $.access_token (error: invalid_client, error_description: bad secret)",
        ),
        (
            br#"{"access_token":42}"#.to_vec(),
            "the value at $.access_token is a number, not a string",
        ),
        (
            br#"{"access_token":{"v":"x"}}"#.to_vec(),
            "the value at $.access_token is an object, not a string",
        ),
        (
            br#"{"access_token":"x","expires_in":-10}"#.to_vec(),
            "bad expiry at $.expires_in: a number, a lifetime that is not positive",
        ),
        (
            br#"{"access_token":"x","expires_in":"later"}"#.to_vec(),
            "bad expiry at $.expires_in: a string that is not an RFC 3339 time",
        ),
        (
            br#"{"access_token":"x","expires_in":1e300}"#.to_vec(),
            "bad expiry at $.expires_in: a number out of range",
        ),
        (
            json!({"access_token": expired_jwt})
                .to_string()
                .into_bytes(),
            "bad expiry at JWT exp: the token has already expired",
        ),
    ];
    for (body, want) in cases {
        let err = extract(&body, &s, at(NOW))
            .err()
            .unwrap_or_else(|| panic!("accepted {}", String::from_utf8_lossy(&body)));
        assert_eq!(err.to_string(), want);
    }
}

#[test]
fn algorithm_is_enforced() {
    let mut s = shape("$.access_token", None, ExpirationFormat::Auto, None);
    s.algorithm = Some("RS256".into());
    let hs = jwt(json!({"alg": "HS256"}), json!({"exp": NOW + 60}));
    let rs = jwt(json!({"alg": "RS256"}), json!({"exp": NOW + 60}));
    let body = |t: &str| json!({ "access_token": t }).to_string();
    assert_eq!(
        extract(body(&hs).as_bytes(), &s, at(NOW))
            .err()
            .unwrap()
            .to_string(),
        "token JWT alg is HS256, auth_algorithm requires RS256"
    );
    assert_eq!(
        extract(body("opaque").as_bytes(), &s, at(NOW))
            .err()
            .unwrap()
            .to_string(),
        "token is not a JWT, but auth_algorithm requires RS256"
    );
    assert!(extract(body(&rs).as_bytes(), &s, at(NOW)).is_ok());
}

#[test]
fn errors_never_carry_the_token() {
    let s = {
        let mut s = shape(
            "$.access_token",
            Some("$.expires_in"),
            ExpirationFormat::Auto,
            None,
        );
        s.algorithm = Some("RS256".into());
        s
    };
    let body = br#"{"access_token":"SUPERSECRETTOKEN","expires_in":5}"#;
    let err = extract(body, &s, at(NOW)).err().unwrap();
    assert!(!format!("{err} {err:?}").contains("SUPERSECRETTOKEN"));
}

#[test]
fn an_expiry_or_scheme_path_pointing_at_the_token_never_quotes_it() {
    let token = "tok-PATH-secret-0123456789abcdefghijklmnopqrstuvwxyz";
    let body = json!({"access_token": token, "expires_in": 3600}).to_string();
    for format in [
        ExpirationFormat::Auto,
        ExpirationFormat::Seconds,
        ExpirationFormat::UnixSeconds,
        ExpirationFormat::UnixMillis,
        ExpirationFormat::Rfc3339,
    ] {
        let s = shape("$.access_token", Some("$.access_token"), format, None);
        let err = extract(body.as_bytes(), &s, at(NOW)).err().unwrap();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("PATH-secret"), "{shown}");
        assert!(shown.contains("$.access_token"), "names the path: {shown}");
        assert!(shown.contains("a string"), "names the JSON type: {shown}");
    }
    let s = shape(
        "$.access_token",
        None,
        ExpirationFormat::Auto,
        Some("$.access_token"),
    );
    let err = extract(body.as_bytes(), &s, at(NOW)).err().unwrap();
    assert_eq!(
        err.to_string(),
        "the value at $.access_token is a string holding the token, not a scheme"
    );
}

#[test]
fn server_text_holding_a_secret_or_a_token_is_redacted_whole() {
    let secret = "cs-ECHO+secret value/with&chars";
    let mut scrub = Scrub::default();
    scrub.add(secret);
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let long = format!("{} then {secret}", "x".repeat(190)); // the secret straddles the clip
    for echoed in [
        format!("client_secret {secret} is wrong"),
        format!("body was client_secret={form}"),
        format!("basic {}", form.replace('+', "%20")),
        json!({ "s": secret }).to_string(),
        long,
    ] {
        let body = json!({"error": "invalid_client", "error_description": echoed});
        let (error, description) = rfc6749_error(&body, &scrub);
        assert_eq!(error.as_deref(), Some("invalid_client"));
        assert_eq!(description.as_deref(), Some(REDACTED), "{echoed}");
    }
    // Harmless text is kept (clipped).
    let body = json!({"error": "invalid_client", "error_description": "unknown client"});
    assert_eq!(
        rfc6749_error(&body, &scrub).1.as_deref(),
        Some("unknown client")
    );
    // A token in the answer is scrubbed from its own error fields.
    let s = shape("$.data.token", None, ExpirationFormat::Auto, None);
    let body = json!({"access_token": "tok-ANSWER-1234", "error": "x",
                      "error_description": "issued tok-ANSWER-1234 but no data"});
    let err = extract_with(body.to_string().as_bytes(), &s, at(NOW), &scrub)
        .err()
        .unwrap();
    assert!(!err.to_string().contains("ANSWER"), "{err}");
    assert!(err.to_string().contains(REDACTED), "{err}");
    assert!(!format!("{scrub:?}").contains("ECHO"));
}
