//! API URLs in GitHub's JSON bodies, moved onto the proxy's public URL, so a client following a
//! package's or a version's `url` comes back through the proxy and never sends its proxy token to
//! GitHub.
//!
//! The rule is `Link` rewriting's ([`crate::link::on_upstream`]): a URL on the upstream base whose
//! path is a route the proxy serves moves onto the request's public base (with `/api/v3` when the
//! request used it); every other URL (the owner's `url`, `html_url`, avatars, repositories) stays
//! as GitHub wrote it. The JSON text is edited string by string, so field order, spacing and every
//! other byte stay GitHub's. The cache does this once, when it stores an answer, so a hit pays
//! nothing.
//!
//! The proxy's representation is not GitHub's, so it gets its own ETag: GitHub's opaque tag plus
//! a digest of the public base ([`proxy_etag`]). Upstream revalidation keeps GitHub's tag
//! ([`upstream_if_none_match`] maps a client's tag back), so a 304 is only ever given for the
//! representation the client holds.

use std::{
    borrow::Cow,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use sha2::{Digest, Sha256};

use crate::{
    body::Body,
    error::{BoxError, ProxyError},
    link::on_upstream,
    route::Route,
};

/// Rewrites the API URLs of a JSON answer and gives it the proxy's `ETag`; any other body is
/// returned as it is.
///
/// Every JSON answer gets the proxy's tag, rewritten or not: then no tag the proxy hands out is
/// GitHub's, and a client holding GitHub's own bytes (fetched around the proxy, URLs pointing at
/// GitHub) is never told 304 for the proxy's representation.
pub fn apply(
    headers: &mut HeaderMap,
    body: Bytes,
    upstream_base: &str,
    public_base: &str,
) -> Bytes {
    if !is_json(headers) {
        return body;
    }
    // GitHub's tag names GitHub's bytes; without a tag we can derive, send none at all.
    if let Some(etag) = headers.remove(header::ETAG)
        && let Some(ours) = proxy_etag(&etag, public_base)
    {
        headers.insert(header::ETAG, ours);
    }
    rewrite(&body, upstream_base, public_base).unwrap_or(body)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// [`apply`] for an answer not yet read (the pass-through path): a JSON body up to `limit` bytes
/// is read, rewritten and sent whole; a larger one is streamed as GitHub sent it (logged), as is
/// any other body. A body that fails before anything was sent is an error for the client
/// instead (a 504 if it stalled past `upstream.timeout`, else a 502), not a `200` cut short.
pub async fn apply_streamed(
    headers: &mut HeaderMap,
    mut body: Body,
    limit: usize,
    upstream_base: &str,
    public_base: &str,
) -> Result<Body, ProxyError> {
    if !is_json(headers) {
        return Ok(body);
    }
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let data = match frame.map(Frame::into_data) {
            Ok(Ok(data)) => data,
            Ok(Err(_trailers)) => continue,
            // Nothing has reached the client yet: it gets an error in GitHub's shape.
            Err(error) => return Err(ProxyError::from_box(error)),
        };
        if buffer.len() + data.len() > limit {
            tracing::warn!(
                limit,
                "an answer too large to rewrite its URLs is passed as GitHub sent it"
            );
            buffer.extend_from_slice(&data);
            return Ok(prefixed(buffer.freeze(), body));
        }
        buffer.extend_from_slice(&data);
    }
    Ok(crate::body::full(apply(
        headers,
        buffer.freeze(),
        upstream_base,
        public_base,
    )))
}

/// `head`, then the rest of `rest`.
fn prefixed(head: Bytes, rest: Body) -> Body {
    crate::body::boxed(Prefixed {
        head: Some(head),
        rest,
    })
}

/// Bytes already read, then the rest of the body they came from.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.head.take() {
            Some(head) if !head.is_empty() => Poll::Ready(Some(Ok(Frame::data(head)))),
            _ => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }
}

/// Rewrites the API URLs in a JSON text; `None` when there are none (the body stays GitHub's, byte
/// for byte, and so does its ETag).
pub fn rewrite(body: &[u8], upstream_base: &str, public_base: &str) -> Option<Bytes> {
    let escaped = upstream_base.replace('/', "\\/");
    if upstream_base.is_empty()
        || !(contains(body, upstream_base.as_bytes()) || contains(body, escaped.as_bytes()))
    {
        return None;
    }
    let mut out = Vec::new();
    let mut copied = 0; // body[..copied] is in `out` already
    let mut at = 0;
    while let Some(open) = body[at..].iter().position(|b| *b == b'"').map(|i| at + i) {
        let Some(close) = string_end(body, open + 1) else {
            break; // not JSON after all: leave the rest alone
        };
        at = close + 1;
        let literal = &body[open..=close];
        let Some(url) = decode(literal) else { continue };
        let Some(moved) = move_url(&url, upstream_base, public_base) else {
            continue;
        };
        let Ok(encoded) = serde_json::to_vec(&moved) else {
            continue;
        };
        out.extend_from_slice(&body[copied..open]);
        out.extend_from_slice(&encoded);
        copied = close + 1;
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(Bytes::from(out))
}

/// `url` on `public_base` if it is an upstream URL of a route the proxy serves.
fn move_url(url: &str, upstream_base: &str, public_base: &str) -> Option<String> {
    let rest = on_upstream(url, upstream_base)?;
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    Route::parse(&Method::GET, path, query).ok()?;
    Some(format!("{public_base}{rest}"))
}

/// The string value of a JSON string literal (quotes included), when it could be an URL.
fn decode(literal: &[u8]) -> Option<Cow<'_, str>> {
    let inner = &literal[1..literal.len() - 1];
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    serde_json::from_slice::<String>(literal)
        .ok()
        .map(Cow::Owned)
}

