//! Destructive calls through real sockets: the allow-list, protected tags read fresh, budgets,
//! dry runs, the write-ahead audit log, pacing, reload, `policy explain` and `audit restore`,
//! asserted on the simulator's request log and state and on the audit file.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::{path::Path, time::Duration};

use http::{Method, StatusCode};
use packages_proxy::{
    audit::{self, AuditRecord},
    sim::{Fault, FaultKind},
};
use support::*;

/// The policy under test: two teams, protected release tags, a budget, a deny rule.
fn policy(audit: &Path, pace: &str) -> String {
    format!(
        r#"
[mutations]
pace = "{pace}"
audit_log = {audit:?}
budget_window = "1s"

[[policy.allow]]
name = "team-a-cleanup"
clients = ["team-a"]
actions = ["delete_version", "restore_version"]
owners = ["acme"]
package_types = ["container"]
packages = ["team-a-*", "web", "base/*"]
protect_tags = ["latest", "release-*"]

[[policy.allow]]
name = "team-b-worker"
clients = ["team-b"]
actions = ["delete_version", "delete_package", "restore_package"]
packages = ["team-b/**"]
max_per_hour = 2

[[policy.deny]]
name = "never-base"
packages = ["base/**"]
"#
    )
}

struct Setup {
    sim: Sim,
    proxy: TestProxy,
    audit: std::path::PathBuf,
}

async fn setup(pace: &str) -> Setup {
    let sim = spawn_sim().await;
    let audit = temp_dir("policy").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: policy(&audit, pace),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    Setup { sim, proxy, audit }
}

async fn delete(proxy: &TestProxy, client: usize, path: &str) -> Reply {
    send(
        Method::DELETE,
        &proxy.url(path),
        Some(&proxy.tokens[client]),
        &[],
    )
    .await
}

fn records(audit: &Path) -> Vec<AuditRecord> {
    audit::read(audit).unwrap().0
}

#[tokio::test]
async fn the_allow_and_deny_matrix() {
    let Setup { sim, proxy, .. } = setup("0s").await;
    let web = sim.versions("web").await;
    let worker = sim.versions("team-b%2Fworker").await[1];
    let (a, b) = (0, 1);
    let cases: Vec<(usize, Method, String, StatusCode, &str)> = vec![
        (
            a,
            Method::DELETE,
            format!("/orgs/acme/packages/container/web/versions/{}", web[1]),
            StatusCode::NO_CONTENT,
            "allowed",
        ),
        (
            a,
            Method::DELETE,
            "/orgs/acme/packages/container/web".to_owned(),
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            b,
            Method::DELETE,
            format!("/orgs/acme/packages/container/web/versions/{}", web[2]),
            StatusCode::FORBIDDEN,
            "client",
        ),
        (
            a,
            Method::DELETE,
            "/users/octocat/packages/container/hello_docker/versions/1".to_owned(),
            StatusCode::FORBIDDEN,
            "owner",
        ),
        (
            a,
            Method::DELETE,
            "/orgs/acme/packages/npm/web/versions/1".to_owned(),
            StatusCode::FORBIDDEN,
            "type",
        ),
        (
            a,
            Method::DELETE,
            "/orgs/acme/packages/container/other/versions/1".to_owned(),
            StatusCode::FORBIDDEN,
            "name",
        ),
        (
            a,
            Method::DELETE,
            "/orgs/acme/packages/container/base%2Fruntime/versions/1".to_owned(),
            StatusCode::FORBIDDEN,
            "deny overrides allow",
        ),
        (
            b,
            Method::DELETE,
            format!("/orgs/acme/packages/container/team-b%2Fworker/versions/{worker}"),
            StatusCode::NO_CONTENT,
            "allowed by glob",
        ),
        (
            b,
            Method::POST,
            "/orgs/acme/packages/container/team-b%2Fworker/versions/1/restore".to_owned(),
            StatusCode::FORBIDDEN,
            "action not listed",
        ),
    ];
    for (client, method, path, expected, why) in cases {
        let before = sim
            .handle
            .log()
            .iter()
            .filter(|r| r.method != Method::GET)
            .count();
        let reply = send(
            method.clone(),
            &proxy.url(&path),
            Some(&proxy.tokens[client]),
            &[],
        )
        .await;
        assert_eq!(
            reply.status, expected,
            "{why}: {method} {path}: {:?}",
            reply.body
        );
        let after = sim
            .handle
            .log()
            .iter()
            .filter(|r| r.method != Method::GET)
            .count();
        let sent = after - before;
        assert_eq!(
            sent,
            usize::from(expected.is_success()),
            "{why}: upstream mutations"
        );
        if expected == StatusCode::FORBIDDEN {
            let message = reply.json()["message"].as_str().unwrap().to_owned();
            assert!(
                !message.contains("team-b-worker") || client == b,
                "{why}: leaked another rule: {message}"
            );
        }
    }
    let denied = delete(
        &proxy,
        a,
        "/orgs/acme/packages/container/base%2Fruntime/versions/1",
    )
    .await;
    assert_eq!(denied.json()["message"], "Denied by rule never-base");
}

