//! The container registry client the multi-arch guard reads image manifests with (OCI
//! distribution API, `GET /v2/<repository>/manifests/<digest>`).
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | [`Registry`]: the pooled client, [`Registry::send`] (every registry request), the digest cache |
//! | `auth.rs` | the token flow: `WWW-Authenticate` challenges, registry tokens |
//! | `manifest.rs` | parsing and verifying manifests |
//! | `reads.rs` | [`Reads`]: one decision's bound, back-off check and quota charge |
//!
//! Same rules as the API client: rustls (one connector builder, `upstream::https_connector`),
//! timeouts on every request, redirects never followed (hyper's client does not follow them; a
//! 3xx is an unreadable registry), and no token in any log: the org token only leaves as the
//! Basic password of the realm on the registry's own origin.

mod auth;
mod manifest;
mod reads;

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

pub use auth::{Challenge, RegistryToken};
pub use manifest::{
    Child, DOCKER_LIST, DOCKER_MANIFEST, Kind, Manifest, ManifestError, OCI_INDEX, OCI_MANIFEST,
    Role, check_digest,
};
pub use reads::Reads;

use crate::{
    config::RegistryConfig,
    error::{BoxError, ProxyError},
    secret::OrgToken,
    upstream::BuildError,
};

/// The Basic user name sent with the org token to the token realm (registries ignore it).
const USERNAME: &str = "packages-proxy";
/// Registry token answers larger than this are refused.
const MAX_TOKEN_BYTES: usize = 64 * 1024;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Reads manifests from one registry, with the org token.
pub struct Registry {
    client: HttpsClient,
    token: OrgToken,
    /// `scheme://authority`: the realm must be on it.
    origin: String,
    /// Origin and path prefix; `/v2/...` follows.
    base: String,
    timeout: Duration,
    user_agent: HeaderValue,
    /// Parsed manifests by digest: content-addressed, so never stale; bounded by bytes.
    manifests: moka::sync::Cache<String, Arc<Manifest>>,
    /// Digests being read now: a second decision needing one waits for the first read instead
    /// of paying for its own (clean-up jobs run many deletes of one package at once). A std
    /// `Mutex` around the map (never held across an await); a tokio `Mutex` per digest.
    inflight: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Registry tokens by repository, each until shortly before it expires.
    tokens: moka::sync::Cache<String, (RegistryToken, std::time::Instant)>,
}

