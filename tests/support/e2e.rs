//! Real processes for end-to-end tests: the simulator, proxies and HAProxy run as child processes
//! of the built `packages-proxy` binary on loopback ports, and are killed when dropped (also when
//! a test panics). Each child's stdout and stderr go to a log file in the test's temp dir, which is
//! kept when a test fails and removed when it passes.
//!
//! Included with `#[path = "support/e2e.rs"] mod e2e;` by `tests/rolling_restart.rs`.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use packages_proxy::secret::{TokenHash, new_client_token};

/// The binary under test (cargo builds it for integration tests).
pub const BIN: &str = env!("CARGO_BIN_EXE_packages-proxy");

/// The env var the proxies read the org token from.
pub const ORG_TOKEN_ENV: &str = "E2E_ORG_TOKEN";

/// HAProxy, if installed. Without it: a loud skip locally, a failure in CI (`CI` set).
pub fn haproxy_or_skip(test: &str) -> Option<PathBuf> {
    let candidates = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "haproxy"];
    let found = candidates.iter().map(PathBuf::from).find(|path| {
        Command::new(path)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: haproxy is not installed but CI is set; .ci/run installs it with apt-get"
        );
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED {test}: haproxy is not installed (apt-get install haproxy)\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
    }
    found
}

/// `n` distinct free loopback ports. All are held until all are picked, so they differ; after
/// that another process may take one (the caller retries a failed start).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A fresh random token (never a real one) and its config hash.
pub fn token_pair() -> (String, String) {
    let token = new_client_token().unwrap();
    let hash = TokenHash::of(&token).to_hex();
    (token, hash)
}

/// A temp dir removed on drop unless the thread is panicking (then its path is printed).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let (token, _) = token_pair();
        let dir =
            std::env::temp_dir().join(format!("packages-proxy-e2e-{label}-{}", &token[4..16]));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs and configs kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process, SIGKILLed and reaped on drop.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Self {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            log: log.to_owned(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process already reaped").id()
    }

    /// SIGTERM, the way an orchestrator stops it (`Child::kill` would be SIGKILL).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.name);
    }

    /// The exit status if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Waits (without blocking the runtime) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}; log: {}",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The simulator process and the org token it accepts.
pub struct SimProc {
    pub proc: Proc,
    pub url: String,
    pub token: String,
}

impl SimProc {
    pub async fn start(dir: &TempDir) -> Self {
        let (token, _) = token_pair();
        let mut cmd = Command::new(BIN);
        cmd.args(["simulate", "--listen", "127.0.0.1:0", "--token", &token]);
        let mut proc = Proc::spawn("simulator", cmd, &dir.path("sim.log"));
        let marker = "simulated GitHub Packages API on ";
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = proc.log_text();
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                let url = line.split(marker).nth(1).unwrap().trim().to_owned();
                return Self { proc, url, token };
            }
            assert!(proc.try_exit().is_none(), "simulator exited: {text}");
            assert!(Instant::now() < deadline, "simulator did not start: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET straight from the simulator with its token (the test's view of "what GitHub holds").
    pub async fn get_json(&self, path_and_query: &str) -> serde_json::Value {
        let url = format!("{}{path_and_query}", self.url);
        let (status, body) = send(&client(), Method::GET, &url, &self.token, &[])
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{url}: {body:?}");
        serde_json::from_slice(&body).unwrap()
    }
}

/// One proxy process: its config, port and log; restartable.
pub struct ProxyProc {
    pub name: String,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    org_token: String,
    /// `RUST_LOG` for the process (`info` unless started with [`ProxyProc::start_logging`]).
    rust_log: String,
    pub proc: Option<Proc>,
}

impl ProxyProc {
    /// Writes `config_text` and starts `serve`.
    pub async fn start(
        dir: &TempDir,
        name: &str,
        port: u16,
        config_text: &str,
        org_token: &str,
    ) -> Self {
        Self::start_logging(dir, name, port, config_text, org_token, "info").await
    }

