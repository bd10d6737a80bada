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
    pub phase: Phase,
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
    /// What was decided or what happened (see [`Decision`]).
    pub decision: Decision,
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

/// Where in a destructive call's life a record was written. Serialised as the snake_case name
/// (`"decision"`, `"intent"`, `"outcome"`), the strings older logs hold.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Decided before anything was sent: denied, dry run, or refused.
    Decision,
    /// Allowed and about to be sent: fsynced before the upstream mutation.
    Intent,
    /// What happened to an intent.
    Outcome,
}

/// The decision or result a record states. Serialised as the snake_case name (`"dry_run"`,
/// `"not_sent"`, ...), the strings older logs hold and `audit list --decision` takes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed by policy (the intent's decision).
    Allowed,
    /// Refused by policy or a protected tag (403).
    Denied,
    /// Allowed, but a dry run: nothing was sent.
    DryRun,
    /// Refused before sending for another reason: a guard, a queue, a back-off, a rule budget.
    Refused,
    /// Sent, and GitHub answered with success.
    Completed,
    /// Sent, and GitHub answered with an error, or no answer came.
    Failed,
    /// Allowed and queued, never sent: shutdown, a GitHub back-off past the queue's patience,
    /// a full upstream queue.
    NotSent,
    /// Reconciled at start: GitHub shows the intent was not performed.
    NotApplied,
}

/// Writes audit records; cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    path: Option<Arc<PathBuf>>,
    /// Serialises appends so records never interleave. A std `Mutex` inside `spawn_blocking`.
    lock: Arc<Mutex<()>>,
}

// === impl Audit (enabled) ===

impl Audit {
    /// Whether an audit log is configured: without one no allowed call may be sent.
    pub fn is_enabled(&self) -> bool {
        self.path.is_some()
    }
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
            phase: Phase::Decision,
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
            // A placeholder: every written record states its own through `at`.
            decision: Decision::Allowed,
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
    pub fn at(&self, phase: Phase, decision: Decision) -> Self {
        Self {
            time: now(),
            phase,
            decision,
            ..self.clone()
        }
    }
}

// === impl Phase ===

impl Phase {
    /// The name in the log (`intent`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decision => "decision",
            Self::Intent => "intent",
            Self::Outcome => "outcome",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the name in the log, for tools and tests that read one.
impl PartialEq<&str> for Phase {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

// === impl Decision ===

impl Decision {
    /// The name in the log and in metrics (`completed`, `dry_run`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::DryRun => "dry_run",
            Self::Refused => "refused",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::NotSent => "not_sent",
            Self::NotApplied => "not_applied",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = String;

