//! The pass-through proxy against the simulated Packages API, over real sockets: every operation,
//! pagination through the proxy, authentication, headers, and upstream failures.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::collections::HashSet;

use http::{Method, StatusCode};
use packages_proxy::sim::{Fault, FaultKind};
use support::*;

/// Fills an endpoints.tsv path template with sample-data values.
fn fill(template: &str, version_id: u64) -> String {
    template
        .replace("{org}", "acme")
        .replace("{username}", "octocat")
        .replace("{package_type}", "container")
        .replace("{package_name}", "base%2Fruntime")
        .replace("{package_version_id}", &version_id.to_string())
}

/// The id of a version of acme's and octocat's sample packages, read from the simulator directly.
async fn first_version(sim: &Sim, owner_path: &str, package: &str) -> u64 {
    let url = format!(
        "{}{owner_path}/packages/container/{package}/versions",
        sim.handle.base_url()
    );
    let reply = get(&url, &sim.org_token).await;
    assert_eq!(reply.status, StatusCode::OK, "{url}");
    reply.json()[0]["id"].as_u64().unwrap()
}

// Guards the core promise: every Packages API operation works through the proxy, with the org
// token (never the client's) on the canonical path; destructive ones are refused before GitHub.
#[tokio::test]
async fn every_operation_reaches_the_simulator_with_the_org_token_or_is_refused() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let tsv = include_str!("data/endpoints.tsv");
    let mut checked = 0;
    for line in tsv.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        let (method, template, destructive) = (fields[0], fields[1], fields[5] == "yes");
        let version = if template.starts_with("/orgs") {
            first_version(&sim, "/orgs/acme", "base%2Fruntime").await
        } else {
            // user-owned sample package with that name does not exist: use octocat's
            first_version(&sim, "/users/octocat", "hello_docker").await
        };
        let mut path = fill(template, version);
        if !template.starts_with("/orgs") {
            path = path.replace("base%2Fruntime", "hello_docker");
        }
        if template.ends_with("/packages") {
            path.push_str("?package_type=container");
        }
        let method: Method = method.parse().unwrap();
        sim.handle.clear_log();
        let through = send(method.clone(), &proxy.url(&path), Some(proxy.token()), &[]).await;
        if destructive {
            assert_eq!(through.status, StatusCode::FORBIDDEN, "{method} {path}");
            assert!(through.json()["message"].is_string());
            assert!(
                sim.handle.log().is_empty(),
                "{method} {path} reached the upstream"
            );
        } else {
            let direct = get(&format!("{}{path}", sim.handle.base_url()), &sim.org_token).await;
            assert_eq!(
                through.status,
                StatusCode::OK,
                "{method} {path}: {:?}",
                through.body
            );
            // Byte for byte GitHub's, but for API URLs moved onto the proxy.
            let through_text = String::from_utf8(through.body.to_vec()).unwrap();
            let restored = through_text.replace(&proxy.base, &sim.handle.base_url());
            assert_eq!(
                restored.as_bytes(),
                direct.body,
                "{path}: body differs from the upstream's"
            );
            let log = sim.handle.log();
            let seen = &log[0];
            let expected_path = path.split('?').next().unwrap();
            assert_eq!(seen.path, expected_path);
            assert_eq!(
                seen.headers["authorization"],
                format!("Bearer {}", sim.org_token).as_str()
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 27, "endpoints.tsv lists 27 operations");
}

/// Follows `rel="next"` from `start` through the proxy; returns the ids seen and the page count.
async fn walk_pages(proxy: &TestProxy, start: &str) -> (Vec<u64>, usize) {
    let mut url = proxy.url(start);
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let reply = get(&url, proxy.token()).await;
        assert_eq!(reply.status, StatusCode::OK, "{url}");
        pages += 1;
        ids.extend(
            reply
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_u64().unwrap()),
        );
        let Some(link) = reply.header("link") else {
            break;
        };
        let links = links(link);
        for (_, target) in &links {
            assert!(
                target.starts_with(&proxy.base),
                "Link leaks the upstream: {target}"
            );
        }
        match links.iter().find(|(rel, _)| rel == "next") {
            Some((_, next)) => url = next.clone(),
            None => break,
        }
    }
    (ids, pages)
}

