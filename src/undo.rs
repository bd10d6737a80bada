//! `packages-proxy audit list` and `audit restore`: find what a client deleted in a window and
//! restore it through a running proxy, so the restores take the normal path (policy, pacing,
//! audit) and are recorded as such.

use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::audit::{AuditRecord, Decision, Phase};

/// Which records to show.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this client.
    pub client: Option<String>,
    /// Not before.
    pub since: Option<SystemTime>,
    /// Not after.
    pub until: Option<SystemTime>,
    /// Package name (decoded) equals.
    pub package: Option<String>,
    /// Decision equals.
    pub decision: Option<Decision>,
}

/// What `audit restore` did for one version.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The version's API path.
    pub path: String,
    /// The proxy's answer, or `None` in a dry run.
    pub status: Option<StatusCode>,
}

// === impl Filter ===

impl Filter {
    /// Whether `record` passes.
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let time = humantime::parse_rfc3339_weak(&record.time).ok();
        self.client.as_ref().is_none_or(|c| *c == record.client)
            && self.package.as_ref().is_none_or(|p| *p == record.package)
            && self.decision.is_none_or(|d| d == record.decision)
            && self
                .since
                .is_none_or(|since| time.is_some_and(|t| t >= since))
            && self
                .until
                .is_none_or(|until| time.is_some_and(|t| t <= until))
    }
}

/// What a client deleted (completed outcomes) in the filter's window, without duplicates:
/// whole packages first (a version of a deleted package cannot be restored before it), then
/// versions, each oldest first.
pub fn deleted_targets(records: &[AuditRecord], filter: &Filter) -> Deleted {
    let mut deleted = Deleted::default();
    let mut seen = std::collections::HashSet::new();
    for record in records {
        let into = match record.action.as_str() {
            "delete_package" => &mut deleted.packages,
            "delete_version" => &mut deleted.versions,
            _ => continue,
        };
        let done = record.phase == Phase::Outcome && record.decision == Decision::Completed;
        if done && filter.matches(record) && seen.insert(record.path.as_str()) {
            into.push(record.path.clone());
        }
    }
    deleted
}

/// The paths [`deleted_targets`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Whole packages.
    pub packages: Vec<String>,
    /// Versions.
    pub versions: Vec<String>,
}

impl Deleted {
    /// Every path, in the order they are restored (packages first).
    pub fn in_restore_order(&self) -> Vec<String> {
        self.packages
            .iter()
            .chain(&self.versions)
            .cloned()
            .collect()
    }
}

/// Restores each path (`{path}/restore`) through the proxy at `proxy_url` with `token`.
pub async fn restore(
    proxy_url: &str,
    token: &str,
    paths: &[String],
    dry_run: bool,
) -> anyhow::Result<Vec<Restored>> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        if dry_run {
            out.push(Restored {
                path: path.clone(),
                status: None,
            });
            continue;
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}/restore", proxy_url.trim_end_matches('/')))
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "packages-proxy-audit-restore")
            .body(Empty::new())?;
        let response = client.request(request).await?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        out.push(Restored {
            path: path.clone(),
            status: Some(status),
        });
    }
    Ok(out)
}
