//! Certificates made in the test: a CA, a server certificate for 127.0.0.1 and a client
//! certificate, and a server configuration that requires a client certificate.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made for one test.
pub struct Pki {
    pub ca_pem: String,
    pub server: (String, String),
    pub client: (String, String),
    pub ca_der: Vec<u8>,
}

pub fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "callback-dispatcher test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        server: leaf(vec!["127.0.0.1".into(), "localhost".into()]),
        client: leaf(vec!["callback-dispatcher".into()]),
    }
}

/// A TLS server config for `pki.server` that requires a client certificate from the CA.
pub fn mtls_config(pki: &Pki) -> rustls::ServerConfig {
    mtls_config_with(pki, rustls::DEFAULT_VERSIONS)
}

/// [`mtls_config`] speaking only TLS 1.2: a client without a certificate is refused inside
/// the handshake. Under TLS 1.3 the server refuses it only after the client has finished its
/// side of the handshake, so the client sees either the server's alert or the connection
/// closing before its request went out, whichever comes first.
pub fn mtls_config_tls12(pki: &Pki) -> rustls::ServerConfig {
    mtls_config_with(pki, &[&rustls::version::TLS12])
}

fn mtls_config_with(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pki.ca_der.clone())).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server.0.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap(),
        )
        .unwrap()
}
