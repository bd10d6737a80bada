//! The multi-arch guard: a container version that a *tagged* image index references (a platform
//! manifest or a build attestation) is never deleted, because `docker pull :tag` would then fail
//! with `manifest unknown`. Clean-up jobs that "delete untagged versions" delete exactly those.
//!
//! One decision: read the package's versions fresh from GitHub (paginated, bounded), read the
//! image manifest of every tagged version from the registry ([`crate::registry`], cached by
//! digest), collect every digest an index references (nested indexes too), and refuse (409) when
//! the version's digest (its `name`) is among them, naming the tagged version that holds it.
//!
//! - Fail closed: a list or registry read that fails, or a manifest that does not parse or verify,
//!   refuses the delete (503) unless the rule says `multi_arch_guard = false`.
//! - A whole-package delete is not guarded: it removes every index together with the manifests
//!   it references, so no tag is left pointing at a missing manifest (`protect_tags` is the tool
//!   to keep a package's tags).
//! - Every upstream read is charged to the client and bounded ([`Reads`]).
//! - The [`Report`] goes into the audit record and the dry-run answer.

use std::collections::HashSet;

use http::{HeaderMap, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::{
    admission::{Payer, Ticket},
    error::{DisplayChain, ProxyError},
    registry::{Reads, RegistryError, Role},
    route::{Operation, PackageType, Query, Route},
    state::AppState,
    upstream::Forwarded,
};

/// Most version pages read per decision (100 versions each).
const MAX_PAGES: u32 = 100;

/// What the guard decided and what it read: a field of the audit record and of the dry-run answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    /// `allow`, `refuse` (a tagged index holds the version), `unavailable` (could not check:
    /// refused, fail closed), `limited` (a read bound, quota or back-off stopped the check:
    /// refused), `not_found`, `off` (the rule switched it off) or `whole_package` (not guarded).
    pub decision: String,
    /// The digest (version `name`) of the version to delete, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The tagged version whose index references it, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<Holder>,
    /// Tagged versions whose manifests were checked.
    pub tagged_versions: u32,
    /// Requests sent to the registry (token fetches included).
    pub registry_reads: u32,
    /// Manifests answered from the digest cache.
    pub cached_manifests: u32,
}

/// The tagged version holding the one to delete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// Its version id.
    pub version_id: u64,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its digest (the index).
    pub digest: String,
    /// What the version to delete is to it (`the linux/arm64 platform manifest`, ...).
    pub role: String,
}

/// The guard's answer: a report for the audit (`None`: the guard does not apply), and the refusal.
#[derive(Debug)]
pub struct Verdict {
    /// For the audit record and the dry-run answer.
    pub report: Option<Report>,
    /// Set when the delete must not be sent.
    pub refusal: Option<ProxyError>,
}

/// One package version as listed.
struct Listed {
    id: u64,
    name: String,
    tags: Vec<String>,
}

/// What a decision learned before it ended (kept for the report when it ends in an error).
#[derive(Default)]
struct Progress {
    digest: Option<String>,
    tagged: u32,
}

/// Runs the guard for a delete the policy allowed; `enabled` is the matching rules' combined
/// `multi_arch_guard` (on unless every matching rule turns it off). `lent`: the upstream slot
/// its Packages API reads go out on, when the caller holds one (a mutation's second look).
pub(crate) async fn check(
    state: &AppState,
    route: &Route,
    enabled: bool,
    payer: &Payer,
    lent: Option<&crate::upstream::Permit>,
) -> Verdict {
    let container = route
        .package
        .as_ref()
        .is_some_and(|p| p.package_type == PackageType::Container);
    let deleting = matches!(
        route.operation,
        Operation::DeleteVersion | Operation::DeletePackage
    );
    if !(container && deleting) {
        return Verdict {
            report: None,
            refusal: None,
        };
    }
    let skipped = |decision: &'static str| {
        crate::metrics::guard(decision);
        Verdict {
            report: Some(Report::empty(decision)),
            refusal: None,
        }
    };
    if !enabled {
        return skipped("off");
    }
    if route.operation == Operation::DeletePackage {
        return skipped("whole_package");
    }
    let mut reads = Reads::new(state, payer, lent);
    let mut progress = Progress::default();
    let result = decide(state, route, &mut reads, &mut progress).await;
    let (decision, held_by, refusal) = match result {
        Ok(None) => ("allow", None, None),
        Ok(Some((holder, error))) => ("refuse", Some(holder), Some(error)),
        Err(error) => (failure_kind(&error), None, Some(error)),
    };
    crate::metrics::guard(decision);
    let report = Report {
        decision: decision.to_owned(),
        digest: progress.digest,
        held_by,
        tagged_versions: progress.tagged,
        registry_reads: reads.registry,
        cached_manifests: reads.cached,
    };
    Verdict {
        report: Some(report),
        refusal,
    }
}

