//! The accept loop, connection limits, readiness and drain.
//!
//! [`start`] binds, builds the state and the one service stack, and spawns the accept loop;
//! [`Running::shutdown`] is the drain: readiness fails first (for `server.shutdown_delay` the
//! listener still serves, so load balancers see it), the listener closes, then in-flight
//! requests get up to `server.drain_timeout` to finish (HTTP/1 connections close when idle, HTTP/2
//! gets GOAWAY).
//!
//! With `[server.tls]` each accepted connection is handshaken inside its own task (under
//! `server.header_read_timeout`, so a slow or silent client never holds up the accept loop), and a
//! client certificate, if one was presented, rides along in every request's extensions as a
//! [`PeerCert`] for [`crate::auth`]. A task polls the certificate files for a new pair until
//! shutdown ([`crate::tls`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::Request;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

mod conn;
mod own_errors;

use conn::{Drain, IdleLimits};

use crate::{
    config::{Config, tls::TlsError},
    secret::OrgToken,
    service::ProxyService,
    state::{AppState, StateError},
    tls::{PeerCert, Tls},
};

/// Connections waiting in the kernel while we are at `max_connections` or busy accepting: clean-up
/// tools open 100 connections at once.
const LISTEN_BACKLOG: u32 = 1024;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The shared state (upstream client, audit log) could not be built.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TLS certificate, key or client CAs could not be loaded.
    #[error("cannot set up TLS on the listener")]
    Tls(#[from] TlsError),
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The shared state (reload swaps parts of it; `main` hands it to reconciliation).
    pub state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

// === impl Running ===

impl Running {
    /// Drains and stops: readiness fails, the listener closes, in-flight requests finish up to the
    /// drain deadline.
    pub async fn shutdown(self) {
        self.state.start_draining();
        // Mutations whose pace slot falls past half the drain deadline are answered 503 now,
        // with a "not sent" outcome, rather than cut off when the process exits.
        let server = &self.state.config.server;
        let send_by =
            tokio::time::Instant::now() + server.shutdown_delay + server.drain_timeout / 2;
        self.state.pacer.drain_by(send_by);
        // Keep serving while load balancers notice the failing readiness probe.
        tokio::time::sleep(self.state.config.server.shutdown_delay).await;
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "server task failed");
        }
        // A mutation already sent runs in its own task: its outcome is written before the
        // process exits, even when its client's connection was cut at the drain deadline (a
        // send lasts at most `upstream.timeout`; queued ones were answered "not sent" above).
        let deadline = tokio::time::Instant::now()
            + self.state.config.upstream.timeout
            + Duration::from_secs(1);
        while !self.state.per_client.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.state.per_client.is_empty() {
            tracing::error!("exiting with a destructive call whose outcome is not written");
        }
    }
}

/// Binds `config.server.listen` and serves until [`Running::shutdown`].
pub async fn start(config: Config, token: OrgToken) -> Result<Running, StartError> {
    let addr = config.server.listen;
    // Before binding: a bad certificate fails the start, not the first handshake.
    let tls = config.server.tls.as_ref().map(Tls::new).transpose()?;
    let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let state = AppState::new(config, token, addr)?;
    let svc = ProxyService::new(state.clone());
    let (stop, stopped) = oneshot::channel();
    let reloader = tls.as_ref().map(Tls::spawn_reloader);
    let acceptor = tls.as_ref().map(Tls::acceptor);
    let admin = match state.config.server.admin_listen {
        Some(admin_addr) => {
            let admin_listener = bind(admin_addr).map_err(|source| StartError::Bind {
                addr: admin_addr,
                source,
            })?;
            tracing::info!(addr = %admin_addr, "admin listener (/metrics, /healthz, /readyz)");
            Some(tokio::spawn(serve_admin(admin_listener, state.clone())))
        }
        None => None,
    };
    let serving = serve(listener, state.clone(), svc, acceptor, stopped);
    let task = tokio::spawn(async move {
        serving.await;
        if let Some(admin) = admin {
            admin.abort(); // answers only probes and scrapes: nothing to drain
        }
        if let Some(reloader) = reloader {
            reloader.abort(); // it only sleeps and reads files: nothing to finish
        }
    });
    tracing::info!(%addr, tls = tls.is_some(), "listening");
    Ok(Running {
        addr,
        state,
        stop,
        task,
    })
}

