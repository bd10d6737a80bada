//! Hyper's own refusals, in GitHub's error shape.
//!
//! A request head hyper cannot parse (a malformed request line or header field, a head over the
//! size limit, an HTTP version it does not speak) never reaches the proxy's service: hyper writes
//! a bodiless `400`, `414`, `431` or `505` itself and closes the connection. Every other refusal
//! of the proxy is a JSON error in GitHub's shape, and a client (or whoever reads its log) should
//! learn what went wrong here too. The connection's stream recognises hyper's answer as it is
//! written and sends [`in_github_shape`]'s in its place.
//!
//! Recognised by its form, which no answer of the proxy's own has: an HTTP/1 head alone, status
//! 4xx or 5xx, `content-length: 0`, and no `x-request-id` (the walk puts one on every answer, and
//! every error it builds has a JSON body).

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;

/// Longer than any head hyper writes for its own errors; longer writes are not looked at.
const MAX_HEAD: usize = 512;

/// The answer to send instead of `written`, when `written` is hyper's own bodiless refusal.
pub(super) fn in_github_shape(written: &[u8]) -> Option<Bytes> {
    if written.len() > MAX_HEAD
        || !written.starts_with(b"HTTP/1.")
        || !written.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let head = &written[..written.len() - 4];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|line| line.trim_ascii_end());
    let status_line = lines.next()?;
    let code = std::str::from_utf8(status_line.get(9..12)?).ok()?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    if !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let mut kept = Vec::new();
    let mut bodiless = false;
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"x-request-id") {
            return None; // the proxy's own answer
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            bodiless = value == b"0";
        } else if !name.eq_ignore_ascii_case(b"content-type") {
            kept.push(line);
        }
    }
    if !bodiless {
        return None;
    }
    let body = crate::error::error_json_default(status, message(status));
    let mut answer = BytesMut::with_capacity(written.len() + body.len() + 96);
    answer.put_slice(status_line);
    answer.put_slice(b"\r\n");
    for line in kept {
        answer.put_slice(line);
        answer.put_slice(b"\r\n");
    }
    answer.put_slice(b"content-type: application/json; charset=utf-8\r\ncontent-length: ");
    answer.put_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    answer.put_slice(b"\r\n\r\n");
    answer.put_slice(body.as_bytes());
    Some(answer.freeze())
}

/// What went wrong, for each refusal hyper makes.
fn message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => {
            "Problems parsing the request: its request line or a header field is malformed"
        }
        StatusCode::URI_TOO_LONG => "The request's target is too long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "The request's header fields are too large",
        StatusCode::HTTP_VERSION_NOT_SUPPORTED => {
            "HTTP version not supported: send HTTP/1.1 or HTTP/2"
        }
        other => other
            .canonical_reason()
            .unwrap_or("The request was refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::in_github_shape;

    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 30 Nov 2026 23:01:16 GMT\r\n\r\n";

    #[test]
    fn hypers_bodiless_refusal_becomes_a_json_error_with_its_status_and_headers() {
        let answer = in_github_shape(HYPER_400).expect("rewritten");
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains("\r\ndate: Mon, 30 Nov 2026"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["message"].as_str().unwrap().contains("parsing"));
        assert!(json["documentation_url"].is_string());
        assert_eq!(json["status"], "400");
    }

    #[test]
    fn the_proxys_own_answers_and_bodies_are_left_alone() {
        for written in [
            // The walk's answers carry a request id.
            &b"HTTP/1.1 404 Not Found\r\nx-request-id: a-1\r\ncontent-length: 0\r\n\r\n"[..],
            // A body follows.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            // Not an error.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n",
            // A head and some body, or not a head at all.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"\x00\x00\x12\x04\x00\x00\x00\x00\x00",
            b"HTTP/1.1 4",
        ] {
            assert!(
                in_github_shape(written).is_none(),
                "{}",
                String::from_utf8_lossy(written)
            );
        }
    }
}
