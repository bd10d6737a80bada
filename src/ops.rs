//! The proxy's own endpoints, answered here and never forwarded: `/healthz`, `/readyz` and
//! `/metrics` (no authentication; also on the admin listener), `GET /rate_limit` (the caller's
//! own quota) and `POST /admin/cache/purge` (admins only).
//!
//! They live apart from the request walk ([`crate::proxy`]), which only decides which of them a
//! request is for, and apart from [`crate::metrics`], which keeps the metric names and recorders:
//! rendering `/metrics` reads the whole `AppState`, a layer above the recorders.

use std::sync::{Mutex, atomic::Ordering};

use ::metrics::{counter, gauge};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::{
    auth::Identity,
    body::{self, Body},
    cache::{self, Generations},
    error::ProxyError,
    metrics::{ACCESS_LOG_DROPPED, INVALIDATIONS_PENDING, handle},
    route::PackageType,
    state::AppState,
};

/// The cache purge endpoint (admins only).
pub const PURGE_PATH: &str = "/admin/cache/purge";

/// Whether a request is a health probe: answered at once from memory, so even past
/// `server.max_in_flight` (a load balancer or kubelet reading "overloaded" from its probe takes
/// a replica out when it is merely busy, every replica at once when GitHub is slow). A metrics
/// scrape renders every series: it is shed like any request.
pub fn is_probe(method: &Method, path: &str) -> bool {
    (*method == Method::GET || *method == Method::HEAD) && matches!(path, "/healthz" | "/readyz")
}

