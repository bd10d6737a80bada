//! Idle connections cannot lock clients out of `server.max_connections`.
//!
//! Regression guarded: twenty HTTP/2 connections that sent the preface, answered pings and never
//! opened a stream held every slot of `max_connections = 20`, and `/healthz` timed out for over
//! a minute (hyper has no idle timeout for HTTP/2). Now a connection that starts no request
//! within `header_read_timeout`, or has none in flight for `idle_timeout`, is closed (GOAWAY).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::{ProxyOptions, h2, send, spawn_proxy, spawn_proxy_to, spawn_sim};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Waits (polling, with a deadline) until every task has ended.
async fn all_end(tasks: &[JoinHandle<()>], limit: Duration) -> Duration {
    let start = Instant::now();
    while !tasks.iter().all(JoinHandle::is_finished) {
        assert!(
            start.elapsed() < limit,
            "{} of {} connections still open after {limit:?}",
            tasks.iter().filter(|t| !t.is_finished()).count(),
            tasks.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn twenty_idle_h2_connections_do_not_block_a_new_client() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra_server: "max_connections = 20\nheader_read_timeout = \"1s\"",
            ..ProxyOptions::default()
        },
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(h2(proxy.addr()).await);
    }
    // Every slot is taken: the new client waits in the backlog until idle ones are closed.
    let start = Instant::now();
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        send(Method::GET, &proxy.url("/healthz"), None, &[]),
    )
    .await
    .expect("a new client was locked out by idle HTTP/2 connections");
    assert_eq!(health.status, StatusCode::OK);
    let waited = start.elapsed();
    // header_read_timeout (1 s) plus scheduling slack on a busy machine.
    assert!(waited < Duration::from_secs(4), "served after {waited:?}");
    let tasks: Vec<_> = idle.into_iter().map(|(_, task)| task).collect();
    all_end(&tasks, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_h2_connection_idle_after_a_request_is_closed_after_idle_timeout() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra_server: "header_read_timeout = \"1s\"\nidle_timeout = \"4s\"",
            ..ProxyOptions::default()
        },
    )
    .await;
    let (mut sender, task) = h2(proxy.addr()).await;
    let request = Request::get(proxy.url("/healthz"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let started = Instant::now();
    // Past header_read_timeout (1 s), well inside idle_timeout (4 s): the first-request limit
    // no longer applies once a request was served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "closed before idle_timeout");
    let request = Request::get(proxy.url("/healthz"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    all_end(&[task], Duration::from_secs(10)).await;
    let open = started.elapsed();
    assert!(open >= Duration::from_millis(5500), "closed after {open:?}");
}

const PATH: &str = "/orgs/acme/packages/container/web/versions";
const HALF: usize = 1000;

/// An upstream whose answer to every request is 200 with a non-JSON body of 2 * HALF bytes, the
/// second half sent `pause` after the first (a slow GitHub, or a large answer on a slow link).
async fn slow_upstream(pause: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| async move {
                        let stream = futures_util::stream::unfold(0u8, move |step| async move {
                            match step {
                                0 => Some((
                                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'a'; HALF]))),
                                    1,
                                )),
                                1 => {
                                    tokio::time::sleep(pause).await;
                                    Some((Ok(Frame::data(Bytes::from(vec![b'b'; HALF]))), 2))
                                }
                                _ => None,
                            }
                        });
                        let response = Response::builder()
                            .status(200)
                            .header("content-type", "application/octet-stream")
                            .body(StreamBody::new(stream))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn uncached(extra_server: &'static str) -> ProxyOptions {
    ProxyOptions {
        extra_server,
        upstream_timeout: "20s",
        ..ProxyOptions::uncached()
    }
}

/// A proxy (cache off) in front of [`slow_upstream`] with `server` limits, and a raw HTTP/1
/// connection to it that asked for `PATH` and read up to its answer's head (the body is on its
/// way): returns the connection and the bytes read so far.
async fn mid_slow_body(
    pause: Duration,
    server: &'static str,
) -> (support::TestProxy, TcpStream, Vec<u8>) {
    let upstream = slow_upstream(pause).await;
    let proxy = spawn_proxy_to(
        &format!("http://{upstream}"),
        "ghp_fake_unused",
        uncached(server),
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let token = proxy.token();
    let first = format!("GET {PATH} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(first.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    (proxy, stream, got)
}

/// Reads `stream` into `got` until the server closes it; false if it is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, got: &mut Vec<u8>, limit: Duration) -> bool {
    let mut buf = vec![0u8; 8192];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok()
}

// A stream still sending its body past idle_timeout is finished: the connection is not idle
// while an answer is being sent (the request counts until its body's last byte).
#[tokio::test]
async fn h2_body_longer_than_idle_timeout_is_delivered_whole() {
    let upstream = slow_upstream(Duration::from_secs(3)).await;
    let proxy = spawn_proxy_to(
        &format!("http://{upstream}"),
        "ghp_fake_unused",
        uncached("header_read_timeout = \"1s\"\nidle_timeout = \"1s\""),
    )
    .await;
    let (mut sender, _conn) = h2(proxy.addr()).await;
    let request = Request::get(proxy.url(PATH))
        .header("authorization", format!("Bearer {}", proxy.token()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("body timed out");
    let body = body.expect("HTTP/2 body cut off mid-answer").to_bytes();
    assert_eq!(body.len(), 2 * HALF);
}

// A client that sends its next request once it has the previous answer's head (hyper reads it
// ahead while the body is still being sent) gets the whole body and then its second answer: those
// bytes are not a slow head, however long the body takes.
#[tokio::test]
async fn next_request_sent_during_a_slow_body_does_not_cut_the_body() {
    let (proxy, mut stream, mut got) = mid_slow_body(
        Duration::from_secs(3),
        "header_read_timeout = \"1s\"\nidle_timeout = \"60s\"",
    )
    .await;
    let token = proxy.token();
    let second = format!(
        "GET /healthz HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(second.as_bytes()).await.unwrap();
    read_until_closed(&mut stream, &mut got, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    let bs = text.matches('b').count();
    assert!(
        bs >= HALF && text.matches("HTTP/1.1 200").count() == 2,
        "first body's second half or second answer missing: {} bytes read, {} of {HALF} 'b', {} status lines",
        got.len(),
        bs,
        text.matches("HTTP/1.1 ").count()
    );
}

// A connection whose first head never completes does not hold a drain to its deadline: hyper
// ignores a graceful shutdown there, so the connection is dropped (it has no answer to lose).
#[tokio::test]
async fn a_partial_first_head_does_not_hold_a_drain_to_its_deadline() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra_server: "header_read_timeout = \"500ms\"\nshutdown_delay = \"0s\"",
            drain_timeout: "6s",
            ..ProxyOptions::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: p\r\n")
        .await
        .unwrap();
    // The accept loop takes connections in order: once one opened after ours is answered, ours
    // was accepted (no fixed sleep that a busy machine could lose).
    let health = send(Method::GET, &proxy.url("/healthz"), None, &[]).await;
    assert_eq!(health.status, StatusCode::OK);
    let started = std::time::Instant::now();
    proxy.running.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?}: a slow-loris head held the drain (header_read_timeout 500ms)"
    );
}

// A partial head sent while an answer's body is still being sent, then left to stall, is cut off
// at header_read_timeout from the end of that body, not kept to idle_timeout.
#[tokio::test]
async fn a_partial_head_sent_during_a_body_is_timed_from_the_body_s_end() {
    let (_proxy, mut stream, mut got) = mid_slow_body(
        Duration::from_secs(2),
        "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"",
    )
    .await;
    // Part of the next head, then nothing.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: p\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let closed = read_until_closed(&mut stream, &mut got, Duration::from_secs(12)).await;
    let took = started.elapsed();
    assert!(
        closed,
        "a stalled partial head was kept for idle_timeout (30 s), not header_read_timeout (1 s)"
    );
    // The body (its second half ~2 s after the head) arrives whole before the close.
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.matches('b').count() >= HALF,
        "the body was cut: {} bytes",
        got.len()
    );
    assert!(
        took >= Duration::from_millis(2500),
        "closed after {took:?}, before the body ended + 1 s"
    );
}

// Guards in-flight slots against clients that give up: a client that closes its connection
// while its request waits for a slow GitHub is noticed, and its request stops holding the
// server's slots (hyper's `half_close`, once switched on, stopped reading mid-request, and such
// requests ran on until GitHub answered).
#[tokio::test]
async fn a_client_that_hangs_up_mid_request_frees_its_in_flight_slot() {
    let sim = spawn_sim().await;
    sim.handle.inject(packages_proxy::sim::Fault::new(
        packages_proxy::sim::FaultKind::Latency(Duration::from_secs(15)),
        1,
    ));
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            max_in_flight: 1,
            upstream_timeout: "30s",
            ..ProxyOptions::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let head = format!(
        "GET /orgs/acme/packages/container/web HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {}\r\n\r\n",
        proxy.token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    while sim.handle.log().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the request never reached GitHub"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stream); // the client gives up
    let start = Instant::now();
    loop {
        let reply = send(Method::GET, &proxy.url("/healthz"), None, &[]).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the abandoned request still holds the only in-flight slot ({})",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream answering every request with `len` bytes of JSON (48 MiB: far more than
/// loopback's socket buffers, and any flow-control window, hold).
async fn unread_upstream(len: usize) -> String {
    let json = vec![("content-type", "application/json".to_owned())];
    support::answering_upstream(StatusCode::OK, json, Bytes::from(vec![b' '; len])).await
}

/// The package list, asked on `sender`'s HTTP/2 connection: its answer's head (status 200).
async fn h2_list(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    proxy: &support::TestProxy,
) -> Response<hyper::body::Incoming> {
    let request = Request::get(proxy.url("/orgs/acme/packages?package_type=container"))
        .header("authorization", format!("Bearer {}", proxy.token()))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// An HTTP/2 connection to `addr` with 64 KiB windows that never grow by themselves.
async fn h2_small_window(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .adaptive_window(false)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Waits (15 s at most, else fails with `what`) until `/healthz` answers on a new connection.
async fn healthz_within(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    while !healthz_answers(addr).await {
        assert!(start.elapsed() < Duration::from_secs(15), "{what}");
    }
}

/// Whether `/healthz` answers 200 on a new connection within a second.
async fn healthz_answers(addr: SocketAddr) -> bool {
    let reply = tokio::time::timeout(Duration::from_secs(1), async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.ok()?;
        Some(got)
    })
    .await;
    matches!(reply, Ok(Some(got)) if got.starts_with(b"HTTP/1.1 200"))
}

// Guards connection slots against peers that read nothing: two clients that ask for a large
// answer and never read it held both of `max_connections = 2` for ever (their answers stayed "in
// flight"), and `/healthz` timed out. Once every write has found their sockets full for
// `idle_timeout`, they are dropped.
#[tokio::test]
async fn clients_that_never_read_their_answers_do_not_hold_their_slots() {
    let upstream = unread_upstream(48 << 20).await;
    let limits = "max_connections = 2\nidle_timeout = \"1s\"\nheader_read_timeout = \"1s\"";
    // Streamed through (cache off), and from the cache: hyper then holds the whole answer once
    // the body has ended, so the request no longer counts as in flight.
    let cached = ProxyOptions {
        extra_server: limits,
        upstream_timeout: "20s",
        extra: "[cache]\nmax_entry_bytes = 67108864\nmax_bytes = 268435456\n".to_owned(),
        ..ProxyOptions::default()
    };
    for options in [uncached(limits), cached] {
        let proxy = spawn_proxy_to(&upstream, "ghp_fake_unread", options).await;
        let mut unread = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
            let head = format!(
                "GET /orgs/acme/packages?package_type=container HTTP/1.1\r\nHost: proxy\r\n\
             Authorization: Bearer {}\r\n\r\n",
                proxy.token()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            unread.push(stream); // never read
        }
        healthz_within(
            proxy.addr(),
            "clients that read nothing still hold every slot",
        )
        .await;
        drop(unread);
    }
}

// The same for HTTP/2, where a peer can read the socket (pings, frames) and never grant its
// streams flow-control window: hyper holds the answer's data without coming back for more.
#[tokio::test]
async fn h2_clients_that_grant_no_window_do_not_hold_their_slots() {
    // 48 MiB is streamed through; 1 MiB (under `max_entry_bytes`) is one frame, which hyper
    // hands to h2 with its end of stream: then the body is gone and only h2's queue is left.
    for len in [48 << 20, 1 << 20] {
        let upstream = unread_upstream(len).await;
        let proxy = spawn_proxy_to(
            &upstream,
            "ghp_fake_unread",
            uncached("max_connections = 2\nidle_timeout = \"1s\"\nheader_read_timeout = \"1s\""),
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut sender = h2_small_window(proxy.addr()).await;
            let response = h2_list(&mut sender, &proxy).await;
            held.push((sender, response)); // its body is never read
        }
        healthz_within(
            proxy.addr(),
            "HTTP/2 clients that grant no window still hold every slot",
        )
        .await;
        drop(held);
    }
}

// A slow but steady HTTP/2 reader (64 KiB window, ~320 KB/s) is never taken for one that grants
// no window: hyper gets an answer a slice at a time, so what is timed is how long one slice
// waits for the peer, not how long the whole answer takes to drain.
#[tokio::test]
async fn a_slow_steady_h2_reader_gets_its_whole_answer() {
    let len = 3 << 19; // 1.5 MiB, over the 1 MiB `max_entry_bytes` below: one 1 MiB frame, then streamed
    let upstream = unread_upstream(len).await;
    let mut options = uncached("idle_timeout = \"1s\"\nheader_read_timeout = \"1s\"");
    options.extra.push_str("max_entry_bytes = 1048576\n");
    let proxy = spawn_proxy_to(&upstream, "ghp_fake_unread", options).await;
    let mut sender = h2_small_window(proxy.addr()).await;
    let response = h2_list(&mut sender, &proxy).await;
    let mut body = response.into_body();
    let (mut got, mut tick) = (0, 0);
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|error| panic!("cut after {got} bytes: {error}"));
        if let Ok(data) = frame.into_data() {
            got += data.len();
            tick += data.len();
            if tick >= 32 * 1024 {
                tick = 0;
                tokio::time::sleep(Duration::from_millis(100)).await; // the reader's pace
            }
        }
    }
    assert_eq!(got, len);
}

// Found by a hostile review: the admin listener had hyper's head timer only, so clients that
// pipelined scrapes and read nothing held its `max_connections` slots for ever, and probes and
// Prometheus timed out there. Its connections are watched for unread answers like the main ones.
#[tokio::test]
async fn admin_clients_that_never_read_their_answers_do_not_hold_its_slots() {
    let sim = spawn_sim().await;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = format!(
        "admin_listen = \"{admin}\"\nmax_connections = 2\nidle_timeout = \"1s\"\nheader_read_timeout = \"1s\""
    );
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra_server: Box::leak(server.into_boxed_str()),
            ..ProxyOptions::default()
        },
    )
    .await;
    // Series to make each scrape a few kilobytes.
    for i in 0..20 {
        let _ = send(
            Method::GET,
            &proxy.url(&format!(
                "/orgs/acme/packages/container/web/versions?per_page={}",
                1 + i
            )),
            Some(proxy.token()),
            &[],
        )
        .await;
    }
    let mut unread = Vec::new();
    for _ in 0..2 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(admin).await.unwrap();
        let scrapes = "GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n".repeat(500);
        stream.write_all(scrapes.as_bytes()).await.unwrap();
        unread.push(stream); // never read
    }
    healthz_within(admin, "clients that read nothing hold every admin slot").await;
    drop(unread);
    let _ = &proxy;
}
