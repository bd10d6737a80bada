//! Every intent ends in an outcome: queued mutations at SIGTERM are answered 503 and recorded
//! `not_sent`; an intent a crashed process left alone is reconciled against GitHub at the next
//! start, and `audit restore` can undo it. The proxy runs as a real `serve` process.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use http::{Method, StatusCode};
use packages_proxy::{
    audit::{self, AuditRecord},
    route::Route,
};
use support::{
    FLEET_URL, ProxyOptions, Redis, Sim, get, proxy_config, send, spawn_proxy, spawn_sim,
    wait_shared_tier,
};

/// Starts `serve` in front of the in-process simulator with `extra` config and its audit log.
async fn serve(sim: &Sim, dir: &e2e::TempDir, extra: &str, server: &'static str) -> e2e::ProxyProc {
    let port = e2e::free_ports(1)[0];
    let opts = ProxyOptions {
        extra: extra.to_owned(),
        extra_server: server,
        ..ProxyOptions::default()
    };
    let (text, _) = proxy_config(&sim.handle.base_url(), port, &opts);
    let text = text.replace("PACKAGES_PROXY_TEST_UNUSED", e2e::ORG_TOKEN_ENV);
    e2e::ProxyProc::start(dir, "proxy", port, &text, &sim.org_token).await
}

fn records(audit: &Path) -> Vec<AuditRecord> {
    audit::read(audit).map(|r| r.0).unwrap_or_default()
}

/// Polls `audit` until `done` holds for its records, or panics at the deadline.
async fn wait_for_records(audit: &Path, what: &str, done: impl Fn(&[AuditRecord]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if done(&records(audit)) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", records(audit));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client `cleanup` with a fresh fake token (returned), allowed to delete and restore `web`.
fn policy(audit: &Path, mutations: &str) -> (String, String) {
    let (token, hash) = e2e::token_pair();
    let text = format!(
        "[[clients]]\nname = \"cleanup\"\ntoken_sha256 = \"{hash}\"\n\
         [mutations]\naudit_log = {audit:?}\n{mutations}\n\
         [[policy.allow]]\nname = \"cleanup-web\"\nclients = [\"cleanup\"]\n\
         actions = [\"delete_version\", \"restore_version\"]\npackages = [\"web\"]\n"
    );
    (text, token)
}

// Regression: at SIGTERM, deletes waiting for their pace slot had an intent, were never sent,
// got no outcome, and their clients a reset connection.
#[tokio::test]
async fn sigterm_with_queued_deletes_answers_every_client_and_ends_every_intent() {
    let sim = spawn_sim().await;
    let dir = e2e::TempDir::new("intents-drain");
    let audit = dir.path("audit.jsonl");
    // Slots 2 s apart; a send deadline half the 4 s drain after the SIGTERM: the first one or two
    // deletes are sent, the rest must be answered 503 and recorded as not sent.
    let (extra, token) = policy(&audit, "pace = \"2s\"\nmax_queue_wait = \"60s\"");
    let mut proxy = serve(&sim, &dir, &extra, "shutdown_delay = \"0s\"").await;
    let proxy_url = proxy.url("");
    let web = sim.versions("web").await;
    let tasks: Vec<_> = web[1..6]
        .iter()
        .map(|id| {
            let url = format!("{proxy_url}/orgs/acme/packages/container/web/versions/{id}");
            let token = token.clone();
            tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await })
        })
        .collect();
    wait_for_records(&audit, "five intents", |r| {
        r.iter().filter(|r| r.phase == "intent").count() == 5
    })
    .await;
    let mut process = proxy.proc.take().unwrap();
    process.terminate();
    let mut answered = (0, 0);
    for task in tasks {
        let reply = task.await.expect("a client got no answer");
        match reply.status {
            StatusCode::NO_CONTENT => answered.0 += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(reply.json()["message"].is_string());
                answered.1 += 1;
            }
            other => panic!("neither 204 nor 503: {other} {:?}", reply.body),
        }
    }
    let status = process.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    assert!(answered.1 >= 1, "no delete was still queued: {answered:?}");

    let records = records(&audit);
    let outcome_of = |intent: &AuditRecord| -> Vec<&AuditRecord> {
        records
            .iter()
            .filter(|r| r.phase == "outcome" && r.request_id == intent.request_id)
            .collect()
    };
    let mut decisions = (0, 0);
    for intent in records.iter().filter(|r| r.phase == "intent") {
        let outcomes = outcome_of(intent);
        assert_eq!(outcomes.len(), 1, "{intent:?} has {outcomes:?}");
        match outcomes[0].decision.as_str() {
            "completed" => decisions.0 += 1,
            "not_sent" => decisions.1 += 1,
            other => panic!("outcome {other}"),
        }
    }
    assert_eq!(decisions, answered, "audit vs clients");
    let deletes = sim.deletes();
    assert_eq!(deletes, answered.0, "GitHub vs clients");
}

