//! Load benchmark: cache hits through the real proxy over loopback keep-alive HTTP/1.1, measured
//! next to a bare hyper server that sends the same bytes, and next to nginx `proxy_cache` when
//! nginx is installed; then hit throughput with a small and a large number of cached keys.
//!
//! Run with `cargo bench --bench hit_load`; knobs and how to read the numbers are in
//! `benches/README.md`. Without `--bench` (as `cargo test --all-targets` runs it) it exits at once.
// A bench binary: nothing here is public API, and a failed setup should stop the run loudly.
#![allow(missing_docs, clippy::unwrap_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use packages_proxy::{
    config::Config,
    secret::{OrgToken, TokenHash, new_client_token},
    server,
    sim::{Dataset, SimHandle, Simulator},
};
use tokio::{
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};

/// The shipped binary's allocator, so what is measured is what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The cached answer every hit run asks for: 30 versions of a container package, with `Link`.
const HIT_PATH: &str = "/orgs/acme/packages/container/pkg-0/versions?per_page=30";
/// Prefix of the key-count runs: pages past the end of pkg-1's versions (empty lists, all alike).
const PAGES_PREFIX: &str = "/orgs/acme/packages/container/pkg-1/versions?per_page=30&page=";
/// First page number of the key-count runs (well past the last real page).
const FIRST_PAGE: u32 = 1_000;
/// A per-minute quota no run reaches (u32, like the config field).
const QUOTA_OFF: u32 = 4_000_000_000;

// === settings ===

/// What to run, from `HIT_LOAD_*` environment variables (see benches/README.md).
struct Settings {
    secs: f64,
    warmup_secs: f64,
    conns: Vec<usize>,
    keys_small: u32,
    keys_large: u32,
    keys_conns: usize,
    fill_conns: usize,
    pin: bool,
    server_cores: Vec<usize>,
    load_cores: Vec<usize>,
    nginx: Option<PathBuf>,
    /// wrk drives the load when set (`HIT_LOAD_WRK`, default: found on `PATH`).
    wrk: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} does not parse")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pin = env_or("HIT_LOAD_PIN", 1u8) == 1 && cores >= 2;
        // Half the cores serve, half load, unless told otherwise.
        let server_threads = env_or("HIT_LOAD_SERVER_THREADS", (cores / 2).max(1));
        let load_threads = env_or("HIT_LOAD_LOAD_THREADS", (cores - server_threads).max(1));
        let server_cores: Vec<usize> = (0..server_threads).map(|i| i % cores).collect();
        let load_cores: Vec<usize> = (0..load_threads)
            .map(|i| (server_threads + i) % cores)
            .collect();
        let conns = std::env::var("HIT_LOAD_CONNS")
            .unwrap_or_else(|_| "32,128".to_owned())
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.trim().parse().unwrap())
            .collect();
        let nginx = match std::env::var("HIT_LOAD_NGINX") {
            Ok(v) if v == "0" => None,
            Ok(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => find_nginx(),
        };
        let wrk = match std::env::var("HIT_LOAD_WRK") {
            Ok(v) if v == "0" => None,
            Ok(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => find_tool("wrk"),
        };
        Self {
            secs: env_or("HIT_LOAD_SECS", 5.0),
            warmup_secs: env_or("HIT_LOAD_WARMUP_SECS", 1.0),
            conns,
            keys_small: env_or("HIT_LOAD_KEYS_SMALL", 1_000),
            keys_large: env_or("HIT_LOAD_KEYS_LARGE", 1_000_000),
            keys_conns: env_or("HIT_LOAD_KEYS_CONNS", 32),
            fill_conns: env_or("HIT_LOAD_FILL_CONNS", 128),
            pin,
            server_cores,
            load_cores,
            nginx,
            wrk,
        }
    }
}

fn find_nginx() -> Option<PathBuf> {
    find_tool("nginx")
}

/// `name` on `PATH`, or in the sbin directories (nginx lives there).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

// === runtimes and CPU accounting ===

/// A multi-thread runtime whose threads are named `name` and, when pinning, bound to `cores`.
fn runtime(name: &str, threads: usize, cores: Option<Vec<usize>>) -> Runtime {
    let next = Arc::new(AtomicUsize::new(0));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .on_thread_start(move || {
            if let Some(cores) = &cores {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let core = cores[i % cores.len()];
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
            }
        })
        .build()
        .unwrap()
}

