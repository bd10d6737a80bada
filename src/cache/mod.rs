//! The metadata cache: moka, weighted by bytes; ETag revalidation; one upstream fetch per key
//! however many requests wait (misses and revalidations alike); stale-while-revalidate and
//! stale-if-error; invalidation by generations.
//!
//! moka's `get_with` only coalesces *absent* keys, so single-flight is ours: the first request for
//! a key spawns the fetch as its own task (a client that disconnects cannot cancel it and strand
//! the others) and every request for that key waits on the same `watch` channel.
//!
//! Authorization and routing have run before anything here is touched.

mod entry;
mod fetch;
mod key;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use http::{HeaderValue, Response, StatusCode, header};

use tokio::{sync::watch, time::Instant};

pub use entry::{CacheStatus, Entry, ErrorReason, Freshness};
pub(crate) use fetch::read_body;
pub use key::{Generations, key};

use fetch::fetch_fleet;

use crate::{
    body::Body,
    config::CacheConfig,
    error::ProxyError,
    quota::ClientLimits,
    route::{Operation, Route},
    state::AppState,
    upstream::Forwarded,
};

/// Outcome of one upstream fetch, shared with every request waiting for it.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The upstream answered (any status); the body is buffered.
    Answer(Arc<Entry>),
    /// Another replica's fresh answer, from the shared tier's L2 (no upstream call).
    Shared(Arc<Entry>),
    /// No usable answer.
    Failed(Failure),
}

/// Why a fetch produced no answer (the detail was logged where it happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No response in time.
    Timeout,
    /// Connection refused, reset, or broken body.
    Unreachable,
    /// The answer is larger than `cache.max_entry_bytes`.
    TooLarge,
    /// GitHub asked us to slow down; nothing was sent.
    BackingOff {
        /// Seconds until the back-off ends.
        retry_after_secs: u64,
    },
    /// Too many requests wait for an upstream slot.
    QueueFull,
}

impl Failure {
    fn into_error(self) -> ProxyError {
        match self {
            Self::Timeout => ProxyError::UpstreamTimeout,
            Self::Unreachable => ProxyError::Upstream("upstream fetch failed".into()),
            Self::TooLarge => ProxyError::Upstream("upstream answer too large to cache".into()),
            Self::BackingOff { retry_after_secs } => ProxyError::BackingOff { retry_after_secs },
            Self::QueueFull => ProxyError::UpstreamQueueFull,
        }
    }

    fn reason(self) -> ErrorReason {
        match self {
            Self::Timeout => ErrorReason::Timeout,
            Self::BackingOff { .. } => ErrorReason::RateLimited(503),
            _ => ErrorReason::Unreachable,
        }
    }
}

/// What a fetch needs, owned so it can run in its own task.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// The cache key.
    pub key: String,
    /// The typed route.
    pub route: Route,
    /// Validated client headers (without the client's conditional headers).
    pub forwarded: Forwarded,
    /// Base for rewritten `Link` URLs.
    pub public_base: String,
}

/// Counters for each cache outcome, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Fresh hits.
    pub hit: AtomicU64,
    /// Misses that fetched.
    pub miss: AtomicU64,
    /// Misses answered from the shared tier's L2.
    pub shared_hit: AtomicU64,
    /// Requests that waited for another's fetch.
    pub coalesced: AtomicU64,
    /// Stale or `no-cache` entries confirmed or replaced by the upstream.
    pub revalidated: AtomicU64,
    /// Stale entries served while revalidating in the background.
    pub stale: AtomicU64,
    /// Stale entries served because the upstream failed.
    pub stale_if_error: AtomicU64,
    /// Answers passed through without storing.
    pub bypass: AtomicU64,
    /// Entries evicted for space.
    pub evicted: AtomicU64,
    /// Upstream fetches started (misses and revalidations, after coalescing).
    pub upstream_fetches: AtomicU64,
}

/// The cache and its single-flight table.
pub struct Cache {
    store: moka::sync::Cache<String, Arc<Entry>>,
    /// Invalidation generations, part of every key.
    pub generations: Generations,
    /// Fetches under way, by key. A std `Mutex`: held only to look up or insert, never across an
    /// `.await`.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Fetched>>>>,
    config: CacheConfig,
    /// Outcome counters.
    pub stats: Arc<CacheStats>,
}

// === impl Cache ===

impl Cache {
    /// A cache bounded by `config.max_bytes`.
    pub fn new(config: &CacheConfig) -> Self {
        let stats = Arc::new(CacheStats::default());
        let evictions = stats.clone();
        let longest_ttl = [
            config.package_lists_ttl,
            config.package_ttl,
            config.version_lists_ttl,
            config.version_ttl,
            config.not_found_ttl,
        ]
        .into_iter()
        .max()
        .unwrap_or_default();
        let window = config.stale_while_revalidate.max(config.stale_if_error);
        let store = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|key: &String, entry: &Arc<Entry>| entry.weight(key))
            .time_to_live(longest_ttl + window)
            .eviction_listener(move |_key, _value, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.evicted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self {
            store,
            generations: Generations::default(),
            inflight: Mutex::new(HashMap::new()),
            config: config.clone(),
            stats,
        }
    }

