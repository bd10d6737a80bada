//! The L2 entry format: a small length-prefixed binary layout (no extra serialisation crate, no
//! base64 bloat of bodies). Times travel as wall-clock milliseconds, since replicas share no
//! monotonic clock.
//!
//! `v1 | status u16 | fetched ms u64 | ttl ms u64 | etag | headers (count u16, name, value)* | body`
//! with strings and blobs as `u32 length + bytes`. Anything that does not decode is a miss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::cache::{Entry, StoredHeaders};

const VERSION: u8 = 1;
/// Longest freshness any route class may have; larger was not written by a replica.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most headers an entry carries (ours carry about a dozen); more is not ours.
const MAX_HEADERS: u16 = 64;

/// Encodes an entry for L2.
pub(super) fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(entry.body.len() + 512);
    out.put_u8(VERSION);
    out.put_u16(entry.status.as_u16());
    out.put_u64(millis(
        entry
            .fetched_wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    ));
    out.put_u64(millis(entry.ttl));
    blob(
        &mut out,
        entry.etag.as_ref().map_or(&[][..], HeaderValue::as_bytes),
    );
    out.put_u16(u16::try_from(entry.headers.len()).unwrap_or(u16::MAX));
    for (name, value) in entry.headers.iter().take(usize::from(u16::MAX)) {
        blob(&mut out, name.as_str().as_bytes());
        blob(&mut out, value.as_bytes());
    }
    blob(&mut out, &entry.body);
    out.to_vec()
}

/// Decodes an L2 entry; `None` for anything malformed or from another format version.
pub(super) fn decode(bytes: &[u8]) -> Option<Entry> {
    let mut buf = bytes;
    if buf.remaining() < 19 || buf.get_u8() != VERSION {
        return None;
    }
    // Only what the cache stores; anything else in Redis was not written by a replica.
    let status = StatusCode::from_u16(buf.get_u16()).ok()?;
    if status != StatusCode::OK && status != StatusCode::NOT_FOUND {
        return None;
    }
    let fetched_wall = UNIX_EPOCH + Duration::from_millis(buf.get_u64());
    let ttl = Duration::from_millis(buf.get_u64());
    if ttl > MAX_TTL {
        return None;
    }
    let etag = read(&mut buf)?;
    let etag = (!etag.is_empty())
        .then(|| HeaderValue::from_bytes(&etag).ok())
        .flatten();
    if buf.remaining() < 2 {
        return None;
    }
    let count = buf.get_u16();
    if count > MAX_HEADERS {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = HeaderName::from_bytes(&read(&mut buf)?).ok()?;
        let value = HeaderValue::from_bytes(&read(&mut buf)?).ok()?;
        // The same allow-list as answers from GitHub: an entry cannot smuggle other headers.
        if !crate::upstream::is_passed_header(&name) && name != http::header::LINK {
            return None;
        }
        headers.append(name, value);
    }
    let body = Bytes::from(read(&mut buf)?);
    // Age carries over: the monotonic time it was fetched, as seen from this replica.
    let age = SystemTime::now()
        .duration_since(fetched_wall)
        .unwrap_or_default();
    let fetched_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    Some(Entry {
        status,
        headers: StoredHeaders::new(&headers),
        body,
        etag,
        fetched_at,
        fetched_wall,
        ttl,
    })
}

fn blob(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn read(buf: &mut &[u8]) -> Option<Vec<u8>> {
    if buf.remaining() < 4 {
        return None;
    }
    let len = usize::try_from(buf.get_u32()).ok()?;
    if buf.remaining() < len {
        return None;
    }
    let out = buf[..len].to_vec();
    buf.advance(len);
    Some(out)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
