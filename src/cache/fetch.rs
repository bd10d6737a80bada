//! One upstream fetch for the cache: the fleet-wide single flight through the shared tier when
//! there is one, the conditional GET (revalidating by ETag), and the buffered answer.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{Entry, Failure, FetchSpec, Fetched, Freshness, StoredHeaders, cacheable};
use crate::{
    admission::Ticket, body::Body, error::ProxyError, ratelimit::RateLimited, state::AppState,
};

/// A fetch that, with the shared tier up, first asks L2 and takes the fleet-wide lock, so one
/// replica fetches for the whole fleet; the answer is written through to L2.
///
/// `ticket` pays for the upstream request; an answer from L2 gives it back. With `l2_within`
/// (a client's `no-cache`), an L2 copy is taken only if GitHub confirmed it less than that long
/// ago: a fresh copy alone would answer every `no-cache` until its TTL ran out.
pub(super) async fn fetch_fleet(
    state: &Arc<AppState>,
    spec: &FetchSpec,
    stale: Option<Arc<Entry>>,
    ticket: Ticket,
    l2_within: Option<Duration>,
) -> Fetched {
    // A replica whose generations diverged from the fleet's keeps off the L2 until the shared
    // tier replayed them: its keys may name entries the fleet wrote for other contents.
    let Some(shared) = state
        .shared
        .as_ref()
        .filter(|s| s.is_up() && !state.cache.generations.is_diverged())
    else {
        return fetch(state, spec, stale, &ticket).await;
    };
    let config = &state.cache.config;
    let (swr, sie) = (config.stale_while_revalidate, config.stale_if_error);
    let confirmed =
        |entry: &Entry| l2_within.is_none_or(|within| entry.age(Instant::now()) < within);
    if let Some(entry) = shared.l2_get(&spec.key).await
        && entry.freshness(Instant::now(), swr, sie) == Freshness::Fresh
        && confirmed(&entry)
    {
        ticket.refund().await;
        return Fetched::FromL2(Arc::new(entry));
    }
    // Redis trouble while locking: fetch ourselves rather than wait.
    let lock = match shared.lock(&spec.key).await {
        Ok(Some(token)) => Some(token),
        Ok(None) => match shared.wait_for(&spec.key).await {
            Some(entry) if confirmed(&entry) => {
                ticket.refund().await;
                return Fetched::FromL2(Arc::new(entry));
            }
            // The leader failed (or answered from an older copy): fetch ourselves, unlocked.
            _ => None,
        },
        Err(_) => None,
    };
    // The lock lives `shared.lock_ttl`; an upstream call may last `upstream.timeout` (and
    // retries), so the holder renews it for as long as the fetch runs.
    let fetched = match &lock {
        Some(token) => tokio::select! {
            fetched = fetch(state, spec, stale, &ticket) => fetched,
            never = shared.keep_renewed(&spec.key, token) => match never {},
        },
        None => fetch(state, spec, stale, &ticket).await,
    };
    if let Fetched::Answer(entry, _) = &fetched
        && cacheable(entry.status)
    {
        shared
            .l2_put(&spec.key, entry, entry.ttl + swr.max(sie))
            .await;
    }
    if let Some(token) = &lock {
        // Also on failure: waiters see the lock gone without an answer and stop waiting.
        shared.unlock(&spec.key, token).await;
    }
    fetched
}

/// One upstream GET, revalidating `stale` by its ETag; the body is buffered.
async fn fetch(
    state: &Arc<AppState>,
    spec: &FetchSpec,
    stale: Option<Arc<Entry>>,
    ticket: &Ticket,
) -> Fetched {
    let mut forwarded = spec.forwarded.clone();
    forwarded.if_none_match = stale.as_ref().and_then(|entry| entry.etag.clone());
    forwarded.if_modified_since = None;
    let path = spec.route.path_and_query();
    let response = match state
        .upstream
        .send(ticket, Method::GET, &path, &forwarded)
        .await
    {
        Ok(response) => response,
        Err(error) => {
            let failure = match error {
                ProxyError::UpstreamTimeout => Failure::Timeout,
                ProxyError::BackingOff(answer) => {
                    return Fetched::Failed(Failure::BackingOff(answer));
                }
                ProxyError::UpstreamQueueFull => return Fetched::Failed(Failure::QueueFull),
                _ => Failure::Unreachable,
            };
            tracing::warn!(error = %error, route = %spec.route.template(), "upstream fetch failed");
            return Fetched::Failed(failure);
        }
    };
    let (parts, body) = response.into_parts();
    let now = Instant::now();
    // A rate limit for this key (it opened or met a back-off): never stored, and a stale
    // answer is preferred to it.
    let limited = parts.extensions.get::<RateLimited>().is_some();
    if parts.status == StatusCode::NOT_MODIFIED {
        return match stale {
            Some(stale) => {
                let mut entry = (*stale).clone();
                entry.fetched_at = now;
                entry.fetched_wall = std::time::SystemTime::now();
                refresh_headers(&mut entry, &parts.headers);
                Fetched::Answer(Arc::new(entry), StatusCode::NOT_MODIFIED.as_u16())
            }
            None => Fetched::Failed(Failure::Unreachable),
        };
    }
    let limit = usize::try_from(state.cache.config.max_entry_bytes).unwrap_or(usize::MAX);
    let body = match read_body(body, limit).await {
        Ok(body) => body,
        Err(failure) => {
            tracing::warn!(?failure, route = %spec.route.template(), "reading the upstream body failed");
            return Fetched::Failed(failure);
        }
    };
    let mut headers =
        state
            .upstream
            .response_headers(&spec.route, &spec.public_base, &parts.headers);
    let status = parts.status.as_u16();
    // GitHub's tag revalidates upstream; on JSON answers the client sees the proxy's own.
    let etag = headers.get(header::ETAG).cloned();
    let body = crate::body_url::apply(&mut headers, body, state.upstream.base(), &spec.public_base);
    let entry = Arc::new(Entry {
        status: parts.status,
        etag,
        headers: StoredHeaders::new(&headers),
        body,
        fetched_at: now,
        fetched_wall: std::time::SystemTime::now(),
        ttl: state.cache.ttl(&spec.route, parts.status),
    });
    if limited {
        return Fetched::Limited(entry);
    }
    Fetched::Answer(entry, status)
}

/// Buffers a body up to `limit` bytes.
pub(crate) async fn read_body(mut body: Body, limit: usize) -> Result<Bytes, Failure> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        // A body that stalls past `upstream.timeout` timed out (a 504, `…-timeout`); any other
        // failure is a broken connection.
        let frame = frame.map_err(|error| match ProxyError::from_box(error) {
            ProxyError::UpstreamTimeout => Failure::Timeout,
            _ => Failure::Unreachable,
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(Failure::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    // Exactly sized: a grown buffer may hold up to twice the body in every cached entry.
    Ok(Bytes::copy_from_slice(&buf))
}

/// A 304 refreshes the stored answer's headers (RFC 9111 section 4.3.4: fresh rate-limit
/// numbers, a new request id), but only those the allow-list admits: a header off the list must
/// not reach clients through a revalidation either. `ETag` and `Content-Type` stay as stored:
/// they describe the representation clients hold.
fn refresh_headers(entry: &mut Entry, from: &http::HeaderMap) {
    let fresh = crate::upstream::filter_response_headers(from);
    let mut headers = entry.headers.to_map();
    for name in fresh.keys() {
        if name == header::ETAG || name == header::CONTENT_TYPE {
            continue;
        }
        headers.remove(name);
        for value in fresh.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    entry.headers = StoredHeaders::new(&headers);
}