/// The index of the quote closing the string that starts at `from`.
fn string_end(body: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The proxy's ETag for a body rewritten onto `public_base`: `W/"abc"` becomes
/// `W/"abc.pp-1a2b3c4d"` (weakness kept: the rewrite is deterministic). `None` if GitHub's tag is
/// not a quoted tag.
pub fn proxy_etag(github: &HeaderValue, public_base: &str) -> Option<HeaderValue> {
    let text = github.to_str().ok()?;
    let (weak, quoted) = match text.strip_prefix("W/") {
        Some(rest) => ("W/", rest),
        None => ("", text),
    };
    let opaque = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let tag = format!("{weak}\"{opaque}{}\"", suffix(public_base));
    HeaderValue::try_from(tag).ok()
}

/// What to send GitHub for a client's `If-None-Match`: the proxy's tags for `public_base` mapped
/// back to GitHub's, `*` as it is; other tags are dropped (the proxy never handed them out, so
/// they name no representation it serves), unless `github_tags`: an answer passed through as
/// GitHub sent it (over `cache.max_entry_bytes`) carries GitHub's own tag. `None` when nothing is
/// left.
pub fn upstream_if_none_match(
    client: &HeaderValue,
    public_base: &str,
    github_tags: bool,
) -> Option<HeaderValue> {
    let text = client.to_str().ok()?;
    let ours = format!("{}\"", suffix(public_base));
    let mapped: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter_map(|tag| match tag {
            "*" => Some(tag.to_owned()),
            _ if tag.ends_with(&ours) => Some(tag.replace(&ours, "\"")),
            _ if github_tags && !tag.is_empty() => Some(tag.to_owned()),
            _ => None,
        })
        .collect();
    if mapped.is_empty() {
        return None;
    }
    HeaderValue::try_from(mapped.join(", ")).ok()
}

/// `.pp-` and eight hex digits of SHA-256 of the public base: the same on every replica.
fn suffix(public_base: &str) -> String {
    let digest = Sha256::digest(public_base.as_bytes());
    format!(".pp-{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::{proxy_etag, rewrite, upstream_if_none_match};

    const UP: &str = "https://api.github.com";
    const PUBLIC: &str = "https://proxy.example/api/v3";

    // Guards issue 14: a body URL pointing at GitHub sends a client (and its token) there.
    #[test]
    fn api_urls_of_served_routes_move_and_nothing_else_changes() {
        let body = concat!(
            r#"{"id":1,"url":"https://api.github.com/orgs/acme/packages/container/base%2Fruntime","#,
            r#""owner":{"url":"https://api.github.com/users/acme","avatar_url":"https://avatars.githubusercontent.com/u/1?v=4"},"#,
            r#""html_url":"https://github.com/orgs/acme/packages/container/package/web","#,
            r#""v":"https:\/\/api.github.com\/orgs\/acme\/packages\/npm\/x\/versions\/7","#,
            r#""evil":"https://api.github.com@evil.example/orgs/acme/packages/npm/x","#,
            r#""quote":"a \"https://api.github.com/orgs/acme/packages/npm/x\" b"}"#
        );
        let out = rewrite(body.as_bytes(), UP, PUBLIC).unwrap();
        let want = concat!(
            r#"{"id":1,"url":"https://proxy.example/api/v3/orgs/acme/packages/container/base%2Fruntime","#,
            r#""owner":{"url":"https://api.github.com/users/acme","avatar_url":"https://avatars.githubusercontent.com/u/1?v=4"},"#,
            r#""html_url":"https://github.com/orgs/acme/packages/container/package/web","#,
            r#""v":"https://proxy.example/api/v3/orgs/acme/packages/npm/x/versions/7","#,
            r#""evil":"https://api.github.com@evil.example/orgs/acme/packages/npm/x","#,
            r#""quote":"a \"https://api.github.com/orgs/acme/packages/npm/x\" b"}"#
        );
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        assert_eq!(
            rewrite(br#"{"url":"https://api.github.com/users/a"}"#, UP, PUBLIC),
            None
        );
    }

    #[test]
    fn the_proxy_etag_differs_by_public_base_and_maps_back() {
        let github = HeaderValue::from_static("W/\"abc\"");
        let ours = proxy_etag(&github, PUBLIC).unwrap();
        assert_ne!(ours, github);
        assert!(ours.to_str().unwrap().starts_with("W/\"abc.pp-"));
        assert_ne!(
            Some(&ours),
            proxy_etag(&github, "https://proxy.example").as_ref()
        );
        let list = HeaderValue::try_from(format!("\"x\", {}", ours.to_str().unwrap())).unwrap();
        let back = upstream_if_none_match(&list, PUBLIC, false).unwrap();
        assert_eq!(
            back, "W/\"abc\"",
            "a tag the proxy never gave out went upstream"
        );
        assert_eq!(
            upstream_if_none_match(&list, "https://other.example", false),
            None
        );
        assert_eq!(upstream_if_none_match(&github, PUBLIC, false), None);
        // Where the proxy hands out GitHub's own tags (answers passed as GitHub sent them).
        let both = upstream_if_none_match(&list, PUBLIC, true).unwrap();
        assert_eq!(both, "\"x\", W/\"abc\"");
        assert_eq!(upstream_if_none_match(&github, PUBLIC, true), Some(github));
        let any = HeaderValue::from_static("*");
        assert_eq!(upstream_if_none_match(&any, PUBLIC, false), Some(any));
    }
}
