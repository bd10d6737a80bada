//! An in-process simulation of GitHub's Packages REST API, used as the upstream in tests,
//! benchmarks and the `simulate` demo.
//!
//! Map of the module:
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Simulator`] (builder) and [`SimHandle`] (running server, inspection) |
//! | `dataset.rs` | [`Dataset`]: owners, packages, versions; sample and generated data |
//! | `fault.rs` | [`Fault`] and [`FaultKind`]: injected misbehaviour |
//! | `server.rs` | accept loop, one task per connection, shutdown |
//! | `handler.rs` | one request: log, auth, faults, API version, rate limit, ETag |
//! | `api.rs` | the 27 Packages operations against the dataset |
//! | `route.rs` | raw path to typed route; `%2F` in package names |
//! | `paging.rs` | `page`/`per_page` and the `Link` header (numeric-id URLs, as GitHub writes them) |
//! | `render.rs` | JSON bodies in the spec's shapes |
//! | `reply.rs` | a response before the common headers are added |
//! | `state.rs` | state shared by every connection |
//! | `registry.rs` | the registry side: `/v2/.../manifests/...`, the token flow, generated manifests, registry faults |
//! | `ratelimit.rs`, `clock.rs` | primary rate limit bucket; timestamps |
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use packages_proxy::sim::{Dataset, Simulator};
//! let sim = Simulator::new("ghp_test").dataset(Dataset::sample()).run().await?;
//! println!("upstream at {}", sim.base_url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```

mod api;
mod clock;
mod dataset;
mod fault;
mod handler;
mod paging;
mod ratelimit;
mod registry;
mod render;
mod reply;
mod route;
mod server;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use dataset::{Dataset, OwnerKind};
pub use fault::{Fault, FaultKind};
pub use registry::RegistryFault;

use state::SimState;

/// GitHub's primary rate limit for a user's classic PAT.
const DEFAULT_RATE_LIMIT: u64 = 5_000;

/// Builder for a simulator; [`Simulator::run`] starts it.
pub struct Simulator {
    token: String,
    dataset: Dataset,
    authenticated_as: String,
    rate_limit: u64,
}

/// Handle to a running simulator. Clones share one server; dropping them does not stop it,
/// [`SimHandle::shutdown`] does.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    state: Arc<SimState>,
    addr: SocketAddr,
    /// The accept loop; taken by the first `shutdown`. A std mutex: never held across `.await`.
    task: Mutex<Option<JoinHandle<()>>>,
}

/// One request as it arrived, recorded before auth and faults.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// Request method.
    pub method: http::Method,
    /// The path exactly as received on the wire, still percent-encoded
    /// (e.g. `/orgs/acme/packages/container/base%2Fruntime`).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// All request headers, `Authorization` included.
    pub headers: http::HeaderMap,
    /// When the request arrived.
    pub at: Instant,
}

/// The primary (`core`) rate limit state, as the `x-ratelimit-*` headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitSnapshot {
    /// Requests allowed per window (`x-ratelimit-limit`).
    pub limit: u64,
    /// Requests left in this window (`x-ratelimit-remaining`).
    pub remaining: u64,
    /// Requests counted in this window (`x-ratelimit-used`).
    pub used: u64,
    /// End of the window, epoch seconds (`x-ratelimit-reset`).
    pub reset: u64,
}

// === impl Simulator ===

impl Simulator {
    /// A simulator accepting `Authorization: Bearer <token>` or `token <token>`, with an empty
    /// dataset; the token belongs to user "octocat".
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            dataset: Dataset::new(),
            authenticated_as: "octocat".to_owned(),
            rate_limit: DEFAULT_RATE_LIMIT,
        }
    }

    /// The orgs, users and packages to serve.
    pub fn dataset(mut self, dataset: Dataset) -> Self {
        self.dataset = dataset;
        self
    }

    /// The user the token belongs to; `/user/...` routes act as this user, who must be a user in
    /// the dataset for them to find anything.
    pub fn authenticated_as(mut self, login: impl Into<String>) -> Self {
        self.authenticated_as = login.into();
        self
    }

    /// Requests per hour before the primary rate limit answers 403 (default 5000, as GitHub).
    pub fn rate_limit(mut self, limit: u64) -> Self {
        self.rate_limit = limit;
        self
    }

    /// Binds `127.0.0.1:0` and serves in a spawned tokio task.
    pub async fn run(self) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        self.run_on(listener).await
    }

    /// Serves on a listener the caller bound (used by `packages-proxy simulate --listen ADDR`).
    pub async fn run_on(self, listener: TcpListener) -> std::io::Result<SimHandle> {
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(
            self.token,
            self.authenticated_as,
            base_url(addr),
            self.dataset,
            self.rate_limit,
        ));
        let task = tokio::spawn(server::serve(listener, Arc::clone(&state)));
        let inner = HandleInner {
            state,
            addr,
            task: Mutex::new(Some(task)),
        };
        Ok(SimHandle {
            inner: Arc::new(inner),
        })
    }
}

