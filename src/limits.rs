//! Input limits hyper does not apply itself, checked first on every request: a request past
//! them is refused before it is routed or authenticated.

use http::{Request, header};
use hyper::body::{Body as _, Incoming};

use crate::{error::ProxyError, state::AppState};

/// Largest request body we read past; no Packages API call takes a body.
const MAX_BODY: u64 = 1024;

/// Input limits hyper does not apply itself: URI length (414), header bytes (431), body size
/// (413; no Packages API call takes a body).
pub fn check_limits(state: &AppState, request: &Request<Incoming>) -> Result<(), ProxyError> {
    let server = &state.config.server;
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > server.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > server.max_header_bytes || request.headers().len() > server.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) || request.body().size_hint().lower() > MAX_BODY {
        return Err(ProxyError::PayloadTooLarge);
    }
    Ok(())
}
