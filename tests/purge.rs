//! A full purge empties the cache at once, as `/metrics` reports it.
//!
//! Regression guarded: after a full purge `/metrics` showed 7,512 entries holding 0 bytes for
//! seconds (moka's `invalidate_all` removes entries lazily), so memory looked stuck.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use http::{Method, StatusCode};
use packages_proxy::sim::Dataset;
use support::*;

async fn cache_gauges(proxy: &TestProxy) -> (f64, f64) {
    let page = scrape(&proxy.url("/metrics")).await;
    (
        sample(&page, "packages_proxy_cache_entries").unwrap(),
        sample(&page, "packages_proxy_cache_bytes").unwrap(),
    )
}

#[tokio::test]
async fn a_full_purge_reports_zero_entries_and_bytes_at_once() {
    let sim = spawn_sim_with(Dataset::generated("acme", 100, 5)).await;
    let opts = ProxyOptions {
        admins: vec!["team-b"],
        extra: "[quotas]\nupstream_per_minute = 100000\n".to_owned(),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    for i in 0..100 {
        for per_page in 1..=30 {
            let path =
                format!("/orgs/acme/packages/container/pkg-{i}/versions?per_page={per_page}");
            let reply = get(&proxy.url(&path), proxy.token()).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
        }
    }
    let (entries, bytes) = cache_gauges(&proxy).await;
    // Enough that moka's lazy `invalidate_all` cannot clear them in one maintenance pass.
    assert_eq!(entries, 3000.0);
    assert!(bytes > 0.0);
    let purge = proxy.url("/admin/cache/purge");
    let all = send(Method::POST, &purge, Some(&proxy.tokens[1]), &[]).await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(cache_gauges(&proxy).await, (0.0, 0.0));
}
