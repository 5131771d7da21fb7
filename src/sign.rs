//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! `signature` is a pure function checked against the published test vector; `Signer` holds
//! the profile's decoded keys (several during a rotation: each one signs, so receivers that
//! know either key accept the callback). A `whsec_` secret signs with HMAC-SHA256 (`v1`); a
//! `whsk_` secret is an ed25519 key and signs the same content (`v1a`); its public key,
//! `whpk_...`, is what the customer verifies with.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

/// One decoded signing secret.
pub enum Key {
    /// `whsec_...` (or bare base64): HMAC-SHA256, `v1`.
    Hmac(SecretSlice<u8>),
    /// `whsk_...`: ed25519, `v1a`.
    Ed25519(Box<SigningKey>),
}

/// The decoded signing keys of one profile. `Debug` shows only how many there are.
pub struct Signer {
    keys: Vec<Key>,
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
    #[error(
        "is not valid base64 of a 32-byte ed25519 seed (or the 64-byte seed and public key) after `whsk_`"
    )]
    NotEd25519,
    #[error("holds a public key that does not belong to its seed")]
    MismatchedPublicKey,
}

/// Decode one secret: `whsk_<base64>` is an ed25519 key; anything else is base64 after an
/// optional `whsec_` prefix.
pub fn decode_secret(secret: &SecretString) -> Result<Key, KeyError> {
    let text = secret.expose_secret();
    if let Some(b64) = text.strip_prefix("whsk_") {
        let bytes = SecretSlice::from(STANDARD.decode(b64).map_err(|_| KeyError::NotEd25519)?);
        let key = match bytes.expose_secret().len() {
            32 => SigningKey::from_bytes(bytes.expose_secret().try_into().expect("32 bytes")),
            64 => {
                SigningKey::from_keypair_bytes(bytes.expose_secret().try_into().expect("64 bytes"))
                    .map_err(|_| KeyError::MismatchedPublicKey)?
            }
            _ => return Err(KeyError::NotEd25519),
        };
        return Ok(Key::Ed25519(Box::new(key)));
    }
    let b64 = text.strip_prefix("whsec_").unwrap_or(text);
    let key = STANDARD.decode(b64).map_err(|_| KeyError::NotBase64)?;
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(Key::Hmac(SecretSlice::from(key)))
}

impl Signer {
    pub fn new(keys: Vec<Key>) -> Self {
        Self { keys }
    }

    /// The `webhook-signature` header value: one entry per key (`v1,<sig>` or `v1a,<sig>`),
    /// space-separated, in the order configured. `body` is what the callback carries: its
    /// body, or for GET and DELETE its query string as sent, without the `?` (SPEC section 6).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(self.keys.len() * 92);
        let mut content: Option<Vec<u8>> = None;
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            match key {
                Key::Hmac(k) if self.keys.len() == 1 => {
                    return signature(k.expose_secret(), id, timestamp, body);
                }
                Key::Hmac(k) => out.push_str(&signature(k.expose_secret(), id, timestamp, body)),
                Key::Ed25519(k) => {
                    let content =
                        content.get_or_insert_with(|| signed_content(id, timestamp, body));
                    out.push_str("v1a,");
                    out.push_str(&STANDARD.encode(k.sign(content).to_bytes()));
                }
            }
        }
        out
    }

    /// `whpk_<base64>` for each ed25519 key, for the customer to verify `v1a` with.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|k| match k {
                Key::Ed25519(k) => Some(format!(
                    "whpk_{}",
                    STANDARD.encode(k.verifying_key().to_bytes())
                )),
                Key::Hmac(_) => None,
            })
            .collect()
    }
}

