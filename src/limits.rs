//! Input limits hyper does not apply itself, checked first on every request: a request past
//! them is refused before it is routed or authenticated.

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use hyper::body::{Body as _, Incoming};

use crate::{error::ProxyError, state::AppState};

/// Largest request body we read past; no Packages API call takes a body.
pub(crate) const MAX_BODY: u64 = 1024;

/// The request headers the walk reads, found in the same pass that sizes them. Looked up one
/// by one, each was a hash of its name and a probe: eight of them on every cache hit.
/// Each is the name's first value, as `HeaderMap::get` gives it.
#[derive(Default, Clone, Copy)]
pub struct Heads<'a> {
    /// `Authorization`.
    pub authorization: Option<&'a HeaderValue>,
    /// `Accept`.
    pub accept: Option<&'a HeaderValue>,
    /// `X-GitHub-Api-Version`.
    pub api_version: Option<&'a HeaderValue>,
    /// `If-None-Match`: the first line; [`Heads::if_none_match`] gives every line's tags.
    if_none_match: Option<&'a HeaderValue>,
    /// The headers, when `If-None-Match` came on more than one line (RFC 9110 §5.3: one list).
    if_none_match_lines: Option<&'a HeaderMap>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<&'a HeaderValue>,
    /// The client's `X-Request-Id`.
    pub request_id: Option<&'a HeaderValue>,
    /// `Cache-Control: no-cache` (or `max-age=0`) or `Pragma: no-cache`, in any of their values.
    pub no_cache: bool,
    /// `Origin`: a browser's request, answered with CORS headers (see `crate::cors`).
    pub origin: bool,
    /// `Authorization` came more than once: refused (400), since a front proxy that reads the
    /// last one and this proxy, reading the first, would disagree on who the client is.
    authorization_repeated: bool,
    /// `X-GitHub-Api-Version` came more than once with different values: refused (400) rather
    /// than the first silently winning over a second that may be invalid.
    api_version_conflict: bool,
    content_length: Option<&'a HeaderValue>,
    /// Name and value bytes of every header, as [`check_limits`] counts them.
    bytes: usize,
}

/// Never prints the `Authorization` value (a client's token).
impl std::fmt::Debug for Heads<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heads")
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("accept", &self.accept)
            .field("api_version", &self.api_version)
            .field("if_none_match", &self.if_none_match)
            .field("if_modified_since", &self.if_modified_since)
            .field("request_id", &self.request_id)
            .field("no_cache", &self.no_cache)
            .finish_non_exhaustive()
    }
}

/// `X-GitHub-Api-Version` and `X-Request-Id`, parsed once.
const X_GITHUB_API_VERSION: HeaderName = HeaderName::from_static("x-github-api-version");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl<'a> Heads<'a> {
    /// One pass over `headers`.
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut heads = Heads::default();
        for (name, value) in headers {
            heads.bytes += name.as_str().len() + value.len() + 4;
            let slot = if name == header::AUTHORIZATION {
                heads.authorization_repeated |= heads.authorization.is_some();
                &mut heads.authorization
            } else if name == header::ACCEPT {
                &mut heads.accept
            } else if name == header::IF_NONE_MATCH {
                if heads.if_none_match.is_some() {
                    heads.if_none_match_lines = Some(headers);
                }
                &mut heads.if_none_match
            } else if name == header::IF_MODIFIED_SINCE {
                &mut heads.if_modified_since
            } else if name == header::CONTENT_LENGTH {
                &mut heads.content_length
            } else if name == header::CACHE_CONTROL || name == header::PRAGMA {
                heads.no_cache |= says_no_cache(value);
                continue;
            } else if name == X_GITHUB_API_VERSION {
                heads.api_version_conflict |= heads.api_version.is_some_and(|v| v != value);
                &mut heads.api_version
            } else if name == X_REQUEST_ID {
                &mut heads.request_id
            } else if name == header::ORIGIN {
                heads.origin = true;
                continue;
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        heads
    }
}

impl Heads<'_> {
    /// Whether the request has an `If-None-Match` at all (then `If-Modified-Since` is ignored,
    /// RFC 9110 §13.1.3, even when its list was too long to use).
    pub fn has_if_none_match(&self) -> bool {
        self.if_none_match.is_some()
    }

    /// `If-None-Match` as one value: its lines joined with `, ` when it came on several (a
    /// client or an intermediary may split a list), as RFC 9110 §5.3 reads them.
    pub fn if_none_match(&self) -> Option<HeaderValue> {
        let Some(headers) = self.if_none_match_lines else {
            return self.if_none_match.cloned();
        };
        let mut joined = Vec::new();
        for line in headers.get_all(header::IF_NONE_MATCH) {
            if !joined.is_empty() {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(line.as_bytes());
        }
        HeaderValue::from_bytes(&joined).ok()
    }
}

/// A `Cache-Control` or `Pragma` value asking to revalidate first.
fn says_no_cache(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',')
            .map(|d| d.trim().to_ascii_lowercase())
            .any(|d| d == "no-cache" || d == "max-age=0")
    })
}