fn failure_kind(error: &ProxyError) -> &'static str {
    match error.status() {
        StatusCode::NOT_FOUND => "not_found",
        status if status.is_server_error() => "unavailable",
        _ => "limited",
    }
}

/// `Ok(None)`: nothing holds the version. `Ok(Some)`: the holder and the 409 naming it.
async fn decide(
    state: &AppState,
    route: &Route,
    reads: &mut Reads<'_>,
    progress: &mut Progress,
) -> Result<Option<(Holder, ProxyError)>, ProxyError> {
    let repository = repository_of(route)?;
    let versions = list_versions(state, route, reads).await?;
    let target_id = route.version_id.unwrap_or_default();
    let target = match versions.iter().find(|v| v.id == target_id) {
        Some(version) => version.name.clone(),
        None => read_version(state, route, reads).await?.name,
    };
    progress.digest = Some(target.clone());
    let tagged: Vec<&Listed> = versions
        .iter()
        .filter(|v| !v.tags.is_empty() && v.id != target_id)
        .collect();
    progress.tagged = u32::try_from(tagged.len()).unwrap_or(u32::MAX);
    for version in tagged {
        let mut pending = vec![version.name.clone()];
        let mut seen = HashSet::new();
        while let Some(digest) = pending.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let manifest = state
                .registry
                .manifest(reads, &repository, &digest)
                .await
                .map_err(|error| unreadable(error, version))?;
            for child in &manifest.children {
                if child.digest == target {
                    let holder = Holder {
                        version_id: version.id,
                        tags: version.tags.clone(),
                        digest: version.name.clone(),
                        role: child.role.describe(),
                    };
                    let error = held(target_id, &target, &repository, &holder);
                    return Ok(Some((holder, error)));
                }
                if child.role == Role::Index {
                    pending.push(child.digest.clone());
                }
            }
        }
    }
    Ok(None)
}

/// The 409 naming the tagged version that holds the target.
fn held(id: u64, digest: &str, repository: &str, holder: &Holder) -> ProxyError {
    let tag = holder.tags.first().map_or("", String::as_str);
    ProxyError::Conflict(format!(
        "Version {id} ({digest}) is {} of the multi-arch image tagged {} (version {}); \
         deleting it would break `docker pull {repository}:{tag}`. Delete or untag version {} first",
        holder.role,
        holder.tags.join(", "),
        holder.version_id,
        holder.version_id,
    ))
}

/// A registry failure as the client sees it: a refusal before sending passes as is; anything
/// else fails closed with 503.
fn unreadable(error: RegistryError, version: &Listed) -> ProxyError {
    if let RegistryError::Refused(refused) = error {
        return refused;
    }
    // The client learns what kind of failure it was; the causes (host names, resolver and TLS
    // errors) go to the operator's log only.
    tracing::warn!(
        version = version.id,
        error = %DisplayChain(&error),
        "multi-arch guard: the registry failed; the delete was not sent"
    );
    ProxyError::Unavailable(format!(
        "The multi-arch guard could not read the image manifest of tagged version {} ({}) from \
         the container registry: {error}. The delete was not sent (fail closed); retry later, or \
         set multi_arch_guard = false on the policy rule to delete without this check",
        version.id,
        version.tags.join(", "),
    ))
}

