//! Holes found in the destructive gate (issue 15), each pinned through the real proxy in front
//! of the simulator, asserted on the simulator's request log and state and on the audit log.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

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

fn version_path(package: &str, id: u64) -> String {
    format!("/orgs/acme/packages/container/{package}/versions/{id}")
}

/// `audit` holds a `not_sent` outcome (a call refused before its request left).
fn assert_not_sent_recorded(audit: &Path) {
    let records = records(audit);
    assert!(
        records
            .iter()
            .any(|r| r.phase == "outcome" && r.decision == "not_sent"),
        "{records:?}"
    );
}

/// Waits until one delete reached GitHub and `intents` were recorded (the rest are queued).
async fn one_sent_and_queued(sim: &Sim, audit: &Path, intents: usize) {
    eventually(
        Duration::from_secs(5),
        "one sent, the rest queued",
        || async {
            let recorded = records(audit)
                .iter()
                .filter(|r| r.phase == "intent")
                .count();
            sim.deletes() == 1 && recorded == intents
        },
    )
    .await;
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
    let web = sim.versions("web").await;
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

    assert_eq!(sim.deletes(), 0, "a dry-run spelling deleted for real");
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
    assert_eq!(sim.deletes(), 4);
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

/// A broad rule first, then narrower ones that add protections for `web`.
const LAYERED: &str = r#"
[[policy.allow]]
name = "broad"
max_per_hour = 100

[[policy.allow]]
name = "web-guard"
packages = ["web"]
protect_tags = ["latest"]
max_per_hour = 2

[[policy.allow]]
name = "team-b-rehearsal"
clients = ["team-b"]
packages = ["web"]
dry_run = true

[[policy.deny]]
name = "never-base"
packages = ["base/**"]
"#;

// Regression: the first matching allow rule decided alone, so a broad rule listed before a
// narrow one switched off its protected tags and budget (a `latest` version was deleted).
#[tokio::test]
async fn protections_of_every_matching_allow_rule_combine() {
    let sim = spawn_sim().await;
    let (proxy, audit) = proxy_with(&sim, "pace = \"0s\"", LAYERED).await;
    let web = sim.versions("web").await;
    let (a, b) = (&proxy.tokens[0], &proxy.tokens[1]);
    let del = |token: &str, id: u64| {
        let url = proxy.url(&version_path("web", id));
        let token = token.to_owned();
        async move { send(Method::DELETE, &url, Some(&token), &[]).await }
    };

    let latest = del(a, web[0]).await;
    assert_eq!(latest.status, StatusCode::FORBIDDEN, "{:?}", latest.body);
    let message = latest.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("latest") && message.contains("web-guard"),
        "{message}"
    );

    // The tightest budget (2) holds, though the first rule alone would allow 100.
    assert_eq!(del(a, web[1]).await.status, StatusCode::NO_CONTENT);
    assert_eq!(del(a, web[2]).await.status, StatusCode::NO_CONTENT);
    let spent = del(a, web[3]).await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        spent.json()["message"]
            .as_str()
            .unwrap()
            .contains("web-guard")
    );

    // One matching rule asks for dry runs: team-b's delete only reports.
    let rehearsal = del(b, web[4]).await;
    assert_eq!(rehearsal.status, StatusCode::OK, "{:?}", rehearsal.body);
    let body = rehearsal.json();
    assert_eq!(body["dry_run"], true);
    assert_eq!(
        body["rules"],
        serde_json::json!(["broad", "web-guard", "team-b-rehearsal"])
    );
    assert_eq!(body["protected_tags"], serde_json::json!(["latest"]));

    // Deny still wins over every allow rule.
    let base = send(
        Method::DELETE,
        &proxy.url("/orgs/acme/packages/container/base%2Fruntime/versions/1"),
        Some(a),
        &[],
    )
    .await;
    assert_eq!(base.status, StatusCode::FORBIDDEN);

    assert_eq!(sim.deletes(), 2);
    for (i, deleted) in [(0, false), (1, true), (2, true), (3, false), (4, false)] {
        let state = sim
            .handle
            .version_deleted("acme", "container", "web", web[i]);
        assert_eq!(state, Some(deleted), "web[{i}]");
    }
    let records = records(&audit);
    let completed = records.iter().find(|r| r.decision == "completed").unwrap();
    assert_eq!(completed.rules, ["broad", "web-guard"]);
    let dry = records.iter().find(|r| r.decision == "dry_run").unwrap();
    assert_eq!(dry.rules, ["broad", "web-guard", "team-b-rehearsal"]);
}

#[tokio::test]
async fn policy_explain_shows_every_matching_rule_and_the_combined_protections() {
    let sim = spawn_sim().await;
    let dir = temp_dir("explain");
    let audit = dir.join("audit.jsonl");
    let (text, _) = proxy_config(&sim.handle.base_url(), 0, &ProxyOptions::default());
    let config = dir.join("config.toml");
    let extra = format!("[mutations]\naudit_log = {audit:?}\n{LAYERED}");
    std::fs::write(&config, format!("{text}\n{extra}")).unwrap();
    let explain = |client: &str, path: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .args(["--client", client, "DELETE", path])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        (text, out.status.code())
    };
    // A script reads the decision from the exit code: 0 sent, 3 denied, 4 a dry run only.
    let (web, code) = explain("team-b", "/orgs/acme/packages/container/web/versions/7");
    assert_eq!(code, Some(4), "{web}");
    assert!(
        web.starts_with(
            "allow: matching allow rules \"broad\", \"web-guard\", \"team-b-rehearsal\"\n"
        ),
        "{web}"
    );
    assert!(
        web.contains("protected tags (checked at request time): latest"),
        "{web}"
    );
    assert!(
        web.contains("tightest 2 per client per window (rule \"web-guard\")"),
        "{web}"
    );
    assert!(
        web.contains("dry run: yes (rule \"team-b-rehearsal\")"),
        "{web}"
    );
    let (other, code) = explain("team-a", "/orgs/acme/packages/container/api/versions/7");
    assert_eq!(code, Some(0), "{other}");
    assert!(
        other.starts_with("allow: matching allow rules \"broad\"\n"),
        "{other}"
    );
    assert!(other.contains("protected tags: none") && other.contains("dry run: no"));
    let (base, code) = explain("team-a", "/orgs/acme/packages/container/base%2Fruntime");
    assert_eq!(code, Some(3), "{base}");
    assert!(
        base.starts_with("deny: denied by rule \"never-base\""),
        "{base}"
    );
    // An owner the proxy does not serve is answered 404 whatever the rules say: denied.
    let (elsewhere, code) = explain("team-a", "/orgs/other/packages/container/api/versions/7");
    assert_eq!(code, Some(3), "{elsewhere}");
    assert!(
        elsewhere.starts_with("deny: the proxy does not serve"),
        "{elsewhere}"
    );
    // A read needs no rule (0), unless its owner is one the server 404s (3).
    let read = |path: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .args(["--client", "team-a", "GET", path])
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(
        read("/orgs/acme/packages/container/web/versions/7"),
        Some(0)
    );
    assert_eq!(
        read("/orgs/other/packages/container/web/versions/7"),
        Some(3)
    );
    // No decision at all is neither: an unknown client is an error (1), not a deny.
    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
        .args(["policy", "explain", "--config"])
        .arg(&config)
        .args([
            "--client",
            "nobody",
            "DELETE",
            "/orgs/acme/packages/container/web",
        ])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no client named \"nobody\""));
}

