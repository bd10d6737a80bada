//! A cached answer, how fresh it is, and how it is served (`Age`, RFC 9211 `Cache-Status`).

use std::{cell::RefCell, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use tokio::time::Instant;

use crate::{
    body::{self, Body},
    error::limit::BackoffKind,
    proxy::{X_OAUTH_SCOPES, X_REQUEST_ID},
};

/// Per-entry memory beyond payload and headers: the `Arc<Entry>`, moka's node and access-order
/// bookkeeping, and allocator slack. Measured with `keys.sh`'s RSS step (benches/README.md,
/// ~540-byte bodies, steady churn, mimalloc): ~3,000 bytes resident per entry once the stored
/// map was exactly sized (`StoredHeaders`), against 4,100 counted with 2,048 here, so the cache
/// filled only 0.73 of `max_bytes`.
const ENTRY_OVERHEAD: usize = 1024;
/// RFC 9211's `Cache-Status`, set on every answer from the cache (parsed once, not per call).
pub(super) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The headers every answer from the cache adds to the stored ones: `Age` and `Cache-Status`
/// here, the walk's `X-Request-Id` and `X-OAuth-Scopes` (`proxy::Call::finish`). None of them
/// is ever stored (none is on the upstream allow-list).
static SLOTS: [HeaderName; 4] = [header::AGE, CACHE_STATUS, X_REQUEST_ID, X_OAUTH_SCOPES];

/// One upstream answer, buffered once and shared by every hit (the body is refcounted `Bytes`,
/// the headers are already filtered and `Link`-rewritten).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The upstream status (200 or 404 when cached; anything when only shared with waiters).
    pub status: StatusCode,
    /// Response headers to send, without `Age` and `Cache-Status`.
    pub headers: StoredHeaders,
    /// The body.
    pub body: Bytes,
    /// GitHub's `ETag`, sent upstream to revalidate. The client's (in `headers`) is the proxy's
    /// own when the body's API URLs were rewritten (see `body_url`).
    pub etag: Option<HeaderValue>,
    /// When the upstream last confirmed this answer (200 or 304).
    pub fetched_at: Instant,
    /// The same moment on the wall clock, for the shared tier (replicas share no monotonic clock).
    pub fetched_wall: std::time::SystemTime,
    /// How long it is fresh.
    pub ttl: Duration,
}

/// An entry's headers, kept inside the map every answer from it starts from: the stored headers
/// and one slot for each header an answer adds ([`SLOTS`], placeholders until filled).
///
/// A hit clones that map and fills the slots in place: one copy of two exactly sized tables, with
/// no rehash and no growth. Built afresh per hit, the map was sized by the `HeaderMap`'s
/// power-of-two rule (12 buckets, 1,248 bytes, for 7 headers), past mimalloc's small-block fast
/// path, and every stored header was hashed again. It is also smaller than the map it replaces:
/// a clone holds exactly its entries. Reads see the stored headers only.
#[derive(Debug, Clone)]
pub struct StoredHeaders {
    answer: HeaderMap,
}

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it.
    Fresh,
    /// Serve it, and revalidate in the background.
    StaleWhileRevalidate,
    /// Revalidate first; serve it only if the upstream fails.
    StaleIfError,
    /// Too old to serve at all.
    Expired,
}

/// Why a stale answer was served instead of the upstream's (after the entry's
/// stale-while-revalidate window, or for a client that must wait for an answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream could not be reached or broke the connection.
    Unreachable,
    /// The upstream answered this key with a rate limit (403/429).
    RateLimited(u16),
    /// The upstream answered 5xx.
    ServerError(u16),
    /// Nothing was sent: the proxy backs off after a limit of this kind.
    BackingOff(BackoffKind),
    /// Nothing was sent: the token's rate limit is below the reserve.
    Reserve,
}

/// Why a stale answer was served at once, inside the stale-while-revalidate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleWhy {
    /// A background revalidation runs (or ran just now).
    Revalidating,
    /// None runs: the token's rate limit is below the reserve.
    Reserve,
    /// None runs: the proxy backs off after a limit of this kind.
    BackingOff(BackoffKind),
}

/// How the upstream was asked (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Nothing usable was stored.
    Miss,
    /// The stored answer was stale.
    Stale,
    /// The client asked for it (`no-cache`).
    Request,
}

