//! Test builders: a simulator, a proxy in front of it, and a small HTTP client.
//!
//! Everything binds 127.0.0.1:0; tokens are made fresh per test.
#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use packages_proxy::{
    config::Config,
    secret::{OrgToken, TokenHash, new_client_token},
    server::{self, Running},
    sim::{Dataset, SimHandle, Simulator},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod corpus;
mod metrics;
mod redis;
#[allow(unused_imports)] // each test crate uses part of the support module
pub use corpus::hostile_corpus;
#[allow(unused_imports)]
pub use metrics::{sample, scrape, wait_for_sample, wait_shared_tier};
#[allow(unused_imports)] // only the shared-tier tests use it
pub use redis::Redis;

/// A fresh fake token (never a real one).
pub fn fake_token(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        new_client_token().unwrap().trim_start_matches("ppx_")
    )
}

/// A simulator with the sample dataset, and the org token it accepts.
pub struct Sim {
    pub handle: SimHandle,
    pub org_token: String,
}

impl Sim {
    /// When each request with `method` reached the simulator, in order.
    pub fn arrivals(&self, method: &Method) -> Vec<std::time::Instant> {
        let log = self.handle.log();
        log.iter()
            .filter(|r| r.method == *method)
            .map(|r| r.at)
            .collect()
    }

    /// GETs that reached the simulator (the proxy's upstream reads).
    pub fn gets(&self) -> usize {
        self.arrivals(&Method::GET).len()
    }

    /// DELETEs that reached the simulator (mutations the proxy sent).
    pub fn deletes(&self) -> usize {
        self.arrivals(&Method::DELETE).len()
    }

    /// Version ids of a container package in org `acme`, newest first, read from the simulator
    /// directly (not through a proxy: nothing is cached or charged).
    pub async fn versions(&self, package: &str) -> Vec<u64> {
        let path = format!("/orgs/acme/packages/container/{package}/versions?per_page=100");
        self.direct(Method::GET, &path).await.ids()
    }

    /// Sends `method path` to the simulator directly, with the org token: what GitHub does or
    /// answers behind the proxy's back.
    pub async fn direct(&self, method: Method, path: &str) -> Reply {
        let url = format!("{}{path}", self.handle.base_url());
        send(method, &url, Some(&self.org_token), &[]).await
    }
}

/// A `web` version list no other request of a test asked for (`per_page` 20 + `i`): a miss.
pub fn cold(i: usize) -> String {
    format!(
        "/orgs/acme/packages/container/web/versions?per_page={}",
        20 + i
    )
}

/// The `Cache-Status` of an answer ("-" when absent).
pub fn cache_status(reply: &Reply) -> String {
    reply.header("cache-status").unwrap_or("-").to_owned()
}

/// A hit on a fresh entry: not a miss, and not a stale answer (which says `hit` too).
pub fn fresh_hit(reply: &Reply) -> bool {
    let status = cache_status(reply);
    status.starts_with("packages-proxy; hit;") && !status.contains("detail=stale")
}

pub async fn spawn_sim() -> Sim {
    spawn_sim_with(Dataset::sample()).await
}

pub async fn spawn_sim_with(dataset: Dataset) -> Sim {
    let org_token = fake_token("ghp_fake");
    let handle = Simulator::new(org_token.clone())
        .dataset(dataset)
        .run()
        .await
        .unwrap();
    Sim { handle, org_token }
}

/// Options for a proxy under test.
pub struct ProxyOptions {
    pub owners: Vec<&'static str>,
    pub allow_user_routes: bool,
    pub clients: Vec<&'static str>,
    pub upstream_timeout: &'static str,
    pub drain_timeout: &'static str,
    pub max_in_flight: usize,
    pub extra_server: &'static str,
    pub public_url: Option<&'static str>,
    /// TOML appended after everything else (e.g. a `[cache]` table).
    pub extra: String,
    /// Client names that get `admin = true`.
    pub admins: Vec<&'static str>,
    /// `upstream.retries`: 0 by default here, so one injected fault is one failed request.
    pub retries: u32,
    /// Extra lines in `[upstream]`.
    pub extra_upstream: &'static str,
    /// Extra lines in `[registry]` (which points at the simulator).
    pub extra_registry: &'static str,
}

impl ProxyOptions {
    /// Options for a proxy with the cache switched off (pure pass-through).
    pub fn uncached() -> Self {
        Self {
            extra: "[cache]\nenabled = false\n".to_owned(),
            ..Self::default()
        }
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            owners: vec!["acme", "octocat"],
            allow_user_routes: true,
            clients: vec!["team-a", "team-b"],
            upstream_timeout: "5s",
            drain_timeout: "5s",
            max_in_flight: 1024,
            extra_server: "",
            public_url: None,
            extra: String::new(),
            admins: Vec::new(),
            retries: 0,
            extra_upstream: "",
            extra_registry: "",
        }
    }
}