// Regression: `max_per_hour` was taken before the checks that may refuse (quota, the pace
// queue), so refused calls ate it: a budget of 40 allowed 31 real deletes.
#[tokio::test]
async fn a_rule_budget_is_spent_only_by_mutations_that_are_sent() {
    budget_equals_sent_deletes("").await;
}

// The same, with the budget fleet-wide in Redis: a refusal gives its token back there too.
#[tokio::test]
async fn a_shared_rule_budget_is_spent_only_by_mutations_that_are_sent() {
    let Some(redis) = Redis::start() else { return };
    budget_equals_sent_deletes(&format!("[shared]\nredis_url = \"{}\"\n", redis.url())).await;
}

/// A budget of 3 with pace-queue refusals along the way: exactly 3 real deletes.
async fn budget_equals_sent_deletes(shared: &str) {
    let sim = spawn_sim().await;
    // Slots 400 ms apart and at most 500 ms of waiting: of three deletes at once, the third is
    // refused by the pace queue, after its intent and after the budget used to be taken. No
    // multi-arch guard: its registry reads come out of the same 500 ms, and on a busy machine
    // they refused the call before its intent instead.
    let mutations = "pace = \"400ms\"\nmax_queue_wait = \"500ms\"";
    let policy = format!(
        "{shared}[[policy.allow]]\nname = \"web-budget\"\npackages = [\"web\"]\nmax_per_hour = 3\n\
         multi_arch_guard = false\n"
    );
    let (proxy, audit) = proxy_with(&sim, mutations, &policy).await;
    if !shared.is_empty() {
        wait_shared_tier(
            &proxy.url("/metrics"),
            true,
            std::time::Duration::from_secs(10),
        )
        .await;
    }
    let web = sim.versions("web").await;
    let mut next = 1;
    let mut refused = 0;
    let mut budget_429 = None;
    for _round in 0..10 {
        let targets = (0..3)
            .map(|i| {
                let path = version_path("web", web[next + i]);
                (proxy.url(&path), proxy.token().to_owned())
            })
            .collect();
        next += 3;
        for task in spawn_deletes(targets) {
            match task.await.unwrap() {
                StatusCode::NO_CONTENT => {}
                StatusCode::TOO_MANY_REQUESTS => refused += 1,
                other => panic!("{other}"),
            }
        }
        let probe = send(
            Method::DELETE,
            &proxy.url(&version_path("web", web[next])),
            Some(proxy.token()),
            &[("x-packages-proxy-dry-run", "0")],
        )
        .await;
        next += 1;
        if probe.status == StatusCode::TOO_MANY_REQUESTS
            && probe.json()["message"].as_str().unwrap().contains("budget")
        {
            budget_429 = Some(probe);
            break;
        }
        assert!(
            matches!(
                probe.status,
                StatusCode::NO_CONTENT | StatusCode::TOO_MANY_REQUESTS
            ),
            "{:?}",
            probe.body
        );
    }
    assert!(budget_429.is_some(), "the budget never ran out");
    assert!(refused >= 1, "no refusal happened: the test shows nothing");
    assert_eq!(
        sim.deletes(),
        3,
        "the budget of 3 did not give 3 real deletes"
    );
    let records = records(&audit);
    let sent = records.iter().filter(|r| r.decision == "completed").count();
    assert_eq!(sent, 3);
    let queue_refusals = records
        .iter()
        .filter(|r| r.phase == "outcome" && r.decision == "refused")
        .count();
    assert!(
        queue_refusals >= 1,
        "no refusal after an intent: {records:?}"
    );
}

// Found by a hostile review: a delete whose client had hung up while it waited for its pace slot
// was still sent when the slot came (a clean-up job killed mid-run went on deleting for minutes).
// Now it is closed as `not_sent`, its rule budget and its pace slot given back, and never sent.
#[tokio::test]
async fn a_delete_whose_client_hangs_up_while_queued_is_never_sent() {
    hung_up_delete_is_never_sent("").await;
}

// The same with the pace and the budget fleet-wide in Redis.
#[tokio::test]
async fn a_delete_whose_client_hangs_up_while_queued_is_never_sent_by_the_fleet() {
    let Some(redis) = Redis::start() else { return };
    hung_up_delete_is_never_sent(&format!("[shared]\nredis_url = \"{}\"\n", redis.url())).await;
}

async fn hung_up_delete_is_never_sent(shared: &str) {
    let sim = spawn_sim().await;
    let policy = format!(
        "{shared}[[policy.allow]]\nname = \"web\"\npackages = [\"web\"]\nmax_per_hour = 2\n"
    );
    // The queue waits at most 4 s: the third delete fits only if the abandoned one's slot
    // (3 s after the first) was given back.
    let (proxy, audit) = proxy_with(&sim, "pace = \"3s\"\nmax_queue_wait = \"4s\"", &policy).await;
    if !shared.is_empty() {
        wait_shared_tier(&proxy.url("/metrics"), true, Duration::from_secs(10)).await;
    }
    let web = sim.versions("web").await;
    let first = send(
        Method::DELETE,
        &proxy.url(&version_path("web", web[1])),
        Some(proxy.token()),
        &[],
    )
    .await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    // The second waits ~3 s for its slot; its client gives up after the intent is written.
    let path = version_path("web", web[2]);
    let stream = send_head(proxy.addr(), "DELETE", &path, proxy.token()).await;
    let intents = |audit: &Path| {
        records(audit)
            .iter()
            .filter(|r| r.phase == "intent")
            .count()
    };
    eventually(Duration::from_secs(10), "the second intent", || async {
        intents(&audit) == 2
    })
    .await;
    drop(stream);
    eventually(Duration::from_secs(10), "its not_sent outcome", || async {
        records(&audit)
            .iter()
            .any(|r| r.phase == "outcome" && r.decision == "not_sent")
    })
    .await;
    assert_eq!(sim.deletes(), 1, "the abandoned delete was sent");
    // Its budget came back: a second real delete still fits the budget of 2.
    let third = send(
        Method::DELETE,
        &proxy.url(&version_path("web", web[3])),
        Some(proxy.token()),
        &[],
    )
    .await;
    assert_eq!(third.status, StatusCode::NO_CONTENT, "{}", third.text());
    assert_eq!(sim.deletes(), 2);
}

// Found by a hostile review: a delete's body was never read, so a dry-run header sent among its
// trailers was missed and the delete was real, and a chunked body of any size went through (it
// declares no length). The body is now read whole, up to the 1 KiB limit, before the gate.
#[tokio::test]
async fn a_dry_run_in_trailers_counts_and_a_long_chunked_body_is_413() {
    let sim = spawn_sim().await;
    let (proxy, audit) = proxy_with(&sim, "pace = \"0s\"", ALLOW_ALL).await;
    let web = sim.versions("web").await;
    let chunked = |id: u64, body: &str, trailers: &str| {
        format!(
            "DELETE {} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\nTrailer: x-packages-proxy-dry-run\r\n\
             Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n{trailers}\r\n",
            version_path("web", id),
            proxy.token(),
            body.len()
        )
    };
    let (status, answer) = raw(
        proxy.addr(),
        chunked(web[1], "{}", "x-packages-proxy-dry-run: 1\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"dry_run\":true"), "{answer}");
    let (status, answer) = raw(
        proxy.addr(),
        chunked(web[2], &"x".repeat(2000), "").as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(sim.deletes(), 0, "a delete was sent");
    let records = records(&audit);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].decision == "dry_run", "{records:?}");
    // A plain chunked body without the header is a real delete, as before.
    let (status, answer) = raw(proxy.addr(), chunked(web[3], "{}", "").as_bytes()).await;
    assert_eq!(status, 204, "{answer}");
    assert_eq!(sim.deletes(), 1);
}

