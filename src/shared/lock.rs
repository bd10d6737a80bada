//! The fleet-wide fetch lock, owned: each holder sets a random token, renews the lock while its
//! upstream call lasts, and releases only a lock that still holds its token (compare-and-delete
//! in Lua). A plain `DEL` let a slow holder, whose lock had expired, delete the next replica's
//! lock. Waiters poll L2 and the lock: an answer in L2 ends the wait, and so does the lock
//! going away without one (the leader failed, or died and its lock expired), so a GitHub error
//! no longer stalls every waiting replica for the lock's whole lifetime.

use std::time::Duration;

use redis::AsyncCommands;

use super::{Down, Shared, millis};
use crate::cache::Entry;

/// Poll interval of a replica waiting for another's fetch.
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The random value a holder put in its lock.
#[derive(Debug, Clone)]
pub struct LockToken(String);

// === impl Shared ===

impl Shared {
    /// Tries to become the one replica fetching `key`: `Some(token)` if this replica holds the
    /// lock now (for `shared.lock_ttl`; [`Shared::renew`] extends it).
    pub async fn lock(&self, key: &str) -> Result<Option<LockToken>, Down> {
        let mut conn = self.conn()?;
        let key = self.key("l", key);
        let token = LockToken(random_token());
        let value = token.0.clone();
        let ttl = millis(self.config.lock_ttl).max(1);
        let set: Option<String> = self
            .run(async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(set.map(|_| token))
    }

    /// Extends this replica's lock by `shared.lock_ttl`; `false` if it is no longer ours.
    pub async fn renew(&self, key: &str, token: &LockToken) -> bool {
        let Ok(mut conn) = self.conn() else {
            return false;
        };
        let script = self.scripts.renew.clone();
        let key = self.key("l", key);
        let value = token.0.clone();
        let ttl = millis(self.config.lock_ttl).max(1);
        let renewed: Result<i64, Down> = self
            .run(async move {
                script
                    .key(key)
                    .arg(value)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await;
        matches!(renewed, Ok(1))
    }

    /// Renews the lock every third of its lifetime, forever (select it against the fetch).
    pub async fn keep_renewed(&self, key: &str, token: &LockToken) -> std::convert::Infallible {
        let every = (self.config.lock_ttl / 3).max(Duration::from_millis(1));
        loop {
            tokio::time::sleep(every).await;
            if !self.renew(key, token).await {
                // Lost it (expired during a stall): another replica may fetch too; harmless.
                return std::future::pending().await;
            }
        }
    }

    /// Releases the fetch lock if it still holds `token` (never another replica's).
    pub async fn unlock(&self, key: &str, token: &LockToken) {
        let Ok(mut conn) = self.conn() else { return };
        let script = self.scripts.unlock.clone();
        let key = self.key("l", key);
        let value = token.0.clone();
        let _: Result<i64, Down> = self
            .run(async move { script.key(key).arg(value).invoke_async(&mut conn).await })
            .await;
    }

    /// Waits (polling L2 and the lock) for another replica's fetch of `key`. Returns the first
    /// fresh entry (any fresh answer will do: the winner's may have landed a moment before this
    /// replica started waiting), or `None` (fetch yourself) once the lock is gone without one
    /// (the leader failed, or died and its lock expired) or Redis fails.
    pub async fn wait_for(&self, key: &str) -> Option<Entry> {
        let lock = self.key("l", key);
        while self.is_up() {
            if let Some(entry) = self.l2_get(key).await
                && entry.age(tokio::time::Instant::now()) < entry.ttl
            {
                return Some(entry);
            }
            let Ok(mut conn) = self.conn() else {
                break;
            };
            let lock = lock.clone();
            match self
                .run(async move { conn.exists::<_, bool>(lock).await })
                .await
            {
                Ok(true) => tokio::time::sleep(LOCK_POLL).await,
                // Gone: a last look at L2 (the answer lands before the release).
                Ok(false) => {
                    return self
                        .l2_get(key)
                        .await
                        .filter(|entry| entry.age(tokio::time::Instant::now()) < entry.ttl);
                }
                Err(Down) => break,
            }
        }
        None
    }
}

/// 128 random bits, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}
