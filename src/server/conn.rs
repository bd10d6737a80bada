//! One accepted connection's life: served by hyper (HTTP/1 or HTTP/2), closed gracefully when
//! it sits idle, sends a request head too slowly, or when the server drains.
//!
//! The connection is watched here rather than by hyper's HTTP/1 header timer, for two reasons:
//!
//! - Hyper starts that timer as soon as it waits for the next head, so it also closed idle
//!   keep-alive connections after `server.header_read_timeout` (10 s), never honouring
//!   `server.idle_timeout` (60 s) for HTTP/1. A load balancer that keeps backend connections
//!   open longer than 10 s then races the close with its next request.
//! - It cost every request a boxed timer registered with and removed from tokio's wheel.
//!
//! An HTTP/2 connection that sends the preface, answers pings and never opens a stream would
//! otherwise be kept forever, and hold one of `server.max_connections` slots: twenty of them
//! locked every client out. So every connection is watched:
//!
//! - until its first request starts, it has `server.header_read_timeout` (from its first byte);
//! - once idle, it has `server.idle_timeout` with no request in flight (a request is in flight
//!   until its answer's last byte is sent, not just its head);
//! - on HTTP/1, a request head whose first bytes arrived must be complete within
//!   `server.header_read_timeout` (slow-client guard), however long the connection sat idle.
//!
//! Past a limit it gets a graceful shutdown (GOAWAY for HTTP/2; HTTP/1 closes once any answer
//! in progress is written), and its slot frees.
//!
//! - A peer that reads nothing would keep its answer "in flight" for ever: once no byte of its
//!   answer could be written for `server.idle_timeout` (the socket stayed full), the connection
//!   is dropped (nothing graceful can reach it). Waiting for GitHub writes nothing, so it never
//!   counts. An HTTP/2 peer may read the socket and grant no flow-control window instead: then
//!   hyper holds a stream's data without coming back for more, and once some stream's data has
//!   waited so for `server.idle_timeout`, the connection is dropped the same way.

use std::{
    convert::Infallible,
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use super::own_errors;
use crate::{
    body::{Body, BoxError},
    proxy::{Answer, ConnMemo},
    service::ProxyService,
    tls::PeerCert,
};
use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, Version, header};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{mpsc, watch},
    time::Instant,
};

/// How long a connection may take to send a request head, and sit without a request.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleLimits {
    /// `server.header_read_timeout`: until the first request starts, and for each later HTTP/1
    /// request head from its first byte.
    pub(super) head: Duration,
    /// `server.idle_timeout`: with no request in flight, once one was served.
    pub(super) idle: Duration,
}

/// What every connection task holds to take part in a drain.
#[derive(Debug, Clone)]
pub(super) struct Drain {
    /// Turns `true` when the server drains: each connection then shuts down gracefully.
    pub(super) draining: watch::Receiver<bool>,
    /// Never sent on: the drain waits until every clone is dropped (every connection ended).
    pub(super) _alive: mpsc::Sender<()>,
}

/// Why [`idle`] gave up on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quiet {
    /// Past a head or idle timeout: closed gracefully.
    Idle,
    /// An answer unread for the idle timeout (every write found the socket full): dropped.
    Unread,
}

/// How long a connection that never started a request may stay open after its shutdown.
const FORCE_CLOSE_AFTER: Duration = Duration::from_millis(500);

/// `Activity::head_ns` when no request head is arriving.
const NO_HEAD: u64 = u64::MAX;

/// Requests in flight on one connection, whether one was ever started, when the last one
/// ended, and when the next HTTP/1 head began to arrive. Atomics, not a channel: a hit must not
/// wake the connection's watch or churn a timer; the watch wakes only at its own deadlines and
/// reads these.
#[derive(Debug)]
struct Activity {
    active: AtomicUsize,
    served: AtomicBool,
    /// HTTP/2: requests come as frames on streams, there is no head to time.
    multiplexed: AtomicBool,
    /// Milliseconds from the connection's start to the end of its last request.
    last_ms: AtomicU64,
    /// Nanoseconds from the connection's start to the first byte read for the next request
    /// head while none was in flight, or [`NO_HEAD`]. The request's log duration counts from
    /// there.
    head_ns: AtomicU64,
    /// HTTP/1: the request in flight has its answer's head; bytes read now are the next head
    /// (or an unread request body), not part of this request's head.
    answered: AtomicBool,
    /// Milliseconds from the connection's start to when a write found the socket full and none
    /// has gone through since (the peer reads nothing), or [`NOT_STALLED`].
    stalled_ms: AtomicU64,
    /// HTTP/2: the streams whose answer hyper holds data of that it has not sent on (it comes
    /// back for more only once the peer's flow-control window lets it), by stream, with the
    /// milliseconds from the connection's start to when it took that data. A peer that reads
    /// the socket but grants no window never fills it, so [`Activity::stalled_ms`] cannot see it.
    unsent: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    /// Numbers the entries of [`Activity::unsent`].
    next_stream: AtomicU64,
}