#[tokio::test]
async fn a_protected_tag_is_never_deleted_and_a_failed_fresh_read_refuses() {
    let Setup { sim, proxy, .. } = setup("0s").await;
    let web = sim.versions("web").await;
    let latest = format!("/orgs/acme/packages/container/web/versions/{}", web[0]);
    let reply = delete(&proxy, 0, &latest).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.json()["message"].as_str().unwrap().contains("latest"));
    assert_eq!(sim.deletes(), 0);

    sim.handle.inject(Fault::new(
        FaultKind::Status(StatusCode::INTERNAL_SERVER_ERROR),
        1,
    ));
    let untagged = format!("/orgs/acme/packages/container/web/versions/{}", web[3]);
    let reply = delete(&proxy, 0, &untagged).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        reply.body
    );
    assert_eq!(sim.deletes(), 0, "a delete went out without its tag check");
    // With the upstream healthy again the same delete goes through.
    assert_eq!(
        delete(&proxy, 0, &untagged).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", web[3]),
        Some(true)
    );
}

#[tokio::test]
async fn budgets_run_out_and_refill() {
    let Setup { sim, proxy, .. } = setup("0s").await;
    let url = format!(
        "{}/orgs/acme/packages/container/team-b%2Fworker/versions",
        sim.handle.base_url()
    );
    let ids: Vec<u64> = get(&url, &sim.org_token).await.ids();
    let path = |id: u64| format!("/orgs/acme/packages/container/team-b%2Fworker/versions/{id}");
    assert_eq!(
        delete(&proxy, 1, &path(ids[1])).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(&proxy, 1, &path(ids[2])).await.status,
        StatusCode::NO_CONTENT
    );
    let spent = delete(&proxy, 1, &path(ids[3])).await;
    assert_eq!(spent.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(spent.header("retry-after").is_some());
    assert!(spent.json()["message"].as_str().unwrap().contains("budget"));
    assert_eq!(sim.deletes(), 2);
    tokio::time::sleep(Duration::from_millis(600)).await; // 2 per 1 s window: one refills
    assert_eq!(
        delete(&proxy, 1, &path(ids[3])).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(sim.deletes(), 3);
}

#[tokio::test]
async fn a_dry_run_never_reaches_the_upstream() {
    let Setup { sim, proxy, audit } = setup("0s").await;
    let web = sim.versions("web").await;
    let path = format!("/orgs/acme/packages/container/web/versions/{}", web[1]);
    let reply = send(
        Method::DELETE,
        &proxy.url(&path),
        Some(proxy.token()),
        &[("x-packages-proxy-dry-run", "1")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["rule"], "team-a-cleanup");
    assert_eq!(body["upstream_request"]["method"], "DELETE");
    assert_eq!(sim.deletes(), 0);
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", web[1]),
        Some(false)
    );
    let record = records(&audit).pop().unwrap();
    assert_eq!(
        (record.decision.as_str(), record.dry_run),
        ("dry_run", true)
    );
}

#[tokio::test]
async fn an_unwritable_audit_log_refuses_the_call() {
    let Setup { sim, proxy, audit } = setup("0s").await;
    let web = sim.versions("web").await;
    std::fs::remove_file(&audit).unwrap();
    std::fs::create_dir(&audit).unwrap(); // a directory where the log should be: every write fails
    let reply = delete(
        &proxy,
        0,
        &format!("/orgs/acme/packages/container/web/versions/{}", web[1]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("Audit log")
    );
    assert_eq!(sim.deletes(), 0, "an unaudited delete was sent");
}

/// Once the first of a batch of deletes is sent, a read meets GitHub's secondary limit with
/// `retry-after: secs`: a back-off opens while the others wait for their pace slots.
async fn back_off_after_the_first_delete(sim: &Sim, proxy: &TestProxy, secs: u64) {
    eventually(Duration::from_secs(5), "the first delete sent", || async {
        sim.deletes() == 1
    })
    .await;
    open_back_off(sim, proxy, proxy.token(), secs).await;
}

/// `packages-proxy audit restore` of team-a's deletes since `since`, through `proxy`.
async fn audit_restore(audit: &Path, since: &str, proxy: &TestProxy) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
        .args(["audit", "restore", "--log"])
        .arg(audit)
        .args([
            "--client",
            "team-a",
            "--since",
            since,
            "--proxy",
            &proxy.base,
        ])
        .env("PACKAGES_PROXY_TOKEN", proxy.token())
        .output()
        .await
        .unwrap()
}

/// DELETEs of `web`'s versions `ids` by team-a, for [`spawn_deletes`].
fn web_deletes(proxy: &TestProxy, ids: &[u64]) -> Vec<(String, String)> {
    ids.iter()
        .map(|id| {
            (
                proxy.url(&format!("/orgs/acme/packages/container/web/versions/{id}")),
                proxy.token().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_destructive_request_is_audited_and_mutations_are_paced() {
    let Setup { sim, proxy, audit } = setup("150ms").await;
    let web = sim.versions("web").await;
    let targets = web_deletes(&proxy, &web[1..5]);
    for task in spawn_deletes(targets) {
        assert_eq!(task.await.unwrap(), StatusCode::NO_CONTENT);
    }
    delete(&proxy, 1, "/orgs/acme/packages/container/web/versions/1").await; // a denial
    let times = sim.arrivals(&Method::DELETE);
    assert_eq!(times.len(), 4);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // Sends are gated 150 ms apart; arrival times add scheduling jitter on a busy machine.
        assert!(gap >= Duration::from_millis(125), "mutations {gap:?} apart");
    }
    let records = records(&audit);
    let intents: Vec<_> = records.iter().filter(|r| r.phase == "intent").collect();
    let outcomes: Vec<_> = records.iter().filter(|r| r.phase == "outcome").collect();
    assert_eq!(intents.len(), 4);
    assert_eq!(outcomes.len(), 4);
    for intent in intents {
        let outcome = outcomes
            .iter()
            .find(|o| o.request_id == intent.request_id)
            .expect("an intent without an outcome");
        assert_eq!(outcome.decision, "completed");
        assert_eq!(outcome.upstream_status, Some(204));
        assert!(outcome.github_request_id.is_some());
        assert!(intent.time <= outcome.time);
    }
    let denial = records.iter().find(|r| r.client == "team-b").unwrap();
    assert_eq!(
        (denial.phase.as_str(), denial.decision.as_str()),
        ("decision", "denied")
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    for token in &proxy.tokens {
        assert!(!text.contains(token.as_str()));
    }
    assert!(!text.contains(&sim.org_token));
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let sim = spawn_sim().await;
    let audit = temp_dir("queue").join("audit.jsonl");
    // The patience also covers each call's first reads of tags and image indexes: 2 s of it,
    // not 1, so a busy machine's slow reads do not refuse the first call.
    let extra = policy(&audit, "4s").replace(
        "budget_window = \"1s\"",
        "budget_window = \"1s\"\nmax_queue_wait = \"2s\"",
    );
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra,
            ..ProxyOptions::default()
        },
    )
    .await;
    let web = sim.versions("web").await;
    let first = delete(
        &proxy,
        0,
        &format!("/orgs/acme/packages/container/web/versions/{}", web[1]),
    )
    .await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    // The next slot is 4 s away, past the 2 s the queue may make anyone wait.
    let second = delete(
        &proxy,
        0,
        &format!("/orgs/acme/packages/container/web/versions/{}", web[2]),
    )
    .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        second
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(sim.deletes(), 1);
}

fn write_config(dir: &Path, sim: &Sim, policy_text: &str) -> (std::path::PathBuf, Vec<String>) {
    let (text, tokens) = proxy_config(&sim.handle.base_url(), 0, &ProxyOptions::default());
    let path = dir.join("config.toml");
    std::fs::write(&path, format!("{text}\n{policy_text}")).unwrap();
    (path, tokens)
}

/// Writes `text` to the watched config at `path` and waits until `/metrics` counts one more
/// reload with `result` (`ok` or `failed`). The counters are process-wide (one recorder); no
/// other test here reloads a config.
async fn rewrite_and_wait(path: &Path, text: &str, metrics: &str, result: &str) {
    let series = format!("packages_proxy_config_reloads_total{{result=\"{result}\"}}");
    let count = || async { sample(&scrape(metrics).await, &series).unwrap_or(0.0) };
    let before = count().await;
    std::fs::write(path, text).unwrap();
    let what = format!("a reload counted as {result}");
    eventually(Duration::from_secs(10), &what, || async {
        count().await > before
    })
    .await;
}

#[tokio::test]
async fn a_reload_swaps_the_policy_and_an_invalid_file_keeps_the_old_one() {
    let sim = spawn_sim().await;
    let dir = temp_dir("reload");
    let audit = dir.join("audit.jsonl");
    let (path, tokens) = write_config(&dir, &sim, &policy(&audit, "0s"));
    let running = start_from_file(&path, &sim).await;
    // The file watch `serve` runs (SIGHUP would reach every test in this process).
    let watcher = packages_proxy::reload::spawn(
        running.state.clone(),
        path.clone(),
        Duration::from_millis(50),
    );
    let base = format!("http://{}", running.addr);
    let metrics = format!("{base}/metrics");
    let web = sim.versions("web").await;
    let target = format!(
        "{base}/orgs/acme/packages/container/web/versions/{}",
        web[1]
    );
    let dry_run = || async {
        let dry = [("x-packages-proxy-dry-run", "1")];
        send(Method::DELETE, &target, Some(&tokens[0]), &dry)
            .await
            .status
    };
    assert_eq!(dry_run().await, StatusCode::OK);

    let text = std::fs::read_to_string(&path).unwrap();
    let invalid = format!("{text}\n[[policy.allow]]\nname = 1\n");
    rewrite_and_wait(&path, &invalid, &metrics, "failed").await;
    assert_eq!(
        dry_run().await,
        StatusCode::OK,
        "the old policy was dropped"
    );

    let without_team_a =
        policy(&audit, "0s").replace("clients = [\"team-a\"]", "clients = [\"team-b\"]");
    let valid = text.replace(&policy(&audit, "0s"), &without_team_a);
    rewrite_and_wait(&path, &valid, &metrics, "ok").await;
    assert_eq!(
        dry_run().await,
        StatusCode::FORBIDDEN,
        "team-a is still allowed"
    );
    watcher.abort();
}

#[tokio::test]
async fn policy_explain_agrees_with_the_server() {
    let Setup { sim, proxy, audit } = setup("0s").await;
    let dir = audit.parent().unwrap();
    let (config_path, _) = write_config(dir, &sim, &policy(&audit, "0s"));
    let version = format!(
        "/orgs/acme/packages/container/web/versions/{}",
        sim.versions("web").await[2]
    );
    let cases = [
        ("team-a", version.as_str(), "allow"),
        ("team-a", "/orgs/acme/packages/container/web", "deny"),
        (
            "team-b",
            "/orgs/acme/packages/container/team-b%2Fworker",
            "allow",
        ),
        (
            "team-a",
            "/orgs/acme/packages/container/base%2Fruntime/versions/1",
            "deny",
        ),
    ];
    for (client, path, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
            .args(["policy", "explain", "--config"])
            .arg(&config_path)
            .args(["--client", client, "DELETE", path])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The decision is the exit code too: 0 allowed, 3 denied (1 is an error).
        let code = if expected == "allow" { 0 } else { 3 };
        assert_eq!(
            out.status.code(),
            Some(code),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.starts_with(expected),
            "{client} {path}: explain says {text}"
        );
        let index = if client == "team-a" { 0 } else { 1 };
        let dry = [("x-packages-proxy-dry-run", "1")];
        let reply = send(
            Method::DELETE,
            &proxy.url(path),
            Some(&proxy.tokens[index]),
            &dry,
        )
        .await;
        let server = if reply.status == StatusCode::OK {
            "allow"
        } else {
            "deny"
        };
        assert_eq!(
            server, expected,
            "{client} {path}: server says {}",
            reply.status
        );
    }
}

#[tokio::test]
async fn audit_restore_brings_back_exactly_what_a_client_deleted_in_a_window() {
    let Setup { sim, proxy, audit } = setup("0s").await;
    let web = sim.versions("web").await;
    let early = web[1];
    delete(
        &proxy,
        0,
        &format!("/orgs/acme/packages/container/web/versions/{early}"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let window = [web[2], web[3], web[4]];
    for id in window {
        let reply = delete(
            &proxy,
            0,
            &format!("/orgs/acme/packages/container/web/versions/{id}"),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
    }
    let worker_url = format!(
        "{}/orgs/acme/packages/container/team-b%2Fworker/versions",
        sim.handle.base_url()
    );
    let worker = get(&worker_url, &sim.org_token).await.json()[1]["id"]
        .as_u64()
        .unwrap();
    delete(
        &proxy,
        1,
        &format!("/orgs/acme/packages/container/team-b%2Fworker/versions/{worker}"),
    )
    .await;

    let out = audit_restore(&audit, &since, &proxy).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 versions, 0 failed"), "{text}");
    for id in window {
        assert_eq!(
            sim.handle.version_deleted("acme", "container", "web", id),
            Some(false),
            "{id} not restored"
        );
    }
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", early),
        Some(true),
        "restored outside the window"
    );
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "team-b/worker", worker),
        Some(true),
        "restored another client's delete"
    );
    let restores = records(&audit)
        .into_iter()
        .filter(|r| r.action == "restore_version" && r.phase == "outcome")
        .count();
    assert_eq!(restores, 3, "restores were not audited through the proxy");
    // Run again (a job retried, an operator unsure it ran): what a completed restore brought
    // back is not restored twice (GitHub would answer 404 for each, and the run fail).
    let again = audit_restore(&audit, &since, &proxy).await;
    let text = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success(), "{text}");
    assert!(text.contains("0 versions, 0 failed"), "{text}");
}

// Found in review: deny rules naming owners did not cover `/user/...` (fail open), and package
// names matched case-sensitively, so `BASE%2Fruntime` dodged a `base/**` deny rule.
#[tokio::test]
async fn deny_rules_cover_user_routes_and_any_spelling_of_a_name() {
    let sim = spawn_sim().await;
    let audit = temp_dir("deny-spelling").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n\
             [[policy.allow]]\nname = \"everything\"\n\
             [[policy.deny]]\nname = \"not-octocat\"\nowners = [\"octocat\"]\n\
             [[policy.deny]]\nname = \"never-base\"\npackages = [\"base/**\"]\n"
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    for path in [
        "/user/packages/container/hello_docker/versions/1",
        "/users/octocat/packages/container/hello_docker/versions/1",
        "/users/OctoCat/packages/container/hello_docker/versions/1",
        "/orgs/acme/packages/container/BASE%2Fruntime/versions/1",
        "/orgs/acme/packages/container/Base%2FRuntime",
    ] {
        let reply = delete(&proxy, 0, path).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .starts_with("Denied by rule"),
            "{path}"
        );
    }
    assert_eq!(sim.deletes(), 0);
}

// Found in review: one client could fill the mutation queue (and its minutes of pace) for every
// team. Each client now has its own cap on queued mutations.
#[tokio::test]
async fn one_client_cannot_fill_the_mutation_queue_for_others() {
    let sim = spawn_sim().await;
    let audit = temp_dir("per-client").join("audit.jsonl");
    let extra = policy(&audit, "300ms").replace(
        "budget_window = \"1s\"",
        "budget_window = \"1s\"\nmax_queue_per_client = 2",
    );
    let extra = extra.replace(
        "packages = [\"team-b/**\"]\nmax_per_hour = 2",
        "packages = [\"team-b/**\", \"web\"]",
    );
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra,
            ..ProxyOptions::default()
        },
    )
    .await;
    let web = sim.versions("web").await;
    let targets = web[1..5]
        .iter()
        .map(|id| {
            (
                proxy.url(&format!("/orgs/acme/packages/container/web/versions/{id}")),
                proxy.tokens[0].clone(),
            )
        })
        .collect();
    let tasks = spawn_deletes(targets);
    // Team-a hit its cap: two of its four are answered (refused, or sent at once) before team-b
    // asks.
    eventually(Duration::from_secs(5), "team-a's queue full", || async {
        tasks.iter().filter(|task| task.is_finished()).count() >= 2
    })
    .await;
    let other = delete(
        &proxy,
        1,
        &format!("/orgs/acme/packages/container/web/versions/{}", web[6]),
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::NO_CONTENT,
        "team-b was starved by team-a's queue"
    );
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let done = statuses
        .iter()
        .filter(|s| **s == StatusCode::NO_CONTENT)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((done, refused), (2, 2), "{statuses:?}");
}

