//! A token cache shared by every replica, on Redis (SPEC section 12).
//!
//! Design decisions:
//! - Two keys are derived from `encryption_key` with HKDF-SHA256 (RFC 5869, no salt: the
//!   input is already 32 random bytes), each with its own `info` ([`CIPHER_INFO`],
//!   [`NAMING_INFO`]): one key never serves two algorithms, and neither is the configured key.
//! - One token per profile and auth settings, under `<prefix>:token:<profile>:<digest>`, where
//!   the digest is an HMAC (keyed with the naming key) of the profile's auth settings: a
//!   changed profile never reads an old token, and the key reveals nothing about the secret.
//! - The value is `nonce || AES-256-GCM(token, scheme, expiry)` with the key name as
//!   associated data, so a value copied under another key does not decrypt. It is stored
//!   with a TTL equal to the token's reuse window; a replica that reads it reuses it for the
//!   TTL that is left, but never past the token's own expiry (less the refresh margin, as a
//!   fetched token would be): a TTL that outlives the token (a clock step, a rogue writer, a
//!   `PERSIST`) never makes an expired token usable.
//! - Fetching is single-flight across replicas: `SET <key>:lock <fence> NX PX`, fetch, write
//!   the token, release the lock with a compare-and-delete of the fence (Lua). Others poll the
//!   token key, bounded by the auth timeout; when the holder died (the lock outlives it) or
//!   failed, they take the lock themselves or, past the bound, fetch on their own. A Redis
//!   call that times out while another replica is known to be fetching is waited out within
//!   that bound, and calls that time out are tried again for up to a second (or the auth
//!   timeout, if shorter) in any case: on a busy machine a slow answer from Redis must not
//!   mean a second request to the customer's auth server.
//!   A refused connection (Redis down) still means fetching here at once.
//! - A 401 deletes the shared token only if it is still the rejected one (compare-and-delete).
//! - Redis is never waited on for long: every call has a short timeout, and any failure means
//!   this replica fetches for itself (counted in `token_cache_errors_total`, logged at warn).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use hmac::KeyInit;
use hmac::{Hmac, Mac};
use redis::aio::ConnectionManager;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;

use super::fetch::{Source, fetch};
use super::oauth2::{AuthError, Token};
use super::token::reuse_for;

/// HKDF `info` of the AES-256-GCM key that encrypts stored tokens.
pub const CIPHER_INFO: &[u8] = b"callback-dispatcher token_cache v1 aes-256-gcm";
/// HKDF `info` of the HMAC-SHA256 key that names the keys tokens are stored under.
pub const NAMING_INFO: &[u8] = b"callback-dispatcher token_cache v1 key-naming";

/// The 32-byte key for `info`, derived from `encryption_key` with HKDF-SHA256.
fn derive(encryption_key: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, encryption_key)
        .expand(info, out.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// How much longer a stored token may be used: what is left of its Redis TTL, but never past
/// its own expiry, less the refresh margin a freshly fetched token would keep. `None` when
/// it may not be used at all. Pure.
fn usable_for(
    ttl: Duration,
    expires_at: SystemTime,
    margin: Duration,
    now: SystemTime,
) -> Option<Duration> {
    let left = expires_at.duration_since(now).ok()?;
    Some(ttl.min(reuse_for(left, margin))).filter(|d| !d.is_zero())
}

/// No Redis call waits longer than this.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long calls that time out are tried again before a replica that knows of no other
/// fetching replica fetches on its own (at most the auth timeout).
const SLOW_PATIENCE: Duration = Duration::from_secs(1);
/// How often a replica waiting for another's fetch looks for its token.
const POLL: Duration = Duration::from_millis(50);

const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct SharedTokens {
    redis: ConnectionManager,
    key_prefix: String,
    cipher: Aes256Gcm,
    /// Keys the digest in key names.
    naming: Hmac<Sha256>,
    errors: prometheus::IntCounter,
    compare_and_delete: redis::Script,
}

impl std::fmt::Debug for SharedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTokens")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    scheme: String,
    token: String,
    expires_at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("a stored token does not decrypt (another encryption key?)")]
    Undecryptable,
}

