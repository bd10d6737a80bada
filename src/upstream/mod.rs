//! The one upstream client: pooled hyper-util client over rustls, the org token, the request
//! headers we forward and the response headers we let back.
//!
//! Requests are rebuilt from scratch: the client's `Authorization`, cookies, hop-by-hop and
//! forwarding headers never reach GitHub. Only `Accept`, `X-GitHub-Api-Version`, `If-None-Match`,
//! `If-Modified-Since` and our own `User-Agent` and `Authorization` are sent. On the way back
//! [`shape`] lets an allow-list of headers pass and rewrites `Link`, on every path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use backon::{BackoffBuilder as _, ExponentialBuilder};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tower_http::timeout::TimeoutBody;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    admission::Ticket,
    body::Body,
    config::UpstreamConfig,
    error::{BoxError, ProxyError},
    ratelimit::RateLimit,
    secret::OrgToken,
};

pub mod shape;

pub use shape::{filter_response_headers, is_passed_header};

/// API versions GitHub supports today; others are refused locally with 400, as GitHub does.
pub const API_VERSIONS: [&str; 2] = ["2022-11-28", "2026-03-10"];
/// Sent when the client names no version, so a GitHub default change cannot surprise clients.
pub const DEFAULT_API_VERSION: &str = "2022-11-28";
/// GitHub's recommended media type, sent when the client sends no `Accept`.
const DEFAULT_ACCEPT: &str = "application/vnd.github+json";

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Builds requests to GitHub and sends them with the org token.
pub struct Upstream {
    client: HttpsClient,
    token: OrgToken,
    /// `scheme://authority` + prefix, no trailing slash.
    base: String,
    timeout: Duration,
    user_agent: HeaderValue,
    retries: u32,
    slots_total: usize,
    /// What GitHub's rate-limit headers said, and the back-off.
    pub rate_limit: RateLimit,
    /// Upstream requests at once (GitHub's secondary limit is 100 concurrent per token).
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot, bounded by `max_queue`.
    queued: AtomicUsize,
    max_queue: usize,
    /// Each client's share of the slots (`max_concurrency_per_client`), by client name: a
    /// request takes one of its client's before a slot, so one client's burst waits for its
    /// own turns instead of holding every slot while the others queue behind it.
    shares: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Share>>>,
    share_size: usize,
    /// Requests waiting for their client's share, all clients together (for the gauge).
    waiting_for_share: AtomicUsize,
}

/// One client's share of the upstream slots.
#[derive(Debug)]
struct Share {
    slots: Arc<Semaphore>,
    /// Its requests waiting for one, bounded by `max_queue` (per client: one client's burst
    /// never fills the queue the others wait in).
    waiting: AtomicUsize,
}

