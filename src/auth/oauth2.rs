//! Advanced Authentication: the OAuth 2.0 client-credentials request to the customer's own
//! auth server, built from configuration alone (SPEC section 4).

use std::time::{Instant, SystemTime};

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::token::{self, ExtractError, ResponseShape};
use crate::http;

/// The largest auth response read; a token response is a few KiB at most.
const MAX_AUTH_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Form fields (query string for GET).
    RequestBody,
    /// RFC 6749 2.3.1 Basic header, no credentials in the body.
    BasicHeader,
    /// A JSON object body.
    JsonBody,
}

/// A validated `auth: {type: oauth2}` block.
#[derive(Debug)]
pub struct OAuth2 {
    pub method: Method,
    pub url: reqwest::Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    pub params: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub shape: ResponseShape,
    pub refresh_before_expiry: std::time::Duration,
}

/// A token ready to be sent: the `Authorization` value is built once per token.
pub struct Token {
    pub scheme: String,
    pub value: SecretString,
    pub header: HeaderValue,
    pub expires_at: SystemTime,
    /// When the cache stops handing it out.
    pub reuse_until: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("scheme", &self.scheme)
            .field("value", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The auth server's error body, kept for the `token` command. `Debug` hides it.
pub struct ErrorBody(pub String);

impl std::fmt::Debug for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ErrorBody({} bytes)", self.0.len())
    }
}

/// An auth request that gave no token. `Display` is safe to log: it never holds the secret,
/// the token or the request URL.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth request {0}")]
    Transport(String),
    #[error("auth server answered {status}{}", token::describe_server_error(.error, .description))]
    Status {
        status: u16,
        error: Option<String>,
        description: Option<String>,
        body: ErrorBody,
    },
    #[error("auth response unusable: {0}")]
    Response(#[from] ExtractError),
}

impl OAuth2 {
    /// The request fields other than the credentials' placement.
    fn fields(&self) -> Vec<(&str, &str)> {
        let mut fields = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            fields.push(("scope", scope));
        }
        fields.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if self.client_auth != ClientAuth::BasicHeader {
            fields.push(("client_id", &self.client_id));
            fields.push(("client_secret", self.client_secret.expose_secret()));
        }
        fields
    }

    fn request(&self, client: &reqwest::Client) -> reqwest::RequestBuilder {
        let mut req = client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if self.client_auth == ClientAuth::BasicHeader {
            let mut value = HeaderValue::try_from(token::basic_credentials(
                &self.client_id,
                self.client_secret.expose_secret(),
            ))
            .expect("base64 is a valid header value");
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let fields = self.fields();
        match (self.client_auth, &self.method) {
            (ClientAuth::JsonBody, _) => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                    .collect();
                req.json(&obj)
            }
            (_, &Method::GET) => req.query(&fields),
            _ => req.form(&fields),
        }
    }

    /// One request to the auth server, and the token read from its answer.
    pub async fn fetch(&self, client: &reqwest::Client) -> Result<Token, AuthError> {
        let response = self
            .request(client)
            .send()
            .await
            .map_err(|e| AuthError::Transport(http::describe(e)))?;
        let status = response.status();
        let body = http::read_capped(response, MAX_AUTH_RESPONSE)
            .await
            .map_err(|e| AuthError::Transport(http::describe(e)))?;
        if !status.is_success() {
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let (error, description) = token::rfc6749_error(&json);
            return Err(AuthError::Status {
                status: status.as_u16(),
                error,
                description,
                body: ErrorBody(String::from_utf8_lossy(&body).into_owned()),
            });
        }
        let now = SystemTime::now();
        let got = token::extract(&body, &self.shape, now)?;
        let lifetime = got.expires_at.duration_since(now).unwrap_or_default();
        let mut header =
            HeaderValue::try_from(format!("{} {}", got.scheme, got.token.expose_secret()))
                .map_err(|_| {
                    AuthError::Response(ExtractError::TokenNotString {
                        path: self.shape.token.to_string(),
                        found: "a string with characters not allowed in a header",
                    })
                })?;
        header.set_sensitive(true);
        Ok(Token {
            scheme: got.scheme,
            value: got.token,
            header,
            expires_at: got.expires_at,
            reuse_until: Instant::now() + token::reuse_for(lifetime, self.refresh_before_expiry),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_the_token_and_the_error_body() {
        let mut header = HeaderValue::from_static("Bearer tok-DEBUG-secret");
        header.set_sensitive(true);
        let token = Token {
            scheme: "Bearer".into(),
            value: SecretString::from("tok-DEBUG-secret"),
            header,
            expires_at: SystemTime::now(),
            reuse_until: Instant::now(),
        };
        let err = AuthError::Status {
            status: 401,
            error: Some("invalid_client".into()),
            description: None,
            body: ErrorBody("{\"echo\":\"cs-DEBUG-secret\"}".into()),
        };
        let shown = format!("{token:?} {err:?} {err}");
        assert!(!shown.contains("DEBUG-secret"), "{shown}");
        assert!(shown.contains("invalid_client"), "{shown}");
    }
}
