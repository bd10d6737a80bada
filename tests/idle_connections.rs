//! Idle connections cannot lock clients out of `server.max_connections`.
//!
//! Regression guarded: twenty HTTP/2 connections that sent the preface, answered pings and never
//! opened a stream held every slot of `max_connections = 20`, and `/healthz` timed out for over
//! a minute (hyper has no idle timeout for HTTP/2). Now a connection that starts no request
//! within `header_read_timeout`, or has none in flight for `idle_timeout`, is closed (GOAWAY).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use support::{ProxyOptions, send, spawn_proxy, spawn_sim};
use tokio::{net::TcpStream, task::JoinHandle};

/// An HTTP/2 client connection (prior knowledge, h2c): hyper's driver answers pings and
/// settings; the connection task ends when the server closes it.
async fn h2(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

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
