//! What the runtime can hold: every duration and count of a validated config, checked against a
//! bound, so a config that `check-config` accepts never panics at `serve` (or at the first
//! request). Tokio's semaphores hold at most `usize::MAX >> 3` permits, `Instant` and moka's
//! time-to-live overflow on sums of huge durations, and hyper sizes its buffers from the header
//! limits. The bounds are far above any sensible value, so only typos and jokes hit them.

use std::time::Duration;

use super::validate::invalid;
use crate::config::{Config, ConfigError};

/// The longest duration any key takes: a year. Lifetimes are summed (TTL plus stale windows) and
/// added to `Instant::now()`; a year keeps every sum far from overflowing.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The most connections, requests or queued calls any count allows.
const MAX_COUNT: usize = 1_000_000;

/// The longest request line or header block (bytes).
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// The most headers in one request.
const MAX_HEADERS: usize = 10_000;

/// Checks every duration and count of `config`; the error names the first key out of range.
pub(super) fn check(config: &Config) -> Result<(), ConfigError> {
    for (key, value) in durations(config) {
        if value > MAX_DURATION {
            return Err(invalid(key, "must be at most 365d"));
        }
    }
    for (key, value, max) in counts(config) {
        if value > max {
            return Err(invalid(&key, &format!("must be at most {max}")));
        }
    }
    Ok(())
}

fn durations(config: &Config) -> Vec<(&'static str, Duration)> {
    let (server, upstream, cache, mutations) = (
        &config.server,
        &config.upstream,
        &config.cache,
        &config.mutations,
    );
    let mut all = vec![
        ("server.drain_timeout", server.drain_timeout),
        ("server.header_read_timeout", server.header_read_timeout),
        ("server.idle_timeout", server.idle_timeout),
        ("server.shutdown_delay", server.shutdown_delay),
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.timeout", upstream.timeout),
        ("cache.package_lists_ttl", cache.package_lists_ttl),
        ("cache.package_ttl", cache.package_ttl),
        ("cache.version_lists_ttl", cache.version_lists_ttl),
        ("cache.version_ttl", cache.version_ttl),
        ("cache.not_found_ttl", cache.not_found_ttl),
        ("cache.stale_while_revalidate", cache.stale_while_revalidate),
        ("cache.stale_if_error", cache.stale_if_error),
        ("mutations.pace", mutations.pace),
        ("mutations.max_queue_wait", mutations.max_queue_wait),
        ("mutations.budget_window", mutations.budget_window),
    ];
    if let Some(tls) = &server.tls {
        all.push(("server.tls.reload_interval", tls.reload_interval));
    }
    if let Some(shared) = &config.shared {
        all.push(("shared.lock_ttl", shared.lock_ttl));
        all.push(("shared.timeout", shared.timeout));
    }
    all
}

fn counts(config: &Config) -> Vec<(String, usize, usize)> {
    let (server, upstream, mutations) = (&config.server, &config.upstream, &config.mutations);
    let mut all = vec![
        (
            "server.max_in_flight".to_owned(),
            server.max_in_flight,
            MAX_COUNT,
        ),
        (
            "server.max_connections".to_owned(),
            server.max_connections,
            MAX_COUNT,
        ),
        (
            "server.max_uri_bytes".to_owned(),
            server.max_uri_bytes,
            MAX_HEAD_BYTES,
        ),
        (
            "server.max_header_bytes".to_owned(),
            server.max_header_bytes,
            MAX_HEAD_BYTES,
        ),
        (
            "server.max_headers".to_owned(),
            server.max_headers,
            MAX_HEADERS,
        ),
        (
            "upstream.max_concurrency".to_owned(),
            upstream.max_concurrency,
            MAX_COUNT,
        ),
        (
            "upstream.max_queue".to_owned(),
            upstream.max_queue,
            MAX_COUNT,
        ),
        (
            "upstream.pool_max_idle_per_host".to_owned(),
            upstream.pool_max_idle_per_host,
            MAX_COUNT,
        ),
        (
            "mutations.max_queue".to_owned(),
            mutations.max_queue,
            MAX_COUNT,
        ),
        (
            "mutations.max_queue_per_client".to_owned(),
            mutations.max_queue_per_client,
            MAX_COUNT,
        ),
    ];
    for (i, client) in config.clients.iter().enumerate() {
        // A client's limit is its own or `quotas.max_in_flight`: name both.
        all.push((
            format!("clients[{i}].max_in_flight (or quotas.max_in_flight)"),
            client.quota.max_in_flight,
            MAX_COUNT,
        ));
    }
    all
}
