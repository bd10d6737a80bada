//! The same API through the proxy where a client can tell: response headers a client relies on
//! pass, `X-OAuth-Scopes` describes the caller (never the org token), and nothing outside the
//! header allow-list reaches a client on any path (pass-through, miss, hit, 304 revalidation).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use http::{Method, StatusCode};
use support::*;

const WEB: &str = "/orgs/acme/packages/container/web";

/// Headers the simulator sends that must never reach a client: a cookie, the org token's scopes
/// are replaced, and `x-ratelimit-evil` looks like a rate-limit header but is not on the list.
fn assert_nothing_off_the_list(reply: &Reply, what: &str) {
    for name in ["x-ratelimit-evil", "set-cookie"] {
        assert!(reply.headers.get(name).is_none(), "{what}: {name} leaked");
    }
    if let Some(scopes) = reply.header("x-oauth-scopes") {
        assert!(
            !scopes.contains("repo"),
            "{what}: the org token's scopes leaked: {scopes}"
        );
    }
}

// Guards issue 14: clients read `x-github-api-version-selected` (Octokit), `vary` (HTTP caches)
// and `x-accepted-oauth-scopes`; the proxy used to drop them.
#[tokio::test]
async fn version_selected_vary_and_accepted_scopes_pass_on_misses_and_hits() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    for version in ["2022-11-28", "2026-03-10"] {
        let headers = [("x-github-api-version", version)];
        for round in ["miss", "hit"] {
            let reply = send(Method::GET, &proxy.url(WEB), Some(proxy.token()), &headers).await;
            assert_eq!(reply.status, StatusCode::OK);
            let what = format!("{version} {round}");
            assert_eq!(
                reply.header("x-github-api-version-selected"),
                Some(version),
                "{what}"
            );
            assert_eq!(
                reply.header("vary"),
                Some("Accept, Authorization, Cookie, X-GitHub-OTP"),
                "{what}"
            );
            assert_eq!(
                reply.header("x-accepted-oauth-scopes"),
                Some("read:packages"),
                "{what}"
            );
        }
    }
    let gets = sim.handle.log().len();
    assert_eq!(gets, 2, "one upstream call per API version");
}

// Guards issue 14: `X-OAuth-Scopes` used to be dropped (or, worse, would describe the org token);
// every answer to a client now carries the scopes the proxy grants *it*, as `/rate_limit` does.
#[tokio::test]
async fn x_oauth_scopes_describes_the_caller_on_every_answer() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra: format!("{}clients = [\"team-a\"]\n", allow_everything("0s")),
        ..ProxyOptions::uncached()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let (admin, reader) = (proxy.tokens[0].as_str(), proxy.tokens[1].as_str());
    let writer_scopes = "read:packages, write:packages, delete:packages";
    let cases = [
        (WEB.to_owned(), reader, StatusCode::OK, "read:packages"),
        (WEB.to_owned(), admin, StatusCode::OK, writer_scopes),
        (
            format!("{WEB}-nope"),
            reader,
            StatusCode::NOT_FOUND,
            "read:packages",
        ),
        (
            "/rate_limit".to_owned(),
            reader,
            StatusCode::OK,
            "read:packages",
        ),
        (
            "/rate_limit".to_owned(),
            admin,
            StatusCode::OK,
            writer_scopes,
        ),
    ];
    for (path, token, status, scopes) in cases {
        let reply = get(&proxy.url(&path), token).await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("x-oauth-scopes"), Some(scopes), "{path}");
        assert_nothing_off_the_list(&reply, &path);
    }
    // A refused delete (team-b has no rule) is an answer to that caller too.
    let url = proxy.url(&format!("{WEB}/versions/1"));
    let refused = send(Method::DELETE, &url, Some(reader), &[]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.header("x-oauth-scopes"), Some("read:packages"));
    // No credentials: nobody to describe.
    let anonymous = send(Method::GET, &proxy.url(WEB), None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers.get("x-oauth-scopes").is_none());
}

/// A cached proxy where `Cache-Control: no-cache` always revalidates upstream.
fn revalidating() -> ProxyOptions {
    ProxyOptions {
        extra: "[cache]\nmin_revalidate_interval = \"0s\"\n".to_owned(),
        ..ProxyOptions::default()
    }
}

