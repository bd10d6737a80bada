//! End to end with real processes: the simulator, three `packages-proxy serve` processes and
//! HAProxy (health checks on `/readyz`, retries with redispatch) on loopback ports.
//!
//! Guards two regressions a unit test cannot see: a rolling restart that drops client requests
//! (readiness must fail before the listener closes, in-flight requests must drain), and a restart
//! that loses or doubles queued deletes (each delete is sent upstream at most once, and every
//! client gets an answer). Needs HAProxy: skipped loudly without it, failed in CI (`CI` set).
#![allow(clippy::unwrap_used)]

#[path = "support/e2e.rs"]
mod e2e;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use e2e::{HaProxy, ProxyProc, SimProc, TempDir, client, free_ports, send, token_pair};
use http::{Method, StatusCode};

/// The two tests each run five processes; one at a time keeps them within CI's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BACKEND: &str = "proxies";

/// Reads the load generator cycles through: lists, one package, pages, a `%2F` name.
const URLS: &[&str] = &[
    "/orgs/acme/packages?package_type=container",
    "/orgs/acme/packages/container/web",
    "/orgs/acme/packages/container/web/versions?per_page=100",
    "/orgs/acme/packages/container/web/versions?per_page=100&page=2",
    "/orgs/acme/packages/container/team-a-api/versions",
    "/orgs/acme/packages/container/base%2Fruntime",
];

/// The HAProxy config under test; `deploy/haproxy/haproxy.cfg` follows the same reasoning.
fn haproxy_config(front: u16, stats: u16, proxies: &[ProxyProc]) -> String {
    let servers: String = proxies
        .iter()
        .map(|p| format!("    server {} 127.0.0.1:{} check\n", p.name, p.port))
        .collect();
    format!(
        "global
    maxconn 2000
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 10s
    timeout check 1s
    # A retry goes to another server (redispatch on every retry), at most 3 times.
    retries 3
    option redispatch 1

frontend fe
    bind 127.0.0.1:{front}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    # A draining proxy fails /readyz at once and keeps serving for server.shutdown_delay (1s
    # here); one failed check (fall 1, every 100ms) takes it out well before its listener closes.
    # A restarted one takes two good checks (rise 2).
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fastinter 100ms downinter 100ms fall 1 rise 2
    # Reads are safe to replay anywhere: retry when the connection failed (nothing sent), when a
    # server closed without answering (empty-response: a keep-alive connection closed under the
    # request by a restarting proxy), and on 503 (a proxy shedding load).
    retry-on conn-failure empty-response 503
    # Deletes and restores are not: empty-response means the request reached a proxy that may
    # already have sent the mutation upstream (it died mid-call), and a 503 may be GitHub's own
    # answer to a mutation it performed, so a replay could act twice. disable-l7-retry leaves only
    # conn-failure retries, where HAProxy could not connect and sent nothing. (METH_GET matches GET
    # and HEAD.)
    http-request disable-l7-retry unless METH_GET
{servers}
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"
    )
}

