//! Held requests by API key: each key's cap, and ending a deleted key's within seconds.
//!
//! A key may hold at most its `max_held` (or `HERALD_MAX_WAITERS_PER_KEY`) long-polls and
//! SSE streams open on one instance; past that it gets `429` with `Retry-After`, so one key
//! cannot take every held connection of the instance (`HERALD_MAX_WAITERS`, `503`).
//!
//! Authentication happens when a request arrives; a long-poll is then held for up to
//! `HERALD_LONGPOLL_MAX_WAIT` and an SSE stream for up to `HERALD_SSE_MAX_LIFETIME`. Each
//! held request registers its key here and also waits on the key's token. Deleting a key
//! cancels the token on the instance that deleted it at once; every instance also checks,
//! every [`CHECK_EVERY`], that the keys it holds requests for still exist (one query for
//! all of them), and cancels the tokens of those that do not, dropping them from its
//! authentication cache as well. A cancelled long-poll answers an empty page (its next
//! request gets `401`); an SSE stream ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::KeyCache;
use crate::db::DbPool;

/// How often each instance checks that the keys of its held requests still exist.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The keys with held requests on this instance.
#[derive(Debug, Default)]
pub struct KeyHolds {
    held: Mutex<HashMap<Uuid, Entry>>,
    generation: std::sync::atomic::AtomicU64,
    /// The instance's authentication cache: a deleted key found by the check is dropped
    /// from it too, so its next request is refused at once.
    cache: Arc<KeyCache>,
}

/// A key's token and how many held requests use it; `generation` tells a revoked entry's
/// holds from a later entry's.
#[derive(Debug)]
struct Entry {
    token: CancellationToken,
    count: usize,
    generation: u64,
}

/// One held request's registration; dropping it unregisters.
#[derive(Debug)]
pub struct Hold {
    holds: Arc<KeyHolds>,
    key: Uuid,
    token: CancellationToken,
    generation: u64,
}

impl Hold {
    /// Cancelled when the key is deleted.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut held = self.holds.lock();
        if let Some(entry) = held.get_mut(&self.key)
            && entry.generation == self.generation
        {
            entry.count -= 1;
            if entry.count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl KeyHolds {
    /// Holds that also evict revoked keys from `cache`.
    pub fn new(cache: Arc<KeyCache>) -> Self {
        Self {
            cache,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a held request of the key `key`, unless it already has `cap` of them
    /// here (then `None`).
    pub fn hold(self: &Arc<Self>, key: Uuid, cap: usize) -> Option<Hold> {
        let mut held = self.lock();
        if held.get(&key).is_some_and(|entry| entry.count >= cap) {
            return None;
        }
        let entry = held.entry(key).or_insert_with(|| Entry {
            token: CancellationToken::new(),
            count: 0,
            generation: self
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        entry.count += 1;
        Some(Hold {
            holds: self.clone(),
            key,
            token: entry.token.clone(),
            generation: entry.generation,
        })
    }

    /// Ends every held request of `key` (it was deleted) and forgets it was authenticated.
    pub fn revoke(&self, key: Uuid) {
        self.cache.evict(key);
        if let Some(entry) = self.lock().remove(&key) {
            entry.token.cancel();
        }
    }

    /// The keys with held requests.
    pub fn keys(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Every [`CHECK_EVERY`] until `cancel`, revokes the held keys that no longer exist.
    pub async fn run_check(self: Arc<Self>, pool: DbPool, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(CHECK_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let keys = self.keys();
            if keys.is_empty() {
                continue;
            }
            let existing = async {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                crate::db::models::api_key::existing(&mut conn, &keys)
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match existing {
                Ok(existing) => {
                    for key in keys.into_iter().filter(|k| !existing.contains(k)) {
                        tracing::info!(key_id = %key, "ending held requests of a deleted key");
                        self.revoke(key);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "could not check held keys"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_a_key_cancels_its_holds_and_only_its_own() {
        let holds = Arc::new(KeyHolds::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = holds.hold(a, 2).unwrap();
        let a2 = holds.hold(a, 2).unwrap();
        assert!(holds.hold(a, 2).is_none(), "past the cap");
        let b1 = holds.hold(b, 2).unwrap();
        holds.revoke(a);
        assert!(a1.token().is_cancelled() && a2.token().is_cancelled());
        assert!(!b1.token().is_cancelled());
        assert_eq!(holds.keys(), vec![b]);
        // A later hold of the same key is not undone by the revoked ones going away.
        let a3 = holds.hold(a, 2).unwrap();
        drop((a1, a2));
        assert!(!a3.token().is_cancelled());
        assert_eq!(holds.keys().len(), 2);
        drop((b1, a3));
        assert!(holds.keys().is_empty());
    }
}
