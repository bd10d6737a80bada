//! Response shaping: what a client sees of an upstream answer's headers, on every path
//! (pass-through, cache store and revalidation, shared tier, destructive calls). An allow-list
//! of headers passes; anything else (`X-OAuth-Scopes`, which describes the org token,
//! `Set-Cookie`, unknown headers) is dropped because it is not on it; `Link` is rewritten onto
//! the proxy's public URL ([`crate::link`]).
//!
//! It sits beside the upstream client so the layers that forward (the cache, the gate, the
//! request walk) call down into it rather than into each other.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::Upstream;
use crate::{link, route::Route};

/// Response headers a client may see (`link` is rewritten separately).
const PASS_HEADERS: [&str; 18] = [
    "content-type",
    "etag",
    "last-modified",
    "cache-control",
    "x-github-request-id",
    "x-github-media-type",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-used",
    "x-ratelimit-reset",
    "x-ratelimit-resource",
    "retry-after",
    // Which API version answered, and what the answer varies on: clients and their caches read them.
    "x-github-api-version-selected",
    "vary",
    // What the endpoint needs (the same for every caller); `x-oauth-scopes` describes the org
    // token, so it is not here: the proxy writes the caller's own scopes instead.
    "x-accepted-oauth-scopes",
    // The requested API version nears retirement: the client chose it, so it must hear of it.
    "deprecation",
    "sunset",
    // SAML SSO: a 403's link to authorise the token, and `partial-results` on lists that left
    // SSO-protected orgs out (without it such a list looks complete).
    "x-github-sso",
];

/// Whether a response header is on the allow-list (`Link` aside, which is rewritten).
pub fn is_passed_header(name: &HeaderName) -> bool {
    PASS_HEADERS.contains(&name.as_str())
}

/// Copies the allow-listed response headers; `Link` is handled by the caller.
///
/// The values are copied, not cloned: hyper's parsed values share the connection's read buffer,
/// and a cached entry holding one would keep that whole buffer (kilobytes) alive per entry. They
/// are copied into *one* buffer and sliced from it, so an entry's dozen values are one allocation
/// and one reference count: cloning them for each cache hit touches one cache line, not twelve.
pub fn filter_response_headers(from: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(PASS_HEADERS.len() + 2);
    let mut kept: Vec<(HeaderName, std::ops::Range<usize>)> =
        Vec::with_capacity(PASS_HEADERS.len());
    let mut buffer = bytes::BytesMut::with_capacity(512);
    for name in PASS_HEADERS {
        let name = HeaderName::from_static(name);
        for value in from.get_all(&name) {
            let start = buffer.len();
            buffer.extend_from_slice(value.as_bytes());
            kept.push((name.clone(), start..buffer.len()));
        }
    }
    let shared = buffer.freeze();
    for (name, range) in kept {
        // The bytes came from valid header values, so this cannot fail; skip if it ever did.
        if let Ok(value) = HeaderValue::from_maybe_shared(shared.slice(range)) {
            out.append(name, value);
        }
    }
    out
}

// === impl Upstream ===

impl Upstream {
    /// The headers a client sees of an upstream answer: the allow-list, and `Link` rewritten.
    pub fn response_headers(
        &self,
        route: &Route,
        public_base: &str,
        upstream: &HeaderMap,
    ) -> HeaderMap {
        let mut headers = filter_response_headers(upstream);
        // Several lines are one list (RFC 9110, 5.3): every line is rewritten, none passed on.
        let lines: Vec<&str> = upstream
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !lines.is_empty()
            && let Some(rewritten) =
                link::rewrite(&lines.join(", "), self.base(), public_base, route)
            && let Ok(value) = HeaderValue::try_from(rewritten)
        {
            headers.insert(header::LINK, value);
        }
        headers
    }
}
