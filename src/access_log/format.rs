//! The two line layouts, written straight into a byte buffer: no `fmt::Write`, no `dyn`, no
//! allocation once the buffer is warm. They follow `tracing-subscriber`'s text and JSON layouts,
//! so access lines read like the other log lines.

use std::{
    cell::Cell,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{AccessRecord, TARGET};

thread_local! {
    /// The last whole second formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS` text:
    /// the date arithmetic runs once a second, not once a line.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    /// A wall-clock reading (since the Unix epoch) and the monotonic instant it was taken at:
    /// a line's time is read off it rather than off the wall clock, which the request already
    /// read once as an `Instant`. Renewed after [`ANCHOR_FOR`], so a clock step or slew shows
    /// in the lines within a second (a slew moves the clock by at most 0.5 ms a second).
    static ANCHOR: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// How long one wall-clock reading serves a thread's lines.
const ANCHOR_FOR: Duration = Duration::from_secs(1);

/// `2026-11-30T03:47:00.123456Z  INFO packages_proxy::proxy: request request_id="..." ...`:
/// strings quoted as `tracing` prints them (`Debug`), the method bare (`Display`).
pub(super) fn text(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    timestamp(out, r.at);
    out.extend_from_slice(b"  INFO ");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b": request request_id=");
    plain(out, r.request_id);
    if let Some(id) = r.client_request_id {
        out.extend_from_slice(b" client_request_id=");
        quoted(out, id, Escape::Debug);
    }
    middle(out, r, Layout::Text);
    millis(out, r.duration.as_micros());
    out.push(b'\n');
}

/// The text layout's fields from the method to `duration_ms=`.
fn text_middle(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    out.extend_from_slice(b" method=");
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.extend_from_slice(b" client=");
    quoted(out, r.client.unwrap_or("-"), Escape::Debug);
    out.extend_from_slice(b" route=");
    plain(out, r.route.unwrap_or("-"));
    out.extend_from_slice(b" status=");
    number(out, u64::from(r.status));
    if let Some(upstream) = r.upstream_status {
        out.extend_from_slice(b" upstream_status=");
        number(out, u64::from(upstream));
    }
    out.extend_from_slice(b" cache=");
    plain(out, r.cache.unwrap_or("none"));
    out.extend_from_slice(b" duration_ms=");
}

/// `{"timestamp":"...","level":"INFO","message":"request","request_id":"...",...,"target":"..."}`
pub(super) fn json(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, r.at);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
    plain(out, r.request_id);
    if let Some(id) = r.client_request_id {
        out.extend_from_slice(b",\"client_request_id\":");
        quoted(out, id, Escape::Json);
    }
    middle(out, r, Layout::Json);
    millis(out, r.duration.as_micros());
    out.extend_from_slice(b",\"target\":\"");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// The JSON layout's fields from the method to `"duration_ms":`.
fn json_middle(out: &mut Vec<u8>, r: &AccessRecord<'_>) {
    out.extend_from_slice(b",\"method\":");
    quoted(out, r.method.as_str(), Escape::Json);
    out.extend_from_slice(b",\"client\":");
    quoted(out, r.client.unwrap_or("-"), Escape::Json);
    out.extend_from_slice(b",\"route\":");
    plain(out, r.route.unwrap_or("-"));
    out.extend_from_slice(b",\"status\":");
    number(out, u64::from(r.status));
    if let Some(upstream) = r.upstream_status {
        out.extend_from_slice(b",\"upstream_status\":");
        number(out, u64::from(upstream));
    }
    out.extend_from_slice(b",\"cache\":");
    plain(out, r.cache.unwrap_or("none"));
    out.extend_from_slice(b",\"duration_ms\":");
}

/// Which layout a memoised middle was written in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Text,
    Json,
}

/// A line's fields from the method to the duration's name, as this thread last wrote them, and
/// what they were written from: a busy connection (a CI poller, a load balancer's) sends the
/// same request again and again, and copying the bytes costs a fraction of writing a dozen
/// pieces, quoting the client name and printing the status.
struct Middle {
    layout: Layout,
    method: http::Method,
    client: Option<String>,
    /// `&'static` templates and outcomes: compared by address and length (two equal strings at
    /// different addresses only cost a rewrite).
    route: Option<(usize, usize)>,
    cache: Option<(usize, usize)>,
    status: u16,
    upstream_status: Option<u16>,
    bytes: Vec<u8>,
}

thread_local! {
    static MIDDLE: std::cell::RefCell<Option<Middle>> = const { std::cell::RefCell::new(None) };
}

/// A `&'static str` by address and length.
fn addr(s: Option<&'static str>) -> Option<(usize, usize)> {
    s.map(|s| (s.as_ptr() as usize, s.len()))
}