// Guards the audit log across reloads: it is opened at start, so a reload that brings allow
// rules (and an `audit_log`) to a process started without one is rejected, and no delete is
// ever sent unaudited.
#[tokio::test]
async fn a_reload_cannot_allow_deletes_in_a_process_started_without_an_audit_log() {
    let sim = spawn_sim().await;
    let dir = temp_dir("reload-no-audit");
    let audit = dir.join("audit.jsonl");
    let (path, tokens) = write_config(&dir, &sim, "");
    let running = start_from_file(&path, &sim).await;
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}\n{}", policy(&audit, "0s"))).unwrap();
    let error = packages_proxy::reload::reload(&running.state, &path).unwrap_err();
    assert!(error.to_string().contains("mutations.audit_log"), "{error}");
    let web = sim.versions("web").await;
    let target = format!(
        "http://{}/orgs/acme/packages/container/web/versions/{}",
        running.addr, web[1]
    );
    let reply = send(Method::DELETE, &target, Some(&tokens[0]), &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(sim.deletes(), 0);
    assert!(!audit.exists());
}

// Guards deletes queued for their pace slot when GitHub opens a back-off meanwhile: they wait it
// out like the queue does and are then sent, never refused after their intent as a "failed"
// call that GitHub never saw (which also spent their rule budget).
#[tokio::test]
async fn deletes_waiting_for_their_slot_wait_out_a_back_off_that_opens_meanwhile() {
    let Setup { sim, proxy, audit } = setup("1s").await;
    let web = sim.versions("web").await;
    let targets = web_deletes(&proxy, &web[1..4]);
    let tasks = spawn_deletes(targets);
    // A read meets a secondary limit: a back-off of 2 s opens while two deletes wait for slots.
    back_off_after_the_first_delete(&sim, &proxy, 2).await;
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::NO_CONTENT);
    }
    assert_eq!(sim.deletes(), 3);
    for pair in sim.arrivals(&Method::DELETE).windows(2) {
        let gap = pair[1] - pair[0];
        // Still paced after the back-off (1 s, less scheduling jitter on a busy machine).
        assert!(gap >= Duration::from_millis(900), "mutations {gap:?} apart");
    }
    let records = records(&audit);
    let outcomes: Vec<_> = records.iter().filter(|r| r.phase == "outcome").collect();
    assert_eq!(outcomes.len(), 3);
    assert!(
        outcomes.iter().all(|o| o.decision == "completed"),
        "{outcomes:?}"
    );
}

