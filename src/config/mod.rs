//! Configuration: raw TOML structs with documented defaults, validated into [`Config`].
//!
//! Unknown keys are errors (`deny_unknown_fields`), and every validation error names its key, so a
//! typo never silently falls back to a default. The config says where the org token is
//! (`token_env` or `token_file`), never its value. `config/example.toml` documents every key.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use crate::{
    policy::Policy,
    secret::{OrgToken, TokenError, TokenHash},
};
use tls::{CertFingerprint, TlsConfig, TlsError};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys or wrong types.
    #[error("invalid config")]
    Parse(#[source] toml::de::Error),
    /// A key has a value we cannot use.
    #[error("invalid config: `{field}`: {reason}")]
    Invalid {
        /// The key, dotted (`upstream.base_url`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `[server.tls]` file cannot be used (`server.tls.cert_file`, ...).
    #[error("invalid config: `{field}`")]
    Tls {
        /// The key naming the file.
        field: String,
        /// Why.
        #[source]
        source: TlsError,
    },
}

mod raw;
pub mod tls;

// === validated config ===

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listener.
    pub server: ServerConfig,
    /// GitHub (or the simulator).
    pub upstream: UpstreamConfig,
    /// Who may use the proxy.
    pub clients: Vec<Client>,
    /// The metadata cache.
    pub cache: CacheConfig,
    /// Who may delete and restore what (swapped whole on reload).
    pub policy: Arc<Policy>,
    /// How destructive calls are sent: pace, queue, audit log.
    pub mutations: MutationsConfig,
    /// The Redis tier replicas share (cache L2, pace, quotas, back-off, invalidation).
    pub shared: Option<SharedConfig>,
    /// The container registry the multi-arch guard reads image manifests from.
    pub registry: RegistryConfig,
    /// Logging.
    pub log: LogConfig,
    /// The separate policy file, if the rules live in one (reload watches it too).
    pub policy_file: Option<PathBuf>,
}

/// `[shared]`, when `redis_url` is set.
#[derive(Clone)]
pub struct SharedConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// Replicas in the fleet: while Redis is down each replica takes 1/replicas of a quota.
    pub replicas: u32,
    /// Prefix of every Redis key and channel (several fleets can share one Redis).
    pub key_prefix: String,
    /// How long a replica may hold a key's fetch lock; waiters fetch themselves after it.
    pub lock_ttl: Duration,
    /// Longest wait for one Redis command before treating the tier as down.
    pub timeout: Duration,
}

impl std::fmt::Debug for SharedConfig {
    // The URL may carry a password: show only what follows the last `@`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.redis_url.rsplit('@').next().unwrap_or_default();
        f.debug_struct("SharedConfig")
            .field("redis", &host)
            .field("replicas", &self.replicas)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// `[registry]`: where the multi-arch guard reads image manifests (OCI distribution API).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Scheme and authority, e.g. `https://ghcr.io` (GHES: `https://containers.HOST`).
    pub origin: String,
    /// Path prefix before `/v2/`, usually empty.
    pub prefix: String,
    /// Whether `http://` is allowed (the simulator only).
    pub allow_plain_http: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest time for one registry request, body included.
    pub timeout: Duration,
    /// Bound on the bytes of parsed manifests kept (they are content-addressed: never stale).
    pub manifest_cache_bytes: u64,
    /// Registry requests one delete decision may make (token fetches included); past it, 422.
    pub max_reads_per_decision: u32,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A level or `tracing` filter; `RUST_LOG`, when set, wins.
    pub level: String,
    /// JSON lines instead of text.
    pub json: bool,
}

