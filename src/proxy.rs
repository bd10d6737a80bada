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

use std::{borrow::Cow, sync::Arc, time::Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::{
    access_log::AccessRecord,
    admission::{self, Payer, Ticket, Work},
    auth::Identity,
    body::Body,
    body_url,
    cache::{self, ClientConditions, FetchSpec},
    error::ProxyError,
    gate::{self, Mutation},
    limits, ops,
    route::{Owner, Route},
    state::AppState,
    tls::PeerCert,
    upstream::Forwarded,
};

/// Header names the walk sets on every answer, parsed once (a `&str` name is parsed per call).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_OAUTH_SCOPES: HeaderName = HeaderName::from_static("x-oauth-scopes");

/// What the log line reports about one request, filled in as the walk goes.
#[derive(Default)]
struct RequestLog {
    client: Option<Arc<str>>,
    route: Option<&'static str>,
    upstream_status: Option<u16>,
    cache: Option<&'static str>,
    /// The scopes the proxy grants the authenticated caller, sent as `X-OAuth-Scopes` on every
    /// answer to it (GitHub's header would describe the org token instead).
    scopes: Option<&'static str>,
}

/// The proxy's own request id and the client's `X-Request-Id`, if it sent a plain one.
#[derive(Clone, Copy)]
struct RequestIds<'a> {
    own: &'a str,
    client: Option<&'a str>,
}

/// Handles one request; never fails (errors become GitHub-shaped responses).
pub async fn handle(state: Arc<AppState>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    // Ours always: the audit log and the log line key on it. The client's is kept beside it.
    let request_id = state.next_request_id();
    let client_request_id = client_request_id(&request);
    let method = request.method().clone();
    let mut log = RequestLog::default();
    let ids = RequestIds {
        own: request_id.to_str().unwrap_or_default(),
        client: client_request_id.as_deref(),
    };
    let result = walk(&state, request, ids, &mut log).await;
    // 8. respond: errors become GitHub's shape; the request id, scopes, metric and log line.
    let mut response = result.unwrap_or_else(ProxyError::into_response);
    response
        .headers_mut()
        .insert(X_REQUEST_ID, request_id.clone());
    if let Some(scopes) = log.scopes {
        let headers = response.headers_mut();
        headers.insert(X_OAUTH_SCOPES, HeaderValue::from_static(scopes));
    }
    let elapsed = started.elapsed();
    crate::metrics::request(
        log.route.unwrap_or("-"),
        response.status().as_u16(),
        log.cache.unwrap_or("none"),
        log.client.as_deref().unwrap_or("-"),
        elapsed,
    );
    crate::access_log::record(&AccessRecord {
        request_id: request_id.to_str().unwrap_or_default(),
        client_request_id: client_request_id.as_deref(),
        method: &method,
        client: log.client.as_deref(),
        route: log.route,
        status: response.status().as_u16(),
        upstream_status: log.upstream_status,
        cache: log.cache,
        duration: elapsed,
    });
    response
}

/// The client behind a request: its bearer token, else its TLS client certificate. Records the
/// client and the scopes it is granted for the log line and the answer's `X-OAuth-Scopes`.
fn authenticate<B>(
    state: &AppState,
    request: &Request<B>,
    log: &mut RequestLog,
) -> Result<Identity, ProxyError> {
    let peer = request.extensions().get::<PeerCert>();
    let identity = state
        .clients
        .load()
        .authenticate_request(request.headers(), peer)?;
    log.client = Some(identity.name.clone());
    log.scopes = Some(granted_scopes(state, &identity));
    Ok(identity)
}

/// The scopes the proxy effectively grants a client: deletes and restores only if some policy
/// rule could allow one for it. Clean-up tools read `X-OAuth-Scopes` before they start.
fn granted_scopes(state: &AppState, identity: &Identity) -> &'static str {
    if state.policy.load().allows_anything_for(&identity.name) {
        "read:packages, write:packages, delete:packages"
    } else {
        "read:packages"
    }
}

