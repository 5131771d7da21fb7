//! The authenticate stage: what goes into the callback's `Authorization` (or API-key) header.
//!
//! Static credentials (`basic`, `bearer`, `api_key`) are built into a header once at config
//! load. OAuth 2.0 tokens (`oauth2`) come from the customer's auth server and are held in the
//! profile's [`TokenSlot`], optionally shared with other replicas through Redis
//! ([`shared`]).

pub mod assertion;
pub mod fetch;
pub mod oauth2;
pub mod shared;
pub mod slot;
pub mod token;

use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue};

pub use oauth2::{AuthError, ClientAuth, OAuth2, Placement, Token};
pub use slot::TokenSlot;

/// A profile's validated `auth` block.
#[derive(Debug)]
pub enum Auth {
    None,
    /// `basic`, `bearer` and `api_key`: a fixed header, marked sensitive.
    Static {
        header: HeaderName,
        value: HeaderValue,
    },
    OAuth2(Box<OAuth2>),
}

impl Auth {
    pub fn oauth2(&self) -> Option<&OAuth2> {
        match self {
            Auth::OAuth2(o) => Some(o),
            _ => None,
        }
    }
}

/// The header one attempt sends, and the token it came from (to drop it after a 401).
pub struct Credential {
    pub header: HeaderName,
    pub value: HeaderValue,
    pub token: Option<Arc<Token>>,
}
