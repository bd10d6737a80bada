//! `build()`: the one tower stack, built once and cloned per connection.
//!
//! Built once so that `ConcurrencyLimit`'s clones share one semaphore: a stack built per
//! connection would make the global limit per-connection.

use std::sync::Arc;

use http::{Request, Response, header};
use tower::{ServiceBuilder, util::BoxCloneService};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::{
    body::Body,
    error::{BoxError, ProxyError},
    proxy,
    state::AppState,
};

/// The proxy as a cloneable service over any request body hyper gives us.
/// The error type is never produced: `map_result` turns every error into a response. It is
/// `ProxyError` (not `Infallible` or `BoxError`) because tower's `map_result` needs `From` the inner
/// error, and hyper's bounds trip over a boxed `dyn Error` in a spawned connection future.
pub type ProxyService = BoxCloneService<Request<hyper::body::Incoming>, Response<Body>, ProxyError>;

/// Builds the stack, outermost layer first.
pub fn build(state: Arc<AppState>) -> ProxyService {
    let max_in_flight = state.config.server.max_in_flight;
    let stack = ServiceBuilder::new()
        // Marks Authorization sensitive before anything could log the request headers.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        // The one point where an edge error (load shed) becomes a GitHub-shaped response; nothing
        // reaches hyper as `Err`, which would close the connection with no response.
        .map_result(|result: Result<Response<Body>, BoxError>| {
            Ok::<_, ProxyError>(result.unwrap_or_else(|e| ProxyError::from_box(e).into_response()))
        })
        // Outside the limit: overload fails fast with 503 instead of queueing.
        .load_shed()
        // One semaphore shared by every clone.
        .concurrency_limit(max_in_flight)
        .service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, BoxError>(proxy::handle(state, request).await) }
        });
    BoxCloneService::new(stack)
}