async fn walk(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    ids: RequestIds<'_>,
    log: &mut RequestLog,
) -> Result<Response<Body>, ProxyError> {
    // 1. limits
    limits::check_limits(state, &request)?;
    // 2. the proxy's own endpoints
    let path = request.uri().path();
    let metrics_here = state.config.server.admin_listen.is_none();
    if let Some(response) = ops::operational(state, request.method(), path, metrics_here) {
        return Ok(response);
    }
    if ops::is_rate_limit_path(path) && request.method() == Method::GET {
        log.route = Some("/rate_limit");
        let identity = authenticate(state, &request, log)?;
        return Ok(Box::pin(ops::rate_limit(state, &identity)).await);
    }
    if path == ops::PURGE_PATH {
        log.route = Some(ops::PURGE_PATH);
        let identity = authenticate(state, &request, log)?;
        return Box::pin(ops::purge(state, &identity, request)).await;
    }
    // 3. route, 4. authenticate, 5. owner
    let route = Route::parse(request.method(), path, request.uri().query())?;
    log.route = Some(route.template());
    let identity = authenticate(state, &request, log)?;
    check_owner(state, &route)?;
    // 6. admission. Held until the answer is built: the client's cap on requests in flight.
    let _in_flight = identity
        .limits
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::TooManyRequests {
            message: "Too many requests in flight for this client".to_owned(),
            retry_after_secs: 1,
        })?;
    let forwarded = Forwarded::from_request(request.headers())?;
    let ghes = ghes_prefix(path);
    let public_base = public_base(state, ghes);
    // 7. gate, cache or pass-through (each admits what it sends upstream). The rarer branches are
    //    boxed: an `async fn` is as large as its largest `.await`, and this one is set up for
    //    every request, so a hit pays for none of their state.
    if route.operation.is_destructive() {
        let mutation = Mutation {
            route: &route,
            forwarded: &forwarded,
            client: &identity.name,
            limits: &identity.limits,
            request_id: ids.own,
            client_request_id: ids.client,
            dry_run_requested: gate::dry_run_requested(request.headers())?,
            public_base: &public_base,
        };
        let (response, upstream_status) = Box::pin(gate::execute(state, mutation)).await?;
        log.upstream_status = upstream_status;
        return Ok(response);
    }
    if !state.config.cache.enabled {
        let payer = Payer::client(&identity.name, &identity.limits);
        return Box::pin(async {
            let ticket = admission::admit(state, &payer, Work::Read).await?;
            pass_through(state, &ticket, &route, &forwarded, &public_base, log).await
        })
        .await;
    }
    let conditions = ClientConditions {
        no_cache: no_cache(request.headers()),
        if_none_match: forwarded.if_none_match.clone(),
    };
    let mut upstream_headers = forwarded;
    upstream_headers.if_none_match = None;
    upstream_headers.if_modified_since = None;
    let key = cache::key(&route, &upstream_headers, ghes, &state.cache.generations);
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
    let (response, upstream_status, cache_status) =
        cache::serve(state, spec, conditions, asker).await?;
    log.upstream_status = upstream_status;
    log.cache = Some(cache_status.as_str());
    Ok(response)
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
        let mapped = body_url::upstream_if_none_match(tags, public_base);
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
        body_url::apply_streamed(&mut headers, body, limit, upstream_base, public_base).await
    } else {
        body
    };
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// `Cache-Control: no-cache` (or `max-age=0`) or `Pragma: no-cache`: revalidate first.
fn no_cache(headers: &HeaderMap) -> bool {
    let says = |name: header::HeaderName| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .any(|d| d == "no-cache" || d == "max-age=0")
            })
        })
    };
    says(header::CACHE_CONTROL) || says(header::PRAGMA)
}

/// Owners outside the config are 404, like a package the token cannot see.
fn check_owner(state: &AppState, route: &Route) -> Result<(), ProxyError> {
    let upstream = &state.config.upstream;
    let allowed = match &route.owner {
        Owner::AuthenticatedUser => upstream.allow_user_routes,
        // Stored lower-case, and a handful: no folded copy of the login per request.
        Owner::Org(login) | Owner::User(login) => upstream
            .owners
            .iter()
            .any(|o| o.eq_ignore_ascii_case(login)),
    };
    if allowed {
        Ok(())
    } else {
        Err(ProxyError::NotFound)
    }
}

/// Whether the client used the GHES `/api/v3` prefix (with slashes merged).
fn ghes_prefix(path: &str) -> bool {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    segments.next() == Some("api") && segments.next() == Some("v3")
}

/// The base for rewritten `Link` URLs: our public URL, plus `/api/v3` if the client used it.
fn public_base(state: &AppState, ghes: bool) -> Arc<str> {
    state.public_bases[usize::from(ghes)].clone()
}

/// The client's `X-Request-Id` if it is short and plain (it goes into logs and the audit log).
fn client_request_id(request: &Request<Incoming>) -> Option<String> {
    let value = request.headers().get(X_REQUEST_ID)?;
    let b = value.as_bytes();
    let plain = !b.is_empty()
        && b.len() <= 64
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c));
    plain.then(|| String::from_utf8_lossy(b).into_owned())
}
