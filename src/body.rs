//! The one response body type and helpers to build it.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

/// Boxed error of bodies and clients (re-exported as `error::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every response body the proxy produces: buffered JSON, empty, or a streamed upstream body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