// Guards issue 14: a 304 revalidation copied every `x-ratelimit-*` header GitHub sent into the
// stored answer, so `x-ratelimit-evil` reached every later hit. Only the allow-list passes, from
// the cache or not, and the 304 still refreshes what is on it.
#[tokio::test]
async fn headers_off_the_allow_list_never_reach_a_client_on_any_path() {
    let sim = spawn_sim().await;
    let cached = spawn_proxy(&sim, revalidating()).await;
    let url = cached.url(WEB);
    let token = cached.token();
    let miss = get(&url, token).await;
    assert!(cache_status(&miss).contains("fwd=miss"), "{miss:?}");
    assert_nothing_off_the_list(&miss, "miss");
    let hit = get(&url, token).await;
    assert!(fresh_hit(&hit), "{hit:?}");
    assert_nothing_off_the_list(&hit, "hit");

    // A forced revalidation: the simulator answers 304, with fresh headers and the evil one.
    sim.handle.clear_log();
    let revalidated = send(
        Method::GET,
        &url,
        Some(token),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.body, miss.body);
    let log = sim.handle.log();
    assert_eq!(log.len(), 1);
    assert!(log[0].headers.contains_key("if-none-match"), "no 304 asked");
    assert_nothing_off_the_list(&revalidated, "revalidated");
    let request_id = |r: &Reply| r.header("x-github-request-id").unwrap().to_owned();
    assert_ne!(
        request_id(&revalidated),
        request_id(&miss),
        "the 304 did not refresh the allow-listed headers"
    );
    let after = get(&url, token).await;
    assert!(fresh_hit(&after), "{after:?}");
    assert_nothing_off_the_list(&after, "hit after the 304");
    assert_eq!(request_id(&after), request_id(&revalidated));
    assert_eq!(after.header("etag"), miss.header("etag"));
    assert_eq!(after.header("content-type"), miss.header("content-type"));

    // The client's own conditional, answered from the cache; a cached 404.
    let etag = miss.header("etag").unwrap();
    let not_modified = send(Method::GET, &url, Some(token), &[("if-none-match", etag)]).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_nothing_off_the_list(&not_modified, "304 from the cache");
    for _ in 0..2 {
        let missing = get(&cached.url(&format!("{WEB}-nope")), token).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_nothing_off_the_list(&missing, "404");
    }

    // The pass-through path (cache off): 200, 304 and 404 alike.
    let uncached = spawn_proxy(&sim, ProxyOptions::uncached()).await;
    let plain = get(&uncached.url(WEB), uncached.token()).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_nothing_off_the_list(&plain, "pass-through");
    let etag = plain.header("etag").unwrap();
    let headers = [("if-none-match", etag)];
    let plain_304 = send(
        Method::GET,
        &uncached.url(WEB),
        Some(uncached.token()),
        &headers,
    )
    .await;
    assert_eq!(plain_304.status, StatusCode::NOT_MODIFIED);
    assert_nothing_off_the_list(&plain_304, "pass-through 304");
    let plain_404 = get(&uncached.url(&format!("{WEB}-nope")), uncached.token()).await;
    assert_eq!(plain_404.status, StatusCode::NOT_FOUND);
    assert_nothing_off_the_list(&plain_404, "pass-through 404");
}

/// `url` of a JSON answer, as a string.
fn url_of(value: &serde_json::Value) -> String {
    value["url"].as_str().unwrap().to_owned()
}

// Guards issue 14: package and version `url`s pointed at GitHub, so a client following one sent
// its proxy token to GitHub. They point at the proxy now; other URLs stay GitHub's.
#[tokio::test]
async fn a_client_following_a_body_url_gets_the_answer_from_the_proxy() {
    let sim = spawn_sim().await;
    let upstream = sim.handle.base_url();
    for opts in [ProxyOptions::default(), ProxyOptions::uncached()] {
        let proxy = spawn_proxy(&sim, opts).await;
        let token = proxy.token();
        let package = get(&proxy.url(WEB), token).await.json();
        assert_eq!(url_of(&package), proxy.url(WEB));
        assert_eq!(url_of(&package["owner"]), format!("{upstream}/users/acme"));
        let html = package["html_url"].as_str().unwrap();
        assert!(html.starts_with("https://github.com/"), "{html}");
        let ghes = get(&proxy.url(&format!("/api/v3{WEB}")), token)
            .await
            .json();
        assert_eq!(url_of(&ghes), proxy.url(&format!("/api/v3{WEB}")));

        let versions = get(&proxy.url(&format!("{WEB}/versions?per_page=5")), token).await;
        let first = &versions.json()[0];
        let url = url_of(first);
        assert!(
            url.starts_with(&proxy.url(&format!("{WEB}/versions/"))),
            "{url}"
        );
        sim.handle.clear_log();
        let followed = get(&url, token).await;
        assert_eq!(followed.status, StatusCode::OK, "{url}");
        assert_eq!(followed.json()["id"], first["id"]);
        assert_eq!(url_of(&followed.json()), url);
        let log = sim.handle.log();
        assert_eq!(log.len(), 1, "the followed URL went through the proxy");
        let auth = log[0].headers["authorization"].to_str().unwrap();
        assert_eq!(auth, format!("Bearer {}", sim.org_token));
    }
}

