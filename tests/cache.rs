//! The metadata cache against the simulator's request log: hits cost nothing upstream, stale
//! entries revalidate with ETags, concurrent misses coalesce, failures fall back to stale answers,
//! writes invalidate, and memory stays bounded.
//!
//! TTLs here are a few hundred milliseconds of real time: the proxy talks to the simulator over
//! real sockets, and tokio's paused clock would fire the upstream timeouts while sockets wait.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use packages_proxy::sim::{Fault, FaultKind};
use support::*;

const VERSIONS: &str = "/orgs/acme/packages/container/web/versions?per_page=10";

fn cache_options(cache: &str) -> ProxyOptions {
    ProxyOptions {
        extra: format!("[cache]\n{cache}\n"),
        upstream_timeout: "400ms",
        ..ProxyOptions::default()
    }
}

#[tokio::test]
async fn a_hit_makes_no_upstream_call() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let first = get(&proxy.url(VERSIONS), proxy.token()).await;
    assert!(
        cache_status(&first).contains("fwd=miss"),
        "{}",
        cache_status(&first)
    );
    for _ in 0..5 {
        let hit = get(&proxy.url(VERSIONS), proxy.tokens[1].as_str()).await;
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.body, first.body);
        assert!(fresh_hit(&hit), "{}", cache_status(&hit));
        assert!(hit.header("age").is_some());
        assert_eq!(hit.header("link"), first.header("link"));
    }
    assert_eq!(sim.gets(), 1);
}

#[tokio::test]
async fn authorization_runs_before_the_cache() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    assert_eq!(
        get(&proxy.url(VERSIONS), proxy.token()).await.status,
        StatusCode::OK
    );
    let anonymous = send(Method::GET, &proxy.url(VERSIONS), None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let wrong = get(&proxy.url(VERSIONS), "ppx_wrong").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        !wrong.body.windows(6).any(|w| w == b"sha256"),
        "cached data leaked to a bad token"
    );
}

#[tokio::test]
async fn after_ttl_the_upstream_sees_if_none_match_and_the_304_costs_no_rate_limit() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        // Long enough that the hit after the 304 is still fresh on a busy machine.
        cache_options("version_lists_ttl = \"1s\"\nstale_while_revalidate = \"0s\""),
    )
    .await;
    let first = get(&proxy.url(VERSIONS), proxy.token()).await;
    let remaining = sim.handle.rate_limit().remaining;
    tokio::time::sleep(Duration::from_millis(1100)).await; // stale now
    let again = get(&proxy.url(VERSIONS), proxy.token()).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body);
    assert!(
        cache_status(&again).contains("fwd=stale"),
        "{}",
        cache_status(&again)
    );
    let log = sim.handle.log();
    assert_eq!(log.len(), 2);
    let sent = log[1].headers.get("if-none-match").unwrap().clone();
    assert_eq!(
        sim.handle.rate_limit().remaining,
        remaining,
        "the 304 cost rate limit"
    );
    // Fresh again after the 304: no further upstream call.
    let hit = get(&proxy.url(VERSIONS), proxy.token()).await;
    assert!(fresh_hit(&hit), "{}", cache_status(&hit));
    assert_eq!(sim.handle.log().len(), 2);
    // The client holds the proxy's tag; GitHub is asked with its own.
    assert_ne!(sent, first.header("etag").unwrap());
    assert_eq!(
        sent,
        github_etag(&sim, VERSIONS).await,
        "the revalidation did not send GitHub's ETag"
    );
}

/// GitHub's own ETag of `path`, asked around the proxy: what a revalidation must send.
async fn github_etag(sim: &Sim, path: &str) -> String {
    let direct = get(&format!("{}{path}", sim.handle.base_url()), &sim.org_token).await;
    direct.header("etag").unwrap().to_owned()
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_revalidates_once() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            // The revalidated entry must still be fresh when the poll below sees it, and the
            // slow revalidation must succeed rather than time out.
            upstream_timeout: "10s",
            ..cache_options("version_lists_ttl = \"1s\"\nstale_while_revalidate = \"1m\"")
        },
    )
    .await;
    get(&proxy.url(VERSIONS), proxy.token()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // stale now
    // The upstream is slow now; stale answers must not wait for it.
    let latency = Duration::from_secs(3);
    sim.handle
        .inject(Fault::new(FaultKind::Latency(latency), 1));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (url, token) = (proxy.url(VERSIONS), proxy.token().to_owned());
        tasks.push(tokio::spawn(async move { get(&url, &token).await }));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert!(
            cache_status(&reply).contains("stale-while-revalidate"),
            "{}",
            cache_status(&reply)
        );
    }
    assert!(
        started.elapsed() < latency,
        "stale answers waited for the upstream"
    );
    // Every answer stays stale until the one background revalidation lands.
    eventually(Duration::from_secs(10), "the revalidated entry", || async {
        let reply = get(&proxy.url(VERSIONS), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::OK);
        fresh_hit(&reply)
    })
    .await;
    assert_eq!(sim.gets(), 2, "one fetch, one background revalidation");
}

