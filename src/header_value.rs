//! Header values formatted through a stack buffer: the hot path builds a few for every answer
//! (`Age`, `Cache-Status`, `X-Request-Id`), and `format!` then `HeaderValue::try_from` costs two
//! heap allocations each where this costs the value's own one.

use std::fmt::{self, Write as _};

use http::HeaderValue;

/// Longest text formatted on the stack; longer text is refused (the caller's fallback).
const CAPACITY: usize = 256;

/// Formats `args` into a header value, or `fallback` when the text is longer than 256 bytes or
/// not a valid header value.
pub(crate) fn format(args: fmt::Arguments<'_>, fallback: &'static str) -> HeaderValue {
    let mut text = Stack {
        buf: [0; CAPACITY],
        len: 0,
    };
    if text.write_fmt(args).is_err() {
        return HeaderValue::from_static(fallback);
    }
    HeaderValue::from_bytes(&text.buf[..text.len])
        .unwrap_or_else(|_| HeaderValue::from_static(fallback))
}

struct Stack {
    buf: [u8; CAPACITY],
    len: usize,
}

impl fmt::Write for Stack {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_short_text_and_falls_back_past_the_buffer() {
        assert_eq!(format(format_args!("a-{:x}", 255), "x"), "a-ff");
        let long = "y".repeat(CAPACITY + 1);
        assert_eq!(format(format_args!("{long}"), "x"), "x");
        assert_eq!(format(format_args!("bad\n"), "x"), "x");
    }
}
