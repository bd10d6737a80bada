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
//! connection that presented a certificate.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// `[server.tls]` as written in the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    reload_interval: Duration,
}

/// `[server.tls]`, validated: every file loaded once, so a bad one fails `check-config`.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_file: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to; enables mTLS. Read at start only.
    pub client_ca_file: Option<PathBuf>,
    /// How often the certificate and key files are checked for a new pair.
    pub reload_interval: Duration,
}

/// Why TLS could not be set up. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The config key naming the file.
        field: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of the kind expected.
    #[error("{path} holds no usable PEM {what}")]
    Pem {
        /// The config key naming the file.
        field: &'static str,
        /// The file.
        path: String,
        /// `certificate` or `private key`.
        what: &'static str,
        /// Why, when the PEM itself is broken.
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    /// The private key cannot be used, or does not fit the certificate.
    #[error("the private key is unusable or does not fit the certificate")]
    Key(#[source] rustls::Error),
    /// The client CA bundle holds no usable CA.
    #[error("{path} holds no usable CA certificate")]
    ClientCa {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the setup (no protocol version in common with the provider).
    #[error("cannot set up TLS")]
    Setup(#[source] rustls::Error),
}

/// The SHA-256 of a certificate's DER encoding: how a client certificate names a client.
///
/// Not a secret (certificates are public; the TLS handshake proves the client holds the key), so
/// it prints and is looked up in a hash map.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint([u8; 32]);

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

/// A certificate and key as read, and what they parse to.
struct Pair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: CertifiedKey,
}

const CERT_FILE: &str = "server.tls.cert_file";
const KEY_FILE: &str = "server.tls.key_file";
const CLIENT_CA_FILE: &str = "server.tls.client_ca_file";

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

// === impl RawTls ===

impl RawTls {
    /// Validates the table and loads every file once (a bad certificate is a config error).
    pub(crate) fn validate(self) -> Result<TlsConfig, ConfigError> {
        if self.reload_interval.is_zero() {
            return Err(ConfigError::Invalid {
                field: "server.tls.reload_interval".to_owned(),
                reason: "must be longer than 0s".to_owned(),
            });
        }
        let config = TlsConfig {
            cert_file: self.cert_file,
            key_file: self.key_file,
            client_ca_file: self.client_ca_file,
            reload_interval: self.reload_interval,
        };
        Tls::new(&config).map_err(|source| ConfigError::Tls {
            field: source.field().to_owned(),
            source,
        })?;
        Ok(config)
    }
}

// === impl TlsError ===

impl TlsError {
    /// The config key at fault (`server.tls.cert_file`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Read { field, .. } | Self::Pem { field, .. } => field,
            Self::Key(_) => KEY_FILE,
            Self::ClientCa { .. } => CLIENT_CA_FILE,
            Self::Setup(_) => "server.tls",
        }
    }
}

// === impl CertFingerprint ===

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Parses 64 hex digits, as `sha256sum` prints them; `openssl x509 -fingerprint -sha256`'s
    /// colon-separated form is accepted too.
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).ok()?;
        Some(Self(out))
    }

    /// Lower-case hex, as in the config.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({})", self.to_hex())
    }
}

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
        let Pair {
            cert_pem,
            key_pem,
            key,
        } = Pair::read(&config.cert_file, &config.key_file)?;
        let current = Arc::new(CurrentCert(ArcSwap::from_pointee(key)));
        let provider = Arc::new(ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?;
        let builder = match &config.client_ca_file {
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
            None => builder.with_no_client_auth(),
        };
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
    loop {
        ticks.tick().await;
        let (new_cert, new_key) = match (tokio::fs::read(cert).await, tokio::fs::read(key).await) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(error), _) | (_, Err(error)) => {
                // Mid-rotation a file may be missing for a moment; the next tick retries.
                tracing::warn!(%error, "cannot read the TLS certificate or key; keeping the current pair");
                continue;
            }
        };
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

// === impl Pair ===

impl Pair {
    fn read(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let cert_pem = std::fs::read(cert_file).map_err(|source| TlsError::Read {
            field: CERT_FILE,
            path: cert_file.display().to_string(),
            source,
        })?;
        let key_pem = std::fs::read(key_file).map_err(|source| TlsError::Read {
            field: KEY_FILE,
            path: key_file.display().to_string(),
            source,
        })?;
        let key = Self::parse(cert_file, key_file, &cert_pem, &key_pem)?;
        Ok(Self {
            cert_pem,
            key_pem,
            key,
        })
    }

    /// Parses a chain and its key; checks the key fits the leaf.
    fn parse(
        cert_file: &Path,
        key_file: &Path,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertifiedKey, TlsError> {
        let chain = certificates(cert_file, cert_pem, CERT_FILE)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::Pem {
            field: KEY_FILE,
            path: key_file.display().to_string(),
            what: "private key",
            source: broken_pem(error),
        })?;
        CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(TlsError::Key)
    }
}

/// Every certificate in a PEM file; none is an error.
fn certificates(
    path: &Path,
    pem: &[u8],
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let no_certificate = |source| TlsError::Pem {
        field,
        path: path.display().to_string(),
        what: "certificate",
        source,
    };
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| no_certificate(broken_pem(error)))?;
    if chain.is_empty() {
        return Err(no_certificate(None));
    }
    Ok(chain)
}

/// `NoItemsFound` is not a cause worth printing; anything else is.
fn broken_pem(error: rustls::pki_types::pem::Error) -> Option<rustls::pki_types::pem::Error> {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => None,
        other => Some(other),
    }
}

/// Client certificates: asked for, optional (bearer tokens still work), chained to the bundle.
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        field: CLIENT_CA_FILE,
        path: path.display().to_string(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    // Unusable entries are skipped; a bundle with none left fails below.
    roots.add_parsable_certificates(certificates(path, &pem, CLIENT_CA_FILE)?);
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|source| TlsError::ClientCa {
            path: path.display().to_string(),
            source,
        })
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