/// `[mutations]`
#[derive(Debug, Clone)]
pub struct MutationsConfig {
    /// Least time between two mutating calls upstream (GitHub asks for one second).
    pub pace: Duration,
    /// Mutations waiting for their slot at most; past it, 429.
    pub max_queue: usize,
    /// Longest wait for a slot; a later slot is refused with 429 and `Retry-After`.
    pub max_queue_wait: Duration,
    /// Mutations one client may have queued or in flight at once, so one job cannot fill the
    /// queue (and its minutes of pace) for every team.
    pub max_queue_per_client: usize,
    /// Append-only JSON Lines audit log; required once any allow rule exists.
    pub audit_log: Option<PathBuf>,
    /// The window `max_per_hour` budgets refill over (one hour; shorter only in tests).
    pub budget_window: Duration,
    /// Most pages of 100 versions a safety check reads for one whole-package delete (each page
    /// is an upstream request charged to the client); a larger package is refused with 422.
    pub max_check_pages: u32,
}

/// `[cache]`
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Whether GET answers are cached at all.
    pub enabled: bool,
    /// Bound on cached bytes (bodies, headers and keys).
    pub max_bytes: u64,
    /// Answers larger than this are passed through but not cached.
    pub max_entry_bytes: u64,
    /// Freshness of package lists and Docker conflict lists.
    pub package_lists_ttl: Duration,
    /// Freshness of a single package.
    pub package_ttl: Duration,
    /// Freshness of version lists.
    pub version_lists_ttl: Duration,
    /// Freshness of a single version.
    pub version_ttl: Duration,
    /// Freshness of a 404 answer.
    pub not_found_ttl: Duration,
    /// Past freshness, how long a stale answer is served at once while one background
    /// revalidation runs.
    pub stale_while_revalidate: Duration,
    /// Past freshness, how long a stale answer is served when GitHub fails or rate-limits us.
    pub stale_if_error: Duration,
    /// A client's `no-cache` revalidates a key at most once per this interval (joining a
    /// revalidation under way, or served what the upstream confirmed less than this ago), so
    /// one client's header cannot switch the shared cache off. Zero: every `no-cache` goes up.
    pub min_revalidate_interval: Duration,
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Origin (and optional path prefix) clients use to reach us; `Link` URLs are rewritten onto it.
    /// No trailing slash. When unset, `http://` and the bound address.
    pub public_url: Option<String>,
    /// Requests handled at once; past it, 503 at once (load shed) instead of queueing.
    pub max_in_flight: usize,
    /// Open client connections; past it, new connections wait in the listen backlog.
    pub max_connections: usize,
    /// How long in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// A client must send its request head within this time (slow-loris guard).
    pub header_read_timeout: Duration,
    /// A connection (HTTP/1 keep-alive or HTTP/2) with no request in flight this long is closed
    /// gracefully, so idle clients cannot hold every `max_connections` slot.
    pub idle_timeout: Duration,
    /// After SIGTERM, how long readiness fails while the listener still serves, so load balancers
    /// stop sending before it closes.
    pub shutdown_delay: Duration,
    /// Longest request target (path and query); longer is 414.
    pub max_uri_bytes: usize,
    /// Most bytes of request headers; more is 431.
    pub max_header_bytes: usize,
    /// Most request headers; more is 431.
    pub max_headers: usize,
    /// A second listener for `/metrics` (and the probes), e.g. on a port only Prometheus
    /// reaches; `/metrics` then leaves the main listener.
    pub admin_listen: Option<SocketAddr>,
    /// `[server.tls]`: serve HTTPS (and accept client certificates) instead of plain HTTP.
    pub tls: Option<TlsConfig>,
}

