//! The access log: one line per request, formatted by hand and written in batches off the
//! request path.
//!
//! Operators need a line per request, but through `tracing`'s formatter it cost ~19 % of a cache
//! hit's CPU (a `dyn Visit` call and a `Debug` formatter per field, then one `write` syscall per
//! line). Here a request formats its [`AccessRecord`] into a reused per-thread buffer (no dynamic
//! dispatch, no allocation once warm), copies it into a bounded shared buffer and returns. A
//! writer thread takes the whole buffer when it passes [`FLUSH_BYTES`] or every [`FLUSH_EVERY`],
//! and writes it in one call. The request path never waits for the output: when the buffer is
//! full (stdout blocked or too slow), the line is dropped and counted
//! (`packages_proxy_access_log_dropped_total`). [`close`] writes what is left at shutdown.
//!
//! The binary [`install`]s the writer (stdout, text or JSON per `[log] format`). Without one (the
//! library in tests, the demo) the line goes through `tracing` as an event, as before. Either way
//! the line is written only when `tracing` would log an `INFO` event of target
//! `packages_proxy::proxy`, so `[log] level` and `RUST_LOG` keep deciding (the writer asks once,
//! when it is installed after the subscriber). Lines carry the same
//! fields in both formats: request id, method, client, route template, status, upstream status,
//! cache outcome and duration; never a token or the raw path.

mod format;

use std::{
    cell::RefCell,
    io::Write,
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use http::Method;

/// The target the line has always had (filters such as `packages_proxy::proxy=warn` keep working).
const TARGET: &str = "packages_proxy::proxy";
/// Past this many pending bytes, lines are dropped: ~5,000 lines, 50 ms at 100k requests/s.
const BUFFER_BYTES: usize = 1 << 20;
/// The writer is woken once this much is pending (a few hundred lines per `write`).
const FLUSH_BYTES: usize = 64 << 10;
/// Pending lines wait at most this long on a quiet server.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One request, as its access line reports it.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// The proxy's own request id (the response's `X-Request-Id`, the audit's key).
    pub request_id: &'a str,
    /// The client's own `X-Request-Id`, when it sent a plain one (kept apart, never a key).
    pub client_request_id: Option<&'a str>,
    /// The request method.
    pub method: &'a Method,
    /// The configured client name, once authenticated.
    pub client: Option<&'a str>,
    /// The route template (never the raw path or query).
    pub route: Option<&'static str>,
    /// The status sent.
    pub status: u16,
    /// GitHub's status, when the request went upstream.
    pub upstream_status: Option<u16>,
    /// The cache outcome (`CacheStatus::as_str`), for cacheable reads.
    pub cache: Option<&'static str>,
    /// From the first byte of the request's head (HTTP/1; the moment the proxy took the
    /// request on HTTP/2) to its answer's head being ready.
    pub duration: Duration,
    /// When the answer was ready: the line's time.
    pub at: std::time::Instant,
}

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `tracing`'s text layout: `<time>  INFO packages_proxy::proxy: request key=value ...`.
    Text,
    /// One JSON object per line, with `tracing`'s JSON keys (`timestamp`, `level`, `message`,
    /// the fields, `target`).
    Json,
}

/// Why [`install`] refused.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A writer already runs in this process.
    #[error("the access log writer is already installed")]
    AlreadyInstalled,
    /// The writer thread could not be started.
    #[error("cannot start the access log writer thread")]
    Spawn(#[source] std::io::Error),
}

/// The installed writer: the shared buffer and the thread draining it.
struct Writer {
    format: Format,
    /// Whether `tracing` logs an `INFO` event of [`TARGET`], asked once at [`install`]: the
    /// filter is fixed for the process's life (`[log] level` and `RUST_LOG` are read at start,
    /// and the request path opens no span a directive could match), and asking per request
    /// cost a dispatcher lookup and a walk of the filter's directives on every hit.
    enabled: bool,
    shared: Arc<Shared>,
    /// Signalled by the writer thread once it wrote everything after [`close`].
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

/// What requests and the writer thread share.
struct Shared {
    /// Pending bytes and whether the log is closed. A std `Mutex`: held only to copy one line in
    /// (~200 bytes, no I/O, no `.await`) or to swap the whole buffer out; the `write` happens
    /// outside it, so a slow stdout never holds it.
    pending: Mutex<Pending>,
    /// Wakes the writer when a flush is due or the log closes.
    wake: Condvar,
    /// Lines dropped because the buffer was full (or the log already closed).
    dropped: AtomicU64,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

thread_local! {
    /// Each worker thread formats into its own buffer, kept between requests.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Starts the batching writer for this process, writing to `out` (the binary passes stdout).
pub fn install(format: Format, out: Box<dyn Write + Send>) -> Result<(), InstallError> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            bytes: Vec::with_capacity(FLUSH_BYTES * 2),
            closed: false,
        }),
        wake: Condvar::new(),
        dropped: AtomicU64::new(0),
    });
    let (done_tx, done_rx) = mpsc::channel();
    let writer = Writer {
        format,
        enabled: tracing::enabled!(target: TARGET, tracing::Level::INFO),
        shared: shared.clone(),
        done: Mutex::new(Some(done_rx)),
    };
    WRITER
        .set(writer)
        .map_err(|_| InstallError::AlreadyInstalled)?;
    thread::Builder::new()
        .name("access-log".to_owned())
        .spawn(move || {
            drain(&shared, out);
            let _ = done_tx.send(());
        })
        .map_err(InstallError::Spawn)?;
    Ok(())
}

