//! The TOML file as written: `deny_unknown_fields` structs with documented defaults, and their
//! validation into the types of the parent module. Every error names its key.

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use http::Uri;
use serde::Deserialize;

use super::{
    CacheConfig, Client, Config, ConfigError, LogConfig, MutationsConfig, Quota, ServerConfig,
    SharedConfig, TokenSource, UpstreamConfig,
};
use crate::{
    policy::{RawPolicy, client_names},
    secret::TokenHash,
    tls::{CertFingerprint, RawTls},
};

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
    audit_log: Option<PathBuf>,
    #[serde(default = "default_budget_window", with = "humantime_serde")]
    budget_window: Duration,
}

impl Default for RawMutations {
    fn default() -> Self {
        Self {
            pace: default_pace(),
            max_queue: default_max_queue(),
            max_queue_wait: default_max_queue_wait(),
            audit_log: None,
            budget_window: default_budget_window(),
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
    pub(super) fn validate(self, base: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
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
        let log = self.log.validate()?;
        Ok(Config {
            server,
            upstream,
            clients,
            shared,
            log,
            cache,
            policy: Arc::new(policy),
            mutations,
            policy_file,
        })
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

impl RawShared {
    fn validate(self) -> Result<Option<SharedConfig>, ConfigError> {
        let Some(url) = self.redis_url else {
            return Ok(None);
        };
        if url.starts_with("rediss://") {
            return Err(invalid(
                "shared.redis_url",
                "rediss:// (Redis over TLS) is not supported by this build; use redis:// on a private network",
            ));
        }
        if !url.starts_with("redis://") {
            return Err(invalid("shared.redis_url", "must start with redis://"));
        }
        if self.replicas == 0 {
            return Err(invalid("shared.replicas", "must be at least 1"));
        }
        nonzero(self.lock_ttl, "shared.lock_ttl")?;
        nonzero(self.timeout, "shared.timeout")?;
        Ok(Some(SharedConfig {
            redis_url: url,
            replicas: self.replicas,
            key_prefix: self.key_prefix,
            lock_ttl: self.lock_ttl,
            timeout: self.timeout,
        }))
    }
}

impl RawMutations {
    fn validate(self) -> Result<MutationsConfig, ConfigError> {
        positive(self.max_queue, "mutations.max_queue")?;
        nonzero(self.budget_window, "mutations.budget_window")?;
        if self
            .audit_log
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("mutations.audit_log", "must not be empty"));
        }
        Ok(MutationsConfig {
            pace: self.pace,
            max_queue: self.max_queue,
            max_queue_wait: self.max_queue_wait,
            audit_log: self.audit_log,
            budget_window: self.budget_window,
        })
    }
}

impl RawCache {
    fn validate(self) -> Result<CacheConfig, ConfigError> {
        if self.enabled && self.max_bytes < 1024 * 1024 {
            return Err(invalid(
                "cache.max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        if self.max_entry_bytes == 0 || self.max_entry_bytes > self.max_bytes {
            return Err(invalid(
                "cache.max_entry_bytes",
                "must be between 1 and cache.max_bytes",
            ));
        }
        Ok(CacheConfig {
            enabled: self.enabled,
            max_bytes: self.max_bytes,
            max_entry_bytes: self.max_entry_bytes,
            package_lists_ttl: self.package_lists_ttl,
            package_ttl: self.package_ttl,
            version_lists_ttl: self.version_lists_ttl,
            version_ttl: self.version_ttl,
            not_found_ttl: self.not_found_ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<ServerConfig, ConfigError> {
        let public_url = match self.public_url {
            Some(url) => {
                let (origin, prefix) = split_url(&url, "server.public_url")?;
                Some(format!("{origin}{prefix}"))
            }
            None => None,
        };
        positive(self.max_in_flight, "server.max_in_flight")?;
        positive(self.max_connections, "server.max_connections")?;
        nonzero(self.header_read_timeout, "server.header_read_timeout")?;
        Ok(ServerConfig {
            listen: self.listen,
            public_url,
            max_in_flight: self.max_in_flight,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            header_read_timeout: self.header_read_timeout,
            shutdown_delay: self.shutdown_delay,
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            admin_listen: self.admin_listen,
            tls: self.tls.map(RawTls::validate).transpose()?,
        })
    }
}

impl RawUpstream {
    fn validate(self) -> Result<UpstreamConfig, ConfigError> {
        let (origin, prefix) = split_url(&self.base_url, "upstream.base_url")?;
        if origin.starts_with("http://") && !self.allow_plain_http {
            return Err(invalid(
                "upstream.base_url",
                "plain http:// needs `upstream.allow_plain_http = true` (meant for the simulator only)",
            ));
        }
        let token = match (self.token_env, self.token_file) {
            (Some(name), None) if !name.trim().is_empty() => TokenSource::Env(name),
            (None, Some(path)) if !path.as_os_str().is_empty() => TokenSource::File(path),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "upstream.token_env",
                    "set token_env or token_file, not both",
                ));
            }
            _ => {
                return Err(invalid(
                    "upstream.token_env",
                    "set token_env or token_file (not empty)",
                ));
            }
        };
        let owners = validate_owners(self.owners)?;
        nonzero(self.connect_timeout, "upstream.connect_timeout")?;
        positive(self.max_concurrency, "upstream.max_concurrency")?;
        if !(0.0..1.0).contains(&self.rate_limit_reserve) {
            return Err(invalid(
                "upstream.rate_limit_reserve",
                "must be a fraction from 0 to below 1",
            ));
        }
        if self.retries > 5 {
            return Err(invalid("upstream.retries", "at most 5"));
        }
        nonzero(self.timeout, "upstream.timeout")?;
        Ok(UpstreamConfig {
            origin,
            prefix,
            token,
            owners,
            allow_user_routes: self.allow_user_routes,
            allow_plain_http: self.allow_plain_http,
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            max_concurrency: self.max_concurrency,
            max_queue: self.max_queue,
            retries: self.retries,
            rate_limit_reserve: self.rate_limit_reserve,
        })
    }
}

fn validate_owners(owners: Vec<String>) -> Result<HashSet<String>, ConfigError> {
    if owners.is_empty() {
        return Err(invalid("upstream.owners", "list at least one org or user"));
    }
    let mut set = HashSet::new();
    for owner in owners {
        let ok = !owner.is_empty()
            && owner.len() <= 39
            && owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(invalid(
                "upstream.owners",
                &format!("{owner:?} is not a GitHub login"),
            ));
        }
        set.insert(owner.to_ascii_lowercase());
    }
    Ok(set)
}

fn validate_clients(raw: Vec<RawClient>, defaults: Quota) -> Result<Vec<Client>, ConfigError> {
    let mut names = HashSet::new();
    let mut hashes: Vec<TokenHash> = Vec::new();
    let mut fingerprints = HashSet::new();
    let mut clients = Vec::with_capacity(raw.len());
    for (i, client) in raw.into_iter().enumerate() {
        let field = format!("clients[{i}].name");
        let ok = !client.name.is_empty()
            && client.name.len() <= 64
            && client
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            return Err(invalid(&field, "use 1-64 letters, digits, '-', '_' or '.'"));
        }
        if !names.insert(client.name.clone()) {
            return Err(invalid(
                &field,
                &format!("duplicate client name {:?}", client.name),
            ));
        }
        let token_hash = client
            .token_sha256
            .as_deref()
            .map(|hex| {
                TokenHash::from_hex(hex).ok_or_else(|| {
                    invalid(
                        &format!("clients[{i}].token_sha256"),
                        "must be 64 hex digits (the SHA-256 of the token; see `packages-proxy token new`)",
                    )
                })
            })
            .transpose()?;
        if let Some(token_hash) = &token_hash {
            if hashes.iter().any(|h| h == token_hash) {
                return Err(invalid(
                    &format!("clients[{i}].token_sha256"),
                    "two clients share one token",
                ));
            }
            hashes.push(token_hash.clone());
        }
        let cert_fingerprint =
            cert_fingerprint(i, client.cert_sha256.as_deref(), &mut fingerprints)?;
        if token_hash.is_none() && cert_fingerprint.is_none() {
            return Err(invalid(
                &format!("clients[{i}].token_sha256"),
                "set token_sha256, cert_sha256 or both",
            ));
        }
        let quota = Quota {
            upstream_per_minute: client
                .upstream_per_minute
                .unwrap_or(defaults.upstream_per_minute),
            hits_per_minute: client.hits_per_minute.unwrap_or(defaults.hits_per_minute),
            max_in_flight: client.max_in_flight.unwrap_or(defaults.max_in_flight),
        };
        if quota.upstream_per_minute == 0 || quota.hits_per_minute == 0 || quota.max_in_flight == 0
        {
            return Err(invalid(
                &format!("clients[{i}]"),
                "quotas must be at least 1",
            ));
        }
        clients.push(Client {
            name: client.name,
            admin: client.admin,
            quota,
            token_hash,
            cert_fingerprint,
        });
    }
    Ok(clients)
}

/// `clients[i].cert_sha256`: 64 hex digits, one certificate per client.
fn cert_fingerprint(
    i: usize,
    hex: Option<&str>,
    seen: &mut HashSet<CertFingerprint>,
) -> Result<Option<CertFingerprint>, ConfigError> {
    let Some(hex) = hex else { return Ok(None) };
    let field = format!("clients[{i}].cert_sha256");
    let fingerprint = CertFingerprint::from_hex(hex).ok_or_else(|| {
        invalid(
            &field,
            "must be 64 hex digits (the SHA-256 of the certificate's DER form)",
        )
    })?;
    if !seen.insert(fingerprint) {
        return Err(invalid(&field, "two clients share one certificate"));
    }
    Ok(Some(fingerprint))
}

/// Splits `scheme://authority/prefix` into (`scheme://authority`, `/prefix` or empty).
fn split_url(url: &str, field: &str) -> Result<(String, String), ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| invalid(field, "not a valid absolute URL"))?;
    let scheme = uri.scheme_str().unwrap_or_default();
    if scheme != "http" && scheme != "https" {
        return Err(invalid(field, "must start with http:// or https://"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| invalid(field, "has no host"))?;
    if uri.query().is_some() {
        return Err(invalid(field, "must not have a query"));
    }
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((format!("{scheme}://{authority}"), prefix))
}

fn positive(value: usize, field: &str) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    Ok(())
}

fn nonzero(value: Duration, field: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(field, "must be longer than 0s"));
    }
    Ok(())
}

fn invalid(field: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}