/// The admin listener: plain HTTP/1, only `/metrics`, `/healthz` and `/readyz`. It has its own
/// `server.max_connections` slots (so a flood on one listener cannot starve the other's probes),
/// the same accept back-off, and the same watch for answers a peer never reads.
async fn serve_admin(listener: TcpListener, state: Arc<AppState>) {
    let server = &state.config.server;
    let slots = Arc::new(Semaphore::new(server.max_connections));
    let header_read_timeout = server.header_read_timeout;
    loop {
        let (stream, permit) = accept(&listener, &slots).await;
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit; // released when the connection ends
            let limits = IdleLimits {
                head: header_read_timeout,
                idle: state.config.server.idle_timeout,
            };
            let svc = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response =
                    crate::ops::operational(&state, request.method(), request.uri().path(), true)
                        .unwrap_or_else(|| crate::error::ProxyError::NotFound.into_response());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            conn::serve_admin(stream, svc, limits).await;
        });
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    svc: ProxyService,
    tls: Option<TlsAcceptor>,
    stopped: oneshot::Receiver<()>,
) {
    let server = &state.config.server;
    let builder = builder(server);
    let limits = IdleLimits {
        head: server.header_read_timeout,
        idle: server.idle_timeout,
    };
    let connections = Arc::new(Semaphore::new(server.max_connections));
    let (start_drain, draining) = watch::channel(false);
    let (alive, mut all_ended) = mpsc::channel::<()>(1);
    let drain = Drain {
        draining,
        _alive: alive,
    };
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let (stream, permit) = tokio::select! {
            accepted = accept(&listener, &connections) => accepted,
            _ = &mut stopped => break,
        };
        let conn = Conn {
            builder: builder.clone(),
            svc: svc.clone(),
            limits,
            drain: drain.clone(),
            _permit: permit,
        };
        match &tls {
            Some(acceptor) => {
                let handshake = Handshake {
                    acceptor: acceptor.clone(),
                    timeout: server.header_read_timeout,
                    conn,
                };
                tokio::spawn(handshake.serve(stream));
            }
            None => {
                tokio::spawn(conn.serve_plain(stream));
            }
        }
    }
    drop(listener); // stop accepting, then drain with a deadline
    drop(drain);
    let _ = start_drain.send(true);
    let drain = state.config.server.drain_timeout;
    tokio::select! {
        _ = all_ended.recv() => tracing::info!("drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain deadline hit"),
    }
}

/// How many request headers hyper parses without a heap allocation (its default limit).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The HTTP/1 and HTTP/2 settings of the main listener.
fn builder(server: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No header timer for HTTP/1: `conn` times request heads itself (hyper's would also close
    // idle keep-alive connections at the head timeout, and costs a timer per request).
    // No `half_close`: with it hyper stops reading while a request runs, and a client that
    // hangs up is no longer noticed (its request runs on, holding its in-flight slots, and an
    // abandoned delete still queued would be sent). A client that shuts only its sending side
    // after its request is taken for one that hung up, as nginx does.
    builder
        .http1()
        .max_buf_size((server.max_header_bytes + server.max_uri_bytes).max(16 * 1024) * 2);
    // Hyper answers 431 itself (empty body, no log line) past its header count. Up to 100 (its
    // default, and the config's) it parses into arrays on the stack; a higher count puts two
    // arrays of that many headers on the heap for every request. So it is raised only when the
    // config asks for more than 100, and then to exactly that. Below 100, our own check answers
    // past `server.max_headers` in GitHub's shape; past 100, and past a higher configured count,
    // the client gets hyper's plain 431.
    if server.max_headers > HYPER_DEFAULT_MAX_HEADERS {
        builder.http1().max_headers(server.max_headers);
    }
    // Pings find dead HTTP/2 peers; live ones that open no stream are closed by `conn`.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    builder
}

/// Waits for a free connection slot, then for a connection. Pending connections stay in the
/// kernel's backlog meanwhile; an accept error (e.g. EMFILE) backs off instead of spinning.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            // Never closed; if it were, accepting without a cap would be wrong: wait for stop.
            return std::future::pending().await;
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, permit);
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a connection's task needs besides its stream.
struct Conn {
    builder: auto::Builder<TokioExecutor>,
    svc: ProxyService,
    limits: IdleLimits,
    drain: Drain,
    /// One of `server.max_connections`, released when the connection ends.
    _permit: OwnedSemaphorePermit,
}

// === impl Conn ===

impl Conn {
    async fn serve_plain(self, stream: TcpStream) {
        // The head timer starts with the first byte: a connection that sends nothing
        // would hold its slot forever, so it gets as long as a request head would.
        let mut first = [0u8; 1];
        if tokio::time::timeout(self.limits.head, stream.peek(&mut first))
            .await
            .is_err()
        {
            tracing::debug!("connection closed: nothing sent within the header timeout");
            return;
        }
        conn::serve(
            &self.builder,
            stream,
            self.svc,
            None,
            self.limits,
            self.drain,
        )
        .await;
    }
}

/// What a TLS connection's task needs to handshake and then serve like a plain one.
struct Handshake {
    acceptor: TlsAcceptor,
    /// `server.header_read_timeout`: the handshake gets as long as a request head would.
    timeout: Duration,
    /// Taken before the handshake, so a drain waits for (at most) the handshake timeout.
    conn: Conn,
}

// === impl Handshake ===

impl Handshake {
    async fn serve(self, stream: TcpStream) {
        let stream = match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                // Plain HTTP on the TLS port, an untrusted client certificate, a scanner.
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                return;
            }
        };
        let peer = PeerCert::of(stream.get_ref().1);
        let Conn {
            builder,
            svc,
            limits,
            drain,
            _permit,
        } = self.conn;
        // Every request on this connection carries the client certificate it presented.
        conn::serve(&builder, stream, svc, peer, limits, drain).await;
    }
}