// The reason the proxy exists: a thundering herd costs GitHub one request.
#[tokio::test]
async fn a_thousand_concurrent_cold_requests_make_one_upstream_call() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        // 1,000 requests from two clients at once: above the default per-client cap on purpose.
        extra: "[quotas]\nmax_in_flight = 1000\n".to_owned(),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(300)),
        1,
    ));
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let request = http::Request::get(proxy.url(VERSIONS))
            .header("authorization", format!("Bearer {}", proxy.tokens[i % 2]))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let response = client.request(request).await.unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            (response.status(), status)
        }));
    }
    let mut collapsed = 0;
    for task in tasks {
        let (status, cache_status) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        collapsed += usize::from(cache_status.contains("collapsed"));
    }
    assert_eq!(sim.gets(), 1);
    assert!(collapsed > 0, "no request waited on the leader's fetch");
}

#[tokio::test]
async fn failures_serve_stale_for_cached_keys_and_clear_errors_for_uncached_ones() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        cache_options("version_lists_ttl = \"50ms\"\nstale_while_revalidate = \"0s\""),
    )
    .await;
    let cached = get(&proxy.url(VERSIONS), proxy.token()).await;
    let faults: Vec<(FaultKind, &[u16])> = vec![
        (FaultKind::Status(StatusCode::INTERNAL_SERVER_ERROR), &[500]),
        (FaultKind::Status(StatusCode::SERVICE_UNAVAILABLE), &[503]),
        (FaultKind::Reset, &[502]),
        (FaultKind::Latency(Duration::from_secs(2)), &[504]),
    ];
    for (i, (kind, uncached_statuses)) in faults.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(80)).await; // let the entry go stale
        sim.handle.inject(Fault::new(kind.clone(), 1));
        let stale = get(&proxy.url(VERSIONS), proxy.token()).await;
        assert_eq!(stale.status, StatusCode::OK, "{kind:?}");
        assert_eq!(stale.body, cached.body, "{kind:?}");
        assert!(
            cache_status(&stale).contains("stale-if-error"),
            "{kind:?}: {}",
            cache_status(&stale)
        );

        sim.handle.inject(Fault::new(kind.clone(), 1));
        let cold = format!(
            "/orgs/acme/packages/container/web/versions?per_page={}",
            11 + i
        );
        let reply = get(&proxy.url(&cold), proxy.token()).await;
        assert!(
            uncached_statuses.contains(&reply.status.as_u16()),
            "{kind:?}: {}",
            reply.status
        );
        assert!(
            reply.json()["message"].is_string(),
            "{kind:?}: no GitHub-shaped error"
        );
        // The failure was not cached: the next request for that key reaches the upstream again
        // (the fetch leaves the single-flight table before its waiters hear of it).
        let retry = get(&proxy.url(&cold), proxy.token()).await;
        assert_eq!(
            retry.status,
            StatusCode::OK,
            "{kind:?}: a failure poisoned the cache"
        );
    }
}

