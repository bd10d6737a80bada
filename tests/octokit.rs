//! Compatibility: a real GitHub client library, `@octokit/rest` (JavaScript), works through the
//! proxy unchanged — pagination via the proxy's Link headers, `/` in package names, the refused
//! delete (403), a bad token (401), and the `x-github-api-version-selected` and `x-oauth-scopes`
//! headers it reads. The client side is `tests/octokit/check.mjs`.
//!
//! Needs Node and `tests/octokit/node_modules` (`npm ci` in `tests/octokit`; `.ci/run` does it).
//! Without either, the test fails in CI (`CI` set) and is skipped loudly otherwise.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::{path::PathBuf, process::Stdio, time::Duration};

use http::Method;
use support::*;
use tokio::process::Command;

/// `tests/octokit`, or `None` (skip) when `node` or its `node_modules` is missing outside CI.
/// On CI (`CI` set) a missing `node` or `node_modules` fails the test: a compatibility check
/// that silently passes checks nothing.
async fn octokit_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/octokit");
    let on_ci = std::env::var_os("CI").is_some();
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await;
    if !node.is_ok_and(|out| out.status.success()) {
        assert!(
            !on_ci,
            "the Octokit compatibility test needs `node` (Node >= 20) on CI; .ci/run installs it"
        );
        eprintln!(
            "SKIPPED: the Octokit compatibility test needs `node` (Node >= 20), which is not \
             installed; install nodejs and npm, then `npm ci` in tests/octokit"
        );
        return None;
    }
    if !dir.join("node_modules/@octokit/plugin-throttling").is_dir() {
        assert!(
            !on_ci,
            "tests/octokit/node_modules is missing or stale on CI: .ci/run should have run \
             `npm ci` in tests/octokit"
        );
        eprintln!("SKIPPED: tests/octokit/node_modules is missing (run `npm ci` in tests/octokit)");
        return None;
    }
    Some(dir)
}

/// Runs `script` (in `tests/octokit`) against `proxy` and returns its JSON summary and stdout;
/// panics with both outputs when it fails or outlives `limit_secs`.
async fn run_node(
    dir: &std::path::Path,
    script: &str,
    proxy: &TestProxy,
    limit_secs: u64,
) -> (serde_json::Value, String) {
    let child = Command::new("node")
        .arg(dir.join(script))
        .current_dir(dir)
        .env("BASE_URL", &proxy.base)
        .env("TOKEN", proxy.token())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(limit_secs), child)
        .await
        .unwrap_or_else(|_| panic!("node {script} timed out after {limit_secs}s"))
        .expect("could not run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary = serde_json::from_str(stdout.trim()).unwrap();
    (summary, stdout)
}

// Guards the README's "Pointing clients at it" promise for Octokit: an unmodified client, given
// only `baseUrl` and a proxy token, pages, reads and is refused exactly as against GitHub, and
// upstream only ever sees the org token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octokit_rest_works_through_the_proxy_unchanged() {
    let Some(dir) = octokit_dir().await else {
        return;
    };
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;

    let (summary, stdout) = run_node(&dir, "check.mjs", &proxy, 60).await;
    assert_eq!(summary["ok"], true, "{stdout}");
    assert_eq!(summary["results"].as_array().unwrap().len(), 6, "{stdout}");

    // Upstream saw only the org token, never a client's (nor the wrong one check 5 sent).
    let log = sim.handle.log();
    assert!(!log.is_empty(), "no request reached the simulator");
    let org_auth = format!("Bearer {}", sim.org_token);
    for entry in &log {
        let auth = entry
            .headers
            .get_all("authorization")
            .iter()
            .collect::<Vec<_>>();
        assert_eq!(
            auth.len(),
            1,
            "{} {}: expected one Authorization header",
            entry.method,
            entry.path
        );
        assert_eq!(
            auth[0].to_str().unwrap(),
            org_auth,
            "{} {}: not the org token",
            entry.method,
            entry.path
        );
        for (name, value) in &entry.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains(proxy.token()) && !value.contains("ppx_"),
                "{} {}: header {name} carries a client token",
                entry.method,
                entry.path
            );
        }
        let query = entry.query.as_deref().unwrap_or_default();
        assert!(
            !query.contains("ppx_"),
            "{} {}: the query carries a client token",
            entry.method,
            entry.path
        );
    }

    // What Octokit sent arrived as GitHub expects it: `%2F` in names, all three pages, no DELETE.
    assert!(
        log.iter()
            .any(|e| e.path == "/orgs/acme/packages/container/base%2Fruntime"),
        "no request for base%2Fruntime: {:?}",
        log.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    let version_pages = log
        .iter()
        .filter(|e| e.path == "/orgs/acme/packages/container/web/versions")
        .count();
    assert!(
        version_pages >= 3,
        "expected 3 pages of acme/web versions upstream, saw {version_pages}"
    );
    assert!(
        log.iter().all(|e| e.method != Method::DELETE),
        "a DELETE reached the simulator"
    );
}

// Octokit with @octokit/plugin-throttling and @octokit/plugin-retry (as GitHub recommends) asks
// for an uncached key while the proxy backs off after GitHub's primary limit: the proxy answers
// as GitHub would (403, `x-ratelimit-remaining: 0`, `x-ratelimit-reset`), so the plugin waits for
// the reset and succeeds, instead of giving up after ~14 s of 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn octokit_throttling_waits_out_the_shared_tokens_primary_limit() {
    let Some(dir) = octokit_dir().await else {
        return;
    };
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let window = 12;
    sim.handle.set_rate_window(0, window);
    let reset = epoch_now() + window;
    let trigger = get(
        &proxy.url("/orgs/acme/packages/container/web/versions?per_page=3"),
        proxy.token(),
    )
    .await;
    assert_eq!(trigger.status, http::StatusCode::FORBIDDEN);
    let seen = sim.handle.log().len();

    let (summary, stdout) = run_node(&dir, "throttle.mjs", &proxy, 90).await;
    let events = summary["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{stdout}");
    assert_eq!(events[0]["kind"], "rate-limit", "{stdout}");
    assert!(events[0]["retryAfter"].as_u64().unwrap() >= 5, "{stdout}");
    assert!(epoch_now() >= reset, "succeeded before the window ended");
    // Nothing reached GitHub during the back-off; one request after it.
    let after: Vec<_> = sim.handle.log().into_iter().skip(seen).collect();
    assert_eq!(
        after.len(),
        1,
        "{:?}",
        after.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
}
