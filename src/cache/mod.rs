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

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};

use tokio::{sync::watch, time::Instant};

pub use entry::{
    CacheStatus, Entry, ErrorReason, Freshness, Fwd, Slot, StaleWhy, StoredHeaders, fill_slots,
};
pub(crate) use fetch::read_body;
use key::recycle;
pub use key::{Generations, copy as copy_key, key};

use fetch::fetch_fleet;

/// GitHub's remaining-requests figure, read from stored 403s (parsed once).
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");

use crate::{
    admission::{self, Payer, Ticket, Work},
    body::Body,
    config::CacheConfig,
    error::ProxyError,
    error::limit::LimitAnswer,
    quota::ClientLimits,
    route::{Operation, Route},
    state::AppState,
    upstream::Forwarded,
};

/// Outcome of one upstream fetch, shared with every request waiting for it.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The upstream answered (any status but a rate limit); the body is buffered. With the
    /// status the upstream really sent (304 when it confirmed the stale entry).
    Answer(Arc<Entry>, u16),
    /// Another replica's fresh answer, from the shared tier's L2 (no upstream call).
    FromL2(Arc<Entry>),
    /// GitHub's rate-limit answer (403/429) for this key; a back-off is open. Never stored:
    /// a stale answer is served instead when there is one, else GitHub's answer, whole.
    Limited(Arc<Entry>),
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
    /// Nothing was sent: the proxy backs off.
    BackingOff(LimitAnswer),
    /// Too many requests wait for an upstream slot.
    QueueFull,
}

impl Failure {
    fn into_error(self) -> ProxyError {
        match self {
            Self::Timeout => ProxyError::UpstreamTimeout,
            Self::Unreachable => ProxyError::Upstream("upstream fetch failed".into()),
            Self::TooLarge => ProxyError::Upstream("upstream answer too large to cache".into()),
            Self::BackingOff(answer) => ProxyError::BackingOff(answer),
            Self::QueueFull => ProxyError::UpstreamQueueFull,
        }
    }

    fn reason(self) -> ErrorReason {
        match self {
            Self::Timeout => ErrorReason::Timeout,
            Self::BackingOff(answer) => ErrorReason::BackingOff(answer.kind),
            _ => ErrorReason::Unreachable,
        }
    }
}

/// What a fetch needs, owned so it can run in its own task.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// The cache key.
    pub key: String,
    /// The typed route (shared with the connection's memo of it).
    pub route: Arc<Route>,
    /// Validated client headers (without the client's conditional headers).
    pub forwarded: Forwarded,
    /// Base for rewritten `Link` URLs.
    pub public_base: Arc<str>,
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

/// The hasher of the cache's maps: seeded at random like std's (keys come from clients), and
/// faster than std's SipHash on the ~150-byte keys every hit hashes twice.
type KeyHasher = foldhash::fast::RandomState;