/// A proxy where each client holds one of four upstream slots, deletes of `web` are allowed
/// (no multi-arch guard, and `rule` added to the rule) and sent with `mutations` (`pace = ...`
/// and more), auditing into a fresh file.
async fn one_upstream_slot_per_client(
    sim: &Sim,
    mutations: &str,
    rule: &str,
) -> (TestProxy, PathBuf) {
    let audit = temp_dir("gate").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[mutations]\naudit_log = {audit:?}\n{mutations}\n\
             [[policy.allow]]\nname = \"web\"\npackages = [\"web\"]\nmulti_arch_guard = false\n\
             {rule}\n"
        ),
        extra_upstream: "max_concurrency = 4\nmax_concurrency_per_client = 1",
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    (spawn_proxy(sim, opts).await, audit)
}

// Found by a hostile review of the hang-up watch: it covered the pace wait only, and a delete
// then waited in `Upstream::send` for its client's share of the upstream slots (busy with the
// client's own slow read). Its client gave up there, and it was sent and recorded `completed`.
#[tokio::test]
async fn a_delete_whose_client_hangs_up_while_it_waits_for_an_upstream_slot_is_never_sent() {
    let sim = spawn_sim().await;
    let (proxy, audit) = one_upstream_slot_per_client(&sim, "pace = \"0s\"", "").await;
    let web = sim.versions("web").await;
    let slow = slow_read_at_github(&sim, &proxy, proxy.token(), Duration::from_secs(4)).await;
    let path = version_path("web", web[1]);
    let stream = send_head(proxy.addr(), "DELETE", &path, proxy.token()).await;
    eventually(Duration::from_secs(5), "the delete's intent", || async {
        records(&audit).iter().any(|r| r.phase == "intent")
    })
    .await;
    drop(stream);
    eventually(Duration::from_secs(5), "its not_sent outcome", || async {
        records(&audit)
            .iter()
            .any(|r| r.phase == "outcome" && r.decision == "not_sent")
    })
    .await;
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(sim.deletes(), 0, "the abandoned delete was sent");
}

// Found by a hostile review: a delete's body is read before the gate, and one announced but never
// sent held the request (and the client's in-flight slots) for good. It gets a 408 after
// `server.header_read_timeout`, and nothing is sent.
#[tokio::test]
async fn a_delete_body_that_never_arrives_is_a_408() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!("[mutations]\naudit_log = {audit:?}\npace = \"0s\"\n{ALLOW_ALL}"),
        extra_server: "header_read_timeout = \"1s\"",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let request = format!(
        "DELETE {} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {}\r\nContent-Length: 10\r\n\r\n",
        version_path("web", web[1]),
        proxy.token()
    );
    let (status, answer) = raw(proxy.addr(), request.as_bytes()).await;
    assert_eq!(status, 408, "{answer}");
    assert!(
        answer.contains("\"message\""),
        "not GitHub's shape: {answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "the connection is closed unannounced: {answer}"
    );
    assert_eq!(sim.deletes(), 0);
    assert!(records(&audit).is_empty(), "{:?}", records(&audit));
}

// Found by a hostile review: the pace's send check ran before the wait for the client's share of
// the upstream slots, so it recorded a "send" seconds before the request went out, and another
// client's delete passing the check meanwhile reached GitHub less than `pace` before it.
#[tokio::test]
async fn deletes_stay_pace_apart_when_one_waits_for_its_clients_upstream_share() {
    let sim = spawn_sim().await;
    let (proxy, _audit) = one_upstream_slot_per_client(&sim, "pace = \"3s\"", "").await;
    let web = sim.versions("web").await;
    // team-a's slow read holds team-a's one upstream slot for 4 s.
    let slow = slow_read_at_github(&sim, &proxy, &proxy.tokens[0], Duration::from_secs(4)).await;
    let targets = vec![(
        proxy.url(&version_path("web", web[1])),
        proxy.tokens[0].clone(),
    )];
    let mut deletes = spawn_deletes(targets);
    wait_upstream_queued(&proxy, 1.0).await; // team-a's delete, waiting for its share
    // team-b's delete gets the next pace slot, 3 s on, before team-a's read is done.
    deletes.extend(spawn_deletes(vec![(
        proxy.url(&version_path("web", web[2])),
        proxy.tokens[1].clone(),
    )]));
    for task in deletes {
        assert_eq!(task.await.unwrap(), StatusCode::NO_CONTENT);
    }
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let sent = sim.arrivals(&Method::DELETE);
    assert_eq!(sent.len(), 2);
    let gap = sent[1].duration_since(sent[0]);
    assert!(
        gap >= Duration::from_millis(2900),
        "two deletes reached GitHub {gap:?} apart with a 3 s pace"
    );
}

/// `web`'s deletes allowed unguarded, audited into `audit`, paced `pace` apart.
fn web_allowed(audit: &Path, pace: &str) -> String {
    format!(
        "[mutations]\naudit_log = {audit:?}\npace = \"{pace}\"\n\
         [[policy.allow]]\nname = \"web\"\npackages = [\"web\"]\nmulti_arch_guard = false\n"
    )
}

/// [`web_allowed`] with the queue's patience, `max_queue_wait = patience`.
fn web_allowed_within(audit: &Path, pace: &str, patience: &str) -> String {
    web_allowed(audit, pace).replacen(
        &format!("pace = \"{pace}\"\n"),
        &format!("pace = \"{pace}\"\nmax_queue_wait = \"{patience}\"\n"),
        1,
    )
}

/// The decisions of `audit`'s records whose phase passes `phase`, in the order written.
fn decisions(audit: &Path, phase: fn(&str) -> bool) -> Vec<String> {
    records(audit)
        .iter()
        .filter(|r| phase(r.phase.as_str()))
        .map(|r| r.decision.to_string())
        .collect()
}

/// Deletes of `web`'s versions `ids`, each sent at once from a task of its own through the proxy
/// at `base` (`http://host:port`).
fn deletes_at_once(base: &str, token: &str, ids: &[u64]) -> Vec<tokio::task::JoinHandle<Reply>> {
    ids.iter()
        .map(|id| {
            let (url, token) = (
                format!("{base}{}", version_path("web", *id)),
                token.to_owned(),
            );
            tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await })
        })
        .collect()
}

/// A proxy started from a config file (so that a test can rewrite and reload it) with `policy`
/// appended to the defaults: the running proxy, the file, its text and the client tokens.
async fn reloadable(
    sim: &Sim,
    label: &str,
    policy: &str,
) -> (
    packages_proxy::server::Running,
    PathBuf,
    String,
    Vec<String>,
) {
    reloadable_with(sim, label, policy, &ProxyOptions::default()).await
}

/// [`reloadable`] with `opts` for the rest of the config.
async fn reloadable_with(
    sim: &Sim,
    label: &str,
    policy: &str,
    opts: &ProxyOptions,
) -> (
    packages_proxy::server::Running,
    PathBuf,
    String,
    Vec<String>,
) {
    let (text, tokens) = proxy_config(&sim.handle.base_url(), 0, opts);
    let path = temp_dir(label).join("config.toml");
    let config = format!("{text}\n{policy}");
    std::fs::write(&path, &config).unwrap();
    (start_from_file(&path, sim).await, path, config, tokens)
}