/// What the cache did for a request: feeds metrics and the `Cache-Status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from memory, fresh.
    Hit,
    /// Served from memory for a client's `no-cache`: the upstream confirmed it less than
    /// `cache.min_revalidate_interval` ago.
    HitRecentlyRevalidated,
    /// Served from memory for a client's `no-cache` that its quota (or a full upstream queue)
    /// could not send upstream: best effort, never a refusal of a read the cache can serve.
    HitNoCacheRefused,
    /// Not in this replica's memory, but fresh in the shared tier (another replica fetched it).
    SharedHit,
    /// The upstream was asked (by this request, or by one it waited for).
    Forwarded {
        /// Why.
        fwd: Fwd,
        /// The status the upstream really sent for this key (304 for a confirmed entry).
        fwd_status: u16,
        /// Waited for another request's identical upstream fetch.
        collapsed: bool,
        /// The answer was stored.
        stored: bool,
    },
    /// Served stale at once (stale-while-revalidate window).
    Stale(StaleWhy),
    /// Served stale because the upstream failed, rate-limited us, or could not be asked.
    StaleIfError(ErrorReason),
    /// Larger than `cache.max_entry_bytes`: streamed through, not stored.
    TooLarge,
    /// Not cacheable (cache disabled): passed through.
    Bypass,
}

// === impl Entry ===

impl Entry {
    /// Time since the upstream last confirmed it.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }

    /// Where the entry is in its life, given the two stale windows.
    pub fn freshness(&self, now: Instant, swr: Duration, sie: Duration) -> Freshness {
        let age = self.age(now);
        if age < self.ttl {
            Freshness::Fresh
        } else if age < self.ttl.saturating_add(swr) {
            Freshness::StaleWhileRevalidate
        } else if age < self.ttl.saturating_add(sie) {
            Freshness::StaleIfError
        } else {
            Freshness::Expired
        }
    }

    /// Usable as a stale fallback when the upstream fails.
    pub fn usable_if_error(&self, now: Instant, sie: Duration) -> bool {
        self.age(now) < self.ttl.saturating_add(sie)
    }

    /// Bytes this entry costs, for the cache's weigher.
    ///
    /// Counts what the entry really holds, not only its payload: each header value is its own
    /// allocation, the `HeaderMap` keeps index and bucket tables sized by its capacity, and moka
    /// keeps per-entry bookkeeping. With payload alone, `max_bytes` bounded a quarter of the
    /// resident memory (benches/README.md: ~5 KiB RSS per entry against 1.3 KiB counted).
    pub fn weight(&self, key: &str) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 64)
            .sum();
        let tables = self.headers.capacity() * 80;
        let total = allocated(self.body.len()) + headers + tables + 2 * key.len() + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// True when the client's `If-None-Match` names the ETag the client was sent (weak
    /// comparison): a 304 only for the representation the client holds.
    pub fn matches(&self, if_none_match: &HeaderValue) -> bool {
        let Some(etag) = self.headers.get(&header::ETAG) else {
            return false;
        };
        let strip = |s: &[u8]| -> Vec<u8> { s.strip_prefix(b"W/").unwrap_or(s).to_vec() };
        let ours = strip(etag.as_bytes());
        if_none_match
            .as_bytes()
            .split(|b| *b == b',')
            .map(|tag| tag.trim_ascii())
            .any(|tag| tag == b"*" || strip(tag) == ours)
    }

    /// The response for a client: `304` with no body when `not_modified`. Its `X-Request-Id`
    /// and `X-OAuth-Scopes` slots are left for the walk to fill or remove.
    pub fn respond(&self, status: CacheStatus, now: Instant, not_modified: bool) -> Response<Body> {
        let body = if not_modified {
            body::empty()
        } else {
            body::full(self.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            self.status
        };
        let mut headers = self.headers.answer.clone();
        if not_modified {
            headers.remove(header::CONTENT_TYPE);
        }
        let age = self.age(now).as_secs();
        let ttl = i128::from(self.ttl.as_secs() as u32) - i128::from(age as u32);
        let (age_value, status_value) = if let CacheStatus::Hit = status {
            hit_values(age, ttl)
        } else {
            (age_value(age), status.header_value(ttl))
        };
        fill_slots(
            &mut headers,
            (Slot::Age, age_value),
            (Slot::CacheStatus, status_value),
        );
        *response.headers_mut() = headers;
        response
    }
}

/// A header every answer from the cache carries and the stored map holds a placeholder for, at
/// the start of the map, in this order ([`StoredHeaders::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Slot {
    /// `Age`
    Age,
    /// `Cache-Status`
    CacheStatus,
    /// `X-Request-Id`
    RequestId,
    /// `X-OAuth-Scopes`
    OAuthScopes,
}

