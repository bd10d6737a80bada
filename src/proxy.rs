//! The request walk, read as a checklist of phases; each phase is a call into the module that
//! owns it:
//!
//! 1. **limits**: URI, header and body sizes hyper does not check ([`crate::limits`]);
//! 2. **the proxy's own endpoints**: health, metrics, `/rate_limit`, the cache purge
//!    ([`crate::ops`]);
//! 3. **route**: the typed Packages API route, else 404 ([`crate::route`]);
//! 4. **authenticate**: the client, else 401 ([`crate::auth`]);
//! 5. **owner**: owners outside the config are 404;
//! 6. **admission**: the client's cap on requests in flight, then its quotas and the rate-limit
//!    back-off ([`crate::admission`], also called by the cache and the gate for what they send);
//! 7. **gate, cache or pass-through**: destructive calls ([`crate::gate`]), reads through the
//!    cache ([`crate::cache`]), or straight to GitHub when the cache is off;
//! 8. **respond**: headers shaped beside the upstream client ([`crate::upstream::shape`]), the
//!    request id and the caller's scopes added, one metric and one log line per request.
//!
//! Order matters: the route is parsed before anything else (a path we do not serve is 404 and
//! touches nothing), the client is authenticated before any owner check or upstream call (so an
//! unauthenticated caller learns nothing about configured owners), and the upstream request is
//! rebuilt from the typed route.
//!
//! Phases 1 to 7 run at once, up to the first thing that waits ([`walk`]): a fresh cache hit,
//! most of the traffic, is answered there with no future set up, boxed or polled for it. What
//! waits (GitHub, the shared tier, the gate, a purge) is a [`Next`] step, run in the request's
//! one boxed future.

use std::{
    borrow::Cow,
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use futures_util::future::{self, Either, Ready};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::{
    access_log::AccessRecord,
    admission::{self, Payer, Ticket, Work},
    auth::{AuthMemo, Identity},
    body::Body,
    body_url,
    cache::{self, ClientConditions, FetchSpec},
    error::ProxyError,
    gate::{self, Mutation},
    limits::{self, Heads},
    ops,
    quota::{Slot, Taken},
    route::Route,
    state::AppState,
    tls::PeerCert,
    upstream::Forwarded,
};

/// Header names the walk sets on every answer, parsed once (a `&str` name is parsed per call).
/// An answer from the cache has a slot for each already (`cache::StoredHeaders`).
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_OAUTH_SCOPES: HeaderName = HeaderName::from_static("x-oauth-scopes");

/// What an HTTP/1 connection remembers from its last request for the next one (its walk runs on
/// the connection, one request at a time, so a `RefCell` will do): the client its
/// `Authorization` named ([`AuthMemo`]), and the route its method and target parsed to. A
/// poller asks the same thing again and again, and parsing and validating its route again cost
/// more than the rest of the walk's checks.
#[derive(Debug, Default)]
pub struct ConnMemo {
    auth: AuthMemo,
    route: RefCell<Option<RememberedRoute>>,
}

/// A read's route, with the method and request target (path and query) it was parsed from:
/// [`Route::parse`] reads nothing else, so the same bytes give the same route. Deletes and
/// restores are never remembered (a restore's query may carry a token).
#[derive(Debug)]
struct RememberedRoute {
    method: Method,
    target: String,
    route: Arc<Route>,
    /// Its cache key, once one was built for it.
    key: Option<RememberedKey>,
}

/// A cache key with everything [`cache::key`] read to build it besides the route: `Accept`,
/// `X-GitHub-Api-Version`, the public base, and the generation table's version (a delete, a
/// restore or a purge moves it on, so the next request builds its key afresh).
#[derive(Debug)]
struct RememberedKey {
    accept: HeaderValue,
    api_version: HeaderValue,
    public_base: Arc<str>,
    generations: u64,
    key: String,
}

/// What the log line reports about one request, filled in as the walk goes.
#[derive(Default)]
struct RequestLog {
    client: Option<Arc<str>>,
    route: Option<&'static str>,
    upstream_status: Option<u16>,
    cache: Option<&'static str>,
    /// The scopes the proxy grants the authenticated caller, sent as `X-OAuth-Scopes` on every
    /// answer to it (GitHub's header would describe the org token instead).
    scopes: Option<&'static HeaderValue>,
}

/// One request as the walk and its answer see it: what the log line, the metric and the answer's
/// headers need, whichever way the request went.
struct Call {
    /// When the request's head began to arrive (else `now`): the log line's duration counts
    /// from here.
    started: Instant,
    /// When the walk started: what the cache's freshness, `Age` and the quotas are judged at
    /// (a head that took seconds to arrive must not make a stale entry look fresh).
    now: Instant,
    /// Ours always: the audit log and the log line key on it. The client's is kept beside it.
    request_id: HeaderValue,
    client_request_id: Option<String>,
    method: Method,
    log: RequestLog,
    /// A browser's request to a proxied path: the answer carries CORS headers ([`crate::cors`]).
    cors: bool,
}

/// The proxy's own request id and the client's `X-Request-Id`, if it sent a plain one.
#[derive(Clone, Copy)]
struct RequestIds<'a> {
    own: &'a str,
    client: Option<&'a str>,
}