/// `Activity::stalled_ms` while writes go through.
const NOT_STALLED: u64 = u64::MAX;

/// One request in flight; its end is recorded when dropped: once its answer's body is sent, or
/// when it is cancelled.
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
    /// What this connection remembers from its last request (HTTP/1: its walk runs here).
    memo: ConnMemo,
}

/// The connection's stream, noting in its [`Activity`] when bytes arrive with no request in
/// flight: the start of the next HTTP/1 request head. One clock read per request; none for
/// bodies, HTTP/2 frames, or writes.
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
    start: Instant,
    /// What is left to write of hyper's own refusal, rewritten in GitHub's shape
    /// ([`own_errors`]); empty otherwise. Written out before anything else, flush or shutdown.
    rewritten: Bytes,
}

impl hyper::service::Service<Request<Incoming>> for Watched {
    type Response = Response<Sent>;
    type Error = Infallible;
    type Future = Answered;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(peer);
        }
        let activity = &self.activity;
        activity.active.fetch_add(1, Ordering::Acquire);
        activity.served.store(true, Ordering::Relaxed);
        // An HTTP/1 request's log duration counts from its head's first byte (the clock was
        // read then). Not on HTTP/2: the bytes seen there were frames (the preface first).
        let head = activity.head_ns.swap(NO_HEAD, Ordering::Relaxed);
        let started = (head != NO_HEAD && request.version() != Version::HTTP_2)
            .then(|| self.start.into_std() + Duration::from_nanos(head));
        activity.answered.store(false, Ordering::Relaxed);
        let in_flight = InFlight {
            activity: activity.clone(),
            start: self.start,
        };
        let answer = if request.version() == Version::HTTP_2 {
            activity.multiplexed.store(true, Ordering::Relaxed);
            // Hyper calls an HTTP/2 connection's service in the connection's task and spawns
            // the future it returns: the walk runs in that future, so one connection's streams
            // (a load balancer's, say) are served on every worker, not one after another.
            let svc = self.svc.clone();
            let head = request.method() == Method::HEAD;
            Either::Right(Box::pin(async move {
                let response = svc.call(request, (), None, started).await;
                if head { bodiless(response) } else { response }
            }) as _)
        } else {
            // HTTP/1 serves one request at a time anyway: no box of our own, a hit's answer is
            // ready, and the rest is boxed once inside.
            self.svc.call(request, (), Some(&self.memo), started)
        };
        Answered {
            answer,
            in_flight: Some(in_flight),
        }
    }
}

/// A request's answer on its way: [`Watched`]'s future. The answer's body carries the
/// request's [`InFlight`], so the connection counts the request until its last byte is sent.
pub(super) struct Answered {
    answer: Answer,
    in_flight: Option<InFlight>,
}

/// An answer's body, holding its request's [`InFlight`] until it ends or is dropped: a body can
/// take much longer to send than its head (a slow GitHub, a slow reader), and the connection is
/// not idle meanwhile, nor are the bytes of the next request that hyper reads ahead a slow head.
pub(super) struct Sent {
    body: Body,
    in_flight: Option<InFlight>,
    /// HTTP/2: this stream's entry in [`Activity::unsent`] while hyper holds data it took from
    /// it and has not come back for more.
    holding: Option<u64>,
    /// HTTP/2: what is left of a data frame larger than [`SLICE`], handed to hyper a slice at a
    /// time, so that an [`Activity::unsent`] entry's age is the time one slice waits for the
    /// peer's window, not the time a whole cached answer takes to drain.
    rest: Bytes,
}

/// HTTP/2: the most of an answer hyper gets at a time (h2's default frame size; hyper cuts
/// DATA frames this size anyway).
const SLICE: usize = 16 * 1024;

