//! The primary rate limit: one `core` bucket for the simulator's single token.

use super::RateLimitSnapshot;
use super::clock;

/// Length of GitHub's primary rate limit window.
const WINDOW_SECS: u64 = 3_600;

/// Requests left in the current window. Lives behind the simulator's mutex.
#[derive(Debug)]
pub(super) struct RateLimiter {
    limit: u64,
    remaining: u64,
    /// Epoch seconds at which the window ends and `remaining` refills.
    reset: u64,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// A full bucket whose window ends an hour from now.
    pub(super) fn new(limit: u64) -> Self {
        Self {
            limit,
            remaining: limit,
            reset: clock::now_epoch() + WINDOW_SECS,
        }
    }

    /// The current state, after refilling the bucket if its window has passed.
    pub(super) fn snapshot(&mut self) -> RateLimitSnapshot {
        let now = clock::now_epoch();
        if now >= self.reset {
            self.remaining = self.limit;
            self.reset = now + WINDOW_SECS;
        }
        RateLimitSnapshot {
            limit: self.limit,
            remaining: self.remaining,
            used: self.limit - self.remaining,
            reset: self.reset,
        }
    }

    /// Leaves `remaining` requests in a window that ends `secs` from now (a token another tool
    /// has been draining).
    pub(super) fn set_window(&mut self, remaining: u64, secs: u64) {
        self.remaining = remaining.min(self.limit);
        self.reset = clock::now_epoch() + secs;
    }

    /// Counts one request against the bucket.
    pub(super) fn consume(&mut self) {
        self.remaining = self.remaining.saturating_sub(1);
    }
}
