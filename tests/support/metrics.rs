//! `/metrics` as a test reads it: the proxy's public view of its own state (cache size, shared
//! tier, back-off, reloads), instead of the fields behind it.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use super::{eventually, send};

/// The Prometheus text at `url` (`.../metrics` on the main or the admin listener).
pub async fn scrape(url: &str) -> String {
    let reply = send(Method::GET, url, None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "GET {url}");
    reply.text()
}

/// The value of one series in a Prometheus text: `series` is the name with its labels as the
/// exporter prints them (`name{a="b"}`), matched whole. `None` when absent.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// Polls `url` (a `/metrics` page) until `series` has `value`; panics past `limit`. Returns how
/// long it took.
pub async fn wait_for_sample(url: &str, series: &str, value: f64, limit: Duration) -> Duration {
    let started = Instant::now();
    let what = format!("{series} {value} at {url}");
    eventually(limit, &what, || async {
        sample(&scrape(url).await, series) == Some(value)
    })
    .await;
    started.elapsed()
}

/// Polls `url` (a `/metrics` page) until the proxy reports its shared tier (Redis) `up` or down;
/// returns how long it took.
pub async fn wait_shared_tier(url: &str, up: bool, limit: Duration) -> Duration {
    let value = if up { 1.0 } else { 0.0 };
    wait_for_sample(url, "packages_proxy_shared_tier_up", value, limit).await
}