/// A running proxy and the tokens of its clients (in `clients` order).
pub struct TestProxy {
    pub running: Running,
    pub tokens: Vec<String>,
    pub base: String,
}

impl TestProxy {
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    pub fn token(&self) -> &str {
        &self.tokens[0]
    }
}

/// The `public_url` of every replica of a test fleet, as behind one load balancer: answers the
/// replicas share through Redis carry URLs on it (an answer's URLs are part of its cache key).
pub const FLEET_URL: &str = "http://fleet.packages-proxy.test";

/// The config text for a proxy in front of `upstream`; returns it with fresh client tokens.
pub fn proxy_config(upstream: &str, port: u16, opts: &ProxyOptions) -> (String, Vec<String>) {
    let owners: Vec<String> = opts.owners.iter().map(|o| format!("{o:?}")).collect();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{}\n\
         drain_timeout = \"{}\"\nmax_in_flight = {}\n{}\n\
         [upstream]\nbase_url = \"{upstream}\"\nallow_plain_http = true\n\
         token_env = \"PACKAGES_PROXY_TEST_UNUSED\"\nowners = [{}]\nallow_user_routes = {}\ntimeout = \"{}\"\nretries = {}\n{}\n\
         [registry]\nbase_url = \"{upstream}\"\nallow_plain_http = true\n{}\n",
        opts.public_url
            .map(|u| format!("public_url = \"{u}\""))
            .unwrap_or_default(),
        opts.drain_timeout,
        opts.max_in_flight,
        opts.extra_server,
        owners.join(", "),
        opts.allow_user_routes,
        opts.upstream_timeout,
        opts.retries,
        opts.extra_upstream,
        opts.extra_registry,
    );
    let mut tokens = Vec::new();
    for name in &opts.clients {
        let token = fake_token("ppx_test");
        let hash = TokenHash::of(&token).to_hex();
        text.push_str(&format!(
            "\n[[clients]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\nadmin = {}\n",
            opts.admins.contains(name)
        ));
        tokens.push(token);
    }
    text.push('\n');
    text.push_str(&opts.extra);
    (text, tokens)
}

pub async fn spawn_proxy(sim: &Sim, opts: ProxyOptions) -> TestProxy {
    spawn_proxy_to(&sim.handle.base_url(), &sim.org_token, opts).await
}