/// Clock ticks per second of /proc's utime and stime (USER_HZ; 100 on Linux everywhere).
const TICKS: f64 = 100.0;

/// utime + stime, in ticks, of a /proc `stat` line.
fn stat_ticks(stat: &str) -> u64 {
    // Fields after the `(comm)`: state is the first, utime the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// CPU ticks used so far by this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|s| stat_ticks(&s))
        .sum()
}

/// CPU ticks used so far by another process.
fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(0, |s| stat_ticks(&s))
}

/// Where the server side's CPU time is read from.
#[derive(Clone, Copy)]
enum ServerCpu {
    /// Our "srv" runtime threads (proxy, bare hyper).
    Threads,
    /// An nginx process.
    Process(u32),
}

impl ServerCpu {
    fn ticks(self) -> u64 {
        match self {
            Self::Threads => thread_ticks("srv"),
            Self::Process(pid) => process_ticks(pid),
        }
    }
}

// === the load generator ===

/// Which paths a run asks for.
#[derive(Clone)]
enum Paths {
    /// Always the same.
    Fixed(Uri),
    /// `PAGES_PREFIX` + a page picked uniformly at random from `FIRST_PAGE..FIRST_PAGE + count`.
    Pages(u32),
}

/// One thing to load.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    auth: HeaderValue,
    paths: Paths,
}

/// What one run measured.
struct Outcome {
    requests: u64,
    errors: u64,
    bad_status: u64,
    secs: f64,
    /// Latency quantiles p50, p99, p99.9, in ms.
    latency_ms: [f64; 3],
    server_cpu: f64,
    load_cpu: f64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }

    /// Microseconds of server core per request: the server's cost whichever side saturated.
    fn server_us(&self) -> f64 {
        self.server_cpu * 1e6 / self.rps().max(1.0)
    }

    fn p50_ms(&self) -> f64 {
        self.latency_ms[0]
    }

    fn p99_ms(&self) -> f64 {
        self.latency_ms[1]
    }

    fn print(&self, name: &str, conns: usize) {
        println!(
            "{name:<14} conns={conns:<4} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  \
             cpu: server {:>4.0}% load {:>4.0}%  server {:>5.1} us/req  errors {} non-200 {}",
            self.rps(),
            self.latency_ms[0],
            self.latency_ms[1],
            self.latency_ms[2],
            self.server_cpu * 100.0,
            self.load_cpu * 100.0,
            self.server_us(),
            self.errors,
            self.bad_status,
        );
        if self.bad_status > 0 {
            println!(
                "   (!) {} answers were not 200 (a quota? see proxy_config): this point measures \
                 errors, not hits",
                self.bad_status
            );
        }
        if self.load_cpu >= 0.95 && self.server_cpu < 0.9 {
            println!(
                "   (!) the load generator saturated its core before the server did: req/s is the \
                 generator's; compare server us/req (or run ../shared/bench/proxy.sh, which uses wrk)"
            );
        }
        if self.server_cpu < 0.9 && self.load_cpu < 0.9 {
            println!(
                "   (!) neither side reached 90% of its core: something else used the machine; \
                 this point is not reliable"
            );
        }
    }
}

