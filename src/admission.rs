//! Admission: the one place that decides whether a request may cost the org token anything, and
//! who pays for it.
//!
//! Every request the proxy sends to GitHub needs a [`Ticket`], and [`Upstream::send`] takes one:
//! only [`admit`] issues them, after checking, in this order,
//!
//! 1. the back-off (any kind GitHub reported, on this replica or announced by the fleet):
//!    refused with GitHub's own rate-limit answer ([`ProxyError::BackingOff`]);
//! 2. the reserve: below it, the proxy's own background work is refused (clients' requests are
//!    not: the reserve is kept for them);
//! 3. the payer's quota: a client's `upstream_per_minute` (fleet-wide in Redis when the shared
//!    tier is up, this replica's share of it otherwise). The proxy's own work charges no client.
//!
//! So "every upstream request is charged once" holds by construction: misses, revalidations a
//! client forced, pass-through reads, each page of the fresh tag read before a delete (dry runs
//! and refused deletes included), registry reads and the mutation itself all get their ticket
//! here. Joining a fetch already under way needs none; an answer that turned out to come from
//! another replica (the shared tier's L2) gives its ticket back with [`Ticket::refund`], and a
//! ticket dropped before its request was sent (refused, or its client hung up while it waited)
//! gives its charge back on drop.
//!
//! Cache hits are charged to the client's hit quota by [`charge_hit`], also here.
//!
//! [`Upstream::send`]: crate::upstream::Upstream::send

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::{
    error::ProxyError, error::limit::BucketSnapshot, quota::ClientLimits, shared::Shared,
    state::AppState,
};

/// Who pays for an upstream request.
#[derive(Debug, Clone)]
pub enum Payer {
    /// A client, with its quotas.
    Client {
        /// The client's name (metrics, the fleet-wide bucket's key).
        name: Arc<str>,
        /// Its quotas.
        limits: Arc<ClientLimits>,
    },
    /// The proxy itself: background revalidation, start-up reconciliation. Charges no client
    /// and is refused below the reserve.
    Proxy,
}

/// Why a request goes to GitHub (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A cache miss, or a read the cache does not keep.
    Read,
    /// A revalidation a client asked for (`no-cache`).
    Revalidate,
    /// The proxy's own revalidation of a stale entry.
    Background,
    /// A fresh read a safety check needs before a mutation (protected tags, the image guard).
    Check,
    /// The delete or restore itself.
    Mutation,
}

/// Proof that a request to GitHub was admitted and paid for. `Upstream::send` takes one, so no
/// path to GitHub goes around [`admit`].
///
/// The charge is spent when `Upstream::send` puts the request on the wire ([`Ticket::spend`]).
/// A ticket dropped before that gives its charge back, whichever way its request ended: a
/// refusal before sending, an error on the way, or a client that hung up while its request
/// waited for an upstream slot (the request's future is dropped with the ticket in it). Only
/// requests GitHub was sent cost their payer anything.
#[derive(Debug)]
#[must_use = "a ticket is paid for; use it for a request or refund it"]
pub struct Ticket {
    /// Taken out when the charge is given back, so it is given back once.
    charge: Mutex<Option<Charge>>,
    /// The share of the upstream slots its request waits for: the paying client's. The proxy's
    /// background revalidations have one of their own ([`BACKGROUND_SHARE`]): clients' stale
    /// reads start them, and without a share one client polling many stale keys held every slot
    /// through them. The proxy's other reads (a delete's second look at its target, the
    /// reconciliation of an intent) take none: they must not wait behind background work.
    share: Option<Arc<str>>,
}

#[derive(Debug)]
enum Charge {
    /// The proxy's own work.
    Proxy,
    /// This replica's bucket of the client.
    Local(Arc<ClientLimits>),
    /// The fleet-wide bucket of the client in Redis.
    Fleet {
        name: Arc<str>,
        limits: Arc<ClientLimits>,
        shared: Arc<Shared>,
    },
}

/// Whether the token may be spent on work of this kind now, without charging anybody: `Err`
/// says why not (the cache then serves a stale answer instead, if it has one).
pub fn may_spend(state: &AppState, work: Work) -> Result<(), ProxyError> {
    let rate_limit = &state.upstream.rate_limit;
    if let Some(backoff) = rate_limit.backoff() {
        let limit = rate_limit.snapshot().limit;
        return Err(ProxyError::BackingOff(backoff.answer(limit)));
    }
    if work == Work::Background && rate_limit.below_reserve() {
        return Err(ProxyError::ReserveKept);
    }
    Ok(())
}

/// True while the proxy saves the token: a back-off is open or the rate limit is below the reserve.
/// Cached answers that are usable stale are then served instead of going upstream.
pub fn saving(state: &AppState) -> bool {
    // `may_spend(state, Work::Background).is_err()`, under one lock: every hit asks.
    state.upstream.rate_limit.saving()
}

/// The share of the proxy's background revalidations: parentheses are in no client's name.
const BACKGROUND_SHARE: &str = "(proxy)";

