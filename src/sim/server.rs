//! Accept loop: one task per connection, served by hyper-util's auto builder (HTTP/1.1 with
//! keep-alive, or h2 with prior knowledge). Shutdown stops accepting and drops open connections.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::handler;
use super::state::SimState;

/// Accepts until shutdown is signalled.
pub(super) async fn serve(listener: TcpListener, state: Arc<SimState>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut stop = state.shutdown_signal();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let conn_state = Arc::clone(&state);
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            handler::handle(Arc::clone(&conn_state), req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let mut conn_stop = state.shutdown_signal();
        tokio::spawn(async move {
            tokio::select! {
                // Errors here are client hang-ups and injected resets: nothing to report.
                _ = conn => {}
                () = stopped(&mut conn_stop) => {}
            }
        });
    }
}

/// Resolves once shutdown is signalled (the sender lives in `SimState`, so it is never dropped
/// first).
async fn stopped(signal: &mut watch::Receiver<bool>) {
    // Bind and drop the borrowed value here: it must not live across the caller's awaits.
    let _ = signal.wait_for(|stopped| *stopped).await;
}
