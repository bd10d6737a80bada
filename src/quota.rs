//! Per-client fair share of the org token: a token bucket for requests that need GitHub, a much
//! larger one for cache hits, and a cap on requests in flight.
//!
//! A small token bucket of our own rather than governor's GCRA: clients are told their remaining
//! quota (`x-ratelimit-*` headers, `GET /rate_limit`), which needs a remaining count that can be
//! read without spending it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use crate::{config::Quota, error::limit::BucketSnapshot};

/// A token bucket refilling continuously.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    /// (tokens, last refill). A std `Mutex`: a few arithmetic operations, never across an await.
    state: Mutex<(f64, Instant)>,
}

/// One client's limits, built from its [`Quota`] and kept across its requests.
#[derive(Debug)]
pub struct ClientLimits {
    /// Requests that need GitHub.
    pub upstream: TokenBucket,
    /// Requests answered from cache.
    pub hits: TokenBucket,
    /// Requests in flight.
    pub in_flight: Arc<Slots>,
    /// The quota they were built from.
    pub quota: Quota,
}

/// A cap on requests in flight, taken without waiting: past it a request is refused at once.
///
/// A counter rather than tokio's `Semaphore`, whose release takes a mutex for waiters that a
/// `try_acquire` never leaves: two such locks per request (the server's cap and the client's),
/// shared by every connection.
#[derive(Debug)]
pub struct Slots {
    taken: AtomicUsize,
    total: usize,
}

/// One taken slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

/// A slot taken for as long as the caller's borrow of its [`Slots`]: a cache hit takes and
/// gives back both of its slots without touching the `Arc`'s count. [`Taken::keep`] turns it
/// into a [`Slot`] that a waiting request carries.
#[derive(Debug)]
#[must_use = "dropping it gives the slot back"]
pub struct Taken<'a>(&'a Arc<Slots>);

// === impl Slots ===

impl Slots {
    /// `total` slots, all free.
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(Self {
            taken: AtomicUsize::new(0),
            total,
        })
    }

    /// A slot, or `None` when all are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Taken<'_>> {
        self.taken
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |taken| {
                (taken < self.total).then_some(taken + 1)
            })
            .ok()
            .map(|_| Taken(self))
    }

    /// A slot even past the cap, for an answer that is ready at once and costs nothing
    /// (health probes): counted while it is built, like any other.
    pub fn take_anyway(self: &Arc<Self>) -> Taken<'_> {
        self.taken.fetch_add(1, Ordering::Acquire);
        Taken(self)
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

// === impl Taken ===

impl Taken<'_> {
    /// The slot, held past the borrow (given back when the [`Slot`] is dropped).
    pub fn keep(self) -> Slot {
        let slots = self.0.clone();
        std::mem::forget(self);
        Slot(slots)
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Release);
    }
}

// === impl TokenBucket ===

impl TokenBucket {
    /// `n` per minute, bursting to `n`.
    pub fn per_minute(n: u32) -> Self {
        let capacity = f64::from(n.max(1));
        Self {
            capacity,
            per_second: capacity / 60.0,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// `n` per minute, with what `spent` from its bucket stays spent: a reload that changes a
    /// client's quota (tightening it to stop a runaway job, above all) hands out no fresh
    /// allowance; a loosened one gives the difference at once.
    pub fn per_minute_after(n: u32, spent: &TokenBucket) -> Self {
        let bucket = Self::per_minute(n);
        let used = {
            let mut state = spent.state.lock().unwrap_or_else(|p| p.into_inner());
            spent.refill(&mut state, Instant::now());
            spent.capacity - state.0
        };
        {
            let mut state = bucket.state.lock().unwrap_or_else(|p| p.into_inner());
            state.0 = (bucket.capacity - used).max(0.0);
        }
        bucket
    }

    /// Adds what flowed in up to `now`. A caller's `now` may be older than the last refill (it
    /// was read when its request started): time then never moves back.
    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.per_second).min(self.capacity);
        state.1 = state.1.max(now);
    }

