//! One request, start to finish: log, authenticate, apply a queued fault, check the API version
//! and the primary rate limit, answer the route, answer 304 for a matching `If-None-Match`, add
//! the headers GitHub puts on every response.
//!
//! Rate limit accounting: every authenticated answer counts one, except 304s and rate limit
//! rejections (real or injected); unauthenticated requests and injected resets count nothing.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CONTENT_TYPE, ETAG, HeaderMap, HeaderName, HeaderValue, IF_NONE_MATCH,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use super::api;
use super::fault::FaultKind;
use super::paging::Query;
use super::render::DOCS_REST;
use super::reply::Reply;
use super::route;
use super::state::SimState;

/// API versions GitHub serves; absent means the default, 2022-11-28.
const API_VERSIONS: [&str; 2] = ["2022-11-28", "2026-03-10"];

/// Headers GitHub sends on every response that do not depend on the request, plus one GitHub does
/// not send (`x-ratelimit-evil`): a header outside the proxy's allow-list that looks like one on
/// it, which must never reach a client, not even through a 304 revalidation.
const FIXED_HEADERS: [(&str, &str); 8] = [
    ("x-github-media-type", "github.v3; format=json"),
    ("x-oauth-scopes", "read:packages, delete:packages, repo"),
    ("x-accepted-oauth-scopes", "read:packages"),
    ("set-cookie", "_octo=GH1.1.test; Path=/"),
    ("cache-control", "private, max-age=60, s-maxage=60"),
    ("vary", "Accept, Authorization, Cookie, X-GitHub-OTP"),
    ("x-ratelimit-resource", "core"),
    ("x-ratelimit-evil", "leaked"),
];

/// Serves one request. `Err` only for an injected reset: hyper then drops the connection unanswered.
pub(super) async fn handle<B>(
    state: Arc<SimState>,
    req: Request<B>,
) -> io::Result<Response<Full<Bytes>>> {
    let _in_flight = state.enter();
    state.record(&req);
    // The registry side (`/v2/...`, `/token`) has its own auth, faults and no API rate limit.
    if let Some(answer) = super::registry::handle(&state, &req) {
        return answer;
    }
    let request_id = state.next_request_id();
    let reply = match reject_unauthenticated(&state, req.headers()) {
        Some(reply) => reply,
        None => {
            // A separate statement, so the fault queue's lock is released before any await.
            let fault = state.faults().take();
            match fault {
                None => answer(&state, &req, &request_id),
                Some(FaultKind::Latency(delay)) => {
                    tokio::time::sleep(delay).await;
                    answer(&state, &req, &request_id)
                }
                Some(FaultKind::SlowAnswer(delay)) => {
                    let reply = answer(&state, &req, &request_id);
                    tokio::time::sleep(delay).await;
                    reply
                }
                Some(FaultKind::Reset) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "injected reset",
                    ));
                }
                Some(FaultKind::Delayed { fault, delay }) => {
                    tokio::time::sleep(delay).await;
                    fault_reply(&state, *fault, &request_id)
                }
                Some(kind) => fault_reply(&state, kind, &request_id),
            }
        }
    };
    Ok(finish(&state, reply, &request_id, req.headers()))
}

/// The normal answer to an authenticated request.
fn answer<B>(state: &SimState, req: &Request<B>, request_id: &str) -> Reply {
    if let Some(version) = req.headers().get("x-github-api-version") {
        let known = version.to_str().is_ok_and(|v| API_VERSIONS.contains(&v));
        if !known {
            let shown = String::from_utf8_lossy(version.as_bytes());
            let message = format!(
                "Invalid API version provided: {shown}. See https://docs.github.com/rest/overview/api-versions for supported versions."
            );
            return Reply::error(StatusCode::BAD_REQUEST, &message, DOCS_REST);
        }
    }
    let snapshot = state.rate().snapshot();
    if snapshot.remaining == 0 {
        return Reply::primary_rate_limit(request_id, snapshot.limit);
    }
    let reply = match route::parse(req.method(), req.uri().path()) {
        Some(route) => api::handle(state, &route, &Query::parse(req.uri().query())),
        None => Reply::not_found(),
    };
    conditional(req, reply)
}