// Guards issue 14: the rewritten body is not GitHub's, so it must not carry GitHub's ETag (a
// client holding GitHub's bytes would be told 304 for ours, and the reverse); revalidation
// upstream still uses GitHub's tag, and each public base has its own.
#[tokio::test]
async fn a_rewritten_body_has_its_own_etag_and_304s_only_for_it() {
    let sim = spawn_sim().await;
    let direct = get(&format!("{}{WEB}", sim.handle.base_url()), &sim.org_token).await;
    let github_etag = direct.header("etag").unwrap().to_owned();
    for opts in [ProxyOptions::default(), ProxyOptions::uncached()] {
        let proxy = spawn_proxy(&sim, opts).await;
        let token = proxy.token();
        let first = get(&proxy.url(WEB), token).await;
        let ours = first.header("etag").unwrap().to_owned();
        assert_ne!(ours, github_etag);
        let ghes = get(&proxy.url(&format!("/api/v3{WEB}")), token).await;
        let ghes_etag = ghes.header("etag").unwrap().to_owned();
        assert_ne!(ghes_etag, ours, "two representations, one ETag");

        let conditional = |path: String, tag: String| {
            let url = proxy.url(&path);
            async move { send(Method::GET, &url, Some(token), &[("if-none-match", &tag)]).await }
        };
        sim.handle.clear_log();
        let held = conditional(WEB.to_owned(), ours.clone()).await;
        assert_eq!(held.status, StatusCode::NOT_MODIFIED);
        assert_eq!(held.header("etag"), Some(ours.as_str()));
        if let Some(seen) = sim.handle.log().first() {
            // Pass-through: GitHub was asked with its own tag.
            assert_eq!(seen.headers["if-none-match"], github_etag.as_str());
        }
        let githubs = conditional(WEB.to_owned(), github_etag.clone()).await;
        assert_eq!(githubs.status, StatusCode::OK, "304 for GitHub's bytes");
        assert_eq!(githubs.body, first.body);
        let other = conditional(format!("/api/v3{WEB}"), ours.clone()).await;
        assert_eq!(other.status, StatusCode::OK, "304 for another base's bytes");
    }
    // The cache revalidates upstream with GitHub's tag and keeps serving its own.
    let proxy = spawn_proxy(&sim, revalidating()).await;
    let first = get(&proxy.url(WEB), proxy.token()).await;
    sim.handle.clear_log();
    let headers = [("cache-control", "no-cache")];
    let again = send(Method::GET, &proxy.url(WEB), Some(proxy.token()), &headers).await;
    assert_eq!(
        sim.handle.log()[0].headers["if-none-match"],
        github_etag.as_str()
    );
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(again.body, first.body);
}

// Guards issue 14: the cache key folded package names, so a cached 404 for `WEB` answered `web`
// (GitHub finds only `web`). Logins still share one entry; a delete through any spelling still
// invalidates every spelling's entries.
#[tokio::test]
async fn one_spelling_of_a_package_never_answers_for_another() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra: allow_everything("0s"),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let token = proxy.token();
    let upper = "/orgs/acme/packages/container/WEB/versions";
    let lower = "/orgs/acme/packages/container/web/versions?per_page=100";
    assert_eq!(
        get(&proxy.url(upper), token).await.status,
        StatusCode::NOT_FOUND
    );
    let listed = get(&proxy.url(lower), token).await;
    assert_eq!(
        listed.status,
        StatusCode::OK,
        "a cached 404 answered another spelling"
    );
    let owner_spelling = get(&proxy.url(&lower.replace("acme", "ACME")), token).await;
    assert!(fresh_hit(&owner_spelling), "{owner_spelling:?}");
    assert_eq!(owner_spelling.body, listed.body);

    let version = listed.ids()[0];
    let delete = format!("/orgs/ACME/packages/container/web/versions/{version}");
    let deleted = send(Method::DELETE, &proxy.url(&delete), Some(token), &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{deleted:?}");
    sim.handle.clear_log();
    // Both package spellings were invalidated (fetched again); the owner's spellings share one.
    let cases = [
        (lower.to_owned(), false),
        (lower.replace("acme", "Acme"), true),
        (upper.to_owned(), false),
    ];
    for (path, hit) in cases {
        let reply = get(&proxy.url(&path), token).await;
        assert_eq!(fresh_hit(&reply), hit, "{path}: {reply:?}");
        if reply.status == StatusCode::OK {
            assert!(
                !reply.ids().contains(&version),
                "{path} still lists {version}"
            );
        }
    }
    assert_eq!(sim.handle.log().len(), 2, "web and WEB each fetched once");
}

