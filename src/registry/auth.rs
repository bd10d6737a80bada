//! The distribution spec's token flow: a `401` with `WWW-Authenticate: Bearer realm=...,
//! service=...,scope=...` is answered by fetching a token from the realm with the org token as the
//! Basic password, then retrying with `Authorization: Bearer <that token>`.
//!
//! The realm receives the org token, so it must be on the registry's own origin: a registry (or a
//! man in the middle on plain http) naming another host gets nothing. Registry tokens are secrets
//! like the org token: a sensitive header value whose `Debug` is redacted.

use std::{fmt, time::Duration};

use http::{HeaderValue, Uri};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// A parsed `Bearer` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The token endpoint.
    pub realm: String,
    /// `service`, passed back as a query parameter.
    pub service: Option<String>,
    /// `scope`, passed back as a query parameter.
    pub scope: Option<String>,
}

/// A registry bearer token, as the ready `Authorization` value.
#[derive(Clone)]
pub struct RegistryToken(HeaderValue);

/// How long a token without `expires_in` is reused (the spec's default is 60 s).
pub(super) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

// === impl Challenge ===

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."`; `None` if it is not a Bearer
    /// challenge with a realm.
    pub fn parse(header: &str) -> Option<Self> {
        let (scheme, params) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut challenge = Self {
            realm: String::new(),
            service: None,
            scope: None,
        };
        for (key, value) in params_of(params)? {
            match key.to_ascii_lowercase().as_str() {
                "realm" => challenge.realm = value,
                "service" => challenge.service = Some(value),
                "scope" => challenge.scope = Some(value),
                _ => {}
            }
        }
        (!challenge.realm.is_empty()).then_some(challenge)
    }

    /// The token URL, if the realm is on `origin` (`scheme://authority` of the registry).
    pub fn token_url(&self, origin: &str) -> Option<String> {
        let uri: Uri = self.realm.parse().ok()?;
        let realm_origin = format!("{}://{}", uri.scheme_str()?, uri.authority()?);
        if !realm_origin.eq_ignore_ascii_case(origin) {
            return None;
        }
        let mut url = self.realm.clone();
        let mut sep = if uri.query().is_some() { '&' } else { '?' };
        for (name, value) in [("service", &self.service), ("scope", &self.scope)] {
            if let Some(value) = value {
                url.push(sep);
                url.push_str(name);
                url.push('=');
                url.push_str(&utf8_percent_encode(value, NON_ALPHANUMERIC).to_string());
                sep = '&';
            }
        }
        Some(url)
    }
}

/// `key="quoted, value",key2=token` pairs; `None` on an unterminated quote.
fn params_of(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (quoted[..end].to_owned(), &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((key.trim().to_owned(), value));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

// === impl RegistryToken ===

impl RegistryToken {
    /// Reads the realm's JSON answer: the token and how long it may be reused.
    pub fn from_answer(body: &[u8]) -> Option<(Self, Duration)> {
        let answer: TokenAnswer = serde_json::from_slice(body).ok()?;
        let token = answer.token.or(answer.access_token)?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Some((Self(value), lifetime))
    }

    /// The `Authorization` value.
    pub fn bearer(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryToken(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ghcr_style_challenges_with_commas_in_scope() {
        let c = Challenge::parse(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:acme/web:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://ghcr.io/token");
        assert_eq!(c.scope.as_deref(), Some("repository:acme/web:pull,push"));
        assert_eq!(
            c.token_url("https://ghcr.io").unwrap(),
            "https://ghcr.io/token?service=ghcr%2Eio&scope=repository%3Aacme%2Fweb%3Apull%2Cpush"
        );
        assert!(Challenge::parse("Basic realm=\"x\"").is_none());
        assert!(Challenge::parse("Bearer realm=\"unterminated").is_none());
    }

    #[test]
    fn a_realm_on_another_origin_gets_no_credentials() {
        let c = Challenge::parse(r#"Bearer realm="https://evil.example/token""#).unwrap();
        assert_eq!(c.token_url("https://ghcr.io"), None);
    }

    #[test]
    fn tokens_never_print() {
        let (token, lifetime) =
            RegistryToken::from_answer(br#"{"token":"secret-value","expires_in":300}"#).unwrap();
        assert_eq!(lifetime, Duration::from_secs(300));
        assert!(!format!("{token:?}").contains("secret"));
    }
}