// Guards the outcome of a delete GitHub is still answering when shutdown's drain ends: the
// process waits for it (up to `upstream.timeout`) and writes it, instead of exiting with the
// intent alone.
#[tokio::test]
async fn shutdown_writes_the_outcome_of_a_delete_sent_before_the_drain_ended() {
    let sim = spawn_sim().await;
    let audit = temp_dir("policy").join("audit.jsonl");
    let opts = ProxyOptions {
        // No guard read before the DELETE: the next request the simulator sees is the DELETE.
        extra: policy(&audit, "0s").replace(
            "max_per_hour = 2",
            "max_per_hour = 2\nmulti_arch_guard = false",
        ),
        drain_timeout: "500ms",
        extra_server: "shutdown_delay = \"0s\"",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let worker = sim.versions("team-b%2Fworker").await[1];
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(3000)),
        1,
    ));
    let url = proxy.url(&format!(
        "/orgs/acme/packages/container/team-b%2Fworker/versions/{worker}"
    ));
    let token = proxy.tokens[1].clone();
    let client = tokio::spawn(async move {
        let request = http::Request::builder()
            .method(Method::DELETE)
            .uri(url)
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        // Cut off at the drain deadline: the answer does not matter here, the record does.
        let _ = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http()
            .request(request)
            .await;
    });
    eventually(Duration::from_secs(5), "the DELETE sent", || async {
        !sim.arrivals(&Method::DELETE).is_empty()
    })
    .await;
    proxy.running.shutdown().await;
    let records = records(&audit);
    let outcome = records
        .iter()
        .find(|r| r.phase == "outcome")
        .expect("the process exited with the intent alone");
    assert_eq!(outcome.decision, "completed");
    assert_eq!(outcome.upstream_status, Some(204));
    client.abort();
}

