//! Client credentials -> identity.
//!
//! Clients send `Authorization: Bearer <token>` or `token <token>` (both as GitHub accepts). The
//! presented token is hashed once and compared, in constant time, with every configured hash, so
//! the time taken says nothing about which (or whether a) client matched. Runs before any cache or
//! upstream access.
//!
//! On a TLS listener with `server.tls.client_ca_file`, a client may instead be named by its
//! certificate's SHA-256 ([`PeerCert`]). The fingerprint is looked up in a map: it is no secret,
//! and the handshake already proved the client holds the certificate's key.
//!
//! An HTTP/1 connection keeps the last client it authenticated in an [`AuthMemo`]: its next
//! request with the same `Authorization` value (compared in constant time) skips the hash and the
//! scan, until a reload changes the clients or the policy.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use http::HeaderValue;

use crate::{
    config::{Client, tls::CertFingerprint},
    error::ProxyError,
    quota::ClientLimits,
    secret::TokenHash,
    tls::PeerCert,
};

/// The configured clients, swapped as a whole on reload.
#[derive(Debug, Default)]
pub struct Clients {
    entries: Vec<(Option<TokenHash>, Identity)>,
    /// Clients with a `cert_sha256`; the same `Identity` (and quota state) as in `entries`.
    by_cert: HashMap<CertFingerprint, Identity>,
}

/// The client one connection last authenticated by its `Authorization` value, with the scopes it
/// was granted. A connection serves its HTTP/1 requests one at a time, so a `RefCell` will do.
#[derive(Default)]
pub struct AuthMemo(RefCell<Option<Remembered>>);

struct Remembered {
    /// The credentials generation it was authenticated under (see [`AuthMemo::recall`]).
    generation: u64,
    /// The whole `Authorization` value: a secret, kept only as long as the connection.
    authorization: Vec<u8>,
    identity: Identity,
    scopes: &'static HeaderValue,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The client's configured name.
    pub name: Arc<str>,
    /// May use `/admin/...`.
    pub admin: bool,
    /// Its quotas and their current state.
    pub limits: Arc<ClientLimits>,
}

// === impl AuthMemo ===

/// Names the client remembered, never its credentials.
impl std::fmt::Debug for AuthMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client = self.0.try_borrow().ok().and_then(|memo| {
            memo.as_ref()
                .map(|remembered| remembered.identity.name.clone())
        });
        f.debug_struct("AuthMemo").field("client", &client).finish()
    }
}

impl AuthMemo {
    /// The client remembered for exactly this `Authorization` value, if nothing was reloaded
    /// since (`generation` moves on every reload of clients or policy). The bytes are compared in
    /// constant time: behind a load balancer one connection carries many clients' requests.
    pub fn recall(
        &self,
        generation: u64,
        authorization: &[u8],
    ) -> Option<(Identity, &'static HeaderValue)> {
        let memo = self.0.borrow();
        let remembered = memo.as_ref()?;
        let same = remembered.generation == generation
            && crate::secret::ct_eq(&remembered.authorization, authorization);
        same.then(|| (remembered.identity.clone(), remembered.scopes))
    }

    /// Remembers who `authorization` named under `generation` (read before the clients were).
    pub fn remember(
        &self,
        generation: u64,
        authorization: &[u8],
        identity: &Identity,
        scopes: &'static HeaderValue,
    ) {
        let mut memo = self.0.borrow_mut();
        let mut bytes = memo.take().map(|old| old.authorization).unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(authorization);
        *memo = Some(Remembered {
            generation,
            authorization: bytes,
            identity: identity.clone(),
            scopes,
        });
    }
}

// === impl Clients ===