/// An answer: at once, or a future that builds it.
pub type Answer =
    Either<Ready<Response<Body>>, Pin<Box<dyn Future<Output = Response<Body>> + Send>>>;

/// Handles one request; never fails (errors become GitHub-shaped responses).
///
/// The walk's checks and a fresh cache hit (most requests) run here, at once, and the answer is
/// ready: no future is set up, boxed, or polled for it. Anything that waits (GitHub, the shared
/// tier, the gate, a purge) continues in one boxed future, which holds `keep` (the server's and
/// the connection's in-flight marks) until its answer is built.
pub fn handle<G: Send + 'static>(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    guard: G,
    slot: Taken<'_>,
    memo: Option<&ConnMemo>,
    started: Option<Instant>,
) -> Answer {
    let now = Instant::now();
    let mut call = Call {
        started: started.unwrap_or(now),
        now,
        request_id: state.next_request_id(),
        client_request_id: None,
        method: request.method().clone(),
        log: RequestLog::default(),
        cors: false,
    };
    match walk(state, request, &mut call, memo) {
        // The slot and the guard are given back once the answer is built.
        Step::Done(result) => Either::Left(future::ready(call.finish(result))),
        Step::Wait(next) => {
            let keep = (guard, slot.keep());
            let state = state.clone();
            Either::Right(Box::pin(async move {
                let _keep = keep;
                let result = next.run(&state, &mut call).await;
                call.finish(result)
            }))
        }
    }
}

/// The text of the proxy's own request id (ASCII: `AppState::next_request_id`). UTF-8
/// validation of ~20 ASCII bytes is a few word compares; `HeaderValue::to_str` checks them one
/// at a time.
fn request_id_text(id: &HeaderValue) -> &str {
    std::str::from_utf8(id.as_bytes()).unwrap_or_default()
}

// === impl Call ===

