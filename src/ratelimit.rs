//! The org token's rate limit as GitHub reports it: what the `x-ratelimit-*` headers last said
//! (per `x-ratelimit-resource`), the reserve below which the proxy stops spending on background
//! work, and the global back-off that opens when GitHub says "slow down".
//!
//! The state follows time: once GitHub's `x-ratelimit-reset` instant has passed, the window it
//! described is over, so the reserve no longer applies and background revalidation resumes
//! without any client request having to bring a fresh figure first. A back-off ends by itself at
//! its deadline.
//!
//! Every kind of limit opens a back-off ([`BackoffKind`]): the primary limit at zero (until the
//! reset), a secondary limit with `retry-after` (that long) or without it (at least a minute,
//! growing on repeats, as GitHub's docs ask), and a 429 with or without `retry-after`. During a
//! back-off *nothing* is sent upstream (`Upstream::send` and the admission point refuse before
//! sending), so one replica cannot keep hammering a token GitHub is about to block.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::{sync::mpsc, time::Instant};

use crate::error::limit::{BackoffKind, CORE, LimitAnswer};

/// Longest exponential back-off when GitHub gives no hint.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long after a back-off ends its strikes still double the next one.
const STRIKES_FORGOTTEN_AFTER: Duration = MAX_BACKOFF;
/// Longest back-off honoured from GitHub's headers (a primary reset is at most an hour away);
/// also keeps `Instant` arithmetic far from overflow whatever the upstream sends.
const MAX_HONOURED: Duration = Duration::from_secs(2 * 3600);
/// First back-off when GitHub gives no hint (GitHub asks for at least a minute).
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// Shortest primary back-off, whatever `x-ratelimit-reset` says.
const MIN_PRIMARY: Duration = Duration::from_secs(5);
/// GitHub's primary rate-limit window.
const WINDOW: Duration = Duration::from_secs(3600);
/// Resources remembered at most (GitHub reports a handful; a hostile upstream cannot grow this).
const MAX_RESOURCES: usize = 8;

/// An open back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// What opened it.
    pub kind: BackoffKind,
    /// When it ends (monotonic).
    pub until: Instant,
    /// When it ends (wall clock, for `x-ratelimit-reset` and the fleet).
    pub until_wall: SystemTime,
    /// Limits without `retry-after` met in a row when it opened (its wait doubles with each):
    /// shared with the fleet, so repeats met through other replicas double it too.
    pub strikes: u32,
}

/// The org token's rate limit as this replica knows it. A std `Mutex`: a handful of field
/// updates per upstream response, never held across an `.await`.
#[derive(Debug)]
pub struct RateLimit {
    reserve: f64,
    state: Mutex<State>,
    /// True while [`RateLimit::saving`] last found nothing to save and nobody has taken the lock
    /// since: every cache hit asks, and then answers without the lock (shared by every
    /// connection). Taking the lock for anything else clears it.
    quiet: AtomicBool,
    /// Where a back-off this replica opens is announced (the shared tier tells the fleet).
    announce: OnceLock<mpsc::UnboundedSender<Backoff>>,
}

#[derive(Debug, Default)]
struct State {
    /// One window per `x-ratelimit-resource` (requests without the header count as `core`).
    windows: Vec<(String, Window)>,
    backoff: Option<Backoff>,
    /// Back-offs without a hint in a row; reset by a success after the back-off.
    strikes: u32,
}

/// What GitHub last said about one resource's window.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    limit: Option<u64>,
    remaining: Option<u64>,
    used: Option<u64>,
    /// Epoch seconds when the window ends.
    reset: Option<u64>,
}

/// What the rate limit looks like now (for metrics, logs and answers to clients).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    /// `x-ratelimit-limit`.
    pub limit: Option<u64>,
    /// `x-ratelimit-remaining` (the full limit again once the window's reset has passed).
    pub remaining: Option<u64>,
    /// `x-ratelimit-used`.
    pub used: Option<u64>,
    /// `x-ratelimit-reset` (epoch seconds).
    pub reset: Option<u64>,
    /// Time left in a back-off.
    pub backoff: Option<Duration>,
    /// The open back-off's kind.
    pub backoff_kind: Option<BackoffKind>,
}

