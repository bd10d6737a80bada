//! [`ProxyService`]: the edge every request on the main listener passes before the walk.
//!
//! It does three things, in this order: marks credentials sensitive (so nothing that logs
//! request headers can print them), refuses at once with a 503 when `server.max_in_flight`
//! requests are already being served (overload fails fast instead of queueing; health probes are
//! answered all the same), and runs the
//! walk ([`proxy::handle`]), which turns every error into a GitHub-shaped response.
//!
//! Built once and cloned per connection (two `Arc`s): the one semaphore is shared by every
//! clone, so the limit is global. A hand-written service rather than a tower stack because hyper
//! clones the service for every request: a boxed tower stack paid six allocations per request
//! for what a counter and a header walk do here.

use std::{sync::Arc, time::Instant};

use futures_util::future::{self, Either};
use http::{HeaderMap, Request, header};
use hyper::body::Incoming;

use crate::{
    error::ProxyError,
    ops,
    proxy::{self, Answer, ConnMemo},
    quota::Slots,
    state::AppState,
};

/// The proxy as every connection serves it.
#[derive(Clone, Debug)]
pub struct ProxyService {
    state: Arc<AppState>,
    /// `server.max_in_flight` slots, shared by every clone.
    in_flight: Arc<Slots>,
}

impl ProxyService {
    /// The service over `state`, with its in-flight limit.
    pub fn new(state: Arc<AppState>) -> Self {
        let in_flight = Slots::new(state.config.server.max_in_flight);
        Self { state, in_flight }
    }

    /// Answers one request; never fails. `guard` is held until the answer is built (the
    /// connection counts requests in flight with it).
    ///
    /// The edge's checks and the walk run here, at once: a fresh cache hit comes back ready, with
    /// no future set up for it; anything that waits comes back as one boxed future that owns what
    /// it needs, `guard` and the server's in-flight slot included.
    ///
    /// `memo` is what the connection remembers from its last request, when the walk runs on the
    /// connection itself (HTTP/1). `started` is when the request's head began to arrive, if
    /// the connection saw it (HTTP/1): the log line's duration counts from there.
    pub fn call<G: Send + 'static>(
        &self,
        mut request: Request<Incoming>,
        guard: G,
        memo: Option<&ConnMemo>,
        started: Option<Instant>,
    ) -> Answer {
        mark_sensitive(request.headers_mut());
        let slot = match self.in_flight.try_take() {
            Some(slot) => slot,
            None if ops::is_probe(request.method(), request.uri().path()) => {
                self.in_flight.take_anyway()
            }
            None => return Either::Left(future::ready(ProxyError::Overloaded.into_response())),
        };
        proxy::handle(&self.state, request, guard, slot, memo, started)
    }
}

/// Marks `Authorization` and `Cookie` sensitive before anything could log the request headers.
/// One pass over the few headers a request has: `entry` would hash both names, and reserve room
/// to insert one.
fn mark_sensitive(headers: &mut HeaderMap) {
    for (name, value) in headers.iter_mut() {
        if name == header::AUTHORIZATION || name == header::COOKIE {
            value.set_sensitive(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mark_sensitive;
    use http::{HeaderMap, HeaderValue, header};

    #[test]
    fn every_credential_value_is_marked_sensitive_and_nothing_else() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("p"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        headers.append(header::COOKIE, HeaderValue::from_static("c=1"));
        mark_sensitive(&mut headers);
        for (name, value) in &headers {
            let credential = name == header::AUTHORIZATION || name == header::COOKIE;
            assert_eq!(value.is_sensitive(), credential, "{name}");
        }
        assert_eq!(headers.get_all(header::AUTHORIZATION).iter().count(), 2);
    }
}