impl Call {
    fn ids(&self) -> RequestIds<'_> {
        RequestIds {
            own: request_id_text(&self.request_id),
            client: self.client_request_id.as_deref(),
        }
    }

    /// 8. respond: errors become GitHub's shape; the request id, scopes, metric and log line.
    fn finish(self, result: Result<Response<Body>, ProxyError>) -> Response<Body> {
        let log = self.log;
        let mut response = result.unwrap_or_else(ProxyError::into_response);
        let request_id = request_id_text(&self.request_id);
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(self.started);
        crate::metrics::request(
            log.route.unwrap_or("-"),
            response.status().as_u16(),
            log.cache.unwrap_or("none"),
            log.client.as_deref().unwrap_or("-"),
            elapsed,
        );
        crate::access_log::record(&AccessRecord {
            request_id,
            client_request_id: self.client_request_id.as_deref(),
            method: &self.method,
            client: log.client.as_deref(),
            route: log.route,
            status: response.status().as_u16(),
            upstream_status: log.upstream_status,
            cache: log.cache,
            duration: elapsed,
            at: ended,
        });
        let headers = response.headers_mut();
        if self.cors {
            crate::cors::add(headers);
        }
        match log.scopes {
            // An answer from the cache has a slot for each (`cache::StoredHeaders`).
            Some(scopes) if log.cache.is_some() => cache::fill_slots(
                headers,
                (cache::Slot::RequestId, self.request_id),
                (cache::Slot::OAuthScopes, scopes.clone()),
            ),
            Some(scopes) => {
                headers.insert(X_REQUEST_ID, self.request_id);
                headers.insert(X_OAUTH_SCOPES, scopes.clone());
            }
            None => {
                headers.insert(X_REQUEST_ID, self.request_id);
                // No caller, no scopes (and no slot left empty).
                headers.remove(X_OAUTH_SCOPES);
            }
        }
        response
    }
}

/// The request's route: the connection's last one if its method and target are the same bytes.
/// With `true` when `memo` now holds this route (found there, or remembered now).
fn parse_route<B>(
    request: &Request<B>,
    path: &str,
    memo: Option<&ConnMemo>,
) -> Result<(Arc<Route>, bool), ProxyError> {
    let (method, query) = (request.method(), request.uri().query());
    let target = request.uri().path_and_query().map(|t| t.as_str());
    let (Some(memo), Some(target)) = (memo, target) else {
        return Ok((Arc::new(Route::parse(method, path, query)?), false));
    };
    if let Some(known) = memo.route.borrow().as_ref()
        && known.method == *method
        && known.target == target
    {
        return Ok((known.route.clone(), true));
    }
    let route = Arc::new(Route::parse(method, path, query)?);
    let remember = !route.operation.is_destructive();
    if remember {
        let mut remembered = memo.route.borrow_mut();
        // The target's buffer is reused: a connection that alternates allocates no new one.
        let mut text = remembered.take().map(|r| r.target).unwrap_or_default();
        text.clear();
        text.push_str(target);
        *remembered = Some(RememberedRoute {
            method: method.clone(),
            target: text,
            route: route.clone(),
            key: None,
        });
    }
    Ok((route, remember))
}

/// A copy of `value` that owns its bytes. A request's header values are slices of the
/// connection's read buffer: one kept past its request would keep that whole buffer (8 KiB or
/// more) alive, and make hyper allocate a new one for the next read.
fn owned(value: &HeaderValue) -> HeaderValue {
    let mut copy = HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(value.as_bytes()))
        .unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// The cache key of `route` ([`cache::key`]). `memo` holds `route` when given: its key is
/// copied if every other input is the same bytes and no generation moved since it was built;
/// else the key is built and remembered.
fn cache_key(
    memo: Option<&ConnMemo>,
    route: &Route,
    forwarded: &Forwarded,
    public_base: &Arc<str>,
    generations: &cache::Generations,
) -> String {
    let Some(memo) = memo else {
        return cache::key(route, forwarded, public_base, generations);
    };
    // Read before the key is built: a change while it is built makes the next request's differ.
    let version = generations.version();
    let mut remembered = memo.route.borrow_mut();
    let Some(remembered) = remembered.as_mut() else {
        return cache::key(route, forwarded, public_base, generations);
    };
    if let Some(known) = &remembered.key
        && known.generations == version
        && known.accept == forwarded.accept
        && known.api_version == forwarded.api_version
        && *known.public_base == **public_base
    {
        return cache::copy_key(&known.key);
    }
    let key = cache::key(route, forwarded, public_base, generations);
    let mut text = remembered.key.take().map(|k| k.key).unwrap_or_default();
    text.clear();
    text.push_str(&key);
    remembered.key = Some(RememberedKey {
        accept: owned(&forwarded.accept),
        api_version: owned(&forwarded.api_version),
        public_base: public_base.clone(),
        generations: version,
        key: text,
    });
    key
}

