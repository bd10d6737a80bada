//! packages-proxy: one org token in front of GitHub's Packages REST API, shared safely by teams.
//!
//! Map of the crate, in the order a request meets it:
//!
//! - [`server`]: accept loop, connection cap, readiness, drain.
//! - [`service`]: the one tower stack (sensitive headers, load shed, concurrency limit).
//! - [`proxy`]: the request walk and its log line, written by [`access_log`] (batched, off the
//!   request path).
//! - [`route`]: path checks and the typed Packages API routes (the wall around the org token).
//! - [`auth`]: client credentials (token or certificate) -> client, with its [`quota`]s.
//! - [`admission`]: the one gate every request to GitHub passes: back-off, reserve, and who
//!   pays (the client's quota, fleet-wide with Redis; or the proxy for its background work).
//! - [`cache`]: moka, the cache key, coalescing, stale answers, invalidation.
//! - [`upstream`]: the pooled rustls client, forwarded and returned headers, the upstream slots,
//!   retries, and the [`ratelimit`] (GitHub's rate-limit headers, the reserve, the back-off).
//! - [`shared`]: the optional Redis tier replicas share (L2, fleet-wide locks, pace, quotas,
//!   invalidations, back-offs).
//! - [`link`]: `Link` rewriting onto the proxy's public URL; [`body_url`]: the same for API URLs
//!   in JSON bodies, and the proxy's ETag for a rewritten body.
//! - [`gate`]: the destructive path: [`policy`] decision, the [`protections`] of every matching
//!   rule (protected tags, the multi-arch [`guard`] over image manifests read from the container
//!   [`registry`], dry run, [`rule_budget`]s), [`pace`] slot, write-ahead [`audit`] record, the
//!   one upstream mutation, invalidation.
//! - [`error`]: `ProxyError` and the one error -> response map.
//! - [`metrics`]: metric names and `/metrics`.
//!
//! Around them: [`config`] (TOML -> validated `Config`), [`reload`] (swap clients and policy on
//! SIGHUP or file change), [`secret`] (org token and client token hashes that cannot print),
//! [`state`] (what requests share), [`tls`] (the optional HTTPS listener: reloading certificate,
//! client certificates), [`body`] (the body type), [`undo`] (`audit list` and
//! `audit restore`), [`reconcile`] (intents left without an outcome, settled at start), [`demo`]
//! (simulator + proxy in one process) and [`sim`] (the simulated Packages API used by tests,
//! benchmarks and the demo).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod body;
pub mod body_url;
pub mod cache;
pub mod config;
pub mod demo;
pub mod error;
pub mod gate;
pub mod guard;
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
