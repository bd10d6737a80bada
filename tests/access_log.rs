//! The access log of the real binary: one line per request on stdout, in text and in JSON, written
//! out at shutdown; and a blocked stdout never holds up a request (lines are dropped and counted
//! in `/metrics` instead).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

#[path = "support/e2e.rs"]
mod e2e;

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use e2e::{ORG_TOKEN_ENV, ProxyProc, SimProc, TempDir, client, free_ports, send, token_pair};
use http::{Method, StatusCode};

/// A proxy config in front of `upstream`, one client, `[log] format = format`.
fn config(port: u16, upstream: &str, hash: &str, format: &str) -> String {
    format!(
        "[server]
listen = \"127.0.0.1:{port}\"
shutdown_delay = \"0s\"

[upstream]
base_url = \"{upstream}\"
allow_plain_http = true
token_env = \"{ORG_TOKEN_ENV}\"
owners = [\"acme\"]

[[clients]]
name = \"team-a\"
token_sha256 = \"{hash}\"

[log]
format = \"{format}\"
"
    )
}

/// Sends a miss then a hit with known request ids, stops the proxy at once (SIGTERM), and returns
/// the output: both lines must be there even though the stop came right after the answers.
async fn lines_written_by_a_run(format: &str) -> String {
    lines_written_by_a_run_logging(format, "", "info").await
}

/// [`lines_written_by_a_run`] with `extra` appended to the `[log]` table and `RUST_LOG`
/// set to `rust_log` (empty: unset).
async fn lines_written_by_a_run_logging(format: &str, extra: &str, rust_log: &str) -> String {
    let dir = TempDir::new(&format!("access-{format}"));
    let sim = SimProc::start(&dir).await;
    let (token, hash) = token_pair();
    let port = free_ports(1)[0];
    let text = config(port, &sim.url, &hash, format) + extra;
    let mut proxy =
        ProxyProc::start_logging(&dir, "proxy", port, &text, &sim.token, rust_log).await;
    let http = client();
    let url = proxy.url("/orgs/acme/packages/container/web/versions?per_page=5");
    for id in ["access-miss", "access-hit"] {
        let (status, _) = send(&http, Method::GET, &url, &token, &[("x-request-id", id)])
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    proxy.stop(Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(!log.contains(&token), "the client token reached the log");
    assert!(!log.contains(&sim.token), "the org token reached the log");
    log
}

#[tokio::test]
async fn text_access_lines_are_written_and_flushed_at_shutdown() {
    let log = lines_written_by_a_run("text").await;
    let line = |id: &str| {
        log.lines()
            .find(|l| l.contains(&format!("client_request_id=\"{id}\"")))
            .unwrap_or_else(|| panic!("no access line for {id} in:\n{log}"))
            .to_owned()
    };
    let route = "route=\"/orgs/{org}/packages/{package_type}/{package_name}/versions\"";
    let miss = line("access-miss");
    assert!(
        miss.contains(" INFO packages_proxy::proxy: request "),
        "{miss}"
    );
    for part in [
        " method=GET ",
        " client=\"team-a\" ",
        route,
        " status=200 ",
        " upstream_status=200 ",
        " cache=\"miss\" ",
        " duration_ms=",
    ] {
        assert!(miss.contains(part), "{part} missing in {miss}");
    }
    let hit = line("access-hit");
    assert!(hit.contains(" cache=\"hit\" "), "{hit}");
    assert!(
        !hit.contains("upstream_status"),
        "a hit has no upstream status: {hit}"
    );
    assert!(!log.contains("\u{1b}["), "no colour codes in a log file");
}

#[tokio::test]
async fn the_log_level_and_rust_log_decide_whether_access_lines_are_written() {
    let quiet = lines_written_by_a_run_logging("text", "level = \"warn\"\n", "").await;
    assert!(
        !quiet.contains("access-miss") && !quiet.contains("access-hit"),
        "[log] level = warn still wrote access lines:\n{quiet}"
    );
    // RUST_LOG wins over the config, and a directive for the access lines' target is enough.
    let loud = lines_written_by_a_run_logging(
        "text",
        "level = \"warn\"\n",
        "warn,packages_proxy::proxy=info",
    )
    .await;
    for id in ["access-miss", "access-hit"] {
        assert!(
            loud.contains(&format!("client_request_id=\"{id}\"")),
            "no access line for {id} with RUST_LOG naming the target:\n{loud}"
        );
    }
}

#[tokio::test]
async fn json_access_lines_are_written_and_flushed_at_shutdown() {
    let log = lines_written_by_a_run("json").await;
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "request")
        .collect();
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["client_request_id"] == id)
            .unwrap_or_else(|| panic!("no JSON access line for {id} in:\n{log}"))
    };
    let miss = by_id("access-miss");
    assert_eq!(miss["level"], "INFO");
    assert_eq!(miss["target"], "packages_proxy::proxy");
    assert_eq!(miss["method"], "GET");
    assert_eq!(miss["client"], "team-a");
    assert_eq!(
        miss["route"],
        "/orgs/{org}/packages/{package_type}/{package_name}/versions"
    );
    assert_eq!(miss["status"], 200);
    assert_eq!(miss["upstream_status"], 200);
    assert_eq!(miss["cache"], "miss");
    assert!(miss["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert!(miss["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let hit = by_id("access-hit");
    assert_eq!(hit["cache"], "hit");
    assert!(hit.get("upstream_status").is_none());
}

/// The `packages_proxy_access_log_dropped_total` value in a `/metrics` text.
fn dropped(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("packages_proxy_access_log_dropped_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Request lines in JSON output.
fn request_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "request")
        .collect()
}

/// Regression guarded: the access line was written synchronously, so a stalled stdout (a full
/// pipe to a stuck collector) stalled every request.
#[tokio::test]
async fn a_blocked_stdout_drops_and_counts_lines_and_never_blocks_requests() {
    let dir = TempDir::new("access-blocked");
    let (_token, hash) = token_pair();
    let port = free_ports(1)[0];
    let path = dir.path("proxy.toml");
    // Nothing here goes upstream: /healthz and /metrics are answered by the proxy.
    std::fs::write(&path, config(port, "http://127.0.0.1:9", &hash, "json")).unwrap();
    let stderr = std::fs::File::create(dir.path("stderr.log")).unwrap();
    let mut child: Child = Command::new(e2e::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env(ORG_TOKEN_ENV, "fake-org-token-for-tests")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped()) // nobody reads it until the end: the pipe fills up
        .stderr(stderr)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut kill_on_panic = KillOnDrop(Some(child));

    let http = client();
    let base = format!("http://127.0.0.1:{port}");
    let mut answered: u64 = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(&http, Method::GET, &format!("{base}/readyz"), "", &[])
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "proxy did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answered += 1;
    // Each request is answered (a 10 s timeout per request in `send`) while the pipe is full.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen_dropped = 0;
    while seen_dropped == 0 {
        for _ in 0..500 {
            let (status, _) = send(&http, Method::GET, &format!("{base}/healthz"), "", &[])
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK);
            answered += 1;
        }
        let (_, body) = send(&http, Method::GET, &format!("{base}/metrics"), "", &[])
            .await
            .unwrap();
        answered += 1;
        seen_dropped = dropped(&String::from_utf8_lossy(&body));
        assert!(
            Instant::now() < deadline,
            "no line dropped after {answered} requests"
        );
    }

    // Read the pipe from now on; the log recovers: a new request's line comes through.
    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let output = output.clone();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut chunk = [0u8; 64 * 1024];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let id = format!("after-{attempt}");
        let url = format!("{base}/healthz");
        send(&http, Method::GET, &url, "", &[("x-request-id", &id)])
            .await
            .unwrap();
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let out = output.lock().unwrap().clone();
        if request_lines(&out)
            .iter()
            .any(|r| r["client_request_id"] == id)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the access log never recovered");
    }
    let (_, body) = send(&http, Method::GET, &format!("{base}/metrics"), "", &[])
        .await
        .unwrap();
    answered += 1;
    let final_dropped = dropped(&String::from_utf8_lossy(&body));

    let mut child = kill_on_panic.0.take().unwrap();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "proxy exited with {exit}");
    reader.join().unwrap();
    // Every answered request is either a written line or a counted drop, none lost silently.
    let written = request_lines(&output.lock().unwrap()).len() as u64;
    assert_eq!(
        written + final_dropped,
        answered,
        "written {written}, dropped {final_dropped}, answered {answered}"
    );
}

/// Kills the proxy if the test panics before it is stopped.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