impl Clients {
    /// Builds the table from validated config entries. Clients whose name and quota are
    /// unchanged from `previous` keep their buckets, so a reload does not refill everyone; a
    /// client whose quota changed keeps what it spent (a quota tightened to stop a runaway job
    /// must not hand it a fresh allowance). `replicas` divides the local upstream bucket (the
    /// fleet-wide one lives in Redis).
    pub fn new(clients: &[Client], previous: Option<&Clients>, replicas: u32) -> Self {
        let entries: Vec<(Option<TokenHash>, Identity)> = clients
            .iter()
            .map(|c| {
                let before = previous.and_then(|p| {
                    p.entries
                        .iter()
                        .find(|(_, id)| *id.name == *c.name)
                        .map(|(_, id)| &id.limits)
                });
                let limits = match before {
                    Some(limits) if limits.quota == c.quota => limits.clone(),
                    Some(limits) => Arc::new(ClientLimits::changed(c.quota, replicas, limits)),
                    None => Arc::new(ClientLimits::new(c.quota, replicas)),
                };
                let identity = Identity {
                    name: Arc::from(c.name.as_str()),
                    admin: c.admin,
                    limits,
                };
                (c.token_hash.clone(), identity)
            })
            .collect();
        let by_cert = clients
            .iter()
            .zip(&entries)
            .filter_map(|(c, (_, id))| Some((c.cert_fingerprint?, id.clone())))
            .collect();
        Self { entries, by_cert }
    }

    /// Finds the client behind a request: its `Authorization` value when it sent one (a bad
    /// token is refused, never retried as a certificate), else its connection's client
    /// certificate. The walk looks the value up in its one pass over the headers.
    pub fn authenticate(
        &self,
        authorization: Option<&HeaderValue>,
        peer: Option<&PeerCert>,
    ) -> Result<Identity, ProxyError> {
        match (authorization, peer) {
            (None, Some(peer)) => self
                .by_cert
                .get(&peer.fingerprint)
                .cloned()
                .ok_or(ProxyError::Unauthorized("Bad credentials")),
            (authorization, _) => self.authenticate_header(authorization),
        }
    }

    /// The client whose token an `Authorization` value carries.
    fn authenticate_header(&self, value: Option<&HeaderValue>) -> Result<Identity, ProxyError> {
        let value = value.ok_or_else(|| ProxyError::Unauthorized("Requires authentication"))?;
        let token = bearer_token(value.as_bytes())
            .ok_or_else(|| ProxyError::Unauthorized("Bad credentials"))?;
        let presented = TokenHash::of(token);
        let mut found: Option<&Identity> = None;
        // No early exit: every entry is compared whatever matched.
        for (hash, identity) in &self.entries {
            if hash.as_ref().is_some_and(|h| h.matches(&presented)) {
                found = Some(identity);
            }
        }
        found
            .cloned()
            .ok_or_else(|| ProxyError::Unauthorized("Bad credentials"))
    }

    /// Whether a client of this name is configured.
    pub fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(_, identity)| *identity.name == *name)
    }

    /// How many clients are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no client is configured (every request is then refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The token in `Bearer <t>` or `token <t>` (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&str> {
    if !value.is_ascii() {
        // Rare: the text rules, which also trim Unicode spaces (a no-break space after the
        // token was accepted, and still is).
        let text = std::str::from_utf8(value).ok()?.trim();
        let (scheme, token) = text.split_once(' ')?;
        let scheme_ok =
            scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token");
        let token = token.trim();
        return (scheme_ok && !token.is_empty()).then_some(token);
    }
    // ASCII (every real token): the same rules on bytes, without a UTF-8 check or `char` trims.
    let text = value.trim_ascii();
    let space = text.iter().position(|&b| b == b' ')?;
    let (scheme, token) = (&text[..space], text[space + 1..].trim_ascii());
    let scheme_ok = scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"token");
    if !scheme_ok || token.is_empty() {
        return None;
    }
    std::str::from_utf8(token).ok()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_and_token_schemes_in_any_case_with_spaces_trimmed() {
        for (value, token) in [
            (&b"Bearer abc"[..], Some("abc")),
            (b"bearer abc", Some("abc")),
            (b"TOKEN abc", Some("abc")),
            (b"  Bearer   abc \t", Some("abc")),
            (b"Bearer", None),
            (b"Bearer ", None),
            (b"Basic abc", None),
            (b"Bearerabc", None),
            (b"Bearer \xff\xfe", None),
            ("Bearer abc\u{a0}".as_bytes(), Some("abc")),
            ("\u{3000}bearer abc".as_bytes(), Some("abc")),
            (b"", None),
        ] {
            assert_eq!(
                bearer_token(value),
                token,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }
}
