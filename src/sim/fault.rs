//! Injected faults: upstream misbehaviour a proxy must survive.
//!
//! Tests queue faults on a running simulator with `SimHandle::inject`. Each fault applies to the
//! next `times` authenticated requests, in FIFO order, before normal handling.

use std::collections::VecDeque;
use std::time::Duration;

use http::StatusCode;

/// One queued fault: what goes wrong and for how many requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What happens to the affected requests.
    pub kind: FaultKind,
    /// How many consecutive requests it affects (0 affects none).
    pub times: u32,
}

/// The kinds of misbehaviour the simulator can produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status (e.g. 500, 502, 503) and a GitHub-shaped error body.
    Status(StatusCode),
    /// Sleep this long, then handle the request normally.
    Latency(Duration),
    /// Handle the request normally, then send the answer this long later: it shows the state as
    /// it was when the request arrived (a change made meanwhile is not in it).
    SlowAnswer(Duration),
    /// Drop the connection without answering; the client sees a reset or incomplete message.
    Reset,
    /// 403 with `x-ratelimit-remaining: 0` and GitHub's primary rate limit message.
    PrimaryRateLimit,
    /// `status` (403 or 429) with `retry-after` and GitHub's secondary rate limit message.
    SecondaryRateLimit {
        /// 403 or 429: GitHub uses both.
        status: StatusCode,
        /// Value of the `retry-after` header, in seconds.
        retry_after_secs: u64,
    },
    /// `fault`, answered after `delay` (limits met by requests that were in flight together).
    Delayed {
        /// The answer.
        fault: Box<FaultKind>,
        /// How long before it.
        delay: Duration,
    },
    /// `status` (403 or 429) with GitHub's secondary rate limit message and *no* `retry-after`
    /// (GitHub then asks for at least a minute's wait).
    SecondaryRateLimitWithoutRetryAfter {
        /// 403 or 429.
        status: StatusCode,
    },
}

/// FIFO of pending faults with their remaining counts.
#[derive(Debug, Default)]
pub(super) struct FaultQueue {
    pending: VecDeque<Fault>,
}

// === impl Fault ===

impl Fault {
    /// A fault of `kind` for the next `times` requests.
    pub fn new(kind: FaultKind, times: u32) -> Self {
        Self { kind, times }
    }
}

// === impl FaultQueue ===

impl FaultQueue {
    /// Appends a fault; a fault with `times == 0` is dropped.
    pub(super) fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.pending.push_back(fault);
        }
    }

    /// Forgets every pending fault.
    pub(super) fn clear(&mut self) {
        self.pending.clear();
    }

    /// The fault for the current request, if any, using up one of its `times`.
    pub(super) fn take(&mut self) -> Option<FaultKind> {
        let front = self.pending.front_mut()?;
        front.times -= 1;
        let kind = front.kind.clone();
        if front.times == 0 {
            self.pending.pop_front();
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_in_order_for_their_count() {
        let mut queue = FaultQueue::default();
        queue.push(Fault::new(FaultKind::Reset, 2));
        queue.push(Fault::new(FaultKind::PrimaryRateLimit, 0));
        queue.push(Fault::new(FaultKind::Status(StatusCode::BAD_GATEWAY), 1));
        assert_eq!(queue.take(), Some(FaultKind::Reset));
        assert_eq!(queue.take(), Some(FaultKind::Reset));
        assert_eq!(
            queue.take(),
            Some(FaultKind::Status(StatusCode::BAD_GATEWAY))
        );
        assert_eq!(queue.take(), None);
    }
}