impl Slot {
    /// The header's name.
    pub fn name(self) -> &'static HeaderName {
        &SLOTS[self as usize]
    }

    /// Whether `name` is this slot's. `Age` is a standard name (compared as an enum); the
    /// others by address first (the map's names are copies of the same constants), by bytes
    /// when the address differs.
    fn holds(self, name: &HeaderName) -> bool {
        let ours = self.name();
        match self {
            Slot::Age => name == ours,
            _ => std::ptr::eq(name.as_str(), ours.as_str()) || name == ours,
        }
    }
}

/// Sets two slots of `headers`, a map from [`Entry::respond`] (`first` before `second`): each
/// is found at its position among the map's first entries, without hashing its name for an
/// `insert` (which cost more than the rest of serving the stored map) or comparing it with
/// every name before it. A slot not where it belongs (a map from elsewhere) is inserted.
pub fn fill_slots(
    headers: &mut HeaderMap,
    first: (Slot, HeaderValue),
    second: (Slot, HeaderValue),
) {
    debug_assert!(first.0 < second.0, "slots are filled in map order");
    let (first_slot, second_slot) = (first.0, second.0);
    let mut entries = headers.iter_mut();
    let first = put(entries.nth(first_slot as usize), first);
    // Right after the first slot's entry, or where the first would have been.
    let skip = (second_slot as usize).saturating_sub(first_slot as usize + 1);
    let second = put(entries.nth(skip), second);
    if let Some((slot, value)) = first {
        headers.insert(slot.name().clone(), value);
    }
    if let Some((slot, value)) = second {
        headers.insert(slot.name().clone(), value);
    }
}

/// Puts `value` in `entry` if it is `slot`'s; else gives both back (to be inserted).
fn put(
    entry: Option<(&HeaderName, &mut HeaderValue)>,
    (slot, value): (Slot, HeaderValue),
) -> Option<(Slot, HeaderValue)> {
    match entry {
        Some((name, place)) if slot.holds(name) => {
            *place = value;
            None
        }
        _ => Some((slot, value)),
    }
}

// === impl StoredHeaders ===

impl StoredHeaders {
    /// Keeps `stored` (any header named like a slot is dropped: the answer writes its own).
    pub fn new(stored: &HeaderMap) -> Self {
        let mut answer = HeaderMap::with_capacity(stored.len() + SLOTS.len());
        // Slots first, in `SLOTS` order: `fill_slots` finds them at the start of the map.
        for slot in &SLOTS {
            answer.insert(slot.clone(), HeaderValue::from_static(""));
        }
        for (name, value) in stored {
            if !is_slot(name) {
                answer.append(name.clone(), value.clone());
            }
        }
        // A clone's tables hold exactly its entries: what every hit's clone allocates.
        Self {
            answer: answer.clone(),
        }
    }

    /// The stored headers, as a map of their own (to change some and build anew).
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        for (name, value) in self.iter() {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// The first stored value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        if is_slot(name) {
            return None;
        }
        self.answer.get(name)
    }

    /// Whether `name` is stored.
    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every stored header, one pair per value.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.answer.iter().filter(|(name, _)| !is_slot(name))
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.answer.len() - SLOTS.len()
    }

    /// Whether no header is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Buckets the map's tables hold (what it costs besides the values).
    fn capacity(&self) -> usize {
        self.answer.capacity()
    }
}

/// Whether `name` is one of the headers an answer writes itself.
fn is_slot(name: &HeaderName) -> bool {
    SLOTS.iter().any(|slot| slot == name)
}

thread_local! {
    /// The `Age` and `Cache-Status` values this thread last built for a plain hit, by age and
    /// remaining ttl in seconds: the hits a thread serves within a second mostly carry the same
    /// two, and cloning them is cheaper than formatting them.
    static HIT_VALUES: RefCell<Option<(u64, i128, HeaderValue, HeaderValue)>> =
        const { RefCell::new(None) };
}

/// `Age` and `Cache-Status` for a plain hit.
fn hit_values(age: u64, ttl: i128) -> (HeaderValue, HeaderValue) {
    HIT_VALUES.with(|memo| {
        let mut memo = memo.borrow_mut();
        if let Some((a, t, age_value, status_value)) = memo.as_ref()
            && (*a, *t) == (age, ttl)
        {
            return (age_value.clone(), status_value.clone());
        }
        let values = (age_value(age), CacheStatus::Hit.header_value(ttl));
        *memo = Some((age, ttl, values.0.clone(), values.1.clone()));
        values
    })
}

/// An `Age` value.
fn age_value(age: u64) -> HeaderValue {
    HeaderValue::from(age)
}

