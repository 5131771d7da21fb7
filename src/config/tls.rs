//! A profile's `tls` block: the client certificate presented to its callback and auth
//! servers (mutual TLS), and an extra trust root for them. Each value is PEM text or the path
//! of a PEM file. Everything is parsed and tried at load, so a bad certificate or key is a
//! configuration error naming its key, never showing the key itself.

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde_saphyr::Location;
use sha2::{Digest, Sha256};

use super::issues::Issues;
use super::raw::{RawTls, S};
use crate::auth::oauth2::Fingerprint;

/// Validated TLS material for one profile. `Debug` shows only whether each part is present.
pub struct Tls {
    /// The certificate chain followed by the private key, as `reqwest::Identity` reads it.
    identity_pem: Option<SecretSlice<u8>>,
    ca_pem: Option<Vec<u8>>,
    /// Equal for equal settings: profiles that share it share one HTTP client.
    pub fingerprint: Fingerprint,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("client_certificate", &self.identity_pem.is_some())
            .field("ca", &self.ca_pem.is_some())
            .finish()
    }
}

impl Tls {
    pub fn identity(&self) -> Option<reqwest::Identity> {
        let pem = self.identity_pem.as_ref()?;
        Some(reqwest::Identity::from_pem(pem.expose_secret()).expect("checked at load"))
    }

    pub fn roots(&self) -> Vec<reqwest::Certificate> {
        self.ca_pem.as_ref().map_or_else(Vec::new, |pem| {
            reqwest::Certificate::from_pem_bundle(pem).expect("checked at load")
        })
    }

    /// The client certificate chain and its key, for a TLS connection made by hand (through
    /// a proxy's tunnel, SPEC section 17).
    pub fn rustls_identity(
        &self,
    ) -> Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )> {
        use rustls::pki_types::pem::PemObject;
        let pem = self.identity_pem.as_ref()?.expose_secret();
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).ok()?;
        Some((chain, key))
    }

    /// The extra trust roots, for a TLS connection made by hand.
    pub fn rustls_roots(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        self.ca_pem.as_ref().map_or_else(Vec::new, |pem| {
            rustls::pki_types::CertificateDer::pem_slice_iter(pem)
                .filter_map(Result::ok)
                .collect()
        })
    }

    /// A client with this material, to find at load what only building one reveals.
    fn try_client(&self) -> Result<(), String> {
        let mut b = reqwest::Client::builder().tls_certs_merge(self.roots());
        if let Some(id) = self.identity() {
            b = b.identity(id);
        }
        b.build().map(|_| ()).map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        })
    }
}

/// PEM text as written, or read from the file the value names. `None` with an issue added;
/// a `secret` value is never shown in it.
pub(crate) fn pem_or_file(
    issues: &mut Issues,
    path: &str,
    at: Option<&Location>,
    value: &str,
    secret: bool,
) -> Option<Vec<u8>> {
    if value.contains("-----BEGIN") {
        return Some(value.as_bytes().to_vec());
    }
    match std::fs::read(value.trim()) {
        Ok(bytes) => Some(bytes),
        Err(e) if secret => {
            issues.add(
                path,
                at,
                format!(
                    "is neither PEM text nor a readable file ({}); the value is not shown",
                    e.kind()
                ),
            );
            None
        }
        Err(e) => {
            issues.add(
                path,
                at,
                format!(
                    "is neither PEM text nor a readable file: {:?}: {e}",
                    value.trim()
                ),
            );
            None
        }
    }
}

pub(crate) fn validate(issues: &mut Issues, path: &str, raw: &S<RawTls>) -> Option<Tls> {
    let at = Some(&raw.referenced);
    let t = &raw.value;
    let before = issues.count();
    let cert = t.client_cert.as_ref().and_then(|c| {
        pem_or_file(
            issues,
            &format!("{path}.client_cert"),
            Some(&c.referenced),
            &c.value,
            false,
        )
    });
    let key: Option<SecretSlice<u8>> = t.client_key.as_ref().and_then(|k: &_| {
        let k: &SecretString = &k.0;
        pem_or_file(
            issues,
            &format!("{path}.client_key"),
            at,
            k.expose_secret(),
            true,
        )
        .map(SecretSlice::from)
    });
    let ca = t.ca.as_ref().and_then(|c| {
        pem_or_file(
            issues,
            &format!("{path}.ca"),
            Some(&c.referenced),
            &c.value,
            false,
        )
    });
    match (&t.client_cert, &t.client_key) {
        (Some(_), None) => issues.add(
            format!("{path}.client_key"),
            at,
            "is required with client_cert",
        ),
        (None, Some(_)) => issues.add(
            format!("{path}.client_cert"),
            at,
            "is required with client_key",
        ),
        (None, None) if t.ca.is_none() => issues.add(
            path.to_owned(),
            at,
            "sets nothing: give client_cert and client_key, or ca, or leave tls out",
        ),
        _ => {}
    }
    if let Some(cert) = &cert
        && reqwest::Certificate::from_pem_bundle(cert).map_or(true, |c| c.is_empty())
    {
        issues.add(
            format!("{path}.client_cert"),
            at,
            "holds no PEM certificate",
        );
    }
    if let Some(ca) = &ca
        && reqwest::Certificate::from_pem_bundle(ca).map_or(true, |c| c.is_empty())
    {
        issues.add(format!("{path}.ca"), at, "holds no PEM certificate");
    }
    let identity_pem = match (&cert, &key) {
        (Some(cert), Some(key)) => {
            let mut both = cert.clone();
            both.push(b'\n');
            both.extend_from_slice(key.expose_secret());
            if !key.expose_secret().windows(11).any(|w| w == b"PRIVATE KEY")
                || reqwest::Identity::from_pem(&both).is_err()
            {
                issues.add(
                    format!("{path}.client_key"),
                    at,
                    "is not a PEM private key (PKCS#8, RSA or EC); the value is not shown",
                );
            }
            Some(SecretSlice::from(both))
        }
        _ => None,
    };
    if issues.count() > before {
        return None;
    }
    let mut hash = Sha256::new();
    for part in [
        identity_pem.as_ref().map(|p| p.expose_secret()),
        ca.as_deref(),
    ] {
        hash.update(part.unwrap_or_default());
        hash.update([0]);
    }
    let tls = Tls {
        identity_pem,
        ca_pem: ca,
        fingerprint: Fingerprint(hash.finalize().into()),
    };
    if let Err(e) = tls.try_client() {
        issues.add(
            path.to_owned(),
            at,
            format!("the certificate, key and CA do not make a TLS client: {e}"),
        );
        return None;
    }
    Some(tls)
}
