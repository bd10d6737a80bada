//! One accepted connection's life: served by hyper (HTTP/1 or HTTP/2), closed gracefully when
//! it sits idle or when the server drains.
//!
//! Hyper times out an HTTP/1 request head, but an HTTP/2 connection that sends the preface,
//! answers pings and never opens a stream is kept forever, and holds one of
//! `server.max_connections` slots: twenty of them locked every client out. So every connection
//! here is watched: one that starts no request within `server.header_read_timeout`, or has no
//! request in flight for `server.idle_timeout`, gets a graceful shutdown (GOAWAY for HTTP/2;
//! HTTP/1 closes), and its slot frees.

use std::{pin::pin, time::Duration};

use hyper::rt::{Read, Write};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt as _;

use crate::service::ProxyService;

/// How long a connection may sit without a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleLimits {
    /// Until the first request starts (`server.header_read_timeout`).
    pub(super) first: Duration,
    /// Between requests, once one was served (`server.idle_timeout`).
    pub(super) between: Duration,
}

/// What every connection task holds to take part in a drain.
#[derive(Debug, Clone)]
pub(super) struct Drain {
    /// Turns `true` when the server drains: each connection then shuts down gracefully.
    pub(super) draining: watch::Receiver<bool>,
    /// Never sent on: the drain waits until every clone is dropped (every connection ended).
    pub(super) _alive: mpsc::Sender<()>,
}

/// Requests in flight on one connection, and whether one was ever started. A `watch`: the
/// connection task waits for changes; requests only bump the count.
#[derive(Debug, Clone, Copy, Default)]
struct Activity {
    active: usize,
    served: bool,
}

/// Ends a request's share of the activity however its future ends (done, failed or dropped).
struct InFlight(watch::Sender<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.active -= 1);
    }
}

/// Serves `io` with `svc` until the peer leaves, the connection sits idle past `limits`, or the
/// server drains (then in-flight requests finish first).
pub(super) async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    svc: ProxyService,
    limits: IdleLimits,
    mut drain: Drain,
) where
    TokioIo<I>: Read + Write + Unpin + Send + 'static,
{
    let (activity, mut seen) = watch::channel(Activity::default());
    let svc = svc.map_future(move |future| {
        activity.send_modify(|a| {
            a.active += 1;
            a.served = true;
        });
        let in_flight = InFlight(activity.clone());
        async move {
            let response = future.await;
            drop(in_flight);
            response
        }
    });
    let svc = tower::util::BoxCloneService::new(svc);
    let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
    let mut conn = pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = idle(&mut seen, limits), if !closing => {
                tracing::debug!("closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = drain.draining.wait_for(|d| *d), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Resolves once the connection has had no request in flight for its limit.
async fn idle(seen: &mut watch::Receiver<Activity>, limits: IdleLimits) {
    loop {
        let now = *seen.borrow_and_update();
        if now.active > 0 {
            if seen.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        let limit = if now.served {
            limits.between
        } else {
            limits.first
        };
        match tokio::time::timeout(limit, seen.changed()).await {
            Err(_) => return,
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return std::future::pending().await,
        }
    }
}
