//! `ProxyError`: every way a request can fail, and the one place an error becomes HTTP.
//!
//! Handlers return `Result<Response<Body>, ProxyError>`; [`ProxyError::into_response`] turns the error
//! into GitHub's error shape (`{"message", "documentation_url"}`) with a status picked by what failed:
//! the client (4xx), the upstream (502/504), or us (500/503). The detail is logged once, here; the
//! client sees only safe text. GitHub's own error answers are not `ProxyError`s: they pass through
//! whole as ordinary responses.

use std::error::Error as StdError;

use http::{HeaderValue, Response, StatusCode, header};

pub use crate::body::BoxError;
use crate::body::{self, Body};

pub mod limit;

use limit::{BucketSnapshot, LimitAnswer};

/// Where GitHub's REST docs live; our own errors point there like GitHub's do.
const DOCS: &str = "https://docs.github.com/rest/packages/packages";

/// Everything the proxy itself can answer with instead of the upstream's response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not a Packages API operation we serve (or an owner we do not serve).
    #[error("Not Found")]
    NotFound,
    /// No credentials, or credentials that match no configured client.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The client is known but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed (query parameter, header value).
    #[error("{0}")]
    BadRequest(String),
    /// The call would break something that depends on its target (a tagged image index
    /// references the version to delete).
    #[error("{0}")]
    Conflict(String),
    /// The request is well formed but cannot be carried out as asked (422, as GitHub says).
    #[error("{0}")]
    Unprocessable(String),
    /// The request target is longer than `server.max_uri_bytes`.
    #[error("Request URI too long")]
    UriTooLong,
    /// Too many or too large request headers.
    #[error("Request header fields too large")]
    HeadersTooLarge,
    /// The request body is larger than any Packages API call takes.
    #[error("Request body too large")]
    PayloadTooLarge,
    /// A budget or queue is full; retry later.
    #[error("{message}")]
    TooManyRequests {
        /// What is full.
        message: String,
        /// Seconds until a retry has a chance.
        retry_after_secs: u64,
    },
    /// The client spent its own quota.
    #[error("{message}")]
    Quota {
        /// Which quota.
        message: &'static str,
        /// `x-ratelimit-resource` value.
        resource: &'static str,
        /// The bucket's state.
        snapshot: BucketSnapshot,
    },
    /// GitHub told us to slow down; nothing is sent upstream until the back-off ends. Answered
    /// as GitHub answers a rate-limited request, so GitHub's clients wait and retry.
    #[error("{}", .0.message())]
    BackingOff(LimitAnswer),
    /// Background work (a revalidation nobody waits for) is not spent below the reserve.
    #[error("The shared token's rate limit is below the reserve kept for clients' requests")]
    ReserveKept,
    /// Too many requests wait for an upstream slot.
    #[error("Too many requests are waiting for GitHub; retry later")]
    UpstreamQueueFull,
    /// Something the call depends on is unavailable (a safety check could not run).
    #[error("{0}")]
    Unavailable(String),
    /// The audit log cannot be written, so the destructive call was not sent (the source is the
    /// audit log's `AuditError`, boxed so that this module names nothing above it).
    #[error("Audit log unavailable; the call was not sent")]
    Audit(#[source] BoxError),
    /// The proxy is at its concurrency limit and sheds load rather than queueing.
    #[error("Service overloaded, try again")]
    Overloaded,
    /// The request's body did not arrive in time.
    #[error("The request body did not arrive in time")]
    RequestTimeout,
    /// The proxy is shutting down.
    #[error("Service is shutting down")]
    ShuttingDown,
    /// The client closed its request before the call was sent (nobody reads this answer; it
    /// names the outcome in the audit log).
    #[error("the client closed the request before it was sent")]
    ClientGone,
    /// The upstream could not be reached or broke the connection.
    #[error("upstream request failed")]
    Upstream(#[source] BoxError),
    /// The upstream did not answer within the configured time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// A bug or an impossible state on our side.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

// === impl ProxyError ===

impl ProxyError {
    /// The HTTP status for this error: the only place this mapping lives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::TooManyRequests { .. } | Self::Quota { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BackingOff(answer) => answer.status(),
            Self::UpstreamQueueFull | Self::ReserveKept => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unavailable(_) | Self::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded | Self::ShuttingDown | Self::ClientGone => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Classifies a boxed error (a body's, a timeout's).
    pub fn from_box(error: BoxError) -> Self {
        if is_caused_by::<tokio::time::error::Elapsed>(&*error)
            || is_caused_by::<tower_http::timeout::TimeoutError>(&*error)
        {
            return Self::UpstreamTimeout;
        }
        match error.downcast::<ProxyError>() {
            Ok(proxy) => *proxy,
            Err(other) => Self::Internal(other),
        }
    }

    /// The message clients see; never contains upstream detail or secrets.
    fn public_message(&self) -> String {
        match self {
            Self::Upstream(_) => "Upstream GitHub API unreachable".to_owned(),
            Self::UpstreamTimeout => "Upstream GitHub API timed out".to_owned(),
            Self::Internal(_) => "Internal proxy error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Renders GitHub's error shape and logs the detail once.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %DisplayChain(&self), status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request refused");
        }
        if let Self::BackingOff(answer) = &self {
            let mut response =
                error_response_with_docs(status, &answer.message(), answer.documentation_url());
            answer.write_headers(response.headers_mut());
            return response;
        }
        let mut response = error_response(status, &self.public_message());
        if let Self::Quota {
            resource, snapshot, ..
        } = &self
        {
            snapshot.write_headers(response.headers_mut(), resource);
        }
        let retry_after = match &self {
            Self::Overloaded | Self::ShuttingDown | Self::UpstreamQueueFull => Some(1),
            Self::Quota { snapshot, .. } => Some(snapshot.retry_after.as_secs_f64().ceil() as u64),
            Self::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, Self::PayloadTooLarge | Self::RequestTimeout) {
            // The rest of the body is never read, so the connection cannot carry another
            // request: said, so that a client does not send its next one into a closed socket
            // (hyper drops the header from HTTP/2 answers, where it has no meaning).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<BoxError> for ProxyError {
    fn from(error: BoxError) -> Self {
        Self::from_box(error)
    }
}

/// A JSON error body in GitHub's shape, with `status` as GitHub adds it.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    error_response_with_docs(status, message, DOCS)
}

/// [`error_response`] pointing at another page of GitHub's docs.
pub fn error_response_with_docs(status: StatusCode, message: &str, docs: &str) -> Response<Body> {
    let mut response = Response::new(body::full(error_json(status, message, docs)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// GitHub's error shape as JSON text: what every error answer of the proxy carries.
pub fn error_json(status: StatusCode, message: &str, docs: &str) -> String {
    serde_json::json!({
        "message": message,
        "documentation_url": docs,
        "status": status.as_str(),
    })
    .to_string()
}

/// [`error_json`] with the Packages API's documentation.
pub fn error_json_default(status: StatusCode, message: &str) -> String {
    error_json(status, message, DOCS)
}

/// True when `error` or any of its sources is an `E` (linkerd's `is_caused_by`).
pub fn is_caused_by<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<E>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Displays an error with its chain of sources, for the one log line.
pub(crate) struct DisplayChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