/// The config of one proxy: one client `e2e`, a 1s `shutdown_delay` (10 health checks), `extra`
/// appended (mutations and policy).
fn proxy_config(port: u16, sim: &SimProc, hash: &str, drain: &str, extra: &str) -> String {
    format!(
        "[server]
listen = \"127.0.0.1:{port}\"
shutdown_delay = \"1s\"
drain_timeout = \"{drain}\"

[upstream]
base_url = \"{sim_url}\"
allow_plain_http = true
token_env = \"{env}\"
owners = [\"acme\"]

[registry]
base_url = \"{sim_url}\"
allow_plain_http = true

[[clients]]
name = \"e2e\"
token_sha256 = \"{hash}\"

{extra}",
        sim_url = sim.url,
        env = e2e::ORG_TOKEN_ENV,
    )
}

/// The simulator, three proxies and HAProxy, all running and all UP in HAProxy.
struct Stack {
    haproxy: HaProxy,
    proxies: Vec<ProxyProc>,
    sim: SimProc,
    token: String,
    dir: TempDir,
}

async fn stack(
    haproxy_bin: &std::path::Path,
    label: &str,
    drain: &str,
    extra: &dyn Fn(usize, &TempDir) -> String,
) -> Stack {
    let dir = TempDir::new(label);
    let sim = SimProc::start(&dir).await;
    let (token, hash) = token_pair();
    let ports = free_ports(5);
    let mut proxies = Vec::new();
    for (i, port) in ports[..3].iter().enumerate() {
        let text = proxy_config(*port, &sim, &hash, drain, &extra(i, &dir));
        proxies.push(ProxyProc::start(&dir, &format!("p{i}"), *port, &text, &sim.token).await);
    }
    let config = haproxy_config(ports[3], ports[4], &proxies);
    let haproxy = HaProxy::start(haproxy_bin, &dir, &config, ports[3], ports[4]).await;
    for proxy in &proxies {
        haproxy
            .wait_status(BACKEND, &proxy.name, "UP", Duration::from_secs(5))
            .await;
    }
    Stack {
        haproxy,
        proxies,
        sim,
        token,
        dir,
    }
}

impl Stack {
    /// SIGTERM proxy `i`, wait for its clean exit, start it again on the same port and wait until
    /// HAProxy has it UP again.
    async fn restart(&mut self, i: usize) {
        let proxy = &mut self.proxies[i];
        proxy.stop(Duration::from_secs(20)).await;
        proxy.spawn_until_ready().await;
        self.haproxy
            .wait_status(BACKEND, &proxy.name, "UP", Duration::from_secs(5))
            .await;
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the assertion message. Never held across an `.await`.
    failures: Mutex<Vec<String>>,
}

/// One keep-alive client sending reads through HAProxy until `stop`.
async fn load(
    url_base: String,
    token: String,
    offset: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let http = client();
    let mut i = offset;
    while !stop.load(Ordering::Relaxed) {
        let url = format!("{url_base}{}", URLS[i % URLS.len()]);
        i += 1;
        let result = send(&http, Method::GET, &url, &token, &[]).await;
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let failure = match result {
            Ok((StatusCode::OK, body)) if !body.is_empty() => None,
            Ok((status, body)) => Some(format!(
                "{url}: {status} {}",
                String::from_utf8_lossy(&body)
            )),
            Err(error) => Some(format!("{url}: {error}")),
        };
        if let Some(failure) = failure {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            let mut failures = tally.failures.lock().unwrap();
            if failures.len() < 10 {
                failures.push(failure);
            }
        }
        // A steady stream, not a flood: leaves CPU for five processes on a 2-core runner.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_behind_haproxy_fails_no_client_request() {
    let Some(haproxy_bin) =
        e2e::haproxy_or_skip("rolling_restart_behind_haproxy_fails_no_client_request")
    else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut stack = stack(&haproxy_bin, "rolling", "5s", &|_, _| String::new()).await;

    for path in URLS {
        let (status, body) = send(
            &client(),
            Method::GET,
            &stack.haproxy.url(path),
            &stack.token,
            &[],
        )
        .await
        .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let workers: Vec<_> = (0..4)
        .map(|n| {
            tokio::spawn(load(
                stack.haproxy.url(""),
                stack.token.clone(),
                n,
                stop.clone(),
                tally.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut during = Vec::new();
    for i in 0..stack.proxies.len() {
        let before = tally.sent.load(Ordering::Relaxed);
        stack.restart(i).await;
        during.push(tally.sent.load(Ordering::Relaxed) - before);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let sent = tally.sent.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap().clone();
    println!(
        "rolling restart: {sent} requests through HAProxy ({during:?} while each proxy restarted), \
         {failed} failed, {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(sent > 500, "the load generator sent only {sent} requests");
    assert!(
        during.iter().all(|n| *n > 50),
        "too little load during the restarts: {during:?}"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {sent} client requests failed during the rolling restart: {failures:#?}\n\
         logs: {}",
        stack.dir.0.display()
    );
}

/// The audit records of every proxy, as JSON.
fn audit_records(dir: &TempDir, proxies: usize) -> Vec<serde_json::Value> {
    (0..proxies)
        .flat_map(|i| {
            let text =
                std::fs::read_to_string(dir.path(&format!("audit-p{i}.jsonl"))).unwrap_or_default();
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ids(list: &serde_json::Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_queued_deletes_answers_every_client_and_deletes_each_version_once() {
    let Some(haproxy_bin) = e2e::haproxy_or_skip(
        "restart_with_queued_deletes_answers_every_client_and_deletes_each_version_once",
    ) else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    // Slots 300ms apart per proxy; max_queue_wait (5s) stays under drain_timeout (10s), so every
    // queued delete gets its slot before the drain deadline and is answered, not cut off.
    let extra = |i: usize, dir: &TempDir| {
        format!(
            "[mutations]
pace = \"300ms\"
max_queue_wait = \"5s\"
audit_log = \"{}\"

[[policy.allow]]
name = \"e2e-web-cleanup\"
clients = [\"e2e\"]
actions = [\"delete_version\"]
packages = [\"web\"]
",
            dir.path(&format!("audit-p{i}.jsonl")).display()
        )
    };
    let mut stack = stack(&haproxy_bin, "deletes", "10s", &extra).await;

    let versions = "/orgs/acme/packages/container/web/versions?per_page=100";
    let all = ids(&stack.sim.get_json(versions).await);
    // The newest version is left alone; twelve distinct older ones: four per proxy (round robin).
    let targets: Vec<u64> = all[1..13].to_vec();

    let mut deletes = Vec::new();
    for id in &targets {
        let url = stack
            .haproxy
            .url(&format!("/orgs/acme/packages/container/web/versions/{id}"));
        let token = stack.token.clone();
        let request_id = format!("e2e-del-{id}");
        let id = *id;
        deletes.push(tokio::spawn(async move {
            let http = client();
            let result = send(
                &http,
                Method::DELETE,
                &url,
                &token,
                &[("x-request-id", &request_id)],
            )
            .await;
            (id, result)
        }));
    }

    // SIGTERM the first proxy to send a delete: its first slot is taken, three are still queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        let busy = (0..3).find(|i| {
            std::fs::read_to_string(stack.dir.path(&format!("audit-p{i}.jsonl")))
                .unwrap_or_default()
                .contains("\"phase\":\"intent\"")
        });
        if let Some(i) = busy {
            break i;
        }
        assert!(Instant::now() < deadline, "no proxy started a delete");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let terminated_at = SystemTime::now();
    stack.restart(victim).await;

    let mut answers = BTreeMap::new();
    for delete in deletes {
        let (id, result) = delete.await.unwrap();
        answers.insert(id, result);
    }

    let deleted: BTreeSet<u64> = ids(&stack
        .sim
        .get_json(&format!("{versions}&state=deleted"))
        .await)
    .into_iter()
    .collect();
    let records = audit_records(&stack.dir, 3);
    let logs = stack.dir.0.display().to_string();

    // Every client got an answer: 204, or a refusal with GitHub's JSON error shape.
    let mut completed_by_client = BTreeSet::new();
    for (id, answer) in &answers {
        match answer {
            Ok((StatusCode::NO_CONTENT, _)) => {
                completed_by_client.insert(*id);
            }
            Ok((status, body))
                if *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::SERVICE_UNAVAILABLE =>
            {
                let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|_| {
                    panic!(
                        "refusal of {id} is not JSON: {}",
                        String::from_utf8_lossy(body)
                    )
                });
                assert!(
                    json["message"].is_string(),
                    "refusal of {id} has no message: {json}"
                );
            }
            other => {
                panic!("delete of {id}: neither 204 nor a clear refusal: {other:?}; logs: {logs}")
            }
        }
    }

    // The simulator (GitHub) agrees with the clients: deleted exactly what was answered 204.
    assert_eq!(
        deleted, completed_by_client,
        "deleted upstream vs answered 204; logs: {logs}"
    );

    // The audit agrees too: one intent per deleted version (so one upstream DELETE: the intent is
    // fsynced before each send and HAProxy never replays a delete), one completed outcome, under
    // the client's request id; nothing audited as sent for versions left alone.
    for id in &targets {
        let of = |phase: &str, decision: &str| -> Vec<&serde_json::Value> {
            records
                .iter()
                .filter(|r| {
                    r["version"].as_u64() == Some(*id)
                        && r["phase"] == phase
                        && r["decision"] == decision
                })
                .collect()
        };
        let intents = of("intent", "allowed");
        let completed = of("outcome", "completed");
        let expected = usize::from(deleted.contains(id));
        assert_eq!(
            intents.len(),
            expected,
            "intents for {id}: {intents:?}; logs: {logs}"
        );
        assert_eq!(
            completed.len(),
            expected,
            "completed outcomes for {id}: {completed:?}; logs: {logs}"
        );
        for record in completed {
            assert_eq!(record["client_request_id"], format!("e2e-del-{id}"));
        }
    }

    // The restart really happened with deletes queued: the terminated proxy sent at least one
    // delete after its SIGTERM (while draining). Intents are written when a delete joins the
    // queue, outcomes when it was sent, so outcomes after the SIGTERM show the drain at work.
    let sent_while_draining = records
        .iter()
        .filter(|r| r["phase"] == "outcome")
        .filter(|r| {
            let time = humantime::parse_rfc3339_weak(r["time"].as_str().unwrap()).unwrap();
            time > terminated_at
        })
        .count();
    let victim_log =
        std::fs::read_to_string(stack.dir.path(&format!("audit-p{victim}.jsonl"))).unwrap();
    let victim_after = victim_log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["phase"] == "outcome")
        .filter(|r| {
            humantime::parse_rfc3339_weak(r["time"].as_str().unwrap()).unwrap() > terminated_at
        })
        .count();
    println!(
        "queued deletes: {} sent, {} answered 204, {} deleted upstream, {sent_while_draining} sent \
         after the SIGTERM ({victim_after} of them by the terminated p{victim})",
        targets.len(),
        completed_by_client.len(),
        deleted.len()
    );
    assert!(
        victim_after > 0,
        "p{victim} had no delete queued when it was terminated; logs: {logs}"
    );
}
