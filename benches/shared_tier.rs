//! Shared-tier benchmark: three in-process proxies in front of one simulator, sharing one real
//! Redis (`redis-server`, started here on a free loopback port, killed at the end), next to three
//! proxies that share nothing. Measures what the tier saves (upstream requests for the same
//! reads), what an L2 hit costs (a key warm in Redis, cold in the replica's L1), and that L1 hits
//! cost the same with the tier configured (they never touch Redis).
//!
//! Run with `cargo bench --bench shared_tier`; see `benches/README.md`. Without `--bench` (as
//! `cargo test --all-targets` runs it) it exits at once.
// A bench binary: nothing here is public API, and a failed setup should stop the run loudly.
#![allow(missing_docs, clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use packages_proxy::{
    config::Config,
    secret::{OrgToken, TokenHash, new_client_token},
    server::{self, Running},
    sim::{Dataset, SimHandle, Simulator},
};
use tokio::{net::TcpStream, runtime::Runtime};

/// The shipped binary's allocator, so what is measured is what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A per-minute quota no run reaches: this bench measures the tier, not the client quotas (which
/// are still taken on every request, fleet-wide in Redis for requests that miss L1).
const QUOTA_OFF: u32 = 4_000_000_000;
/// Versions per package: a `per_page=30` list of one package is one ~14 KiB answer.
const VERSIONS: usize = 30;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} does not parse")),
        Err(_) => default,
    }
}

/// A full page of package `i`'s versions (~14 KiB): one distinct cache key per package.
fn big_key(i: usize) -> String {
    format!("/orgs/acme/packages/container/pkg-{i}/versions?per_page={VERSIONS}")
}

/// A page past the end of pkg-0's versions: an empty list (2 body bytes), one key per page.
fn small_key(i: usize) -> String {
    format!(
        "/orgs/acme/packages/container/pkg-0/versions?per_page={VERSIONS}&page={}",
        1000 + i
    )
}

// === Redis ===

/// A `redis-server` child on a free loopback port, in a scratch directory; killed and removed on
/// drop.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Option<Self> {
        let binary = [
            "redis-server",
            "/usr/bin/redis-server",
            "/usr/sbin/redis-server",
        ]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("packages-proxy-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Self { child, port, dir };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command over a fresh connection (RESP by hand: this bench only needs two commands).
    fn command(&self, args: &[&str]) -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        match first.strip_prefix('$') {
            Some(len) => {
                let len: usize = len.trim().parse().unwrap();
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                String::from_utf8_lossy(&body).into_owned()
            }
            None => first.trim().to_owned(),
        }
    }

    /// Calls per command since the last `CONFIG RESETSTAT` (`INFO commandstats`).
    fn command_calls(&self) -> BTreeMap<String, u64> {
        self.command(&["INFO", "commandstats"])
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                // This bench's own INFO and CONFIG RESETSTAT.
                if name == "info" || name.starts_with("config") {
                    return None;
                }
                let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === proxies and a client ===

fn proxy_config(upstream: &str, client_token: &str, redis_url: Option<&str>) -> String {
    let hash = TokenHash::of(client_token).to_hex();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nbase_url = \"{upstream}\"\nallow_plain_http = true\n\
         token_env = \"PACKAGES_PROXY_BENCH_UNUSED\"\nowners = [\"acme\"]\n\n\
         [[clients]]\nname = \"bench\"\ntoken_sha256 = \"{hash}\"\n\n\
         [quotas]\nupstream_per_minute = {QUOTA_OFF}\nhits_per_minute = {QUOTA_OFF}\n\n\
         [cache]\npackage_lists_ttl = \"1h\"\npackage_ttl = \"1h\"\n\
         version_lists_ttl = \"1h\"\nversion_ttl = \"1h\"\nnot_found_ttl = \"1h\"\n",
    );
    if let Some(url) = redis_url {
        text.push_str(&format!(
            "\n[shared]\nredis_url = \"{url}\"\nreplicas = 3\n"
        ));
    }
    text
}

