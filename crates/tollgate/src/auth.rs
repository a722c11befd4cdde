//! Keys: their format, hashing, the two kinds, and authentication of a request's key
//! through an in-memory identity cache with invalidation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::HeaderMap;
use rand::RngCore;
use sha2::{Digest, Sha256};

mod cache;

use crate::store::{KeyId, KeyKind, KeyRecord, OperatorKey, Store, StoreError};
pub use cache::KeyCache;

/// Visible prefix of inference keys.
pub const INFERENCE_PREFIX: &str = "tg-inf-";
/// Visible prefix of provisioning keys.
pub const PROVISIONING_PREFIX: &str = "tg-prov-";
/// Visible prefix of operator keys (`/v1/admin/*`).
pub const OPERATOR_PREFIX: &str = "tg-op-";

/// A freshly minted key: the plaintext (shown once) and what is stored.
pub struct MintedKey {
    pub plaintext: String,
    pub hash: String,
    pub hint: String,
}

/// Makes a new random key of a kind (192 bits of entropy).
pub fn mint(kind: KeyKind) -> MintedKey {
    mint_with_prefix(match kind {
        KeyKind::Inference => INFERENCE_PREFIX,
        KeyKind::Provisioning => PROVISIONING_PREFIX,
    })
}

/// Makes a new random operator key.
pub fn mint_operator() -> MintedKey {
    mint_with_prefix(OPERATOR_PREFIX)
}

fn mint_with_prefix(prefix: &str) -> MintedKey {
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let plaintext = format!("{prefix}{}", hex::encode(bytes));
    let hint = format!("{prefix}...{}", &plaintext[plaintext.len() - 4..]);
    MintedKey {
        hash: hash_key(&plaintext),
        hint,
        plaintext,
    }
}

/// The stored form of a key: SHA-256, hex. Keys carry 192 random bits, so a fast hash
/// is enough; what matters is that the database never holds the plaintext.
pub fn hash_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// Why a request's key was refused; each message says what was wrong and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Missing API key. Send your inference key as 'Authorization: Bearer YOUR_API_KEY' or 'x-api-key: YOUR_API_KEY'.")]
    MissingInference,
    #[error("Missing provisioning key. /v1/account/* endpoints need 'Authorization: Bearer YOUR_PROVISIONING_KEY'; an operator creates one with `tollgate provisioning-keys create ACCOUNT`.")]
    MissingProvisioning,
    #[error("Malformed Authorization header: it must be 'Bearer YOUR_KEY'.")]
    MalformedHeader,
    #[error("/v1/account/* endpoints take the provisioning key only as 'Authorization: Bearer YOUR_PROVISIONING_KEY'; x-api-key is for inference keys.")]
    ProvisioningViaApiKeyHeader,
    #[error("Invalid API key: no key matches what was sent. Check it for typos or create a new key (POST /v1/account/keys).")]
    UnknownInference,
    #[error("Invalid provisioning key: no key matches what was sent. Check it for typos or ask your operator for a new one (`tollgate provisioning-keys create`).")]
    UnknownProvisioning,
    #[error("This is a provisioning key; model endpoints need a standard inference key. Create one with POST /v1/account/keys and send it as 'Authorization: Bearer' or 'x-api-key'.")]
    ProvisioningKeyOnInference,
    #[error("This is an inference key; /v1/account/* needs a provisioning key, sent as 'Authorization: Bearer YOUR_PROVISIONING_KEY'.")]
    InferenceKeyOnAccount,
    #[error("This key is disabled. Re-enable it with PATCH /v1/account/keys/{0} {{\"is_enabled\": true}}, or use another key.")]
    Disabled(i64),
    #[error("This key expired at {0}. Create a new key, or move its expiry with PATCH /v1/account/keys/{{id}}.")]
    Expired(String),
    #[error("This key was deleted and can no longer be used. Create a new key.")]
    Deleted,
    #[error("This secret was replaced by a rotation of key {0}; its grace period ended{1}. Use the key's new secret.")]
    Rotated(i64, String),
    #[error("This provisioning key was revoked. Ask your operator for a new one.")]
    Revoked,
    #[error("Missing operator key. /v1/admin/* endpoints need 'Authorization: Bearer YOUR_OPERATOR_KEY'; create one with `tollgate operator-keys create`.")]
    MissingOperator,
    #[error("/v1/admin/* endpoints take the operator key only as 'Authorization: Bearer YOUR_OPERATOR_KEY'.")]
    OperatorViaApiKeyHeader,
    #[error("Invalid operator key: no key matches what was sent. Check it for typos or create a new one (`tollgate operator-keys create`).")]
    UnknownOperator,
    #[error("This is not an operator key; /v1/admin/* needs an operator key (`tollgate operator-keys create`), sent as 'Authorization: Bearer YOUR_OPERATOR_KEY'.")]
    AccountKeyOnAdmin,
    #[error("This is an operator key; it works only on /v1/admin/*. Model endpoints need an inference key and /v1/account/* a provisioning key.")]
    OperatorKeyElsewhere,
    #[error(
        "This operator key was revoked. Create a new one with `tollgate operator-keys create`."
    )]
    OperatorRevoked,
}

