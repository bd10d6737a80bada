//! State shared by every connection of one simulator.
//!
//! Each piece has its own lock so a request touches only what it needs, and no lock is held across
//! an `.await` (the handler copies out what it needs first). Std locks, not tokio's: critical
//! sections are short and synchronous. A poisoned lock is recovered: the data is still consistent
//! because every critical section is a few plain assignments.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use http::Request;
use tokio::sync::watch;

use super::LoggedRequest;
use super::dataset::Dataset;
use super::fault::FaultQueue;
use super::ratelimit::RateLimiter;
use super::registry::RegistryFaults;

/// Everything a request handler needs.
pub(super) struct SimState {
    /// The one accepted token.
    pub(super) token: String,
    /// Login the token belongs to (`/user/...` routes).
    pub(super) me: String,
    /// `http://127.0.0.1:PORT`: origin of `Link` and `url` values.
    pub(super) base_url: String,
    /// RwLock: reads (every GET) dominate and may run in parallel; only delete/restore write.
    data: RwLock<Dataset>,
    /// Mutex: append-only, one push per request.
    log: Mutex<Vec<LoggedRequest>>,
    faults: Mutex<FaultQueue>,
    /// Faults of the registry side (`/v2/...`, `/token`), separate from the API's.
    registry_faults: Mutex<RegistryFaults>,
    rate: Mutex<RateLimiter>,
    /// Atomics: bumped twice per request, never need to agree with other state.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    request_seq: AtomicU64,
    /// Flips to `true` once on shutdown; the accept loop and every connection watch it.
    shutdown: watch::Sender<bool>,
}

/// Counts a request as in flight until dropped (also when the client goes away mid-request).
pub(super) struct InFlight<'a> {
    state: &'a SimState,
}

// === impl SimState ===

impl SimState {
    /// Fresh state for a simulator about to start.
    pub(super) fn new(
        token: String,
        me: String,
        base_url: String,
        data: Dataset,
        limit: u64,
    ) -> Self {
        Self {
            token,
            me,
            base_url,
            data: RwLock::new(data),
            log: Mutex::new(Vec::new()),
            faults: Mutex::new(FaultQueue::default()),
            registry_faults: Mutex::new(RegistryFaults::default()),
            rate: Mutex::new(RateLimiter::new(limit)),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            request_seq: AtomicU64::new(0),
            shutdown: watch::Sender::new(false),
        }
    }

    /// Appends a request to the log.
    pub(super) fn record<B>(&self, req: &Request<B>) {
        let entry = LoggedRequest {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().map(str::to_owned),
            headers: req.headers().clone(),
            at: std::time::Instant::now(),
        };
        lock(&self.log).push(entry);
    }

    /// A copy of the log.
    pub(super) fn log_snapshot(&self) -> Vec<LoggedRequest> {
        lock(&self.log).clone()
    }

    /// Empties the log.
    pub(super) fn clear_log(&self) {
        lock(&self.log).clear();
    }

    /// The fault queue.
    pub(super) fn faults(&self) -> MutexGuard<'_, FaultQueue> {
        lock(&self.faults)
    }

    /// The registry's fault queue.
    pub(super) fn registry_faults(&self) -> MutexGuard<'_, RegistryFaults> {
        lock(&self.registry_faults)
    }

    /// The rate limit bucket.
    pub(super) fn rate(&self) -> MutexGuard<'_, RateLimiter> {
        lock(&self.rate)
    }

    /// Shared read access to the dataset.
    pub(super) fn read_data(&self) -> RwLockReadGuard<'_, Dataset> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Exclusive access to the dataset, for delete and restore.
    pub(super) fn write_data(&self) -> RwLockWriteGuard<'_, Dataset> {
        self.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// A unique `x-github-request-id`, shaped like GitHub's (`C0DE:1A2B:...`).
    pub(super) fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!(
            "5EED:{:04X}:{n:06X}:{:06X}:{n:08X}",
            n % 0xFFFF,
            n * 7 % 0xFF_FFFF
        )
    }

    /// Marks a request as in flight, updating the maximum.
    pub(super) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight { state: self }
    }

    /// Highest concurrent request count seen.
    pub(super) fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Signals the accept loop and every connection to stop.
    pub(super) fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that sees the shutdown signal.
    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Locks a mutex, recovering from poisoning (see the module docs).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl InFlight ===

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
