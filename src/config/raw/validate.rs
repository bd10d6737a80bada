//! Validation of the raw structs: defaults are filled, values checked, and every error names its
//! key (`upstream.base_url`, `clients[2].token_sha256`).

use std::{collections::HashSet, time::Duration};

use http::Uri;

use super::{RawCache, RawClient, RawMutations, RawServer, RawShared, RawUpstream};
use crate::{
    config::{
        CacheConfig, Client, ConfigError, MutationsConfig, Quota, ServerConfig, SharedConfig,
        TokenSource, UpstreamConfig, tls::CertFingerprint,
    },
    secret::TokenHash,
};

impl RawShared {
    pub(super) fn validate(self) -> Result<Option<SharedConfig>, ConfigError> {
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
    pub(super) fn validate(self) -> Result<MutationsConfig, ConfigError> {
        positive(self.max_queue, "mutations.max_queue")?;
        positive(self.max_queue_per_client, "mutations.max_queue_per_client")?;
        nonzero(self.budget_window, "mutations.budget_window")?;
        if !(1..=100).contains(&self.max_check_pages) {
            return Err(invalid(
                "mutations.max_check_pages",
                "must be between 1 and 100",
            ));
        }
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
            max_queue_per_client: self.max_queue_per_client,
            audit_log: self.audit_log,
            budget_window: self.budget_window,
            max_check_pages: self.max_check_pages,
        })
    }
}

impl RawCache {
    pub(super) fn validate(self) -> Result<CacheConfig, ConfigError> {
        if self.enabled && self.max_bytes < 1024 * 1024 {
            return Err(invalid(
                "cache.max_bytes",
                "must be at least 1 MiB (1048576)",
            ));
        }
        if self.max_entry_bytes == 0 || self.max_entry_bytes > self.max_bytes {
            return Err(invalid(
                "cache.max_entry_bytes",
                &format!(
                    "is {} (8 MiB unless set) and must be between 1 and cache.max_bytes ({}): \
                     lower it too when cache.max_bytes is small",
                    self.max_entry_bytes, self.max_bytes
                ),
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
            min_revalidate_interval: self.min_revalidate_interval,
        })
    }
}

impl RawServer {
    pub(super) fn validate(self, read_files: bool) -> Result<ServerConfig, ConfigError> {
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
        nonzero(self.idle_timeout, "server.idle_timeout")?;
        if self.admin_listen == Some(self.listen) {
            return Err(invalid(
                "server.admin_listen",
                "must differ from server.listen (both would bind the same address)",
            ));
        }
        Ok(ServerConfig {
            listen: self.listen,
            public_url,
            max_in_flight: self.max_in_flight,
            max_connections: self.max_connections,
            drain_timeout: self.drain_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            shutdown_delay: self.shutdown_delay,
            max_uri_bytes: self.max_uri_bytes,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            admin_listen: self.admin_listen,
            tls: self.tls.map(|tls| tls.validate(read_files)).transpose()?,
        })
    }
}

impl RawUpstream {
    pub(super) fn validate(self) -> Result<UpstreamConfig, ConfigError> {
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
        let per_client = self
            .max_concurrency_per_client
            .unwrap_or(self.max_concurrency.div_ceil(2));
        if per_client == 0 || per_client > self.max_concurrency {
            return Err(invalid(
                "upstream.max_concurrency_per_client",
                "must be from 1 to upstream.max_concurrency",
            ));
        }
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
            max_concurrency_per_client: per_client,
            max_queue: self.max_queue,
            retries: self.retries,
            rate_limit_reserve: self.rate_limit_reserve,
        })
    }
}

pub(super) fn validate_owners(owners: Vec<String>) -> Result<HashSet<String>, ConfigError> {
    if owners.is_empty() {
        return Err(invalid("upstream.owners", "list at least one org or user"));
    }
    let mut set = HashSet::new();
    for owner in owners {
        if !crate::route::is_login(&owner) {
            return Err(invalid(
                "upstream.owners",
                &format!("{owner:?} is not a GitHub login"),
            ));
        }
        set.insert(owner.to_ascii_lowercase());
    }
    Ok(set)
}

pub(super) fn validate_clients(
    raw: Vec<RawClient>,
    defaults: Quota,
) -> Result<Vec<Client>, ConfigError> {
    let mut names = HashSet::new();
    let mut hashes: Vec<TokenHash> = Vec::new();
    let mut fingerprints = HashSet::new();
    let mut clients = Vec::with_capacity(raw.len());
    for (i, client) in raw.into_iter().enumerate() {
        let field = format!("clients[{i}].name");
        if !crate::config::is_client_name(&client.name) {
            return Err(invalid(&field, crate::config::CLIENT_NAME_RULE));
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
pub(super) fn cert_fingerprint(
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
pub(super) fn split_url(url: &str, field: &str) -> Result<(String, String), ConfigError> {
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

pub(super) fn positive(value: usize, field: &str) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(field, "must be at least 1"));
    }
    Ok(())
}

pub(super) fn nonzero(value: Duration, field: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(field, "must be longer than 0s"));
    }
    Ok(())
}

pub(super) fn invalid(field: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}