/// `http://ADDR`, with an unspecified bind address replaced by loopback so the URL is usable.
fn base_url(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

// === impl SimHandle ===

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash); also the origin of `Link` and `url` values.
    pub fn base_url(&self) -> String {
        self.inner.state.base_url.clone()
    }

    /// Every request received, in arrival order, rejected and faulted ones included.
    pub fn log(&self) -> Vec<LoggedRequest> {
        self.inner.state.log_snapshot()
    }

    /// Forgets the request log.
    pub fn clear_log(&self) {
        self.inner.state.clear_log();
    }

    /// Queues a fault for the next `fault.times` authenticated requests (FIFO after earlier ones).
    pub fn inject(&self, fault: Fault) {
        self.inner.state.faults().push(fault);
    }

    /// Queues a registry fault (`/v2/...`, `/token`) for the next `times` registry requests.
    pub fn inject_registry(&self, fault: RegistryFault, times: u32) {
        self.inner.state.registry_faults().push(fault, times);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.inner.state.faults().clear();
    }

    /// The primary rate limit state now.
    pub fn rate_limit(&self) -> RateLimitSnapshot {
        self.inner.state.rate().snapshot()
    }

    /// Leaves `remaining` requests of the primary rate limit in a window that resets `secs`
    /// from now. At zero, every authenticated request until then gets GitHub's 403 with
    /// `x-ratelimit-remaining: 0`.
    pub fn set_rate_window(&self, remaining: u64, secs: u64) {
        self.inner.state.rate().set_window(remaining, secs);
    }

    /// The highest number of requests handled at once since start.
    pub fn max_in_flight(&self) -> usize {
        self.inner.state.max_in_flight()
    }

    /// `Some(true)` if that version exists and is deleted, `Some(false)` if active, `None` if the
    /// owner, package or version is unknown. Ignores whether the package itself is deleted.
    pub fn version_deleted(
        &self,
        owner: &str,
        package_type: &str,
        package_name: &str,
        version_id: u64,
    ) -> Option<bool> {
        let data = self.inner.state.read_data();
        let owner = data.find_owner(owner)?;
        let pkg = &data.packages[data.package_index(owner.id, package_type, package_name)?];
        Some(pkg.version(version_id)?.deleted_at.is_some())
    }

    /// Replaces a container version's tags, as a push that moves tags onto or off it does;
    /// `false` if the owner, package or version is unknown.
    pub fn set_tags(
        &self,
        owner: &str,
        package_type: &str,
        package_name: &str,
        version_id: u64,
        tags: &[&str],
    ) -> bool {
        let mut data = self.inner.state.write_data();
        let Some(owner) = data.find_owner(owner).map(|o| o.id) else {
            return false;
        };
        let Some(at) = data.package_index(owner, package_type, package_name) else {
            return false;
        };
        let versions = &mut data.packages[at].versions;
        let Ok(i) = versions.binary_search_by(|v| version_id.cmp(&v.id)) else {
            return false;
        };
        versions[i].tags = Some(tags.iter().map(|t| (*t).to_owned()).collect());
        true
    }

    /// `Some(true)` if that package exists and is deleted, `Some(false)` if active, `None` if unknown.
    pub fn package_deleted(
        &self,
        owner: &str,
        package_type: &str,
        package_name: &str,
    ) -> Option<bool> {
        let data = self.inner.state.read_data();
        let owner = data.find_owner(owner)?;
        let at = data.package_index(owner.id, package_type, package_name)?;
        Some(data.packages[at].deleted)
    }

    /// Stops accepting, closes open connections and ends the server task.
    pub async fn shutdown(self) {
        self.inner.state.shutdown();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // A panic in the accept loop is already reported by tokio; nothing to add here.
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("token", &"<redacted>")
            .field("authenticated_as", &self.authenticated_as)
            .field("rate_limit", &self.rate_limit)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}