// Found by a hostile review: the policy and the client were checked only before a call was
// queued. An operator who added a deny rule (or removed the client) to stop a runaway clean-up
// still had its queued deletes sent, one per pace, and audited `completed`.
#[tokio::test]
async fn a_reload_that_denies_applies_to_deletes_still_queued() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-reload").join("audit.jsonl");
    let (running, path, allowed, tokens) =
        reloadable(&sim, "gate-reload", &web_allowed(&audit, "3s")).await;
    let web = sim.versions("web").await;
    let base = format!("http://{}", running.addr);
    let deletes = deletes_at_once(&base, &tokens[0], &web[1..4]);
    one_sent_and_queued(&sim, &audit, 3).await;
    let denied = format!("{allowed}[[policy.deny]]\nname = \"stop\"\npackages = [\"web\"]\n");
    std::fs::write(&path, denied).unwrap();
    packages_proxy::reload::reload(&running.state, &path).unwrap();
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(delete.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 403, 403]);
    assert_eq!(sim.deletes(), 1, "a queued delete was sent after the deny");
    let records = records(&audit);
    let denied: Vec<_> = records
        .iter()
        .filter(|r| r.phase == "outcome" && r.decision == "denied")
        .collect();
    assert_eq!(denied.len(), 2, "{records:?}");
    assert!(
        denied[0].reason.as_deref().unwrap().contains("stop"),
        "{records:?}"
    );
}

// Found by a hostile review: at shutdown, a delete still waiting for an upstream slot (held by
// another client's slow read) was sent seconds after the drain deadline, and the process exited
// before its outcome was written. Past the deadline nothing is sent: it is answered 503 and
// recorded `not_sent`, as a delete still waiting for its pace slot is.
#[tokio::test]
async fn a_delete_waiting_for_an_upstream_slot_is_not_sent_past_the_drain_deadline() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-drain").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: web_allowed(&audit, "0s"),
        extra_upstream: "max_concurrency = 1",
        drain_timeout: "2s",
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    // team-b's slow read holds the only upstream slot for 5 s.
    let slow = slow_read_at_github(&sim, &proxy, &proxy.tokens[1], Duration::from_secs(5)).await;
    let deleting = {
        let (url, token) = (
            proxy.url(&version_path("web", web[1])),
            proxy.token().to_owned(),
        );
        tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await.status })
    };
    eventually(Duration::from_secs(5), "the delete's intent", || async {
        records(&audit).iter().any(|r| r.phase == "intent")
    })
    .await;
    let TestProxy { running, .. } = proxy;
    let stopped = tokio::spawn(running.shutdown());
    assert_eq!(deleting.await.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    let _ = slow.await;
    stopped.await.unwrap();
    assert_eq!(sim.deletes(), 0, "sent past the drain deadline");
    assert_not_sent_recorded(&audit);
}

/// A GitHub that performs every DELETE and never answers it (the answer is lost on the way
/// back), answers the first `failing_reads` other requests 502, and every later one 404: the
/// deleted target is gone.
async fn github_losing_delete_answers(failing_reads: usize) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reads = std::sync::Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reads = reads.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let reads = reads.clone();
                        async move {
                            if request.method() == Method::DELETE {
                                std::future::pending::<()>().await;
                            }
                            let status = if reads.fetch_add(1, Ordering::SeqCst) < failing_reads {
                                StatusCode::BAD_GATEWAY
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            let body = http_body_util::Full::new(bytes::Bytes::from_static(
                                br#"{"message":"Not Found"}"#,
                            ));
                            let mut response = http::Response::new(body);
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A delete of `web` 42 through a proxy in front of `upstream` that gives up on GitHub after
/// `timeout`: answered 504. Returns the proxy and its audit log.
async fn unanswered_delete(upstream: &str, timeout: &'static str) -> (TestProxy, PathBuf) {
    let audit = temp_dir("gate-unanswered").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: web_allowed(&audit, "0s"),
        upstream_timeout: timeout,
        drain_timeout: "2s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy_to(upstream, "ghp_fake_lost_answers", opts).await;
    let path = version_path("web", 42);
    let sent = send(Method::DELETE, &proxy.url(&path), Some(proxy.token()), &[]).await;
    assert_eq!(sent.status, StatusCode::GATEWAY_TIMEOUT);
    (proxy, audit)
}

// Found by a hostile review: a delete GitHub performed but whose answer never came (a timeout)
// was audited `failed` and never looked at again, so `audit restore` skipped it. It is settled
// like a crash's intent: a read of the target proves it performed. A read that fails (here the
// first few) is tried again rather than recorded `failed` (a second review).
#[tokio::test]
async fn a_delete_whose_answer_never_came_is_settled_by_a_read() {
    let upstream = github_losing_delete_answers(4).await;
    let (_proxy, audit) = unanswered_delete(&upstream, "1s").await;
    eventually(Duration::from_secs(20), "the delete's outcome", || async {
        records(&audit).iter().any(|r| r.phase == "outcome")
    })
    .await;
    let records = records(&audit);
    let outcomes: Vec<_> = records.iter().filter(|r| r.phase == "outcome").collect();
    assert_eq!(outcomes.len(), 1, "{records:?}");
    assert_eq!(outcomes[0].decision, "completed", "{records:?}");
    assert!(outcomes[0].reconciled, "{records:?}");
}

// Found by a hostile review: at shutdown the settling read ran at the drain deadline, before
// GitHub had finished a delete it went on to perform, and recorded it `not_applied`. The intent
// is left open for the next start, which reconciles it after its grace.
#[tokio::test]
async fn a_call_whose_answer_never_came_is_left_open_at_shutdown() {
    let upstream = github_losing_delete_answers(0).await;
    let (proxy, audit) = unanswered_delete(&upstream, "3s").await;
    let TestProxy { running, .. } = proxy;
    running.shutdown().await;
    let records = records(&audit);
    assert!(records.iter().any(|r| r.phase == "intent"), "{records:?}");
    assert!(
        !records.iter().any(|r| r.phase == "outcome"),
        "settled before GitHub had its time: {records:?}"
    );
}

// Found by a hostile review: the tags (and the multi-arch guard) were read before the call was
// queued, so a delete that waited its pace slot while a protected tag was pushed onto its target
// was still sent. They are read again once the slot has come, right before the send.
#[tokio::test]
async fn a_tag_pushed_while_a_delete_waits_for_its_slot_stops_it() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-retag").join("audit.jsonl");
    let policy = "[[policy.allow]]\nname = \"web\"\npackages = [\"web\"]\n\
                  protect_tags = [\"latest\"]\nmulti_arch_guard = false\n";
    let (proxy, audit) = {
        let extra = format!("[mutations]\naudit_log = {audit:?}\npace = \"2s\"\n{policy}");
        let opts = ProxyOptions {
            extra,
            ..ProxyOptions::default()
        };
        (spawn_proxy(&sim, opts).await, audit)
    };
    let web = sim.versions("web").await;
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &[web[1], web[2]]);
    one_sent_and_queued(&sim, &audit, 2).await;
    let queued = if sim
        .handle
        .version_deleted("acme", "container", "web", web[1])
        == Some(true)
    {
        web[2]
    } else {
        web[1]
    };
    assert!(
        sim.handle
            .set_tags("acme", "container", "web", queued, &["latest"])
    );
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(delete.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 403]);
    assert_eq!(sim.deletes(), 1, "the newly tagged version was deleted");
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", queued),
        Some(false)
    );
}

// Found by a hostile review: the reads repeated before the send were charged to the client, so a
// clean-up job sized to its quota had deletes it was already admitted for refused with 429.
#[tokio::test]
async fn the_proxy_pays_for_its_second_look_before_the_send() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-second-look").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[quotas]\nupstream_per_minute = 4\n{}protect_tags = [\"latest\"]\n",
            web_allowed(&audit, "2s")
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    // Each delete reads its tags once and is sent once: four requests, the client's quota. The
    // second waits 2 s for its slot, so its tags are read again before the send.
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &[web[1], web[2]]);
    for delete in deletes {
        let reply = delete.await.unwrap();
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }
    assert_eq!(sim.deletes(), 2);
}

