//! The demo's two customer-side servers, on fixed local ports:
//! - 127.0.0.1:18080: an auth server answering Kaleyra-style (`POST /oauth2/token`) and
//!   Infobip-style (`GET /auth/1/session`) client-credentials requests;
//! - 127.0.0.1:18081: a callback receiver that verifies each Standard Webhooks signature
//!   (HMAC-SHA256 over `{id}.{timestamp}.{body}`) the way a customer would, and prints it.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret() -> String {
    std::env::var("DEMO_SIGNING_SECRET").unwrap_or_else(|_| SIGNING_SECRET.into())
}

fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let secret = secret();
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(body);
    let want = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == want)
}

#[tokio::main]
async fn main() {
    let auth = Router::new()
        .route(
            "/oauth2/token",
            post(|headers: HeaderMap, body: String| async move {
                let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes()).into_owned().collect();
                let ok = form.iter().any(|(k, v)| k == "client_secret" && !v.is_empty())
                    && headers.get("x-tenant").is_some();
                println!("auth server: POST /oauth2/token from client_id={} -> {}", field(&form, "client_id"), if ok { "token issued" } else { "401" });
                if !ok {
                    return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#.to_owned());
                }
                (StatusCode::OK, format!(r#"{{"token_type":"Bearer","expires_in":"3599","expires_on":"{}","access_token":"demo-kaleyra-{}"}}"#, now() + 3599, now()))
            }),
        )
        .route(
            "/auth/1/session",
            get(|Query(q): Query<Vec<(String, String)>>| async move {
                println!("auth server: GET /auth/1/session for client_id={} -> IBSSO token issued", field(&q, "client_id"));
                format!(r#"{{"data":{{"token":"demo-ibsso-{}","tokenType":"IBSSO","expiresAt":{}}}}}"#, now(), now() + 3600)
            }),
        );
    let receiver = Router::new().route(
        "/callbacks/{profile}",
        post(|Path(profile): Path<String>, headers: HeaderMap, body: Bytes| async move {
            let ok = verify(&headers, &body);
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("-");
            let scheme_and_head: String = auth.chars().take(auth.find(' ').map_or(0, |i| i + 7)).collect();
            println!(
                "receiver: {profile} event {} signature {} Authorization: {scheme_and_head}… body {}",
                headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("-"),
                if ok { "VERIFIED" } else { "INVALID" },
                String::from_utf8_lossy(&body).trim_end()
            );
            if ok { StatusCode::NO_CONTENT } else { StatusCode::UNAUTHORIZED }
        }),
    );
    let a = tokio::net::TcpListener::bind("127.0.0.1:18080")
        .await
        .expect("port 18080 free");
    let r = tokio::net::TcpListener::bind("127.0.0.1:18081")
        .await
        .expect("port 18081 free");
    println!("demo servers: auth on http://127.0.0.1:18080, receiver on http://127.0.0.1:18081");
    let _ = tokio::join!(axum::serve(a, auth), axum::serve(r, receiver));
}

fn field<'a>(pairs: &'a [(String, String)], key: &str) -> &'a str {
    pairs.iter().find(|(k, _)| k == key).map_or("-", |(_, v)| v)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