/// The failure of an authentication attempt: the key was refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error(transparent)]
    Refused(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the key was found in the request.
enum Presented<'a> {
    Bearer(&'a str),
    ApiKeyHeader(&'a str),
}

fn presented(headers: &HeaderMap) -> Result<Option<Presented<'_>>, AuthError> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
        let text = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
        let (scheme, token) = text
            .trim()
            .split_once(' ')
            .ok_or(AuthError::MalformedHeader)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::MalformedHeader);
        }
        return Ok(Some(Presented::Bearer(token)));
    }
    if let Some(value) = headers.get("x-api-key") {
        let token = value
            .to_str()
            .map_err(|_| AuthError::UnknownInference)?
            .trim();
        if !token.is_empty() {
            return Ok(Some(Presented::ApiKeyHeader(token)));
        }
    }
    Ok(None)
}

/// Authenticates keys, caching identities in memory. Changes through this process
/// invalidate the cache at once; other replicas learn through the cluster bus.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    cache: KeyCache,
    caching: Arc<AtomicBool>,
    /// Hits and misses of the cache (`tollgate_key_cache_*`).
    pub cache_metrics: crate::observe::metrics::CacheMetrics,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Authenticator {
            store,
            cache: KeyCache::new(cache::DEFAULT_CAPACITY),
            caching: Arc::new(AtomicBool::new(true)),
            cache_metrics: Default::default(),
        }
    }

    /// Turns the identity cache on or off (off while the invalidation bus is down).
    pub fn set_caching(&self, on: bool) {
        self.caching.store(on, Ordering::SeqCst);
    }

    /// The inference key of a model request (bearer or x-api-key).
    pub async fn inference(&self, headers: &HeaderMap) -> Result<Arc<KeyRecord>, AuthFailure> {
        let token = match presented(headers)? {
            None => return Err(AuthError::MissingInference.into()),
            Some(Presented::Bearer(t) | Presented::ApiKeyHeader(t)) => t,
        };
        if token.starts_with(PROVISIONING_PREFIX) {
            return Err(AuthError::ProvisioningKeyOnInference.into());
        }
        if token.starts_with(OPERATOR_PREFIX) {
            return Err(AuthError::OperatorKeyElsewhere.into());
        }
        let hash = hash_key(token);
        let caching = self.caching.load(Ordering::SeqCst);
        let cached = if caching { self.cache.get(&hash) } else { None };
        let key = match cached {
            Some(key) => {
                self.cache_metrics.hits.inc();
                key
            }
            None => {
                self.cache_metrics.misses.inc();
                let key = self
                    .store
                    .key_by_hash(&hash)
                    .await?
                    .ok_or(AuthError::UnknownInference)?;
                let key = Arc::new(key);
                if caching && key.kind == KeyKind::Inference {
                    self.cache.insert(hash, key.clone());
                }
                key
            }
        };
        if key.kind != KeyKind::Inference {
            return Err(AuthError::ProvisioningKeyOnInference.into());
        }
        check_live(&key, crate::now())?;
        Ok(key)
    }

    /// The provisioning key of an account request (bearer only). Not cached: account
    /// requests are rare, and a revocation by the operator's command line must bite at once.
    pub async fn provisioning(&self, headers: &HeaderMap) -> Result<KeyRecord, AuthFailure> {
        let token = match presented(headers)? {
            None => return Err(AuthError::MissingProvisioning.into()),
            Some(Presented::ApiKeyHeader(_)) => {
                return Err(AuthError::ProvisioningViaApiKeyHeader.into())
            }
            Some(Presented::Bearer(t)) => t,
        };
        if token.starts_with(INFERENCE_PREFIX) {
            return Err(AuthError::InferenceKeyOnAccount.into());
        }
        if token.starts_with(OPERATOR_PREFIX) {
            return Err(AuthError::OperatorKeyElsewhere.into());
        }
        let key = self
            .store
            .key_by_hash(&hash_key(token))
            .await?
            .ok_or(AuthError::UnknownProvisioning)?;
        if key.kind != KeyKind::Provisioning {
            return Err(AuthError::InferenceKeyOnAccount.into());
        }
        if key.deleted_at.is_some() {
            return Err(AuthError::Revoked.into());
        }
        check_live(&key, crate::now())?;
        Ok(key)
    }

    /// The operator key of an operator request (bearer only). Not cached, like
    /// provisioning keys: a revocation bites at once. Account keys are refused before any
    /// lookup, and operator keys live in a table of their own, so neither kind of key can
    /// pass for the other.
    pub async fn operator(&self, headers: &HeaderMap) -> Result<OperatorKey, AuthFailure> {
        let token = match presented(headers)? {
            None => return Err(AuthError::MissingOperator.into()),
            Some(Presented::ApiKeyHeader(_)) => {
                return Err(AuthError::OperatorViaApiKeyHeader.into())
            }
            Some(Presented::Bearer(t)) => t,
        };
        if token.starts_with(INFERENCE_PREFIX) || token.starts_with(PROVISIONING_PREFIX) {
            return Err(AuthError::AccountKeyOnAdmin.into());
        }
        let key = self
            .store
            .operator_key_by_hash(&hash_key(token))
            .await?
            .ok_or(AuthError::UnknownOperator)?;
        if key.revoked_at.is_some() {
            return Err(AuthError::OperatorRevoked.into());
        }
        Ok(key)
    }

    /// Forgets a key so its next use reads the store again.
    pub fn invalidate(&self, id: KeyId) {
        self.cache.remove_id(id);
    }

    /// Replaces the cached copy of a key after a change made here.
    pub fn refresh(&self, key: &KeyRecord) {
        // A previous secret stays one (and keeps its grace period's end).
        self.cache.update_id(key.id, |cached| KeyRecord {
            via_previous_secret: cached.via_previous_secret,
            ..key.clone()
        });
    }

    /// Forgets every cached key (after the cluster bus lost messages).
    pub fn clear(&self) {
        self.cache.clear();
    }
}

