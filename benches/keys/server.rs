//! `keys_server`: the bare-hyper yardstick of `benches/keys.sh`, and the proxy's upstream there.
//!
//! Holds `--keys N` distinct answers in a `HashMap` keyed by path and query, one per page of
//! `GET /orgs/acme/packages/container/p<K>/versions?per_page=1&page=<P>` (key `i`: `K = i / 10000`,
//! `P = i % 10000 + 1`; the proxy refuses `page * per_page > 10000`). Each answer is one container
//! version (~500 bytes of JSON, distinct id, digest and tags) with its own `ETag` and `Link`, the
//! shape GitHub sends for `per_page=1`. A request costs hyper's parse and write plus one lookup in
//! a map of N entries, so a run against it charges the memory hierarchy of N keys to the bare
//! server as it does to the proxy's cache. Unknown paths answer 404.
//!
//! ```text
//! cargo build --release --example keys_server
//! target/release/examples/keys_server --addr 127.0.0.1:28180 --keys 1000000 [--threads 1]
//! ```
//! `--threads` defaults to the CPUs this process may run on (`taskset -c 1`: one worker).
// A bench tool: a bad argument should stop it loudly.
#![allow(missing_docs, clippy::unwrap_used)]

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Pages per package: the proxy allows `page * per_page <= 10000`.
const PAGES: u64 = 10_000;

/// One stored answer.
struct Answer {
    body: Bytes,
    etag: HeaderValue,
    link: HeaderValue,
}

/// The request target of key `i` (what wrk asks for, and what the proxy forwards upstream).
fn target(i: u64) -> String {
    format!(
        "/orgs/acme/packages/container/p{}/versions?per_page=1&page={}",
        i / PAGES,
        i % PAGES + 1
    )
}

/// splitmix64: distinct, repeatable pseudo-random digests and tags per key.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn answer(i: u64) -> Answer {
    let package = i / PAGES;
    let page = i % PAGES + 1;
    let id = 300_000_000 + i;
    let digest = format!(
        "{:016x}{:016x}{:016x}{:016x}",
        mix(i),
        mix(i ^ 1),
        mix(i ^ 2),
        mix(i ^ 3)
    );
    let day = 1 + i % 28;
    let body = format!(
        "[{{\"id\":{id},\"name\":\"sha256:{digest}\",\
         \"url\":\"https://api.github.com/orgs/acme/packages/container/p{package}/versions/{id}\",\
         \"package_html_url\":\"https://github.com/orgs/acme/packages/container/package/p{package}\",\
         \"created_at\":\"2026-11-{day:02}T09:14:03Z\",\"updated_at\":\"2026-11-{day:02}T09:14:03Z\",\
         \"html_url\":\"https://github.com/orgs/acme/packages/container/p{package}/{id}\",\
         \"metadata\":{{\"package_type\":\"container\",\"container\":{{\"tags\":[\"v{}.{}.{}\",\"main-{:07x}\"]}}}}}}]",
        i % 7,
        i % 31,
        i % 101,
        mix(i) >> 36,
    );
    let base = format!(
        "https://api.github.com/orgs/acme/packages/container/p{package}/versions?per_page=1"
    );
    let mut link = Vec::new();
    if page < PAGES {
        link.push(format!("<{base}&page={}>; rel=\"next\"", page + 1));
        link.push(format!("<{base}&page={PAGES}>; rel=\"last\""));
    }
    if page > 1 {
        link.push(format!("<{base}&page=1>; rel=\"first\""));
        link.push(format!("<{base}&page={}>; rel=\"prev\"", page - 1));
    }
    Answer {
        body: Bytes::from(body),
        etag: HeaderValue::try_from(format!("W/\"{:016x}{:016x}\"", mix(id), mix(!id))).unwrap(),
        link: HeaderValue::try_from(link.join(", ")).unwrap(),
    }
}

fn respond(map: &HashMap<String, Answer>, target: &str) -> Response<Full<Bytes>> {
    let Some(answer) = map.get(target) else {
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"{\"message\":\"Not Found\"}",
        )));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    let mut response = Response::new(Full::new(answer.body.clone()));
    let headers: &mut HeaderMap = response.headers_mut();
    headers.reserve(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::ETAG, answer.etag.clone());
    headers.insert(header::LINK, answer.link.clone());
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60, s-maxage=60"),
    );
    response
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:28180".parse().unwrap();
    let mut keys: u64 = 1_000;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = value.parse().unwrap(),
            "--keys" => keys = value.parse().unwrap(),
            "--threads" => threads = value.parse().unwrap(),
            other => panic!("unknown argument {other} (--addr A --keys N --threads T)"),
        }
    }
    let started = std::time::Instant::now();
    let map: HashMap<String, Answer> = (0..keys).map(|i| (target(i), answer(i))).collect();
    let bytes: usize = map.values().map(|a| a.body.len()).sum();
    let map = Arc::new(map);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.unwrap();
        eprintln!(
            "keys_server: http://{addr}, {keys} keys ({} body bytes, {:.0} per key, built in {:.1} s), {threads} worker threads",
            bytes,
            bytes as f64 / keys.max(1) as f64,
            started.elapsed().as_secs_f64(),
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let map = map.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let target = request.uri().path_and_query().map_or("", |p| p.as_str());
                    std::future::ready(Ok::<_, Infallible>(respond(&map, target)))
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
