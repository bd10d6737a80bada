//! The write-ahead audit log of destructive calls: append-only JSON Lines, one record per
//! decision, and an intent record fsynced *before* an upstream mutation with its outcome after.
//!
//! The file is opened for each record (append mode), so log rotation needs no signal and a
//! missing or unwritable path shows up on the very call it would fail to audit: that call is
//! refused with 503 rather than sent unaudited. A crash between intent and outcome leaves an
//! intent without an outcome, which `packages-proxy audit list` shows.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::route::Route;

/// One line of the audit log. Never holds a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    /// `decision` (denied, dry-run or refused before sending), `intent` or `outcome`.
    pub phase: String,
    /// The proxy's request id: what records and log lines key on, unique per proxy.
    pub request_id: String,
    /// The client's own `X-Request-Id`, if it sent a plain one: kept beside the proxy's, never
    /// instead of it, so two clients choosing the same id cannot collide in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// The client's configured name.
    pub client: String,
    /// `delete_version`, `restore_version`, `delete_package` or `restore_package`.
    pub action: String,
    /// Owner login, or `@me` for `/user/...`.
    pub owner: String,
    /// Package type.
    pub package_type: String,
    /// Decoded package name.
    pub package: String,
    /// Version id, for version actions.
    pub version: Option<u64>,
    /// The canonical API path of the call (what `audit restore` replays against).
    pub path: String,
    /// `allowed`, `denied`, `dry_run`, `refused`, `completed`, `failed`, `not_sent` (queued at
    /// shutdown, never sent) or `not_applied` (reconciled: GitHub shows it was not performed).
    pub decision: String,
    /// The rule that decided, if any: the deny rule, or the first matching allow rule.
    pub rule: Option<String>,
    /// Every matching allow rule, whose protections all applied (absent in older logs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// Why, in words safe to show the client.
    pub reason: Option<String>,
    /// The upstream status, on outcome records.
    pub upstream_status: Option<u16>,
    /// GitHub's `X-GitHub-Request-Id`, on outcome records.
    pub github_request_id: Option<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// An outcome written at start for an intent a stopped process left without one, from what
    /// GitHub showed then ([`crate::reconcile`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reconciled: bool,
    /// The multi-arch guard's decision, for container deletes (absent in older logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_arch_guard: Option<crate::guard::Report>,
}

/// Writes audit records; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    path: Option<Arc<PathBuf>>,
    /// Serialises appends so records never interleave. A std `Mutex` inside `spawn_blocking`.
    lock: Arc<Mutex<()>>,
}

/// The audit log could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log")]
pub struct AuditError(#[source] std::io::Error);

// === impl AuditRecord ===

impl AuditRecord {
    /// A record for `route` by `client`, decision to be filled in.
    pub fn new(request_id: &str, client: &str, route: &Route) -> Self {
        let package = route.package.as_ref();
        Self {
            time: now(),
            phase: "decision".to_owned(),
            request_id: request_id.to_owned(),
            client_request_id: None,
            client: client.to_owned(),
            action: route.operation.as_str().to_owned(),
            owner: route.owner_login().unwrap_or_else(|| "@me".to_owned()),
            package_type: package
                .map(|p| p.package_type.as_str().to_owned())
                .unwrap_or_default(),
            package: package.map(|p| p.name.clone()).unwrap_or_default(),
            version: route.version_id,
            path: route.path(),
            decision: String::new(),
            rule: None,
            rules: Vec::new(),
            reason: None,
            upstream_status: None,
            github_request_id: None,
            dry_run: false,
            reconciled: false,
            multi_arch_guard: None,
        }
    }

    /// The same record at a later phase, with a fresh time.
    pub fn at(&self, phase: &str, decision: &str) -> Self {
        Self {
            time: now(),
            phase: phase.to_owned(),
            decision: decision.to_owned(),
            ..self.clone()
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

// === impl Audit ===

impl Audit {
    /// An audit log at `path`, checked writable now; `None` records to tracing only (allowed
    /// only while the policy allows nothing).
    pub fn open(path: Option<&Path>) -> Result<Self, AuditError> {
        if let Some(path) = path {
            append(path, b"").map_err(AuditError)?;
        }
        Ok(Self {
            path: path.map(|p| Arc::new(p.to_owned())),
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// Appends and fsyncs one record, and emits it as a tracing event.
    pub async fn write(&self, record: &AuditRecord) -> Result<(), AuditError> {
        tracing::info!(
            target: "packages_proxy::audit",
            phase = %record.phase,
            request_id = %record.request_id,
            client_request_id = record.client_request_id.as_deref(),
            client = %record.client,
            action = %record.action,
            owner = %record.owner,
            package_type = %record.package_type,
            package = %record.package,
            version = record.version,
            decision = %record.decision,
            rule = record.rule.as_deref(),
            rules = ?record.rules,
            reason = record.reason.as_deref(),
            upstream_status = record.upstream_status,
            github_request_id = record.github_request_id.as_deref(),
            dry_run = record.dry_run,
            reconciled = record.reconciled,
            multi_arch_guard = record.multi_arch_guard.as_ref().map(|g| g.decision.as_str()),
            "audit"
        );
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(record).map_err(|e| AuditError(e.into()))?;
        line.push(b'\n');
        let lock = self.lock.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
            append(&path, &line)
        })
        .await
        .map_err(|e| AuditError(std::io::Error::other(e)))?
        .map_err(AuditError)
    }
}

/// Opens in append mode (creating it), writes, and fsyncs the data.
fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

/// Reads every record of an audit log (for `audit list` and `audit restore`); lines that do not
/// parse are reported by line number.
pub fn read(path: &Path) -> std::io::Result<(Vec<AuditRecord>, Vec<usize>)> {
    let text = std::fs::read_to_string(path)?;
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) => bad.push(i + 1),
        }
    }
    Ok((records, bad))
}