/// Why the registry could not be read. The guard refuses the delete on any of these.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Refused before sending: the decision's bound, the client's quota, a GitHub back-off
    /// (admission's answer, passed to the client as is).
    #[error(transparent)]
    Refused(ProxyError),
    /// Connecting or reading failed.
    #[error("the registry could not be reached")]
    Unreachable(#[source] BoxError),
    /// No answer within `registry.timeout`.
    #[error("the registry did not answer in time")]
    Timeout,
    /// An answer other than the one expected (a redirect included: never followed).
    #[error("the registry answered {0}")]
    Status(StatusCode),
    /// The token flow failed.
    #[error("registry authentication failed: {0}")]
    Auth(&'static str),
    /// The manifest is not usable.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// Which one.
        digest: String,
        /// Why.
        #[source]
        source: ManifestError,
    },
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

// === impl Registry ===

impl Registry {
    /// One pooled client for the process.
    pub fn new(config: &RegistryConfig, token: OrgToken) -> Result<Self, BuildError> {
        let connector =
            crate::upstream::https_connector(config.connect_timeout, config.allow_plain_http)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let manifests = moka::sync::Cache::builder()
            .max_capacity(config.manifest_cache_bytes)
            .weigher(|digest: &String, manifest: &Arc<Manifest>| {
                manifest
                    .weight()
                    .saturating_add(u32::try_from(digest.len()).unwrap_or(u32::MAX))
            })
            .build();
        let tokens = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(3600))
            .build();
        Ok(Self {
            client,
            token,
            origin: config.origin.clone(),
            base: format!("{}{}", config.origin, config.prefix),
            timeout: config.timeout,
            user_agent: HeaderValue::from_static(concat!(
                "packages-proxy/",
                env!("CARGO_PKG_VERSION")
            )),
            manifests,
            inflight: std::sync::Mutex::default(),
            tokens,
        })
    }

    /// The manifest `digest` of `repository` (`owner/name`, lower case): from the cache, else
    /// read (through the token flow when challenged), verified and cached.
    pub async fn manifest(
        &self,
        reads: &mut Reads<'_>,
        repository: &str,
        digest: &str,
    ) -> Result<Arc<Manifest>, RegistryError> {
        let bad = |source| RegistryError::Manifest {
            digest: digest.to_owned(),
            source,
        };
        check_digest(digest).map_err(bad)?;
        if let Some(manifest) = self.manifests.get(digest) {
            reads.cached += 1;
            return Ok(manifest);
        }
        let slot = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(inflight.entry(digest.to_owned()).or_default())
        };
        let _reading = slot.lock().await;
        if let Some(manifest) = self.manifests.get(digest) {
            reads.cached += 1;
            return Ok(manifest);
        }
        let read = self.read_manifest(reads, repository, digest).await;
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
        read
    }

    /// Reads, verifies and caches one manifest (the caller holds its in-flight slot).
    async fn read_manifest(
        &self,
        reads: &mut Reads<'_>,
        repository: &str,
        digest: &str,
    ) -> Result<Arc<Manifest>, RegistryError> {
        let bad = |source| RegistryError::Manifest {
            digest: digest.to_owned(),
            source,
        };
        let url = format!("{}/v2/{repository}/manifests/{digest}", self.base);
        let mut auth = self.cached_token(repository);
        let mut answer = self.send(reads, &url, auth.clone()).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            let token = self.authenticate(reads, repository, &answer).await?;
            auth = Some(token.bearer());
            answer = self.send(reads, &url, auth).await?;
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            return Err(RegistryError::Auth("the registry refused its own token"));
        }
        if answer.status != StatusCode::OK {
            return Err(RegistryError::Status(answer.status));
        }
        let content_type = answer
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let manifest = Arc::new(Manifest::parse(digest, content_type, &answer.body).map_err(bad)?);
        self.manifests
            .insert(digest.to_owned(), Arc::clone(&manifest));
        Ok(manifest)
    }

    fn cached_token(&self, repository: &str) -> Option<HeaderValue> {
        let (token, until) = self.tokens.get(repository)?;
        (std::time::Instant::now() < until).then(|| token.bearer())
    }

    /// Answers a 401's challenge: a token from the realm, for this repository.
    async fn authenticate(
        &self,
        reads: &mut Reads<'_>,
        repository: &str,
        challenged: &Answer,
    ) -> Result<RegistryToken, RegistryError> {
        let challenge = challenged
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
            .ok_or(RegistryError::Auth("401 without a Bearer challenge"))?;
        let url = challenge
            .token_url(&self.origin)
            .ok_or(RegistryError::Auth(
                "the token realm is not on the registry's origin; the org token is not sent there",
            ))?;
        let answer = self
            .send(reads, &url, Some(self.token.basic(USERNAME)))
            .await?;
        if answer.status != StatusCode::OK {
            return Err(if answer.status == StatusCode::UNAUTHORIZED {
                RegistryError::Auth("the token realm refused the org token")
            } else {
                RegistryError::Status(answer.status)
            });
        }
        let (token, lifetime) = RegistryToken::from_answer(&answer.body)
            .ok_or(RegistryError::Auth("the token realm's answer has no token"))?;
        // Reused until 10 s before it expires, so a token never dies between check and use.
        let until = std::time::Instant::now() + lifetime.saturating_sub(Duration::from_secs(10));
        self.tokens
            .insert(repository.to_owned(), (token.clone(), until));
        Ok(token)
    }

    /// Every registry request goes through here: admitted by `reads` (bound, back-off, quota),
    /// sent with a timeout covering the body, read whole up to a bound. Never retried, never
    /// redirected.
    async fn send(
        &self,
        reads: &mut Reads<'_>,
        url: &str,
        authorization: Option<HeaderValue>,
    ) -> Result<Answer, RegistryError> {
        // The proof it was admitted and paid for; spent once the request is built and sent.
        let ticket = reads
            .registry_request()
            .await
            .map_err(RegistryError::Refused)?;
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header(header::USER_AGENT, self.user_agent.clone())
            .header(header::ACCEPT, manifest::ACCEPT);
        if let Some(value) = authorization {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| RegistryError::Unreachable(Box::new(e)))?;
        ticket.spend();
        let started = std::time::Instant::now();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| RegistryError::Unreachable(Box::new(e)))?;
            let (parts, body) = response.into_parts();
            let limit = manifest::MAX_MANIFEST_BYTES.max(MAX_TOKEN_BYTES);
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(RegistryError::Unreachable)?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RegistryError::Timeout)?;
        let status = answer.as_ref().ok().map(|a| a.status.as_u16());
        crate::metrics::registry(status, started.elapsed());
        answer
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .field("token", &self.token)
            .field("manifests_cached", &self.manifests.entry_count())
            .finish_non_exhaustive()
    }
}
