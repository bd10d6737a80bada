//! CORS as api.github.com answers it, so that a GitHub client running in a web page (Octokit in
//! a browser) works against the proxy by changing its base URL, as any other client does.
//!
//! A preflight (`OPTIONS`) of a path the proxy serves is a 204 naming the methods and request
//! headers it takes, cacheable for a day; every answer to a request that carries an `Origin`
//! (errors included, so a page can read the message) has `Access-Control-Allow-Origin: *` and
//! lists the response headers a script may read (ETag, Link, the rate-limit figures, ours).
//!
//! `*`, as GitHub sends: a caller is named by the bearer token its page holds and sends itself,
//! never by a cookie a browser adds on its own, so no origin gains anything it lacks. The
//! proxy's own unauthenticated endpoints (`/healthz`, `/readyz`, `/metrics`) answer no CORS: a
//! page on the internet must not read an internal replica's metrics through a visitor's browser.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// The response headers a page's script may read: GitHub's list, and the proxy's own.
const EXPOSE_HEADERS: &str = "ETag, Link, Location, Retry-After, X-GitHub-OTP, \
    X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Used, X-RateLimit-Resource, \
    X-RateLimit-Reset, X-OAuth-Scopes, X-Accepted-OAuth-Scopes, X-Poll-Interval, \
    X-GitHub-Media-Type, X-GitHub-SSO, X-GitHub-Request-Id, Deprecation, Sunset, \
    X-GitHub-Api-Version-Selected, Age, Cache-Status, X-Request-Id";

/// The request headers a page may send: GitHub's, and those the proxy reads besides.
/// `User-Agent` too: Octokit sets one, and a browser that lets it (Firefox) asks for it.
const ALLOW_HEADERS: &str = "Authorization, Accept, Accept-Encoding, Content-Type, If-Match, \
    If-Modified-Since, If-None-Match, If-Unmodified-Since, Cache-Control, Pragma, User-Agent, \
    X-GitHub-OTP, X-GitHub-Api-Version, X-Requested-With, X-Request-Id, X-Packages-Proxy-Dry-Run";

/// The methods the proxied routes take (reads, deletes, restores).
const ALLOW_METHODS: &str = "GET, HEAD, POST, DELETE";

/// How long a browser may keep a preflight's answer, as GitHub allows: a day.
const MAX_AGE: &str = "86400";

/// Adds the headers every answer to a browser's request carries.
pub fn add(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
}

/// The answer to a preflight of a path the proxy serves.
pub fn preflight() -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_the_proxy_reads_may_be_sent_and_every_one_it_sets_read() {
        let allowed: Vec<_> = ALLOW_HEADERS
            .split(", ")
            .map(str::to_ascii_lowercase)
            .collect();
        for name in [
            "authorization",
            "if-none-match",
            "if-modified-since",
            "cache-control",
            "x-github-api-version",
            crate::gate::DRY_RUN_HEADER,
            "x-request-id",
            "user-agent",
        ] {
            assert!(allowed.iter().any(|a| a == name), "{name}");
        }
        let exposed: Vec<_> = EXPOSE_HEADERS
            .split(", ")
            .map(str::to_ascii_lowercase)
            .collect();
        for name in [
            "etag",
            "link",
            "x-ratelimit-remaining",
            "cache-status",
            "x-request-id",
        ] {
            assert!(exposed.iter().any(|e| e == name), "{name}");
        }
    }
}