/// Input limits hyper does not apply itself: URI length (414), header bytes (431), body size
/// (413; no Packages API call takes a body).
pub fn check_limits(
    state: &AppState,
    request: &Request<Incoming>,
    heads: &Heads<'_>,
) -> Result<(), ProxyError> {
    let server = &state.config.server;
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > server.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    if heads.bytes > server.max_header_bytes || request.headers().len() > server.max_headers {
        return Err(ProxyError::HeadersTooLarge);
    }
    if heads.authorization_repeated {
        return Err(ProxyError::BadRequest(
            "Send one Authorization header, not several".to_owned(),
        ));
    }
    if heads.api_version_conflict {
        return Err(ProxyError::BadRequest(
            "Send one X-GitHub-Api-Version header, not several".to_owned(),
        ));
    }
    let declared = heads
        .content_length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) || request.body().size_hint().lower() > MAX_BODY {
        return Err(ProxyError::PayloadTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_finds_first_values_and_any_no_cache() {
        let mut headers = HeaderMap::new();
        headers.append("authorization", HeaderValue::from_static("Bearer one"));
        headers.append("Authorization", HeaderValue::from_static("Bearer two"));
        headers.append("accept", HeaderValue::from_static("application/json"));
        headers.append(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        headers.append("x-request-id", HeaderValue::from_static("abc"));
        headers.append("cache-control", HeaderValue::from_static("max-age=60"));
        let heads = Heads::scan(&headers);
        assert_eq!(heads.authorization.unwrap(), "Bearer one");
        assert!(heads.authorization_repeated, "two Authorization lines");
        assert_eq!(heads.accept.unwrap(), "application/json");
        assert_eq!(heads.api_version.unwrap(), "2022-11-28");
        assert_eq!(heads.request_id.unwrap(), "abc");
        assert!(heads.if_none_match().is_none() && heads.if_modified_since.is_none());
        assert!(!heads.no_cache);
        let counted: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        assert_eq!(heads.bytes, counted);

        headers.append(
            "cache-control",
            HeaderValue::from_static("private, No-Cache"),
        );
        assert!(Heads::scan(&headers).no_cache);
        let mut pragma = HeaderMap::new();
        pragma.append("pragma", HeaderValue::from_static("no-cache"));
        assert!(Heads::scan(&pragma).no_cache);
        pragma.insert("pragma", HeaderValue::from_static("max-age=0"));
        assert!(Heads::scan(&pragma).no_cache);
        assert!(!Heads::scan(&HeaderMap::new()).no_cache);
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer secret-token"),
        );
        let printed = format!("{:?}", Heads::scan(&headers));
        assert!(!printed.contains("secret-token"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
    }
}
