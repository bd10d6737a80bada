//! Metric names and recorders, through the `metrics` facade and `metrics-exporter-prometheus`
//! (no default features: they pull aws-lc-rs; [`crate::ops`] renders `/metrics` itself).
//!
//! Labels are bounded: route *templates* (never raw paths), status classes, cache outcomes and
//! configured client names. Gauges that mirror state (cache size, GitHub's rate limit, queues) are
//! set at scrape time from the one source of truth rather than tracked twice
//! ([`crate::ops::render_metrics`]).

use std::{cell::RefCell, sync::OnceLock, time::Duration};

use foldhash::{HashMap, HashMapExt as _};

use metrics::{Counter, Histogram, counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by route template, status class, cache outcome and client.
pub const REQUESTS: &str = "packages_proxy_requests_total";
/// Time to answer a request, by route template.
pub const REQUEST_DURATION: &str = "packages_proxy_request_duration_seconds";
/// Requests sent to GitHub, by method and status class (`error` when no answer came).
pub const UPSTREAM_REQUESTS: &str = "packages_proxy_upstream_requests_total";
/// Time until GitHub's response head.
pub const UPSTREAM_DURATION: &str = "packages_proxy_upstream_duration_seconds";
/// Requests sent to the container registry (multi-arch guard), by status class (`error`: no
/// answer).
pub const REGISTRY_REQUESTS: &str = "packages_proxy_registry_requests_total";
/// Time for one registry request, body included.
pub const REGISTRY_DURATION: &str = "packages_proxy_registry_duration_seconds";
/// Multi-arch guard decisions, by decision (allow, refuse, unavailable, off, whole_package).
pub const GUARD: &str = "packages_proxy_multi_arch_guard_decisions_total";
/// Destructive calls by outcome (completed, failed, denied, refused, dry_run).
pub const DESTRUCTIVE: &str = "packages_proxy_destructive_decisions_total";
/// Access log lines dropped because the writer's buffer was full (stdout blocked or too slow).
pub const ACCESS_LOG_DROPPED: &str = "packages_proxy_access_log_dropped_total";
/// Certificate reloads of the TLS listener, by result (`ok`, `rejected`: the old pair stays).
pub const TLS_RELOADS: &str = "packages_proxy_tls_reloads_total";
/// Invalidation scopes this replica bumped alone (Redis failed mid-invalidation) and has not yet
/// replayed fleet-wide. Above 0, other replicas may still serve what this one deleted, and this
/// one stays off the L2 until the replay; it should fall back to 0 soon after Redis answers.
pub const INVALIDATIONS_PENDING: &str = "packages_proxy_shared_invalidations_pending";
/// Shared-tier subscriptions that failed (to connect, resync or keep answering).
pub const SHARED_FAILURES: &str = "packages_proxy_shared_failures_total";

/// Latency buckets, 0.5 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// The process-wide Prometheus recorder (installed once; several proxies in one test process
/// share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".to_owned()), &BUCKETS);
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            Err(error) => {
                tracing::error!(%error, "metric buckets rejected; using summaries");
                PrometheusBuilder::new().build_recorder()
            }
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        handle
    })
}

/// `2xx`, `4xx`, ...
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A config reload whose file also changed settings only a restart applies.
pub fn reload_unapplied() {
    counter!("packages_proxy_config_unapplied_total").increment(1);
}

