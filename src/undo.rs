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
    /// What came of it.
    pub outcome: Outcome,
}

/// What came of one restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A dry run of this tool: nothing was sent.
    WouldRestore,
    /// The proxy's answer (GitHub's, through it): restored if a 2xx that is not a dry run.
    Answered(StatusCode),
    /// The proxy's policy only dry-runs restores for this client: nothing was restored.
    DryRunByPolicy,
    /// No answer (the proxy unreachable, a timeout): unknown whether it was restored.
    NoAnswer(String),
}

impl Outcome {
    /// Whether the version is known restored.
    pub fn restored(&self) -> bool {
        matches!(self, Self::Answered(status) if status.is_success())
    }
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
    // Deleted and not restored since, in the log's order: a second run (or a restore made by
    // hand through the proxy) does not restore again what a completed restore brought back.
    let mut gone: Vec<(&str, bool)> = Vec::new();
    for record in records {
        if record.phase != Phase::Outcome || record.decision != Decision::Completed {
            continue;
        }
        match record.action.as_str() {
            "delete_package" | "delete_version" if filter.matches(record) => {
                let path = record.path.as_str();
                if !gone.iter().any(|(p, _)| *p == path) {
                    gone.push((path, record.action == "delete_package"));
                }
            }
            "restore_package" | "restore_version" => {
                let target = record.path.strip_suffix("/restore").unwrap_or(&record.path);
                gone.retain(|(p, _)| *p != target);
            }
            _ => {}
        }
    }
    for (path, package) in gone {
        let into = if package {
            &mut deleted.packages
        } else {
            &mut deleted.versions
        };
        into.push(path.to_owned());
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

/// How long one restore may take through the proxy (its queue and pace included).
const RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Whether an answer's body is the proxy's dry-run report.
fn reports_dry_run(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|report| report["dry_run"] == serde_json::Value::Bool(true))
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
                outcome: Outcome::WouldRestore,
            });
            continue;
        }
        // Asked for for real: a proxy whose policy only dry-runs restores answers 200 with a
        // report (`"dry_run": true`), which restored nothing.
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}/restore", proxy_url.trim_end_matches('/')))
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", "packages-proxy-audit-restore")
            .header(crate::gate::DRY_RUN_HEADER, "0")
            .body(Empty::new())?;
        let exchange = async {
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        let outcome = match tokio::time::timeout(RESTORE_TIMEOUT, exchange).await {
            Ok(Ok((status, body))) if status.is_success() && reports_dry_run(&body) => {
                Outcome::DryRunByPolicy
            }
            Ok(Ok((status, _))) => Outcome::Answered(status),
            // One version's failure does not stop the others: each is reported.
            Ok(Err(error)) => Outcome::NoAnswer(format!("{error:#}")),
            Err(_) => Outcome::NoAnswer(format!("no answer within {}s", RESTORE_TIMEOUT.as_secs())),
        };
        out.push(Restored {
            path: path.clone(),
            outcome,
        });
    }
    Ok(out)
}
