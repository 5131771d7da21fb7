//! Enterprise endpoint security against real servers on 127.0.0.1: private_key_jwt checked
//! by an auth server that verifies the assertion independently, mutual TLS with certificates
//! made here, the network guard, ed25519 (`v1a`) signatures and the Basic header as a real
//! authorization server implementation (Authlib) reads it.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use rcgen::KeyPair;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
    f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

/// Verify a compact JWS with `ring`, independently of the crate that signed it; the claims.
fn verify_jws(token: &str, public_raw: &[u8]) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, c, s] = parts[..] else {
        return Err("not three segments".into());
    };
    let decode = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|e| e.to_string());
    let header: Value = serde_json::from_slice(&decode(h)?).map_err(|e| e.to_string())?;
    let claims: Value = serde_json::from_slice(&decode(c)?).map_err(|e| e.to_string())?;
    let alg: &dyn ring::signature::VerificationAlgorithm = match header["alg"].as_str() {
        Some("RS256") => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &ring::signature::RSA_PSS_2048_8192_SHA256,
        Some("ES256") => &ring::signature::ECDSA_P256_SHA256_FIXED,
        other => return Err(format!("alg {other:?}")),
    };
    ring::signature::UnparsedPublicKey::new(alg, public_raw)
        .verify(format!("{h}.{c}").as_bytes(), &decode(s)?)
        .map_err(|_| "bad signature".to_string())?;
    Ok((header, claims))
}

/// An auth server that accepts only valid, fresh, never-seen client assertions for
/// `client_id` signed by the key whose public half is `public_raw`.
async fn assertion_server(
    client_id: &'static str,
    public_raw: Vec<u8>,
    audience: Option<String>,
) -> Server {
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    Server::start(move |n, r| {
        let f = form(&r.body);
        let refuse = |why: &str| {
            Reply::json(
                401,
                json!({"error": "invalid_client", "error_description": why}),
            )
        };
        if field(&f, "client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            || field(&f, "client_id") != Some(client_id)
            || field(&f, "client_secret").is_some()
            || field(&f, "grant_type") != Some("client_credentials")
        {
            return refuse("fields");
        }
        let Ok((_, claims)) = verify_jws(field(&f, "client_assertion").unwrap_or(""), &public_raw)
        else {
            return refuse("signature");
        };
        let want_aud = audience
            .clone()
            .unwrap_or_else(|| format!("http://{}/token", r.headers["host"].to_str().unwrap()));
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap_or(0),
            claims["exp"].as_u64().unwrap_or(0),
        );
        if claims["iss"] != client_id
            || claims["sub"] != client_id
            || claims["aud"] != want_aud.as_str()
            || exp <= iat
            || exp - iat > 300
            || iat.abs_diff(now()) > 60
        {
            return refuse("claims");
        }
        let jti = claims["jti"].as_str().unwrap_or("").to_owned();
        if jti.is_empty() || !seen.lock().unwrap().insert(jti) {
            return refuse("replayed jti");
        }
        Reply::json(
            200,
            json!({"access_token": format!("pkj-{n}"), "expires_in": 3600}),
        )
    })
    .await
}

/// The errors (and their `Debug`) of a configuration that must not load.
fn config_error(file: &ConfigFile) -> String {
    let err = callback_dispatcher::config::Config::from_yaml(
        &file.to_yaml(),
        std::path::Path::new("t.yaml"),
        |_| None,
    )
    .expect_err("the configuration is refused");
    format!("{err} {err:?}")
}

