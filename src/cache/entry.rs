//! A cached answer, how fresh it is, and how it is served (`Age`, RFC 9211 `Cache-Status`).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use tokio::time::Instant;

use crate::body::{self, Body};

/// Per-entry memory beyond payload and headers: the `Arc<Entry>`, moka's node and access-order
/// bookkeeping, and allocator slack (measured, see `weight`).
const ENTRY_OVERHEAD: usize = 1536;

/// One upstream answer, buffered once and shared by every hit (the body is refcounted `Bytes`,
/// the headers are already filtered and `Link`-rewritten).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The upstream status (200 or 404 when cached; anything when only shared with waiters).
    pub status: StatusCode,
    /// Response headers to send, without `Age` and `Cache-Status`.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The upstream `ETag`, used to revalidate.
    pub etag: Option<HeaderValue>,
    /// When the upstream last confirmed this answer (200 or 304).
    pub fetched_at: Instant,
    /// The same moment on the wall clock, for the shared tier (replicas share no monotonic clock).
    pub fetched_wall: std::time::SystemTime,
    /// How long it is fresh.
    pub ttl: Duration,
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

/// Why a stale answer was served instead of the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream could not be reached or broke the connection.
    Unreachable,
    /// The upstream rate-limited the org token (403/429).
    RateLimited(u16),
    /// The upstream answered 5xx.
    ServerError(u16),
}

/// What the cache did for a request: feeds metrics and the `Cache-Status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from memory, fresh.
    Hit,
    /// Fetched from upstream and stored.
    Miss,
    /// Not in this replica's memory, but fresh in the shared tier (another replica fetched it).
    SharedHit,
    /// Waited for another request's identical upstream fetch.
    Coalesced,
    /// Was stale (or the client asked `no-cache`); the upstream confirmed or replaced it.
    Revalidated,
    /// Served stale while a background revalidation runs.
    Stale,
    /// Served stale because the upstream failed or rate-limited us.
    StaleIfError(ErrorReason),
    /// Not cacheable (uncacheable status, cache disabled): passed through.
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
        let total = self.body.len() + headers + tables + 2 * key.len() + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// True when the client's `If-None-Match` names this entry's ETag (weak comparison).
    pub fn matches(&self, if_none_match: &HeaderValue) -> bool {
        let Some(etag) = &self.etag else { return false };
        let strip = |s: &[u8]| -> Vec<u8> { s.strip_prefix(b"W/").unwrap_or(s).to_vec() };
        let ours = strip(etag.as_bytes());
        if_none_match
            .as_bytes()
            .split(|b| *b == b',')
            .map(|tag| tag.trim_ascii())
            .any(|tag| tag == b"*" || strip(tag) == ours)
    }

    /// The response for a client: `304` with no body when `not_modified`.
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
        let headers = response.headers_mut();
        *headers = self.headers.clone();
        if not_modified {
            headers.remove(header::CONTENT_TYPE);
        }
        let age = self.age(now).as_secs();
        headers.insert(header::AGE, HeaderValue::from(age));
        let ttl = i128::from(self.ttl.as_secs() as u32) - i128::from(age as u32);
        headers.insert("cache-status", status.header_value(ttl));
        response
    }
}

// === impl CacheStatus ===

impl CacheStatus {
    /// Stable lower-case name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::SharedHit => "shared_hit",
            Self::Coalesced => "coalesced",
            Self::Revalidated => "revalidated",
            Self::Stale => "stale",
            Self::StaleIfError(_) => "stale_if_error",
            Self::Bypass => "bypass",
        }
    }

    /// The RFC 9211 `Cache-Status` value, `ttl` being the remaining freshness in seconds.
    pub fn header_value(self, ttl: i128) -> HeaderValue {
        let text = match self {
            Self::Hit => format!("packages-proxy; hit; ttl={ttl}"),
            Self::Miss => "packages-proxy; fwd=miss; stored".to_owned(),
            Self::SharedHit => format!("packages-proxy; hit; ttl={ttl}; detail=shared"),
            Self::Coalesced => "packages-proxy; fwd=miss; collapsed".to_owned(),
            Self::Revalidated => "packages-proxy; fwd=stale; stored".to_owned(),
            Self::Stale => format!("packages-proxy; hit; ttl={ttl}; detail=stale-while-revalidate"),
            Self::StaleIfError(reason) => {
                let (status, detail) = match reason {
                    ErrorReason::Timeout => (None, "timeout"),
                    ErrorReason::Unreachable => (None, "unreachable"),
                    ErrorReason::RateLimited(status) => (Some(status), "rate-limited"),
                    ErrorReason::ServerError(status) => (Some(status), "server-error"),
                };
                let status = status
                    .map(|s| format!("; fwd-status={s}"))
                    .unwrap_or_default();
                format!(
                    "packages-proxy; hit; ttl={ttl}; fwd=stale{status}; detail=stale-if-error-{detail}"
                )
            }
            Self::Bypass => "packages-proxy; fwd=uri-miss".to_owned(),
        };
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("packages-proxy"))
    }
}