/// A browser's preflight (no credentials: it never carries any) of a path the proxy serves for
/// the method it asks about (`GET` if it names none); else 404, as the call itself would be.
fn preflight<B>(path: &str, request: &Request<B>, log: &mut RequestLog) -> Result<(), ProxyError> {
    if ops::is_rate_limit_path(path) {
        log.route = Some("/rate_limit");
        return Ok(());
    }
    if path == ops::PURGE_PATH {
        log.route = Some(ops::PURGE_PATH);
        return Ok(());
    }
    let method = request
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let route = Route::parse(&method, path, request.uri().query())?;
    log.route = Some(route.template());
    Ok(())
}

/// The client behind a request: its bearer token, else its TLS client certificate. Records the
/// client and the scopes it is granted for the log line and the answer's `X-OAuth-Scopes`.
/// A connection's `memo` answers its repeated `Authorization` without the hash (see
/// [`AuthMemo`]); a client named by its certificate needs no hash anyway.
fn authenticate<B>(
    state: &AppState,
    request: &Request<B>,
    heads: &Heads<'_>,
    log: &mut RequestLog,
    memo: Option<&AuthMemo>,
) -> Result<Identity, ProxyError> {
    let peer = request.extensions().get::<PeerCert>();
    // Read before the clients and the policy: a reload in between makes the memo stale.
    let generation = state.credentials_generation.load(Ordering::Acquire);
    let memo = memo.zip(heads.authorization).filter(|_| peer.is_none());
    if let Some((memo, authorization)) = memo
        && let Some((identity, scopes)) = memo.recall(generation, authorization.as_bytes())
    {
        log.client = Some(identity.name.clone());
        log.scopes = Some(scopes);
        return Ok(identity);
    }
    let identity = state
        .clients
        .load()
        .authenticate(heads.authorization, peer)?;
    let scopes = granted_scopes(state, &identity);
    if let Some((memo, authorization)) = memo {
        memo.remember(generation, authorization.as_bytes(), &identity, scopes);
    }
    log.client = Some(identity.name.clone());
    log.scopes = Some(scopes);
    Ok(identity)
}

/// The scopes the proxy effectively grants a client: deletes and restores only if some policy
/// rule could allow one for it. Clean-up tools read `X-OAuth-Scopes` before they start.
fn granted_scopes(state: &AppState, identity: &Identity) -> &'static HeaderValue {
    // Built once: a value made from a `&str` per request checks its bytes every time.
    static READ: HeaderValue = HeaderValue::from_static("read:packages");
    static DELETE: HeaderValue =
        HeaderValue::from_static("read:packages, write:packages, delete:packages");
    if state.policy.load().allows_anything_for(&identity.name) {
        &DELETE
    } else {
        &READ
    }
}

/// Where the walk got to without waiting.
// Returned once, then moved into the request's one boxed future: boxing `Next` would add an
// allocation to every request that waits.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// The answer, or the error it becomes.
    Done(Result<Response<Body>, ProxyError>),
    /// The rest needs to wait for something.
    Wait(Next),
}

/// What a request still has to do after the walk's checks, with what it needs for that.
enum Next {
    /// `GET /rate_limit`.
    RateLimit(Identity),
    /// The cache purge.
    Purge(Identity, Request<Incoming>),
    /// A delete or restore, through the gate: its dry-run header lines, and its body (read
    /// whole before the gate: a dry-run header among its trailers counts too).
    Mutate {
        read: Read,
        dry_run: HeaderMap,
        body: Incoming,
    },
    /// A read with the cache off.
    PassThrough(Read),
    /// A read the cache could not answer from a fresh entry.
    Cache {
        deferred: cache::Deferred,
        identity: Identity,
        _in_flight: Slot,
    },
}

/// A Packages API call past its checks.
struct Read {
    route: Arc<Route>,
    identity: Identity,
    forwarded: Forwarded,
    public_base: Arc<str>,
    /// The client's cap on requests in flight, held until the answer is built.
    _in_flight: Slot,
}

