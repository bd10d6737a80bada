//! `[server.tls]`: the TLS settings as written, validated by reading every file once, and the
//! fingerprint a client certificate is named by (`clients[].cert_sha256`).
//!
//! Here, below the listener, so that config names nothing above it: `tls` builds the acceptor
//! and the reloading certificate from what this module reads and checks.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ConfigBuilder, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{WantsServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

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
    /// The leaf certificate is outside its validity period: every handshake would fail.
    #[error("the certificate in {path} is not valid now (valid from {not_before} to {not_after})")]
    NotValidNow {
        /// The file.
        path: String,
        /// Its `notBefore`, RFC 3339.
        not_before: String,
        /// Its `notAfter`, RFC 3339.
        not_after: String,
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

/// A certificate and key as read, and what they parse to.
pub(crate) struct Pair {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
    pub(crate) key: CertifiedKey,
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
    /// `read_files`: also load the files (at start and in `check-config`); a reload does not,
    /// since the TLS task reloads them on its own and a file mid-rotation must not hold up a
    /// reload of clients and policy.
    pub(crate) fn validate(self, read_files: bool) -> Result<TlsConfig, ConfigError> {
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
        if read_files {
            load(&config).map_err(|source| ConfigError::Tls {
                field: source.field().to_owned(),
                source,
            })?;
        }
        Ok(config)
    }
}

// === impl TlsError ===

impl TlsError {
    /// The config key at fault (`server.tls.cert_file`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Read { field, .. } | Self::Pem { field, .. } => field,
            Self::NotValidNow { .. } => CERT_FILE,
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
    pub(crate) fn parse(
        cert_file: &Path,
        key_file: &Path,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertifiedKey, TlsError> {
        let chain = certificates(cert_file, cert_pem, CERT_FILE)?;
        let not_after = check_validity(cert_file, &chain[0])?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::Pem {
            field: KEY_FILE,
            path: key_file.display().to_string(),
            what: "private key",
            source: broken_pem(error),
        })?;
        let key =
            CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(TlsError::Key)?;
        // The pair in use (at start, or swapped in by a reload): when to renew it by.
        metrics::gauge!("packages_proxy_tls_cert_expiry_timestamp_seconds").set(not_after as f64);
        Ok(key)
    }
}

/// Refuses a leaf certificate outside its validity period (expired, or not yet valid: a clock
/// or a rotation gone wrong); returns its `notAfter` as Unix seconds.
fn check_validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let unusable = || TlsError::Pem {
        field: CERT_FILE,
        path: path.display().to_string(),
        what: "certificate",
        source: None,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|_| unusable())?;
    let validity = cert.validity();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if now < from || now > until {
        let rfc3339 = |t: i64| {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
            humantime::format_rfc3339_seconds(at).to_string()
        };
        return Err(TlsError::NotValidNow {
            path: path.display().to_string(),
            not_before: rfc3339(from),
            not_after: rfc3339(until),
        });
    }
    Ok(until)
}

/// Reads and checks every file of `config` (the certificate and key first, then the client CAs)
/// and starts rustls's server setup with them: what `check-config` runs, and what the listener
/// (`tls::Tls::new`) finishes with its reloading certificate.
pub(crate) fn load(
    config: &TlsConfig,
) -> Result<(Pair, ConfigBuilder<ServerConfig, WantsServerCert>), TlsError> {
    let pair = Pair::read(&config.cert_file, &config.key_file)?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match &config.client_ca_file {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    Ok((pair, builder))
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