/// The cache and its single-flight table.
pub struct Cache {
    store: moka::sync::Cache<String, Arc<Entry>, KeyHasher>,
    /// Invalidation generations, part of every key.
    pub generations: Generations,
    /// Fetches under way, by key. A std `Mutex`: held only to look up or insert, never across an
    /// `.await`.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<Fetched>>>>,
    config: CacheConfig,
    /// Keys whose answer was larger than `max_entry_bytes`: passed through without a first
    /// attempt to buffer them, until the route's freshness lifetime passes.
    oversized: moka::sync::Cache<String, (), KeyHasher>,
    /// Keys a client's `no-cache` sent upstream less than `min_revalidate_interval` ago, whatever
    /// came of it: during an upstream incident, too, they cost GitHub one request per interval.
    revalidated: moka::sync::Cache<String, (), KeyHasher>,
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
            .build_with_hasher(KeyHasher::default());
        let oversized = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(longest_ttl)
            .build_with_hasher(KeyHasher::default());
        let revalidated = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(config.min_revalidate_interval.max(Duration::from_millis(1)))
            .build_with_hasher(KeyHasher::default());
        Self {
            store,
            oversized,
            revalidated,
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

    /// Drops every entry, at once: moka's `invalidate_all` only hides entries and removes them
    /// lazily, so the entry count (and the memory) stayed up for seconds after a full purge.
    /// Each entry is invalidated by key (moka then drops it in the pending maintenance), and
    /// `invalidate_all` still covers entries inserted meanwhile.
    pub fn purge_all(&self) {
        for (key, _) in &self.store {
            self.store.invalidate(key.as_str());
        }
        self.store.invalidate_all();
        self.store.run_pending_tasks();
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
        let counter = match status.as_str() {
            "hit" => &self.stats.hit,
            "miss" => &self.stats.miss,
            "shared_hit" => &self.stats.shared_hit,
            "coalesced" => &self.stats.coalesced,
            "revalidated" => &self.stats.revalidated,
            "stale" => &self.stats.stale,
            "stale_if_error" => &self.stats.stale_if_error,
            _ => &self.stats.bypass,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Joins the fetch under way for `key`, if there is one (free).
    fn join(&self, key: &str) -> Option<watch::Receiver<Option<Fetched>>> {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
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
    ///
    /// The `ticket` pays for the fetch; when another request's fetch is joined after all (it
    /// started after this request looked), it is given back.
    fn join_or_start(
        &self,
        state: &Arc<AppState>,
        spec: &FetchSpec,
        stale: Option<Arc<Entry>>,
        ticket: Ticket,
        l2_within: Option<Duration>,
    ) -> (watch::Receiver<Option<Fetched>>, bool) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(&spec.key) {
            let rx = rx.clone();
            drop(inflight);
            tokio::spawn(ticket.refund());
            return (rx, false);
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
            let fetched = fetch_fleet(&state, &spec, stale, ticket, l2_within).await;
            if let Fetched::Answer(entry, _) | Fetched::FromL2(entry) = &fetched
                && cacheable(entry.status)
            {
                state.cache.store.insert(spec.key.clone(), entry.clone());
                state.cache.oversized.invalidate(&spec.key);
            }
            // Stored first, then unlisted, then announced: a request arriving in between finds
            // the stored entry; one that joined earlier gets the announcement.
            if matches!(fetched, Fetched::Failed(Failure::TooLarge)) {
                // The stored (older, smaller) answer is outdated: the key passes through from
                // now on. Dropped before the mark is set, so a request in between joins this
                // fetch (still listed) and passes through too.
                state.cache.store.invalidate(&spec.key);
                state.cache.oversized.insert(spec.key.clone(), ());
            }
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
pub async fn invalidate(
    cache: &Cache,
    shared: Option<&crate::shared::Shared>,
    scopes: &[String],
) -> Result<(), crate::shared::Down> {
    match shared {
        Some(shared) => {
            // Each past the number this replica holds: a table Redis lost or rolled back must
            // not hand out one of those again (the bump would invalidate nothing here).
            let floors: Vec<(String, u64)> = scopes
                .iter()
                .map(|scope| (scope.clone(), cache.generations.value(scope).1))
                .collect();
            for (scope, value) in shared.bump(&floors).await? {
                cache.generations.raise(&scope, value);
            }
        }
        None => cache.generations.bump_all(scopes),
    }
    Ok(())
}

/// What the client asked of the cache besides the route.
#[derive(Debug, Clone, Default)]
pub struct ClientConditions {
    /// `Cache-Control: no-cache` (or `max-age=0`, `Pragma: no-cache`): revalidate before
    /// answering, at most once per `cache.min_revalidate_interval` and key.
    pub no_cache: bool,
    /// The client's `If-None-Match`, answered from the cache.
    pub if_none_match: Option<HeaderValue>,
    /// The client's `If-Modified-Since`, when it is an HTTP date: answered from the cache
    /// against the stored `Last-Modified`, unless `If-None-Match` is there (RFC 9110 §13.1.3).
    pub if_modified_since: Option<std::time::SystemTime>,
}

impl ClientConditions {
    /// Whether the client's copy is `entry`'s: a `304` instead of the body.
    fn not_modified(&self, entry: &Entry) -> bool {
        if entry.status != StatusCode::OK {
            return false;
        }
        match (&self.if_none_match, self.if_modified_since) {
            (Some(if_none_match), _) => entry.matches(if_none_match),
            (None, Some(since)) => entry
                .headers
                .get(&header::LAST_MODIFIED)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| httpdate::parse_http_date(value).ok())
                .is_some_and(|modified| modified <= since),
            (None, None) => false,
        }
    }
}

/// Who asks: the client's name and quotas.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    /// The client's name.
    pub name: &'a Arc<str>,
    /// Its quotas.
    pub limits: &'a Arc<ClientLimits>,
}

/// What the cache answers: the response, the status GitHub sent for this request (if it was
/// asked), and what the cache did.
pub type Served = (Response<Body>, Option<u16>, CacheStatus);

/// What [`serve_fresh`] could not answer, for [`serve_deferred`]: the request and what its one
/// lookup found.
pub struct Deferred {
    spec: FetchSpec,
    conditions: ClientConditions,
    now: Instant,
    found: Option<Arc<Entry>>,
}

/// Serves a cacheable GET: hit, stale, coalesced miss or revalidation. Hits spend the client's
/// hit quota; a request that starts an upstream fetch is admitted and charged by
/// [`admission`](crate::admission) (joining one under way is free). While the proxy saves the
/// token (back-off, reserve), a usable stale entry is served instead of going upstream.
///
/// This is its first half, for a request that arrived at `now`: a fresh hit, the common case, is
/// answered here with one lookup and no future at all (`Ok`, with the answer or the client's quota error). Anything else (`Err`)
/// continues in [`serve_deferred`] with what the lookup found.
#[allow(clippy::result_large_err)] // `Err` is not an error: it is the rest of the work
pub fn serve_fresh(
    state: &AppState,
    spec: FetchSpec,
    conditions: ClientConditions,
    asker: Asker<'_>,
    now: Instant,
) -> Result<Result<Served, ProxyError>, Deferred> {
    let found = state.cache.store.get(&spec.key);
    if !conditions.no_cache
        && let Some(entry) = &found
        && entry.freshness(now, Duration::ZERO, Duration::ZERO) == Freshness::Fresh
    {
        // Stored and marked oversized at once does not last: the fetch task drops the entry
        // before it sets the mark, and clears the mark when it stores an answer.
        if let Err(quota) = admission::charge_hit(asker.limits, now) {
            return Ok(Err(quota));
        }
        let saving = admission::saving(state);
        let served = answer(
            state,
            entry,
            CacheStatus::Hit,
            None,
            &conditions,
            now,
            saving,
        );
        recycle(spec.key);
        return Ok(Ok(served));
    }
    Err(Deferred {
        spec,
        conditions,
        now,
        found,
    })
}

/// Serves what [`serve_fresh`] could not: oversized keys, `no-cache`, stale entries, misses.
pub async fn serve_deferred(
    state: &Arc<AppState>,
    deferred: Deferred,
    asker: Asker<'_>,
) -> Result<Served, ProxyError> {
    let Deferred {
        spec,
        conditions,
        now,
        found,
    } = deferred;
    serve_slow(state, spec, conditions, asker, now, found).await
}

/// The response from `entry`: `304` when it is the client's copy (`If-None-Match`, else
/// `If-Modified-Since`), with the proxy's own rate-limit figures while it saves the token or
/// serves stale.
fn answer(
    state: &AppState,
    entry: &Entry,
    status: CacheStatus,
    upstream: Option<u16>,
    conditions: &ClientConditions,
    now: Instant,
    saving: bool,
) -> Served {
    state.cache.count(status);
    let not_modified = conditions.not_modified(entry);
    let mut response = entry.respond(status, now, not_modified);
    if saving || matches!(status, CacheStatus::Stale(_) | CacheStatus::StaleIfError(_)) {
        // The stored figures may say `remaining: 4999` while the proxy backs off.
        state
            .upstream
            .rate_limit
            .write_headers(response.headers_mut());
    }
    (response, upstream, status)
}

/// [`serve_deferred`]'s work. `found` is what [`serve_fresh`] found stored for the key (one
/// lookup per request).
async fn serve_slow(
    state: &Arc<AppState>,
    spec: FetchSpec,
    conditions: ClientConditions,
    asker: Asker<'_>,
    now: Instant,
    found: Option<Arc<Entry>>,
) -> Result<Served, ProxyError> {
    let cache = &state.cache;
    let saving = admission::saving(state);
    let respond = |entry: &Entry, status: CacheStatus, upstream: Option<u16>| {
        answer(state, entry, status, upstream, &conditions, now, saving)
    };
    if cache.oversized.contains_key(&spec.key) {
        return Box::pin(pass_through(state, &spec, &conditions, asker)).await;
    }
    let (sie, swr, interval) = (
        cache.config.stale_if_error,
        cache.config.stale_while_revalidate,
        cache.config.min_revalidate_interval,
    );
    let stale = match found {
        Some(entry) if conditions.no_cache => {
            let freshness = entry.freshness(now, swr, sie);
            let recently = entry.age(now) < interval
                || (!interval.is_zero() && cache.revalidated.contains_key(&spec.key));
            if freshness != Freshness::Expired && recently {
                admission::charge_hit(asker.limits, now)?;
                return Ok(respond(&entry, CacheStatus::HitRecentlyRevalidated, None));
            }
            (freshness != Freshness::Expired).then_some(entry)
        }
        Some(entry) => match entry.freshness(now, swr, sie) {
            Freshness::Fresh => {
                admission::charge_hit(asker.limits, now)?;
                return Ok(respond(&entry, CacheStatus::Hit, None));
            }
            Freshness::StaleWhileRevalidate => {
                admission::charge_hit(asker.limits, now)?;
                let why = Box::pin(revalidate_in_background(state, &spec, &entry)).await;
                return Ok(respond(&entry, CacheStatus::Stale(why), None));
            }
            Freshness::StaleIfError => Some(entry),
            Freshness::Expired => None,
        },
        None => None,
    };
    let fallback = stale
        .clone()
        .filter(|entry| entry.usable_if_error(now, sie));
    let forced = conditions.no_cache && stale.is_some();
    if !forced
        && saving
        && let Some(entry) = &fallback
    {
        admission::charge_hit(asker.limits, now)?;
        let reason = match admission::may_spend(state, Work::Background) {
            Err(ProxyError::BackingOff(answer)) => ErrorReason::BackingOff(answer.kind),
            _ => ErrorReason::Reserve,
        };
        return Ok(respond(entry, CacheStatus::StaleIfError(reason), None));
    }
    let (mut rx, leader) = if let Some(rx) = cache.join(&spec.key) {
        (rx, false)
    } else {
        let work = if forced { Work::Revalidate } else { Work::Read };
        let payer = Payer::client(asker.name, asker.limits);
        match Box::pin(admission::admit(state, &payer, work)).await {
            Ok(ticket) => {
                if forced && !interval.is_zero() {
                    cache.revalidated.insert(spec.key.clone(), ());
                }
                // A client's `no-cache` asks GitHub (with or without a copy here): a copy the
                // fleet holds does only if it was confirmed as recently as this replica's own
                // entry would have to be.
                let l2_within = conditions.no_cache.then_some(interval);
                cache.join_or_start(state, &spec, stale.clone(), ticket, l2_within)
            }
            // Spent quota or a full upstream queue: join a fetch that started meanwhile, or
            // answer a client's `no-cache` from the stored entry (best effort) rather than
            // refuse a read the cache can serve.
            Err(error @ (ProxyError::Quota { .. } | ProxyError::UpstreamQueueFull)) => {
                if let Some(rx) = cache.join(&spec.key) {
                    (rx, false)
                } else if let (true, Some(entry)) = (forced, &stale) {
                    admission::charge_hit(asker.limits, now)?;
                    return Ok(respond(entry, CacheStatus::HitNoCacheRefused, None));
                } else {
                    return Err(error);
                }
            }
            Err(ProxyError::BackingOff(answer)) => match &fallback {
                Some(entry) => {
                    admission::charge_hit(asker.limits, now)?;
                    let reason = ErrorReason::BackingOff(answer.kind);
                    return Ok(respond(entry, CacheStatus::StaleIfError(reason), None));
                }
                None => return Err(ProxyError::BackingOff(answer)),
            },
            Err(error) => return Err(error),
        }
    };
    let fetched = match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    };
    match fetched.unwrap_or(Fetched::Failed(Failure::Unreachable)) {
        Fetched::FromL2(entry) => Ok(respond(&entry, CacheStatus::SharedHit, None)),
        Fetched::Answer(entry, fwd_status) => {
            if let (Some(reason), Some(stale)) = (error_reason(&entry), &fallback) {
                return Ok(respond(
                    stale,
                    CacheStatus::StaleIfError(reason),
                    Some(fwd_status),
                ));
            }
            let fwd = match (forced, stale.is_some()) {
                (true, _) => Fwd::Request,
                (false, true) => Fwd::Stale,
                (false, false) => Fwd::Miss,
            };
            let status = CacheStatus::Forwarded {
                fwd,
                fwd_status,
                collapsed: !leader,
                stored: cacheable(entry.status),
            };
            Ok(respond(&entry, status, Some(fwd_status)))
        }
        Fetched::Failed(Failure::TooLarge) => {
            Box::pin(pass_through(state, &spec, &conditions, asker)).await
        }
        Fetched::Limited(entry) => {
            let fwd_status = entry.status.as_u16();
            let status = match &fallback {
                Some(stale) => {
                    let reason = ErrorReason::RateLimited(fwd_status);
                    return Ok(respond(
                        stale,
                        CacheStatus::StaleIfError(reason),
                        Some(fwd_status),
                    ));
                }
                None => CacheStatus::Forwarded {
                    fwd: if stale.is_some() {
                        Fwd::Stale
                    } else {
                        Fwd::Miss
                    },
                    fwd_status,
                    collapsed: !leader,
                    stored: false,
                },
            };
            Ok(respond(&entry, status, Some(fwd_status)))
        }
        Fetched::Failed(failure) => match fallback {
            Some(stale) => Ok(respond(
                &stale,
                CacheStatus::StaleIfError(failure.reason()),
                None,
            )),
            None => Err(failure.into_error()),
        },
    }
}

/// Starts the proxy's own revalidation of a stale entry, unless one runs or the token is being
/// saved; says which, for `Cache-Status`.
async fn revalidate_in_background(
    state: &Arc<AppState>,
    spec: &FetchSpec,
    entry: &Arc<Entry>,
) -> StaleWhy {
    if state.cache.in_flight(&spec.key) {
        return StaleWhy::Revalidating;
    }
    match admission::admit(state, &Payer::Proxy, Work::Background).await {
        Ok(ticket) => {
            let _background =
                state
                    .cache
                    .join_or_start(state, spec, Some(entry.clone()), ticket, None);
            StaleWhy::Revalidating
        }
        Err(ProxyError::BackingOff(answer)) => StaleWhy::BackingOff(answer.kind),
        Err(_) => StaleWhy::Reserve,
    }
}

/// An answer too large to cache, streamed to the client without holding it whole (admitted and
/// charged like any read). The client's conditions are GitHub's to judge: nothing is stored to
/// judge them by. Its body is GitHub's, and so is its ETag: a client's tag that is not the
/// proxy's is sent as it is (the proxy's own, from when the answer was smaller, are mapped).
async fn pass_through(
    state: &Arc<AppState>,
    spec: &FetchSpec,
    conditions: &ClientConditions,
    asker: Asker<'_>,
) -> Result<Served, ProxyError> {
    let payer = Payer::client(asker.name, asker.limits);
    let ticket = admission::admit(state, &payer, Work::Read).await?;
    let path = spec.route.path_and_query();
    let mut forwarded = std::borrow::Cow::Borrowed(&spec.forwarded);
    if let Some(tags) = &conditions.if_none_match {
        forwarded.to_mut().if_none_match =
            crate::body_url::upstream_if_none_match(tags, &spec.public_base, true);
    } else if let Some(since) = conditions.if_modified_since {
        let date = HeaderValue::try_from(httpdate::fmt_http_date(since)).ok();
        forwarded.to_mut().if_modified_since = date;
    }
    let response = state
        .upstream
        .send(&ticket, Method::GET, &path, &forwarded)
        .await?;
    let (parts, body) = response.into_parts();
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() =
        state
            .upstream
            .response_headers(&spec.route, &spec.public_base, &parts.headers);
    response
        .headers_mut()
        .insert(entry::CACHE_STATUS, CacheStatus::TooLarge.header_value(0));
    state.cache.count(CacheStatus::TooLarge);
    Ok((response, Some(parts.status.as_u16()), CacheStatus::TooLarge))
}

pub(super) fn cacheable(status: StatusCode) -> bool {
    status == StatusCode::OK || status == StatusCode::NOT_FOUND
}

/// An answer that should make us fall back to a stale entry: 5xx, or a rate limit
/// [`crate::ratelimit`] did not recognise as one.
fn error_reason(entry: &Entry) -> Option<ErrorReason> {
    let status = entry.status.as_u16();
    if entry.status.is_server_error() {
        return Some(ErrorReason::ServerError(status));
    }
    let limited = entry.status == StatusCode::TOO_MANY_REQUESTS
        || (entry.status == StatusCode::FORBIDDEN
            && (entry.headers.contains_key(&header::RETRY_AFTER)
                || entry
                    .headers
                    .get(&X_RATELIMIT_REMAINING)
                    .is_some_and(|v| v == "0")));
    limited.then_some(ErrorReason::RateLimited(status))
}
