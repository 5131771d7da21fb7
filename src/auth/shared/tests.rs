use super::*;

const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";
const MIN: Duration = Duration::from_secs(60);

fn cache() -> SharedTokens {
    SharedTokens::new(
        &SecretString::from("redis://127.0.0.1:1/0"),
        "test",
        &SecretSlice::from(KEY.to_vec()),
        prometheus::IntCounter::new("errors", "errors").unwrap(),
    )
    .unwrap()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// RFC 5869 by hand: PRK = HMAC(zeros, IKM); OKM = T(1) = HMAC(PRK, info || 0x01).
fn hkdf_by_hand(ikm: &[u8], info: &[u8]) -> Vec<u8> {
    let prk = hmac(&[0u8; 32], &[ikm]);
    hmac(&prk, &[info, &[1]])
}

#[test]
fn the_two_keys_are_derived_apart_with_hkdf() {
    let cipher = derive(&KEY, CIPHER_INFO);
    let naming = derive(&KEY, NAMING_INFO);
    assert_eq!(cipher.to_vec(), hkdf_by_hand(&KEY, CIPHER_INFO));
    assert_eq!(naming.to_vec(), hkdf_by_hand(&KEY, NAMING_INFO));
    assert_ne!(*cipher, *naming);
    assert_ne!(*cipher, KEY);
    assert_ne!(*naming, KEY);
    assert_ne!(CIPHER_INFO, NAMING_INFO);
}

#[tokio::test]
async fn key_names_use_the_naming_key_and_values_the_cipher_key() {
    let c = cache();
    let mut mac = c.naming.clone();
    mac.update(b"profile");
    let named = mac.finalize().into_bytes().to_vec();
    assert_eq!(named, hmac(&*derive(&KEY, NAMING_INFO), &[b"profile"]));
    assert_ne!(named, hmac(&KEY, &[b"profile"]));

    let token = Token::new(
        "Bearer".into(),
        SecretString::from("tok"),
        SystemTime::now() + 10 * MIN,
        Instant::now(),
    )
    .unwrap();
    let blob = c.seal("k", &token);
    let opened = c.open("k", &blob, MIN, Duration::ZERO).unwrap().unwrap();
    assert_eq!(opened.value.expose_secret(), "tok");
    // Sealed under the configured key itself (as before the keys were derived): refused.
    let raw = Aes256Gcm::new_from_slice(&KEY).unwrap();
    let nonce = [7u8; 12];
    let mut old = nonce.to_vec();
    old.extend(
        raw.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: br#"{"scheme":"Bearer","token":"tok","expires_at_ms":99999999999999}"#,
                aad: b"k",
            },
        )
        .unwrap(),
    );
    assert!(matches!(
        c.open("k", &old, MIN, Duration::ZERO),
        Err(Failure::Undecryptable)
    ));
}

#[test]
fn usable_for_table() {
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let s = Duration::from_secs;
    for (ttl, expires_in, margin, want) in [
        // A token written by a peer: the TTL left is its reuse window.
        (s(570), Some(s(600)), s(30), Some(s(570))),
        // A TTL that outlives the token: capped at expiry less the margin.
        (s(3600), Some(s(600)), s(30), Some(s(570))),
        (s(86_400), Some(s(10)), s(30), Some(s(5))),
        // Expired, or expiring now: never used, whatever the TTL.
        (s(3600), Some(Duration::ZERO), s(30), None),
        (s(3600), None, s(30), None),
        (
            s(3600),
            Some(Duration::from_millis(1)),
            s(0),
            Some(Duration::from_millis(1)),
        ),
    ] {
        let expires_at = match expires_in {
            Some(d) => now + d,
            None => now - s(1),
        };
        assert_eq!(
            usable_for(ttl, expires_at, margin, now),
            want,
            "{ttl:?} {expires_in:?} {margin:?}"
        );
    }
}

#[tokio::test]
async fn a_stored_token_past_its_expiry_is_never_used() {
    let c = cache();
    let expired = Token::new(
        "Bearer".into(),
        SecretString::from("old"),
        SystemTime::now() - MIN,
        Instant::now() + 60 * MIN,
    )
    .unwrap();
    let blob = c.seal("k", &expired);
    // Redis says an hour is left; the token says it expired a minute ago.
    assert!(
        c.open("k", &blob, 60 * MIN, Duration::ZERO)
            .unwrap()
            .is_none()
    );

    let live = Token::new(
        "Bearer".into(),
        SecretString::from("new"),
        SystemTime::now() + 10 * MIN,
        Instant::now(),
    )
    .unwrap();
    let blob = c.seal("k", &live);
    let token = c
        .open("k", &blob, 24 * 60 * MIN, Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let reuse = token.reuse_until.saturating_duration_since(Instant::now());
    assert!(reuse <= 10 * MIN - Duration::from_secs(30), "{reuse:?}");
    assert!(reuse > 9 * MIN, "{reuse:?}");
}