/// Phases 1 to 7 up to the first wait (see the module's text).
fn walk(
    state: &AppState,
    request: Request<Incoming>,
    call: &mut Call,
    memo: Option<&ConnMemo>,
) -> Step {
    match walk_checked(state, request, call, memo) {
        Ok(step) => step,
        Err(error) => Step::Done(Err(error)),
    }
}

fn walk_checked(
    state: &AppState,
    request: Request<Incoming>,
    call: &mut Call,
    memo: Option<&ConnMemo>,
) -> Result<Step, ProxyError> {
    let (conn_memo, memo) = (memo, memo.map(|m| &m.auth));
    // 1. limits, and the headers the walk reads, in one pass
    let heads = Heads::scan(request.headers());
    call.client_request_id = heads.request_id.and_then(client_request_id);
    // A browser may read every answer but the unauthenticated endpoints' (refusals of its
    // request's shape included, so a page can read why).
    call.cors = heads.origin;
    let log = &mut call.log;
    limits::check_limits(state, &request, &heads)?;
    // 2. the proxy's own endpoints
    let path = request.uri().path();
    let metrics_here = state.config.server.admin_listen.is_none();
    if let Some(response) = ops::operational(state, request.method(), path, metrics_here) {
        call.cors = false;
        return Ok(Step::Done(Ok(response)));
    }
    if request.method() == Method::OPTIONS {
        return preflight(path, &request, log).map(|()| Step::Done(Ok(crate::cors::preflight())));
    }
    if ops::is_rate_limit_path(path) && matches!(*request.method(), Method::GET | Method::HEAD) {
        log.route = Some("/rate_limit");
        let identity = authenticate(state, &request, &heads, log, memo)?;
        return Ok(Step::Wait(Next::RateLimit(identity)));
    }
    if path == ops::PURGE_PATH {
        log.route = Some(ops::PURGE_PATH);
        let identity = authenticate(state, &request, &heads, log, memo)?;
        return Ok(Step::Wait(Next::Purge(identity, request)));
    }
    // 3. route, 4. authenticate, 5. owner
    let (route, remembered) = parse_route(&request, path, conn_memo)?;
    log.route = Some(route.template());
    let identity = authenticate(state, &request, &heads, log, memo)?;
    check_owner(state, &route)?;
    // 6. admission. Held until the answer is built: the client's cap on requests in flight.
    let in_flight =
        identity
            .limits
            .in_flight
            .try_take()
            .ok_or_else(|| ProxyError::TooManyRequests {
                message: "Too many requests in flight for this client".to_owned(),
                retry_after_secs: 1,
            })?;
    let forwarded = Forwarded::from_heads(&heads)?;
    let ghes = ghes_prefix(path);
    let public_base = public_base(state, ghes);
    // 7. gate, cache or pass-through (each admits what it sends upstream)
    if route.operation.is_destructive() {
        // Checked now (a bad value is a 400 before anything else), and again with the body's
        // trailers once it is read.
        gate::dry_run_requested(request.headers())?;
        let mut dry_run = HeaderMap::new();
        for value in request.headers().get_all(gate::DRY_RUN_HEADER) {
            dry_run.append(gate::DRY_RUN_HEADER, value.clone());
        }
        let read = Read {
            _in_flight: in_flight.keep(),
            route,
            identity,
            forwarded,
            public_base,
        };
        return Ok(Step::Wait(Next::Mutate {
            read,
            dry_run,
            body: request.into_body(),
        }));
    }
    if !state.config.cache.enabled {
        return Ok(Step::Wait(Next::PassThrough(Read {
            _in_flight: in_flight.keep(),
            route,
            identity,
            forwarded,
            public_base,
        })));
    }
    let conditions = ClientConditions {
        no_cache: heads.no_cache,
        if_none_match: forwarded.if_none_match.clone(),
        if_modified_since: forwarded
            .if_modified_since
            .as_ref()
            .filter(|_| !heads.has_if_none_match())
            .and_then(|value| value.to_str().ok())
            .and_then(|value| httpdate::parse_http_date(value).ok()),
    };
    let mut upstream_headers = forwarded;
    upstream_headers.if_none_match = None;
    upstream_headers.if_modified_since = None;
    let key = cache_key(
        conn_memo.filter(|_| remembered),
        &route,
        &upstream_headers,
        &public_base,
        &state.cache.generations,
    );
    let spec = FetchSpec {
        key,
        route,
        forwarded: upstream_headers,
        public_base,
    };
    let asker = cache::Asker {
        name: &identity.name,
        limits: &identity.limits,
    };
    let now = tokio::time::Instant::from_std(call.now);
    match cache::serve_fresh(state, spec, conditions, asker, now) {
        Ok(served) => {
            let (response, _, cache_status) = served?;
            log.cache = Some(cache_status.as_str());
            Ok(Step::Done(Ok(response)))
        }
        Err(deferred) => Ok(Step::Wait(Next::Cache {
            _in_flight: in_flight.keep(),
            deferred,
            identity,
        })),
    }
}

