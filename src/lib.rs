//! packages-proxy: one org token in front of GitHub's Packages REST API, shared safely by teams.
//!
//! Map of the crate, in layers from the top (what starts and serves) to the bottom (what
//! everything uses); a module calls down, never up into the walk:
//!
//! **Serving**
//! - [`server`]: accept loop, connection cap, readiness, drain, the admin listener.
//! - [`service`]: the edge of every request around the walk (sensitive headers, the global
//!   in-flight limit that sheds overload at once).
//! - [`reload`] (swap clients and policy on SIGHUP or file change), [`reconcile`] (intents left
//!   without an outcome, settled at start), [`undo`] (`audit list` and `audit restore`),
//!   [`demo`] (simulator + proxy in one process).
//!
//! **The request walk**
//! - [`proxy`]: the walk as a checklist of phases (limits, own endpoints, route, authenticate,
//!   owner, admission, gate or cache or pass-through, respond) and its log line, written by
//!   [`access_log`] (batched, off the request path).
//!
//! **What the walk calls, one module per phase**
//! - [`limits`]: the input limits hyper does not apply (URI, headers, body).
//! - [`ops`]: the proxy's own endpoints: `/healthz`, `/readyz`, `/metrics` (rendered from the
//!   state), `GET /rate_limit`, `POST /admin/cache/purge`.
//! - [`route`]: path checks and the typed Packages API routes (the wall around the org token).
//! - [`cors`]: preflights and the CORS headers of answers to browsers, as api.github.com's.
//! - [`auth`]: client credentials (token or certificate) -> client, with its [`quota`]s.
//! - [`admission`]: the one gate every request to GitHub passes: back-off, reserve, and who
//!   pays (the client's quota, fleet-wide with Redis; or the proxy for its background work).
//! - [`gate`]: the destructive path: [`policy`] decision, the [`protections`] of every matching
//!   rule (protected tags, the multi-arch [`guard`] over image manifests read from the container
//!   [`registry`], dry run, [`rule_budget`]s: a rule's `max_per_hour`), [`pace`] slot,
//!   write-ahead [`audit`] record (its [`audit::Phase`] and [`audit::Decision`]), the one
//!   upstream mutation, invalidation.
//! - [`cache`]: moka, the cache key, coalescing, stale answers, invalidation.
//!
//! **Upstream**
//! - [`upstream`]: the pooled rustls client, forwarded headers, the upstream slots, retries, and
//!   [`upstream::shape`] (the response headers a client sees, `Link` rewritten by [`link`]);
//!   [`body_url`] rewrites API URLs in JSON bodies and gives a rewritten body the proxy's ETag.
//! - [`ratelimit`]: GitHub's rate limit for the org token (`x-ratelimit-*`, the reserve, the
//!   back-off).
//! - [`shared`]: the optional Redis tier replicas share (L2, fleet-wide locks, pace, quotas,
//!   invalidations, back-offs).
//!
//! **Foundations**
//! - [`state`]: what requests share (`AppState`).
//! - [`tls`]: the optional HTTPS listener (acceptor, reloading certificate, client
//!   certificates), built from [`config::tls`].
//! - [`config`] (TOML -> validated `Config`; [`config::tls`] the TLS settings, their file checks
//!   and the certificate fingerprint), [`secret`] (org token and client token hashes that cannot
//!   print).
//! - [`error`]: `ProxyError` and the one error -> response map, with [`error::limit`] (what a
//!   client is told when a quota or GitHub's rate limit refuses it); [`body`]: the body type.
//! - [`metrics`]: metric names and the recorders (rendering `/metrics` is [`ops`]'s);
//!   `header_value`: hot-path header values formatted on the stack.
//!
//! Beside them: [`sim`], the simulated Packages API used by tests, benchmarks and the demo.
//!
//! The bottom imports nothing above it: `error` (with `body`), `route`, `secret`, `metrics`,
//! `header_value`, and `tls`'s settings in `config::tls`. The Redis tier gets the parts of the
//! state it keeps in step through [`shared::Replica`], not the state itself.
//!
//! Not yet strictly layered (issue 17): `config` holds the compiled [`policy::Policy`] (and
//! `policy` and `rule_budget` import each other), and below `state` the cache's `serve` and
//! fetch, [`admission`], [`registry`]'s reads and [`guard`] still take `&AppState`, while
//! [`upstream`] takes admission's `Ticket`. Together these still make one import circle of
//! `config`, `policy`, `protections`, `rule_budget`, `guard`, `audit`, `auth`, `quota`, `tls`,
//! `admission`, `cache`, `registry`, `shared`, `upstream` and `state`.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod body;
pub mod body_url;
pub mod cache;
pub mod config;
pub mod cors;
pub mod demo;
pub mod error;
pub mod gate;
pub mod guard;
mod header_value;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod ops;
pub mod pace;
pub mod policy;
pub mod protections;
pub mod proxy;
pub mod quota;
pub mod ratelimit;
pub mod reconcile;
pub mod registry;
pub mod reload;
pub mod route;
pub mod rule_budget;
pub mod secret;
pub mod server;
pub mod service;
pub mod shared;
pub mod sim;
pub mod state;
pub mod tls;
pub mod undo;
pub mod upstream;