/// Admits one request to GitHub and charges it to `payer`.
pub async fn admit(state: &AppState, payer: &Payer, work: Work) -> Result<Ticket, ProxyError> {
    may_spend(state, work)?;
    let charge = match payer {
        Payer::Proxy => Charge::Proxy,
        Payer::Client { name, limits } => charge_client(state, name, limits).await?,
    };
    let who = match payer {
        Payer::Proxy => "proxy",
        Payer::Client { name, .. } => name,
    };
    crate::metrics::charged(who, work.as_str());
    let share = match payer {
        Payer::Proxy => (work == Work::Background).then(|| Arc::from(BACKGROUND_SHARE)),
        Payer::Client { name, .. } => Some(name.clone()),
    };
    Ok(Ticket {
        charge: Mutex::new(Some(charge)),
        share,
    })
}

/// Takes one request that needs GitHub from the client's quota: fleet-wide in Redis when the
/// shared tier is up, else from this replica's bucket.
async fn charge_client(
    state: &AppState,
    name: &Arc<str>,
    limits: &Arc<ClientLimits>,
) -> Result<Charge, ProxyError> {
    let spent = |snapshot| ProxyError::Quota {
        message: "This client's quota of requests that need GitHub is spent; retry later",
        resource: "proxy-upstream",
        snapshot,
    };
    if let Some(shared) = state.shared.as_ref().filter(|s| s.is_up())
        && let Ok(result) = shared
            .take(name, "upstream", limits.quota.upstream_per_minute)
            .await
    {
        return result
            .map(|_| Charge::Fleet {
                name: name.clone(),
                limits: limits.clone(),
                shared: shared.clone(),
            })
            .map_err(spent);
    }
    limits
        .upstream
        .take(Instant::now())
        .map(|()| Charge::Local(limits.clone()))
        .map_err(spent)
}

/// Charges one cache hit, answered at `now`, to the client's hit quota.
pub fn charge_hit(limits: &ClientLimits, now: Instant) -> Result<(), ProxyError> {
    limits
        .hits
        .take(now)
        .map_err(|snapshot: BucketSnapshot| ProxyError::Quota {
            message: "This client's quota of cached reads is spent; retry later",
            resource: "proxy-hits",
            snapshot,
        })
}

// === impl Ticket ===

impl Ticket {
    /// Gives the charge back: the request was not sent (the answer came from another replica
    /// through the shared tier, or another request's fetch was joined after all).
    pub async fn refund(self) {
        if let Some(charge) = self.take() {
            charge.give_back().await;
        }
    }

    /// Gives the charge back from where the ticket is only borrowed: [`Upstream::send`] refused
    /// before sending (a back-off opened while the request waited for an upstream slot, or the
    /// upstream queue was full). A fleet-wide refund runs in a task of its own.
    ///
    /// [`Upstream::send`]: crate::upstream::Upstream::send
    pub(crate) fn refund_unsent(&self) {
        if let Some(charge) = self.take() {
            charge.give_back_now();
        }
    }

    /// Keeps the charge for good: the request is about to be sent ([`Upstream::send`] calls it
    /// right before its first attempt; retries are part of the same request).
    ///
    /// [`Upstream::send`]: crate::upstream::Upstream::send
    pub(crate) fn spend(&self) {
        drop(self.take());
    }

    /// Whether its charge was spent ([`Ticket::spend`]: the request was put on the wire) or
    /// given back.
    pub(crate) fn is_settled(&self) -> bool {
        self.charge
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .is_none()
    }

    /// The share of the upstream slots its request waits for, if any.
    pub(crate) fn share(&self) -> Option<&Arc<str>> {
        self.share.as_ref()
    }

    fn take(&self) -> Option<Charge> {
        self.charge
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let charge = self
            .charge
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(charge) = charge {
            charge.give_back_now();
        }
    }
}

// === impl Charge ===

impl Charge {
    /// Gives the charge back without waiting: a fleet-wide refund runs in a task of its own
    /// (none outside a runtime, at the very end of a shutdown: the refund is best effort).
    fn give_back_now(self) {
        match self {
            Self::Proxy => {}
            Self::Local(limits) => limits.upstream.give_back(),
            charge @ Self::Fleet { .. } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(charge.give_back());
                }
            }
        }
    }

    async fn give_back(self) {
        match self {
            Self::Proxy => {}
            Self::Local(limits) => limits.upstream.give_back(),
            Self::Fleet {
                name,
                limits,
                shared,
            } => {
                // Redis failing since the charge loses the refund: the local bucket was not
                // charged, so it gets nothing.
                let per_minute = limits.quota.upstream_per_minute;
                let _ = shared.refund(&name, "upstream", per_minute).await;
            }
        }
    }
}

// === impl Work ===

impl Work {
    /// Stable name for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Revalidate => "revalidate",
            Self::Background => "background",
            Self::Check => "check",
            Self::Mutation => "mutation",
        }
    }
}

// === impl Payer ===

impl Payer {
    /// The client paying, from its identity.
    pub fn client(name: &Arc<str>, limits: &Arc<ClientLimits>) -> Self {
        Self::Client {
            name: name.clone(),
            limits: limits.clone(),
        }
    }
}
