//! [`Reply`]: a response before the headers every answer carries are added, plus GitHub's error
//! bodies in one place.

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;

use super::render::{DOCS_REST, ErrorJson};

/// Documentation link of rate limit errors.
const DOCS_RATE_LIMITS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";

/// Status, body and the headers specific to this answer (they override the common ones).
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
    pub(super) headers: HeaderMap,
    /// Whether this answer counts against the primary rate limit.
    pub(super) consumes: bool,
}

// === impl Reply ===

impl Reply {
    /// `status` with `value` as JSON.
    pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status, Bytes::from(body)),
            Err(_) => Self::error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error", DOCS_REST),
        }
    }

    /// 200 with `value` as JSON.
    pub(super) fn ok<T: Serialize>(value: &T) -> Self {
        Self::json(StatusCode::OK, value)
    }

    /// 204, empty.
    pub(super) fn no_content() -> Self {
        Self::new(StatusCode::NO_CONTENT, Bytes::new())
    }

    /// 304 with an empty body and the ETag; free against the rate limit.
    pub(super) fn not_modified(etag: &str) -> Self {
        Self::new(StatusCode::NOT_MODIFIED, Bytes::new())
            .header("etag", etag)
            .not_counted()
    }

    /// A `basic-error` body: `message`, `documentation_url`, `status`.
    pub(super) fn error(status: StatusCode, message: &str, documentation_url: &str) -> Self {
        let body = ErrorJson {
            message,
            documentation_url,
            status: status.as_u16().to_string(),
        };
        Self::json(status, &body)
    }

    /// 404 Not Found, as GitHub answers unknown paths and anything the caller may not see.
    pub(super) fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND, "Not Found", DOCS_REST)
    }

    /// 400 with a message.
    pub(super) fn bad_request(message: &str) -> Self {
        Self::error(StatusCode::BAD_REQUEST, message, DOCS_REST)
    }

    /// 401 for a missing (`Requires authentication`) or wrong (`Bad credentials`) token.
    pub(super) fn unauthorized(message: &str) -> Self {
        Self::error(StatusCode::UNAUTHORIZED, message, DOCS_REST).not_counted()
    }

    /// 403 primary rate limit exceeded, with `x-ratelimit-remaining: 0`.
    pub(super) fn primary_rate_limit(request_id: &str, limit: u64) -> Self {
        let message = format!(
            "API rate limit exceeded for user ID 1. If you reach out to GitHub Support for help, \
             please include the request ID {request_id}."
        );
        Self::error(StatusCode::FORBIDDEN, &message, DOCS_RATE_LIMITS)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-used", &limit.to_string())
            .not_counted()
    }

    /// `status` (403 or 429) secondary rate limit, with `retry-after` when given.
    pub(super) fn secondary_rate_limit(
        status: StatusCode,
        retry_after: Option<u64>,
        request_id: &str,
    ) -> Self {
        let message = format!(
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try \
             again. If you reach out to GitHub Support for help, please include the request ID \
             {request_id}."
        );
        let docs = format!("{DOCS_RATE_LIMITS}#about-secondary-rate-limits");
        let reply = Self::error(status, &message, &docs).not_counted();
        match retry_after {
            Some(secs) => reply.header("retry-after", &secs.to_string()),
            None => reply,
        }
    }

    /// Adds or replaces a header; values that are not valid header text are skipped.
    pub(super) fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(HeaderName::from_static(name), value);
        }
        self
    }

    /// Marks the answer as free against the primary rate limit.
    pub(super) fn not_counted(mut self) -> Self {
        self.consumes = false;
        self
    }

    fn new(status: StatusCode, body: Bytes) -> Self {
        Self {
            status,
            body,
            headers: HeaderMap::new(),
            consumes: true,
        }
    }
}