/// `owner/name` in lower case, as the registry names the image.
fn repository_of(route: &Route) -> Result<String, ProxyError> {
    let owner = route.owner_login().ok_or_else(|| {
        ProxyError::Unprocessable(
            "The multi-arch guard needs the owner's login to find the image in the registry, \
             and /user/... does not name it: use /users/LOGIN/... (or a rule with \
             multi_arch_guard = false)"
                .to_owned(),
        )
    })?;
    let name = route
        .package
        .as_ref()
        .map(|p| p.name.to_ascii_lowercase())
        .unwrap_or_default();
    let valid = !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    if !valid {
        return Err(ProxyError::Unprocessable(format!(
            "The multi-arch guard cannot name {name:?} in the registry (not a valid image name)"
        )));
    }
    Ok(format!("{owner}/{name}"))
}

/// Every active version, newest first, read fresh (never the cache).
async fn list_versions(
    state: &AppState,
    route: &Route,
    reads: &mut Reads<'_>,
) -> Result<Vec<Listed>, ProxyError> {
    let mut list = route.clone();
    list.operation = Operation::ListVersions;
    let mut out = Vec::new();
    for page in 1..=MAX_PAGES {
        list.query = Query {
            per_page: Some(100),
            page: Some(page),
            ..Query::default()
        };
        let ticket = reads.api_request().await?;
        let body = api_get(state, &ticket, reads.lent, &list.path_and_query()).await?;
        let versions = body
            .as_array()
            .ok_or_else(|| unavailable("the version list is not a JSON array".to_owned()))?;
        out.extend(versions.iter().filter_map(Listed::from_json));
        if versions.len() < 100 {
            return Ok(out);
        }
    }
    Err(ProxyError::Unprocessable(format!(
        "The multi-arch guard checks packages of up to {} versions; delete older versions \
         through a rule with multi_arch_guard = false, or the whole package",
        MAX_PAGES * 100
    )))
}

/// The version itself, when the list did not show it (a 404 is the client's answer).
async fn read_version(
    state: &AppState,
    route: &Route,
    reads: &mut Reads<'_>,
) -> Result<Listed, ProxyError> {
    let mut get = route.clone();
    get.operation = Operation::GetVersion;
    get.query = Query::default();
    let ticket = reads.api_request().await?;
    let body = api_get(state, &ticket, reads.lent, &get.path_and_query()).await?;
    Listed::from_json(&body).ok_or_else(|| unavailable("the version has no id and name".to_owned()))
}

/// One fresh GET to the Packages API with the org token; 404 stays 404, the rest fails closed.
async fn api_get(
    state: &AppState,
    ticket: &Ticket,
    lent: Option<&crate::upstream::Permit>,
    path: &str,
) -> Result<serde_json::Value, ProxyError> {
    let forwarded = Forwarded::from_request(&HeaderMap::new())?;
    let read = async {
        let response = state
            .upstream
            .send_on(ticket, lent, Method::GET, path, &forwarded)
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(ProxyError::NotFound);
        }
        if status != StatusCode::OK {
            return Err(unavailable(format!("GitHub answered {status}")));
        }
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| unavailable(e.to_string()))
    };
    match tokio::time::timeout(state.config.upstream.timeout * 2, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(
            kept @ (ProxyError::BackingOff { .. }
            | ProxyError::NotFound
            | ProxyError::Unavailable(_)),
        )) => Err(kept),
        Ok(Err(other)) => Err(unavailable(other.to_string())),
        Err(_) => Err(unavailable("GitHub timed out".to_owned())),
    }
}

fn unavailable(why: String) -> ProxyError {
    ProxyError::Unavailable(format!(
        "The multi-arch guard could not list the package's versions ({why}); the delete was not \
         sent (fail closed)"
    ))
}

// === impl Report ===

impl Report {
    fn empty(decision: &str) -> Self {
        Self {
            decision: decision.to_owned(),
            digest: None,
            held_by: None,
            tagged_versions: 0,
            registry_reads: 0,
            cached_manifests: 0,
        }
    }
}

// === impl Listed ===

impl Listed {
    fn from_json(version: &serde_json::Value) -> Option<Self> {
        let tags = version["metadata"]["container"]["tags"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            id: version["id"].as_u64()?,
            name: version["name"].as_str()?.to_owned(),
            tags,
        })
    }
}