// Found by a hostile review: the policy is rebuilt on reload, and its rule budgets with it, so
// any reload (even of an unrelated setting) handed every client its whole budget back.
#[tokio::test]
async fn a_reload_does_not_refill_rule_budgets() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-reload-budget").join("audit.jsonl");
    let policy = format!("{}max_per_hour = 2\n", web_allowed(&audit, "0s"));
    let (running, path, config, tokens) = reloadable(&sim, "gate-reload-budget", &policy).await;
    let web = sim.versions("web").await;
    let delete = |id: u64| {
        let url = format!("http://{}{}", running.addr, version_path("web", id));
        let token = tokens[0].clone();
        async move { send(Method::DELETE, &url, Some(&token), &[]).await.status }
    };
    assert_eq!(delete(web[1]).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(web[2]).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(web[3]).await, StatusCode::TOO_MANY_REQUESTS);
    std::fs::write(&path, format!("{config}\n# reloaded\n")).unwrap();
    packages_proxy::reload::reload(&running.state, &path).unwrap();
    assert_eq!(
        delete(web[3]).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the reload refilled the budget"
    );
    assert_eq!(sim.deletes(), 2);
}

// Found by a hostile review: a delete waiting for an upstream slot was sent once it got one,
// although the read holding the slot had met a secondary limit meanwhile (the back-off was
// checked only before the wait). It is refused with GitHub's back-off answer, `not_sent`.
#[tokio::test]
async fn a_delete_queued_for_a_slot_is_not_sent_once_a_back_off_opened() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-backoff").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: web_allowed(&audit, "0s"),
        extra_upstream: "max_concurrency = 1",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let before = sim.gets();
    limit_next_request_after(&sim, Duration::from_millis(800));
    // team-b's read holds the only upstream slot until GitHub limits it.
    let read = {
        let (url, token) = (proxy.url(&cold(0)), proxy.tokens[1].clone());
        tokio::spawn(async move { get(&url, &token).await.status })
    };
    eventually(Duration::from_secs(5), "the read at GitHub", || async {
        sim.gets() == before + 1
    })
    .await;
    let deleting = deletes_at_once(&proxy.url(""), proxy.token(), &web[1..2]).remove(0);
    eventually(Duration::from_secs(5), "the delete's intent", || async {
        records(&audit).iter().any(|r| r.phase == "intent")
    })
    .await;
    assert_eq!(read.await.unwrap(), StatusCode::FORBIDDEN);
    let refused = deleting.await.unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert_eq!(sim.deletes(), 0, "a delete was sent during the back-off");
    assert_not_sent_recorded(&audit);
}

// Found by a hostile review of the background share: a delete's second look at its tags (paid
// by the proxy) waited in the share of the proxy's background revalidations, behind every one
// queued there, though upstream slots were free: 30 s and a 503, or past the drain deadline.
// Only background revalidations take that share.
#[tokio::test]
async fn a_deletes_second_look_does_not_wait_behind_background_revalidations() {
    use packages_proxy::sim::{Fault, FaultKind};
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-second-look-share").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "{}protect_tags = [\"latest\"]\n[cache]\nversion_lists_ttl = \"1s\"\n",
            web_allowed(&audit, "2s")
        ),
        extra_upstream: "max_concurrency = 4\nmax_concurrency_per_client = 2",
        upstream_timeout: "60s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    for i in 0..6 {
        get(&proxy.url(&cold(i)), &proxy.tokens[1]).await;
    }
    // Past the TTL: each read is answered stale and revalidated behind; GitHub holds the first
    // two revalidations for 20 s, and the other four wait for the background share.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(20)), 2));
    for i in 0..6 {
        get(&proxy.url(&cold(i)), &proxy.tokens[1]).await;
    }
    wait_upstream_queued(&proxy, 4.0).await;
    // The second delete waits 2 s for its pace, then reads its tags again before the send.
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &[web[1], web[2]]);
    for delete in deletes {
        let reply = tokio::time::timeout(Duration::from_secs(12), delete)
            .await
            .expect("a delete waited behind the background revalidations")
            .unwrap();
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }
    assert_eq!(sim.deletes(), 2);
}

// Found by the same review: the second look's reads wait for upstream slots too, and nothing
// bounded that wait by shutdown's send deadline: a SIGTERM left the process up long past it, and
// the delete's intent without an outcome.
#[tokio::test]
async fn a_deletes_second_look_ends_at_the_drain_deadline() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-second-look-drain").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "{}protect_tags = [\"latest\"]\n",
            web_allowed(&audit, "1500ms")
        ),
        extra_upstream: "max_concurrency = 1",
        drain_timeout: "2s",
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &[web[1], web[2]]);
    one_sent_and_queued(&sim, &audit, 2).await;
    // team-b's slow read holds the only upstream slot when the second look needs one.
    let before = sim.gets();
    sim.handle.inject(packages_proxy::sim::Fault::new(
        packages_proxy::sim::FaultKind::Latency(Duration::from_secs(9)),
        1,
    ));
    let slow = {
        let (url, token) = (proxy.url(&cold(0)), proxy.tokens[1].clone());
        tokio::spawn(async move { get(&url, &token).await.status })
    };
    eventually(
        Duration::from_secs(5),
        "the slow read at GitHub",
        || async { sim.gets() == before + 1 },
    )
    .await;
    // Past its pace, the second delete's second look waits for that slot.
    wait_upstream_queued(&proxy, 1.0).await;
    let TestProxy { running, .. } = proxy;
    let started = std::time::Instant::now();
    let stopped = tokio::spawn(running.shutdown());
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(delete.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 503]);
    stopped.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the shutdown waited {:?} for the second look",
        started.elapsed()
    );
    drop(slow); // its answer does not matter here
    assert_eq!(sim.deletes(), 1);
    assert_not_sent_recorded(&audit);
}

// Found by a hostile review of the second look: it ran before the pace's last check, so deletes
// a back-off held together all read their tags the moment it ended, then went out one per pace;
// a tag pushed onto the last one meanwhile did not stop it. The look now comes with the call's
// send turn, right before its send.
#[tokio::test]
async fn a_tag_pushed_while_deletes_held_by_a_back_off_go_out_one_per_pace_stops_its_delete() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-retag-backoff").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "{}protect_tags = [\"latest\"]\n",
            web_allowed(&audit, "1500ms")
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let targets = [web[1], web[2], web[3]];
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &targets);
    one_sent_and_queued(&sim, &audit, 3).await;
    // A read meets a secondary limit: both queued deletes' slots come during its 5 s back-off.
    open_back_off(&sim, &proxy, &proxy.tokens[1], 5).await;
    eventually(
        Duration::from_secs(15),
        "the second delete sent",
        || async { sim.deletes() == 2 },
    )
    .await;
    // The third goes a pace after the second: a protected tag pushed now must stop it.
    let last = *targets
        .iter()
        .find(|id| sim.handle.version_deleted("acme", "container", "web", **id) == Some(false))
        .unwrap();
    assert!(
        sim.handle
            .set_tags("acme", "container", "web", last, &["latest"])
    );
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(delete.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 204, 403]);
    assert_eq!(
        sim.handle.version_deleted("acme", "container", "web", last),
        Some(false),
        "the newly tagged version was deleted"
    );
}

