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