// Guards what a delete that is never sent costs: one queued for its pace slot when a back-off
// past the queue's patience opens is recorded `not_sent`, and gives back both its rule budget
// and its charge on the client's upstream quota (only the sent delete spends one).
#[tokio::test]
async fn an_unsent_delete_gives_back_its_upstream_quota_charge() {
    let sim = spawn_sim().await;
    let audit = temp_dir("policy").join("audit.jsonl");
    let extra = policy(&audit, "1s")
        .replace("pace = \"1s\"", "pace = \"1s\"\nmax_queue_wait = \"2s\"")
        .replace(
            "max_per_hour = 2",
            "max_per_hour = 2\nmulti_arch_guard = false",
        )
        + "\n[quotas]\nupstream_per_minute = 2\n";
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra,
            ..ProxyOptions::default()
        },
    )
    .await;
    let ids = sim.versions("team-b%2Fworker").await;
    let remaining = || async {
        get(&proxy.url("/rate_limit"), &proxy.tokens[1])
            .await
            .json()["rate"]["remaining"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(remaining().await, 2);
    let targets = ids[..2]
        .iter()
        .map(|id| {
            let path = format!("/orgs/acme/packages/container/team-b%2Fworker/versions/{id}");
            (proxy.url(&path), proxy.tokens[1].clone())
        })
        .collect();
    let tasks = spawn_deletes(targets);
    // A 5 s back-off, past the queue's 2 s patience, opens while the second waits for its slot.
    back_off_after_the_first_delete(&sim, &proxy, 5).await;
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(sim.deletes(), 1);
    let outcomes: Vec<_> = records(&audit)
        .into_iter()
        .filter(|r| r.phase == "outcome")
        .map(|r| r.decision)
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes.iter().any(|d| *d == "not_sent"), "{outcomes:?}");
    // `/rate_limit` says 0 until the back-off ends; then the client's own bucket shows. Its one
    // token back would otherwise take 30 s to flow in (2 a minute).
    eventually(
        Duration::from_secs(12),
        "the unsent delete's quota charge given back",
        || async { remaining().await == 1 },
    )
    .await;
}