    fn snapshot(&self, tokens: f64) -> BucketSnapshot {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let to_full = (self.capacity - tokens).max(0.0) / self.per_second;
        let to_one = (1.0 - tokens).max(0.0) / self.per_second;
        let remaining = tokens.floor().max(0.0) as u64;
        // With nothing left, the reset is when the next request is allowed: GitHub's clients
        // wait for `x-ratelimit-reset` when `remaining` is 0 (Octokit's throttling reads it
        // before `retry-after`), and the time to a full bucket made them wait minutes too long.
        let until = if remaining == 0 { to_one } else { to_full };
        BucketSnapshot {
            limit: self.capacity as u64,
            remaining,
            reset: (now.as_secs_f64() + until).ceil() as u64,
            retry_after: Duration::from_secs_f64(to_one),
        }
    }

    /// Takes one token at `now`; `Err` carries the snapshot for the 429.
    pub fn take(&self, now: Instant) -> Result<(), BucketSnapshot> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut state, now);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            Ok(())
        } else {
            Err(self.snapshot(state.0))
        }
    }

    /// Returns one token (never above capacity).
    pub fn give_back(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = (state.0 + 1.0).min(self.capacity);
    }

    /// The state without spending.
    pub fn peek(&self) -> BucketSnapshot {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut state, Instant::now());
        self.snapshot(state.0)
    }
}

// === impl ClientLimits ===

impl ClientLimits {
    /// Fresh limits for a quota. The local upstream bucket holds `1/replicas` of it: it is the
    /// whole quota with one replica, and the fallback while the shared tier is down otherwise.
    pub fn new(quota: Quota, replicas: u32) -> Self {
        Self {
            upstream: TokenBucket::per_minute((quota.upstream_per_minute / replicas.max(1)).max(1)),
            hits: TokenBucket::per_minute(quota.hits_per_minute),
            in_flight: Slots::new(quota.max_in_flight),
            quota,
        }
    }

    /// Limits for a client whose quota a reload changed: what it spent under `previous` stays
    /// spent ([`TokenBucket::per_minute_after`]); its requests in flight still count when the
    /// cap is unchanged (a new cap counts from the requests that start after the reload).
    pub fn changed(quota: Quota, replicas: u32, previous: &ClientLimits) -> Self {
        let upstream = (quota.upstream_per_minute / replicas.max(1)).max(1);
        Self {
            upstream: TokenBucket::per_minute_after(upstream, &previous.upstream),
            hits: TokenBucket::per_minute_after(quota.hits_per_minute, &previous.hits),
            in_flight: if quota.max_in_flight == previous.quota.max_in_flight {
                previous.in_flight.clone()
            } else {
                Slots::new(quota.max_in_flight)
            },
            quota,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Slots, TokenBucket};
    use tokio::time::Instant;

    #[test]
    fn a_bucket_refills_once_for_time_seen_out_of_order() {
        let bucket = TokenBucket::per_minute(60); // one a second
        let start = Instant::now();
        for _ in 0..60 {
            bucket.take(start).expect("full");
        }
        assert!(bucket.take(start).is_err());
        let later = start + std::time::Duration::from_secs(2);
        bucket.take(later).expect("two flowed in");
        // A request that started before `later` is charged at its start: nothing flows in twice.
        bucket
            .take(start + std::time::Duration::from_secs(1))
            .expect("one left");
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn slots_refuse_past_the_total_and_free_when_dropped() {
        let slots = Slots::new(2);
        let a = slots.try_take().expect("first");
        let b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none());
        assert_eq!(slots.taken(), 2);
        drop(a);
        let c = slots.try_take().expect("freed").keep();
        assert_eq!(slots.taken(), 2, "a kept slot stays taken");
        drop((b, c));
        assert_eq!(slots.taken(), 0);
        assert!(Slots::new(0).try_take().is_none());
    }
}