/// What an upstream request holds until its answer is read: a slot, and its client's share.
#[derive(Debug)]
pub(crate) struct Permit {
    _slot: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

/// The request headers a client may influence, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Forwarded {
    /// `Accept`, or GitHub's recommended media type.
    pub accept: HeaderValue,
    /// `X-GitHub-Api-Version`, one of [`API_VERSIONS`].
    pub api_version: HeaderValue,
    /// `If-None-Match`, if the client revalidates.
    pub if_none_match: Option<HeaderValue>,
    /// `If-Modified-Since`, if the client revalidates.
    pub if_modified_since: Option<HeaderValue>,
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS for the upstream client")]
pub struct BuildError(#[source] BoxError);

// === impl Upstream ===

impl Upstream {
    /// One pooled client for the process; every request shares its connections.
    pub fn new(config: &UpstreamConfig, token: OrgToken) -> Result<Self, BuildError> {
        let connector = https_connector(config.connect_timeout, config.allow_plain_http)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new()) // without it idle connections are never reaped
            .timer(TokioTimer::new()) // h2 keep-alive pings
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(connector);
        let user_agent =
            HeaderValue::from_static(concat!("packages-proxy/", env!("CARGO_PKG_VERSION")));
        Ok(Self {
            client,
            token,
            base: format!("{}{}", config.origin, config.prefix),
            timeout: config.timeout,
            user_agent,
            retries: config.retries,
            slots_total: config.max_concurrency,
            rate_limit: RateLimit::new(config.rate_limit_reserve),
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            queued: AtomicUsize::new(0),
            max_queue: config.max_queue,
            shares: std::sync::Mutex::default(),
            share_size: config.max_concurrency_per_client,
            waiting_for_share: AtomicUsize::new(0),
        })
    }

    /// The upstream base URL (origin and prefix) that `Link` URLs start with.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request and returns the response head with a body that fails if the upstream
    /// stalls longer than the timeout between chunks. Refuses during a back-off, waits for one of
    /// the upstream slots, and retries idempotent GETs on connection errors and 502/503/504
    /// (jittered exponential back-off; every attempt shares one deadline, `upstream.timeout`).
    /// Mutations are never retried.
    ///
    /// The [`Ticket`] is the admission point's proof that the request was checked against the
    /// back-off and the reserve and charged to someone; a retry is part of the same request.
    /// Rate-limit answers (403/429) are read whole, so a secondary limit is recognised by its
    /// wording even without `retry-after`; the response then carries a
    /// [`RateLimited`](crate::ratelimit::RateLimited) extension.
    pub async fn send(
        &self,
        ticket: &Ticket,
        method: Method,
        path_and_query: &str,
        forwarded: &Forwarded,
    ) -> Result<Response<Body>, ProxyError> {
        let permit = self.acquire(ticket).await?;
        self.send_holding(ticket, permit, method, path_and_query, forwarded)
            .await
    }

    /// The first half of [`Upstream::send`]: refuses during a back-off, then waits for the
    /// ticket's client's share and a slot. A mutation takes it within its send turn, then
    /// reads what it must check again on it ([`Upstream::send_on`]) and is sent on it.
    pub(crate) async fn acquire(&self, ticket: &Ticket) -> Result<Permit, ProxyError> {
        // Refused before anything is sent: the payer gets its charge back.
        let permit = match self.refuse_during_backoff() {
            Ok(()) => self.slot(ticket.share()).await,
            Err(error) => Err(error),
        };
        permit.inspect_err(|_| ticket.refund_unsent())
    }

    /// Refuses `ticket`'s request if a back-off is open, giving its charge back if it was
    /// never sent. Asked again right before every attempt: a request that waited for a slot
    /// (or a mutation for its pace) while another one's answer opened a back-off must not go
    /// out during it; a queue of a thousand would otherwise follow a limit within seconds.
    fn refuse_now(&self, ticket: &Ticket) -> Result<(), ProxyError> {
        self.refuse_during_backoff()
            .inspect_err(|_| ticket.refund_unsent())
    }

    /// The second half of [`Upstream::send`], with a permit from [`Upstream::acquire`].
    pub(crate) async fn send_holding(
        &self,
        ticket: &Ticket,
        permit: Permit,
        method: Method,
        path_and_query: &str,
        forwarded: &Forwarded,
    ) -> Result<Response<Body>, ProxyError> {
        self.attempts(ticket, Some(permit), method, path_and_query, forwarded)
            .await
    }

    /// Sends a read on a slot its caller holds already (`lent`: a mutation's safety reads,
    /// made on the mutation's own slot right before it is sent, so no wait for another slot
    /// comes between them and the send), or on one of its own when `lent` is `None`.
    pub(crate) async fn send_on(
        &self,
        ticket: &Ticket,
        lent: Option<&Permit>,
        method: Method,
        path_and_query: &str,
        forwarded: &Forwarded,
    ) -> Result<Response<Body>, ProxyError> {
        match lent {
            Some(_) => {
                self.attempts(ticket, None, method, path_and_query, forwarded)
                    .await
            }
            None => self.send(ticket, method, path_and_query, forwarded).await,
        }
    }

    /// Every attempt of one request; `permit` is its own slot (`None`: a slot its caller holds).
    async fn attempts(
        &self,
        ticket: &Ticket,
        permit: Option<Permit>,
        method: Method,
        path_and_query: &str,
        forwarded: &Forwarded,
    ) -> Result<Response<Body>, ProxyError> {
        // One deadline for every attempt: retries share `upstream.timeout`, never extend it.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut delays = retry_delays(if method == Method::GET {
            self.retries
        } else {
            0 // mutations are never retried
        });
        loop {
            self.refuse_now(ticket)?;
            let request = self.request(method.clone(), path_and_query, forwarded)?;
            // From the first attempt on, the charge stays spent (retries are the same request).
            ticket.spend();
            let sent = std::time::Instant::now();
            let result = tokio::time::timeout_at(deadline, self.client.request(request)).await;
            let status = match &result {
                Ok(Ok(response)) => Some(response.status().as_u16()),
                _ => None,
            };
            crate::metrics::upstream(method.as_str(), status, sent.elapsed());
            // The next attempt, if a retry is allowed and its delay ends before the deadline.
            // A retry needs a quarter of the timeout left after its wait: one started just before
            // the deadline would turn GitHub's own answer into our 504.
            let mut next_delay = || {
                delays.next().filter(|delay| {
                    tokio::time::Instant::now() + *delay + self.timeout / 4 <= deadline
                })
            };
            let delay = match result {
                Err(_) => return Err(ProxyError::UpstreamTimeout),
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    if matches!(status, 403 | 429) {
                        return self.limited(response, permit).await;
                    }
                    self.rate_limit
                        .observe(response.status(), response.headers(), false);
                    let delay = matches!(status, 502..=504).then(&mut next_delay).flatten();
                    let Some(delay) = delay else {
                        return Ok(self.wrap(response, permit));
                    };
                    tracing::debug!(status, "retrying an idempotent upstream GET");
                    delay
                }
                Ok(Err(error)) => {
                    let Some(delay) = next_delay() else {
                        return Err(ProxyError::Upstream(Box::new(error)));
                    };
                    tracing::debug!(%error, "retrying an idempotent upstream GET");
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// GitHub's answer for a request refused during a back-off, or `Ok` when none is open.
    pub fn refuse_during_backoff(&self) -> Result<(), ProxyError> {
        match self.rate_limit.backoff() {
            Some(backoff) => Err(ProxyError::BackingOff(
                backoff.answer(self.rate_limit.snapshot().limit),
            )),
            None => Ok(()),
        }
    }

    /// A 403 or 429: read whole (GitHub's error bodies are small; bounded all the same) so the
    /// rate limit can tell a secondary limit by its wording, then handed on as a buffered response.
    async fn limited(
        &self,
        response: Response<Incoming>,
        permit: Option<Permit>,
    ) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = response.into_parts();
        let read = Limited::new(body, MAX_ERROR_BODY).collect();
        // An unreadable body (too large, cut off, stalled) may hold a secondary limit's wording:
        // it counts as one (GitHub's own errors are small JSON; taking a limit for a permission
        // error would send every request after it). A spent count in its headers still waits
        // for the reset.
        let bytes = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) => {
                self.rate_limit.observe(parts.status, &parts.headers, true);
                return Err(ProxyError::Upstream(error));
            }
            Err(_) => {
                self.rate_limit.observe(parts.status, &parts.headers, true);
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        drop(permit);
        let says_secondary = contains_ignore_case(&bytes, b"secondary rate limit");
        if let Some(limited) = self
            .rate_limit
            .observe(parts.status, &parts.headers, says_secondary)
        {
            parts.extensions.insert(limited);
        }
        Ok(Response::from_parts(parts, crate::body::full(bytes)))
    }

    /// One of the ticket's share of the slots (its client's; the proxy's background
    /// revalidations have one of their own; its safety reads none), then one of the upstream
    /// slots; past `max_queue` waiters for a slot, refuses at once.
    async fn slot(&self, share: Option<&Arc<str>>) -> Result<Permit, ProxyError> {
        let share = match share {
            Some(client) => Some(self.share(client).await?),
            None => None,
        };
        let slot = self.any_slot().await?;
        Ok(Permit {
            _slot: slot,
            _share: share,
        })
    }

    /// One of `client`'s share of the slots.
    async fn share(&self, client: &Arc<str>) -> Result<OwnedSemaphorePermit, ProxyError> {
        let share = {
            let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: one entry per configured client name (reloads add at most theirs).
            shares
                .entry(client.clone())
                .or_insert_with(|| {
                    Arc::new(Share {
                        slots: Arc::new(Semaphore::new(self.share_size)),
                        waiting: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        if let Ok(permit) = share.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let place = Queued::enter(&share.waiting);
        if place.ahead >= self.max_queue {
            return Err(ProxyError::UpstreamQueueFull);
        }
        let _counted = Queued::enter(&self.waiting_for_share);
        share
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ProxyError::Internal(Box::new(e)))
    }

    /// One of the upstream slots; past `max_queue` waiters, refuses at once.
    async fn any_slot(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Counted out on drop: a waiter whose client hung up leaves the queue too (counted out
        // only after the wait, such waiters filled `max_queue` for good: every request that
        // found the slots busy was then refused until a restart).
        let place = Queued::enter(&self.queued);
        if place.ahead >= self.max_queue {
            return Err(ProxyError::UpstreamQueueFull);
        }
        let permit = self.slots.clone().acquire_owned().await;
        drop(place);
        permit.map_err(|e| ProxyError::Internal(Box::new(e)))
    }

    /// Requests to GitHub in flight now, and waiting for a slot (or for their client's share).
    pub fn load(&self) -> (usize, usize) {
        let in_flight = self.slots_total - self.slots.available_permits();
        let waiting =
            self.queued.load(Ordering::Relaxed) + self.waiting_for_share.load(Ordering::Relaxed);
        (in_flight, waiting)
    }

    /// The response with a body that holds the upstream slot (if the request had its own)
    /// until it is read or dropped.
    fn wrap(&self, response: Response<Incoming>, permit: Option<Permit>) -> Response<Body> {
        let timeout = self.timeout;
        response.map(|body: Incoming| {
            let body = TimeoutBody::new(timeout, body).map_err(|error| -> BoxError { error });
            match permit {
                Some(permit) => crate::body::boxed(PermitBody {
                    inner: crate::body::boxed(body),
                    _permit: permit,
                }),
                None => crate::body::boxed(body),
            }
        })
    }

    fn request(
        &self,
        method: Method,
        path_and_query: &str,
        forwarded: &Forwarded,
    ) -> Result<Request<Empty<Bytes>>, ProxyError> {
        let uri = format!("{}{path_and_query}", self.base);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, self.token.bearer())
            .header(header::USER_AGENT, self.user_agent.clone())
            .header(header::ACCEPT, forwarded.accept.clone())
            .header("x-github-api-version", forwarded.api_version.clone());
        if let Some(etag) = &forwarded.if_none_match {
            builder = builder.header(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(since) = &forwarded.if_modified_since {
            builder = builder.header(header::IF_MODIFIED_SINCE, since.clone());
        }
        builder
            .body(Empty::new())
            .map_err(|error| ProxyError::Internal(Box::new(error)))
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Largest 403/429 body read to look for GitHub's rate-limit wording.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// ASCII case-insensitive substring search.
fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// The rustls connector every outbound client uses (the upstream API and the container registry):
/// the host's CA roots (else the bundled webpki roots), ring, h2 by ALPN, https only unless
/// `allow_plain_http` (the simulator).
pub(crate) fn https_connector(
    connect_timeout: Duration,
    allow_plain_http: bool,
) -> Result<HttpsConnector<HttpConnector>, BuildError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false); // the TLS wrapper checks the scheme
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let provider = rustls::crypto::ring::default_provider();
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(builder) => builder,
        Err(error) => {
            tracing::warn!(%error, "no system CA roots; using the bundled webpki roots");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .map_err(|error| BuildError(Box::new(error)))?
        }
    };
    // Production: https only. Tests reach the in-process simulator over plain http.
    let builder = if allow_plain_http {
        builder.https_or_http()
    } else {
        builder.https_only()
    };
    Ok(builder.enable_http1().enable_http2().wrap_connector(http))
}

/// The waits before each of `retries` retries: 100 ms, 200 ms, 400 ms ... (at most 6.4 s), each
/// plus up to as much again of jitter, so replicas that failed together do not retry together.
fn retry_delays(retries: u32) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(6400))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(retries as usize)
        .build()
}

/// A body that keeps an upstream slot until it ends.
struct PermitBody {
    inner: Body,
    _permit: Permit,
}

impl hyper::body::Body for PermitBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

// === impl Forwarded ===

impl Forwarded {
    /// Validates the client's headers; an unknown API version is a 400, as at GitHub.
    pub fn from_request(headers: &HeaderMap) -> Result<Self, ProxyError> {
        Self::from_heads(&crate::limits::Heads::scan(headers))
    }

    /// [`Forwarded::from_request`] from the walk's one pass over the headers.
    pub fn from_heads(heads: &crate::limits::Heads<'_>) -> Result<Self, ProxyError> {
        let accept = match heads.accept {
            Some(value) if sane(value, 256) => value.clone(),
            Some(_) => return Err(ProxyError::BadRequest("Invalid Accept header".to_owned())),
            None => HeaderValue::from_static(DEFAULT_ACCEPT),
        };
        let api_version = match heads.api_version {
            None => HeaderValue::from_static(DEFAULT_API_VERSION),
            Some(value) => match API_VERSIONS
                .iter()
                .find(|v| value.as_bytes() == v.as_bytes())
            {
                Some(version) => HeaderValue::from_static(version),
                None => {
                    return Err(ProxyError::BadRequest(format!(
                        "Invalid API version provided. Supported versions: {}",
                        API_VERSIONS.join(", ")
                    )));
                }
            },
        };
        let if_none_match = heads.if_none_match().filter(|v| sane(v, 1024));
        let if_modified_since = heads.if_modified_since.filter(|v| sane(v, 64)).cloned();
        Ok(Self {
            accept,
            api_version,
            if_none_match,
            if_modified_since,
        })
    }
}

/// Visible ASCII (and spaces) only, and not too long.
fn sane(value: &HeaderValue, max: usize) -> bool {
    let bytes = value.as_bytes();
    bytes.len() <= max && bytes.iter().all(|b| *b == b' ' || b.is_ascii_graphic())
}

/// A place in the upstream queue, given up on drop.
struct Queued<'a> {
    count: &'a AtomicUsize,
    /// Waiters already queued when this one arrived.
    ahead: usize,
}

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let ahead = count.fetch_add(1, Ordering::AcqRel);
        Self { count, ahead }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}