impl Middle {
    fn holds(&self, r: &AccessRecord<'_>, layout: Layout) -> bool {
        self.status == r.status
            && self.upstream_status == r.upstream_status
            && self.route == addr(r.route)
            && self.cache == addr(r.cache)
            && self.layout == layout
            && self.method == *r.method
            && self.client.as_deref() == r.client
    }
}

/// Writes `r`'s middle fields in `layout`: a copy of this thread's last ones when they were
/// written from the same values.
fn middle(out: &mut Vec<u8>, r: &AccessRecord<'_>, layout: Layout) {
    let write = |out: &mut Vec<u8>| match layout {
        Layout::Text => text_middle(out, r),
        Layout::Json => json_middle(out, r),
    };
    MIDDLE.with(|memo| {
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return write(out);
        };
        match memo.as_mut() {
            Some(last) if last.holds(r, layout) => {}
            Some(last) => {
                last.layout = layout;
                last.method.clone_from(r.method);
                match (&mut last.client, r.client) {
                    (Some(kept), Some(client)) => kept.replace_range(.., client),
                    (kept, client) => *kept = client.map(str::to_owned),
                }
                last.route = addr(r.route);
                last.cache = addr(r.cache);
                last.status = r.status;
                last.upstream_status = r.upstream_status;
                last.bytes.clear();
                write(&mut last.bytes);
            }
            None => {
                let mut bytes = Vec::with_capacity(160);
                write(&mut bytes);
                *memo = Some(Middle {
                    layout,
                    method: r.method.clone(),
                    client: r.client.map(str::to_owned),
                    route: addr(r.route),
                    cache: addr(r.cache),
                    status: r.status,
                    upstream_status: r.upstream_status,
                    bytes,
                });
            }
        }
        if let Some(last) = memo.as_ref() {
            out.extend_from_slice(&last.bytes);
        }
    })
}

/// How a string is quoted.
#[derive(Clone, Copy)]
enum Escape {
    /// Rust's `Debug` for `str` (what `tracing`'s text layout prints).
    Debug,
    /// A JSON string.
    Json,
}