/// Adds a weak ETag to a 200 GET and turns it into a free 304 when `If-None-Match` matches.
fn conditional<B>(req: &Request<B>, reply: Reply) -> Reply {
    if req.method() != Method::GET || reply.status != StatusCode::OK {
        return reply;
    }
    let etag = format!("W/\"{}\"", hex::encode(Sha256::digest(&reply.body)));
    let matched = req
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| etag_matches(v, &etag));
    if !matched {
        return reply.header("etag", &etag);
    }
    Reply::not_modified(&etag)
}

/// Weak comparison against one `If-None-Match` value (a list, or `*`).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    if_none_match
        .split(',')
        .any(|tag| tag.trim() == "*" || opaque(tag) == opaque(etag))
}

/// Checks `Authorization: Bearer <token>` or `token <token>`; `Some(401)` if it is not right.
fn reject_unauthenticated(state: &SimState, headers: &HeaderMap) -> Option<Reply> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Some(Reply::unauthorized("Requires authentication"));
    };
    let token = value.to_str().ok().and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
        known.then(|| token.trim())
    });
    match token {
        Some(token) if token == state.token => None,
        _ => Some(Reply::unauthorized("Bad credentials")),
    }
}

/// The answer an injected fault stands in for (latency, a slow answer and a reset are handled by
/// the caller).
fn fault_reply(state: &SimState, kind: FaultKind, request_id: &str) -> Reply {
    match kind {
        FaultKind::Status(status) => {
            let message = match status {
                StatusCode::INTERNAL_SERVER_ERROR => "Server Error",
                other => other.canonical_reason().unwrap_or("Error"),
            };
            Reply::error(status, message, DOCS_REST)
        }
        FaultKind::PrimaryRateLimit => {
            Reply::primary_rate_limit(request_id, state.rate().snapshot().limit)
        }
        FaultKind::SecondaryRateLimit {
            status,
            retry_after_secs,
        } => Reply::secondary_rate_limit(status, Some(retry_after_secs), request_id),
        FaultKind::SecondaryRateLimitWithoutRetryAfter { status } => {
            Reply::secondary_rate_limit(status, None, request_id)
        }
        FaultKind::Latency(_)
        | FaultKind::SlowAnswer(_)
        | FaultKind::Reset
        | FaultKind::Delayed { .. } => Reply::not_found(),
    }
}

/// Counts the request, then builds the response with GitHub's common headers.
fn finish(
    state: &SimState,
    reply: Reply,
    request_id: &str,
    request: &HeaderMap,
) -> Response<Full<Bytes>> {
    let rate = {
        let mut rate = state.rate();
        rate.snapshot();
        if reply.consumes {
            rate.consume();
        }
        rate.snapshot()
    };
    let selected = request
        .get("x-github-api-version")
        .and_then(|v| v.to_str().ok())
        .filter(|v| API_VERSIONS.contains(v))
        .unwrap_or(API_VERSIONS[0]);
    let mut response = Response::new(Full::new(reply.body.clone()));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    if !reply.body.is_empty() {
        put(CONTENT_TYPE.as_str(), "application/json; charset=utf-8");
    }
    put("x-ratelimit-limit", &rate.limit.to_string());
    put("x-ratelimit-remaining", &rate.remaining.to_string());
    put("x-ratelimit-used", &rate.used.to_string());
    put("x-ratelimit-reset", &rate.reset.to_string());
    put("x-github-request-id", request_id);
    put("x-github-api-version-selected", selected);
    for (name, value) in FIXED_HEADERS {
        put(name, value);
    }
    for (name, value) in &reply.headers {
        headers.insert(name.clone(), value.clone());
    }
    debug_assert!(reply.status != StatusCode::NOT_MODIFIED || headers.contains_key(ETAG));
    response
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists() {
        let etag = "W/\"abc\"";
        assert!(etag_matches("W/\"abc\"", etag));
        assert!(etag_matches("\"abc\"", etag));
        assert!(etag_matches("\"x\", W/\"abc\"", etag));
        assert!(etag_matches("*", etag));
        assert!(!etag_matches("W/\"abd\"", etag));
    }
}