/// `audit restore --client cleanup --since <since>` through `proxy`; its output, once it
/// succeeded.
async fn audit_restore(audit: &Path, proxy: &e2e::ProxyProc, token: &str, since: &str) -> String {
    let out = tokio::process::Command::new(e2e::BIN)
        .args(["audit", "restore", "--client", "cleanup", "--since", since])
        .arg("--log")
        .arg(audit)
        .args(["--proxy", &proxy.url("")])
        .env("PACKAGES_PROXY_TOKEN", token)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}{:?}", out.stderr);
    text
}

/// An intent record as a process killed right after (or before) sending would leave it.
fn orphan_intent(path: &str, request_id: &str, at: SystemTime) -> AuditRecord {
    let route = Route::parse(&Method::DELETE, path, None).unwrap();
    let mut intent = AuditRecord::new(request_id, "cleanup", &route)
        .at(audit::Phase::Intent, audit::Decision::Allowed);
    intent.time = humantime::format_rfc3339_millis(at).to_string();
    intent.rule = Some("cleanup-web".to_owned());
    intent
}

// Regression: after `kill -9` right after a send the intent stayed alone, and `audit restore`
// skipped it.
#[tokio::test]
async fn intents_a_crash_left_alone_are_reconciled_at_start_and_restorable() {
    let sim = spawn_sim().await;
    let dir = e2e::TempDir::new("intents-reconcile");
    let audit = dir.path("audit.jsonl");
    let web = sim.versions("web").await;
    let path = |id: u64| format!("/orgs/acme/packages/container/web/versions/{id}");
    // The crashed process sent the first delete (GitHub performed it), not the second.
    let deleted = send(
        Method::DELETE,
        &format!("{}{}", sim.handle.base_url(), path(web[1])),
        Some(&sim.org_token),
        &[],
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let mut lines = String::new();
    for (id, request_id) in [(web[1], "crash-sent"), (web[2], "crash-unsent")] {
        let record = orphan_intent(&path(id), request_id, an_hour_ago);
        lines.push_str(&serde_json::to_string(&record).unwrap());
        lines.push('\n');
    }
    std::fs::write(&audit, lines).unwrap();

    let (extra, token) = policy(&audit, "pace = \"0s\"");
    let proxy = serve(&sim, &dir, &extra, "").await;
    wait_for_records(&audit, "two reconciled outcomes", |r| {
        r.iter().filter(|r| r.reconciled).count() == 2
    })
    .await;
    let records = records(&audit);
    let outcome = |request_id: &str| {
        records
            .iter()
            .find(|r| r.phase == "outcome" && r.request_id == request_id)
            .unwrap()
    };
    assert_eq!(outcome("crash-sent").decision, "completed");
    assert_eq!(outcome("crash-unsent").decision, "not_applied");
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", web[2]),
        Some(false),
        "reconciling must only read"
    );

    let listed = std::process::Command::new(e2e::BIN)
        .args(["audit", "list", "--decision", "completed", "--log"])
        .arg(&audit)
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("crash-sent") && listed.contains("\"reconciled\":true"));
    // A misspelt decision is an error naming the valid ones, not an empty list.
    let misspelt = std::process::Command::new(e2e::BIN)
        .args(["audit", "list", "--decision", "complted", "--log"])
        .arg(&audit)
        .output()
        .unwrap();
    assert_eq!(misspelt.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&misspelt.stderr).contains("not_applied"));

    let since = humantime::format_rfc3339_millis(an_hour_ago - Duration::from_secs(1));
    let text = audit_restore(&audit, &proxy, &token, &since.to_string()).await;
    assert!(text.contains("1 versions, 0 failed"), "{text}");
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", web[1]),
        Some(false),
        "the reconciled delete was not restored"
    );
}