/// Three proxies in front of `sim`, sharing Redis when `redis_url` is set (waits until each
/// replica's tier is up: its first subscribe drops L1, so nothing may be cached before).
fn fleet(
    rt: &Runtime,
    sim: &SimHandle,
    org_token: &str,
    client_token: &str,
    redis_url: Option<&str>,
) -> Vec<Running> {
    rt.block_on(async {
        let mut fleet = Vec::new();
        for _ in 0..3 {
            let text = proxy_config(&sim.base_url(), client_token, redis_url);
            let config = Config::parse(&text).unwrap();
            let running = server::start(config, OrgToken::new(org_token).unwrap())
                .await
                .unwrap();
            fleet.push(running);
        }
        if redis_url.is_some() {
            for running in &fleet {
                let shared = running.state.shared().unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while !shared.is_up() {
                    assert!(Instant::now() < deadline, "the shared tier never came up");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        fleet
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A keep-alive HTTP/1.1 connection to one replica (the client side lives on the bench thread).
struct Conn {
    addr: SocketAddr,
    sender: Sender,
    host: HeaderValue,
    auth: HeaderValue,
}

impl Conn {
    async fn handshake(addr: SocketAddr) -> Sender {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    async fn open(addr: SocketAddr, client_token: &str) -> Self {
        Self {
            addr,
            sender: Self::handshake(addr).await,
            host: HeaderValue::try_from(addr.to_string()).unwrap(),
            auth: HeaderValue::try_from(format!("Bearer {client_token}")).unwrap(),
        }
    }

    /// One GET, body read; returns the `Cache-Status` and the time from send to end of body.
    async fn get(&mut self, path: &str) -> (String, Duration) {
        // The server closes keep-alive connections idle past its header timeout, which this
        // client may only notice on the next send: then reconnect and send again (untimed).
        let (response, started) = loop {
            if self.sender.ready().await.is_err() {
                self.sender = Self::handshake(self.addr).await;
                continue;
            }
            let mut request = Request::new(Empty::new());
            *request.uri_mut() = Uri::try_from(path).unwrap();
            request
                .headers_mut()
                .insert(header::HOST, self.host.clone());
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, self.auth.clone());
            let started = Instant::now();
            match self.sender.send_request(request).await {
                Ok(response) => break (response, started),
                Err(error) if error.is_incomplete_message() || error.is_closed() => {
                    self.sender = Self::handshake(self.addr).await;
                }
                Err(error) => panic!("GET {path}: {error}"),
            }
        };
        let (parts, body) = response.into_parts();
        body.collect().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(parts.status, StatusCode::OK, "GET {path}");
        let status = parts
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        (status, elapsed)
    }
}

fn upstream_gets(sim: &SimHandle) -> usize {
    sim.log().iter().filter(|r| r.method == Method::GET).count()
}

// === latency summaries ===

struct Latency {
    histogram: Histogram<u64>,
    /// `Cache-Status` values seen, with counts (`packages-proxy; hit; ...` trimmed to its outcome).
    statuses: BTreeMap<String, usize>,
}

impl Latency {
    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap(),
            statuses: BTreeMap::new(),
        }
    }

    fn record(&mut self, (status, elapsed): (String, Duration)) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(ns);
        let outcome = status
            .split(';')
            .nth(1)
            .unwrap_or(&status)
            .trim()
            .to_owned();
        *self.statuses.entry(outcome).or_default() += 1;
    }

    fn us(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1e3
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<44} n={:<6} p50 {:>8.1} µs  p99 {:>8.1} µs  mean {:>8.1} µs  max {:>8.1} µs  cache-status {:?}",
            self.histogram.len(),
            self.us(0.5),
            self.us(0.99),
            self.histogram.mean() / 1e3,
            self.histogram.max() as f64 / 1e3,
            self.statuses,
        );
    }
}

// === the run ===

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys: usize = env_or("SHARED_TIER_KEYS", 200);
    let samples: usize = env_or("SHARED_TIER_SAMPLES", 300);
    // Fewer by default: a lost lock race costs a whole lock TTL (5 s), see benches/README.md.
    let concurrent_keys: usize = env_or("SHARED_TIER_CONCURRENT_KEYS", 100).min(keys);
    let l1_requests: usize = env_or("SHARED_TIER_L1_REQUESTS", 20_000);
    let Some(redis) = Redis::start() else {
        println!("shared_tier: redis-server not found; skipped (apt-get install redis-server)");
        return;
    };
    println!(
        "shared_tier: redis-server {} on port {}; {keys} keys, {samples} L2 samples, {l1_requests} L1 hits per side",
        redis
            .command(&["INFO", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim(),
        redis.port,
    );

    // The proxies on one worker, the simulator on another runtime, the client on this thread
    // (as in hot_path): on 2 cores, the proxies and the client do not share a worker.
    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("srv")
        .enable_all()
        .build()
        .unwrap();
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sim")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let org_token = format!(
        "ghp_fake_{}",
        new_client_token().unwrap().trim_start_matches("ppx_")
    );
    let client_token = new_client_token().unwrap();
    // Distinct packages for each phase, so no phase finds another's keys warm in Redis.
    let packages = 2 * keys + samples + 1;
    let sim = sim_rt.block_on(async {
        Simulator::new(org_token.clone())
            .dataset(Dataset::generated("acme", packages, VERSIONS))
            .rate_limit(u64::MAX / 2)
            .run()
            .await
            .unwrap()
    });
    let alone = fleet(&srv_rt, &sim, &org_token, &client_token, None);
    let shared = fleet(&srv_rt, &sim, &org_token, &client_token, Some(&redis.url()));
    let connect = |fleet: &[Running]| -> Vec<Conn> {
        client_rt.block_on(async {
            let mut conns = Vec::new();
            for running in fleet {
                conns.push(Conn::open(running.addr, &client_token).await);
            }
            conns
        })
    };
    let mut alone_conns = connect(&alone);
    let mut shared_conns = connect(&shared);

    // (a) Upstream requests for the same reads: every key once through each replica.
    println!();
    println!(
        "== (a) upstream requests: {keys} distinct keys (~14 KiB answers), each read once through each of 3 replicas =="
    );
    let read_all = |conns: &mut [Conn], range: std::ops::Range<usize>| {
        sim.clear_log();
        let started = Instant::now();
        client_rt.block_on(async {
            for conn in conns.iter_mut() {
                for i in range.clone() {
                    conn.get(&big_key(i)).await;
                }
            }
        });
        (upstream_gets(&sim), started.elapsed())
    };
    let (without, t_without) = read_all(&mut alone_conns, 1..keys + 1);
    let (with, t_with) = read_all(&mut shared_conns, 1..keys + 1);
    println!(
        "without the shared tier: {without} upstream GETs ({:.1} per key) in {:.2} s",
        without as f64 / keys as f64,
        t_without.as_secs_f64()
    );
    println!(
        "with the shared tier:    {with} upstream GETs ({:.2} per key) in {:.2} s",
        with as f64 / keys as f64,
        t_with.as_secs_f64()
    );
    // The same, all three replicas asked for each key at once (the fleet-wide lock decides who
    // fetches; the others poll L2), 16 keys at a time.
    sim.clear_log();
    let started = Instant::now();
    let (concurrent, slow) = srv_rt.block_on(async {
        let fleet: Vec<(SocketAddr, String)> = shared
            .iter()
            .map(|r| (r.addr, client_token.clone()))
            .collect();
        let fleet = Arc::new(fleet);
        let mut latency = Latency::new();
        let first = keys + 1;
        for chunk in (first..first + concurrent_keys)
            .collect::<Vec<_>>()
            .chunks(16)
        {
            let mut tasks = Vec::new();
            for &i in chunk {
                for r in 0..3 {
                    let fleet = fleet.clone();
                    tasks.push(tokio::spawn(async move {
                        let (addr, token) = &fleet[r];
                        let mut conn = Conn::open(*addr, token).await;
                        conn.get(&big_key(i)).await
                    }));
                }
            }
            for task in tasks {
                latency.record(task.await.unwrap());
            }
        }
        (upstream_gets(&sim), latency)
    });
    println!(
        "with the shared tier, 3 replicas at once per key: {concurrent} upstream GETs ({:.2} per key) in {:.2} s; \
         {} of {} requests took over 1 s",
        concurrent as f64 / concurrent_keys as f64,
        started.elapsed().as_secs_f64(),
        slow.histogram.count_between(1_000_000_000, u64::MAX),
        slow.histogram.len(),
    );
    slow.print("3 replicas at once: per request");

    // (b) L2 hits: a key read through replica 1 (a miss: upstream, then written to Redis), then
    // read through replica 2 (cold L1: served from Redis), then again through replica 2 (L1).
    println!();
    println!(
        "== (b) L2 hit latency: read via replica 1 (miss), then first read via replica 2 (L2), then again (L1); one keep-alive connection each =="
    );
    for (label, key_of, first) in [
        (
            "~14 KiB answers",
            big_key as fn(usize) -> String,
            2 * keys + 1,
        ),
        ("2-byte answers (empty page)", small_key, 0),
    ] {
        let (mut miss, mut l2, mut l1) = (Latency::new(), Latency::new(), Latency::new());
        sim.clear_log();
        let _ = redis.command(&["CONFIG", "RESETSTAT"]);
        client_rt.block_on(async {
            let [one, two, _] = &mut shared_conns[..] else {
                unreachable!()
            };
            for i in first..first + samples {
                let key = key_of(i);
                miss.record(one.get(&key).await);
                l2.record(two.get(&key).await);
                l1.record(two.get(&key).await);
            }
        });
        let upstream = upstream_gets(&sim);
        let calls = redis.command_calls();
        println!("-- {label}");
        miss.print("miss via replica 1 (upstream + L2 write)");
        l2.print("first read via replica 2 (L2 hit)");
        l1.print("second read via replica 2 (L1 hit)");
        println!(
            "upstream GETs: {upstream} for {samples} keys; Redis calls per key (miss + L2 hit + L1 hit): {}",
            calls
                .iter()
                .map(|(name, n)| format!("{name} {:.2}", *n as f64 / samples as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "L2 hit p50 {:.1} µs = L1 hit p50 + {:.1} µs; miss p50 {:.1} µs",
            l2.us(0.5),
            l2.us(0.5) - l1.us(0.5),
            miss.us(0.5),
        );
    }

    // (c) L1 hits with and without the tier: one warm key, one connection, interleaved rounds.
    println!();
    println!(
        "== (c) L1 hit latency, shared tier configured vs not (one warm ~14 KiB key, one keep-alive connection, interleaved rounds of 1,000) =="
    );
    let key = big_key(1);
    let (mut with_tier, mut without_tier) = (Latency::new(), Latency::new());
    let _ = redis.command(&["CONFIG", "RESETSTAT"]);
    client_rt.block_on(async {
        let (a, s) = (&mut alone_conns[0], &mut shared_conns[0]);
        a.get(&key).await;
        s.get(&key).await;
        for _ in 0..l1_requests.div_ceil(1000) {
            for _ in 0..1000 {
                without_tier.record(a.get(&key).await);
            }
            for _ in 0..1000 {
                with_tier.record(s.get(&key).await);
            }
        }
    });
    let calls: u64 = redis.command_calls().values().sum();
    without_tier.print("L1 hit, no shared tier");
    with_tier.print("L1 hit, shared tier configured");
    println!(
        "with/without: p50 {:.2}x, p99 {:.2}x, mean {:.2}x; Redis calls during the L1 hits: {calls}",
        with_tier.us(0.5) / without_tier.us(0.5),
        with_tier.us(0.99) / without_tier.us(0.99),
        with_tier.histogram.mean() / without_tier.histogram.mean(),
    );
    // Locals drop in reverse order: connections, proxies, runtimes, and Redis last.
}