#[tokio::test]
async fn a_delete_is_never_followed_by_a_read_showing_the_version() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra: allow_everything("0s"),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let base = "/orgs/acme/packages/container/web";
    let first = get(&proxy.url(&format!("{base}/versions")), proxy.token()).await;
    let victim = first.json()[0]["id"].as_u64().unwrap();
    let variants = [
        format!("{base}/versions"),
        format!("{base}/versions?page=1&per_page=30"),
        format!("{base}/versions?per_page=100"),
        format!("{base}/versions?per_page=100&state=active"),
        format!("{base}/versions/{victim}"),
        "/orgs/acme/packages?package_type=container".to_owned(),
        base.to_owned(),
    ];
    for path in &variants {
        assert_eq!(
            get(&proxy.url(path), proxy.token()).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let before = get(&proxy.url(base), proxy.token()).await.json()["version_count"]
        .as_u64()
        .unwrap();
    let deleted = send(
        Method::DELETE,
        &proxy.url(&format!("{base}/versions/{victim}")),
        Some(proxy.token()),
        &[],
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for path in &variants[..4] {
        let ids: Vec<u64> = get(&proxy.url(path), proxy.token()).await.ids();
        assert!(
            !ids.contains(&victim),
            "{path} still shows the deleted version"
        );
    }
    let gone = get(&proxy.url(&variants[4]), proxy.token()).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let after = get(&proxy.url(base), proxy.token()).await.json()["version_count"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before - 1, "the package's version_count is stale");
    let deleted_list = get(
        &proxy.url(&format!("{base}/versions?state=deleted")),
        proxy.token(),
    )
    .await;
    assert!(deleted_list.ids().contains(&victim));
    // Other packages' entries were not invalidated.
    get(
        &proxy.url("/orgs/acme/packages/container/team-a-api"),
        proxy.token(),
    )
    .await;
    send(
        Method::DELETE,
        &proxy.url(&format!("{base}/versions/{}", first.json()[1]["id"])),
        Some(proxy.token()),
        &[],
    )
    .await;
    // Counted after the delete: its own reads (the multi-arch guard's) are not the question.
    let before_other = sim.handle.log().len();
    get(
        &proxy.url("/orgs/acme/packages/container/team-a-api"),
        proxy.token(),
    )
    .await;
    assert_eq!(
        sim.handle.log().len(),
        before_other,
        "a delete flushed another package"
    );
}

#[tokio::test]
async fn keys_differ_where_answers_differ_and_agree_where_they_do_not() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let url = proxy.url("/orgs/acme/packages/container/web/versions");
    let token = proxy.token();
    // Same entry: no query, defaults spelled out, other order.
    get(&url, token).await;
    get(&format!("{url}?per_page=30&page=1"), token).await;
    get(&format!("{url}?page=1&state=active&per_page=30"), token).await;
    assert_eq!(sim.gets(), 1);
    // Different entries: Accept, API version, page.
    send(
        Method::GET,
        &url,
        Some(token),
        &[("accept", "application/json")],
    )
    .await;
    send(
        Method::GET,
        &url,
        Some(token),
        &[("x-github-api-version", "2026-03-10")],
    )
    .await;
    get(&format!("{url}?page=2"), token).await;
    assert_eq!(sim.gets(), 4);
}

#[tokio::test]
async fn client_conditionals_and_no_cache() {
    let sim = spawn_sim().await;
    // Every `no-cache` goes upstream with the interval at zero (the behaviour before it existed).
    let proxy = spawn_proxy(&sim, cache_options("min_revalidate_interval = \"0s\"")).await;
    let first = get(&proxy.url(VERSIONS), proxy.token()).await;
    let etag = first.header("etag").unwrap().to_owned();
    let not_modified = send(
        Method::GET,
        &proxy.url(VERSIONS),
        Some(proxy.token()),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(sim.gets(), 1, "a matching If-None-Match went upstream");
    let forced = send(
        Method::GET,
        &proxy.url(VERSIONS),
        Some(proxy.token()),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(forced.status, StatusCode::OK);
    assert!(
        cache_status(&forced).contains("fwd=request; fwd-status=304; stored"),
        "{}",
        cache_status(&forced)
    );
    let log = sim.handle.log();
    assert_eq!(log.len(), 2);
    assert_eq!(
        log[1].headers["if-none-match"],
        github_etag(&sim, VERSIONS).await.as_str(),
        "no-cache should revalidate cheaply, with GitHub's ETag"
    );
}

// githubkit sends `Cache-Control: no-cache` on every call and Node's fetch adds it to every
// conditional request: one client's header must not switch the shared cache off.
#[tokio::test]
async fn no_cache_requests_are_coalesced_per_key_and_interval() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await; // interval: 1 s by default
    let url = proxy.url(VERSIONS);
    assert_eq!(get(&url, proxy.token()).await.status, StatusCode::OK);
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for round in 0..4 {
        // Ten at once, four rounds ~0.5 s apart: 40 requests within 2 s.
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (url, token) = (url.clone(), proxy.token().to_owned());
            tasks.push(tokio::spawn(async move {
                send(
                    Method::GET,
                    &url,
                    Some(&token),
                    &[("cache-control", "no-cache")],
                )
                .await
            }));
        }
        for task in tasks {
            let reply = task.await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            statuses.push(cache_status(&reply));
        }
        let next = Duration::from_millis(500 * (round + 1));
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
    }
    // At most one revalidation per started 1 s interval, plus one: 3 in the planned 2 s. A busy
    // machine that stretches the rounds allows one more per extra second, never one per request.
    let seconds = started.elapsed().as_secs_f64().ceil().max(2.0) as usize;
    let gets = sim.gets();
    assert!(
        (2..=seconds + 2).contains(&gets),
        "40 no-cache GETs in {seconds} s cost {} upstream requests (at most {} + the first miss)",
        gets - 1,
        seconds + 1
    );
    assert!(
        statuses
            .iter()
            .any(|s| s.contains("detail=revalidated-recently")),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn not_found_is_cached_briefly() {
    let sim = spawn_sim().await;
    // Long enough that the second request is a hit on a busy machine.
    let proxy = spawn_proxy(&sim, cache_options("not_found_ttl = \"1s\"")).await;
    let path = proxy.url("/orgs/acme/packages/container/missing");
    assert_eq!(
        get(&path, proxy.token()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&path, proxy.token()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(sim.gets(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // expired now
    get(&path, proxy.token()).await;
    assert_eq!(sim.gets(), 2);
}

#[tokio::test]
async fn the_byte_bound_holds_past_capacity() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        cache_options("max_bytes = 1048576\nmax_entry_bytes = 262144"),
    )
    .await;
    let mut stored = 0usize;
    for per_page in 20..=100 {
        let path = format!("/orgs/acme/packages/container/web/versions?per_page={per_page}");
        stored += get(&proxy.url(&path), proxy.token()).await.body.len();
    }
    assert!(
        stored > 2 * 1048576,
        "the test did not overfill the cache ({stored} bytes)"
    );
    let page = scrape(&proxy.url("/metrics")).await;
    let bytes = sample(&page, "packages_proxy_cache_bytes").unwrap();
    assert!(bytes <= 1048576.0, "cache holds {bytes} bytes");
    // The counter is process-wide (one recorder); no other test here fills a cache past its bound.
    let evicted = sample(&page, "packages_proxy_cache_evictions_total").unwrap();
    assert!(evicted > 0.0, "nothing was evicted");
}

#[tokio::test]
async fn purge_is_for_admins_and_empties_what_it_names() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        admins: vec!["team-b"],
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let purge = proxy.url("/admin/cache/purge");
    get(&proxy.url(VERSIONS), proxy.token()).await;
    let refused = send(Method::POST, &purge, Some(proxy.token()), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let scope = r#"{"owner":"acme","package_type":"container","package_name":"web"}"#;
    let request = http::Request::post(&purge)
        .header("authorization", format!("Bearer {}", proxy.tokens[1]))
        .body(http_body_util::Full::new(bytes::Bytes::from(scope)))
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let after = get(&proxy.url(VERSIONS), proxy.token()).await;
    assert!(
        cache_status(&after).contains("fwd=miss"),
        "{}",
        cache_status(&after)
    );
    assert_eq!(sim.gets(), 2);
    let all = send(Method::POST, &purge, Some(&proxy.tokens[1]), &[]).await;
    assert_eq!(all.status, StatusCode::OK);
    get(&proxy.url(VERSIONS), proxy.token()).await;
    assert_eq!(sim.gets(), 3);
}

// Answers larger than `cache.max_entry_bytes` are streamed through, not cached (they used to
// become a 502): the client gets GitHub's answer whole, and later requests skip the attempt to
// buffer them.
#[tokio::test]
async fn answers_over_max_entry_bytes_are_passed_through_not_cached() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, cache_options("max_entry_bytes = 4096")).await;
    let path = "/orgs/acme/packages/container/web/versions?per_page=100";
    let direct = send(
        Method::GET,
        &format!("{}{path}", sim.handle.base_url()),
        Some(&sim.org_token),
        &[],
    )
    .await;
    assert!(direct.body.len() > 4096);
    let before = sim.gets();
    let first = get(&proxy.url(path), proxy.token()).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.ids(), direct.ids());
    assert!(
        cache_status(&first).contains("detail=too-large"),
        "{}",
        cache_status(&first)
    );
    let link = first.header("link").unwrap();
    assert!(link.starts_with(&format!("<{}", proxy.base)), "{link}");
    let probe = sim.gets() - before;
    assert!((1..=2).contains(&probe), "{probe} upstream requests");
    let second = get(&proxy.url(path), proxy.token()).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body.len(), first.body.len());
    assert_eq!(
        sim.gets() - before - probe,
        1,
        "not cached, and no second attempt to buffer it"
    );
    // Found by a hostile review: the tag handed out with such an answer (GitHub's: the body is
    // GitHub's too) never revalidated, every request a full read of the rate limit. It is asked
    // of GitHub, whose 304 costs nothing.
    let etag = second.header("etag").expect("GitHub's ETag").to_owned();
    let revalidated = send(
        Method::GET,
        &proxy.url(path),
        Some(proxy.token()),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(
        revalidated.status,
        StatusCode::NOT_MODIFIED,
        "{}",
        revalidated.text()
    );
    assert!(revalidated.body.is_empty());
    let log = sim.handle.log();
    assert_eq!(log.last().unwrap().headers["if-none-match"], etag.as_str());
}

// A stored list that grows past `cache.max_entry_bytes` at GitHub: once a revalidation finds it
// too large, later reads pass it through too. The old, smaller copy is never served again, even
// while its TTL has not run out (hits are answered before any other check).
#[tokio::test]
async fn a_stored_answer_that_grows_too_large_is_no_longer_served() {
    let sim = spawn_sim_with(
        packages_proxy::sim::Dataset::new()
            .org("acme", 9919)
            .package("acme", "container", "grow", "private", 12),
    )
    .await;
    let path = "/orgs/acme/packages/container/grow/versions?per_page=100";
    let all = sim.direct(Method::GET, path).await;
    let ids = all.ids();
    assert_eq!(ids.len(), 12);
    // Half the versions deleted at GitHub, then restored, behind the proxy's back.
    let at_github = |method: Method, suffix: &'static str| {
        let sim = &sim;
        let ids = ids[..6].to_vec();
        async move {
            for id in ids {
                let version = format!("/orgs/acme/packages/container/grow/versions/{id}{suffix}");
                let answer = sim.direct(method.clone(), &version).await;
                assert_eq!(answer.status, StatusCode::NO_CONTENT, "{method} {version}");
            }
        }
    };
    at_github(Method::DELETE, "").await;
    let small = sim.direct(Method::GET, path).await;
    let limit = (small.body.len() + all.body.len()) / 2;
    // `no-cache` always goes upstream (no minimum interval between revalidations).
    let options = format!("max_entry_bytes = {limit}\nmin_revalidate_interval = \"0s\"");
    let proxy = spawn_proxy(&sim, cache_options(&options)).await;
    let stored = get(&proxy.url(path), proxy.token()).await;
    assert_eq!(stored.ids().len(), 6);
    assert!(
        cache_status(&stored).contains("stored"),
        "{}",
        cache_status(&stored)
    );
    let hit = get(&proxy.url(path), proxy.token()).await;
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    // Restored: the list is past the limit now.
    at_github(Method::POST, "/restore").await;
    let forced = send(
        Method::GET,
        &proxy.url(path),
        Some(proxy.token()),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(forced.ids().len(), 12);
    assert!(
        cache_status(&forced).contains("detail=too-large"),
        "{}",
        cache_status(&forced)
    );
    for _ in 0..3 {
        let later = get(&proxy.url(path), proxy.token()).await;
        assert_eq!(later.ids().len(), 12, "the old, smaller copy was served");
        assert!(
            cache_status(&later).contains("detail=too-large"),
            "{}",
            cache_status(&later)
        );
    }
}

// RFC 9211: `fwd-status` is what the upstream really sent for this key: 200 on a miss, 304
// when it confirmed a stale entry.
#[tokio::test]
async fn cache_status_names_the_upstream_status_of_this_key() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        cache_options("version_lists_ttl = \"100ms\"\nstale_while_revalidate = \"0s\""),
    )
    .await;
    let miss = get(&proxy.url(VERSIONS), proxy.token()).await;
    assert_eq!(
        cache_status(&miss),
        "packages-proxy; fwd=miss; fwd-status=200; stored"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // stale
    let revalidated = get(&proxy.url(VERSIONS), proxy.token()).await;
    assert_eq!(
        cache_status(&revalidated),
        "packages-proxy; fwd=stale; fwd-status=304; stored"
    );
}

/// One keep-alive connection asking for one target after another: each answer is the one a
/// fresh connection gets for that target and method.
#[tokio::test]
async fn one_connection_gets_each_targets_own_answer() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let token = proxy.token();
    let targets = [
        ("GET", "/orgs/acme/packages/container/web/versions"),
        (
            "GET",
            "/orgs/acme/packages/container/web/versions?per_page=1",
        ),
        (
            "GET",
            "/orgs/acme/packages/container/base/versions?per_page=1",
        ),
        (
            "HEAD",
            "/orgs/acme/packages/container/base/versions?per_page=1",
        ),
        ("GET", "/orgs/acme/packages/container/base"),
        (
            "GET",
            "/orgs/acme/packages/container/nope/versions?per_page=1",
        ),
        (
            "GET",
            "/orgs/acme/packages/container/base/versions?per_page=1",
        ),
        (
            "GET",
            "/orgs/acme/packages/container/base/versions?per_page=0",
        ),
        (
            "GET",
            "/orgs/acme/packages/container/web/versions?per_page=1",
        ),
    ];
    let mut fresh = Vec::new();
    for (method, target) in targets {
        let answer = send(
            method.parse().unwrap(),
            &proxy.url(target),
            Some(token),
            &[],
        )
        .await;
        fresh.push((answer.status, answer.body));
    }
    let mut conn = KeepAlive::open(proxy.addr()).await;
    for _round in 0..2 {
        for ((method, target), (status, body)) in targets.iter().zip(&fresh) {
            let reply = conn
                .send(method.parse().unwrap(), target, token, &[], "")
                .await;
            assert_eq!(reply.status, *status, "{method} {target}");
            let want: &[u8] = if *method == "HEAD" {
                b""
            } else {
                body.as_ref()
            };
            assert_eq!(reply.body.as_ref(), want, "{method} {target}");
        }
    }
}

