//! The YAML file as serde sees it. These structs never leave the config module: each
//! section's validation turns them into runtime types once, collecting every problem.
//!
//! Values that need semantic checks are `Spanned`, so an error can point at line and column.
//! Secrets are [`RawSecret`]: whatever scalar the YAML holds, it is wrapped at once and no
//! parse error ever quotes it. An `auth` block is read as a map of keys ([`RawAuth`]) because
//! which keys belong to it depends on its `type`, which the validation of each type decides.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
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
    pub tracing: RawTracing,
    pub token_cache: Option<S<RawTokenCache>>,
    pub cluster: Option<S<RawCluster>>,
    pub receipts: Option<S<RawReceipts>>,
    pub profiles: Option<Vec<S<RawProfile>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAmqp {
    pub url: Option<RawSecret>,
    pub queue: Option<S<String>>,
    pub exchange: Option<S<String>>,
    pub prefetch: Option<S<u32>>,
    pub partitions: Option<S<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDelivery {
    pub concurrency: Option<S<u32>>,
    pub per_profile_concurrency: Option<S<u32>>,
    pub allow_networks: Vec<S<String>>,
    pub circuit_breaker: Option<S<RawBreaker>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub max_body_bytes: Option<S<u64>>,
    /// May carry credentials.
    pub proxy: Option<RawSecret>,
    pub no_proxy: Vec<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawBreaker {
    pub failures: Option<S<u32>>,
    pub open_for: Option<S<String>>,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTracing {
    pub otlp_endpoint: Option<S<String>>,
    pub service_name: Option<S<String>>,
    pub sample_ratio: Option<S<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTokenCache {
    /// May carry a password.
    pub redis: Option<RawSecret>,
    pub key_prefix: Option<S<String>>,
    pub encryption_key: Option<RawSecret>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawReceipts {
    pub exchange: Option<S<String>>,
    pub log: Option<S<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCluster {
    /// May carry a password.
    pub redis: Option<RawSecret>,
    pub key_prefix: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub id: Option<S<String>>,
    pub url: Option<S<String>>,
    pub method: Option<S<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, ScalarText>,
    pub timeout: Option<S<String>>,
    pub concurrency: Option<S<u32>>,
    pub rate_limit: Option<S<String>>,
    pub circuit_breaker: Option<S<RawBreaker>>,
    pub traceparent: Option<S<bool>>,
    pub tls: Option<S<RawTls>>,
    /// May carry credentials.
    pub proxy: Option<RawSecret>,
    pub signing: Option<S<RawSigning>>,
    pub auth: Option<S<RawAuth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSigning {
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTls {
    pub client_cert: Option<S<String>>,
    pub client_key: Option<RawSecret>,
    pub ca: Option<S<String>>,
}

/// An `auth` block: every key with its value and where it stands.
pub(crate) type RawAuth = BTreeMap<String, S<RawValue>>;

/// One value of an `auth` block. Every scalar is held as a secret until the validation of
/// its key decides it is not one.
pub(crate) enum RawValue {
    Scalar(SecretString),
    Map(BTreeMap<String, String>),
    /// A list or null: no key takes one; the name is for the message.
    Other(&'static str),
}

/// A scalar of any YAML type, as text (`X-Count: 5` is the header value "5").
pub(crate) struct ScalarText(pub String);

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(ScalarText)
    }
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

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value (its text is not shown: it may be a secret)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawValue, E> {
                Ok(RawValue::Scalar(SecretString::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawValue, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawValue, E> {
                Ok(RawValue::Other("null"))
            }
            fn visit_none<E: de::Error>(self) -> Result<RawValue, E> {
                Ok(RawValue::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(RawValue::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, ScalarText>()? {
                    out.insert(k, v.0);
                }
                Ok(RawValue::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}
