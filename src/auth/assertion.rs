//! `private_key_jwt` (RFC 7523 section 2.2, OpenID Connect): instead of a shared secret, the
//! worker proves who it is with a short-lived JWT signed by the profile's private key. A
//! fresh assertion is made for every token request; signing is done by `jsonwebtoken` (on
//! aws-lc), never by hand.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long an assertion is valid: RFC 7523 wants it short; SPEC section 4 says at most 5 min.
pub const LIFETIME: Duration = Duration::from_secs(300);

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The algorithms a profile may choose.
pub const ALGORITHMS: [(&str, Algorithm); 3] = [
    ("RS256", Algorithm::RS256),
    ("PS256", Algorithm::PS256),
    ("ES256", Algorithm::ES256),
];

/// A profile's signing key and assertion settings. `Debug` never shows the key.
pub struct Assertion {
    key: EncodingKey,
    pub algorithm: Algorithm,
    pub key_id: Option<String>,
    /// `aud`; `None` means the auth URL.
    pub audience: Option<String>,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("audience", &self.audience)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

/// Why a configured key cannot sign. Never carries the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not a PEM private key of a kind this worker signs with (PKCS#8 RSA or EC P-256)")]
    Unreadable,
    #[error("is {found} key, which cannot sign {algorithm:?} assertions")]
    WrongKind {
        found: &'static str,
        algorithm: Algorithm,
    },
}

impl Assertion {
    /// Read `pem` for `algorithm` (or, without one, the algorithm its kind of key implies:
    /// RS256 for RSA, ES256 for EC), and sign a trial assertion so that a key that parses
    /// but cannot sign (a public key, another curve) fails now, at load.
    pub fn new(
        pem: &[u8],
        algorithm: Option<Algorithm>,
        key_id: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, KeyError> {
        let rsa = EncodingKey::from_rsa_pem(pem).ok();
        let ec = EncodingKey::from_ec_pem(pem).ok();
        let found = match (&rsa, &ec) {
            (Some(_), _) => "an RSA",
            (_, Some(_)) => "an EC",
            _ => return Err(KeyError::Unreadable),
        };
        let (key, algorithm) = match (algorithm, rsa, ec) {
            (None | Some(Algorithm::RS256), Some(k), _) => (k, Algorithm::RS256),
            (Some(Algorithm::PS256), Some(k), _) => (k, Algorithm::PS256),
            (None | Some(Algorithm::ES256), _, Some(k)) => (k, Algorithm::ES256),
            (Some(algorithm), _, _) => return Err(KeyError::WrongKind { found, algorithm }),
            (None, None, None) => return Err(KeyError::Unreadable),
        };
        let assertion = Assertion {
            key,
            algorithm,
            key_id,
            audience,
        };
        assertion
            .sign("trial", "https://trial.invalid/token", SystemTime::now())
            .map_err(|_| KeyError::WrongKind { found, algorithm })?;
        Ok(assertion)
    }

    /// A digest of the key, to tell whether a reload changed it.
    pub fn key_digest(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.key.as_bytes()).into()
    }

    /// A fresh assertion: `iss` = `sub` = `client_id`, `aud`, a unique `jti`, `iat` and `exp`.
    pub fn sign(
        &self,
        client_id: &str,
        default_audience: &str,
        now: SystemTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut header = Header::new(self.algorithm);
        header.kid = self.key_id.clone();
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: self.audience.as_deref().unwrap_or(default_audience),
            jti: uuid::Uuid::new_v4().to_string(),
            iat,
            exp: iat + LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}
