//! One accepted connection's life: served by hyper (HTTP/1 or HTTP/2), closed gracefully when
//! it sits idle or when the server drains.
//!
//! Hyper times out an HTTP/1 request head, but an HTTP/2 connection that sends the preface,
//! answers pings and never opens a stream is kept forever, and holds one of
//! `server.max_connections` slots: twenty of them locked every client out. So every connection
//! here is watched: one that starts no request within `server.header_read_timeout`, or has no
//! request in flight for `server.idle_timeout`, gets a graceful shutdown (GOAWAY for HTTP/2;
//! HTTP/1 closes), and its slot frees.

use std::{
    convert::Infallible,
    future::Future,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{body::Body, service::ProxyService, tls::PeerCert};
use futures_util::FutureExt as _;
use http::{Request, Response};
use hyper::{
    body::Incoming,
    rt::{Read, Write},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

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

/// Requests in flight on one connection, whether one was ever started, and when the last one
/// ended. Atomics, not a channel: a hit must not wake the connection's idle watch or churn a
/// timer; the watch wakes only at its own deadlines and reads these.
#[derive(Debug, Default)]
struct Activity {
    active: AtomicUsize,
    served: AtomicBool,
    /// Milliseconds from the connection's start to the end of its last request.
    last_ms: AtomicU64,
}

/// One request in flight; its end is recorded when dropped (answered or cancelled).
struct InFlight {
    activity: Arc<Activity>,
    start: Instant,
}

/// The proxy as one connection serves it: each request carries the connection's client
/// certificate (TLS) and is counted in its [`Activity`].
struct Watched {
    svc: ProxyService,
    peer: Option<PeerCert>,
    activity: Arc<Activity>,
    start: Instant,
}

impl hyper::service::Service<Request<Incoming>> for Watched {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        self.activity.active.fetch_add(1, Ordering::Acquire);
        self.activity.served.store(true, Ordering::Relaxed);
        let in_flight = InFlight {
            activity: self.activity.clone(),
            start: self.start,
        };
        // `map`, not an `async` block awaiting the call: that would hold the walk twice.
        Box::pin(self.svc.call(request, in_flight).map(Ok))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.last_ms.store(ms, Ordering::Relaxed);
        self.activity.active.fetch_sub(1, Ordering::Release);
    }
}

/// Serves `io` with `svc` until the peer leaves, the connection sits idle past `limits`, or the
/// server drains (then in-flight requests finish first).
pub(super) async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: TokioIo<I>,
    svc: ProxyService,
    peer: Option<PeerCert>,
    limits: IdleLimits,
    mut drain: Drain,
) where
    TokioIo<I>: Read + Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let start = Instant::now();
    let seen = activity.clone();
    let svc = Watched {
        svc,
        peer,
        activity,
        start,
    };
    let conn = builder.serve_connection(io, svc);
    let mut conn = pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            // In order, the connection first: it is what wakes this task on every request, and
            // the two watches only matter at their own deadlines (no random start per wake).
            biased;
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = idle(&seen, start, limits), if !closing => {
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
async fn idle(activity: &Activity, start: Instant, limits: IdleLimits) {
    loop {
        let limit = if activity.served.load(Ordering::Relaxed) {
            limits.between
        } else {
            limits.first
        };
        let next = if activity.active.load(Ordering::Acquire) > 0 {
            Instant::now() + limit
        } else {
            let last = start + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            deadline
        };
        tokio::time::sleep_until(next).await;
    }
}
