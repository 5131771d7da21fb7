//! The YAML file as serde sees it. These structs never leave the config module: `validate`
//! turns them into the runtime types once, collecting every problem it finds.
//!
//! Values that need semantic checks are `Spanned`, so an error can point at line and column.
//! Secrets are [`RawSecret`]: whatever scalar the YAML holds, it is wrapped at once and no
//! parse error ever quotes it.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub amqp: RawAmqp,
    pub delivery: RawDelivery,
    pub retry: RawRetry,
    pub metrics: RawMetrics,
    pub log: RawLog,
    pub profiles: Option<Vec<S<RawProfile>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAmqp {
    pub url: Option<RawSecret>,
    pub queue: Option<S<String>>,
    pub exchange: Option<S<String>>,
    pub prefetch: Option<S<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDelivery {
    pub concurrency: Option<S<u32>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub max_body_bytes: Option<S<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRetry {
    pub max_attempts: Option<S<u32>>,
    pub initial_delay: Option<S<String>>,
    pub multiplier: Option<S<f64>>,
    pub max_delay: Option<S<String>>,
    pub jitter: Option<S<f64>>,
    pub max_age: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    pub listen: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub format: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub id: Option<S<String>>,
    pub url: Option<S<String>>,
    pub method: Option<S<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub timeout: Option<S<String>>,
    pub signing: Option<RawSigning>,
    pub auth: Option<S<RawAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSigning {
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
}

/// One struct for every auth type: which keys a type needs is checked in `validate`, so a
/// profile with a missing key and a stray one gets both errors at once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    #[serde(rename = "type")]
    pub kind: Option<S<String>>,
    // oauth2
    pub grant_type: Option<S<String>>,
    pub method: Option<S<String>>,
    pub url: Option<S<String>>,
    pub client_id: Option<S<String>>,
    pub client_secret: Option<RawSecret>,
    pub client_auth: Option<S<String>>,
    pub scope: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub token_field_path: Option<S<String>>,
    pub expiration_field_path: Option<S<String>>,
    pub expiration_format: Option<S<String>>,
    pub token_type_field_path: Option<S<String>>,
    pub auth_algorithm: Option<S<String>>,
    pub refresh_before_expiry: Option<S<String>>,
    // basic
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    // bearer
    pub token: Option<RawSecret>,
    // api_key
    pub header: Option<S<String>>,
    pub value: Option<RawSecret>,
}

/// A secret as it comes out of the YAML: any scalar, wrapped at once. Its errors never
/// quote the value.
pub(crate) struct RawSecret(pub SecretString);

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string (a secret; its value is not shown)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret(SecretString::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSecret, E> {
                Ok(RawSecret(SecretString::from(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSecret, E> {
                Ok(RawSecret(SecretString::from(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawSecret, E> {
                Ok(RawSecret(SecretString::from(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawSecret, E> {
                Ok(RawSecret(SecretString::from(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}
