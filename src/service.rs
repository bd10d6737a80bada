//! [`ProxyService`]: the edge every request on the main listener passes before the walk.
//!
//! It does three things, in this order: marks credentials sensitive (so nothing that logs
//! request headers can print them), refuses at once with a 503 when `server.max_in_flight`
//! requests are already being served (overload fails fast instead of queueing), and runs the
//! walk ([`proxy::handle`]), which turns every error into a GitHub-shaped response.
//!
//! Built once and cloned per connection (two `Arc`s): the one semaphore is shared by every
//! clone, so the limit is global. A hand-written service rather than a tower stack because hyper
//! clones the service for every request: a boxed tower stack paid six allocations per request
//! for what a `try_acquire` and a header walk do here.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, header};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use crate::{body::Body, error::ProxyError, proxy, state::AppState};

/// The proxy as every connection serves it.
#[derive(Clone, Debug)]
pub struct ProxyService {
    state: Arc<AppState>,
    /// `server.max_in_flight` permits, shared by every clone.
    in_flight: Arc<Semaphore>,
}

impl ProxyService {
    /// The service over `state`, with its in-flight limit.
    pub fn new(state: Arc<AppState>) -> Self {
        let in_flight = Arc::new(Semaphore::new(state.config.server.max_in_flight));
        Self { state, in_flight }
    }

    /// Answers one request; never fails. `guard` is held until the answer is built (the
    /// connection counts requests in flight with it).
    ///
    /// The edge's checks run here, at once, and the returned future owns what it needs: a
    /// connection passes it to hyper as it is, rather than awaiting it inside an `async` block
    /// of its own, which would hold the walk's state machine twice: 13 KB set up and copied for
    /// every request that way, 3 KB now.
    pub fn call<G: Send + 'static>(
        &self,
        mut request: Request<Incoming>,
        guard: G,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        mark_sensitive(request.headers_mut());
        let permit = self.in_flight.clone().try_acquire_owned();
        let state = self.state.clone();
        async move {
            let _guard = guard;
            let Ok(_permit) = permit else {
                return ProxyError::Overloaded.into_response();
            };
            proxy::handle(state, request).await
        }
    }
}

/// Marks `Authorization` and `Cookie` sensitive before anything could log the request headers.
fn mark_sensitive(headers: &mut HeaderMap) {
    for name in [header::AUTHORIZATION, header::COOKIE] {
        if let header::Entry::Occupied(mut entry) = headers.entry(name) {
            for value in entry.iter_mut() {
                value.set_sensitive(true);
            }
        }
    }
}