/// A connection that asks the same thing again and again: a delete (on another connection, or
/// on this one) or another `Accept` gives it the new answer, never the one it had.
#[tokio::test]
async fn a_repeating_connection_sees_deletes_and_its_own_headers() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra: allow_everything("0s"),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let versions = "/orgs/acme/packages/container/web/versions";
    let token = proxy.token();
    let mut conn = KeepAlive::open(proxy.addr()).await;
    let first = conn.send(Method::GET, versions, token, &[], "").await;
    let again = conn.send(Method::GET, versions, token, &[], "").await;
    assert_eq!(first.body, again.body);
    let listed = first.ids();
    let gets = sim.gets();
    // Another `Accept` is another entry (a miss), then the first one's again.
    let accept = [("accept", "application/json")];
    conn.send(Method::GET, versions, token, &accept, "").await;
    assert_eq!(
        sim.gets(),
        gets + 1,
        "another Accept was answered from the cache"
    );
    let back = conn.send(Method::GET, versions, token, &[], "").await;
    assert_eq!(back.body, first.body);
    // A delete on another connection.
    let deleted = send(
        Method::DELETE,
        &proxy.url(&format!("{versions}/{}", listed[0])),
        Some(proxy.token()),
        &[],
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let after = conn.send(Method::GET, versions, token, &[], "").await;
    assert!(
        !after.ids().contains(&listed[0]),
        "the deleted version is still listed"
    );
    let repeat = conn.send(Method::GET, versions, token, &[], "").await;
    assert_eq!(repeat.body, after.body);
    // A delete on this connection.
    let victim = format!("{versions}/{}", listed[1]);
    let deleted = conn.send(Method::DELETE, &victim, token, &[], "").await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let last = conn.send(Method::GET, versions, token, &[], "").await;
    assert!(
        !last.ids().contains(&listed[1]),
        "the deleted version is still listed"
    );
}

/// A head that takes longer than the entry has left to arrive is answered as of when it
/// arrived whole: the entry is stale by then, so it is not served as a fresh hit (the log
/// line's duration does count from its first byte).
#[tokio::test]
async fn a_slow_head_is_judged_when_it_is_complete_not_when_it_began() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra_server: "header_read_timeout = \"5s\"",
            ..cache_options(
                "version_lists_ttl = \"1s\"\nstale_while_revalidate = \"0s\"\nstale_if_error = \"0s\"",
            )
        },
    )
    .await;
    assert_eq!(
        get(&proxy.url(VERSIONS), proxy.token()).await.status,
        StatusCode::OK
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"GET ").await.unwrap();
    // Time passing is what is tested: the entry's second runs out while the head arrives.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let rest = format!(
        "{VERSIONS} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        proxy.token()
    );
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    let status = answer
        .lines()
        .find_map(|line| line.strip_prefix("cache-status: "))
        .unwrap_or("-");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        !status.starts_with("packages-proxy; hit;"),
        "a stale entry was served as a fresh hit: {status}"
    );
    assert_eq!(sim.gets(), 2, "the stale entry was not revalidated");
}