/// `/healthz` (alive), `/readyz` (ready unless draining) and `/metrics`, outside the Packages
/// API and without authentication.
/// `metrics` false: `/metrics` lives on the admin listener instead.
pub fn operational(
    state: &AppState,
    method: &Method,
    path: &str,
    metrics: bool,
) -> Option<Response<Body>> {
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    if metrics && path == "/metrics" {
        let mut response = Response::new(body::full(render_metrics(state)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return Some(response);
    }
    let (status, text) = match path {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/readyz" if state.is_draining() => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => (StatusCode::OK, "ready\n"),
        _ => return None,
    };
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Some(response)
}

/// `/metrics`: the Prometheus text, rendered after refreshing the state-mirroring gauges.
pub fn render_metrics(state: &AppState) -> String {
    // The recorder is process-wide: two states in one process (the tests) each set the
    // same gauges. Setting and rendering under one lock makes a scrape show its own state's
    // figures, not another's written in between. Scrapes are rare; the lock is never held
    // across an await.
    static RENDER: Mutex<()> = Mutex::new(());
    let _one_at_a_time = RENDER.lock().unwrap_or_else(|poison| poison.into_inner());
    let handle = handle();
    let rate_limit = state.upstream.rate_limit.snapshot();
    if let Some(limit) = rate_limit.limit {
        gauge!("packages_proxy_upstream_ratelimit_limit").set(limit as f64);
    }
    if let Some(remaining) = rate_limit.remaining {
        gauge!("packages_proxy_upstream_ratelimit_remaining").set(remaining as f64);
    }
    if let Some(reset) = rate_limit.reset {
        gauge!("packages_proxy_upstream_ratelimit_reset_timestamp_seconds").set(reset as f64);
    }
    gauge!("packages_proxy_upstream_backoff_active").set(if rate_limit.backoff.is_some() {
        1.0
    } else {
        0.0
    });
    for kind in crate::error::limit::BackoffKind::ALL {
        let left = match (rate_limit.backoff_kind, rate_limit.backoff) {
            (Some(open), Some(left)) if open == kind => left.as_secs_f64(),
            _ => 0.0,
        };
        gauge!("packages_proxy_upstream_backoff_remaining_seconds", "kind" => kind.as_str())
            .set(left);
    }
    let (in_flight, queued) = state.upstream.load();
    gauge!("packages_proxy_upstream_in_flight").set(in_flight as f64);
    gauge!("packages_proxy_upstream_queued").set(queued as f64);
    gauge!("packages_proxy_mutations_queued").set(state.pacer.waiting() as f64);
    let cache = &state.cache;
    gauge!("packages_proxy_cache_entries").set(cache.entry_count() as f64);
    gauge!("packages_proxy_cache_bytes").set(cache.weighted_size() as f64);
    // (Both run moka's pending maintenance first, so the numbers are exact at scrape time.)
    let stats = &cache.stats;
    counter!("packages_proxy_cache_coalesced_total")
        .absolute(stats.coalesced.load(Ordering::Relaxed));
    counter!("packages_proxy_cache_evictions_total")
        .absolute(stats.evicted.load(Ordering::Relaxed));
    counter!(ACCESS_LOG_DROPPED).absolute(crate::access_log::dropped());
    counter!("packages_proxy_audit_write_failures_total")
        .absolute(state.audit_failures.load(Ordering::Relaxed));
    counter!("packages_proxy_config_reloads_total", "result" => "ok")
        .absolute(state.reloads_ok.load(Ordering::Relaxed));
    counter!("packages_proxy_config_reloads_total", "result" => "failed")
        .absolute(state.reloads_failed.load(Ordering::Relaxed));
    if let Some(shared) = &state.shared {
        gauge!("packages_proxy_shared_tier_up").set(if shared.is_up() { 1.0 } else { 0.0 });
        gauge!(INVALIDATIONS_PENDING).set(cache.generations.diverged().len() as f64);
    }
    gauge!("packages_proxy_ready").set(if state.is_draining() { 0.0 } else { 1.0 });
    handle.render()
}

/// Whether `path` is `/rate_limit` (also under the GHES `/api/v3` prefix).
pub fn is_rate_limit_path(path: &str) -> bool {
    let trimmed = path.trim_start_matches('/');
    trimmed == "rate_limit"
        || trimmed
            .strip_prefix("api/v3/")
            .is_some_and(|p| p.trim_start_matches('/') == "rate_limit")
}

/// `GET /rate_limit`, answered here and never forwarded: the calling client's own quota of
/// requests that need GitHub, at zero until the reset while GitHub has the shared token backing
/// off (its `X-OAuth-Scopes`, as on every answer, come from `handle`).
pub async fn rate_limit(state: &AppState, identity: &Identity) -> Response<Body> {
    let local = identity.limits.upstream.peek();
    let fleet = match state.shared.as_ref().filter(|s| s.is_up()) {
        Some(shared) => {
            let per_minute = identity.limits.quota.upstream_per_minute;
            shared
                .peek(&identity.name, "upstream", per_minute)
                .await
                .ok()
        }
        None => None,
    };
    let mut snapshot = fleet.unwrap_or(local);
    // While GitHub has the shared token backing off, nothing this client sends can reach
    // GitHub: say so (as every uncached answer's `x-ratelimit-*` does), or a tool that checks
    // before a batch starts one that cannot succeed.
    if let Some(backoff) = state.upstream.rate_limit.backoff() {
        snapshot.remaining = 0;
        snapshot.reset = snapshot.reset.max(backoff.reset_epoch());
    }
    let used = snapshot.limit.saturating_sub(snapshot.remaining);
    let bucket = serde_json::json!({
        "limit": snapshot.limit,
        "remaining": snapshot.remaining,
        "reset": snapshot.reset,
        "used": used,
        "resource": "core",
    });
    let body = serde_json::json!({ "resources": { "core": bucket }, "rate": bucket });
    let mut response = Response::new(body::full(body.to_string()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    snapshot.write_headers(headers, "core"); // `X-OAuth-Scopes` is added by `handle`
    response
}

/// `POST /admin/cache/purge`, admins only. Body: `{}` (everything), `{"owner": "acme"}`, or
/// `{"owner": "acme", "package_type": "container", "package_name": "web"}`.
pub async fn purge(
    state: &AppState,
    identity: &Identity,
    request: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if request.method() != Method::POST {
        return Err(ProxyError::NotFound);
    }
    if !identity.admin {
        return Err(ProxyError::Forbidden(
            "Purging the cache needs an admin client".to_owned(),
        ));
    }
    let bytes = Limited::new(request.into_body(), 4096)
        .collect()
        .await
        .map_err(|_| ProxyError::PayloadTooLarge)?
        .to_bytes();
    let scope: PurgeScope = if bytes.iter().all(u8::is_ascii_whitespace) {
        PurgeScope::default()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ProxyError::BadRequest(format!("Problems parsing JSON: {e}")))?
    };
    let known = |owner: &str| {
        state
            .config
            .upstream
            .owners
            .contains(&owner.to_ascii_lowercase())
    };
    let (scopes, purged) = match (&scope.owner, &scope.package_type, &scope.package_name) {
        (None, None, None) => (Generations::scope_of_everything(), "all".to_owned()),
        (Some(owner), None, None) if known(owner) => (
            Generations::scopes_of_owner(owner),
            format!("owner {owner}"),
        ),
        (Some(owner), Some(ty), Some(name))
            if known(owner) && PackageType::parse(ty).is_some() && name.len() <= 255 =>
        {
            let scopes = Generations::scopes_of_package(owner, ty, name);
            (scopes, format!("package {owner}/{ty}/{name}"))
        }
        (Some(_), None, None) | (Some(_), Some(_), Some(_)) => return Err(ProxyError::NotFound),
        _ => {
            return Err(ProxyError::BadRequest(
                "Give nothing, an owner, or an owner with package_type and package_name".to_owned(),
            ));
        }
    };
    cache::invalidate(&state.cache, state.shared.as_deref(), &scopes)
        .await
        .map_err(|_| {
            ProxyError::Unavailable(
                "The shared tier (Redis) is unavailable: a purge must reach every replica"
                    .to_owned(),
            )
        })?;
    if scope.owner.is_none() {
        state.cache.purge_all(); // memory back at once; the key scope already hides old entries
    }
    tracing::info!(client = %identity.name, scope = %purged, "cache purged");
    let body = serde_json::json!({ "purged": purged });
    let mut response = Response::new(body::full(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(response)
}

/// What `POST /admin/cache/purge` removes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeScope {
    owner: Option<String>,
    package_type: Option<String>,
    package_name: Option<String>,
}
