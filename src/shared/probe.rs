//! The probe: while the tier is marked down (one command timed out or failed) but the
//! subscription is fine, nothing else would ask Redis again, and every delete on this replica
//! was refused long after Redis answered. A few times a second, jittered so replicas do not
//! probe in step, a `PING` under `shared.timeout` tells whether it answers; when it does the tier
//! is marked up. The probe also replays invalidations this replica made alone.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use super::{Replica, Shared, resync};

/// The shortest pause between probes; up to as much again is added at random.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Probes until the state is dropped.
pub(super) async fn probe_forever(shared: Arc<Shared>, replica: Weak<dyn Replica>) {
    loop {
        tokio::time::sleep(PROBE_EVERY + jitter(PROBE_EVERY)).await;
        let Some(diverged) = replica
            .upgrade()
            .map(|r| r.cache().generations.is_diverged())
        else {
            return;
        };
        if shared.conn.get().is_none()
            || !shared.subscribed.load(Ordering::Relaxed)
            || (shared.is_up() && !diverged)
        {
            // Not connected yet, or the subscription is down (the subscriber reconnects and
            // marks the tier up once it has resynced), or nothing to do.
            continue;
        }
        let Ok(mut conn) = shared.conn() else {
            continue;
        };
        let ping = async move { redis::cmd("PING").query_async::<String>(&mut conn).await };
        let answered = tokio::time::timeout(shared.config.timeout, ping).await;
        if !matches!(answered, Ok(Ok(_))) {
            continue;
        }
        if diverged {
            let replay = resync(&shared, &replica);
            match tokio::time::timeout(shared.config.timeout * 4, replay).await {
                Ok(Ok(())) => {}
                _ => continue, // stays diverged (off the L2) and tries again
            }
        }
        shared.mark_up();
    }
}

/// A random duration below `max`.
fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(u64::from_le_bytes(bytes) % millis)
}
