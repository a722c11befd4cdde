//! The identity cache: key hash → key record, bounded so that memory does not grow with
//! the number of keys ever seen (docs/cluster.md). Two generations: entries go into the
//! young one; when it is full it becomes the old one (the previous old one is dropped),
//! and an old entry used again moves back to the young one. So at most `2 × half`
//! entries are held, and a key in use is never dropped for one seen once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::store::{KeyId, KeyRecord};

/// Keys cached by default: a miss costs one read of the database.
pub const DEFAULT_CAPACITY: usize = 20_000;

#[derive(Default)]
struct Generations {
    young: HashMap<String, Arc<KeyRecord>>,
    old: HashMap<String, Arc<KeyRecord>>,
}

/// A bounded map of key hash → key record.
#[derive(Clone)]
pub struct KeyCache {
    inner: Arc<RwLock<Generations>>,
    half: usize,
}

impl KeyCache {
    /// Holds at most `capacity` keys (at least 2).
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            inner: Arc::new(RwLock::new(Generations::default())),
            half: (capacity / 2).max(1),
        }
    }

    pub fn get(&self, hash: &str) -> Option<Arc<KeyRecord>> {
        {
            let g = self.inner.read().ok()?;
            if let Some(key) = g.young.get(hash) {
                return Some(key.clone());
            }
            if !g.old.contains_key(hash) {
                return None;
            }
        }
        let mut g = self.inner.write().ok()?;
        let key = g.old.remove(hash)?;
        Self::put(&mut g, self.half, hash.to_string(), key.clone());
        Some(key)
    }

    pub fn insert(&self, hash: String, key: Arc<KeyRecord>) {
        if let Ok(mut g) = self.inner.write() {
            g.old.remove(&hash);
            Self::put(&mut g, self.half, hash, key);
        }
    }

    fn put(g: &mut Generations, half: usize, hash: String, key: Arc<KeyRecord>) {
        if g.young.len() >= half && !g.young.contains_key(&hash) {
            g.old = std::mem::take(&mut g.young);
        }
        g.young.insert(hash, key);
    }

    /// Drops every entry of key `id`.
    pub fn remove_id(&self, id: KeyId) {
        if let Ok(mut g) = self.inner.write() {
            g.young.retain(|_, key| key.id != id);
            g.old.retain(|_, key| key.id != id);
        }
    }

    /// Replaces every entry of `key`'s id by `update(old entry)`.
    pub fn update_id(&self, id: KeyId, update: impl Fn(&KeyRecord) -> KeyRecord) {
        if let Ok(mut g) = self.inner.write() {
            let g = &mut *g;
            for cached in g.young.values_mut().chain(g.old.values_mut()) {
                if cached.id == id {
                    *cached = Arc::new(update(cached));
                }
            }
        }
    }

    pub fn clear(&self) {
        if let Ok(mut g) = self.inner.write() {
            g.young.clear();
            g.old.clear();
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .map(|g| g.young.len() + g.old.len())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: KeyId(id),
            account_id: crate::store::AccountId(1),
            kind: crate::store::KeyKind::Inference,
            name: String::new(),
            hint: String::new(),
            created_at: 0,
            updated_at: 0,
            expires_at: None,
            is_enabled: true,
            credit_limit: None,
            usage: crate::billing::Credits::ZERO,
            last_used_at: None,
            deleted_at: None,
            rate_limit_rpm: None,
            limit_reset: None,
            allowed_models: None,
            previous_key_expires_at: None,
            via_previous_secret: false,
            clamp_max_tokens: false,
        })
    }

    #[test]
    fn it_holds_at_most_its_capacity_and_keeps_keys_in_use() {
        let cache = KeyCache::new(100);
        for i in 0..10_000 {
            cache.insert(format!("h{i}"), key(i));
            // Key 0 is used all along: it is never dropped.
            assert_eq!(cache.get("h0").map(|k| k.id), Some(KeyId(0)), "at {i}");
            assert!(cache.len() <= 100, "{} entries at {i}", cache.len());
        }
        assert!(
            cache.get("h1").is_none(),
            "a key seen once long ago is gone"
        );
        assert_eq!(cache.get("h9999").map(|k| k.id), Some(KeyId(9999)));
    }

    #[test]
    fn removing_an_id_drops_it_from_both_generations() {
        let cache = KeyCache::new(4);
        cache.insert("a".into(), key(1));
        cache.insert("b".into(), key(2));
        cache.insert("c".into(), key(1)); // the young generation turns old here
        cache.remove_id(KeyId(1));
        assert!(cache.get("a").is_none());
        assert!(cache.get("c").is_none());
        assert_eq!(cache.get("b").map(|k| k.id), Some(KeyId(2)));
    }
}
