//! TLS on the listener (optional, `[server.tls]`): a server certificate that reloads itself, and
//! client certificates (mTLS) as a second way, beside bearer tokens, to say who a client is.
//!
//! - The certificate and key are PEM files, polled every `reload_interval`. When their contents
//!   change and the new pair parses (and the key fits the certificate), new handshakes get it; open
//!   connections keep theirs. A bad pair (say, the certificate written before its key) logs an
//!   error and the last good pair stays, so a rotation never needs a restart and never breaks the
//!   listener.
//! - `client_ca_file` asks clients for a certificate, but does not require one, so bearer tokens
//!   keep working on the same port. A presented certificate must chain to that bundle (loaded once,
//!   at start), or the handshake fails. Its SHA-256 ([`CertFingerprint`]) names the client:
//!   [`crate::auth`] matches it against `clients[].cert_sha256`.
//!
//! The listener ([`crate::server`]) puts a [`PeerCert`] into every request's extensions of a
//! connection that presented a certificate. The settings, the file checks `check-config` runs
//! and the fingerprint type live below, in [`crate::config::tls`].

use std::{fmt, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::tls::{CertFingerprint, Pair, TlsConfig, TlsError, load};

/// The certificate a client presented on its TLS connection (in each request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCert {
    /// The SHA-256 of the client's leaf certificate.
    pub fingerprint: CertFingerprint,
}

/// TLS for the listener: the acceptor and the certificate it serves.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    config: TlsConfig,
    /// The certificate and key files' contents behind `current`, so a reload can tell a change.
    loaded: (Vec<u8>, Vec<u8>),
}

/// The served certificate; an `ArcSwap` because every handshake reads it and only the reload task
/// writes it, rarely.
#[derive(Debug)]
struct CurrentCert(ArcSwap<CertifiedKey>);

// === impl PeerCert ===

impl PeerCert {
    /// The peer certificate of a finished handshake: its leaf, if it sent one.
    pub fn of(connection: &rustls::ServerConnection) -> Option<Self> {
        let leaf = connection.peer_certificates()?.first()?;
        Some(Self {
            fingerprint: CertFingerprint::of(leaf),
        })
    }
}

// === impl Tls ===

impl Tls {
    /// Loads the certificate, key and client CAs, and builds the acceptor (h2 and http/1.1 by ALPN).
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let (
            Pair {
                cert_pem,
                key_pem,
                key,
            },
            builder,
        ) = load(config)?;
        let current = Arc::new(CurrentCert(ArcSwap::from_pointee(key)));
        let mut server = builder.with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            current,
            config: config.clone(),
            loaded: (cert_pem, key_pem),
        })
    }

    /// The acceptor for new connections (cheap to clone).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Spawns the task that polls the certificate and key files and swaps in a changed, valid
    /// pair. Abort the handle to stop it.
    pub fn spawn_reloader(&self) -> JoinHandle<()> {
        let (cert_pem, key_pem) = self.loaded.clone();
        tokio::spawn(reload_loop(
            self.current.clone(),
            self.config.clone(),
            cert_pem,
            key_pem,
        ))
    }
}

/// Every `reload_interval`: read both files; if either changed, parse and swap in the new pair.
async fn reload_loop(
    current: Arc<CurrentCert>,
    config: TlsConfig,
    mut cert_pem: Vec<u8>,
    mut key_pem: Vec<u8>,
) {
    let (cert, key) = (&config.cert_file, &config.key_file);
    let mut ticks = tokio::time::interval(config.reload_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    let mut unreadable = false;
    loop {
        ticks.tick().await;
        let (new_cert, new_key) = match (tokio::fs::read(cert).await, tokio::fs::read(key).await) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(error), _) | (_, Err(error)) => {
                // Mid-rotation a file may be missing for a moment; the next tick retries. Logged
                // and counted once per spell, so that a mount that broke shows in the counter.
                if !unreadable {
                    unreadable = true;
                    crate::metrics::tls_reload("unreadable");
                    tracing::warn!(
                        %error,
                        cert_file = %cert.display(),
                        key_file = %key.display(),
                        "cannot read the TLS certificate or key; keeping the current pair"
                    );
                }
                continue;
            }
        };
        unreadable = false;
        if new_cert == cert_pem && new_key == key_pem {
            continue;
        }
        match Pair::parse(cert, key, &new_cert, &new_key) {
            Ok(pair) => {
                current.0.store(Arc::new(pair));
                crate::metrics::tls_reload("ok");
                tracing::info!(cert_file = %cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                crate::metrics::tls_reload("rejected");
                tracing::error!(
                    error = %error_chain(&error),
                    "new TLS certificate or key is unusable; keeping the current pair"
                );
            }
        }
        // Remembered even when bad: the error is logged once, and the next change retries.
        (cert_pem, key_pem) = (new_cert, new_key);
    }
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === impl CurrentCert ===

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// `error: cause: cause`, for one log field.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