/// Marks an upstream answer that reports a rate limit (a response extension): never cached, and
/// a stale answer or the back-off's own answer is preferred to it. Its kind is the open
/// back-off's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited;

// === impl Backoff ===

impl Backoff {
    /// Time left (zero once over).
    pub fn remaining(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// Whole seconds a client should wait (at least one).
    pub fn retry_after_secs(&self) -> u64 {
        (self.remaining().as_secs_f64().ceil() as u64).max(1)
    }

    /// The end as epoch seconds, rounded up (a client waking at `reset` must find it over).
    pub fn reset_epoch(&self) -> u64 {
        let ms = self
            .until_wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// What a client is told while it is open; `limit` is the token's `x-ratelimit-limit`.
    pub fn answer(&self, limit: Option<u64>) -> LimitAnswer {
        LimitAnswer {
            kind: self.kind,
            retry_after_secs: self.retry_after_secs(),
            reset: self.reset_epoch(),
            limit,
        }
    }
}

// === impl RateLimit ===

impl RateLimit {
    /// A rate limit that keeps `reserve` (a fraction of the limit) for misses and mutations.
    pub fn new(reserve: f64) -> Self {
        Self {
            reserve,
            state: Mutex::new(State::default()),
            quiet: AtomicBool::new(false),
            announce: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Whoever takes the lock may change what `saving` would say.
        self.quiet.store(false, Ordering::Relaxed);
        state
    }

    /// Reads an upstream answer's rate-limit headers and opens a back-off when GitHub asks.
    /// `says_secondary`: the body carries GitHub's "secondary rate limit" wording (the caller
    /// read it; headers alone cannot tell a secondary limit without `retry-after` from any other
    /// 403). Returns the limit the answer reports, if it is a rate-limit answer.
    pub fn observe(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        says_secondary: bool,
    ) -> Option<RateLimited> {
        let number =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let resource = headers
            .get("x-ratelimit-resource")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 32 && v.bytes().all(|b| b.is_ascii_graphic()))
            .unwrap_or(CORE);
        let remaining = number("x-ratelimit-remaining");
        // GitHub's window is an hour: a reset further away (a hostile or broken upstream), or
        // figures without one, are taken to end an hour after they were heard, so neither can
        // keep the reserve (and background revalidation) switched off for good.
        let window_end = now_epoch() + WINDOW.as_secs();
        let reset_heard = number("x-ratelimit-reset").map(|reset| reset.min(window_end));
        let reset_heard = reset_heard.or_else(|| (remaining.is_some()).then_some(window_end));
        let mut state = self.lock();
        if let Some(window) = state.window(resource) {
            let fields = [
                (&mut window.limit, number("x-ratelimit-limit")),
                (&mut window.remaining, remaining),
                (&mut window.used, number("x-ratelimit-used")),
                (&mut window.reset, reset_heard),
            ];
            for (field, value) in fields {
                if value.is_some() {
                    *field = value;
                }
            }
        }
        let reset = state.window(resource).and_then(|w| w.reset);
        // Answers to requests that were in flight together are one episode, not repeats: a
        // strike counts only once the previous back-off has ended.
        let hinted = |state: &mut State| match retry_after {
            Some(secs) => Duration::from_secs(secs.max(1)),
            None if state.backoff.is_some_and(|b| b.until > Instant::now()) => {
                FIRST_BACKOFF.saturating_mul(1 << state.strikes.saturating_sub(1).min(4))
            }
            None => exponential(state),
        };
        let forbidden = status == StatusCode::FORBIDDEN;
        let too_many = status == StatusCode::TOO_MANY_REQUESTS;
        // GitHub's own status is kept: a 429 is answered 429, whatever limit it reports.
        let kind_of = |otherwise: BackoffKind| match (too_many, otherwise) {
            (true, BackoffKind::Primary) => BackoffKind::PrimaryTooManyRequests,
            (true, _) => BackoffKind::TooManyRequests,
            (false, kind) => kind,
        };
        let (kind, wait) = if (forbidden || too_many) && retry_after.is_some() {
            // `retry-after` first, as GitHub asks (NOTES §6), even beside a spent primary count:
            // a 403 with it is how GitHub words a secondary limit's wait.
            (kind_of(BackoffKind::Secondary), hinted(&mut state))
        } else if remaining == Some(0) && !says_secondary {
            // Spent, whatever the status: the next request would be refused. Half a second of margin
            // (clocks differ), and a floor: a reset already past by our clock (skew, or a window
            // GitHub has not rolled yet) must not become a request a second to a spent token.
            let wait = (until_epoch(reset) + Duration::from_millis(500)).max(MIN_PRIMARY);
            (kind_of(BackoffKind::Primary), wait)
        } else if too_many || (forbidden && says_secondary) {
            let kind = if too_many {
                BackoffKind::TooManyRequests
            } else {
                BackoffKind::Secondary
            };
            let mut wait = hinted(&mut state);
            // Only a reset GitHub sent with this answer: one assumed an hour away must not
            // stretch a secondary limit's minute into an hour.
            if remaining == Some(0) && number("x-ratelimit-reset").is_some() {
                // Spent too: without `retry-after`, GitHub's order (NOTES §6) is the reset next,
                // and a minute (doubling) before it would only meet the spent count again.
                wait = wait.max(until_epoch(reset) + Duration::from_millis(500));
            }
            (kind, wait)
        } else {
            if (status.is_success() || status == StatusCode::NOT_MODIFIED)
                && state.backoff.is_none_or(|b| b.until <= Instant::now())
            {
                state.strikes = 0;
            }
            return None;
        };
        let opened = open(&mut state, kind, wait);
        drop(state);
        if let Some(backoff) = opened {
            self.announce(backoff);
        }
        Some(RateLimited)
    }

    /// Announces back-offs this replica opens to `sender` (set once, by the shared tier).
    pub fn announce_to(&self, sender: mpsc::UnboundedSender<Backoff>) {
        let _ = self.announce.set(sender);
    }

    fn announce(&self, backoff: Backoff) {
        if let Some(sender) = self.announce.get() {
            let _ = sender.send(backoff);
        }
    }

    /// Applies a back-off another replica opened (not announced again), with the strikes it
    /// counted: the next limit without `retry-after`, met here, waits twice as long.
    pub fn open_until(&self, until: SystemTime, kind: BackoffKind, strikes: u32) {
        let mut state = self.lock();
        state.strikes = state.strikes.max(strikes);
        if let Ok(wait) = until.duration_since(SystemTime::now()) {
            let _ = open(&mut state, kind, wait);
        }
    }

    /// The open back-off, if any.
    pub fn backoff(&self) -> Option<Backoff> {
        self.lock()
            .backoff
            .filter(|backoff| backoff.until > Instant::now())
    }

    /// Time left in the back-off, if one is open.
    pub fn backoff_remaining(&self) -> Option<Duration> {
        self.backoff().map(|backoff| backoff.remaining())
    }

    /// True when what remains of the primary limit is below the reserve and the window GitHub
    /// reported has not yet reset.
    pub fn below_reserve(&self) -> bool {
        self.lock().below_reserve(self.reserve)
    }

    /// A back-off is open or the `core` window is below the reserve: the proxy saves the token.
    /// One lock for both, as every cache hit asks.
    pub fn saving(&self) -> bool {
        // Nothing opens a back-off or lowers the remaining count but a change under the lock,
        // which clears `quiet`; time alone only ends them.
        if self.quiet.load(Ordering::Acquire) {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let saving = state.backoff.is_some_and(|b| b.until > Instant::now())
            || state.below_reserve(self.reserve);
        if !saving {
            self.quiet.store(true, Ordering::Release);
        }
        saving
    }

    /// The current numbers of the `core` resource.
    pub fn snapshot(&self) -> RateLimitSnapshot {
        let backoff = self.backoff();
        let mut state = self.lock();
        let window = state.window(CORE).copied().unwrap_or_default();
        let reset_passed = window.reset.is_some_and(|reset| reset <= now_epoch());
        let (remaining, used) = if reset_passed {
            (window.limit, Some(0))
        } else {
            (window.remaining, window.used)
        };
        RateLimitSnapshot {
            limit: window.limit,
            remaining,
            used,
            reset: window.reset,
            backoff: backoff.map(|b| b.remaining()),
            backoff_kind: backoff.map(|b| b.kind),
        }
    }

    /// GitHub's `x-ratelimit-*` headers describing the org token now, as a client would see them
    /// from GitHub: during a back-off, `remaining: 0` and the back-off's end as `reset`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let snapshot = self.snapshot();
        let backoff = self.backoff();
        let (remaining, reset) = match backoff {
            Some(backoff) => (Some(0), Some(backoff.reset_epoch())),
            None => (snapshot.remaining, snapshot.reset),
        };
        let used = match (backoff, snapshot.limit) {
            (Some(_), Some(limit)) => Some(limit),
            _ => snapshot.used,
        };
        let fields = [
            ("x-ratelimit-limit", snapshot.limit),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset", reset),
            ("x-ratelimit-used", used),
        ];
        for (name, value) in fields {
            match value {
                Some(value) => {
                    headers.insert(name, HeaderValue::from(value));
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        headers.insert("x-ratelimit-resource", HeaderValue::from_static(CORE));
    }
}

// === impl State ===

impl State {
    /// The window of `resource`, created on first sight (bounded: past the cap, unknown
    /// resources are not tracked).
    /// The `core` window's remaining requests are below `reserve` (a fraction of its limit).
    fn below_reserve(&mut self, reserve: f64) -> bool {
        let Some(window) = self.window(CORE).copied() else {
            return false;
        };
        if window.reset.is_some_and(|reset| reset <= now_epoch()) {
            return false; // a new window began: its figures are not known yet, but full
        }
        match (window.limit, window.remaining) {
            (Some(limit), Some(remaining)) => (remaining as f64) < (limit as f64) * reserve,
            _ => false,
        }
    }

    fn window(&mut self, resource: &str) -> Option<&mut Window> {
        let at = match self.windows.iter().position(|(name, _)| name == resource) {
            Some(at) => at,
            None if self.windows.len() < MAX_RESOURCES => {
                self.windows.push((resource.to_owned(), Window::default()));
                self.windows.len() - 1
            }
            None => return None,
        };
        Some(&mut self.windows[at].1)
    }
}

/// Opens or extends the back-off; the new one when it changed.
fn open(state: &mut State, kind: BackoffKind, wait: Duration) -> Option<Backoff> {
    let wait = wait.min(MAX_HONOURED);
    let until = Instant::now() + wait;
    let current = state.backoff.filter(|b| b.until > Instant::now());
    if current.is_some_and(|current| until <= current.until + Duration::from_millis(50)) {
        return None;
    }
    tracing::warn!(
        seconds = wait.as_secs(),
        kind = kind.as_str(),
        "GitHub rate limit: backing off; no upstream requests until it ends"
    );
    crate::metrics::backoff_opened(kind.as_str());
    let backoff = Backoff {
        kind,
        until,
        until_wall: SystemTime::now() + wait,
        strikes: state.strikes,
    };
    state.backoff = Some(backoff);
    Some(backoff)
}

fn exponential(state: &mut State) -> Duration {
    // A limit met long after the last back-off ended starts a new series, at a minute again:
    // strikes (this replica's, or heard from the fleet) are not kept for ever.
    if state
        .backoff
        .is_some_and(|b| b.until + STRIKES_FORGOTTEN_AFTER <= Instant::now())
    {
        state.strikes = 0;
    }
    let wait = FIRST_BACKOFF
        .saturating_mul(1 << state.strikes.min(4))
        .min(MAX_BACKOFF);
    state.strikes += 1;
    wait
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Time until a Unix epoch second, to the millisecond (zero if past; a minute if unknown).
fn until_epoch(reset: Option<u64>) -> Duration {
    let Some(reset) = reset else {
        return FIRST_BACKOFF;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(reset).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    /// How long the open back-off still lasts.
    fn open_for(rate_limit: &RateLimit) -> Duration {
        let backoff = rate_limit.backoff().expect("a back-off");
        backoff
            .until_wall
            .duration_since(SystemTime::now())
            .unwrap()
    }

    #[test]
    fn saving_sees_every_change_after_answering_without_the_lock() {
        let rate_limit = RateLimit::new(0.1);
        assert!(!rate_limit.saving());
        assert!(!rate_limit.saving(), "the quiet answer");
        // Below the reserve: 100 of 5,000 left, the window ends in the future.
        let low = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "100"),
            ("x-ratelimit-reset", "99999999999"),
        ]);
        rate_limit.observe(StatusCode::OK, &low, false);
        assert!(rate_limit.saving());
        let high = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4000"),
            ("x-ratelimit-reset", "99999999999"),
        ]);
        rate_limit.observe(StatusCode::OK, &high, false);
        assert!(!rate_limit.saving());
        assert!(!rate_limit.saving(), "quiet again");
        // A secondary limit opens a back-off.
        let limited = headers(&[("retry-after", "60")]);
        rate_limit.observe(StatusCode::TOO_MANY_REQUESTS, &limited, true);
        assert!(rate_limit.saving());
    }

    // Found by a hostile review: strikes were counted per replica, so behind a round-robin load
    // balancer repeated secondary limits met through other replicas never doubled the wait,
    // and the fleet probed a limited token every minute. A fleet back-off carries its strikes.
    #[test]
    fn strikes_heard_from_the_fleet_double_the_next_wait() {
        let secondary = headers(&[("x-ratelimit-remaining", "4000")]);
        let wait_after = |rate_limit: &RateLimit| {
            rate_limit.observe(StatusCode::FORBIDDEN, &secondary, true);
            open_for(rate_limit)
        };
        let alone = RateLimit::new(0.1);
        assert!(wait_after(&alone) <= FIRST_BACKOFF);
        // Another replica's episode, already over: its strikes stay.
        let told = RateLimit::new(0.1);
        told.open_until(
            SystemTime::now() - Duration::from_secs(1),
            BackoffKind::Secondary,
            1,
        );
        assert!(told.backoff().is_none());
        let wait = wait_after(&told);
        assert!(
            wait > FIRST_BACKOFF && wait <= 2 * FIRST_BACKOFF,
            "{wait:?}"
        );
        assert_eq!(told.backoff().unwrap().strikes, 2);
    }

    #[test]
    fn strikes_are_forgotten_long_after_the_last_back_off() {
        let rate_limit = RateLimit::new(0.1);
        let Some(long_ago) = Instant::now().checked_sub(STRIKES_FORGOTTEN_AFTER * 2) else {
            return; // a clock this young cannot say "long ago"
        };
        {
            let mut state = rate_limit.lock();
            state.strikes = 4;
            state.backoff = Some(Backoff {
                kind: BackoffKind::Secondary,
                until: long_ago,
                until_wall: SystemTime::now() - STRIKES_FORGOTTEN_AFTER * 2,
                strikes: 4,
            });
        }
        let secondary = headers(&[("x-ratelimit-remaining", "4000")]);
        rate_limit.observe(StatusCode::FORBIDDEN, &secondary, true);
        let wait = open_for(&rate_limit);
        assert!(wait <= FIRST_BACKOFF, "{wait:?}");
    }

    #[test]
    fn a_spent_secondary_without_a_reset_waits_a_minute_not_an_hour() {
        let rate_limit = RateLimit::new(0.1);
        let spent = headers(&[("x-ratelimit-remaining", "0")]);
        rate_limit.observe(StatusCode::FORBIDDEN, &spent, true);
        let wait = open_for(&rate_limit);
        assert!(wait <= FIRST_BACKOFF, "{wait:?}");
    }
}