/// `"value"` for a value of ours that never needs escaping (our request ids, route templates,
/// cache outcomes): three of every line's five strings, copied without a scan.
fn plain(out: &mut Vec<u8>, value: &str) {
    debug_assert!(!needs_escaping(value), "{value:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// Whether `value` has a byte either layout escapes.
fn needs_escaping(value: &str) -> bool {
    value
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f)
}

/// `"value"`, escaped: client names come from the config and may need it (the common case is
/// one scan and one copy).
fn quoted(out: &mut Vec<u8>, value: &str, escape: Escape) {
    out.push(b'"');
    if !needs_escaping(value) {
        out.extend_from_slice(value.as_bytes());
    } else {
        escaped(out, value, escape);
    }
    out.push(b'"');
}

#[cold]
fn escaped(out: &mut Vec<u8>, value: &str, escape: Escape) {
    let mut text = String::new();
    match escape {
        Escape::Debug => {
            for c in value.chars() {
                text.extend(c.escape_debug());
            }
        }
        Escape::Json => {
            for c in value.chars() {
                match c {
                    '"' => text.push_str("\\\""),
                    '\\' => text.push_str("\\\\"),
                    '\n' => text.push_str("\\n"),
                    '\r' => text.push_str("\\r"),
                    '\t' => text.push_str("\\t"),
                    c if u32::from(c) < 0x20 => {
                        text.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    c => text.push(c),
                }
            }
        }
    }
    out.extend_from_slice(text.as_bytes());
}

/// A decimal integer.
fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Microseconds as milliseconds with three decimals (`0.042`, `12.500`).
fn millis(out: &mut Vec<u8>, micros: u128) {
    let micros = u64::try_from(micros).unwrap_or(u64::MAX);
    number(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// The wall-clock time of `at`, since the Unix epoch.
fn wall(at: Instant) -> Duration {
    ANCHOR.with(|anchor| {
        if let Some((mono, wall)) = anchor.get()
            && let Some(since) = at.checked_duration_since(mono)
            && since < ANCHOR_FOR
        {
            return wall + since;
        }
        let mono = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        anchor.set(Some((mono, wall)));
        // `at` was read before `mono` (it is when the answer was ready), or just after.
        match at.checked_duration_since(mono) {
            Some(ahead) => wall + ahead,
            None => wall.saturating_sub(mono.saturating_duration_since(at)),
        }
    })
}

/// `at` as RFC 3339 UTC with microseconds (`2026-11-30T03:47:00.123456Z`).
fn timestamp(out: &mut Vec<u8>, at: Instant) {
    let since = wall(at);
    let secs = since.as_secs();
    let text = SECOND.with(|cached| {
        let (second, text) = cached.get();
        if second == secs {
            return text;
        }
        let text = civil(secs);
        cached.set((secs, text));
        text
    });
    out.extend_from_slice(&text);
    out.push(b'.');
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix second (humantime's RFC 3339, without its `Z`). Once a
/// second per thread: `timestamp` caches it.
fn civil(secs: u64) -> [u8; 19] {
    use std::io::Write as _;
    let at = UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let mut text = [0u8; 20]; // `2026-11-30T03:47:00Z`
    // Years past 9999 do not fit: the text stays zeros rather than panicking.
    let _ = write!(&mut text[..], "{}", humantime::format_rfc3339_seconds(at));
    let mut civil = [0u8; 19];
    civil.copy_from_slice(&text[..19]);
    civil
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::Method;

    use super::*;

    fn record(client: &str) -> AccessRecord<'_> {
        AccessRecord {
            request_id: "ab12-7",
            client_request_id: None,
            method: &Method::GET,
            client: Some(client),
            route: Some("/orgs/{org}/packages"),
            status: 200,
            upstream_status: None,
            cache: Some("hit"),
            duration: Duration::from_micros(12_345),
            at: Instant::now(),
        }
    }

    #[test]
    fn a_lines_time_is_its_answers_and_follows_the_wall_clock() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let earlier = Instant::now() - Duration::from_secs(3);
        // An instant older than the thread's anchor (set by this first call) reads back.
        let was = wall(earlier);
        let now = wall(Instant::now());
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        assert!(
            now >= before && now <= after,
            "{now:?} not in {before:?}..{after:?}"
        );
        let back = now.saturating_sub(was);
        assert!(
            back >= Duration::from_millis(2_990) && back <= Duration::from_millis(3_500),
            "{back:?}"
        );
        // Past the anchor's second, a fresh wall-clock reading is taken.
        let later = Instant::now() + ANCHOR_FOR * 2;
        let then = wall(later);
        let ahead = then.saturating_sub(now);
        assert!(
            ahead >= ANCHOR_FOR * 2 - Duration::from_millis(5) && ahead <= ANCHOR_FOR * 3,
            "{ahead:?}"
        );
    }

    #[test]
    fn a_remembered_middle_is_rewritten_when_any_of_its_fields_change() {
        let base = record("team-a");
        let other_route: &'static str = "/orgs/{org}/packages/{package_type}/{package_name}";
        let variants = [
            base,
            base,
            AccessRecord {
                client: Some("team-b"),
                ..base
            },
            AccessRecord {
                client: None,
                ..base
            },
            AccessRecord {
                client: Some("team-b"),
                ..base
            },
            AccessRecord {
                method: &Method::DELETE,
                ..base
            },
            AccessRecord {
                status: 304,
                ..base
            },
            AccessRecord {
                upstream_status: Some(502),
                ..base
            },
            AccessRecord {
                route: Some(other_route),
                ..base
            },
            AccessRecord {
                route: None,
                cache: None,
                ..base
            },
            AccessRecord {
                cache: Some("stale"),
                ..base
            },
            base,
        ];
        for layout in [Layout::Text, Layout::Json, Layout::Text] {
            for r in &variants {
                let (mut remembered, mut written) = (Vec::new(), Vec::new());
                middle(&mut remembered, r, layout);
                match layout {
                    Layout::Text => text_middle(&mut written, r),
                    Layout::Json => json_middle(&mut written, r),
                }
                assert_eq!(
                    String::from_utf8_lossy(&remembered),
                    String::from_utf8_lossy(&written)
                );
            }
        }
    }

    #[test]
    fn civil_dates_match_known_instants() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&civil(1_795_923_296), b"2026-11-29T03:34:56");
    }

    #[test]
    fn json_line_parses_with_the_fields_and_escapes_a_hostile_client_name() {
        let mut out = Vec::new();
        json(&mut out, &record("te\"am\\\n\u{1}"));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["client"], "te\"am\\\n\u{1}");
        assert_eq!(value["route"], "/orgs/{org}/packages");
        assert_eq!(value["duration_ms"], 12.345);
        assert_eq!(value["status"], 200);
        assert!(value.get("upstream_status").is_none());
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn text_line_quotes_like_debug() {
        let mut out = Vec::new();
        text(&mut out, &record("a\"b"));
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.ends_with(
                " INFO packages_proxy::proxy: request request_id=\"ab12-7\" method=GET \
                 client=\"a\\\"b\" route=\"/orgs/{org}/packages\" status=200 cache=\"hit\" \
                 duration_ms=12.345\n"
            ),
            "{line}"
        );
    }
}