fn oauth_profile(id: &str, callback: &str, auth: OAuth2) -> Profile {
    Profile::new(id, callback).auth(auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_with_rs256_ps256_and_es256_assertions() {
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let rs = assertion_server("rs-client", rsa.public_key_raw().to_vec(), None).await;
    let ps = assertion_server(
        "ps-client",
        rsa.public_key_raw().to_vec(),
        Some("https://login.example/".into()),
    )
    .await;
    let es = assertion_server("es-client", ec.public_key_raw().to_vec(), None).await;
    let dir = tempfile::tempdir().unwrap();
    let rsa_path = dir.path().join("rsa.pem");
    std::fs::write(&rsa_path, rsa.serialize_pem()).unwrap();
    let profiles = [
        // RSA key from a file, algorithm from the key type (RS256).
        oauth_profile(
            "rs",
            &receiver.url("/"),
            OAuth2 {
                key_id: Some("k1".into()),
                ..OAuth2::private_key_jwt(
                    &rs.url("/token"),
                    "rs-client",
                    &rsa_path.display().to_string(),
                )
            },
        ),
        // The same key as PEM text, PS256, a custom audience.
        oauth_profile(
            "ps",
            &receiver.url("/"),
            OAuth2 {
                assertion_algorithm: Some("PS256".into()),
                audience: Some("https://login.example/".into()),
                ..OAuth2::private_key_jwt(&ps.url("/token"), "ps-client", &rsa.serialize_pem())
            },
        ),
        // An EC P-256 key: ES256.
        oauth_profile(
            "es",
            &receiver.url("/"),
            OAuth2::private_key_jwt(&es.url("/token"), "es-client", &ec.serialize_pem()),
        ),
    ];
    let env = Env::new("pkjwt");
    let worker = env
        .start(env.config(&env.file(Retry::attempts(1), profiles)))
        .await;
    for p in ["rs", "ps", "es"] {
        env.publish(Some(p), &format!("{p}-1"), b"{}").await;
    }
    receiver.wait_for(3, LIMIT).await;
    let mut auth: Vec<String> = receiver
        .all()
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    auth.sort();
    assert_eq!(
        auth,
        vec!["Bearer pkj-0"; 3],
        "each auth server accepted its assertion"
    );
    // The kid and alg the worker put in the headers.
    let header = |s: &Server| {
        let f = form(&s.all()[0].body);
        let a = field(&f, "client_assertion").unwrap().to_owned();
        serde_json::from_slice::<Value>(
            &URL_SAFE_NO_PAD
                .decode(a.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        (header(&rs)["alg"].as_str(), header(&rs)["kid"].as_str()),
        (Some("RS256"), Some("k1"))
    );
    assert_eq!(header(&ps)["alg"], "PS256");
    assert_eq!(header(&es)["alg"], "ES256");
    // A replayed assertion is refused: the server really checks jti, so the worker's were fresh.
    let replay = reqwest::Client::new()
        .post(es.url("/token"))
        .body(es.all()[0].body.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_assertion_for_every_token_request() {
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let auth = assertion_server("c", ec.public_key_raw().to_vec(), None).await;
    // The first token is refused by the callback URL: the worker fetches another one.
    let receiver = Server::start(|_, r| {
        Reply::status(
            if r.header("authorization").as_deref() == Some("Bearer pkj-0") {
                401
            } else {
                200
            },
        )
    })
    .await;
    let env = Env::new("pkjwt2");
    let a = OAuth2::private_key_jwt(&auth.url("/token"), "c", &ec.serialize_pem());
    let worker = env
        .start(env.config(&env.file(
            Retry::attempts(1),
            [oauth_profile("p", &receiver.url("/"), a)],
        )))
        .await;
    env.publish(Some("p"), "p-1", b"{}").await;
    worker.wait_delivered("p", 1).await;
    assert_eq!(auth.count(), 2, "two token requests");
    let jtis: HashSet<String> = auth
        .all()
        .iter()
        .map(|r| {
            let f = form(&r.body);
            let a = field(&f, "client_assertion").unwrap().to_owned();
            verify_jws(&a, ec.public_key_raw()).unwrap().1["jti"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 2, "each with its own jti");
    worker.stop().await.unwrap();
}

#[test]
fn a_private_key_that_cannot_sign_is_a_config_error_that_never_shows_it() {
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = ec.serialize_pem();
    let secret_line = pem.lines().nth(1).unwrap().to_owned();
    for (key, algorithm, want) in [
        (
            pem.clone(),
            "RS256",
            "is an EC key, which cannot sign RS256 assertions",
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n".to_owned(),
            "ES256",
            "is not a PEM private key",
        ),
        (ec.public_key_pem(), "ES256", "is not a PEM private key"),
    ] {
        let file =
            ConfigFile::with_profiles([Profile::new("a", "https://hooks.example/").auth(OAuth2 {
                assertion_algorithm: Some(algorithm.into()),
                ..OAuth2::private_key_jwt("https://login.example/token", "c", &key)
            })]);
        let shown = config_error(&file);
        assert!(shown.contains("profiles[0].auth.private_key"), "{shown}");
        assert!(shown.contains(want), "{shown}");
        assert!(
            !shown.contains(&secret_line) && !shown.contains("bm90IGEga2V5"),
            "{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_the_callback_and_the_auth_server() {
    let pki = pki();
    let receiver = Server::start_tls(mtls_config(&pki), |_, _| Reply::status(200)).await;
    // The profile without a client certificate calls a TLS 1.2 receiver, which refuses it
    // inside the handshake; under TLS 1.3 the refusal races the request (see
    // `mtls_config_tls12`).
    let refusing = Server::start_tls(mtls_config_tls12(&pki), |_, _| Reply::status(200)).await;
    let auth = Server::start_tls(mtls_config(&pki), |_, _| {
        Reply::json(
            200,
            json!({"access_token": "mtls-token", "expires_in": 600}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert, &pki.client.0).unwrap();
    std::fs::write(&key, &pki.client.1).unwrap();
    // Client certificate and key as paths, the CA as PEM text.
    let with_client = Tls {
        client_cert: Some(cert.display().to_string()),
        client_key: Some(key.display().to_string()),
        ca: Some(pki.ca_pem.clone()),
    };
    let without_client = Tls {
        ca: Some(pki.ca_pem.clone()),
        ..Tls::default()
    };
    let profiles = [
        oauth_profile(
            "mtls",
            &receiver.url("/hook"),
            OAuth2::new(&auth.url("/token"), "c", "s"),
        )
        .tls(with_client),
        Profile::new("nocert", &refusing.url("/hook")).tls(without_client),
        // The receiver's certificate is from a CA this profile does not trust.
        Profile::new("untrusted", &receiver.url("/hook")),
    ];
    let env = Env::new("mtls");
    let worker = env
        .start(env.config(&env.file(Retry::attempts(1), profiles)))
        .await;
    env.publish(Some("mtls"), "mtls-1", b"{}").await;
    env.publish(Some("nocert"), "nocert-1", b"{}").await;
    env.publish(Some("untrusted"), "untrusted-1", b"{}").await;
    worker.wait_delivered("mtls", 1).await;
    let dead = env.wait_dead(2, LIMIT).await;
    let r = &receiver.all()[0];
    assert_eq!(
        r.header("authorization").as_deref(),
        Some("Bearer mtls-token")
    );
    assert_eq!(
        auth.count(),
        1,
        "the auth server also got the client certificate"
    );
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        refusing.count(),
        0,
        "the request without a certificate never got through"
    );
    for d in &dead {
        let error = header_text(d, "x-last-error").unwrap();
        assert!(error.contains("TLS handshake failed"), "{error}");
    }
    let metrics = worker.metrics().await;
    for profile in ["nocert", "untrusted"] {
        assert_eq!(metrics.attempts(profile, "connect_error"), 1.0, "{profile}");
    }
    worker.stop().await.unwrap();
}

#[test]
fn bad_tls_material_is_a_config_error_with_the_key_path_only() {
    let pki = pki();
    let marker = pki.client.1.lines().nth(1).unwrap().to_owned();
    let broken_key = pki.client.1.replace(&marker, "AAAA");
    for (cert, key, want_path, want) in [
        (
            pki.client.0.clone(),
            broken_key,
            "profiles[0].tls",
            "do not make a TLS client",
        ),
        (
            pki.client.0.clone(),
            "/no/such/key.pem".to_owned(),
            "profiles[0].tls.client_key",
            "neither PEM text nor a readable file",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            pki.client.1.clone(),
            "profiles[0].tls",
            "do not make a TLS client",
        ),
        // A certificate with another key than its own.
        (
            pki.client.0.clone(),
            pki.server.1.clone(),
            "profiles[0].tls",
            "do not make a TLS client",
        ),
    ] {
        let file =
            ConfigFile::with_profiles([Profile::new("a", "https://hooks.example/").tls(Tls {
                client_cert: Some(cert),
                client_key: Some(key),
                ca: None,
            })]);
        let shown = config_error(&file);
        assert!(shown.contains(want_path) && shown.contains(want), "{shown}");
        assert!(
            !shown.contains(&marker),
            "the key's content is never shown: {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_resolving_to_loopback_is_refused_until_allowed() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("guard");
    let url = format!("http://localhost:{}/", receiver.addr.port());
    let allowed = env.file(Retry::attempts(1), [Profile::new("g", &url)]);
    let mut blocked = allowed.clone();
    blocked.delivery.allow_networks = None; // the default: nothing private allowed
    let worker = env.start(env.config(&blocked)).await;
    env.publish(Some("g"), "g-1", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    assert_eq!(
        header_text(&dead[0], "x-dead-reason").as_deref(),
        Some("blocked_destination")
    );
    let error = header_text(&dead[0], "x-last-error").unwrap();
    assert!(
        error.contains("is loopback") && error.contains("allow_networks"),
        "{error}"
    );
    assert_eq!(header_int(&dead[0], "x-attempt"), Some(1));
    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    worker.stop().await.unwrap();

    let worker = env.start(env.config(&allowed)).await;
    env.publish(Some("g"), "g-2", b"{}").await;
    worker.wait_delivered("g", 1).await;
    assert_eq!(receiver.count(), 1);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_auth_url_is_an_auth_failure_that_says_why() {
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("guardauth");
    // Only 127.0.0.1 is allowed: the auth URL's 127.0.0.2 stays blocked.
    let mut file = env.file(
        Retry::attempts(1),
        [oauth_profile(
            "a",
            &receiver.url("/"),
            OAuth2::new("http://127.0.0.2:9/token", "c", "s"),
        )],
    );
    file.delivery.allow_networks = Some(vec!["127.0.0.1/32".into()]);
    let worker = env.start(env.config(&file)).await;
    env.publish(Some("a"), "a-1", b"{}").await;
    let dead = env.wait_dead(1, LIMIT).await;
    let error = header_text(&dead[0], "x-last-error").unwrap();
    assert!(
        error.starts_with("auth_failed: auth url refused: 127.0.0.2 is loopback"),
        "{error}"
    );
    assert_eq!(worker.metrics().await.attempts("a", "auth_failed"), 1.0);
    assert_eq!(receiver.count(), 0);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v1a_signatures_side_by_side_verify_independently() {
    let seed = [42u8; 32];
    let whsk = format!("whsk_{}", STANDARD.encode(seed));
    let hmac = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let receiver = Server::start(|_, _| Reply::status(200)).await;
    let env = Env::new("ed25519");
    let file = env.file(
        Retry::attempts(1),
        [Profile::new("ed", &receiver.url("/")).signing([hmac, whsk.as_str()])],
    );
    let worker = env.start(env.config(&file)).await;
    env.publish(Some("ed"), "ed-1", br#"{"a":1}"#).await;
    let r = &receiver.wait_for(1, LIMIT).await[0];
    assert!(verify_signature(hmac, r), "v1 verifies");
    // The public key as the customer gets it: `signing-key --profile ed`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, file.to_yaml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callback-dispatcher"))
        .args(["signing-key", "--profile", "ed", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whpk = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(whpk.starts_with("whpk_"), "{whpk}");
    assert!(
        !whpk.contains(&STANDARD.encode(seed)),
        "the seed is never printed"
    );
    let public = STANDARD
        .decode(whpk.strip_prefix("whpk_").unwrap())
        .unwrap();
    let content = format!(
        "{}.{}.{}",
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        String::from_utf8_lossy(&r.body)
    );
    let v1a = r
        .header("webhook-signature")
        .unwrap()
        .split(' ')
        .find_map(|s| s.strip_prefix("v1a,").map(str::to_owned))
        .expect("a v1a entry beside v1");
    let sig = STANDARD.decode(v1a).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
        .verify(content.as_bytes(), &sig)
        .expect("v1a verifies with the whpk_ key");
    worker.stop().await.unwrap();
}

/// Authlib's token endpoint, as a child process; killed when dropped.
struct Authlib {
    child: std::process::Child,
    port: u16,
}

impl Authlib {
    fn start(client_id: &str, secret: &str) -> Authlib {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/authlib_token_server.py");
        let mut child = std::process::Command::new("python3")
            .args([script, client_id, secret])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs (scripts/ensure-test-tools.sh installs Authlib)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "Authlib's token server did not start ({line:?}); run scripts/ensure-test-tools.sh"
            )
        });
        Authlib { child, port }
    }
}

impl Drop for Authlib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_with_spaces_are_accepted_by_authlib() {
    let (id, secret) = ("bw client", "s$ @+/=");
    let authlib = Authlib::start(id, secret);
    let token_url = format!("http://127.0.0.1:{}/token", authlib.port);
    // The server can tell: a `+` for a space (form encoding) is refused.
    let plus = STANDARD.encode("bw+client:s%24+%40%2B%2F%3D");
    let refused = reqwest::Client::new()
        .post(&token_url)
        .header("authorization", format!("Basic {plus}"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let receiver = Server::start(|_, _| Reply::status(204)).await;
    let env = Env::new("authlib");
    let a = OAuth2::new(&token_url, id, secret)
        .client_auth("basic_header")
        .scope("voice.webrtc");
    let worker = env
        .start(env.config(&env.file(
            Retry::attempts(1),
            [oauth_profile("bw", &receiver.url("/"), a)],
        )))
        .await;
    env.publish(Some("bw"), "bw-1", b"{}").await;
    worker.wait_delivered("bw", 1).await;
    assert_eq!(
        receiver.all()[0].header("authorization").as_deref(),
        Some("Bearer authlib-token")
    );
    worker.stop().await.unwrap();
}