/// Per-connection results, merged after the run.
struct TaskResult {
    requests: u64,
    errors: u64,
    bad_status: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 60 s, three significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// A keep-alive HTTP/1.1 connection: the raw hyper client, one per task, no pool.
async fn connect(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, hyper::Error> {
    let stream = loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => break stream,
            // Ephemeral ports or the backlog can run short for a moment: retry.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(target: &Target, rng: &mut u64) -> Request<Empty<Bytes>> {
    let uri = match &target.paths {
        Paths::Fixed(uri) => uri.clone(),
        Paths::Pages(count) => {
            // xorshift64: cheap, and the same cost for every key count.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            let page = FIRST_PAGE + (*rng % u64::from(*count)) as u32;
            Uri::try_from(format!("{PAGES_PREFIX}{page}")).unwrap()
        }
    };
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(header::HOST, target.host.clone());
    headers.insert(header::AUTHORIZATION, target.auth.clone());
    request
}

/// One closed-loop connection: send, read the whole answer, repeat until `end`; latencies of
/// requests started after `measure_from` are recorded.
async fn connection(target: Target, seed: u64, measure_from: Instant, end: Instant) -> TaskResult {
    let mut result = TaskResult {
        requests: 0,
        errors: 0,
        bad_status: 0,
        latency: histogram(),
    };
    let mut rng = seed | 1;
    'connect: while Instant::now() < end {
        let Ok(mut sender) = connect(target.addr).await else {
            result.errors += 1;
            continue;
        };
        loop {
            if sender.ready().await.is_err() {
                continue 'connect;
            }
            let started = Instant::now();
            if started >= end {
                break 'connect;
            }
            let response = match sender.send_request(request(&target, &mut rng)).await {
                Ok(response) => response,
                Err(_) => {
                    result.errors += 1;
                    continue 'connect;
                }
            };
            let ok = response.status() == StatusCode::OK;
            if response.into_body().collect().await.is_err() {
                result.errors += 1;
                continue 'connect;
            }
            if started >= measure_from {
                let ns = started.elapsed().as_nanos() as u64;
                result.latency.saturating_record(ns.max(1));
                result.requests += 1;
                if !ok {
                    result.bad_status += 1;
                }
            }
        }
    }
    result
}

/// Drives `target` with `conns` connections for warm-up plus the measured time: with wrk when it
/// is installed (`settings.wrk`), else with the in-process generator.
fn drive(
    load_rt: &Runtime,
    target: &Target,
    conns: usize,
    settings: &Settings,
    server_cpu: ServerCpu,
) -> Outcome {
    match &settings.wrk {
        Some(wrk) => drive_wrk(wrk, target, conns, settings, server_cpu),
        None => drive_in_process(load_rt, target, conns, settings, server_cpu),
    }
}

/// The in-process generator: one task per connection on the `load` runtime.
fn drive_in_process(
    load_rt: &Runtime,
    target: &Target,
    conns: usize,
    settings: &Settings,
    server_cpu: ServerCpu,
) -> Outcome {
    load_rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(settings.warmup_secs);
        let end = measure_from + Duration::from_secs_f64(settings.secs);
        let tasks: Vec<_> = (0..conns)
            .map(|i| {
                let seed = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i as u64 + 1);
                tokio::spawn(connection(target.clone(), seed, measure_from, end))
            })
            .collect();
        tokio::time::sleep_until(measure_from.into()).await;
        let (srv0, load0, t0) = (server_cpu.ticks(), thread_ticks("load"), Instant::now());
        tokio::time::sleep_until(end.into()).await;
        let (srv1, load1) = (server_cpu.ticks(), thread_ticks("load"));
        let wall = t0.elapsed().as_secs_f64();
        let mut latency = histogram();
        let mut outcome = Outcome {
            requests: 0,
            errors: 0,
            bad_status: 0,
            secs: settings.secs,
            latency_ms: [0.0; 3],
            server_cpu: (srv1 - srv0) as f64 / TICKS / wall,
            load_cpu: (load1 - load0) as f64 / TICKS / wall,
        };
        for task in tasks {
            let r = task.await.unwrap();
            outcome.requests += r.requests;
            outcome.errors += r.errors;
            outcome.bad_status += r.bad_status;
            latency.add(&r.latency).unwrap();
        }
        outcome.latency_ms = [0.5, 0.99, 0.999].map(|q| latency.value_at_quantile(q) as f64 / 1e6);
        outcome
    })
}

/// wrk's script: requests (random pages for `Paths::Pages`, else wrk's static request, which
/// keeps its fast path) and one `WRK_RESULT` line at the end, as `../shared/bench/wrk/report.lua`.
fn wrk_script(paths: &Paths) -> String {
    let request = match paths {
        Paths::Fixed(_) => String::new(),
        // The same uniform choice as the in-process generator: FIRST_PAGE + [0, count).
        Paths::Pages(count) => format!(
            "local head, tail = nil, nil\n\
             function init(args) math.randomseed(1) end\n\
             function request()\n\
             \x20 if head == nil then\n\
             \x20   local sample = wrk.format(nil, \"/@\")\n\
             \x20   local at = string.find(sample, \"/@\", 1, true)\n\
             \x20   head, tail = string.sub(sample, 1, at - 1), string.sub(sample, at + 2)\n\
             \x20 end\n\
             \x20 return head .. \"{PAGES_PREFIX}\" .. ({FIRST_PAGE} + math.random({count}) - 1) .. tail\n\
             end\n"
        ),
    };
    format!(
        "{request}\
         done = function(summary, latency, requests)\n\
         \x20 local e = summary.errors\n\
         \x20 io.write(string.format(\"WRK_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d \" ..\n\
         \x20   \"err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\\n\",\n\
         \x20   summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),\n\
         \x20   latency:percentile(99.9), e.connect, e.read, e.write, e.status, e.timeout))\n\
         end\n"
    )
}