// === impl Next ===

impl Next {
    /// The rest of the request, from where the walk stopped.
    async fn run(
        self,
        state: &Arc<AppState>,
        call: &mut Call,
    ) -> Result<Response<Body>, ProxyError> {
        match self {
            Self::RateLimit(identity) => Ok(ops::rate_limit(state, &identity).await),
            Self::Purge(identity, request) => ops::purge(state, &identity, request).await,
            Self::Mutate {
                read,
                mut dry_run,
                body,
            } => {
                let patience = state.config.server.header_read_timeout;
                if let Some(trailers) = read_mutation_body(body, patience).await? {
                    for value in trailers.get_all(gate::DRY_RUN_HEADER) {
                        dry_run.append(gate::DRY_RUN_HEADER, value.clone());
                    }
                }
                let dry_run_requested = gate::dry_run_requested(&dry_run)?;
                let ids = call.ids();
                let mutation = Mutation {
                    route: &read.route,
                    forwarded: &read.forwarded,
                    client: &read.identity.name,
                    limits: &read.identity.limits,
                    request_id: ids.own,
                    client_request_id: ids.client,
                    dry_run_requested,
                    public_base: &read.public_base,
                };
                let (response, upstream_status) = gate::execute(state, mutation).await?;
                call.log.upstream_status = upstream_status;
                Ok(response)
            }
            Self::PassThrough(read) => {
                let payer = Payer::client(&read.identity.name, &read.identity.limits);
                let ticket = admission::admit(state, &payer, Work::Read).await?;
                let log = &mut call.log;
                pass_through(
                    state,
                    &ticket,
                    &read.route,
                    &read.forwarded,
                    &read.public_base,
                    log,
                )
                .await
            }
            Self::Cache {
                deferred,
                identity,
                _in_flight,
            } => {
                let asker = cache::Asker {
                    name: &identity.name,
                    limits: &identity.limits,
                };
                let (response, upstream_status, cache_status) =
                    cache::serve_deferred(state, deferred, asker).await?;
                call.log.upstream_status = upstream_status;
                call.log.cache = Some(cache_status.as_str());
                Ok(response)
            }
        }
    }
}

/// Reads a delete's or restore's body whole (none is needed, and none is sent on), up to the
/// limit on request bodies whatever its framing (a chunked body declares no length), and
/// returns its trailers: a dry run asked for there must not be missed. A body that does not
/// arrive within `patience` (`server.header_read_timeout`, as for the head) is a 408: a client
/// announcing one and never sending it would hold its slots for good.
async fn read_mutation_body(
    body: Incoming,
    patience: std::time::Duration,
) -> Result<Option<HeaderMap>, ProxyError> {
    let limit = usize::try_from(crate::limits::MAX_BODY).unwrap_or(usize::MAX);
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(patience, read).await {
        Err(_) => Err(ProxyError::RequestTimeout),
        Ok(Ok(collected)) => Ok(collected.trailers().cloned()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::PayloadTooLarge)
        }
        Ok(Err(_)) => Err(ProxyError::BadRequest(
            "The request body could not be read".to_owned(),
        )),
    }
}