/// What is signed: `{id}.{timestamp}.{body}`.
fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let ts = timestamp.to_string();
    let mut content = Vec::with_capacity(id.len() + ts.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(ts.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let mut out = String::with_capacity(47);
    out.push_str("v1,");
    STANDARD.encode_string(mac.finalize().into_bytes(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn hmac_key(s: &str) -> SecretSlice<u8> {
        match decode_secret(&SecretString::from(s)).unwrap() {
            Key::Hmac(k) => k,
            Key::Ed25519(_) => panic!("not an HMAC key"),
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn published_test_vector() {
        let sig = signature(
            hmac_key(SECRET).expose_secret(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn ed25519_matches_rfc_8032_test_1() {
        // RFC 8032 section 7.1, TEST 1: the empty message.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        let want = hex(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        );
        let key = SigningKey::from_bytes(&seed.clone().try_into().unwrap());
        assert_eq!(key.verifying_key().to_bytes().to_vec(), public);
        assert_eq!(key.sign(b"").to_bytes().to_vec(), want);
        // The same seed as a whsk_ secret, alone or followed by its public key.
        for bytes in [seed.clone(), [seed.clone(), public.clone()].concat()] {
            let secret = SecretString::from(format!("whsk_{}", STANDARD.encode(&bytes)));
            let signer = Signer::new(vec![decode_secret(&secret).unwrap()]);
            assert_eq!(
                signer.public_keys(),
                vec![format!("whpk_{}", STANDARD.encode(&public))]
            );
        }
    }

    #[test]
    fn v1a_verifies_over_the_standard_webhooks_content_beside_v1() {
        let seed = [7u8; 32];
        let secret = SecretString::from(format!("whsk_{}", STANDARD.encode(seed)));
        let signer = Signer::new(vec![
            decode_secret(&SecretString::from(SECRET)).unwrap(),
            decode_secret(&secret).unwrap(),
        ]);
        let header = signer.sign("msg_1", 1614265330, b"{\"a\":1}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            signature(
                hmac_key(SECRET).expose_secret(),
                "msg_1",
                1614265330,
                b"{\"a\":1}"
            )
        );
        // An independent check: the public key from whpk_ and the content as the spec says.
        let public = STANDARD
            .decode(signer.public_keys()[0].strip_prefix("whpk_").unwrap())
            .unwrap();
        let vk = VerifyingKey::from_bytes(&public.try_into().unwrap()).unwrap();
        let sig = STANDARD
            .decode(parts[1].strip_prefix("v1a,").unwrap())
            .unwrap();
        let sig = Signature::from_bytes(&sig.try_into().unwrap());
        assert!(vk.verify(b"msg_1.1614265330.{\"a\":1}", &sig).is_ok());
        assert!(vk.verify(b"msg_1.1614265331.{\"a\":1}", &sig).is_err());
    }

    #[test]
    fn every_key_signs_in_order() {
        let a = hmac_key(SECRET);
        let b = hmac_key("c2Vjb25kLWtleQ==");
        let want_a = signature(a.expose_secret(), "id", 1, b"x");
        let want_b = signature(b.expose_secret(), "id", 1, b"x");
        let signer = Signer::new(vec![Key::Hmac(a), Key::Hmac(b)]);
        assert_eq!(signer.sign("id", 1, b"x"), format!("{want_a} {want_b}"));
        assert_ne!(want_a, want_b);
    }

    #[test]
    fn bad_secrets_are_refused_without_echo() {
        let err = |s: &str| decode_secret(&SecretString::from(s)).err();
        assert_eq!(err("whsec_***"), Some(KeyError::NotBase64));
        assert_eq!(err("whsec_"), Some(KeyError::Empty));
        assert_eq!(err("whsk_c2hvcnQ="), Some(KeyError::NotEd25519));
        let mismatched = [[1u8; 32], [2u8; 32]].concat();
        assert_eq!(
            err(&format!("whsk_{}", STANDARD.encode(mismatched))),
            Some(KeyError::MismatchedPublicKey)
        );
        let signer = Signer::new(vec![decode_secret(&SecretString::from(SECRET)).unwrap()]);
        assert!(!format!("{signer:?}").contains("MfKQ9r8"));
    }
}
