//! Advanced Authentication: the OAuth 2.0 client-credentials request to the customer's own
//! auth server, built from configuration alone (SPEC section 4).

use std::time::{Instant, SystemTime};

use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::assertion::{ASSERTION_TYPE, Assertion};
use super::token::{self, ExtractError, ResponseShape, Scrub};
use crate::decide::Health;
use crate::http;

/// The largest auth response read; a token response is a few KiB at most.
const MAX_AUTH_RESPONSE: usize = 64 * 1024;

/// How the worker proves who it is to the auth server (`client_auth`).
#[derive(Debug)]
pub enum ClientAuth {
    /// A client secret, placed as `Placement` says.
    Secret {
        secret: SecretString,
        placement: Placement,
    },
    /// A signed client assertion instead of a secret (`private_key_jwt`).
    PrivateKeyJwt(Assertion),
}

/// Where a client secret goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Form fields (`request_body`; the query string for GET).
    Form,
    /// RFC 6749 2.3.1 Basic header, no credentials in the body (`basic_header`).
    Basic,
    /// A JSON object body (`json_body`).
    Json,
}

/// A validated `auth: {type: oauth2}` block.
#[derive(Debug)]
pub struct OAuth2 {
    pub method: Method,
    pub url: reqwest::Url,
    pub client_id: String,
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    pub params: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub shape: ResponseShape,
    pub refresh_before_expiry: std::time::Duration,
    /// A digest of every setting of the block (secrets included): equal digests, same tokens.
    pub fingerprint: Fingerprint,
}

/// A SHA-256 digest of settings that include secrets. It never leaves the process as it is
/// (the shared cache keys it under a secret), and `Debug` does not show it: a digest of a
/// weak secret could be brute-forced.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(redacted)")
    }
}

/// A token ready to be sent: the `Authorization` value is built once per token.
pub struct Token {
    pub scheme: String,
    pub value: SecretString,
    pub header: HeaderValue,
    pub expires_at: SystemTime,
    /// When it stops being handed out.
    pub reuse_until: Instant,
    /// The encrypted form it has in the shared cache, if it came from or went to one: a 401
    /// deletes the shared copy only if it is still this one.
    pub stored: Option<Vec<u8>>,
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

impl Token {
    /// A token with its `Authorization` value; `None` if the token cannot be a header value.
    pub fn new(
        scheme: String,
        value: SecretString,
        expires_at: SystemTime,
        reuse_until: Instant,
    ) -> Option<Token> {
        let mut header =
            HeaderValue::try_from(format!("{scheme} {}", value.expose_secret())).ok()?;
        header.set_sensitive(true);
        Some(Token {
            scheme,
            value,
            header,
            expires_at,
            reuse_until,
            stored: None,
        })
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
/// the key, the token or the request URL.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth request {0}")]
    Transport(String),
    #[error("auth url refused: {0}")]
    Blocked(String),
    /// The proxy failed (SPEC section 17): the auth server was not asked.
    #[error("auth request not sent: {0}")]
    Proxy(String),
    #[error("auth server answered {status}{}", token::describe_server_error(.error, .description))]
    Status {
        status: u16,
        error: Option<String>,
        description: Option<String>,
        body: ErrorBody,
    },
    #[error("auth response unusable: {0}")]
    Response(#[from] ExtractError),
    #[error("client assertion could not be signed: {0}")]
    Assertion(String),
}

impl AuthError {
    /// What the failed token request says about the profile, for its circuit breaker (SPEC
    /// section 4): an auth server that times out, cannot be reached or answers 5xx or 429
    /// counts as a failed attempt. Anything else counts neither way: a refusal of the
    /// credentials (another 4xx) or an unusable answer is a configuration problem, not an
    /// outage, and the callback URL was never reached, so it must neither open the breaker
    /// nor (as `Up` would) reset its count of consecutive failures or close it after a
    /// probe. A refused address or an unsignable assertion never reached the auth server.
    pub fn health(&self) -> Health {
        match self {
            Self::Transport(_) => Health::Down,
            Self::Status { status, .. } if *status == 429 || *status >= 500 => Health::Down,
            Self::Status { .. } | Self::Response(_) => Health::Unknown,
            Self::Blocked(_) | Self::Assertion(_) | Self::Proxy(_) => Health::Unknown,
        }
    }
}

impl OAuth2 {
    /// The request's fields: the grant, scope and params, then the credentials unless they go
    /// in a header.
    fn fields(&self) -> Result<Vec<(&str, String)>, AuthError> {
        let mut fields = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(scope) = &self.scope {
            fields.push(("scope", scope.clone()));
        }
        fields.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.clone())));
        match &self.client_auth {
            ClientAuth::Secret {
                placement: Placement::Basic,
                ..
            } => {}
            ClientAuth::Secret { secret, .. } => {
                fields.push(("client_id", self.client_id.clone()));
                fields.push(("client_secret", secret.expose_secret().to_owned()));
            }
            ClientAuth::PrivateKeyJwt(assertion) => {
                let jwt = assertion
                    .sign(&self.client_id, self.url.as_str(), SystemTime::now())
                    .map_err(|e| AuthError::Assertion(e.to_string()))?;
                fields.push(("client_id", self.client_id.clone()));
                fields.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
                fields.push(("client_assertion", jwt));
            }
        }
        Ok(fields)
    }

