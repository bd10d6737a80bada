//! The TOML file as written: `deny_unknown_fields` structs with documented defaults, and their
//! validation into the types of the parent module. Every error names its key.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use serde::Deserialize;

mod limits;
mod registry;
mod validate;

use registry::RawRegistry;
use validate::{invalid, validate_clients};

use super::{Config, ConfigError, LogConfig, Quota, tls::RawTls};
use crate::policy::{RawPolicy, client_names};

// === raw structs (the TOML file) ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    mutations: RawMutations,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    shared: RawShared,
    #[serde(default)]
    registry: RawRegistry,
    #[serde(default)]
    log: RawLog,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    redis_url: Option<String>,
    #[serde(default = "default_replicas")]
    replicas: u32,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    #[serde(default = "default_lock_ttl", with = "humantime_serde")]
    lock_ttl: Duration,
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawShared {
    fn default() -> Self {
        Self {
            redis_url: None,
            replicas: default_replicas(),
            key_prefix: default_key_prefix(),
            lock_ttl: default_lock_ttl(),
            timeout: default_redis_timeout(),
        }
    }
}

fn default_replicas() -> u32 {
    1
}
fn default_key_prefix() -> String {
    "packages-proxy:".to_owned()
}
fn default_lock_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(250)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMutations {
    #[serde(default = "default_pace", with = "humantime_serde")]
    pace: Duration,
    #[serde(default = "default_max_queue")]
    max_queue: usize,
    #[serde(default = "default_max_queue_wait", with = "humantime_serde")]
    max_queue_wait: Duration,
    #[serde(default = "default_max_queue_per_client")]
    max_queue_per_client: usize,
    audit_log: Option<PathBuf>,
    #[serde(default = "default_budget_window", with = "humantime_serde")]
    budget_window: Duration,
    #[serde(default = "default_max_check_pages")]
    max_check_pages: u32,
}

fn default_max_check_pages() -> u32 {
    10
}

impl Default for RawMutations {
    fn default() -> Self {
        Self {
            pace: default_pace(),
            max_queue: default_max_queue(),
            max_queue_wait: default_max_queue_wait(),
            max_queue_per_client: default_max_queue_per_client(),
            audit_log: None,
            budget_window: default_budget_window(),
            max_check_pages: default_max_check_pages(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_max_entry_bytes")]
    max_entry_bytes: u64,
    #[serde(default = "default_ttl_60", with = "humantime_serde")]
    package_lists_ttl: Duration,
    #[serde(default = "default_ttl_60", with = "humantime_serde")]
    package_ttl: Duration,
    #[serde(default = "default_ttl_30", with = "humantime_serde")]
    version_lists_ttl: Duration,
    #[serde(default = "default_ttl_300", with = "humantime_serde")]
    version_ttl: Duration,
    #[serde(default = "default_ttl_10", with = "humantime_serde")]
    not_found_ttl: Duration,
    #[serde(default = "default_swr", with = "humantime_serde")]
    stale_while_revalidate: Duration,
    #[serde(default = "default_sie", with = "humantime_serde")]
    stale_if_error: Duration,
    #[serde(default = "default_min_revalidate", with = "humantime_serde")]
    min_revalidate_interval: Duration,
}

fn default_min_revalidate() -> Duration {
    Duration::from_secs(1)
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: default_max_bytes(),
            max_entry_bytes: default_max_entry_bytes(),
            package_lists_ttl: default_ttl_60(),
            package_ttl: default_ttl_60(),
            version_lists_ttl: default_ttl_30(),
            version_ttl: default_ttl_300(),
            not_found_ttl: default_ttl_10(),
            stale_while_revalidate: default_swr(),
            stale_if_error: default_sie(),
            min_revalidate_interval: default_min_revalidate(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default = "default_listen")]
    listen: SocketAddr,
    public_url: Option<String>,
    #[serde(default = "default_max_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    drain_timeout: Duration,
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    idle_timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    shutdown_delay: Duration,
    #[serde(default = "default_max_uri_bytes")]
    max_uri_bytes: usize,
    #[serde(default = "default_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "default_max_headers")]
    max_headers: usize,
    admin_listen: Option<SocketAddr>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default = "default_base_url")]
    base_url: String,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
    owners: Vec<String>,
    #[serde(default)]
    allow_user_routes: bool,
    #[serde(default)]
    allow_plain_http: bool,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pool_max_idle_per_host: usize,
    #[serde(default = "default_upstream_concurrency")]
    max_concurrency: usize,
    /// Default: half of `max_concurrency`, rounded up.
    max_concurrency_per_client: Option<usize>,
    #[serde(default = "default_upstream_queue")]
    max_queue: usize,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_reserve")]
    rate_limit_reserve: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    token_sha256: Option<String>,
    cert_sha256: Option<String>,
    #[serde(default)]
    admin: bool,
    upstream_per_minute: Option<u32>,
    hits_per_minute: Option<u32>,
    max_in_flight: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    #[serde(default = "default_upstream_per_minute")]
    upstream_per_minute: u32,
    #[serde(default = "default_hits_per_minute")]
    hits_per_minute: u32,
    #[serde(default = "default_client_in_flight")]
    max_in_flight: usize,
}

