//! `signing-key --profile ID`: the `whpk_` public keys of a profile's `whsk_` secrets, for the
//! customer to verify `v1a` signatures with. Public keys only: nothing secret is printed.

use anyhow::bail;

use crate::config::Config;

pub fn signing_key(config: &Config, profile_id: &str) -> anyhow::Result<String> {
    let Some(profile) = config.profiles.get(profile_id) else {
        bail!("no profile {profile_id:?} in the configuration");
    };
    let keys = profile
        .signer
        .as_ref()
        .map(|s| s.public_keys())
        .unwrap_or_default();
    if keys.is_empty() {
        bail!(
            "profile {profile_id:?} has no whsk_ (ed25519) signing secret; its signatures, if any, are v1 (HMAC) and have no public key"
        );
    }
    Ok(keys.into_iter().map(|k| format!("{k}\n")).collect())
}