/// One certificate reload of the TLS listener: `ok`, `rejected`, or `unreadable` (once a spell).
pub fn tls_reload(result: &'static str) {
    counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// One answered request.
pub fn request(
    route: &'static str,
    status: u16,
    cache: &'static str,
    client: &str,
    elapsed: Duration,
) {
    with_handles(
        route,
        status_class(status),
        cache,
        client,
        |counter, histogram| {
            counter.increment(1);
            histogram.record(elapsed.as_secs_f64());
        },
    );
}

/// The label parts of one request series besides the client, by address and length: all are
/// `&'static str`, so hashing six words stands for hashing three strings (two equal strings at
/// different addresses are two keys for the same series: harmless).
type SeriesKey = [usize; 6];

/// Handles by series, then by client name. Every part is bounded (templates, classes, outcomes,
/// configured client names), so the table is too. foldhash, not SipHash: these keys are ours.
type HandleTable = HashMap<SeriesKey, HashMap<Box<str>, (Counter, Histogram)>>;

/// The handles a thread used last, with the series and client they belong to: a busy
/// connection (a CI poller, a load balancer's) asks for the same series request after request,
/// and comparing six words and a name costs a fraction of the two hash lookups.
struct Last {
    series: SeriesKey,
    client: String,
    handles: (Counter, Histogram),
}

thread_local! {
    /// Registered handles, per worker thread: building labels and looking them up in the registry
    /// costs ~450 ns a request. Per thread rather than one `RwLock`ed map: no lock or shared
    /// cache line on the hit path, and the client name is looked up as a `&str` (no allocation).
    /// The handles of a series are the same on every thread (they point into one registry).
    static HANDLES: RefCell<(Option<Last>, HandleTable)> = RefCell::new((None, HashMap::new()));
}

/// Runs `record` on the handles of one series, registering them on first use.
fn with_handles(
    route: &'static str,
    class: &'static str,
    cache: &'static str,
    client: &str,
    record: impl FnOnce(&Counter, &Histogram),
) {
    let series = [
        route.as_ptr() as usize,
        route.len(),
        class.as_ptr() as usize,
        class.len(),
        cache.as_ptr() as usize,
        cache.len(),
    ];
    HANDLES.with(|cell| {
        let (last, table) = &mut *cell.borrow_mut();
        if let Some(last) = last.as_ref()
            && last.series == series
            && last.client == client
        {
            return record(&last.handles.0, &last.handles.1);
        }
        let by_client = table.entry(series).or_default();
        let handles = match by_client.get(client) {
            Some(handles) => handles.clone(),
            None => {
                let labels = [
                    ("route", route.to_owned()),
                    ("status_class", class.to_owned()),
                    ("cache", cache.to_owned()),
                    ("client", client.to_owned()),
                ];
                let handles = (
                    counter!(REQUESTS, &labels),
                    histogram!(REQUEST_DURATION, "route" => route),
                );
                by_client.insert(Box::from(client), handles.clone());
                handles
            }
        };
        record(&handles.0, &handles.1);
        // The name's buffer is reused: a thread that alternates between series allocates nothing.
        let mut name = last.take().map(|last| last.client).unwrap_or_default();
        name.clear();
        name.push_str(client);
        *last = Some(Last {
            series,
            client: name,
            handles,
        });
    })
}

/// Drains histogram samples into their buckets now and then, so memory stays flat when nobody
/// scrapes `/metrics` (the exporter otherwise keeps every sample until the next render).
pub fn spawn_upkeep() {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_ok() {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle().run_upkeep();
            }
        });
    }
}

/// One upstream exchange (`status` `None`: no answer).
pub fn upstream(method: &str, status: Option<u16>, elapsed: Duration) {
    let class = status.map_or("error", status_class);
    counter!(UPSTREAM_REQUESTS, "method" => method.to_owned(), "status_class" => class)
        .increment(1);
    histogram!(UPSTREAM_DURATION).record(elapsed.as_secs_f64());
}

/// A back-off opened on this replica (GitHub's answer or another replica's announcement).
pub fn backoff_opened(kind: &'static str) {
    counter!("packages_proxy_upstream_backoffs_total", "kind" => kind).increment(1);
}

/// One request to GitHub charged to `client`'s quota (`proxy` for the proxy's own background
/// work), by why it was made.
pub fn charged(client: &str, work: &'static str) {
    counter!("packages_proxy_upstream_charged_total", "client" => client.to_owned(), "work" => work)
        .increment(1);
}

/// One container registry exchange (`status` `None`: no answer).
pub fn registry(status: Option<u16>, elapsed: Duration) {
    let class = status.map_or("error", status_class);
    counter!(REGISTRY_REQUESTS, "status_class" => class).increment(1);
    histogram!(REGISTRY_DURATION).record(elapsed.as_secs_f64());
}

/// One multi-arch guard decision.
pub fn guard(decision: &'static str) {
    counter!(GUARD, "decision" => decision).increment(1);
}

/// One destructive decision.
pub fn destructive(outcome: &str) {
    counter!(DESTRUCTIVE, "outcome" => outcome.to_owned()).increment(1);
}