impl Default for RawQuotas {
    fn default() -> Self {
        Self {
            upstream_per_minute: default_upstream_per_minute(),
            hits_per_minute: default_hits_per_minute(),
            max_in_flight: default_client_in_flight(),
        }
    }
}

fn default_pace() -> Duration {
    Duration::from_secs(1)
}
fn default_max_queue() -> usize {
    100
}
fn default_max_queue_per_client() -> usize {
    10
}
fn default_max_queue_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_budget_window() -> Duration {
    Duration::from_secs(3600)
}
fn yes() -> bool {
    true
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_entry_bytes() -> u64 {
    8 * 1024 * 1024
}
fn default_ttl_10() -> Duration {
    Duration::from_secs(10)
}
fn default_ttl_30() -> Duration {
    Duration::from_secs(30)
}
fn default_ttl_60() -> Duration {
    Duration::from_secs(60)
}
fn default_ttl_300() -> Duration {
    Duration::from_secs(300)
}
fn default_swr() -> Duration {
    Duration::from_secs(300)
}
fn default_sie() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_base_url() -> String {
    "https://api.github.com".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_pool_max_idle() -> usize {
    128
}
fn default_upstream_concurrency() -> usize {
    25
}
fn default_upstream_queue() -> usize {
    1000
}
fn default_retries() -> u32 {
    2
}
fn default_reserve() -> f64 {
    0.1
}
fn default_upstream_per_minute() -> u32 {
    300
}
fn default_hits_per_minute() -> u32 {
    6000
}
fn default_client_in_flight() -> usize {
    256
}
fn default_max_uri_bytes() -> usize {
    8192
}
fn default_max_header_bytes() -> usize {
    16384
}
fn default_max_headers() -> usize {
    100
}

impl RawConfig {
    /// `read_files`: also read the TLS files (see `RawTls::validate`).
    pub(super) fn validate(
        self,
        base: Option<&std::path::Path>,
        read_files: bool,
    ) -> Result<Config, ConfigError> {
        let server = self.server.validate(read_files)?;
        let upstream = self.upstream.validate()?;
        let defaults = Quota {
            upstream_per_minute: self.quotas.upstream_per_minute,
            hits_per_minute: self.quotas.hits_per_minute,
            max_in_flight: self.quotas.max_in_flight,
        };
        let clients = validate_clients(self.clients, defaults)?;
        // Client certificates are only asked for when a client CA is configured.
        let mtls = server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        if let Some(i) = clients
            .iter()
            .position(|c| c.cert_fingerprint.is_some() && !mtls)
        {
            return Err(invalid(
                &format!("clients[{i}].cert_sha256"),
                "needs `server.tls.client_ca_file`: without it no client certificate is asked for",
            ));
        }
        let cache = self.cache.validate()?;
        let mutations = self.mutations.validate()?;
        let names = client_names(clients.iter().map(|c| c.name.as_str()));
        let policy_file = self
            .policy
            .file
            .as_ref()
            .map(|file| base.map_or_else(|| file.clone(), |dir| dir.join(file)));
        let policy = self.policy.compile(&names, mutations.budget_window, base)?;
        if policy.has_allow_rules() && mutations.audit_log.is_none() {
            return Err(invalid(
                "mutations.audit_log",
                "required once the policy allows anything: no destructive call goes unaudited",
            ));
        }
        let shared = self.shared.validate()?;
        let registry = self.registry.validate()?;
        let log = self.log.validate()?;
        let config = Config {
            server,
            upstream,
            clients,
            shared,
            registry,
            log,
            cache,
            policy: Arc::new(policy),
            mutations,
            policy_file,
        };
        limits::check(&config)?;
        Ok(config)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_log_level")]
    level: String,
    #[serde(default = "default_log_format")]
    format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}
fn default_log_format() -> String {
    "text".to_owned()
}

impl RawLog {
    fn validate(self) -> Result<LogConfig, ConfigError> {
        let json = match self.format.as_str() {
            "text" => false,
            "json" => true,
            _ => return Err(invalid("log.format", "must be \"text\" or \"json\"")),
        };
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(invalid(
                "log.level",
                "not a level or filter (e.g. \"info\", \"packages_proxy=debug\")",
            ));
        }
        Ok(LogConfig {
            level: self.level,
            json,
        })
    }
}