// Guards issue 14: a client's `X-Request-Id` became the request id, so two clients sending the
// same one collided in the audit log. The proxy's id keys every record; the client's sits beside.
#[tokio::test]
async fn audit_records_key_on_the_proxys_id_and_keep_the_clients_apart() {
    let sim = spawn_sim().await;
    let audit = temp_dir("audit-ids").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n[[policy.allow]]\nname = \"all\"\n"
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let versions = get(&proxy.url(&format!("{WEB}/versions")), proxy.token()).await;
    let ids = versions.ids();
    let sent = [
        (0, ids[0], Some("deploy-1")),
        (1, ids[1], Some("deploy-1")),
        (0, ids[2], None),
        (1, ids[3], Some("not plain; dropped")),
    ];
    let mut answers = Vec::new();
    for (client, version, header) in sent {
        let url = proxy.url(&format!("{WEB}/versions/{version}"));
        let headers: Vec<(&str, &str)> = header.map(|h| ("x-request-id", h)).into_iter().collect();
        let reply = send(Method::DELETE, &url, Some(&proxy.tokens[client]), &headers).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
        answers.push(reply.header("x-request-id").unwrap().to_owned());
    }
    let distinct: std::collections::HashSet<&String> = answers.iter().collect();
    assert_eq!(
        distinct.len(),
        answers.len(),
        "request ids collided: {answers:?}"
    );

    let (records, bad) = packages_proxy::audit::read(&audit).unwrap();
    assert!(bad.is_empty());
    let names = ["team-a", "team-b"];
    let expected_client_ids = [Some("deploy-1"), Some("deploy-1"), None, None];
    for (((client, version, _), ours), client_id) in
        sent.iter().zip(&answers).zip(expected_client_ids)
    {
        let mine: Vec<_> = records.iter().filter(|r| &r.request_id == ours).collect();
        let phases: Vec<&str> = mine.iter().map(|r| r.phase.as_str()).collect();
        assert_eq!(phases, ["intent", "outcome"], "{ours}: {records:#?}");
        for record in mine {
            assert_eq!(record.client, names[*client]);
            assert_eq!(record.version, Some(*version));
            assert_eq!(record.client_request_id.as_deref(), client_id);
        }
    }
}