/// `[upstream]`
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Scheme and authority, e.g. `https://api.github.com`.
    pub origin: String,
    /// Path prefix, e.g. `/api/v3` on GHES; empty for github.com.
    pub prefix: String,
    /// Where the org token is.
    pub token: TokenSource,
    /// Lower-cased org and user logins we serve.
    pub owners: HashSet<String>,
    /// Whether `/user/...` (the token's own user) is served.
    pub allow_user_routes: bool,
    /// Whether `http://` is allowed (the simulator only).
    pub allow_plain_http: bool,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time until the upstream's response head, and the longest pause while its body streams.
    pub timeout: Duration,
    /// Idle pooled connections kept to the upstream.
    pub pool_max_idle_per_host: usize,
    /// Requests to GitHub at once (GitHub allows 100 per token, shared with every other user).
    pub max_concurrency: usize,
    /// Of those, the most one client's requests hold at once (its others wait for its own
    /// turn): one client's burst of misses cannot hold every slot while others wait behind it.
    pub max_concurrency_per_client: usize,
    /// Requests waiting for an upstream slot; past it, 503 at once.
    pub max_queue: usize,
    /// Retries of idempotent GETs on connection errors and 502/503/504 (mutations never).
    pub retries: u32,
    /// Below this fraction of the primary rate limit, reads are served from cache (stale if need
    /// be) and background revalidation stops; only misses and mutations go upstream.
    pub rate_limit_reserve: f64,
}

impl UpstreamConfig {
    /// Whether the proxy serves `owner`'s packages: a listed org or user (any case), or the
    /// token's own user when `allow_user_routes` is on. Anything else is answered 404.
    pub fn serves(&self, owner: &crate::route::Owner) -> bool {
        use crate::route::Owner;
        match owner {
            Owner::AuthenticatedUser => self.allow_user_routes,
            // Stored lower-case, and a handful: no folded copy of the login per request.
            Owner::Org(login) | Owner::User(login) => {
                self.owners.iter().any(|o| o.eq_ignore_ascii_case(login))
            }
        }
    }
}

/// Where the org token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// An environment variable's name.
    Env(String),
    /// A file's path.
    File(PathBuf),
}

/// A client allowed to use the proxy.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its name, used in logs, metrics and policy.
    pub name: String,
    /// May use the `/admin/...` endpoints (cache purge).
    pub admin: bool,
    /// Its quotas.
    pub quota: Quota,
    /// SHA-256 of its token, if it has one.
    pub token_hash: Option<TokenHash>,
    /// SHA-256 of its client certificate, if it has one (mTLS).
    pub cert_fingerprint: Option<CertFingerprint>,
}

/// A client's share of the org token (`[quotas]` defaults, overridable per client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests that need GitHub (misses, revalidations, mutations) per minute.
    pub upstream_per_minute: u32,
    /// Requests answered from cache per minute.
    pub hits_per_minute: u32,
    /// Requests in flight at once.
    pub max_in_flight: usize,
}

// === impl Config ===

/// What a client name may be, as the config's error says it.
pub const CLIENT_NAME_RULE: &str = "use 1-64 letters, digits, '-', '_' or '.'";

/// Whether `name` is a valid client name ([`CLIENT_NAME_RULE`]): it appears in log lines,
/// metric labels and audit records as written.
pub fn is_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_in(&text, path.parent())
    }

    /// Parses and validates config text; a relative `policy.file` is read from the working
    /// directory.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_in(text, None)
    }

    /// Parses and validates config text; a relative `policy.file` is resolved against `base`.
    pub fn parse_in(text: &str, base: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(ConfigError::Parse)?;
        raw.validate(base, true)
    }

    /// [`Config::load`] for a reload: the TLS certificate files are not read (the listener
    /// reloads them itself, every `reload_interval`), so a certificate mid-rotation never keeps
    /// a reload of clients and policy (an emergency deny rule) from taking effect.
    pub fn load_for_reload(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let raw: raw::RawConfig = toml::from_str(&text).map_err(ConfigError::Parse)?;
        raw.validate(path.parent(), false)
    }

    /// Replicas sharing one quota (1 without a shared tier).
    pub fn replicas(&self) -> u32 {
        self.shared.as_ref().map_or(1, |s| s.replicas)
    }

    /// Loads the org token from where the config says it is.
    pub fn load_token(&self) -> Result<OrgToken, TokenError> {
        match &self.upstream.token {
            TokenSource::Env(name) => OrgToken::from_env(name),
            TokenSource::File(path) => OrgToken::from_file(path),
        }
    }
}