impl Failure {
    /// No answer in time (as opposed to a refusal or an error).
    fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Redis(e) => e.is_timeout(),
            Self::Undecryptable => false,
        }
    }
}

impl SharedTokens {
    /// Connects lazily: nothing here waits for Redis. Must be called inside the runtime.
    pub fn new(
        redis_url: &SecretString,
        key_prefix: &str,
        encryption_key: &SecretSlice<u8>,
        errors: prometheus::IntCounter,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(redis_url.expose_secret())?;
        let manager = client.get_connection_manager_lazy(
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1)),
        )?;
        let key = encryption_key.expose_secret();
        let cipher_key = derive(key, CIPHER_INFO);
        let naming_key = derive(key, NAMING_INFO);
        Ok(Self {
            redis: manager,
            key_prefix: key_prefix.to_owned(),
            cipher: Aes256Gcm::new_from_slice(cipher_key.as_ref()).expect("32 bytes"),
            naming: <Hmac<Sha256> as KeyInit>::new_from_slice(naming_key.as_ref())
                .expect("HMAC takes any key"),
            errors,
            compare_and_delete: redis::Script::new(COMPARE_AND_DELETE),
        })
    }

    /// The key a profile's token lives under.
    fn key(&self, src: &Source<'_>) -> String {
        let mut mac = self.naming.clone();
        mac.update(src.profile.as_bytes());
        mac.update(&[0]);
        mac.update(&src.oauth.fingerprint.0);
        let digest = mac.finalize().into_bytes();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:token:{}:{hex}", self.key_prefix, src.profile)
    }

    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Failure> {
        let mut conn = self.redis.clone();
        match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async(&mut conn)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::Timeout(CALL_TIMEOUT)),
        }
    }

    async fn script(&self, key: &str, arg: &[u8]) -> Result<i64, Failure> {
        let mut conn = self.redis.clone();
        let mut invocation = self.compare_and_delete.key(key);
        invocation.arg(arg);
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(Failure::Timeout(CALL_TIMEOUT)),
        }
    }

    fn failed(&self, src: &Source<'_>, what: &str, e: &Failure) {
        self.errors.inc();
        tracing::warn!(profile = src.profile, error = %e, "shared token cache unavailable ({what}); this replica fetches its own token");
    }

    fn seal(&self, key: &str, token: &Token) -> Vec<u8> {
        let stored = Stored {
            scheme: token.scheme.clone(),
            token: token.value.expose_secret().to_owned(),
            expires_at_ms: token
                .expires_at
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u64,
        };
        let plain = serde_json::to_vec(&stored).expect("serialisable");
        let nonce_bytes: [u8; 12] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: &plain,
                    aad: key.as_bytes(),
                },
            )
            .expect("AES-GCM encrypts any length used here");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The token in `blob`, usable for what is left of `ttl` but never past its expiry (see
    /// [`usable_for`]); `None` when it has expired, whatever the TTL says.
    fn open(
        &self,
        key: &str,
        blob: &[u8],
        ttl: Duration,
        margin: Duration,
    ) -> Result<Option<Token>, Failure> {
        if blob.len() < 12 {
            return Err(Failure::Undecryptable);
        }
        let (nonce, sealed) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().expect("12 bytes");
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| Failure::Undecryptable)?;
        let stored: Stored = serde_json::from_slice(&plain).map_err(|_| Failure::Undecryptable)?;
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_millis(stored.expires_at_ms))
            .ok_or(Failure::Undecryptable)?;
        let Some(usable) = usable_for(ttl, expires_at, margin, SystemTime::now()) else {
            return Ok(None);
        };
        let mut token = Token::new(
            stored.scheme,
            SecretString::from(stored.token),
            expires_at,
            Instant::now() + usable,
        )
        .ok_or(Failure::Undecryptable)?;
        token.stored = Some(blob.to_vec());
        Ok(Some(token))
    }

    /// The shared token, if there is one that is still usable (`margin`: the profile's
    /// `refresh_before_expiry`).
    async fn read(&self, key: &str, margin: Duration) -> Result<Option<Token>, Failure> {
        let (blob, ttl_ms): (Option<Vec<u8>>, i64) = {
            let mut pipe = redis::pipe();
            pipe.get(key).pttl(key);
            let mut conn = self.redis.clone();
            match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut conn)).await {
                Ok(r) => r?,
                Err(_) => return Err(Failure::Timeout(CALL_TIMEOUT)),
            }
        };
        match blob {
            Some(blob) if ttl_ms > 0 => {
                self.open(key, &blob, Duration::from_millis(ttl_ms as u64), margin)
            }
            _ => Ok(None),
        }
    }

    /// Store a token this replica fetched, for its reuse window. Failure only costs sharing.
    async fn write(&self, src: &Source<'_>, key: &str, token: &mut Token) {
        let ttl = token.reuse_until.saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return;
        }
        let blob = self.seal(key, token);
        let cmd = redis::cmd("SET")
            .arg(key)
            .arg(&blob)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .to_owned();
        match self.call::<()>(&cmd).await {
            Ok(()) => token.stored = Some(blob),
            Err(e) => self.failed(src, "storing a token", &e),
        }
    }

    /// A token for `src`: the shared one, or one fetched by exactly one replica. The flag
    /// says whether it came from the shared cache (no auth request by this replica).
    pub async fn token(&self, src: &Source<'_>) -> Result<(Token, bool), AuthError> {
        let key = self.key(src);
        let lock = format!("{key}:lock");
        let fence = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + src.timeout;
        // Another replica holds the fetch lock: a slow call while waiting for its token is
        // waited out (a busy machine), not a reason to ask the auth server a second time.
        let mut others_fetching = false;
        // Slow calls are tried again for a short while before this replica goes on its own.
        let patience = Instant::now() + src.timeout.min(SLOW_PATIENCE);
        loop {
            match self.read(&key, src.oauth.refresh_before_expiry).await {
                Ok(Some(token)) => return Ok((token, true)),
                Ok(None) => {}
                Err(e)
                    if e.is_timeout()
                        && Instant::now() < deadline
                        && (others_fetching || Instant::now() < patience) =>
                {
                    tracing::debug!(profile = src.profile, error = %e, "shared token cache slow; reading again");
                    continue;
                }
                Err(e) => {
                    self.failed(src, "reading", &e);
                    return fetch(src).await.map(|t| (t, false));
                }
            }
            let take = redis::cmd("SET")
                .arg(&lock)
                .arg(&fence)
                .arg("NX")
                .arg("PX")
                .arg((src.timeout + Duration::from_secs(1)).as_millis() as u64)
                .to_owned();
            match self.call::<Option<String>>(&take).await {
                Ok(Some(_)) => {
                    let result = fetch(src).await;
                    let result = match result {
                        Ok(mut token) => {
                            self.write(src, &key, &mut token).await;
                            Ok((token, false))
                        }
                        Err(e) => Err(e),
                    };
                    if let Err(e) = self.script(&lock, fence.as_bytes()).await {
                        self.failed(src, "releasing the fetch lock", &e);
                    }
                    return result;
                }
                Ok(None) if Instant::now() < deadline => {
                    others_fetching = true;
                    tokio::time::sleep(POLL).await;
                }
                Err(e)
                    if e.is_timeout()
                        && Instant::now() < deadline
                        && (others_fetching || Instant::now() < patience) =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Ok(None) => {
                    tracing::warn!(
                        profile = src.profile,
                        waited_ms = src.timeout.as_millis() as u64,
                        "another replica's token fetch did not finish in time; fetching here"
                    );
                    let mut token = fetch(src).await?;
                    self.write(src, &key, &mut token).await;
                    return Ok((token, false));
                }
                Err(e) => {
                    self.failed(src, "taking the fetch lock", &e);
                    return fetch(src).await.map(|t| (t, false));
                }
            }
        }
    }

    /// After a 401: delete the shared token if it is still the rejected one.
    pub async fn reject(&self, src: &Source<'_>, stored: &[u8]) {
        let key = self.key(src);
        if let Err(e) = self.script(&key, stored).await {
            self.failed(src, "dropping a rejected token", &e);
        }
    }
}

#[cfg(test)]
mod tests;