    /// Entries currently stored (moka's estimate, after pending maintenance).
    pub fn entry_count(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.entry_count()
    }

    /// Bytes currently stored, by the weigher (after pending maintenance).
    pub fn weighted_size(&self) -> u64 {
        self.store.run_pending_tasks();
        self.store.weighted_size()
    }

    /// Drops every entry.
    pub fn purge_all(&self) {
        self.store.invalidate_all();
    }

    /// Freshness lifetime for an answer of this route and status.
    fn ttl(&self, route: &Route, status: StatusCode) -> std::time::Duration {
        if status == StatusCode::NOT_FOUND {
            return self.config.not_found_ttl;
        }
        match route.operation {
            Operation::ListPackages | Operation::DockerConflicts => self.config.package_lists_ttl,
            Operation::GetPackage => self.config.package_ttl,
            Operation::ListVersions => self.config.version_lists_ttl,
            _ => self.config.version_ttl,
        }
    }

    fn count(&self, status: CacheStatus) {
        let counter = match status {
            CacheStatus::Hit => &self.stats.hit,
            CacheStatus::Miss => &self.stats.miss,
            CacheStatus::SharedHit => &self.stats.shared_hit,
            CacheStatus::Coalesced => &self.stats.coalesced,
            CacheStatus::Revalidated => &self.stats.revalidated,
            CacheStatus::Stale => &self.stats.stale,
            CacheStatus::StaleIfError(_) => &self.stats.stale_if_error,
            CacheStatus::Bypass => &self.stats.bypass,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a fetch for `key` is under way (joining it costs the client nothing).
    fn in_flight(&self, key: &str) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Joins the fetch under way for `spec.key`, or starts one. Returns the channel the outcome
    /// arrives on and whether this call started it.
    fn join_or_start(
        &self,
        state: &Arc<AppState>,
        spec: &FetchSpec,
        stale: Option<Arc<Entry>>,
    ) -> (watch::Receiver<Option<Fetched>>, bool) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(&spec.key) {
            return (rx.clone(), false);
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(spec.key.clone(), rx.clone());
        drop(inflight);
        self.stats.upstream_fetches.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            // Unlists the key however this task ends: a panic must not strand the key with a
            // channel nobody will ever send on.
            let unlist = Unlist {
                state: state.clone(),
                key: spec.key.clone(),
            };
            let fetched = fetch_fleet(&state, &spec, stale).await;
            if let Fetched::Answer(entry) | Fetched::Shared(entry) = &fetched
                && cacheable(entry.status)
            {
                state.cache.store.insert(spec.key.clone(), entry.clone());
            }
            // Stored first, then unlisted, then announced: a request arriving in between finds
            // the stored entry; one that joined earlier gets the announcement.
            drop(unlist);
            let _ = tx.send(Some(fetched));
        });
        (rx, true)
    }
}

/// Removes a key from the single-flight table when dropped.
struct Unlist {
    state: Arc<AppState>,
    key: String,
}