/// What an allocation of `n` bytes takes from the binary's allocator: mimalloc rounds a request
/// up to one of four sizes per power of two (a 14,452-byte body takes 16,384). Counting that
/// keeps `max_bytes` a bound on resident memory for large bodies too.
fn allocated(n: usize) -> usize {
    if n <= 64 {
        return n.next_multiple_of(8);
    }
    let step = (1usize << n.ilog2()) / 4;
    n.next_multiple_of(step)
}

// === impl CacheStatus ===

impl CacheStatus {
    /// Stable lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit | Self::HitRecentlyRevalidated | Self::HitNoCacheRefused => "hit",
            Self::SharedHit => "shared_hit",
            Self::Forwarded { stored: false, .. } | Self::TooLarge | Self::Bypass => "bypass",
            Self::Forwarded {
                collapsed: true, ..
            } => "coalesced",
            Self::Forwarded { fwd: Fwd::Miss, .. } => "miss",
            Self::Forwarded { .. } => "revalidated",
            Self::Stale(_) => "stale",
            Self::StaleIfError(_) => "stale_if_error",
        }
    }

    /// The RFC 9211 `Cache-Status` value, `ttl` being the remaining freshness in seconds.
    pub fn header_value(self, ttl: i128) -> HeaderValue {
        if let Self::Hit = self {
            // Every plain hit: no heap string.
            let text = format_args!("packages-proxy; hit; ttl={ttl}");
            return crate::header_value::format(text, "packages-proxy");
        }
        let text = match self {
            Self::Hit => format!("packages-proxy; hit; ttl={ttl}"),
            Self::HitNoCacheRefused => {
                format!("packages-proxy; hit; ttl={ttl}; detail=no-cache-not-sent")
            }
            Self::HitRecentlyRevalidated => {
                format!("packages-proxy; hit; ttl={ttl}; detail=revalidated-recently")
            }
            Self::SharedHit => format!("packages-proxy; hit; ttl={ttl}; detail=shared"),
            Self::Forwarded {
                fwd,
                fwd_status,
                collapsed,
                stored,
            } => {
                let fwd = match fwd {
                    Fwd::Miss => "miss",
                    Fwd::Stale => "stale",
                    Fwd::Request => "request",
                };
                let collapsed = if collapsed { "; collapsed" } else { "" };
                let stored = if stored { "; stored" } else { "" };
                format!("packages-proxy; fwd={fwd}; fwd-status={fwd_status}{stored}{collapsed}")
            }
            Self::Stale(why) => {
                let detail = match why {
                    StaleWhy::Revalidating => "stale-while-revalidate".to_owned(),
                    StaleWhy::Reserve => "stale-rate-limit-reserve".to_owned(),
                    StaleWhy::BackingOff(kind) => format!("stale-backing-off-{}", kind.as_str()),
                };
                format!("packages-proxy; hit; ttl={ttl}; detail={detail}")
            }
            Self::StaleIfError(reason) => {
                // `fwd` only when the upstream was really asked for this key.
                let (fwd, detail) = match reason {
                    ErrorReason::Timeout => ("; fwd=stale".to_owned(), "timeout".to_owned()),
                    ErrorReason::Unreachable => {
                        ("; fwd=stale".to_owned(), "unreachable".to_owned())
                    }
                    ErrorReason::RateLimited(status) => (
                        format!("; fwd=stale; fwd-status={status}"),
                        "rate-limited".to_owned(),
                    ),
                    ErrorReason::ServerError(status) => (
                        format!("; fwd=stale; fwd-status={status}"),
                        "server-error".to_owned(),
                    ),
                    ErrorReason::BackingOff(kind) => {
                        (String::new(), format!("backing-off-{}", kind.as_str()))
                    }
                    ErrorReason::Reserve => (String::new(), "rate-limit-reserve".to_owned()),
                };
                format!("packages-proxy; hit; ttl={ttl}{fwd}; detail=stale-if-error-{detail}")
            }
            Self::TooLarge => "packages-proxy; fwd=miss; detail=too-large".to_owned(),
            Self::Bypass => "packages-proxy; fwd=bypass".to_owned(),
        };
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("packages-proxy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(stored: &[(&'static str, &'static str)]) -> Entry {
        let mut map = HeaderMap::new();
        for (name, value) in stored {
            map.append(*name, HeaderValue::from_static(value));
        }
        Entry {
            status: StatusCode::OK,
            headers: StoredHeaders::new(&map),
            body: Bytes::from_static(b"[]"),
            etag: None,
            fetched_at: Instant::now(),
            fetched_wall: std::time::SystemTime::now(),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn stored_headers_hide_the_answer_slots_and_drop_slot_names() {
        let entry = entry(&[
            ("content-type", "application/json"),
            ("vary", "Accept"),
            ("vary", "Authorization"),
            ("age", "999"),
            ("x-request-id", "upstream-id"),
        ]);
        let headers = &entry.headers;
        assert_eq!(headers.len(), 3);
        let names: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("content-type", "application/json"),
                ("vary", "Accept"),
                ("vary", "Authorization")
            ]
        );
        assert!(headers.get(&header::AGE).is_none());
        assert!(!headers.contains_key(&X_REQUEST_ID));
        assert!(headers.contains_key(&header::VARY));
        assert_eq!(headers.to_map().len(), 3);
        assert_eq!(StoredHeaders::new(&headers.to_map()).len(), 3);
    }

    #[test]
    fn filling_slots_replaces_them_in_place_and_inserts_what_has_none() {
        let entry = entry(&[("content-type", "application/json")]);
        let response = entry.respond(CacheStatus::Hit, entry.fetched_at, false);
        let mut headers = response.headers().clone();
        let fill = || {
            (
                (Slot::RequestId, HeaderValue::from_static("id-1")),
                (Slot::OAuthScopes, HeaderValue::from_static("read:packages")),
            )
        };
        let (first, second) = fill();
        fill_slots(&mut headers, first, second);
        assert_eq!(headers.len(), 5);
        assert_eq!(headers["x-request-id"], "id-1");
        assert_eq!(headers["x-oauth-scopes"], "read:packages");
        assert_eq!(headers.get_all("x-request-id").iter().count(), 1);

        let mut elsewhere = HeaderMap::new();
        elsewhere.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let (first, second) = fill();
        fill_slots(&mut elsewhere, first, second);
        assert_eq!(elsewhere.len(), 3);
        assert_eq!(elsewhere["x-request-id"], "id-1");
        assert_eq!(elsewhere["x-oauth-scopes"], "read:packages");

        // Entries where the slots would be, under other names: kept, and the slots inserted.
        let mut others = HeaderMap::new();
        for name in ["a", "b", "c", "d", "e"] {
            others.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("kept"),
            );
        }
        let (first, second) = fill();
        fill_slots(&mut others, first, second);
        assert_eq!(others.len(), 7);
        assert!(
            ["a", "b", "c", "d", "e"]
                .iter()
                .all(|name| others[*name] == "kept")
        );
        assert_eq!(others["x-request-id"], "id-1");
        assert_eq!(others["x-oauth-scopes"], "read:packages");
    }

    #[test]
    fn an_answer_fills_age_and_cache_status_and_leaves_the_walk_its_slots() {
        let entry = entry(&[("content-type", "application/json"), ("etag", "W/\"a\"")]);
        let now = entry.fetched_at + Duration::from_secs(5);
        let response = entry.respond(CacheStatus::Hit, now, false);
        let headers = response.headers();
        assert_eq!(headers["age"], "5");
        assert_eq!(headers["cache-status"], "packages-proxy; hit; ttl=55");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.contains_key(X_REQUEST_ID) && headers.contains_key(X_OAUTH_SCOPES));
        assert_eq!(headers.len(), 6);

        let not_modified = entry.respond(CacheStatus::Hit, now, true);
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert!(!not_modified.headers().contains_key(header::CONTENT_TYPE));
        assert_eq!(not_modified.headers()["etag"], "W/\"a\"");
    }

    #[test]
    fn hit_values_follow_age_and_ttl_through_the_memo() {
        let values = |age, ttl| {
            let (a, s) = hit_values(age, ttl);
            (
                a.to_str().unwrap().to_owned(),
                s.to_str().unwrap().to_owned(),
            )
        };
        let first = ("0".to_owned(), "packages-proxy; hit; ttl=60".to_owned());
        assert_eq!(values(0, 60), first);
        assert_eq!(values(0, 60), first);
        assert_eq!(
            values(1, 59),
            ("1".to_owned(), "packages-proxy; hit; ttl=59".to_owned())
        );
        assert_eq!(
            values(1, 3599),
            ("1".to_owned(), "packages-proxy; hit; ttl=3599".to_owned())
        );
        assert_eq!(values(0, 60), first);
    }

    #[test]
    fn allocations_round_up_to_four_sizes_per_power_of_two() {
        assert_eq!(allocated(0), 0);
        assert_eq!(allocated(5), 8);
        assert_eq!(allocated(494), 512);
        assert_eq!(allocated(8_192), 8_192);
        assert_eq!(allocated(8_193), 10_240);
        assert_eq!(allocated(14_452), 16_384);
    }
}
