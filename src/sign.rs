//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! `signature` is a pure function checked against the published test vector; `Signer` holds
//! the profile's decoded keys (several during a rotation: each one signs, so receivers that
//! know either key accept the callback).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

/// The decoded signing keys of one profile. `Debug` shows only how many there are.
pub struct Signer {
    keys: Vec<SecretSlice<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} key(s), redacted)", self.keys.len())
    }
}

/// Why a configured signing secret is unusable. Never carries the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not valid base64 (after the optional `whsec_` prefix)")]
    NotBase64,
    #[error("decodes to an empty key")]
    Empty,
}

/// Decode one secret: base64 after an optional `whsec_` prefix.
pub fn decode_secret(secret: &SecretString) -> Result<SecretSlice<u8>, KeyError> {
    let text = secret.expose_secret();
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    let key = STANDARD.decode(b64).map_err(|_| KeyError::NotBase64)?;
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(SecretSlice::from(key))
}

impl Signer {
    pub fn new(keys: Vec<SecretSlice<u8>>) -> Self {
        Self { keys }
    }

    /// The `webhook-signature` header value: one `v1,<sig>` per key, space-separated.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(self.keys.len() * 48);
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&signature(key.expose_secret(), id, timestamp, body));
        }
        out
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn published_test_vector() {
        let key = decode_secret(&SecretString::from(SECRET)).unwrap();
        let sig = signature(
            key.expose_secret(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_key_signs_in_order() {
        let a = decode_secret(&SecretString::from(SECRET)).unwrap();
        let b = decode_secret(&SecretString::from("c2Vjb25kLWtleQ==")).unwrap();
        let want_a = signature(a.expose_secret(), "id", 1, b"x");
        let want_b = signature(b.expose_secret(), "id", 1, b"x");
        let signer = Signer::new(vec![a, b]);
        assert_eq!(signer.sign("id", 1, b"x"), format!("{want_a} {want_b}"));
        assert_ne!(want_a, want_b);
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        assert_eq!(
            decode_secret(&SecretString::from("whsec_***")).err(),
            Some(KeyError::NotBase64)
        );
        assert_eq!(
            decode_secret(&SecretString::from("whsec_")).err(),
            Some(KeyError::Empty)
        );
        let signer = Signer::new(vec![decode_secret(&SecretString::from(SECRET)).unwrap()]);
        assert!(!format!("{signer:?}").contains("MfKQ9r8"));
    }
}