pub async fn spawn_proxy_to(upstream: &str, org_token: &str, opts: ProxyOptions) -> TestProxy {
    let (text, tokens) = proxy_config(upstream, 0, &opts);
    let config = Config::parse(&text).unwrap();
    let running = server::start(config, OrgToken::new(org_token).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    TestProxy {
        running,
        tokens,
        base,
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// The `id` of every object in a JSON array answer (package versions, packages).
    pub fn ids(&self) -> Vec<u64> {
        self.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_u64().unwrap())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive HTTP/1 connection to the proxy: every request goes over the same socket, so
/// what a connection remembers between requests (its last client, route and cache key) is in
/// play.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    /// `method target` with a bearer `token`, `headers` and `body`, read whole.
    pub async fn send(
        &mut self,
        method: Method,
        target: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .header("host", "proxy")
            .header("authorization", format!("Bearer {token}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        self.sender
            .ready()
            .await
            .expect("the connection is still open");
        let response = self.sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn epoch_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Polls `check` every 20 ms until it returns true; panics with `what` past `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/2 client connection (prior knowledge, h2c): hyper's driver answers pings and
/// settings; the connection task ends when the server closes it.
pub async fn h2(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

/// Sends a request with an optional bearer token and extra headers.
pub async fn send(
    method: Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, token: &str) -> Reply {
    send(Method::GET, url, Some(token), &[]).await
}

/// Sends one DELETE per (url, client token) at once; join the handles for the statuses, in order.
pub fn spawn_deletes(targets: Vec<(String, String)>) -> Vec<tokio::task::JoinHandle<StatusCode>> {
    targets
        .into_iter()
        .map(|(url, token)| {
            tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await.status })
        })
        .collect()
}

/// Writes `request` bytes as they are on a fresh connection and returns the status code (0 if the
/// connection closed without a status line) and the whole answer.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A request head (no body) written on a socket of its own, returned unread: the test hangs up
/// by dropping it.
pub async fn send_head(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: &str,
) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// GitHub answers the next request `delay` late, with a secondary limit (403, `retry-after: 60`):
/// whatever waits behind it meanwhile meets the back-off that answer opens.
pub fn limit_next_request_after(sim: &Sim, delay: Duration) {
    use packages_proxy::sim::{Fault, FaultKind};
    let limit = FaultKind::Delayed {
        fault: Box::new(FaultKind::SecondaryRateLimit {
            status: StatusCode::FORBIDDEN,
            retry_after_secs: 60,
        }),
        delay,
    };
    sim.handle.inject(Fault::new(limit, 1));
}

/// A read of [`cold`]`(0)` by `token` meets GitHub's secondary limit (403, `retry-after: secs`):
/// the proxy backs off for `secs` from now.
pub async fn open_back_off(sim: &Sim, proxy: &TestProxy, token: &str, secs: u64) {
    use packages_proxy::sim::{Fault, FaultKind};
    sim.handle.inject(Fault::new(
        FaultKind::SecondaryRateLimit {
            status: StatusCode::FORBIDDEN,
            retry_after_secs: secs,
        },
        1,
    ));
    let limited = get(&proxy.url(&cold(0)), token).await;
    assert_eq!(limited.status, StatusCode::FORBIDDEN, "{}", limited.text());
}

/// A read of [`cold`]`(0)` by `token` that the simulator answers after `latency`, started and
/// waited for until it is at GitHub (first there: the proxy then holds an upstream slot for it).
pub async fn slow_read_at_github(
    sim: &Sim,
    proxy: &TestProxy,
    token: &str,
    latency: Duration,
) -> tokio::task::JoinHandle<StatusCode> {
    use packages_proxy::sim::{Fault, FaultKind};
    sim.handle
        .inject(Fault::new(FaultKind::Latency(latency), 1));
    let (url, token) = (proxy.url(&cold(0)), token.to_owned());
    let slow = tokio::spawn(async move { get(&url, &token).await.status });
    // This read itself, not a count of GETs: a caller may have read from the simulator before
    // (`Sim::versions`), and a count then returned at once, racing what the caller sent next to
    // the simulator (the next request took the latency meant for this one).
    let target = cold(0);
    eventually(
        Duration::from_secs(10),
        "the slow read at GitHub",
        || async {
            sim.handle.log().iter().any(|r| {
                r.method == Method::GET
                    && r.query
                        .as_deref()
                        .is_some_and(|q| target == format!("{}?{q}", r.path))
            })
        },
    )
    .await;
    slow
}

/// Waits until `proxy`'s `packages_proxy_upstream_queued` (requests waiting for an upstream slot
/// or for their client's share) is `n`.
pub async fn wait_upstream_queued(proxy: &TestProxy, n: f64) {
    wait_for_sample(
        &proxy.url("/metrics"),
        "packages_proxy_upstream_queued",
        n,
        Duration::from_secs(10),
    )
    .await;
}

/// A GET with the given raw request-target and a bearer token, `Connection: close`.
pub async fn raw_get(addr: SocketAddr, target: &str, token: &str) -> (u16, String) {
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    raw(addr, request.as_bytes()).await
}

/// `rel -> url` pairs of a Link header.
pub fn links(value: &str) -> Vec<(String, String)> {
    value
        .split(", ")
        .filter_map(|entry| {
            let (url, rel) = entry.split_once(">; rel=\"")?;
            Some((
                rel.trim_end_matches('"').to_owned(),
                url.trim_start_matches('<').to_owned(),
            ))
        })
        .collect()
}

/// Config lines that allow every destructive call, paced `pace` apart, audited into a fresh
/// file (tests of what happens *after* the policy said yes).
pub fn allow_everything(pace: &str) -> String {
    let audit = temp_dir("audit").join("audit.jsonl");
    format!(
        "[mutations]\npace = \"{pace}\"\naudit_log = {audit:?}\n[[policy.allow]]\nname = \"all\"\n"
    )
}

/// A fresh empty directory under the system temp dir, unique per call.
pub fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("packages-proxy-{label}-{}", fake_token("d")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An upstream that answers every request with `status`, `headers` and `body` (for answers the
/// simulator does not give: headers it never sends, huge or unreadable bodies). Returns its base
/// URL.
pub async fn answering_upstream(
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let headers = std::sync::Arc::new(headers);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (headers, body) = (headers.clone(), body.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let mut response = http::Response::builder().status(status);
                        for (name, value) in headers.iter() {
                            response = response.header(*name, value.as_str());
                        }
                        let response = response.body(Full::new(body.clone())).unwrap();
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// A proxy started from the config file at `path` (so that a test can rewrite and reload it),
/// in front of `sim`.
pub async fn start_from_file(path: &std::path::Path, sim: &Sim) -> Running {
    let config = Config::load(path).unwrap();
    server::start(config, OrgToken::new(&sim.org_token).unwrap())
        .await
        .unwrap()
}