/// Passes an upstream answer to the client without caching it; API URLs in a JSON body are
/// rewritten onto the public base (see `body_url`).
async fn pass_through(
    state: &AppState,
    ticket: &Ticket,
    route: &Route,
    forwarded: &Forwarded,
    public_base: &str,
    log: &mut RequestLog,
) -> Result<Response<Body>, ProxyError> {
    // The client holds the proxy's ETags; GitHub is asked with its own (see `body_url`).
    let mut forwarded = Cow::Borrowed(forwarded);
    if let Some(tags) = &forwarded.if_none_match {
        let mapped = body_url::upstream_if_none_match(tags, public_base, false);
        forwarded.to_mut().if_none_match = mapped;
    }
    // HEAD is sent as GET (the operation's method): hyper drops the body of a response to HEAD.
    let upstream = state
        .upstream
        .send(
            ticket,
            route.operation.method(),
            &route.path_and_query(),
            &forwarded,
        )
        .await?;
    log.upstream_status = Some(upstream.status().as_u16());
    let (parts, body) = upstream.into_parts();
    let mut headers = state
        .upstream
        .response_headers(route, public_base, &parts.headers);
    if parts.status == StatusCode::NOT_MODIFIED {
        // Unchanged at GitHub, so the client's copy is unchanged too: name it by our tag.
        if let Some(ours) = headers
            .get(header::ETAG)
            .and_then(|etag| body_url::proxy_etag(etag, public_base))
        {
            headers.insert(header::ETAG, ours);
        }
    }
    let body = if parts.status == StatusCode::OK {
        let limit = usize::try_from(state.config.cache.max_entry_bytes).unwrap_or(usize::MAX);
        let upstream_base = state.upstream.base();
        body_url::apply_streamed(&mut headers, body, limit, upstream_base, public_base).await?
    } else {
        body
    };
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Owners outside the config are 404, like a package the token cannot see.
fn check_owner(state: &AppState, route: &Route) -> Result<(), ProxyError> {
    if state.config.upstream.serves(&route.owner) {
        Ok(())
    } else {
        Err(ProxyError::NotFound)
    }
}

/// Whether the client used the GHES `/api/v3` prefix (with slashes merged).
fn ghes_prefix(path: &str) -> bool {
    let slashes = |s: &[u8]| s.iter().take_while(|&&b| b == b'/').count();
    let path = path.as_bytes();
    let path = &path[slashes(path)..];
    let Some(rest) = path.strip_prefix(b"api/") else {
        return false;
    };
    let rest = &rest[slashes(rest)..];
    rest.strip_prefix(b"v3")
        .is_some_and(|after| after.is_empty() || after[0] == b'/')
}

/// The base for rewritten `Link` URLs: our public URL, plus `/api/v3` if the client used it.
fn public_base(state: &AppState, ghes: bool) -> Arc<str> {
    state.public_bases[usize::from(ghes)].clone()
}

/// The client's `X-Request-Id` if it is short and plain (it goes into logs and the audit log).
fn client_request_id(value: &HeaderValue) -> Option<String> {
    let b = value.as_bytes();
    let plain = !b.is_empty()
        && b.len() <= 64
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c));
    plain.then(|| String::from_utf8_lossy(b).into_owned())
}

#[cfg(test)]
mod tests {
    use super::ghes_prefix;

    #[test]
    fn the_ghes_prefix_is_two_whole_segments_with_slashes_merged() {
        for path in [
            "/api/v3",
            "/api/v3/",
            "/api/v3/orgs/acme",
            "//api//v3//orgs",
            "/api/v3%2F",
        ] {
            assert_eq!(ghes_prefix(path), !path.ends_with("%2F"), "{path}");
        }
        for path in [
            "/",
            "/api",
            "/api/",
            "/apiv3",
            "/api/v30/orgs",
            "/api/v",
            "/orgs/api/v3",
        ] {
            assert!(!ghes_prefix(path), "{path}");
        }
    }
}