    /// The name in the log (`completed`, `dry_run`, ...), as `audit list --decision` takes it.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        const ALL: [Decision; 8] = [
            Decision::Allowed,
            Decision::Denied,
            Decision::DryRun,
            Decision::Refused,
            Decision::Completed,
            Decision::Failed,
            Decision::NotSent,
            Decision::NotApplied,
        ];
        ALL.into_iter()
            .find(|decision| decision.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<_> = ALL.iter().map(|d| d.as_str()).collect();
                format!("unknown decision {name:?}; one of: {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the name in the log, for tools and tests that read one.
impl PartialEq<&str> for Decision {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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
            // Checks it is writable, and ends a last line a crash left without its newline.
            append(path, b"").map_err(|error| {
                AuditError(std::io::Error::new(
                    error.kind(),
                    format!("{}: {error}", path.display()),
                ))
            })?;
        }
        Ok(Self {
            path: path.map(|p| Arc::new(p.to_owned())),
            lock: Arc::new(Mutex::new(())),
        })
    }

    /// Whether the log already holds an outcome for `intent`'s call (same request id, action
    /// and path), written by this process or another one sharing the file. `false` without a
    /// log, or if it cannot be read.
    pub async fn has_outcome(&self, intent: &AuditRecord) -> bool {
        let Some(path) = self.path.clone() else {
            return false;
        };
        let (request_id, action, target) = (
            intent.request_id.clone(),
            intent.action.clone(),
            intent.path.clone(),
        );
        tokio::task::spawn_blocking(move || {
            read(&path).is_ok_and(|(records, _)| {
                records.iter().any(|r| {
                    r.phase == Phase::Outcome
                        && r.request_id == request_id
                        && r.action == action
                        && r.path == target
                })
            })
        })
        .await
        .unwrap_or(false)
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

/// Opens in append mode (creating it), writes, and fsyncs the data. A last line left without
/// its newline (a write cut short by a full disk, by another process's crash) is ended first,
/// or this record would be glued onto it and lost to every reader.
fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1)?;
    }
    if last[0] == b'\n' {
        file.write_all(bytes)?;
    } else {
        let mut ended = Vec::with_capacity(bytes.len() + 1);
        ended.push(b'\n');
        ended.extend_from_slice(bytes);
        file.write_all(&ended)?;
    }
    file.sync_data()
}

/// Reads every record of an audit log (for `audit list` and `audit restore`); lines that do not
/// parse (a torn write, bytes that are not UTF-8) are reported by line number and skipped.
pub fn read(path: &Path) -> std::io::Result<(Vec<AuditRecord>, Vec<usize>)> {
    let bytes = std::fs::read(path)?;
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => records.push(record),
            Err(_) => bad.push(i + 1),
        }
    }
    Ok((records, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by a hostile review: a write cut short while the proxy ran (a full disk) left a torn
    // last line, and the next record, glued onto it, was lost to every reader.
    #[test]
    fn a_record_after_a_torn_line_starts_a_line_of_its_own() {
        let path = std::env::temp_dir().join(format!(
            "packages-proxy-audit-torn-{}.jsonl",
            std::process::id()
        ));
        std::fs::write(&path, "{\"time\":\"2026-01-0").unwrap();
        append(&path, b"{\"a\":1}\n").unwrap();
        append(&path, b"{\"b\":2}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text, "{\"time\":\"2026-01-0\n{\"a\":1}\n{\"b\":2}\n");
    }

    /// Guards the log format: a line an older proxy wrote (phase and decision as plain strings)
    /// reads into the enums and writes back byte for byte.
    #[test]
    fn an_older_log_line_reads_and_writes_back_the_same() {
        let line = concat!(
            r#"{"time":"2026-01-02T03:04:05.678Z","phase":"outcome","request_id":"r1","#,
            r#""client":"ci","action":"delete_version","owner":"acme","#,
            r#""package_type":"container","package":"web","version":7,"#,
            r#""path":"/orgs/acme/packages/container/web/versions/7","#,
            r#""decision":"not_applied","rule":null,"reason":null,"upstream_status":null,"#,
            r#""github_request_id":null,"dry_run":false}"#,
        );
        let record: AuditRecord = serde_json::from_str(line).unwrap();
        assert_eq!(record.phase, Phase::Outcome);
        assert_eq!(record.decision, Decision::NotApplied);
        assert_eq!(serde_json::to_string(&record).unwrap(), line);
        for (decision, name) in [
            (Decision::Allowed, "allowed"),
            (Decision::Denied, "denied"),
            (Decision::DryRun, "dry_run"),
            (Decision::Refused, "refused"),
            (Decision::Completed, "completed"),
            (Decision::Failed, "failed"),
            (Decision::NotSent, "not_sent"),
            (Decision::NotApplied, "not_applied"),
        ] {
            assert_eq!(
                serde_json::to_string(&decision).unwrap(),
                format!("\"{name}\"")
            );
            assert_eq!(decision.as_str(), name);
        }
        for phase in [Phase::Decision, Phase::Intent, Phase::Outcome] {
            let json = format!("\"{}\"", phase.as_str());
            assert_eq!(serde_json::to_string(&phase).unwrap(), json);
        }
    }
}
