//! The one response body type and helpers to build it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Frame, SizeHint};

/// Boxed error of bodies and clients (re-exported as `error::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every response body the proxy produces: buffered bytes (a cache hit's, JSON the proxy writes,
/// empty), or a streamed one (an upstream body, a rewritten one) behind a box.
///
/// Buffered bytes are held inline: a hit's body is one refcounted `Bytes`, and boxing it cost an
/// allocation and a dynamic call for every poll of every answer.
#[derive(Debug)]
pub struct Body {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// All of it, sent as one frame (`None` once sent, or when empty).
    Full(Option<Bytes>),
    /// Streamed.
    Boxed(BoxBody<Bytes, BoxError>),
}

/// A body holding `bytes` in full.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    let bytes = bytes.into();
    Body {
        kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
    }
}

/// An empty body.
pub fn empty() -> Body {
    Body {
        kind: Kind::Full(None),
    }
}

/// A streamed body.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
{
    Body {
        kind: Kind::Boxed(body.boxed()),
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Boxed(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    #[tokio::test]
    async fn a_full_body_is_one_frame_of_exact_size() {
        let body = full("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abc");
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        for body in [empty(), full(Bytes::new())] {
            assert_eq!(body.size_hint().exact(), Some(0));
            assert!(body.is_end_stream());
            assert!(body.collect().await.unwrap().to_bytes().is_empty());
        }
    }

    #[tokio::test]
    async fn a_boxed_body_streams_through() {
        let inner =
            http_body_util::Full::new(Bytes::from_static(b"xyz")).map_err(|never| match never {});
        let body = boxed(inner);
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"xyz");
    }
}
