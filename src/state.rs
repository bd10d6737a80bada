//! `AppState`: what every request shares.
//!
//! Fixed parts (config, upstream client, org token inside it) are plain fields; the client table
//! lives in an `ArcSwap` so a reload can replace it without a lock on the request path.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::{
    audit::{Audit, AuditError},
    auth::Clients,
    cache::Cache,
    config::Config,
    pace::{Pacer, PerClient},
    policy::Policy,
    ratelimit::RateLimit,
    registry::Registry,
    secret::OrgToken,
    shared::{Replica, Shared},
    upstream::{BuildError, Upstream},
};

/// Why the shared state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The upstream client.
    #[error(transparent)]
    Upstream(#[from] BuildError),
    /// The audit log is not writable.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The Redis URL does not parse.
    #[error("invalid shared.redis_url")]
    Shared(#[source] redis::RedisError),
}

/// Shared by every connection and request.
#[derive(Debug)]
pub struct AppState {
    /// The validated config this process started with.
    pub(crate) config: Config,
    /// The bases answers' URLs are rewritten onto: where clients reach us (`server.public_url`,
    /// or `http://` (`https://` with `[server.tls]`) and the bound address), and that plus
    /// `/api/v3` for clients that use GHES paths. Shared: a request clones a pointer.
    pub(crate) public_bases: [Arc<str>; 2],
    /// The one upstream client, holding the org token.
    pub(crate) upstream: Upstream,
    /// The container registry client of the multi-arch guard (its own manifest cache inside).
    pub(crate) registry: Registry,
    /// The metadata cache (also when disabled: then it is never asked).
    pub(crate) cache: Cache,
    /// The Redis tier, when `[shared] redis_url` is set.
    pub(crate) shared: Option<Arc<Shared>>,
    /// Clients, swapped whole on reload; `load()` per request, never held across an await.
    pub(crate) clients: ArcSwap<Clients>,
    /// The destructive-call policy, swapped whole on reload; `load_full()` where it lives across
    /// an await.
    pub(crate) policy: ArcSwap<Policy>,
    /// The write-ahead audit log.
    pub(crate) audit: Audit,
    /// The one queue mutations go upstream through.
    pub(crate) pacer: Pacer,
    /// Each client's mutations queued or in flight.
    pub(crate) per_client: Arc<PerClient>,
    /// Audit records that could not be written (refusals and outcomes; intents refuse the call).
    pub(crate) audit_failures: AtomicU64,
    /// Config reloads applied.
    pub(crate) reloads_ok: AtomicU64,
    /// Moves on (`Release`, after both swaps) whenever the clients and policy are reloaded:
    /// connections' [`crate::auth::AuthMemo`]s made under an older one are not used.
    pub(crate) credentials_generation: AtomicU64,
    /// Config reloads rejected (the last good config stays).
    pub(crate) reloads_failed: AtomicU64,
    /// Set when shutdown starts: `/readyz` fails so load balancers stop sending.
    /// An atomic: read on every readiness probe, written once.
    draining: AtomicBool,
    /// Request ids: a random per-process prefix and a counter (unique without a syscall).
    request_prefix: String,
    request_counter: AtomicU64,
}

// === impl AppState ===

impl AppState {
    /// Builds the shared state from a validated config and the loaded org token.
    pub fn new(
        config: Config,
        token: OrgToken,
        bound: SocketAddr,
    ) -> Result<Arc<Self>, StateError> {
        crate::metrics::handle(); // installed before the first metric is recorded
        crate::metrics::spawn_upkeep();
        let registry = Registry::new(&config.registry, token.clone())?;
        let upstream = Upstream::new(&config.upstream, token)?;
        let clients = ArcSwap::from_pointee(Clients::new(&config.clients, None, config.replicas()));
        let cache = Cache::new(&config.cache);
        let shared = match &config.shared {
            Some(shared) => Some(Arc::new(Shared::new(shared).map_err(StateError::Shared)?)),
            None => None,
        };
        let policy = ArcSwap::new(config.policy.clone());
        let audit = Audit::open(config.mutations.audit_log.as_deref())?;
        let m = &config.mutations;
        let pacer = Pacer::new(m.pace, m.max_queue, m.max_queue_wait);
        if config.shared.is_some() && config.server.public_url.is_none() {
            // Answers are shared through Redis under their public URL (it is in their URLs and
            // their cache key): replicas each defaulting to their own address never share one.
            tracing::warn!(
                "[shared] is set but server.public_url is not: set it to the address clients use \
                 (the load balancer's), the same on every replica, or they share no cached answers"
            );
        }
        let public_url = config.server.public_url.clone().unwrap_or_else(|| {
            let scheme = if config.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{bound}")
        });
        let mut seed = [0u8; 4];
        // A fixed prefix is still unique per process start thanks to the counter; randomness only
        // keeps ids distinct across replicas.
        let _ = getrandom::fill(&mut seed);
        let public_bases = [
            Arc::from(public_url.as_str()),
            Arc::from(format!("{public_url}/api/v3")),
        ];
        let state = Arc::new(Self {
            config,
            public_bases,
            upstream,
            registry,
            cache,
            shared,
            clients,
            policy,
            audit,
            pacer,
            per_client: Arc::default(),
            audit_failures: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            credentials_generation: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            request_prefix: hex::encode(seed),
            request_counter: AtomicU64::new(0),
        });
        // The shared tier's tasks hold only a weak reference: they end with the state.
        if let Some(shared) = &state.shared {
            shared.spawn(Arc::<AppState>::downgrade(&state));
        }
        Ok(state)
    }

    /// Marks the process as draining; readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once shutdown started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The Redis tier, when `[shared] redis_url` is set. Public for tests of its fleet-wide
    /// protocol (the owned fetch lock), which no socket of one replica shows.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// A new request id.
    pub fn next_request_id(&self) -> HeaderValue {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        request_id(&self.request_prefix, n)
    }
}

/// `{prefix}-{n:x}`, written by hand: `fmt` cost more than the rest of the id. A prefix past 40
/// bytes (never: it is 8 random bytes in hex) is cut.
fn request_id(prefix: &str, n: u64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 64];
    let prefix = &prefix.as_bytes()[..prefix.len().min(40)];
    text[..prefix.len()].copy_from_slice(prefix);
    text[prefix.len()] = b'-';
    let start = prefix.len() + 1;
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in text[start..start + digits].iter_mut().enumerate() {
        *slot = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text[..start + digits])
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The parts the shared tier keeps in step with the fleet.
impl Replica for AppState {
    fn cache(&self) -> &Cache {
        &self.cache
    }

    fn rate_limit(&self) -> &RateLimit {
        &self.upstream.rate_limit
    }

    fn longest_send(&self) -> std::time::Duration {
        self.config.upstream.timeout
    }

    fn budget_debts(&self) -> Vec<crate::shared::BudgetDebt> {
        self.policy.load().budget_debts()
    }

    fn last_send_within_pace(&self) -> Option<std::time::Duration> {
        self.pacer.last_send_within_pace()
    }
}

#[cfg(test)]
mod tests {
    use super::request_id;

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_hex() {
        assert_eq!(request_id("aa996398", 0), "aa996398-0");
        assert_eq!(request_id("aa996398", 0x1f), "aa996398-1f");
        assert_eq!(request_id("p", u64::MAX), "p-ffffffffffffffff");
        assert_eq!(request_id("p", 1 << 60), "p-1000000000000000");
    }
}