#[tokio::test]
async fn a_client_following_link_walks_every_page_for_an_org_and_a_user() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    for start in [
        "/orgs/acme/packages/container/web/versions?per_page=100",
        "/users/octocat/packages/container/hello_docker/versions?per_page=100",
        "/user/packages/container/hello_docker/versions?per_page=30",
        "/api/v3/orgs/acme/packages/container/web/versions?per_page=40",
    ] {
        let (ids, pages) = walk_pages(&proxy, start).await;
        let distinct: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(ids.len(), 250, "{start}");
        assert_eq!(distinct.len(), 250, "{start}");
        assert!(pages >= 3, "{start}: {pages} pages");
    }
    // GitHub wrote numeric-id URLs; the upstream only ever saw the canonical owner forms.
    for entry in sim.handle.log() {
        assert!(!entry.path.starts_with("/organizations/"), "{}", entry.path);
    }
}

#[tokio::test]
async fn link_keeps_rel_names_and_page_numbers_and_uses_the_public_url() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        public_url: Some("https://packages.example:8443/gh"),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let path = "/orgs/acme/packages/container/web/versions?per_page=50&page=2";
    let reply = get(&proxy.url(path), proxy.token()).await;
    let links = links(reply.header("link").unwrap());
    let rels: HashSet<&str> = links.iter().map(|(rel, _)| rel.as_str()).collect();
    assert_eq!(rels, HashSet::from(["next", "last", "first", "prev"]));
    let next = &links.iter().find(|(rel, _)| rel == "next").unwrap().1;
    assert!(next.contains("page=3"), "{next}");
    let last = &links.iter().find(|(rel, _)| rel == "last").unwrap().1;
    assert!(
        last.starts_with(
            "https://packages.example:8443/gh/orgs/acme/packages/container/web/versions?"
        ),
        "{last}"
    );
    assert!(last.contains("page=5"), "{last}");
    assert!(last.contains("per_page=50"), "{last}");
}

#[tokio::test]
async fn merged_slashes_and_the_ghes_prefix_reach_the_canonical_path() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::uncached()).await;
    for path in [
        "//orgs/acme/packages/container/base%2Fruntime",
        "/api/v3/orgs/acme/packages/container/base%2Fruntime",
        "/api/v3//orgs//acme/packages/container/base%2fruntime",
    ] {
        sim.handle.clear_log();
        let reply = get(&proxy.url(path), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.json()["name"], "base/runtime");
        assert_eq!(
            sim.handle.log()[0].path,
            "/orgs/acme/packages/container/base%2Fruntime"
        );
    }
}