// Found by the same review: the second look was skipped for a call checked less than a second
// before it reached the send, and that age was taken before the wait for an upstream slot; a
// reload adding protections to its rule was not applied to it either. A delete that waited for
// the slot (another client's slow read held it) while the policy came to protect its target's
// tag was sent. The checks now run after the slot, and again whenever the policy changed.
#[tokio::test]
async fn a_reload_adding_protections_applies_to_a_delete_waiting_for_an_upstream_slot() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-reload-protect").join("audit.jsonl");
    let web = sim.versions("web").await;
    assert!(
        sim.handle
            .set_tags("acme", "container", "web", web[1], &["latest"])
    );
    let opts = ProxyOptions {
        extra_upstream: "max_concurrency = 1",
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    // No protections at first: the delete reads nothing before it is queued.
    let (running, path, config, tokens) = reloadable_with(
        &sim,
        "gate-reload-protect",
        &web_allowed(&audit, "0s"),
        &opts,
    )
    .await;
    let base = format!("http://{}", running.addr);
    // team-b's slow read holds the only upstream slot.
    let before = sim.gets();
    sim.handle.inject(packages_proxy::sim::Fault::new(
        packages_proxy::sim::FaultKind::Latency(Duration::from_secs(3)),
        1,
    ));
    let slow = {
        let (url, token) = (format!("{base}{}", cold(0)), tokens[1].clone());
        tokio::spawn(async move { get(&url, &token).await.status })
    };
    eventually(
        Duration::from_secs(5),
        "the slow read at GitHub",
        || async { sim.gets() == before + 1 },
    )
    .await;
    let delete = deletes_at_once(&base, &tokens[0], &web[1..2]).remove(0);
    wait_for_sample(
        &format!("{base}/metrics"),
        "packages_proxy_upstream_queued",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let protected = config.replace(
        "multi_arch_guard = false\n",
        "multi_arch_guard = false\nprotect_tags = [\"latest\"]\n",
    );
    assert_ne!(protected, config);
    std::fs::write(&path, protected).unwrap();
    packages_proxy::reload::reload(&running.state, &path).unwrap();
    let reply = delete.await.unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("latest"), "{}", reply.text());
    assert_eq!(
        sim.deletes(),
        0,
        "the delete was sent under the old protections"
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let records = records(&audit);
    assert!(
        records
            .iter()
            .any(|r| r.phase == "outcome" && r.decision == "denied"),
        "{records:?}"
    );
}

// Found by a hostile review of the send turn: the policy was asked before the second look and
// not after it, so a deny rule reloaded while GitHub answered the look's reads slowly did not
// stop the send. It is asked again after the reads, right before the send.
#[tokio::test]
async fn a_deny_reloaded_while_a_delete_reads_its_tags_again_stops_it() {
    use packages_proxy::sim::{Fault, FaultKind};
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-reload-during-look").join("audit.jsonl");
    let policy = format!(
        "{}protect_tags = [\"latest\"]\n",
        web_allowed(&audit, "1500ms")
    );
    let (running, path, config, tokens) =
        reloadable(&sim, "gate-reload-during-look", &policy).await;
    let web = sim.versions("web").await;
    let base = format!("http://{}", running.addr);
    let deletes = deletes_at_once(&base, &tokens[0], &web[1..3]);
    one_sent_and_queued(&sim, &audit, 2).await;
    // The queued delete's second look: GitHub holds its read for 3 s.
    let before = sim.gets();
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(3)), 1));
    eventually(
        Duration::from_secs(5),
        "the second look at GitHub",
        || async { sim.gets() == before + 1 },
    )
    .await;
    let denied = format!("{config}[[policy.deny]]\nname = \"stop\"\npackages = [\"web\"]\n");
    std::fs::write(&path, denied).unwrap();
    packages_proxy::reload::reload(&running.state, &path).unwrap();
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(delete.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 403]);
    assert_eq!(sim.deletes(), 1, "the delete was sent after the deny");
}

// Found by the same review: with one upstream slot, a delete whose send turn lapsed while it
// waited for the slot kept the slot while it waited for its next turn, and the call that took
// that turn waited for the slot: each held what the other needed until a lease ran out (30 s
// by default). A turn is now renewed while its call waits, and a lapsed one gives its slot back.
#[tokio::test]
async fn deletes_waiting_for_the_only_upstream_slot_go_out_once_it_is_free() {
    use packages_proxy::sim::{Fault, FaultKind};
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-one-slot").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: web_allowed(&audit, "500ms"),
        extra_upstream: "max_concurrency = 1",
        upstream_timeout: "4s",
        clients: vec!["team-a", "team-b", "team-c"],
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    // Two slow reads (team-b's and team-c's, each within its client's share) hold the only
    // slot for 6 s, longer than a turn's lease.
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(3)), 2));
    let before = sim.gets();
    let reads: Vec<_> = (0..2)
        .map(|i| {
            let (url, token) = (proxy.url(&cold(i)), proxy.tokens[1 + i].clone());
            tokio::spawn(async move { get(&url, &token).await.status })
        })
        .collect();
    eventually(
        Duration::from_secs(5),
        "the first slow read at GitHub",
        || async { sim.gets() == before + 1 },
    )
    .await;
    let held = std::time::Instant::now();
    wait_upstream_queued(&proxy, 1.0).await;
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &web[1..3]);
    for delete in deletes {
        let reply = delete.await.unwrap();
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    }
    let took = held.elapsed();
    for read in reads {
        assert_eq!(read.await.unwrap(), StatusCode::OK);
    }
    // 6 s of reads, then one delete and another a pace later.
    assert!(
        took < Duration::from_millis(8500),
        "the deletes went out {took:?} after the slot was taken by 6 s of reads"
    );
    assert_eq!(sim.deletes(), 2);
}

// Found by a hostile review of the send turn: a delete took the fleet's send turn, then waited
// for its client's share of the upstream slots (busy with that client's own slow read) while
// renewing the turn, so every other client's deletes waited too, fleet-wide, for as long as
// that read took. The slot now comes before the turn.
#[tokio::test]
async fn a_clients_slow_reads_do_not_hold_up_another_clients_deletes() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-share-turn").join("audit.jsonl");
    let policy = "[[policy.allow]]\nname = \"both\"\npackages = [\"web\"]\n\
                  multi_arch_guard = false\n";
    let opts = ProxyOptions {
        extra: format!("[mutations]\naudit_log = {audit:?}\npace = \"500ms\"\n{policy}"),
        extra_upstream: "max_concurrency = 8\nmax_concurrency_per_client = 1",
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    // team-a's slow read holds team-a's one share for 8 s; its delete waits behind it.
    let slow = slow_read_at_github(&sim, &proxy, proxy.token(), Duration::from_secs(8)).await;
    let team_a = deletes_at_once(&proxy.base, proxy.token(), &web[1..2]).remove(0);
    wait_upstream_queued(&proxy, 1.0).await;
    // team-b's delete has free slots and a free share: it goes out at once.
    let started = std::time::Instant::now();
    let team_b = deletes_at_once(&proxy.base, &proxy.tokens[1], &web[2..3]).remove(0);
    let reply = team_b.await.unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "team-b's delete waited {:?} behind team-a's read",
        started.elapsed()
    );
    assert_eq!(team_a.await.unwrap().status, StatusCode::NO_CONTENT);
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(sim.deletes(), 2);
}