    /// The request, and what no error about its answer may repeat: the credentials it
    /// carries, in the forms they travel in.
    fn request(
        &self,
        client: &http::Client,
    ) -> Result<(reqwest::RequestBuilder, Scrub), AuthError> {
        let mut scrub = Scrub::default();
        if let ClientAuth::Secret { secret, .. } = &self.client_auth {
            let secret = secret.expose_secret();
            scrub.add(secret);
            let basic = token::basic_credentials(&self.client_id, secret);
            scrub.add(basic.trim_start_matches("Basic "));
        }
        let mut req = client
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if let ClientAuth::Secret {
            secret,
            placement: Placement::Basic,
        } = &self.client_auth
        {
            let mut value = HeaderValue::try_from(token::basic_credentials(
                &self.client_id,
                secret.expose_secret(),
            ))
            .expect("base64 is a valid header value");
            value.set_sensitive(true);
            req = req.header(AUTHORIZATION, value);
        }
        let fields = self.fields()?;
        for (k, v) in &fields {
            if *k == "client_assertion" {
                scrub.add(v);
            }
        }
        let json = matches!(
            self.client_auth,
            ClientAuth::Secret {
                placement: Placement::Json,
                ..
            }
        );
        let req = match (json, &self.method) {
            (true, _) => {
                let obj: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
                    .collect();
                req.json(&obj)
            }
            (false, &Method::GET) => req.query(&fields),
            (false, _) => req.form(&fields),
        };
        Ok((req, scrub))
    }

    /// One request to the auth server, and the token read from its answer. No text of the
    /// error repeats the credentials or a token (SPEC section 4): such text is `[redacted]`.
    pub async fn fetch(&self, client: &http::Client) -> Result<Token, AuthError> {
        let (request, scrub) = self.request(client)?;
        let transport =
            |e: reqwest::Error| AuthError::Transport(scrub.field(&http::describe(e), 500));
        let request = request.build().map_err(transport)?;
        let response =
            client
                .execute(request)
                .await
                .map_err(|e| match (e.blocked(), e.proxy()) {
                    (Some(blocked), _) => AuthError::Blocked(blocked),
                    (None, Some(failure)) => AuthError::Proxy(failure),
                    (None, None) => AuthError::Transport(scrub.field(&e.describe(), 500)),
                })?;
        let status = response.status();
        let body = http::read_capped(response, MAX_AUTH_RESPONSE)
            .await
            .map_err(transport)?;
        if !status.is_success() {
            let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let scrub = scrub.with_tokens_of(&json, &self.shape.token);
            let (error, description) = token::rfc6749_error(&json, &scrub);
            return Err(AuthError::Status {
                status: status.as_u16(),
                error,
                description,
                body: ErrorBody(scrub.field(&String::from_utf8_lossy(&body), MAX_AUTH_RESPONSE)),
            });
        }
        let now = SystemTime::now();
        let got = token::extract_with(&body, &self.shape, now, &scrub)?;
        let lifetime = got.expires_at.duration_since(now).unwrap_or_default();
        let reuse_until = Instant::now() + token::reuse_for(lifetime, self.refresh_before_expiry);
        Token::new(got.scheme, got.token, got.expires_at, reuse_until).ok_or_else(|| {
            AuthError::Response(ExtractError::TokenNotString {
                path: self.shape.token.to_string(),
                found: "a string with characters not allowed in a header",
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_the_token_and_the_error_body() {
        let token = Token::new(
            "Bearer".into(),
            SecretString::from("tok-DEBUG-secret"),
            SystemTime::now(),
            Instant::now(),
        )
        .unwrap();
        let err = AuthError::Status {
            status: 401,
            error: Some("invalid_client".into()),
            description: None,
            body: ErrorBody("{\"echo\":\"cs-DEBUG-secret\"}".into()),
        };
        let shown = format!("{token:?} {err:?} {err} {:?}", token.header);
        assert!(!shown.contains("DEBUG-secret"), "{shown}");
        assert!(shown.contains("invalid_client"), "{shown}");
    }

    #[test]
    fn only_outages_of_the_auth_server_count_for_the_breaker() {
        let status = |status| AuthError::Status {
            status,
            error: None,
            description: None,
            body: ErrorBody(String::new()),
        };
        let cases = [
            (
                AuthError::Transport("timed out after 2s".into()),
                Health::Down,
            ),
            (status(503), Health::Down),
            (status(500), Health::Down),
            (status(429), Health::Down),
            // Wrong credentials: not an outage, and not a sign the endpoint is up either.
            (status(401), Health::Unknown),
            (status(400), Health::Unknown),
            (AuthError::Response(ExtractError::NotJson), Health::Unknown),
            (AuthError::Blocked("loopback".into()), Health::Unknown),
        ];
        for (err, want) in cases {
            assert_eq!(err.health(), want, "{err}");
        }
    }
}
