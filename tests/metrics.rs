//! `/metrics`: the expected names appear and move as traffic flows. Counters move in one test
//! only: the Prometheus recorder is process-wide (a scrape's state gauges are its own proxy's).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use http::{Method, StatusCode};
use support::*;

/// `/metrics` on the main listener, checking its content type.
async fn scrape_main(proxy: &TestProxy) -> String {
    let reply = send(Method::GET, &proxy.url("/metrics"), None, &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_appear_with_their_names_and_move_with_traffic() {
    let sim = spawn_sim().await;
    let audit = temp_dir("metrics").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n[[policy.allow]]\nname = \"a\"\nclients = [\"team-a\"]\nactions = [\"delete_version\"]\n"
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let path = "/orgs/acme/packages/container/web/versions?per_page=5";
    let hit_line = r#"packages_proxy_requests_total{route="/orgs/{org}/packages/{package_type}/{package_name}/versions",status_class="2xx",cache="hit",client="team-a"}"#;
    let before = scrape_main(&proxy).await;
    for _ in 0..3 {
        get(&proxy.url(path), proxy.token()).await;
    }
    get(&proxy.url("/repos/acme/app"), proxy.token()).await;
    send(
        Method::DELETE,
        &proxy.url("/orgs/acme/packages/container/web/versions/1"),
        Some(&proxy.tokens[1]),
        &[],
    )
    .await;
    let after = scrape_main(&proxy).await;
    assert_eq!(
        sample(&after, hit_line).unwrap() - sample(&before, hit_line).unwrap_or(0.0),
        2.0,
        "{after}"
    );
    let upstream = r#"packages_proxy_upstream_requests_total{method="GET",status_class="2xx"}"#;
    assert!(sample(&after, upstream).unwrap() >= 1.0, "{after}");
    let denied = r#"packages_proxy_destructive_decisions_total{outcome="denied"}"#;
    assert_eq!(
        sample(&after, denied).unwrap() - sample(&before, denied).unwrap_or(0.0),
        1.0
    );
    assert!(sample(&after, "packages_proxy_cache_entries").unwrap() >= 1.0);
    assert!(sample(&after, "packages_proxy_cache_bytes").unwrap() > 0.0);
    assert_eq!(
        sample(&after, "packages_proxy_upstream_ratelimit_limit").unwrap(),
        5000.0
    );
    assert!(sample(&after, "packages_proxy_upstream_ratelimit_remaining").unwrap() < 5000.0);
    assert_eq!(
        sample(&after, "packages_proxy_upstream_backoff_active").unwrap(),
        0.0
    );
    for name in [
        "packages_proxy_request_duration_seconds_bucket",
        "packages_proxy_upstream_duration_seconds_bucket",
        "packages_proxy_upstream_ratelimit_reset_timestamp_seconds",
        "packages_proxy_upstream_in_flight",
        "packages_proxy_upstream_queued",
        "packages_proxy_mutations_queued",
        "packages_proxy_cache_coalesced_total",
        "packages_proxy_cache_evictions_total",
        "packages_proxy_audit_write_failures_total",
        "packages_proxy_config_reloads_total",
    ] {
        assert!(after.contains(name), "{name} missing from /metrics");
    }
    // Bounded labels: the raw path of the 404 never appears.
    assert!(!after.contains("/repos/acme/app"));
    assert!(!after.contains("per_page"));
}

#[tokio::test]
async fn an_admin_listener_takes_metrics_off_the_main_port() {
    let sim = spawn_sim().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = ProxyOptions {
        extra_server: Box::leak(format!("admin_listen = \"127.0.0.1:{port}\"").into_boxed_str()),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let main = send(Method::GET, &proxy.url("/metrics"), None, &[]).await;
    assert_eq!(
        main.status,
        StatusCode::NOT_FOUND,
        "/metrics still on the main listener"
    );
    let admin = send(
        Method::GET,
        &format!("http://127.0.0.1:{port}/metrics"),
        None,
        &[],
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&admin.body).contains("packages_proxy_cache_entries"));
    let ready = send(
        Method::GET,
        &format!("http://127.0.0.1:{port}/readyz"),
        None,
        &[],
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);
    let other = send(
        Method::GET,
        &format!("http://127.0.0.1:{port}/orgs/acme/packages"),
        Some(proxy.token()),
        &[],
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::NOT_FOUND,
        "the admin listener proxied a request"
    );
    assert!(sim.handle.log().is_empty());
}
