//! What a client is told when a limit refuses it, in GitHub's words: the `x-ratelimit-*`
//! headers of a client's own quota ([`BucketSnapshot`]) and GitHub's answer to a rate-limited
//! request while the org token backs off ([`LimitAnswer`]).
//!
//! Plain data below `quota` and `ratelimit`, which fill it in, so that
//! [`ProxyError`](super::ProxyError) can carry it without importing either.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};

/// The resource the Packages API is counted against.
pub const CORE: &str = "core";

/// Which limit GitHub reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackoffKind {
    /// The primary limit is spent (`x-ratelimit-remaining: 0`): wait for the reset.
    Primary,
    /// A secondary limit (403 or 429 saying so): wait `retry-after`, or at least a minute.
    Secondary,
    /// A 429 (GitHub's other status for secondary limits): wait `retry-after`, or at least a
    /// minute.
    TooManyRequests,
    /// A 429 reporting a spent primary limit (`x-ratelimit-remaining: 0`, no `retry-after`):
    /// wait for the reset, answered 429 as GitHub did.
    PrimaryTooManyRequests,
}

/// A bucket's state as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSnapshot {
    /// Capacity.
    pub limit: u64,
    /// Whole tokens left.
    pub remaining: u64,
    /// Epoch second when the bucket is full again.
    pub reset: u64,
    /// Until the next token, when empty.
    pub retry_after: Duration,
}

/// What a client is told while the proxy backs off: GitHub's own answer to a rate-limited
/// request (403 or 429 with `x-ratelimit-*`, `retry-after` for secondary limits), so GitHub's
/// clients (Octokit's throttling plugin, githubkit) wait for the end and retry instead of giving
/// up as they do on a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitAnswer {
    /// What opened the back-off.
    pub kind: BackoffKind,
    /// Whole seconds until it ends.
    pub retry_after_secs: u64,
    /// Its end, epoch seconds (`x-ratelimit-reset`).
    pub reset: u64,
    /// The token's `x-ratelimit-limit`, if GitHub said.
    pub limit: Option<u64>,
}

// === impl BackoffKind ===

impl BackoffKind {
    /// Stable name for metrics, logs and the fleet's messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
            Self::TooManyRequests => "too_many_requests",
            Self::PrimaryTooManyRequests => "primary_too_many_requests",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Every kind, for metrics.
    pub const ALL: [Self; 4] = [
        Self::Primary,
        Self::Secondary,
        Self::TooManyRequests,
        Self::PrimaryTooManyRequests,
    ];
}

// === impl BucketSnapshot ===

impl BucketSnapshot {
    /// Writes GitHub's `x-ratelimit-*` headers describing this bucket as `resource`.
    pub fn write_headers(&self, headers: &mut HeaderMap, resource: &'static str) {
        let used = self.limit.saturating_sub(self.remaining);
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset));
        headers.insert("x-ratelimit-used", HeaderValue::from(used));
        headers.insert("x-ratelimit-resource", HeaderValue::from_static(resource));
    }
}

// === impl LimitAnswer ===

impl LimitAnswer {
    /// 403 as GitHub answers a spent primary or a secondary limit; 429 when GitHub said 429.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            BackoffKind::Primary | BackoffKind::Secondary => StatusCode::FORBIDDEN,
            BackoffKind::TooManyRequests | BackoffKind::PrimaryTooManyRequests => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// GitHub's wording (clients match "rate limit exceeded" and "secondary rate limit"), and
    /// that the proxy's shared token is what waits.
    pub fn message(&self) -> String {
        let secs = self.retry_after_secs;
        match self.kind {
            BackoffKind::Primary | BackoffKind::PrimaryTooManyRequests => format!(
                "API rate limit exceeded for the shared GitHub token of packages-proxy; it sends \
                 nothing to GitHub until the limit resets in {secs} s (x-ratelimit-reset)"
            ),
            BackoffKind::Secondary | BackoffKind::TooManyRequests => format!(
                "You have exceeded a secondary rate limit: GitHub asked the shared token of \
                 packages-proxy to slow down; it sends nothing to GitHub for {secs} s \
                 (retry-after)"
            ),
        }
    }

    /// GitHub's docs page for the kind.
    pub fn documentation_url(&self) -> &'static str {
        match self.kind {
            BackoffKind::Primary | BackoffKind::PrimaryTooManyRequests => {
                "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-primary-rate-limits"
            }
            _ => {
                "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits"
            }
        }
    }

    /// `x-ratelimit-*` (and `retry-after` for secondary limits and 429s) as GitHub sends them.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        if let Some(limit) = self.limit {
            headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
            headers.insert("x-ratelimit-used", HeaderValue::from(limit));
        }
        headers.insert("x-ratelimit-remaining", HeaderValue::from(0u64));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset));
        headers.insert("x-ratelimit-resource", HeaderValue::from_static(CORE));
        // GitHub sends none with a spent primary limit; a 429 gets one all the same (some
        // clients read only `retry-after` on a 429), saying the same wait as the reset.
        if self.kind != BackoffKind::Primary {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs),
            );
        }
    }
}