/// Writes one request's line (or sends it through `tracing` when no writer is installed).
pub fn record(record: &AccessRecord<'_>) {
    let Some(writer) = WRITER.get() else {
        if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            through_tracing(record);
        }
        return;
    };
    if !writer.enabled {
        return;
    }
    LINE.with(|line| {
        // A re-entrant call (impossible today) would find the buffer borrowed: format afresh.
        match line.try_borrow_mut() {
            Ok(mut line) => writer.push_formatted(&mut line, record),
            Err(_) => writer.push_formatted(&mut Vec::with_capacity(512), record),
        }
    });
}

/// Lines dropped so far because the buffer was full (0 without a writer).
pub fn dropped() -> u64 {
    WRITER
        .get()
        .map_or(0, |w| w.shared.dropped.load(Ordering::Relaxed))
}

/// Writes every pending line and stops the writer, waiting at most `limit` for the output
/// (a blocked stdout must not hold up the exit). Later lines are dropped and counted.
pub fn close(limit: Duration) {
    let Some(writer) = WRITER.get() else { return };
    lock(&writer.shared.pending).closed = true;
    writer.shared.wake.notify_one();
    let done = writer
        .done
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .take();
    if let Some(done) = done
        && done.recv_timeout(limit).is_err()
    {
        eprintln!("packages-proxy: the access log could not be written out before exit");
    }
}

/// The line as a `tracing` event, for processes without the writer.
fn through_tracing(r: &AccessRecord<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = r.request_id,
        client_request_id = r.client_request_id,
        method = %r.method,
        client = r.client.unwrap_or("-"),
        route = r.route.unwrap_or("-"),
        status = r.status,
        upstream_status = r.upstream_status,
        cache = r.cache.unwrap_or("none"),
        // Whole microseconds over 1000, as the writer prints them: `0.507`, not the
        // `0.5075019999999999` of `as_secs_f64() * 1000.0`.
        duration_ms = r.duration.as_micros() as f64 / 1000.0,
        "request"
    );
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The writer thread: waits for a full batch, the tick or the close, swaps the buffer out and
/// writes it outside the lock.
fn drain(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(FLUSH_BYTES * 2);
    loop {
        let closed = {
            let mut pending = lock(&shared.pending);
            if !pending.closed && pending.bytes.len() < FLUSH_BYTES {
                pending = shared
                    .wake
                    .wait_timeout(pending, FLUSH_EVERY)
                    .unwrap_or_else(|poison| poison.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.bytes, &mut batch);
            pending.closed
        };
        if !batch.is_empty() {
            // Nowhere to report a failed write but stderr, and no reason to stop logging.
            if let Err(error) = out.write_all(&batch).and_then(|()| out.flush()) {
                eprintln!("packages-proxy: access log write failed: {error}");
            }
            batch.clear();
            batch.shrink_to(FLUSH_BYTES * 2); // a burst after a stall does not stay resident
        }
        if closed {
            return;
        }
    }
}

// === impl Writer ===

impl Writer {
    fn push_formatted(&self, line: &mut Vec<u8>, record: &AccessRecord<'_>) {
        line.clear();
        match self.format {
            Format::Text => format::text(line, record),
            Format::Json => format::json(line, record),
        }
        self.push(line);
    }

    /// Copies one line in, or drops and counts it; never waits for the output.
    fn push(&self, line: &[u8]) {
        let shared = &self.shared;
        let mut pending = lock(&shared.pending);
        let before = pending.bytes.len();
        if pending.closed || before + line.len() > BUFFER_BYTES {
            drop(pending);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        let due = before < FLUSH_BYTES && pending.bytes.len() >= FLUSH_BYTES;
        drop(pending);
        if due {
            // Once per batch: a `notify` is a syscall when the writer sleeps.
            shared.wake.notify_one();
        }
    }
}