fn check_live(key: &KeyRecord, now: i64) -> Result<(), AuthError> {
    if key.deleted_at.is_some() {
        return Err(AuthError::Deleted);
    }
    if !key.is_enabled {
        return Err(AuthError::Disabled(key.id.0));
    }
    if let Some(expires_at) = key.expires_at {
        if expires_at <= now {
            return Err(AuthError::Expired(crate::rfc3339(expires_at)));
        }
    }
    // Checked at every use, cached or not: a previous secret stops at its grace's end
    // on every replica, without waiting for any message.
    if key.via_previous_secret {
        match key.previous_key_expires_at {
            Some(until) if until > now => {}
            Some(until) => {
                return Err(AuthError::Rotated(
                    key.id.0,
                    format!(" at {}", crate::rfc3339(until)),
                ))
            }
            None => return Err(AuthError::Rotated(key.id.0, String::new())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_are_distinct_and_hashed() {
        let a = mint(KeyKind::Inference);
        let b = mint(KeyKind::Inference);
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(INFERENCE_PREFIX));
        assert_eq!(a.plaintext.len(), INFERENCE_PREFIX.len() + 48);
        assert_eq!(a.hash, hash_key(&a.plaintext));
        assert!(!a.hash.contains(&a.plaintext[INFERENCE_PREFIX.len()..]));
        assert!(a.hint.ends_with(&a.plaintext[a.plaintext.len() - 4..]));
        assert!(mint(KeyKind::Provisioning)
            .plaintext
            .starts_with(PROVISIONING_PREFIX));
    }

    #[test]
    fn headers_are_read_in_both_styles() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().expect("header"));
        assert!(matches!(presented(&h), Ok(Some(Presented::Bearer("abc")))));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "abc".parse().expect("header"));
        assert!(matches!(
            presented(&h),
            Ok(Some(Presented::ApiKeyHeader("abc")))
        ));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert!(matches!(presented(&h), Err(AuthError::MalformedHeader)));
        assert!(matches!(presented(&HeaderMap::new()), Ok(None)));
    }
}