#[tokio::test]
async fn missing_unknown_or_malformed_client_tokens_are_401_and_never_forwarded() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let url = proxy.url("/orgs/acme/packages?package_type=container");
    let none = send(Method::GET, &url, None, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json()["message"], "Requires authentication");
    assert!(none.json()["documentation_url"].is_string());
    let wrong = get(&url, "ppx_not_a_client").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json()["message"], "Bad credentials");
    // The org token itself is not a client token.
    assert_eq!(
        get(&url, &sim.org_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let basic = send(
        Method::GET,
        &url,
        None,
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    // GitHub clients also send `token <t>`.
    let header = format!("token {}", proxy.tokens[1]);
    let ok = send(Method::GET, &url, None, &[("authorization", &header)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        sim.handle.log().len(),
        1,
        "only the authenticated request went upstream"
    );
}

#[tokio::test]
async fn owners_outside_the_config_and_disabled_user_routes_are_404_and_never_forwarded() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        owners: vec!["acme"],
        allow_user_routes: false,
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    for path in [
        "/orgs/other/packages?package_type=container",
        "/users/octocat/packages?package_type=container",
        "/user/packages?package_type=container",
        "/user/packages/container/hello_docker",
    ] {
        let reply = get(&proxy.url(path), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["message"], "Not Found");
    }
    // Org names are case-insensitive.
    let reply = get(
        &proxy.url("/orgs/ACME/packages/container/web"),
        proxy.token(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(sim.handle.log().len(), 1);
}

#[tokio::test]
async fn only_safe_headers_travel_each_way() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let reply = send(
        Method::GET,
        &proxy.url("/orgs/acme/packages/container/web"),
        Some(proxy.token()),
        &[
            ("cookie", "session=secret"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-real-ip", "10.1.2.3"),
            ("forwarded", "for=10.1.2.3;host=internal.example"),
            ("via", "1.1 internal-lb"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("accept", "application/vnd.github+json"),
            ("x-request-id", "client-chosen-42"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = &sim.handle.log()[0].headers;
    for name in [
        "cookie",
        "x-forwarded-for",
        "x-real-ip",
        "forwarded",
        "via",
        "proxy-authorization",
        "x-request-id",
    ] {
        assert!(seen.get(name).is_none(), "{name} was forwarded");
    }
    assert_eq!(
        seen["authorization"],
        format!("Bearer {}", sim.org_token).as_str()
    );
    assert_eq!(seen["x-github-api-version"], "2022-11-28");
    assert_eq!(seen["accept"], "application/vnd.github+json");
    assert!(
        seen["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("packages-proxy/")
    );
    // Back to the client: rate-limit headers, ETag and what clients read pass; cookies and
    // headers off the list do not; `x-oauth-scopes` is the caller's, not the org token's.
    for name in ["set-cookie", "x-ratelimit-evil"] {
        assert!(
            reply.headers.get(name).is_none(),
            "{name} reached the client"
        );
    }
    assert_eq!(reply.header("x-oauth-scopes"), Some("read:packages"));
    for name in [
        "etag",
        "x-ratelimit-remaining",
        "x-ratelimit-limit",
        "x-ratelimit-reset",
        "x-github-request-id",
        "content-type",
        "x-github-api-version-selected",
        "vary",
        "x-accepted-oauth-scopes",
    ] {
        assert!(reply.headers.get(name).is_some(), "{name} missing");
    }
    // The answer names the proxy's own id (what logs and the audit key on), not the client's.
    let ours = reply.header("x-request-id").unwrap();
    assert!(!ours.is_empty() && ours != "client-chosen-42", "{ours}");
}

#[tokio::test]
async fn conditional_requests_pass_through_and_304_costs_no_rate_limit() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let url = proxy.url("/orgs/acme/packages/container/web/versions?per_page=10");
    let first = get(&url, proxy.token()).await;
    let etag = first.header("etag").unwrap().to_owned();
    let remaining: u64 = first
        .header("x-ratelimit-remaining")
        .unwrap()
        .parse()
        .unwrap();
    let again = send(
        Method::GET,
        &url,
        Some(proxy.token()),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(sim.handle.rate_limit().remaining, remaining);
}

#[tokio::test]
async fn github_errors_pass_through_whole() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let url = proxy.url("/orgs/acme/packages/container/web");
    let direct_404 = get(
        &format!(
            "{}/orgs/acme/packages/container/nope",
            sim.handle.base_url()
        ),
        &sim.org_token,
    )
    .await;
    let through_404 = get(
        &proxy.url("/orgs/acme/packages/container/nope"),
        proxy.token(),
    )
    .await;
    assert_eq!(through_404.status, StatusCode::NOT_FOUND);
    assert_eq!(through_404.body, direct_404.body);

    sim.handle.inject(Fault::new(
        FaultKind::Status(StatusCode::SERVICE_UNAVAILABLE),
        1,
    ));
    assert_eq!(
        get(&url, proxy.token()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

// Rate-limit answers reach the client whole (clients recognise a secondary limit by its text);
// each opens the proxy's back-off, so each case gets a fresh upstream and proxy.
#[tokio::test]
async fn rate_limit_answers_pass_through_whole() {
    let cases = [
        FaultKind::SecondaryRateLimit {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after_secs: 42,
        },
        FaultKind::SecondaryRateLimit {
            status: StatusCode::FORBIDDEN,
            retry_after_secs: 42,
        },
        FaultKind::PrimaryRateLimit,
    ];
    for kind in cases {
        let sim = spawn_sim().await;
        let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
        sim.handle.inject(Fault::new(kind.clone(), 1));
        let limited = get(
            &proxy.url("/orgs/acme/packages/container/web"),
            proxy.token(),
        )
        .await;
        let message = limited.json()["message"].as_str().unwrap().to_owned();
        if let FaultKind::SecondaryRateLimit { status, .. } = kind {
            assert_eq!(limited.status, status);
            assert_eq!(limited.header("retry-after"), Some("42"));
            assert!(message.contains("secondary rate limit"), "{message}");
        } else {
            assert_eq!(limited.status, StatusCode::FORBIDDEN);
            assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
            assert!(limited.header("x-ratelimit-reset").is_some());
            assert!(message.contains("rate limit exceeded"), "{message}");
        }
    }
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_and_a_slow_one_504_in_githubs_shape() {
    // A port with nothing listening: bind, read the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = spawn_proxy_to(
        &format!("http://{closed}"),
        "ghp_fake_unused",
        ProxyOptions::default(),
    )
    .await;
    let reply = get(
        &proxy.url("/orgs/acme/packages/container/web"),
        proxy.token(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.json()["documentation_url"].is_string());

    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        upstream_timeout: "300ms",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(std::time::Duration::from_secs(2)),
        1,
    ));
    let reply = get(
        &proxy.url("/orgs/acme/packages/container/web"),
        proxy.token(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["message"], "Upstream GitHub API timed out");

    sim.handle.inject(Fault::new(FaultKind::Reset, 1));
    let reply = get(
        &proxy.url("/orgs/acme/packages/container/web"),
        proxy.token(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn bad_queries_and_api_versions_are_400_locally() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    for path in [
        "/orgs/acme/packages",
        "/orgs/acme/packages?package_type=container&foo=bar",
        "/orgs/acme/packages?package_type=rpm",
        "/orgs/acme/packages?package_type=container&package_type=npm",
        "/orgs/acme/packages?package_type=container&per_page=100&page=101",
        "/orgs/acme/packages/container/web/versions?state=gone",
        "/orgs/acme/packages/container/web/versions?page=0",
        "/orgs/acme/packages/container/web?foo=1",
        "/orgs/acme/packages/container/web?page=2&foo=1",
    ] {
        let reply = get(&proxy.url(path), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(reply.json()["message"].is_string());
    }
    let reply = send(
        Method::GET,
        &proxy.url("/orgs/acme/packages/container/web"),
        Some(proxy.token()),
        &[("x-github-api-version", "2021-01-01")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // Found by a hostile review: of two API versions the first won silently, even beside an
    // invalid one. Two different ones are refused; the same one twice is one version.
    let url = proxy.url("/orgs/acme/packages/container/web");
    for (second, status) in [
        ("bogus", StatusCode::BAD_REQUEST),
        ("2026-03-10", StatusCode::BAD_REQUEST),
        ("2022-11-28", StatusCode::OK),
    ] {
        let reply = send(
            Method::GET,
            &url,
            Some(proxy.token()),
            &[
                ("x-github-api-version", "2022-11-28"),
                ("x-github-api-version", second),
            ],
        )
        .await;
        assert_eq!(reply.status, status, "{second}: {}", reply.text());
    }
    assert_eq!(sim.handle.log().len(), 1);
}

// Found by a hostile review: `gh api --paginate` adds `per_page=100` to every GET, and Octokit's
// `paginate` passes the caller's `per_page` on, also to reads that have no paging; GitHub ignores
// it there, the proxy answered 400. Accepted, and neither sent nor a cache entry of its own.
#[tokio::test]
async fn paging_on_a_read_without_paging_is_ignored_as_github_does() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let package = "/orgs/acme/packages/container/web";
    let plain = get(&proxy.url(package), proxy.token()).await;
    assert_eq!(plain.status, StatusCode::OK);
    for query in [
        "?per_page=100",
        "?per_page=100&page=1",
        "?page=3&per_page=x",
    ] {
        let reply = get(&proxy.url(&format!("{package}{query}")), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text());
        assert_eq!(reply.body, plain.body, "{query}");
    }
    let conflicts = get(
        &proxy.url("/orgs/acme/docker/conflicts?per_page=100"),
        proxy.token(),
    )
    .await;
    assert_eq!(conflicts.status, StatusCode::OK, "{}", conflicts.text());
    let log = sim.handle.log();
    assert_eq!(log.len(), 2, "one fetch per resource, whatever the paging");
    assert!(
        log.iter().all(|request| !request.path.contains("page")),
        "paging was sent: {:?}",
        log.iter().map(|r| r.path.clone()).collect::<Vec<_>>()
    );
    // Any other parameter is still refused.
    let other = get(
        &proxy.url(&format!("{package}?per_page=1&foo=1")),
        proxy.token(),
    )
    .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
}

// Clean-up tools open 100 connections at once; none may stall or fail.
#[tokio::test]
async fn a_burst_of_100_simultaneous_connections_is_served() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = proxy.url(&format!(
            "/orgs/acme/packages/container/web/versions?per_page={}",
            1 + i % 50
        ));
        let token = proxy.token().to_owned();
        // A fresh client per task: 100 separate connections.
        tasks.push(tokio::spawn(async move { get(&url, &token).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}

// The order is what matters, not the durations: the request reaches GitHub, which holds it
// 2 s; shutdown starts then, so readiness fails while the listener still serves for
// `shutdown_delay` (1 s); the listener closes with the request still in flight, and it finishes.
#[tokio::test]
async fn shutdown_fails_readiness_and_lets_in_flight_requests_finish() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_server: "shutdown_delay = \"1s\"",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let ready_url = proxy.url("/readyz");
    assert_eq!(
        send(Method::GET, &ready_url, None, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(Method::GET, &proxy.url("/healthz"), None, &[])
            .await
            .status,
        StatusCode::OK
    );
    sim.handle.inject(Fault::new(
        FaultKind::Latency(std::time::Duration::from_secs(2)),
        1,
    ));
    let url = proxy.url("/orgs/acme/packages/container/web");
    let token = proxy.token().to_owned();
    let in_flight = tokio::spawn(async move { get(&url, &token).await });
    let limit = std::time::Duration::from_secs(5);
    eventually(limit, "the request to reach GitHub", || async {
        !sim.arrivals(&Method::GET).is_empty()
    })
    .await;
    let addr = proxy.addr();
    let shutdown = tokio::spawn(proxy.running.shutdown());
    // During the shutdown delay the listener still answers, and readiness says "draining".
    eventually(limit, "/readyz to answer 503", || async {
        send(Method::GET, &ready_url, None, &[]).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // After the delay the listener closes, with the request still at GitHub: the drain.
    eventually(limit, "the listener to close", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the request ended before the listener closed: the drain was not tested"
    );
    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request was cut off"
    );
    shutdown.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

/// One request on `conn`: its status.
async fn on_connection(
    conn: &mut KeepAlive,
    method: Method,
    path: &str,
    token: &str,
    body: &'static str,
) -> StatusCode {
    conn.send(method, path, token, &[], body).await.status
}

// Guards the connection's memo of its last client (it skips the token hash on repeats): one
// keep-alive connection carrying several clients' requests, as a load balancer's does, gets each
// request its own client; a wrong token after a right one is refused; and a reload that drops a
// client refuses it at once on a connection that had already authenticated it.
#[tokio::test]
async fn one_connection_is_authenticated_per_request_across_clients_and_reloads() {
    let sim = spawn_sim().await;
    let options = ProxyOptions {
        admins: vec!["team-a"],
        ..ProxyOptions::default()
    };
    let (text, tokens) = proxy_config(&sim.handle.base_url(), 0, &options);
    let dir = temp_dir("memo");
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let running = start_from_file(&path, &sim).await;
    let mut sender = KeepAlive::open(running.addr).await;
    let (admin, other) = (tokens[0].as_str(), tokens[1].as_str());
    let read = "/orgs/acme/packages?package_type=container";
    let purge = "/admin/cache/purge";
    let owner = r#"{"owner": "acme"}"#;

    for _ in 0..2 {
        assert_eq!(
            on_connection(&mut sender, Method::GET, read, admin, "").await,
            StatusCode::OK
        );
        assert_eq!(
            on_connection(&mut sender, Method::POST, purge, admin, owner).await,
            StatusCode::OK,
            "team-a is an admin"
        );
        assert_eq!(
            on_connection(&mut sender, Method::POST, purge, other, owner).await,
            StatusCode::FORBIDDEN,
            "team-b was taken for the connection's previous client"
        );
        assert_eq!(
            on_connection(&mut sender, Method::GET, read, other, "").await,
            StatusCode::OK
        );
    }
    let wrong = format!("{}x", &admin[..admin.len() - 1]);
    assert_eq!(
        on_connection(&mut sender, Method::GET, read, admin, "").await,
        StatusCode::OK
    );
    assert_eq!(
        on_connection(&mut sender, Method::GET, read, &wrong, "").await,
        StatusCode::UNAUTHORIZED,
        "a token one character off the connection's last one"
    );

    // Drop team-a (its `[[clients]]` table is the first) and reload: on the same connection, the
    // token it had just authenticated is refused, and team-b is still served.
    assert_eq!(
        on_connection(&mut sender, Method::GET, read, admin, "").await,
        StatusCode::OK
    );
    let start = text.find("[[clients]]\nname = \"team-a\"").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    std::fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
    packages_proxy::reload::reload(&running.state, &path).unwrap();
    assert_eq!(
        on_connection(&mut sender, Method::GET, read, admin, "").await,
        StatusCode::UNAUTHORIZED,
        "a client the reload removed was still served on its connection"
    );
    assert_eq!(
        on_connection(&mut sender, Method::GET, read, other, "").await,
        StatusCode::OK
    );
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