/// A HEAD answer for HTTP/2. Hyper leaves out a HEAD answer's body on HTTP/1 only: on HTTP/2 it
/// sends it as DATA, and a client resets such a stream (`PROTOCOL_ERROR`). The length stays what
/// the GET's would be, as on HTTP/1.
fn bodiless(mut response: Response<Body>) -> Response<Body> {
    if !response.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(len) = hyper::body::Body::size_hint(response.body()).exact()
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    response.map(|_| crate::body::empty())
}

// === impl Answered ===

impl Future for Answered {
    type Output = Result<Response<Sent>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = std::task::ready!(Pin::new(&mut this.answer).poll(cx));
        let in_flight = this.in_flight.take();
        if let Some(in_flight) = &in_flight {
            in_flight.activity.answered.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(response.map(|body| Sent {
            body,
            in_flight,
            holding: None,
            rest: Bytes::new(),
        })))
    }
}

// === impl Sent ===

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let (Some(stream), Some(in_flight)) = (this.holding.take(), &this.in_flight) {
            in_flight.activity.sent_on(stream); // hyper is back for more: the peer reads
        }
        if !this.rest.is_empty() {
            let slice = this.rest.split_to(this.rest.len().min(SLICE));
            this.hold();
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(slice))));
        }
        let multiplexed = this
            .in_flight
            .as_ref()
            .is_some_and(|f| f.activity.multiplexed.load(Ordering::Relaxed));
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.in_flight = None; // sent: the request is over
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) if multiplexed => match frame.into_data() {
                Ok(mut data) => {
                    if data.len() > SLICE {
                        this.rest = data.split_off(SLICE);
                    }
                    this.hold();
                    Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Sent {
    /// HTTP/2: hyper took data from this answer; noted until it comes back for more.
    fn hold(&mut self) {
        if let Some(in_flight) = &self.in_flight
            && in_flight.activity.multiplexed.load(Ordering::Relaxed)
        {
            self.holding = Some(in_flight.activity.holding(in_flight.start));
        }
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        if let (Some(stream), Some(in_flight)) = (self.holding.take(), &self.in_flight) {
            in_flight.activity.sent_on(stream);
        }
    }
}

// === impl Activity ===

impl Activity {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            head_ns: AtomicU64::new(NO_HEAD),
            answered: AtomicBool::new(false),
            stalled_ms: AtomicU64::new(NOT_STALLED),
            unsent: std::sync::Mutex::default(),
            next_stream: AtomicU64::new(0),
        }
    }

    /// HTTP/2: a stream's answer gave hyper data it has yet to send; returns the entry to
    /// [`Activity::sent_on`] once hyper asks for more (or the stream ends).
    fn holding(&self, start: Instant) -> u64 {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let since = millis_since(start);
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream, since);
        stream
    }

    /// HTTP/2: hyper came back for more of a stream's answer (or the stream ended).
    fn sent_on(&self, stream: u64) {
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream);
    }

    /// HTTP/2: since when the longest-held data has waited for the peer's window, if any does.
    fn oldest_unsent(&self) -> Option<u64> {
        let unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        unsent.values().min().copied()
    }

    /// Notes how a write went: the moment the socket first stayed full (one clock read per
    /// stall), and that it drained again. Nothing for writes that go through at once.
    fn wrote(&self, start: Instant, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => {
                if self.stalled_ms.load(Ordering::Relaxed) == NOT_STALLED {
                    self.stalled_ms
                        .store(millis_since(start), Ordering::Relaxed);
                }
            }
            Poll::Ready(Ok(n)) if *n > 0 => {
                if self.stalled_ms.load(Ordering::Relaxed) != NOT_STALLED {
                    self.stalled_ms.store(NOT_STALLED, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {}
        }
    }

    /// Bytes were read: on HTTP/1 with no request in flight, or once the one in flight has its
    /// answer, the next request's head has begun.
    fn bytes_arrived(&self, start: Instant) {
        if self.head_ns.load(Ordering::Relaxed) == NO_HEAD
            && (self.active.load(Ordering::Relaxed) == 0 || self.answered.load(Ordering::Relaxed))
            && !self.multiplexed.load(Ordering::Relaxed)
        {
            self.head_ns.store(nanos_since(start), Ordering::Relaxed);
        }
    }
}

/// Milliseconds from `start` to now.
fn millis_since(start: Instant) -> u64 {
    saturating_u64(start.elapsed().as_millis())
}

/// Nanoseconds from `start` to now.
fn nanos_since(start: Instant) -> u64 {
    saturating_u64(start.elapsed().as_nanos())
}

/// A count that fits a `u64` below the atomics' "none" marker (`u64::MAX`); 584 years of
/// nanoseconds do.
fn saturating_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX - 1)
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        let now = self.start.elapsed();
        activity
            .last_ms
            .store(saturating_u64(now.as_millis()), Ordering::Relaxed);
        // A head that began while this answer was being sent has its clock start now: the
        // client could not expect it read before.
        if activity.head_ns.load(Ordering::Relaxed) != NO_HEAD {
            activity
                .head_ns
                .store(saturating_u64(now.as_nanos()), Ordering::Relaxed);
        }
        activity.active.fetch_sub(1, Ordering::Release);
    }
}