impl Drop for Unlist {
    fn drop(&mut self) {
        self.state
            .cache
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.store.entry_count())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Bumps invalidation scopes: fleet-wide through the shared tier when one is configured (every
/// replica, L1 and L2 keys alike), else on this replica. With a shared tier configured but down,
/// nothing is bumped locally (a local bump would make this replica's generations diverge from
/// the fleet's for good) and the caller decides.
pub async fn invalidate(state: &AppState, scopes: &[String]) -> Result<(), crate::shared::Down> {
    match &state.shared {
        Some(shared) => {
            for (scope, value) in shared.bump(scopes).await? {
                state.cache.generations.raise(&scope, value);
            }
        }
        None => state.cache.generations.bump_all(scopes),
    }
    Ok(())
}

/// What the client asked of the cache besides the route.
#[derive(Debug, Clone, Default)]
pub struct ClientConditions {
    /// `Cache-Control: no-cache` (or `Pragma: no-cache`): revalidate before answering.
    pub no_cache: bool,
    /// The client's `If-None-Match`, answered from the cache.
    pub if_none_match: Option<HeaderValue>,
}

/// Serves a cacheable GET: hit, stale, coalesced miss or revalidation. Hits spend the client's
/// hit quota; a request that starts an upstream fetch spends its upstream quota (joining one
/// under way is free). Below the rate-limit reserve or during a back-off, a usable stale entry
/// is served instead of going upstream.
pub async fn serve(
    state: &Arc<AppState>,
    spec: FetchSpec,
    conditions: ClientConditions,
    client: &str,
    limits: &ClientLimits,
) -> Result<(Response<Body>, Option<u16>, CacheStatus), ProxyError> {
    // Set by whichever branch answers; a Mutex (not a Cell) because the future must be Send.
    let outcome = Mutex::new(CacheStatus::Bypass);
    let (response, upstream) =
        serve_inner(state, spec, conditions, client, limits, &outcome).await?;
    let status = *outcome.lock().unwrap_or_else(|p| p.into_inner());
    Ok((response, upstream, status))
}

async fn serve_inner(
    state: &Arc<AppState>,
    spec: FetchSpec,
    conditions: ClientConditions,
    client: &str,
    limits: &ClientLimits,
    outcome: &Mutex<CacheStatus>,
) -> Result<(Response<Body>, Option<u16>), ProxyError> {
    let cache = &state.cache;
    let now = Instant::now();
    let respond = |entry: &Entry, status: CacheStatus| {
        *outcome.lock().unwrap_or_else(|p| p.into_inner()) = status;
        cache.count(status);
        let not_modified = entry.status == StatusCode::OK
            && conditions
                .if_none_match
                .as_ref()
                .is_some_and(|inm| entry.matches(inm));
        entry.respond(status, now, not_modified)
    };
    let (swr, sie) = (
        cache.config.stale_while_revalidate,
        cache.config.stale_if_error,
    );
    let budget = &state.upstream.budget;
    let saving = budget.below_reserve() || budget.backoff_remaining().is_some();
    let stale = match cache.store.get(&spec.key) {
        Some(entry) if !conditions.no_cache => match entry.freshness(now, swr, sie) {
            Freshness::Fresh => {
                limits
                    .hits
                    .take()
                    .map_err(|s| quota("cache-hit", "proxy-hits", s))?;
                return Ok((respond(&entry, CacheStatus::Hit), None));
            }
            Freshness::StaleWhileRevalidate => {
                limits
                    .hits
                    .take()
                    .map_err(|s| quota("cache-hit", "proxy-hits", s))?;
                if !saving {
                    let _background = cache.join_or_start(state, &spec, Some(entry.clone()));
                }
                return Ok((respond(&entry, CacheStatus::Stale), None));
            }
            Freshness::StaleIfError => Some(entry),
            Freshness::Expired => None,
        },
        other => other,
    };
    let fallback = stale
        .clone()
        .filter(|entry| entry.usable_if_error(now, sie));
    if saving && let Some(entry) = &fallback {
        limits
            .hits
            .take()
            .map_err(|s| quota("cache-hit", "proxy-hits", s))?;
        return Ok((
            respond(
                entry,
                CacheStatus::StaleIfError(ErrorReason::RateLimited(429)),
            ),
            None,
        ));
    }
    let charged = if cache.in_flight(&spec.key) {
        None
    } else {
        Some(crate::quota::take_upstream(state, client, limits).await?)
    };
    let (mut rx, leader) = cache.join_or_start(state, &spec, stale.clone());
    let fetched = match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    };
    let fetched = fetched.unwrap_or(Fetched::Failed(Failure::Unreachable));
    match fetched {
        Fetched::Shared(entry) => {
            // Another replica's answer: no GitHub request was made for this client.
            if let Some(taken) = charged {
                crate::quota::refund_upstream(state, client, limits, taken).await;
            }
            Ok((respond(&entry, CacheStatus::SharedHit), None))
        }
        Fetched::Answer(entry) => {
            let upstream = Some(entry.status.as_u16());
            if let (Some(reason), Some(stale)) = (error_reason(&entry), &fallback) {
                return Ok((respond(stale, CacheStatus::StaleIfError(reason)), upstream));
            }
            let status = match (
                cacheable(entry.status),
                fallback.is_some() || conditions.no_cache,
                leader,
            ) {
                (false, _, _) => CacheStatus::Bypass,
                (true, true, _) => CacheStatus::Revalidated,
                (true, false, true) => CacheStatus::Miss,
                (true, false, false) => CacheStatus::Coalesced,
            };
            Ok((respond(&entry, status), upstream))
        }
        Fetched::Failed(failure) => match fallback {
            Some(stale) => Ok((
                respond(&stale, CacheStatus::StaleIfError(failure.reason())),
                None,
            )),
            None => Err(failure.into_error()),
        },
    }
}

fn quota(
    what: &'static str,
    resource: &'static str,
    snapshot: crate::quota::BucketSnapshot,
) -> ProxyError {
    let message = if what == "upstream" {
        "This client's quota of requests that need GitHub is spent; retry later"
    } else {
        "This client's quota of cached reads is spent; retry later"
    };
    ProxyError::Quota {
        message,
        resource,
        snapshot,
    }
}

pub(super) fn cacheable(status: StatusCode) -> bool {
    status == StatusCode::OK || status == StatusCode::NOT_FOUND
}

/// An answer that should make us fall back to a stale entry: 5xx, or a rate limit.
fn error_reason(entry: &Entry) -> Option<ErrorReason> {
    let status = entry.status.as_u16();
    if entry.status.is_server_error() {
        return Some(ErrorReason::ServerError(status));
    }
    let limited = entry.status == StatusCode::TOO_MANY_REQUESTS
        || (entry.status == StatusCode::FORBIDDEN
            && (entry.headers.contains_key(header::RETRY_AFTER)
                || entry
                    .headers
                    .get("x-ratelimit-remaining")
                    .is_some_and(|v| v == "0")));
    limited.then_some(ErrorReason::RateLimited(status))
}
