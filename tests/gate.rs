//! Holes found in the destructive gate (issue 15), each pinned through the real proxy in front
//! of the simulator, asserted on the simulator's request log and state and on the audit log.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::path::{Path, PathBuf};

use http::{Method, StatusCode};
use packages_proxy::audit::{self, AuditRecord};
use support::*;

/// A proxy whose policy is `policy` (TOML after `[mutations]`), auditing into a fresh file.
async fn proxy_with(sim: &Sim, mutations: &str, policy: &str) -> (TestProxy, PathBuf) {
    let audit = temp_dir("gate").join("audit.jsonl");
    let extra = format!("[mutations]\naudit_log = {audit:?}\n{mutations}\n{policy}");
    let opts = ProxyOptions {
        extra,
        ..ProxyOptions::default()
    };
    (spawn_proxy(sim, opts).await, audit)
}

/// Version ids of a container package in org `acme`, read from the simulator directly.
async fn versions(sim: &Sim, package: &str) -> Vec<u64> {
    let url = format!(
        "{}/orgs/acme/packages/container/{package}/versions?per_page=100",
        sim.handle.base_url()
    );
    get(&url, &sim.org_token).await.ids()
}

fn version_path(package: &str, id: u64) -> String {
    format!("/orgs/acme/packages/container/{package}/versions/{id}")
}

fn deletes_seen(sim: &Sim) -> usize {
    sim.handle
        .log()
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .count()
}

fn records(audit: &Path) -> Vec<AuditRecord> {
    audit::read(audit).unwrap().0
}

// Regression: only `1` and `true` counted as a dry run; `yes`, `on`, `2`, `"1"`, `1, 1` and two
// headers `0` then `1` each deleted for real.
#[tokio::test]
async fn no_dry_run_spelling_mutates_and_ambiguous_ones_are_400() {
    let sim = spawn_sim().await;
    let (proxy, audit) = proxy_with(&sim, "pace = \"0s\"", ALLOW_ALL).await;
    let web = versions(&sim, "web").await;
    let dry = StatusCode::OK;
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(Vec<&str>, StatusCode)> = vec![
        (vec!["1"], dry),
        (vec!["true"], dry),
        (vec!["TRUE"], dry),
        (vec!["yes"], dry),
        (vec!["on"], dry),
        (vec!["y"], dry),
        (vec!["t"], dry),
        (vec!["2"], dry),
        (vec!["\"1\""], dry),
        (vec!["\"0\""], dry),
        (vec!["dry"], dry),
        (vec!["1, 1"], dry),
        (vec!["1", "1"], dry),
        (vec!["yes", "true"], dry),
        (vec!["0", "1"], bad),
        (vec!["1", "0"], bad),
        (vec!["0, 1"], bad),
        (vec!["false,true"], bad),
        (vec!["0", "0"], bad),
        (vec!["0, 0"], bad),
        (vec![""], bad),
        (vec!["  "], bad),
        (vec!["1,"], bad),
        (vec![",0"], bad),
    ];
    for (i, (values, expected)) in cases.iter().enumerate() {
        let headers: Vec<(&str, &str)> = values
            .iter()
            .map(|v| ("x-packages-proxy-dry-run", *v))
            .collect();
        let path = version_path("web", web[i + 1]);
        let reply = send(
            Method::DELETE,
            &proxy.url(&path),
            Some(proxy.token()),
            &headers,
        )
        .await;
        assert_eq!(reply.status, *expected, "{values:?}: {:?}", reply.body);
        let body = reply.json();
        if *expected == dry {
            assert_eq!(body["dry_run"], true, "{values:?}");
        } else {
            assert!(body["message"].as_str().unwrap().contains("Dry-Run"));
            assert!(body["documentation_url"].is_string());
        }
    }
    // Bytes that are not text, sent raw (no client library would build them).
    let raw_request = format!(
        "DELETE {} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {}\r\n\
         X-Packages-Proxy-Dry-Run: \u{ff}0\r\nConnection: close\r\n\r\n",
        version_path("web", web[40]),
        proxy.token()
    );
    let (status, _) = raw(proxy.addr(), raw_request.as_bytes()).await;
    assert_eq!(status, 400, "a garbled value was not refused");

    assert_eq!(deletes_seen(&sim), 0, "a dry-run spelling deleted for real");
    for id in &web[1..=cases.len()] {
        let deleted = sim.handle.version_deleted("acme", "container", "web", *id);
        assert_eq!(deleted, Some(false), "{id} deleted");
    }
    let records = records(&audit);
    assert!(records.iter().all(|r| r.phase != "intent"), "{records:?}");
    let dry_runs = records.iter().filter(|r| r.decision == "dry_run").count();
    assert_eq!(dry_runs, cases.iter().filter(|(_, s)| *s == dry).count());

    // The explicit falses, each sent once, do send the call: the table above could fail.
    for (i, value) in ["0", " FALSE ", "No", "off"].into_iter().enumerate() {
        let path = version_path("web", web[50 + i]);
        let headers = [("x-packages-proxy-dry-run", value)];
        let reply = send(
            Method::DELETE,
            &proxy.url(&path),
            Some(proxy.token()),
            &headers,
        )
        .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{value:?}");
    }
    assert_eq!(deletes_seen(&sim), 4);
}

#[test]
fn the_policy_dry_run_setting_is_a_strict_boolean() {
    let (base, _) = proxy_config("http://127.0.0.1:9", 0, &ProxyOptions::default());
    let audit = temp_dir("strict").join("audit.jsonl");
    let with = |policy: &str| {
        let text = format!("{base}\n[mutations]\naudit_log = {audit:?}\n{policy}\n{ALLOW_ALL}");
        packages_proxy::config::Config::parse(&text)
    };
    assert!(with("[policy]\ndry_run = true").unwrap().policy.dry_run);
    for garbage in ["\"yes\"", "\"true\"", "1", "\"\""] {
        let error = with(&format!("[policy]\ndry_run = {garbage}")).unwrap_err();
        let mut chain = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            chain.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(chain.contains("dry_run"), "{garbage}: {chain}");
    }
}

/// Allows every destructive call.
const ALLOW_ALL: &str = "[[policy.allow]]\nname = \"all\"\n";