// HEAD over HTTP/2 (h2c, prior knowledge): hyper sends a HEAD answer's body as DATA on HTTP/2 (it
// leaves it out on HTTP/1 only), and the client reset the stream with PROTOCOL_ERROR, on a miss
// and on a hit alike. The answer has the GET's length and no body.
#[tokio::test]
async fn head_over_http2_has_the_gets_length_and_no_body() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let (mut sender, _conn) = h2(proxy.addr()).await;
    let path = format!("{WEB}/versions?per_page=3");
    let mut ask = async |method: Method| {
        let request = http::Request::builder()
            .method(method)
            .uri(proxy.url(&path))
            .header("authorization", format!("Bearer {}", proxy.token()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("stream reset").to_bytes();
        (parts, body)
    };
    for round in ["miss", "hit"] {
        let (head, body) = ask(Method::HEAD).await;
        assert_eq!(head.status, StatusCode::OK, "{round}");
        assert_eq!(head.version, http::Version::HTTP_2);
        assert!(body.is_empty(), "{round}: HEAD answered with a body");
        let cache = head.headers["cache-status"].to_str().unwrap();
        assert!(cache.contains(round), "{round}: {cache}");
        let (get, body) = ask(Method::GET).await;
        assert_eq!(get.status, StatusCode::OK);
        assert!(!body.is_empty());
        assert_eq!(
            head.headers["content-length"],
            body.len().to_string(),
            "{round}: HEAD's length is the GET's"
        );
    }
}

// Guards conditional requests whose `If-None-Match` list comes split over two header lines (RFC
// 9110 §5.3 makes them one list; clients and intermediaries may split it): the matching tag is
// honoured whichever line carries it, from the cache and on the pass-through path.
#[tokio::test]
async fn an_if_none_match_list_split_over_two_lines_is_one_list() {
    let sim = spawn_sim().await;
    for options in [ProxyOptions::default(), ProxyOptions::uncached()] {
        let proxy = spawn_proxy(&sim, options).await;
        let url = proxy.url(WEB);
        let first = get(&url, proxy.token()).await;
        assert_eq!(first.status, StatusCode::OK);
        let etag = first.header("etag").unwrap().to_owned();
        for lines in [
            [
                ("if-none-match", "\"nope\""),
                ("if-none-match", etag.as_str()),
            ],
            [
                ("if-none-match", etag.as_str()),
                ("if-none-match", "\"nope\""),
            ],
        ] {
            let reply = send(Method::GET, &url, Some(proxy.token()), &lines).await;
            assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{lines:?}");
        }
        let neither = [("if-none-match", "\"a\""), ("if-none-match", "\"b\"")];
        let reply = send(Method::GET, &url, Some(proxy.token()), &neither).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
}

/// An upstream that answers every request `200` with `[]` and `headers` (for headers the
/// simulator does not send: a retiring API version, SSO, `Last-Modified`).
async fn fixed_upstream(headers: &[(&'static str, &'static str)]) -> String {
    let mut all = vec![("content-type", "application/json; charset=utf-8".to_owned())];
    all.extend(
        headers
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    answering_upstream(StatusCode::OK, all, bytes::Bytes::from_static(b"[]")).await
}

// Guards the headers GitHub uses to warn a client: `Deprecation` and `Sunset` (the API version it
// asked for is retiring) and `X-GitHub-SSO` (`partial-results`: SSO-protected orgs left out of
// a list) reach it on a miss, a hit and the pass-through path.
#[tokio::test]
async fn retirement_and_sso_warnings_reach_the_client() {
    let upstream = fixed_upstream(&[
        ("etag", "W/\"retiring\""),
        ("deprecation", "@1772323200"),
        ("sunset", "Wed, 01 Mar 2028 00:00:00 GMT"),
        ("x-github-sso", "partial-results; organizations=21955855"),
    ])
    .await;
    for (options, rounds) in [(ProxyOptions::default(), 2), (ProxyOptions::uncached(), 1)] {
        let proxy = spawn_proxy_to(&upstream, "ghp_fake_retiring", options).await;
        for round in 0..rounds {
            let reply = get(
                &proxy.url("/orgs/acme/packages?package_type=container"),
                proxy.token(),
            )
            .await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply.header("deprecation"),
                Some("@1772323200"),
                "round {round}"
            );
            assert_eq!(
                reply.header("sunset"),
                Some("Wed, 01 Mar 2028 00:00:00 GMT")
            );
            assert_eq!(
                reply.header("x-github-sso"),
                Some("partial-results; organizations=21955855")
            );
        }
    }
}

// Guards `If-Modified-Since` with the cache on (the default): the proxy asks GitHub for the whole
// answer to store it, so it must judge the client's condition itself, on the miss as on hits,
// against the stored `Last-Modified`; `If-None-Match` takes precedence (RFC 9110 §13.1.3).
#[tokio::test]
async fn if_modified_since_is_answered_from_the_cache() {
    const LAST_MODIFIED: &str = "Tue, 01 Jul 2025 10:00:00 GMT";
    let upstream = fixed_upstream(&[("etag", "W/\"lm\""), ("last-modified", LAST_MODIFIED)]).await;
    let proxy = spawn_proxy_to(&upstream, "ghp_fake_lm", ProxyOptions::default()).await;
    let url = proxy.url("/orgs/acme/packages?package_type=container");
    let ask = |headers: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        let token = proxy.token().to_owned();
        async move { send(Method::GET, &url, Some(&token), &headers).await }
    };
    let miss = ask(vec![("if-modified-since", LAST_MODIFIED)]).await;
    assert_eq!(miss.status, StatusCode::NOT_MODIFIED, "on the miss");
    assert_eq!(miss.header("last-modified"), Some(LAST_MODIFIED));
    assert!(miss.body.is_empty());
    let later = ask(vec![("if-modified-since", "Wed, 02 Jul 2025 00:00:00 GMT")]).await;
    assert_eq!(later.status, StatusCode::NOT_MODIFIED, "on a hit");
    let earlier = ask(vec![("if-modified-since", "Mon, 30 Jun 2025 00:00:00 GMT")]).await;
    assert_eq!(earlier.status, StatusCode::OK, "modified since");
    assert_eq!(earlier.text(), "[]");
    let garbage = ask(vec![("if-modified-since", "yesterday")]).await;
    assert_eq!(garbage.status, StatusCode::OK, "not an HTTP date");
    let both = ask(vec![
        ("if-none-match", "W/\"other\""),
        ("if-modified-since", LAST_MODIFIED),
    ])
    .await;
    assert_eq!(both.status, StatusCode::OK, "If-None-Match decides");
    // Even one too long to use (over 1 KiB): its presence alone sets If-Modified-Since aside.
    let long: &'static str = Box::leak(
        (0..120)
            .map(|i| format!("W/\"t{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
            .into_boxed_str(),
    );
    let long_list = ask(vec![
        ("if-none-match", long),
        ("if-modified-since", LAST_MODIFIED),
    ])
    .await;
    assert_eq!(
        long_list.status,
        StatusCode::OK,
        "a long If-None-Match list"
    );
}

// Found trying the proxy as a browser's GitHub client (Octokit in a web page) would: it sends a
// preflight `OPTIONS` first, which was a 404, and the answers carried no
// `Access-Control-Allow-Origin`, so the browser refused every call. api.github.com answers both.
#[tokio::test]
async fn a_browser_client_gets_githubs_cors_answers_and_the_own_endpoints_none() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let origin = ("origin", "https://dashboard.example");
    let versions = proxy.url(&format!("{WEB}/versions"));
    // The preflight: no credentials, nothing sent upstream.
    let before = sim.gets();
    let preflight = send(
        Method::OPTIONS,
        &versions,
        None,
        &[
            origin,
            ("access-control-request-method", "GET"),
            (
                "access-control-request-headers",
                "authorization, user-agent, x-github-api-version, if-none-match",
            ),
        ],
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    // `user-agent`: Octokit sets one, and Firefox asks for it.
    for name in [
        "authorization",
        "user-agent",
        "x-github-api-version",
        "if-none-match",
    ] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("GET")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("86400"));
    // A delete's preflight too; a path the proxy does not serve stays 404, as its call would.
    let delete_preflight = send(
        Method::OPTIONS,
        &proxy.url(&format!("{WEB}/versions/1")),
        None,
        &[origin, ("access-control-request-method", "DELETE")],
    )
    .await;
    assert_eq!(delete_preflight.status, StatusCode::NO_CONTENT);
    let elsewhere = send(
        Method::OPTIONS,
        &proxy.url("/repos/acme/secrets"),
        None,
        &[origin, ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.gets(), before, "a preflight went upstream");
    // The calls: a miss, then a hit, each readable by the page (ETag, Link, the figures).
    for _ in 0..2 {
        let reply = send(Method::GET, &versions, Some(proxy.token()), &[origin]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
        let exposed = reply
            .header("access-control-expose-headers")
            .unwrap()
            .to_ascii_lowercase();
        for name in ["etag", "link", "x-ratelimit-remaining", "cache-status"] {
            assert!(exposed.contains(name), "{exposed}");
        }
    }
    // Errors too, so a page can read the message.
    let unauthenticated = send(Method::GET, &versions, None, &[origin]).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unauthenticated.header("access-control-allow-origin"),
        Some("*")
    );
    // A refusal of the request's shape (two tokens) too.
    let repeated = send(
        Method::GET,
        &versions,
        Some(proxy.token()),
        &[origin, ("authorization", "Bearer another")],
    )
    .await;
    assert_eq!(repeated.status, StatusCode::BAD_REQUEST);
    assert_eq!(repeated.header("access-control-allow-origin"), Some("*"));
    // No `Origin`, no CORS headers (the cached answer does not keep the browser's).
    let plain = get(&versions, proxy.token()).await;
    assert!(
        cache_status(&plain).contains("hit"),
        "{}",
        cache_status(&plain)
    );
    assert!(plain.header("access-control-allow-origin").is_none());
    // The unauthenticated endpoints answer no browser.
    for path in ["/healthz", "/metrics"] {
        let reply = send(Method::GET, &proxy.url(path), None, &[origin]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(
            reply.header("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
}