// Found by a hostile review of the operator surface: a reload that changed a client's quota built
// it fresh buckets, so tightening the quota to stop a runaway client handed it a whole new
// allowance at once. What it spent stays spent.
#[tokio::test]
async fn a_reload_that_tightens_a_quota_hands_out_no_fresh_allowance() {
    let sim = spawn_sim().await;
    let quota = "[quotas]\nupstream_per_minute = 5\n";
    let (running, path, config, tokens) = reloadable(&sim, "quota-reload", quota).await;
    let base = format!("http://{}", running.addr);
    let mut statuses = Vec::new();
    for i in 0..7 {
        statuses.push(
            get(&format!("{base}{}", cold(i)), &tokens[0])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    let tightened = config.replace("upstream_per_minute = 5", "upstream_per_minute = 4");
    assert_ne!(tightened, config);
    std::fs::write(&path, tightened).unwrap();
    packages_proxy::reload::reload(&running.state, &path).unwrap();
    for i in 7..10 {
        let reply = get(&format!("{base}{}", cold(i)), &tokens[0]).await;
        assert_eq!(
            reply.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the reload refilled the quota: {}",
            reply.text()
        );
    }
    // The other client's quota is its own.
    assert_eq!(
        get(&format!("{base}{}", cold(11)), &tokens[1]).await.status,
        StatusCode::OK
    );
}

// Found by a hostile review of the send turn: with the slot taken before the turn, deletes a
// back-off held together each held one of their client's upstream slots while they waited for
// their turns, one pace each, and the client's own reads waited behind them (15 s for 20
// deletes). A call now holds nothing until its turn is due.
#[tokio::test]
async fn a_clients_reads_do_not_wait_behind_its_queued_deletes() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-reads-behind-deletes").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: web_allowed(&audit, "1s"),
        extra_upstream: "max_concurrency = 2\nmax_concurrency_per_client = 2",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &web[1..6]);
    eventually(Duration::from_secs(5), "the first delete sent", || async {
        sim.deletes() == 1
    })
    .await;
    // A back-off of 4 s: the queued deletes' slots come during it, and they come out together.
    open_back_off(&sim, &proxy, &proxy.tokens[1], 4).await;
    eventually(Duration::from_secs(10), "the back-off over", || async {
        sim.deletes() == 2
    })
    .await;
    // Three or more deletes now wait for their turns, a pace apart; team-a reads meanwhile.
    let started = std::time::Instant::now();
    let read = get(&proxy.url(&cold(1)), proxy.token()).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "team-a's read waited {:?} behind its queued deletes",
        started.elapsed()
    );
    for delete in deletes {
        assert_eq!(delete.await.unwrap().status, StatusCode::NO_CONTENT);
    }
}

// Guards the turn line: a hostile review of the send turn found deletes racing for each turn
// (with a steady stream of new calls after a back-off, one lost for 37 s in a 12-call queue).
// This process's calls now take turns in the order they came; here, after a back-off.
#[tokio::test]
async fn deletes_held_by_a_back_off_go_out_in_the_order_they_came() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-turn-order").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: web_allowed(&audit, "200ms"),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let first = deletes_at_once(&proxy.base, proxy.token(), &web[1..2]).remove(0);
    assert_eq!(first.await.unwrap().status, StatusCode::NO_CONTENT);
    // A back-off of 3 s; then eight deletes, each sent after the one before is queued.
    open_back_off(&sim, &proxy, &proxy.tokens[1], 3).await;
    let order: Vec<u64> = web[2..10].to_vec();
    let mut deletes = Vec::new();
    for (i, id) in order.iter().enumerate() {
        deletes.extend(deletes_at_once(&proxy.base, proxy.token(), &[*id]));
        eventually(Duration::from_secs(5), "the delete queued", || async {
            records(&audit)
                .iter()
                .filter(|r| r.phase == "intent")
                .count()
                == i + 2
        })
        .await;
    }
    for delete in deletes {
        assert_eq!(delete.await.unwrap().status, StatusCode::NO_CONTENT);
    }
    let sent: Vec<u64> = sim
        .handle
        .log()
        .iter()
        .filter(|r| r.method == http::Method::DELETE)
        .filter_map(|r| r.path.rsplit('/').next()?.parse().ok())
        .skip(1)
        .collect();
    assert_eq!(sent, order, "sent out of the order they came");
}

// Found in review of the queue's waits: `max_queue_wait` bounded each wait on its own (a
// back-off, then the pace slot, then the send turn), so a delete could be held for several
// times it before it was sent. It bounds them together now: a call whose slot comes later than
// what is left of its patience after a back-off is refused (429, not sent).
#[tokio::test]
async fn max_queue_wait_bounds_a_deletes_waits_together() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-patience").join("audit.jsonl");
    let extra = web_allowed_within(&audit, "4s", "5s");
    let opts = ProxyOptions {
        extra,
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    // A back-off of 3 s, then three deletes at once: each waits it out (3 s of its 5), then the
    // first is sent; the second's slot is a pace (4 s) later, past what is left of its patience
    // (each wait alone is within 5 s: it used to be sent, 7 s after it came).
    open_back_off(&sim, &proxy, &proxy.tokens[1], 3).await;
    let deletes = deletes_at_once(&proxy.base, proxy.token(), &web[1..4]);
    let mut statuses = Vec::new();
    for delete in deletes {
        let reply = delete.await.unwrap();
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(reply.header("retry-after").is_some(), "{}", reply.text());
        }
        statuses.push(reply.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 429, 429]);
    assert_eq!(
        sim.deletes(),
        1,
        "a delete was sent past the queue's patience"
    );
    // Every intent ends in its outcome: the one sent, and two refused before anything left.
    let mut outcomes = decisions(&audit, |phase| phase == "outcome");
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["completed", "refused", "refused"]);
}

// Found by a hostile review of the patience shared by a call's waits: the waits after its slot
// (for the send turn, for its client's share of the upstream slots, its last reads) were not
// bounded by it, and a delete stuck behind its client's 15 s read was sent 16 s after it came
// with `max_queue_wait = "5s"`. It is refused once its patience is spent, and never sent.
#[tokio::test]
async fn a_delete_held_behind_its_clients_slow_read_is_refused_at_its_patience() {
    delete_held_behind_its_clients_slow_read("").await;
}

