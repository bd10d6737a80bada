//! The org token's upstream budget: what GitHub's `x-ratelimit-*` headers last said, the reserve
//! below which the proxy stops spending on background work, and the global back-off that opens
//! when GitHub says "slow down" (primary limit at zero, secondary limit, `retry-after`).
//!
//! During a back-off *nothing* is sent upstream (`Upstream::send` refuses before sending), so
//! one replica cannot keep hammering a token GitHub is about to block.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, StatusCode, header};
use tokio::{sync::mpsc, time::Instant};

/// Longest exponential back-off when GitHub gives no hint.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Longest back-off honoured from GitHub's headers (a primary reset is at most an hour away);
/// also keeps `Instant` arithmetic far from overflow whatever the upstream sends.
const MAX_HONOURED: Duration = Duration::from_secs(2 * 3600);
/// First back-off when GitHub gives no hint (GitHub asks for at least a minute).
const FIRST_BACKOFF: Duration = Duration::from_secs(60);

/// Shared upstream budget state. A std `Mutex`: a handful of field updates per upstream
/// response, never held across an `.await`.
#[derive(Debug)]
pub struct UpstreamBudget {
    reserve: f64,
    state: Mutex<State>,
    /// Where a back-off this replica opens is announced (the shared tier tells the fleet).
    announce: OnceLock<mpsc::UnboundedSender<SystemTime>>,
}

#[derive(Debug, Default)]
struct State {
    limit: Option<u64>,
    remaining: Option<u64>,
    used: Option<u64>,
    reset: Option<u64>,
    backoff_until: Option<Instant>,
    strikes: u32,
}

/// What the budget looks like now (for metrics and logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetSnapshot {
    /// `x-ratelimit-limit`.
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining`.
    pub remaining: Option<u64>,
    /// `x-ratelimit-reset` (epoch seconds).
    pub reset: Option<u64>,
    /// Time left in a back-off.
    pub backoff: Option<Duration>,
}

// === impl UpstreamBudget ===

impl UpstreamBudget {
    /// A budget that keeps `reserve` (a fraction of the limit) for misses and mutations.
    pub fn new(reserve: f64) -> Self {
        Self {
            reserve,
            state: Mutex::new(State::default()),
            announce: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads an upstream response's rate-limit headers and opens a back-off when GitHub asks.
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        let number =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut state = self.lock();
        if let Some(limit) = number("x-ratelimit-limit") {
            state.limit = Some(limit);
        }
        let remaining = number("x-ratelimit-remaining");
        if remaining.is_some() {
            state.remaining = remaining;
        }
        if let Some(used) = number("x-ratelimit-used") {
            state.used = Some(used);
        }
        if let Some(reset) = number("x-ratelimit-reset") {
            state.reset = Some(reset);
        }
        let limited = status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS;
        let wait = if let (true, Some(secs)) = (limited, retry_after) {
            Some(Duration::from_secs(secs.clamp(1, MAX_HONOURED.as_secs())))
        } else if remaining == Some(0) {
            Some(until_epoch(state.reset).max(Duration::from_secs(1)))
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            Some(exponential(&mut state))
        } else {
            None
        };
        match wait {
            Some(wait) if open(&mut state, wait) => {
                drop(state);
                self.announce(wait);
            }
            Some(_) => {}
            None if status.is_success() || status == StatusCode::NOT_MODIFIED => state.strikes = 0,
            None => {}
        }
    }

    /// Announces back-offs this replica opens to `sender` (set once, by the shared tier).
    pub fn announce_to(&self, sender: mpsc::UnboundedSender<SystemTime>) {
        let _ = self.announce.set(sender);
    }

    fn announce(&self, wait: Duration) {
        if let Some(sender) = self.announce.get() {
            let _ = sender.send(SystemTime::now() + wait);
        }
    }

    /// Applies a back-off another replica opened (not announced again).
    pub fn open_until(&self, until: SystemTime) {
        if let Ok(wait) = until.duration_since(SystemTime::now()) {
            let _ = open(&mut self.lock(), wait);
        }
    }

    /// A 403 whose body says "secondary rate limit" but that carried no `retry-after`.
    pub fn observe_secondary_limit(&self) {
        let mut state = self.lock();
        let wait = exponential(&mut state);
        if open(&mut state, wait) {
            drop(state);
            self.announce(wait);
        }
    }

    /// Time left in the back-off, if one is open.
    pub fn backoff_remaining(&self) -> Option<Duration> {
        let state = self.lock();
        let until = state.backoff_until?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// True when the remaining primary budget is below the reserve.
    pub fn below_reserve(&self) -> bool {
        let state = self.lock();
        match (state.limit, state.remaining) {
            (Some(limit), Some(remaining)) => (remaining as f64) < (limit as f64) * self.reserve,
            _ => false,
        }
    }

    /// The current numbers.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let backoff = self.backoff_remaining();
        let state = self.lock();
        BudgetSnapshot {
            limit: state.limit,
            remaining: state.remaining,
            reset: state.reset,
            backoff,
        }
    }
}

/// Opens or extends the back-off; true when it changed.
fn open(state: &mut State, wait: Duration) -> bool {
    let wait = wait.min(MAX_HONOURED);
    let until = Instant::now() + wait;
    if state
        .backoff_until
        .is_none_or(|current| current + Duration::from_millis(50) < until)
    {
        tracing::warn!(
            seconds = wait.as_secs(),
            "GitHub rate limit: backing off; no upstream requests until it ends"
        );
        state.backoff_until = Some(until);
        return true;
    }
    false
}

fn exponential(state: &mut State) -> Duration {
    let wait = FIRST_BACKOFF
        .saturating_mul(1 << state.strikes.min(4))
        .min(MAX_BACKOFF);
    state.strikes += 1;
    wait
}

/// Time until a Unix epoch second (zero if past or unknown: then a minute).
fn until_epoch(reset: Option<u64>) -> Duration {
    let Some(reset) = reset else {
        return FIRST_BACKOFF;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Duration::from_secs(reset.saturating_sub(now))
}
