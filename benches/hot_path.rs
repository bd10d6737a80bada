//! Micro-benches of the cache-hit path: route parsing, header validation, authentication, the
//! cache key, and one whole hit over a keep-alive loopback connection (beside a bare hyper server
//! sending the same bytes over the same kind of connection).
//!
//! `cargo bench --bench hot_path`; see `benches/README.md`.
// A bench binary: nothing here is public API, and a failed setup should stop the run loudly.
#![allow(missing_docs, clippy::unwrap_used)]

use std::{convert::Infallible, hint::black_box, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use packages_proxy::{
    auth::Clients,
    cache::{self, Generations},
    config::{self, Config},
    metrics,
    quota::TokenBucket,
    route::Route,
    secret::{OrgToken, TokenHash, new_client_token},
    server::{self, Running},
    sim::{Dataset, SimHandle, Simulator},
    upstream::Forwarded,
};
use tokio::{net::TcpStream, runtime::Runtime};

/// The shipped binary's allocator, so what is measured is what runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PATH: &str = "/orgs/acme/packages/container/pkg-0/versions";
const QUERY: &str = "per_page=30";

fn client_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/vnd.github+json"),
    );
    headers.insert(
        "x-github-api-version",
        HeaderValue::from_static("2022-11-28"),
    );
    headers.insert(header::USER_AGENT, HeaderValue::from_static("bench/1"));
    headers
}

fn pieces(c: &mut Criterion) {
    let token = new_client_token().unwrap();
    let headers = client_headers(&token);
    let route = Route::parse(&Method::GET, PATH, Some(QUERY)).unwrap();
    let forwarded = Forwarded::from_request(&headers).unwrap();
    let generations = Generations::default();

    c.bench_function("route_parse", |b| {
        b.iter(|| {
            Route::parse(
                black_box(&Method::GET),
                black_box(PATH),
                black_box(Some(QUERY)),
            )
        })
    });
    c.bench_function("forwarded_from_request", |b| {
        b.iter(|| Forwarded::from_request(black_box(&headers)))
    });
    c.bench_function("cache_key", |b| {
        b.iter(|| {
            cache::key(
                black_box(&route),
                black_box(&forwarded),
                "https://packages-proxy.internal.example",
                &generations,
            )
        })
    });
    c.bench_function("route_template", |b| {
        b.iter(|| black_box(&route).template())
    });
    for n in [2, 50] {
        // The presented token matches the last of `n` clients (every entry is compared anyway).
        let mut clients: Vec<config::Client> = (0..n - 1)
            .map(|i| config::Client {
                name: format!("team-{i}"),
                admin: false,
                quota: QUOTA,
                token_hash: Some(TokenHash::of(&new_client_token().unwrap())),
                cert_fingerprint: None,
            })
            .collect();
        clients.push(config::Client {
            name: "bench".to_owned(),
            admin: false,
            quota: QUOTA,
            token_hash: Some(TokenHash::of(&token)),
            cert_fingerprint: None,
        });
        let table = Clients::new(&clients, None, 1);
        c.bench_function(&format!("authenticate_{n}_clients"), |b| {
            b.iter(|| {
                table
                    .authenticate(black_box(headers.get("authorization")), None)
                    .unwrap()
            })
        });
    }
}

/// The simulator and the proxy on a one-worker runtime, the hit path warmed.
struct Stack {
    _rt: Runtime,
    _sim: SimHandle,
    running: Running,
    client_token: String,
}

fn stack() -> Stack {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let org_token = format!(
        "ghp_fake_{}",
        new_client_token().unwrap().trim_start_matches("ppx_")
    );
    let client_token = new_client_token().unwrap();
    let (sim, running) = rt.block_on(async {
        let sim = Simulator::new(org_token.clone())
            .dataset(Dataset::generated("acme", 2, 100))
            .run()
            .await
            .unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nbase_url = \"{}\"\n\
             allow_plain_http = true\ntoken_env = \"PACKAGES_PROXY_BENCH_UNUSED\"\n\
             owners = [\"acme\"]\n\n[[clients]]\nname = \"bench\"\ntoken_sha256 = \"{}\"\n\n\
             [quotas]\nupstream_per_minute = 4000000000\nhits_per_minute = 4000000000\n\n\
             [cache]\nversion_lists_ttl = \"1h\"\n",
            sim.base_url(),
            TokenHash::of(&client_token).to_hex()
        );
        // Quotas out of the way: the default 6,000 hits a minute would make most timed hits 429s
        // (the bucket is still taken on every hit, so its cost is in the number).
        let config = Config::parse(&text).unwrap();
        let running = server::start(config, OrgToken::new(&org_token).unwrap())
            .await
            .unwrap();
        (sim, running)
    });
    Stack {
        _rt: rt,
        _sim: sim,
        running,
        client_token,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(
    sender: &mut Sender,
    uri: &Uri,
    host: &HeaderValue,
    auth: &HeaderValue,
) -> (StatusCode, HeaderMap, Bytes) {
    sender.ready().await.unwrap();
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri.clone();
    request.headers_mut().insert(header::HOST, host.clone());
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, auth.clone());
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// A hyper server sending `headers` and `body` for every request, on `rt`.
fn bare(rt: &Runtime, status: StatusCode, headers: HeaderMap, body: Bytes) -> SocketAddr {
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new((headers, body));
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let reply = reply.clone();
                let service = service_fn(move |_request| {
                    let mut response = Response::new(Full::new(reply.1.clone()));
                    *response.status_mut() = status;
                    *response.headers_mut() = reply.0.clone();
                    std::future::ready(Ok::<_, Infallible>(response))
                });
                tokio::spawn(
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned(),
                );
            }
        });
        addr
    })
}