// === impl Tracked ===

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived(this.start);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> Tracked<I> {
    /// Writes out what is left of a rewritten refusal; ready once nothing is.
    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.rewritten.is_empty() {
            let polled = Pin::new(&mut self.io).poll_write(cx, &self.rewritten);
            self.activity.wrote(self.start, &polled);
            match std::task::ready!(polled)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => bytes::Buf::advance(&mut self.rewritten, n),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// When `written` (all hyper asks to write) is its own bodiless refusal: sends ours in its
    /// place, and tells hyper all of its bytes went.
    fn rewrite(&mut self, cx: &mut Context<'_>, written: &[u8]) -> Option<Poll<io::Result<usize>>> {
        // Only where hyper answers by itself: new head bytes arrived and no request is in
        // flight. Body bytes (a streamed answer to an HTTP/1.0 client has no chunk framing) are
        // never looked at, nor HTTP/2 frames; an HTTP/1 head only if it is whole.
        let activity = &self.activity;
        if activity.multiplexed.load(Ordering::Relaxed)
            || activity.active.load(Ordering::Acquire) > 0
            || activity.head_ns.load(Ordering::Relaxed) == NO_HEAD
        {
            return None;
        }
        self.rewritten = own_errors::in_github_shape(written)?;
        // What does not go now goes on hyper's flush (it always flushes before closing).
        Some(match self.poll_rewritten(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            _ => Poll::Ready(Ok(written.len())),
        })
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_rewritten(cx))?;
        if let Some(polled) = this.rewrite(cx, buf) {
            return polled;
        }
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.activity.wrote(this.start, &polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_rewritten(cx))?;
        let mut full = bufs.iter().filter(|buf| !buf.is_empty());
        if let (Some(only), None) = (full.next(), full.next())
            && let Some(polled) = this.rewrite(cx, only)
        {
            return polled;
        }
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.activity.wrote(this.start, &polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_rewritten(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_rewritten(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Serves `io` with `svc` until the peer leaves, the connection sits idle or sends a head too
/// slowly (see the module's text), or the server drains (then in-flight requests finish first).
pub(super) async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    svc: ProxyService,
    peer: Option<PeerCert>,
    limits: IdleLimits,
    mut drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let start = Instant::now();
    let seen = activity.clone();
    let io = TokioIo::new(Tracked {
        io,
        activity: activity.clone(),
        start,
        rewritten: Bytes::new(),
    });
    let svc = Watched {
        svc,
        peer,
        activity,
        start,
        memo: ConnMemo::default(),
    };
    let conn = builder.serve_connection(io, svc);
    let mut conn = pin!(conn);
    let mut closing = false;
    // When a connection shut down before its first request is dropped if it is still open.
    let mut force_at: Option<Instant> = None;
    // HTTP/2 closed for idleness: every answer was handed over, only h2's queue is left; it
    // gets one more idle timeout (`h2_last_call`), then the connection is dropped.
    let mut idle_h2 = false;
    let mut h2_last_call = false;
    let watch_waker = Arc::new(WatchWaker::default());
    loop {
        // The watches only matter at their own deadlines: polled when one of them woke the
        // task, never on the wakes that carry requests (see `Gated`).
        let event = {
            let (draining, seen, was_closing, force) =
                (&mut drain.draining, &seen, closing, force_at);
            let watch = pin!(async move {
                tokio::select! {
                    biased;
                    // Once closing, it only ever answers `Unread`.
                    quiet = idle(seen, start, limits, was_closing) => Watch::Quiet(quiet),
                    _ = draining.wait_for(|d| *d), if !was_closing => Watch::Drain,
                    () = tokio::time::sleep_until(force.unwrap_or(start)), if force.is_some() => {
                        Watch::Force
                    }
                }
            });
            Gated {
                conn: conn.as_mut(),
                watch,
                waker: &watch_waker,
            }
            .await
        };
        match event {
            Err(result) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            Ok(Watch::Quiet(quiet)) => {
                if quiet == Quiet::Unread {
                    // Nothing graceful can reach a peer that reads nothing: drop it.
                    tracing::debug!("dropping a connection whose answer sat unread");
                    return;
                }
                tracing::debug!("closing an idle or slow connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
                force_at = Some(Instant::now() + FORCE_CLOSE_AFTER);
                idle_h2 = seen.multiplexed.load(Ordering::Relaxed);
            }
            Ok(Watch::Drain) => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                force_at = Some(Instant::now() + FORCE_CLOSE_AFTER);
            }
            Ok(Watch::Force) => {
                // Hyper leaves an HTTP/1 connection whose first head never completed open after
                // a graceful shutdown (it closes between requests, and after the one in
                // progress). One that never started a request has no answer to lose: drop it.
                // Any other finishes what it is sending (a long body included), then closes.
                if !seen.served.load(Ordering::Acquire) && seen.active.load(Ordering::Acquire) == 0
                {
                    tracing::debug!("dropping a connection that never started a request");
                    return;
                }
                // An HTTP/2 connection closed for idleness waits only for h2 to hand the peer
                // what it queued (an answer's last slice goes with its end of stream, and the
                // body is gone): a peer that grants no window gets an idle timeout for it.
                if idle_h2 {
                    idle_h2 = false;
                    h2_last_call = true;
                    force_at = Some(Instant::now() + limits.idle);
                } else if h2_last_call {
                    tracing::debug!(
                        "dropping an HTTP/2 connection whose queued answers were never taken"
                    );
                    return;
                } else {
                    force_at = None;
                }
            }
        }
    }
}

/// What a connection's watches saw.
enum Watch {
    /// Past a limit ([`idle`]).
    Quiet(Quiet),
    /// The server drains.
    Drain,
    /// A shut-down connection's grace ran out.
    Force,
}

/// Wakes the connection's task on behalf of its watches, and notes that they want polling.
/// Starts woken: a new watch future is polled once to register its timers.
///
/// The task's waker is kept, not taken, by a wake: every wake after the first poll finds it, so
/// none is lost between the flag being set and the task registering again (with an
/// `AtomicWaker`, a wake racing a poll could take the fresh registration and leave the next
/// deadline waking nobody).
#[derive(Debug)]
struct WatchWaker {
    woken: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl Default for WatchWaker {
    fn default() -> Self {
        Self {
            woken: AtomicBool::new(true),
            task: std::sync::Mutex::new(None),
        }
    }
}

impl WatchWaker {
    /// Keeps `waker` as the task's (it changes only if the task is moved to another waker).
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if !task.as_ref().is_some_and(|kept| kept.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for WatchWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // The flag first: the task, once woken, must find it set.
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// The connection and its watches in one task, the connection first. `tokio::select!` polls
/// every branch on every wake: each request's wakes then also polled the idle timer, the drain
/// watch and their `select!` (~3 % of a cache hit's CPU). Here the watches run under their own
/// waker and are polled only after it fired. Ready with `Err` (the connection's result) once the
/// connection ends, with `Ok` once a watch has something to say.
struct Gated<'a, C, W> {
    conn: Pin<&'a mut C>,
    watch: Pin<&'a mut W>,
    waker: &'a Arc<WatchWaker>,
}

impl<C, W, E> Future for Gated<'_, C, W>
where
    C: Future<Output = Result<(), E>>,
    W: Future<Output = Watch>,
{
    type Output = Result<Watch, Result<(), E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(result) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Err(result));
        }
        if this.waker.woken.swap(false, Ordering::AcqRel) {
            // Kept before the watches are polled: a wake during the poll finds it.
            this.waker.register(cx.waker());
            let waker = Waker::from(this.waker.clone());
            if let Poll::Ready(watch) = this.watch.as_mut().poll(&mut Context::from_waker(&waker)) {
                // The next watch future starts with a poll of its own.
                this.waker.woken.store(true, Ordering::Release);
                return Poll::Ready(Ok(watch));
            }
        }
        Poll::Pending
    }
}

/// Serves one admin connection (HTTP/1: probes and scrapes). Hyper's head timer closes one that
/// sends nothing or sits idle between requests (`limits.head`); one whose answer could not be
/// written for `limits.idle` (a peer that pipelines requests and reads nothing) is dropped, as on
/// the main listener: a handful of those held every admin slot, Prometheus's and probes' too.
pub(super) async fn serve_admin<S>(stream: tokio::net::TcpStream, svc: S, limits: IdleLimits)
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let start = Instant::now();
    let io = TokioIo::new(Tracked {
        io: stream,
        activity: activity.clone(),
        start,
        rewritten: Bytes::new(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.head)
        .serve_connection(io, svc);
    tokio::select! {
        result = conn => {
            if let Err(error) = result {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        }
        () = unread(&activity, start, limits.idle) => {
            tracing::debug!("dropping an admin connection whose answer sat unread");
        }
    }
}

/// Resolves once a write has found the socket full for `idle`, with none going through since.
async fn unread(activity: &Activity, start: Instant, idle: Duration) {
    loop {
        let now = Instant::now();
        let next = match activity.stalled_ms.load(Ordering::Relaxed) {
            NOT_STALLED => now + idle,
            since => {
                let at = start + Duration::from_millis(since) + idle;
                if now >= at {
                    return;
                }
                at
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Resolves once the connection is past one of its limits: no first request within the head
/// timeout, no request in flight for the idle timeout, or an HTTP/1 head still incomplete a head
/// timeout after its first byte (`Quiet::Idle`, never once `closing`); or an answer that could
/// not be sent on for the idle timeout (`Quiet::Unread`).
async fn idle(activity: &Activity, start: Instant, limits: IdleLimits, closing: bool) -> Quiet {
    let at = |ms: u64| start + Duration::from_millis(ms);
    loop {
        let now = Instant::now();
        // An answer that could not be sent on for the idle timeout: a peer that reads nothing
        // (or grants no HTTP/2 window) would hold its slot for ever. Watched whether or not a
        // request still counts as in flight (hyper may hold a whole answer after its body ended)
        // and after a graceful shutdown (which waits for that answer).
        let stalled = match activity.stalled_ms.load(Ordering::Relaxed) {
            NOT_STALLED => None,
            stalled => Some(stalled),
        };
        let held = if activity.multiplexed.load(Ordering::Relaxed) {
            activity.oldest_unsent()
        } else {
            None
        };
        let stuck_until = match stalled.into_iter().chain(held).min() {
            Some(since) if now >= at(since) + limits.idle => return Quiet::Unread,
            since => since.map(|since| at(since) + limits.idle),
        };
        let next = if closing || activity.active.load(Ordering::Acquire) > 0 {
            // Busy (or closing already): look again later.
            now + limits.head.min(limits.idle)
        } else {
            let deadline = if activity.served.load(Ordering::Relaxed) {
                let idle = at(activity.last_ms.load(Ordering::Relaxed)) + limits.idle;
                match activity.head_ns.load(Ordering::Relaxed) {
                    NO_HEAD => idle,
                    head => idle.min(start + Duration::from_nanos(head) + limits.head),
                }
            } else {
                start + limits.head
            };
            if now >= deadline {
                return Quiet::Idle;
            }
            // A head can begin at any moment without waking this watch: looking again within
            // one head timeout finds it while its deadline is still ahead.
            deadline.min(now + limits.head)
        };
        tokio::time::sleep_until(stuck_until.map_or(next, |stuck| stuck.min(next))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::{Wake, Waker},
    };

    use super::WatchWaker;

    /// Counts the times the "task" was woken.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn every_watch_wake_reaches_the_task_without_registering_again() {
        let task = Arc::new(Task::default());
        let watch = Arc::new(WatchWaker::default());
        assert!(watch.woken.swap(false, Ordering::AcqRel), "starts woken");
        watch.register(&Waker::from(task.clone()));
        // A deadline's wake that raced the poll consumed nothing: the next one is not lost.
        let waker = Waker::from(watch.clone());
        for n in 1..=3 {
            waker.wake_by_ref();
            assert_eq!(task.0.load(Ordering::SeqCst), n);
            assert!(watch.woken.swap(false, Ordering::AcqRel));
        }
        // Registering the same task again keeps one waker; the flag stays clear until a wake.
        watch.register(&Waker::from(task.clone()));
        assert!(!watch.woken.load(Ordering::Acquire));
        waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::SeqCst), 4);
    }
}