/// One wrk run against `target`; returns its `WRK_RESULT` fields and its CPU ticks.
fn run_wrk(
    wrk: &Path,
    target: &Target,
    conns: usize,
    secs: f64,
    settings: &Settings,
) -> (std::collections::HashMap<String, u64>, u64) {
    let script = std::env::temp_dir().join(format!(
        "packages-proxy-hit-load-{}.lua",
        std::process::id()
    ));
    std::fs::write(&script, wrk_script(&target.paths)).unwrap();
    let path = match &target.paths {
        Paths::Fixed(uri) => uri.to_string(),
        Paths::Pages(_) => "/".to_owned(),
    };
    let mut command = match settings.load_cores.first() {
        Some(core) if settings.pin && Path::new("/usr/bin/taskset").exists() => {
            let mut c = Command::new("/usr/bin/taskset");
            c.arg("-c").arg(core.to_string()).arg(wrk);
            c
        }
        _ => Command::new(wrk),
    };
    let auth = target.auth.to_str().unwrap();
    command
        .arg("-t1")
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", secs.ceil().max(1.0)))
        .arg("--timeout")
        .arg("2s")
        .arg("-s")
        .arg(&script)
        .arg("-H")
        .arg(format!("Authorization: {auth}"))
        .arg(format!("http://{}{path}", target.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    // wrk's CPU: its /proc stat, read until it exits (taskset execs wrk, so the pid is wrk's).
    let mut ticks = 0;
    while child.try_wait().unwrap().is_none() {
        ticks = process_ticks(child.id()).max(ticks);
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("WRK_RESULT"))
        .unwrap_or_else(|| panic!("wrk printed no WRK_RESULT:\n{text}"));
    let fields = line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect();
    (fields, ticks)
}

/// Drives `target` with wrk (`-t1`, pinned to the first load core): a warm-up run, then the
/// measured one. The server's CPU is read around the measured run; wrk's from its /proc stat.
fn drive_wrk(
    wrk: &Path,
    target: &Target,
    conns: usize,
    settings: &Settings,
    server_cpu: ServerCpu,
) -> Outcome {
    if settings.warmup_secs > 0.0 {
        run_wrk(wrk, target, conns, settings.warmup_secs, settings);
    }
    let srv0 = server_cpu.ticks();
    let (fields, load_ticks) = run_wrk(wrk, target, conns, settings.secs, settings);
    let srv1 = server_cpu.ticks();
    let get = |k: &str| fields.get(k).copied().unwrap_or(0);
    // Both sides' CPU over wrk's own measured duration (the server idles outside it).
    let secs = (get("duration_us") as f64 / 1e6).max(1e-3);
    let errors = ["err_connect", "err_read", "err_write", "err_timeout"]
        .iter()
        .map(|k| get(k))
        .sum();
    Outcome {
        requests: get("requests"),
        errors,
        bad_status: get("err_status"),
        secs,
        latency_ms: ["p50_us", "p99_us", "p999_us"].map(|k| get(k) as f64 / 1e3),
        server_cpu: (srv1 - srv0) as f64 / TICKS / secs,
        load_cpu: load_ticks as f64 / TICKS / secs,
    }
}

/// One request, fully read (warm-up and capture).
async fn fetch(target: &Target, uri: &str) -> (StatusCode, HeaderMap, Bytes) {
    let mut sender = connect(target.addr).await.unwrap();
    let mut request = request(target, &mut 1);
    *request.uri_mut() = Uri::try_from(uri).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// Requests pages `FIRST_PAGE + from ..` once each with `conns` connections in parallel: fills
/// the cache with `count` more keys. Returns the elapsed seconds.
fn fill(
    load_rt: &Runtime,
    target: &Target,
    (from, count): (u32, u32),
    conns: usize,
    sim: &SimHandle,
) -> f64 {
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    // The simulator logs every request; keep that log from growing with a million misses.
    let clearer = {
        let (sim, done) = (sim.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                sim.clear_log();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    load_rt.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (target, next) = (target.clone(), next.clone());
                tokio::spawn(async move {
                    let mut sender = connect(target.addr).await.unwrap();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count as usize {
                            break;
                        }
                        let mut request = request(&target, &mut 1);
                        let page = FIRST_PAGE + from + i as u32;
                        *request.uri_mut() =
                            Uri::try_from(format!("{PAGES_PREFIX}{page}")).unwrap();
                        sender.ready().await.unwrap();
                        let response = sender.send_request(request).await.unwrap();
                        assert_eq!(response.status(), StatusCode::OK, "fill page {page}");
                        response.into_body().collect().await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    done.store(true, Ordering::Relaxed);
    clearer.join().unwrap();
    started.elapsed().as_secs_f64()
}

/// The sum of the `name` series whose labels contain `labels`, as the proxy's `/metrics` shows
/// them now (the state's fields are the crate's own).
fn metric(running: &server::Running, name: &str, labels: &str) -> f64 {
    packages_proxy::ops::render_metrics(&running.state)
        .lines()
        .filter(|line| line.contains(labels))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            if !rest.is_empty() && !rest.starts_with('{') {
                return None; // another metric whose name starts with this one
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// This process's resident memory, as /proc reports it.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map_or("?", str::trim);
    format!("process RSS {rss}")
}

// === the servers ===

fn proxy_config(upstream: &str, client_token: &str) -> String {
    let hash = TokenHash::of(client_token).to_hex();
    // Client quotas out of the way (the defaults, 6,000 hits and 300 misses a minute, would turn
    // most of a run into 429s: a token bucket refilling at 100 hits/s). The bucket is still taken
    // on every request, so its cost is measured.
    // Long TTLs: nothing may expire (and turn hits into revalidations) during the run. The byte
    // bound is far above what a million small entries weigh.
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nbase_url = \"{upstream}\"\nallow_plain_http = true\n\
         token_env = \"PACKAGES_PROXY_BENCH_UNUSED\"\nowners = [\"acme\"]\n\n\
         [[clients]]\nname = \"bench\"\ntoken_sha256 = \"{hash}\"\n\n\
         [quotas]\nupstream_per_minute = {unlimited}\nhits_per_minute = {unlimited}\n\
         max_in_flight = 100000\n\n\
         [cache]\nmax_bytes = {max_bytes}\npackage_lists_ttl = \"1h\"\npackage_ttl = \"1h\"\n\
         version_lists_ttl = \"1h\"\nversion_ttl = \"1h\"\nnot_found_ttl = \"1h\"\n",
        max_bytes = 16u64 << 30,
        unlimited = QUOTA_OFF,
    )
}

/// A hyper server answering every request with `status`, `headers` and `body`, built like the
/// proxy's listener (auto builder, timer, header timeout) so the difference is the proxy's work.
async fn bare_server(status: StatusCode, headers: HeaderMap, body: Bytes) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    let reply = Arc::new((headers, body));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let reply = reply.clone();
            let service = service_fn(move |_request| {
                let mut response = Response::new(Full::new(reply.1.clone()));
                *response.status_mut() = status;
                *response.headers_mut() = reply.0.clone();
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(conn);
        }
    });
    addr
}

/// nginx with `proxy_cache` in front of the simulator, in the foreground (`master_process off`, so
/// the one process serving is the child we kill), in a scratch directory removed on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Nginx {
    fn start(binary: &Path, sim: &SimHandle, org_token: &str, core: Option<usize>) -> Option<Self> {
        let dir =
            std::env::temp_dir().join(format!("packages-proxy-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("cache")).ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.display();
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        let conf = format!(
            "{user}daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:64m max_size=4g inactive=1h use_temp_path=off;\n\
               upstream sim {{ server {sim_addr}; keepalive 64; }}\n\
               server {{\n    listen {addr} backlog=1024;\n    keepalive_requests 1000000000;\n    keepalive_timeout 300s;\n\
                 location / {{\n      proxy_pass http://sim;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_set_header Authorization \"Bearer {org_token}\";\n\
                   proxy_cache bench;\n      proxy_cache_valid 200 404 1h;\n      proxy_cache_lock on;\n\
                   proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;\n    }}\n  }}\n}}\n",
            user = if root { "user root root;\n" } else { "" },
            sim_addr = sim.addr(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).ok()?;
        let mut command = match core {
            Some(core) if Path::new("/usr/bin/taskset").exists() => {
                let mut c = Command::new("/usr/bin/taskset");
                c.arg("-c").arg(core.to_string()).arg(binary);
                c
            }
            _ => Command::new(binary),
        };
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                println!(
                    "nginx: cannot start {} ({error}); skipped",
                    binary.display()
                );
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                println!("nginx: did not come up; skipped. error.log:\n{log}");
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { child, dir, addr })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === the run ===

fn main() {
    // `cargo test --all-targets` builds and runs benches without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let settings = Settings::from_env();
    let pin = |cores: &Vec<usize>| settings.pin.then(|| cores.clone());
    // Three runtimes, so the load generator never shares workers with what it measures. The
    // simulator only works during warm-up and fills, and is left unpinned.
    let sim_rt = runtime("sim", 1, None);
    let srv_rt = runtime(
        "srv",
        settings.server_cores.len(),
        pin(&settings.server_cores),
    );
    let load_rt = runtime("load", settings.load_cores.len(), pin(&settings.load_cores));
    println!(
        "hit_load: {} cores; server threads {} load threads {}; pinned: {}; {:.0} s measured after {:.0} s warm-up per point",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        settings.server_cores.len(),
        settings.load_cores.len(),
        if settings.pin {
            format!(
                "server on cores {:?}, load on {:?}",
                settings.server_cores, settings.load_cores
            )
        } else {
            "no".to_owned()
        },
        settings.secs,
        settings.warmup_secs,
    );
    match &settings.wrk {
        Some(wrk) => println!(
            "load: {} (-t1, pinned to the first load core; HIT_LOAD_WRK=0 for the in-process generator)",
            wrk.display()
        ),
        None => println!(
            "load: the in-process generator (wrk not found, or HIT_LOAD_WRK=0): check its CPU column"
        ),
    }

    let org_token = format!(
        "ghp_fake_{}",
        new_client_token().unwrap().trim_start_matches("ppx_")
    );
    let client_token = new_client_token().unwrap();
    let sim = sim_rt.block_on(async {
        Simulator::new(org_token.clone())
            .dataset(Dataset::generated("acme", 4, 100))
            .rate_limit(u64::MAX / 2)
            .run()
            .await
            .unwrap()
    });
    let config = Config::parse(&proxy_config(&sim.base_url(), &client_token)).unwrap();
    let running = srv_rt.block_on(async {
        server::start(config, OrgToken::new(&org_token).unwrap())
            .await
            .unwrap()
    });
    let proxy = Target {
        addr: running.addr,
        host: HeaderValue::try_from(running.addr.to_string()).unwrap(),
        auth: HeaderValue::try_from(format!("Bearer {client_token}")).unwrap(),
        paths: Paths::Fixed(Uri::from_static(HIT_PATH)),
    };

    // Warm the one hit path, and capture the proxy's cached answer for the bare server.
    let (status, mut headers, body) = load_rt.block_on(async {
        let _miss = fetch(&proxy, HIT_PATH).await;
        fetch(&proxy, HIT_PATH).await
    });
    let cache_status = headers.get("cache-status").cloned();
    assert_eq!(status, StatusCode::OK);
    assert!(
        cache_status
            .as_ref()
            .is_some_and(|v| v.as_bytes().starts_with(b"packages-proxy; hit")),
        "second request was not a hit: {cache_status:?}"
    );
    println!(
        "hit answer: {status}, {} headers, {} body bytes ({})",
        headers.len(),
        body.len(),
        HIT_PATH
    );
    // hyper writes these itself, for the proxy as for the bare server.
    headers.remove(header::DATE);
    headers.remove(header::CONTENT_LENGTH);
    let bare_addr = srv_rt.block_on(bare_server(status, headers, body));
    let bare = Target {
        addr: bare_addr,
        host: HeaderValue::try_from(bare_addr.to_string()).unwrap(),
        ..proxy.clone()
    };

    let nginx = match &settings.nginx {
        Some(binary) => Nginx::start(
            binary,
            &sim,
            &org_token,
            settings.pin.then(|| settings.server_cores[0]),
        ),
        None => {
            println!("nginx: not installed (or HIT_LOAD_NGINX=0); skipped");
            None
        }
    };
    let nginx_target = nginx.as_ref().map(|n| {
        let t = Target {
            addr: n.addr,
            host: HeaderValue::try_from(n.addr.to_string()).unwrap(),
            ..proxy.clone()
        };
        let (status, _, body) = load_rt.block_on(async {
            let _miss = fetch(&t, HIT_PATH).await;
            fetch(&t, HIT_PATH).await
        });
        println!(
            "nginx: {} at {}, answer {status} with {} body bytes",
            n.child.id(),
            n.addr,
            body.len()
        );
        t
    });

    println!();
    println!("== one cached answer, proxy vs bare hyper (same bytes) vs nginx proxy_cache ==");
    let mut ratios = Vec::new();
    for &conns in &settings.conns {
        sim.clear_log();
        let p = drive(&load_rt, &proxy, conns, &settings, ServerCpu::Threads);
        p.print("proxy hit", conns);
        let upstream = sim.log().len();
        let b = drive(&load_rt, &bare, conns, &settings, ServerCpu::Threads);
        b.print("bare hyper", conns);
        let n = nginx.as_ref().zip(nginx_target.as_ref()).map(|(n, t)| {
            let o = drive(
                &load_rt,
                t,
                conns,
                &settings,
                ServerCpu::Process(n.child.id()),
            );
            o.print("nginx cache", conns);
            o
        });
        if upstream > 0 {
            println!("   (!) {upstream} upstream requests during the proxy run: not all hits");
        }
        ratios.push((conns, p, b, n));
    }
    println!();
    for (conns, p, b, n) in &ratios {
        print!(
            "conns={conns:<4} proxy/bare: throughput {:.2}, server cost {:.2}x, p50 {:.2}x, p99 {:.2}x",
            p.rps() / b.rps(),
            p.server_us() / b.server_us(),
            p.p50_ms() / b.p50_ms(),
            p.p99_ms() / b.p99_ms(),
        );
        if let Some(n) = n {
            print!(
                "; proxy/nginx: throughput {:.2}, p50 {:.2}x, p99 {:.2}x",
                p.rps() / n.rps(),
                p.p50_ms() / n.p50_ms(),
                p.p99_ms() / n.p99_ms(),
            );
        }
        println!();
    }
    drop(nginx);

    println!();
    println!(
        "== hit throughput by number of cached keys (random page of pkg-1, {} connections) ==",
        settings.keys_conns
    );
    let mut by_keys = Vec::new();
    let mut filled = 0;
    for keys in [settings.keys_small, settings.keys_large] {
        // The larger set includes the smaller one: fill only what is missing.
        let secs = fill(
            &load_rt,
            &proxy,
            (filled, keys - filled),
            settings.fill_conns,
            &sim,
        );
        println!(
            "filled {} keys through the proxy in {secs:.1} s ({:.0} misses/s, {} connections); cache holds {} entries",
            keys - filled,
            f64::from(keys - filled) / secs,
            settings.fill_conns,
            metric(&running, "packages_proxy_cache_entries", ""),
        );
        println!(
            "{}; the cache's weigher counts {} MiB",
            rss(),
            metric(&running, "packages_proxy_cache_bytes", "") as u64 >> 20
        );
        filled = keys;
        sim.clear_log();
        let target = Target {
            paths: Paths::Pages(keys),
            ..proxy.clone()
        };
        let o = drive(
            &load_rt,
            &target,
            settings.keys_conns,
            &settings,
            ServerCpu::Threads,
        );
        o.print(&format!("{keys} keys"), settings.keys_conns);
        let upstream = sim.log().len();
        if upstream > 0 {
            println!("   (!) {upstream} upstream requests during the run: not all hits");
        }
        by_keys.push((keys, o));
    }
    if let [(small, s), (large, l)] = by_keys.as_slice() {
        println!(
            "{large} keys / {small} keys: throughput {:.2}, p50 {:.2}x, p99 {:.2}x",
            l.rps() / s.rps(),
            l.p50_ms() / s.p50_ms(),
            l.p99_ms() / s.p99_ms(),
        );
    }
    let requests = "packages_proxy_requests_total";
    println!(
        "cache stats: hit {} miss {} evicted {}",
        metric(&running, requests, "cache=\"hit\""),
        metric(&running, requests, "cache=\"miss\""),
        metric(&running, "packages_proxy_cache_evictions_total", ""),
    );
    // Runtimes drop here: the proxy, the bare server and the simulator stop with them.
    drop(load_rt);
    drop(srv_rt);
    drop(sim_rt);
}
