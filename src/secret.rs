//! Secrets: the org token (a redacted newtype holding a ready-made `Authorization` value) and
//! client token hashes (SHA-256, compared in constant time).
//!
//! Neither type can print its content: `Debug` says `<redacted>`, and neither implements
//! `Display` or `Serialize`. The config only says *where* the org token is.

use std::{fmt, io, path::Path};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The org token, as the `Authorization: Bearer ...` value sent upstream.
#[derive(Clone)]
pub struct OrgToken(HeaderValue);

/// The SHA-256 of a client token, as stored in the config.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

/// Why a token could not be loaded. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The environment variable is unset or not Unicode.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be read.
    #[error("cannot read token file {path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The token is empty after trimming whitespace.
    #[error("the org token is empty")]
    Empty,
    /// The token has characters a header cannot carry.
    #[error("the org token contains characters that are not allowed in a header")]
    Invalid,
}

// === impl OrgToken ===

impl OrgToken {
    /// Builds the token from its text (whitespace trimmed).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid);
        }
        let mut value =
            HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| TokenError::Invalid)?;
        value.set_sensitive(true); // HPACK never indexes it; Debug prints "Sensitive"
        Ok(Self(value))
    }

    /// Reads the token from an environment variable.
    pub fn from_env(name: &str) -> Result<Self, TokenError> {
        let text = std::env::var(name).map_err(|_| TokenError::MissingEnv(name.to_owned()))?;
        Self::new(&text)
    }

    /// Reads the token from a file (e.g. a mounted Kubernetes secret).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
            path: path.display().to_string(),
            source,
        })?;
        // Editors on Windows save a byte-order mark: not part of the token.
        Self::new(text.strip_prefix('\u{feff}').unwrap_or(&text))
    }

    /// The `Authorization` header value.
    pub fn bearer(&self) -> HeaderValue {
        self.0.clone()
    }

    /// `Authorization: Basic base64(username:token)`, as a container registry's token realm
    /// wants the org token (the distribution spec's token flow). Sensitive like the bearer value.
    pub fn basic(&self, username: &str) -> HeaderValue {
        let token = self
            .0
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .unwrap_or_default();
        let mut credentials = Vec::with_capacity(username.len() + 1 + token.len());
        credentials.extend_from_slice(username.as_bytes());
        credentials.push(b':');
        credentials.extend_from_slice(token);
        let mut value = HeaderValue::try_from(format!("Basic {}", base64(&credentials)))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for OrgToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OrgToken(<redacted>)")
    }
}

// === impl TokenHash ===

impl TokenHash {
    /// Hashes a presented client token.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses the 64 hex digits stored in the config.
    pub fn from_hex(hex_digits: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits.trim(), &mut out).ok()?;
        Some(Self(out))
    }

    /// Hex form, for `token new` output only.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Constant-time comparison.
    pub fn matches(&self, other: &Self) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths: a 64-bit word at
/// a time (`subtle`'s byte-slice comparison fences every byte, on every request).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let mut differ = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .fold(0u64, |differ, (x, y)| differ | u64::from(x ^ y));
    let word = |chunk: &[u8]| u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]));
    for (x, y) in a_words.zip(b_words) {
        differ |= word(x) ^ word(y);
    }
    differ.ct_eq(&0).into()
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

/// Standard base64 with padding (RFC 4648), for the one Basic credential above.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A fresh random client token: `ppx_` and 64 hex digits (256 bits).
pub fn new_client_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("ppx_{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::{TokenHash, ct_eq};

    #[test]
    fn byte_strings_are_equal_only_when_every_byte_and_the_length_are() {
        // Lengths around the 8-byte words: the words and the remainder both count.
        for len in [0, 1, 7, 8, 9, 16, 23, 47] {
            let a: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert!(ct_eq(&a, &a.clone()), "len {len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!ct_eq(&a, &b), "len {len}, byte {at}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!ct_eq(&a, &longer), "len {len} against one more");
        }
    }

    #[test]
    fn token_hashes_match_only_when_every_byte_does() {
        let hash = TokenHash::of("a-token");
        assert!(hash.matches(&TokenHash::of("a-token")));
        assert!(!hash.matches(&TokenHash::of("b-token")));
        for byte in [0, 7, 8, 15, 16, 31] {
            let mut other = hash.0;
            other[byte] ^= 1;
            assert!(!hash.matches(&TokenHash(other)), "byte {byte}");
        }
    }

    #[test]
    fn a_token_file_saved_with_a_byte_order_mark_or_crlf_reads_as_the_token() {
        let dir = std::env::temp_dir().join(format!("pp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "\u{feff}ghp_fake_token\r\n").unwrap();
        let token = super::OrgToken::from_file(&path).unwrap();
        assert_eq!(token.bearer(), "Bearer ghp_fake_token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), encoded);
        }
    }
}