/// A delete (its rule with `rule` added) whose client's only upstream slot is held by an 8 s
/// read: answered 429 at its patience (before the read ends), recorded `refused`, and never
/// sent.
async fn delete_held_behind_its_clients_slow_read(rule: &str) {
    let sim = spawn_sim().await;
    let mutations = "pace = \"1s\"\nmax_queue_wait = \"2s\"";
    let (proxy, audit) = one_upstream_slot_per_client(&sim, mutations, rule).await;
    let web = sim.versions("web").await;
    let slow = slow_read_at_github(&sim, &proxy, proxy.token(), Duration::from_secs(8)).await;
    let delete = deletes_at_once(&proxy.base, proxy.token(), &web[1..2]).remove(0);
    let refused = delete.await.unwrap();
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    assert!(
        !slow.is_finished(),
        "the delete was answered only after the read"
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(sim.deletes(), 0, "a delete was sent past its patience");
    // Refused after its intent (an outcome) or during its first reads (a decision, no intent).
    let ends = decisions(&audit, |phase| phase != "intent");
    assert_eq!(ends, ["refused"]);
}

// Found by the second review of the shared patience: the first reads of a delete's tags (on its
// client's share of the upstream slots) came before the patience started, so with tag
// protection it was sent 12 s after it came behind its client's slow read, `max_queue_wait =
// "2s"`. The patience starts before those reads now.
#[tokio::test]
async fn a_delete_whose_first_tag_read_waits_behind_its_client_is_refused_at_its_patience() {
    delete_held_behind_its_clients_slow_read("protect_tags = [\"latest\"]").await;
}

// Found by the second review of the shared patience: a delete whose rule protects tags read them
// during a GitHub back-off before waiting it out, met the back-off's 403 and was recorded
// `denied`. It waits the back-off out first (within its patience), then reads, then is sent.
#[tokio::test]
async fn a_delete_with_protected_tags_waits_out_a_back_off_before_its_first_reads() {
    let sim = spawn_sim().await;
    let audit = temp_dir("gate").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "{}protect_tags = [\"latest\"]\n",
            web_allowed_within(&audit, "0s", "10s")
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    open_back_off(&sim, &proxy, &proxy.tokens[1], 2).await;
    let delete = deletes_at_once(&proxy.base, proxy.token(), &web[1..2]).remove(0);
    let sent = delete.await.unwrap();
    assert_eq!(sent.status, StatusCode::NO_CONTENT, "{}", sent.text());
    assert_eq!(sim.deletes(), 1);
    let outcomes = decisions(&audit, |phase| phase != "intent");
    assert_eq!(outcomes, ["completed"]);
}

// Found by the review of the shared patience: a call that took its send turn and then was not
// sent (its client left during its last reads, or they refused it) ended the turn as if it had
// been sent, so the next call waited a whole pace after a send that never happened. The turn is
// given back now: the next call goes `pace` after the last real send.
#[tokio::test]
async fn a_turn_whose_call_is_not_sent_is_given_back() {
    turn_given_back("").await;
}

// The same through Redis: the fleet's turn is given back as the local one is.
#[tokio::test]
async fn a_fleet_turn_whose_call_is_not_sent_is_given_back() {
    let Some(redis) = Redis::start() else { return };
    turn_given_back(&format!(
        "[shared]\nredis_url = \"{}\"\nreplicas = 2\n",
        redis.url()
    ))
    .await;
}

/// Deletes A, B and C with a 3 s pace and tag protection (read again right before a send): B's
/// client hangs up while B, holding its turn, reads its tags again (GitHub is slow to answer);
/// then C comes. C is sent at once, `pace` after A, not `pace` after B's unsent turn.
async fn turn_given_back(shared: &str) {
    use packages_proxy::sim::FaultKind;
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-turn-back").join("audit.jsonl");
    let mutations = web_allowed(&audit, "3s");
    let (proxy, web) = a_sent_with_tags_protected(&sim, &mutations, shared).await;
    let b = send_head(
        proxy.addr(),
        "DELETE",
        &version_path("web", web[2]),
        proxy.token(),
    )
    .await;
    at_its_second_look(&sim, &audit, FaultKind::Latency(Duration::from_secs(10))).await;
    drop(b);
    let left = std::time::Instant::now();
    eventually(Duration::from_secs(5), "B's not_sent outcome", || async {
        records(&audit)
            .iter()
            .any(|r| r.phase == "outcome" && r.decision == "not_sent")
    })
    .await;
    let c = deletes_at_once(&proxy.base, proxy.token(), &web[3..4]).remove(0);
    assert_eq!(c.await.unwrap().status, StatusCode::NO_CONTENT);
    let sends = sim.arrivals(&Method::DELETE);
    assert_eq!(sends.len(), 2, "B was sent");
    let gap = sends[1] - sends[0];
    assert!(gap >= Duration::from_secs(3), "A and C {gap:?} apart");
    let after_b = sends[1].saturating_duration_since(left);
    assert!(
        after_b < Duration::from_secs(2),
        "C waited {after_b:?} after B's unsent turn"
    );
}

// Found while giving unsent turns back: a back-off GitHub opened while a call read its tags
// again, holding its send turn, was met at the send: the call was refused with the back-off's
// 403 (its turn counted as a send) though it had patience left to wait it out, as it would have
// in line. It waits the back-off out now, and is sent.
#[tokio::test]
async fn a_back_off_that_opens_during_a_calls_last_reads_is_waited_out() {
    back_off_during_last_reads(false).await;
}

// Found by the review of the above: a back-off opened by GitHub's answer to the last reads
// themselves still refused the call with 403 (the reads failed before the check).
#[tokio::test]
async fn a_back_off_opened_by_a_calls_last_reads_is_waited_out() {
    back_off_during_last_reads(true).await;
}

/// Deletes A and B (2 s pace, tag protection: B reads its tags again once its turn comes) and a
/// 3 s back-off GitHub opens during B's second look: with its answer to that read
/// (`by_the_read`), or with its answer to another client's read while B's is 2 s slow. B waits
/// the back-off out within its 20 s of patience and is sent after it.
async fn back_off_during_last_reads(by_the_read: bool) {
    use packages_proxy::sim::FaultKind;
    let sim = spawn_sim().await;
    let audit = temp_dir("gate-last-reads-back-off").join("audit.jsonl");
    let mutations = web_allowed_within(&audit, "2s", "20s");
    let (proxy, web) = a_sent_with_tags_protected(&sim, &mutations, "").await;
    let b = deletes_at_once(&proxy.base, proxy.token(), &web[2..3]).remove(0);
    if by_the_read {
        let limit = FaultKind::SecondaryRateLimit {
            status: StatusCode::FORBIDDEN,
            retry_after_secs: 3,
        };
        at_its_second_look(&sim, &audit, limit).await;
    } else {
        at_its_second_look(&sim, &audit, FaultKind::Latency(Duration::from_secs(2))).await;
        open_back_off(&sim, &proxy, &proxy.tokens[1], 3).await;
    }
    let opened = std::time::Instant::now();
    let sent = b.await.unwrap();
    assert_eq!(sent.status, StatusCode::NO_CONTENT, "{}", sent.text());
    let sends = sim.arrivals(&Method::DELETE);
    assert_eq!(sends.len(), 2);
    assert!(
        sends[1] >= opened + Duration::from_millis(2500),
        "B was sent during the back-off"
    );
    let outcomes = decisions(&audit, |phase| phase == "outcome");
    assert_eq!(outcomes, ["completed", "completed"]);
}

/// A proxy whose `web` rule (`mutations`: its `[mutations]` and rule text, from
/// [`web_allowed`]) protects the tag `latest`, so a call reads its tags again right before its
/// send, with `shared` appended (waited for when given); and delete A of `web`'s second version
/// sent through it. With `web`'s version ids.
async fn a_sent_with_tags_protected(
    sim: &Sim,
    mutations: &str,
    shared: &str,
) -> (TestProxy, Vec<u64>) {
    let opts = ProxyOptions {
        extra: format!("{mutations}protect_tags = [\"latest\"]\n{shared}"),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(sim, opts).await;
    if !shared.is_empty() {
        wait_shared_tier(&proxy.url("/metrics"), true, Duration::from_secs(10)).await;
    }
    let web = sim.versions("web").await;
    let a = deletes_at_once(&proxy.base, proxy.token(), &web[1..2]).remove(0);
    assert_eq!(a.await.unwrap().status, StatusCode::NO_CONTENT);
    (proxy, web)
}

/// Once a second delete B after A (see [`a_sent_with_tags_protected`]) has its intent, GitHub
/// answers its next read, its second look when its turn comes a pace after A's send, with
/// `fault`; returns once that read is at GitHub.
async fn at_its_second_look(sim: &Sim, audit: &Path, fault: packages_proxy::sim::FaultKind) {
    eventually(Duration::from_secs(5), "B's intent", || async {
        records(audit)
            .iter()
            .filter(|r| r.phase == "intent")
            .count()
            == 2
    })
    .await;
    let before = sim.gets();
    sim.handle.inject(packages_proxy::sim::Fault::new(fault, 1));
    eventually(
        Duration::from_secs(10),
        "B's second look at GitHub",
        || async { sim.gets() == before + 1 },
    )
    .await;
}