fn loopback_hit(c: &mut Criterion) {
    let stack = stack();
    let addr = stack.running.addr;
    let uri = Uri::try_from(format!("{PATH}?{QUERY}")).unwrap();
    let host = HeaderValue::try_from(addr.to_string()).unwrap();
    let auth = HeaderValue::try_from(format!("Bearer {}", stack.client_token)).unwrap();
    // The client side: a current-thread runtime on the bench thread, one keep-alive connection.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut sender, (status, mut headers, body)) = client_rt.block_on(async {
        let mut sender = connect(addr).await;
        let _miss = get(&mut sender, &uri, &host, &auth).await;
        let hit = get(&mut sender, &uri, &host, &auth).await;
        (sender, hit)
    });
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .get("cache-status")
            .is_some_and(|v| v.as_bytes().starts_with(b"packages-proxy; hit"))
    );
    headers.remove(header::DATE);
    headers.remove(header::CONTENT_LENGTH);
    let bare_addr = bare(&stack._rt, status, headers, body);
    let bare_host = HeaderValue::try_from(bare_addr.to_string()).unwrap();
    let mut bare_sender = client_rt.block_on(connect(bare_addr));

    let mut group = c.benchmark_group("loopback_one_connection");
    group.bench_function("proxy_hit", |b| {
        b.iter_custom(|iters| {
            client_rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(get(&mut sender, &uri, &host, &auth).await);
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("bare_hyper_same_bytes", |b| {
        b.iter_custom(|iters| {
            client_rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(get(&mut bare_sender, &uri, &bare_host, &auth).await);
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// What a hit adds since quotas and metrics: one `TokenBucket::take` (a std `Mutex`) and one
/// `metrics::request` (label `String`s, a registry lookup per metric, a histogram sample). Next to
/// them, two cheaper ways to record the same request, as evidence for a fix (benches/README.md).
fn bookkeeping(c: &mut Criterion) {
    let bucket = TokenBucket::per_minute(u32::MAX);
    c.bench_function("token_bucket_take", |b| {
        b.iter(|| black_box(&bucket).take(tokio::time::Instant::now()))
    });
    // Two threads taking from one bucket: what one client's hits cost on a 2-worker server.
    c.bench_function("token_bucket_take_2_threads", |b| {
        b.iter_custom(|iters| {
            let bucket = &bucket;
            std::thread::scope(|scope| {
                let other = scope.spawn(move || {
                    for _ in 0..iters {
                        bucket.take(tokio::time::Instant::now()).unwrap();
                    }
                });
                let start = Instant::now();
                for _ in 0..iters {
                    bucket.take(tokio::time::Instant::now()).unwrap();
                }
                let elapsed = start.elapsed();
                other.join().unwrap();
                elapsed
            })
        })
    });

    // The proxy's recorder, as `server::start` installs it. Its histograms keep every sample
    // until a scrape (or `run_upkeep`) drains them: drained after each batch, outside the time,
    // except in `metrics_request_with_drain`.
    let handle = metrics::handle();
    let route = Route::parse(&Method::GET, PATH, Some(QUERY)).unwrap();
    // What the proxy passes as the route label for this request.
    assert_eq!(route.template(), STATIC_TEMPLATE);
    let template = STATIC_TEMPLATE;
    let client: Arc<str> = Arc::from("team-a");
    let elapsed = std::time::Duration::from_micros(180);
    let mut group = c.benchmark_group("metrics");
    let mut timed = |name: &str, drain_in_time: bool, f: &mut dyn FnMut()| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    f();
                }
                if drain_in_time {
                    handle.run_upkeep();
                    return start.elapsed();
                }
                let elapsed = start.elapsed();
                handle.run_upkeep();
                elapsed
            })
        });
    };
    timed("request", false, &mut || {
        metrics::request(black_box(template), 200, "hit", black_box(&client), elapsed)
    });
    timed("request_with_drain", true, &mut || {
        metrics::request(black_box(template), 200, "hit", black_box(&client), elapsed)
    });
    // Same metrics and labels, no allocation: `&'static str` template and class, the client's
    // `Arc<str>` shared. Still one registry lookup (hash of name + labels) per metric.
    timed("request_static_labels", false, &mut || {
        let client = black_box(&client).clone();
        ::metrics::counter!(
            metrics::REQUESTS,
            "route" => STATIC_TEMPLATE,
            "status_class" => metrics::status_class(200),
            "cache" => "hit",
            "client" => client,
        )
        .increment(1);
        ::metrics::histogram!(metrics::REQUEST_DURATION, "route" => STATIC_TEMPLATE)
            .record(elapsed.as_secs_f64());
    });
    // Handles registered once and kept (e.g. per client and route in the identity, or in a
    // small map): an atomic add and a histogram push per request.
    let counter = ::metrics::counter!(
        metrics::REQUESTS,
        "route" => STATIC_TEMPLATE,
        "status_class" => "2xx",
        "cache" => "hit",
        "client" => client.clone(),
    );
    let histogram = ::metrics::histogram!(metrics::REQUEST_DURATION, "route" => STATIC_TEMPLATE);
    timed("request_cached_handles", false, &mut || {
        black_box(&counter).increment(1);
        black_box(&histogram).record(elapsed.as_secs_f64());
    });
    group.finish();
}

/// The template `metrics::request` gets for the benched route, as a `&'static str` could be.
const STATIC_TEMPLATE: &str = "/orgs/{org}/packages/{package_type}/{package_name}/versions";

criterion_group!(benches, pieces, bookkeeping, loopback_hit);
criterion_main!(benches);

/// Any quota: authentication does not look at it.
const QUOTA: config::Quota = config::Quota {
    upstream_per_minute: 300,
    hits_per_minute: 6000,
    max_in_flight: 256,
};