// Found by a hostile review: a crash mid-write leaves a last line without its newline (and, cut
// inside a multi-byte character, bytes that are not UTF-8). The next record was glued onto it,
// so its intent was lost to reconciliation and `audit restore`, and a non-UTF-8 byte stopped
// `serve` from starting at all.
#[tokio::test]
async fn a_torn_last_line_hides_no_record_and_does_not_stop_the_start() {
    let sim = spawn_sim().await;
    let dir = e2e::TempDir::new("intents-torn");
    let audit = dir.path("audit.jsonl");
    let web = sim.versions("web").await;
    let path = |id: u64| format!("/orgs/acme/packages/container/web/versions/{id}");
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let mut bytes =
        serde_json::to_vec(&orphan_intent(&path(web[1]), "crash-old", an_hour_ago)).unwrap();
    bytes.push(b'\n');
    // A record cut inside the `é` of a rule name: invalid UTF-8, no newline.
    bytes.extend_from_slice(b"{\"time\":\"2026-01-01T00:00:00Z\",\"rule\":\"\xc3");
    std::fs::write(&audit, &bytes).unwrap();

    let (extra, token) = policy(&audit, "pace = \"0s\"");
    let proxy = serve(&sim, &dir, &extra, "").await;
    wait_for_records(&audit, "the old intent reconciled", |r| {
        r.iter()
            .any(|r| r.reconciled && r.request_id == "crash-old")
    })
    .await;
    let deleted = send(Method::DELETE, &proxy.url(&path(web[2])), Some(&token), &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let (records, bad) = audit::read(&audit).unwrap();
    assert_eq!(bad, [2], "only the torn line is unreadable");
    let phases: Vec<_> = records
        .iter()
        .filter(|r| r.path == path(web[2]))
        .map(|r| r.phase.as_str())
        .collect();
    assert_eq!(phases, ["intent", "outcome"], "{records:?}");
}

// Found by a hostile review: `audit restore` replayed only version deletes, so a clean-up job
// that deleted a whole package was undone without it (and its versions' restores then failed).
// Packages come back first, then versions.
#[tokio::test]
async fn audit_restore_brings_back_whole_packages_first() {
    let sim = spawn_sim().await;
    let dir = e2e::TempDir::new("intents-package");
    let audit = dir.path("audit.jsonl");
    let (token, hash) = e2e::token_pair();
    let extra = format!(
        "[[clients]]\nname = \"cleanup\"\ntoken_sha256 = \"{hash}\"\n\
         [mutations]\naudit_log = {audit:?}\npace = \"0s\"\n\
         [[policy.allow]]\nname = \"cleanup-team-a\"\nclients = [\"cleanup\"]\n\
         actions = [\"delete_version\", \"delete_package\", \"restore_version\", \"restore_package\"]\n\
         packages = [\"team-a-api\", \"web\"]\nmulti_arch_guard = false\n"
    );
    let proxy = serve(&sim, &dir, &extra, "").await;
    let since = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(1));
    let web = sim.versions("web").await;
    let targets = [
        format!("/orgs/acme/packages/container/web/versions/{}", web[1]),
        "/orgs/acme/packages/container/team-a-api".to_owned(),
    ];
    for path in &targets {
        let deleted = send(Method::DELETE, &proxy.url(path), Some(&token), &[]).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{path}");
    }
    assert_eq!(
        sim.handle
            .package_deleted("acme", "container", "team-a-api"),
        Some(true)
    );
    let text = audit_restore(&audit, &proxy, &token, &since.to_string()).await;
    assert!(text.contains("1 packages, 1 versions, 0 failed"), "{text}");
    let package_first = text.find("team-a-api").unwrap() < text.find("/versions/").unwrap();
    assert!(package_first, "{text}");
    assert_eq!(
        sim.handle
            .package_deleted("acme", "container", "team-a-api"),
        Some(false)
    );
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", web[1]),
        Some(false)
    );
}

// Found by a hostile review: a replica killed while GitHub performed its delete left the deleted
// version in every replica's cache and in Redis until its TTL ran out: the start-up
// reconciliation recorded `completed` and dropped nothing. A reconciled call that was performed
// is invalidated fleet-wide, as the gate does for one it sent.
#[tokio::test]
async fn a_delete_reconciled_at_start_is_dropped_from_every_replicas_cache() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let dir = e2e::TempDir::new("intents-reconcile-fleet");
    let audit = dir.path("audit.jsonl");
    let web = sim.versions("web").await;
    let version = format!("/orgs/acme/packages/container/web/versions/{}", web[1]);
    let shared = format!("[shared]\nredis_url = \"{}\"\nreplicas = 2\n", redis.url());
    // The surviving replica holds the version (and so does Redis).
    let other = spawn_proxy(
        &sim,
        ProxyOptions {
            extra: shared.clone(),
            public_url: Some(FLEET_URL),
            ..ProxyOptions::default()
        },
    )
    .await;
    wait_shared_tier(&other.url("/metrics"), true, Duration::from_secs(5)).await;
    assert_eq!(
        get(&other.url(&version), other.token()).await.status,
        StatusCode::OK
    );
    // The killed replica's delete, performed at GitHub, and its intent alone in its log.
    let deleted = send(
        Method::DELETE,
        &format!("{}{version}", sim.handle.base_url()),
        Some(&sim.org_token),
        &[],
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let intent = orphan_intent(&version, "crash-sent", an_hour_ago);
    std::fs::write(&audit, serde_json::to_string(&intent).unwrap() + "\n").unwrap();
    let cached = get(&other.url(&version), other.token()).await;
    assert_eq!(
        cached.status,
        StatusCode::OK,
        "the test needs the version cached"
    );

    let (extra, _) = policy(&audit, "pace = \"0s\"");
    let _restarted = serve(&sim, &dir, &format!("{extra}{shared}"), "").await;
    wait_for_records(&audit, "the reconciled outcome", |r| {
        r.iter().any(|r| r.reconciled && r.decision == "completed")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&other.url(&version), other.token()).await;
        if reply.status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica still serves the deleted version: {}",
            reply.header("cache-status").unwrap_or("-")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
