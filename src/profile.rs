//! The resolve stage: callback profiles by id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::HeaderMap;

use crate::auth::Auth;
use crate::sign::Signer;

/// One validated callback profile.
#[derive(Debug)]
pub struct Profile {
    pub id: Arc<str>,
    pub url: reqwest::Url,
    pub method: Method,
    pub headers: HeaderMap,
    /// Overrides `delivery.timeout` for this profile.
    pub timeout: Option<Duration>,
    pub signer: Option<Signer>,
    pub auth: Auth,
}

impl Profile {
    /// GET and DELETE send no body: the event's top-level scalars become query parameters.
    pub fn sends_body(&self) -> bool {
        !matches!(self.method, Method::GET | Method::DELETE)
    }
}

/// All profiles, looked up by id in O(1) whatever their number.
#[derive(Debug, Default)]
pub struct Profiles {
    by_id: HashMap<Arc<str>, Arc<Profile>>,
}

impl Profiles {
    pub fn new(profiles: impl IntoIterator<Item = Profile>) -> Self {
        Self {
            by_id: profiles
                .into_iter()
                .map(|p| (p.id.clone(), Arc::new(p)))
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Profile>> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.by_id.values()
    }
}