    /// [`ProxyProc::start`] with `RUST_LOG` set to `rust_log` (empty: unset, so the config's
    /// `[log] level` decides).
    #[allow(dead_code)] // not every test binary that includes this module uses it
    pub async fn start_logging(
        dir: &TempDir,
        name: &str,
        port: u16,
        config_text: &str,
        org_token: &str,
        rust_log: &str,
    ) -> Self {
        let config = dir.path(&format!("{name}.toml"));
        fs::write(&config, config_text).unwrap();
        let mut proxy = Self {
            name: name.to_owned(),
            port,
            config,
            log: dir.path(&format!("{name}.log")),
            org_token: org_token.to_owned(),
            rust_log: rust_log.to_owned(),
            proc: None,
        };
        proxy.spawn_until_ready().await;
        proxy
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Starts `serve` and polls its `/readyz` until 200. A start that dies (e.g. the port was
    /// briefly taken) is retried a few times.
    pub async fn spawn_until_ready(&mut self) {
        for attempt in 1..=5 {
            let mut cmd = Command::new(BIN);
            cmd.arg("serve")
                .arg("--config")
                .arg(&self.config)
                .env(ORG_TOKEN_ENV, &self.org_token);
            if self.rust_log.is_empty() {
                cmd.env_remove("RUST_LOG");
            } else {
                cmd.env("RUST_LOG", &self.rust_log);
            }
            let mut proc = Proc::spawn(&self.name, cmd, &self.log);
            let deadline = Instant::now() + Duration::from_secs(10);
            let http = client();
            loop {
                if proc.try_exit().is_some() {
                    break; // retry
                }
                if let Ok((StatusCode::OK, _)) =
                    send(&http, Method::GET, &self.url("/readyz"), "", &[]).await
                {
                    self.proc = Some(proc);
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} not ready; log: {}",
                    self.name,
                    self.log.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!(
                "{} exited at start (attempt {attempt}); retrying",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{} would not start; log: {}", self.name, self.log.display());
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self, limit: Duration) {
        let mut proc = self.proc.take().expect("proxy not running");
        proc.terminate();
        let status = proc.wait_exit(limit).await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log: {}",
            self.name,
            self.log.display()
        );
    }
}

/// HAProxy in front of the proxies, with a stats page to see what it thinks of each server.
pub struct HaProxy {
    pub proc: Proc,
    pub front: u16,
    pub stats: u16,
}

impl HaProxy {
    pub async fn start(
        binary: &Path,
        dir: &TempDir,
        config_text: &str,
        front: u16,
        stats: u16,
    ) -> Self {
        let config = dir.path("haproxy.cfg");
        fs::write(&config, config_text).unwrap();
        let check = Command::new(binary)
            .args(["-c", "-q", "-f"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(binary);
        cmd.arg("-db").arg("-f").arg(&config);
        let mut proc = Proc::spawn("haproxy", cmd, &dir.path("haproxy.log"));
        let http = client();
        let deadline = Instant::now() + Duration::from_secs(10);
        let stats_url = format!("http://127.0.0.1:{stats}/stats;csv");
        while send(&http, Method::GET, &stats_url, "", &[]).await.is_err() {
            assert!(
                proc.try_exit().is_none(),
                "haproxy exited: {}",
                proc.log_text()
            );
            assert!(Instant::now() < deadline, "haproxy did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { proc, front, stats }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.front)
    }

    /// HAProxy's status of `server` in `backend` ("UP", "DOWN", "UP 1/2", ...).
    pub async fn server_status(&self, backend: &str, server: &str) -> String {
        let url = format!("http://127.0.0.1:{}/stats;csv", self.stats);
        let (_, body) = send(&client(), Method::GET, &url, "", &[]).await.unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        let prefix = format!("{backend},{server},");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.split(',').nth(17))
            .unwrap_or("?")
            .to_owned()
    }

    /// Waits until HAProxy's health checks have the server in `want` state.
    pub async fn wait_status(&self, backend: &str, server: &str, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.server_status(backend, server).await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "haproxy never saw {server} {want} (last: {status})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive client (one pool per call).
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(16)
        .build_http()
}

/// Sends a request (bearer `token` unless empty) and reads the whole answer; `Err` for a
/// connection error, a broken body or a 10 s timeout.
pub async fn send(
    http: &HttpClient,
    method: Method,
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Bytes), String> {
    let mut builder = Request::builder().method(method).uri(url);
    if !token.is_empty() {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).unwrap();
    let exchange = async {
        let response = http.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out after 10s".to_owned()))
}