// Found by a hostile review of the operator surface: with a policy that only dry-runs restores,
// `audit restore` printed "restored" and exited 0 for every version (the proxy's 200 dry-run
// report counted as success), so an operator undoing a bad clean-up believed it undone.
#[tokio::test]
async fn audit_restore_fails_when_the_policy_only_dry_runs_restores() {
    let sim = spawn_sim().await;
    let audit = temp_dir("restore-dry").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n\
             [[policy.allow]]\nname = \"cleanup\"\nclients = [\"team-a\"]\n\
             actions = [\"delete_version\"]\npackages = [\"web\"]\nmulti_arch_guard = false\n\
             [[policy.allow]]\nname = \"undo\"\nclients = [\"team-a\"]\n\
             actions = [\"restore_version\"]\npackages = [\"web\"]\ndry_run = true\n"
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let web = sim.versions("web").await;
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let path = format!("/orgs/acme/packages/container/web/versions/{}", web[1]);
    assert_eq!(
        delete(&proxy, 0, &path).await.status,
        StatusCode::NO_CONTENT
    );
    let out = audit_restore(&audit, &since, &proxy).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("dry-runs"),
        "{text}"
    );
    assert!(text.contains("1 versions, 1 failed"), "{text}");
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "web", web[1]),
        Some(true)
    );
}
