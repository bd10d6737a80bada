//! Start-up reconciliation of the audit log: every intent ends in an outcome.
//!
//! A process killed between an intent record and its outcome (`kill -9`, a crash, a host lost)
//! leaves an intent alone, and nobody knows whether GitHub performed the call. At start, `serve`
//! takes a [`Snapshot`] of the audit log it owns *before* it serves (so its own new intents are
//! never mistaken for orphans), then [`reconcile`] reads each orphan's target from GitHub through
//! the normal upstream client and writes the outcome the read proves:
//!
//! - a delete whose target is gone (404), or a restore whose target is back (200): `completed`,
//!   `reconciled: true` (so `audit restore` can undo a reconciled delete);
//! - otherwise: `not_applied`, `reconciled: true`;
//! - a read that fails (GitHub down, 5xx, timeout): no record; a warning and the
//!   `packages_proxy_destructive_decisions_total{outcome="unreconciled"}` counter. The intent
//!   stays alone and the next start tries again.
//!
//! A call whose answer never came (GitHub timed out or broke the connection after the request
//! left) is as uncertain as a crash: the gate settles it the same way at once ([`settle`]).
//!
//! An intent younger than the grace period (a previous process sharing the file may still be
//! draining and about to write the outcome) is looked at only once the grace has passed, after
//! reading the file again.

use std::{path::PathBuf, sync::Arc, time::Duration};

use http::{Method, StatusCode};

use crate::{
    admission::{self, Payer, Work},
    audit::{self, AuditRecord, Decision, Phase},
    route::Route,
    state::AppState,
    upstream::Forwarded,
};

/// Longest wait for one reconciling read.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The orphan intents found in the audit log before serving.
#[derive(Debug, Default)]
pub struct Snapshot {
    path: Option<PathBuf>,
    orphans: Vec<AuditRecord>,
}

/// What reconciling did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Orphans proven performed upstream.
    pub completed: usize,
    /// Orphans proven not performed.
    pub not_applied: usize,
    /// Orphans whose target could not be read (retried at the next start).
    pub unresolved: usize,
}

// === impl Snapshot ===

impl Snapshot {
    /// Reads the audit log at `path` (if any) and keeps its intents without an outcome.
    pub fn take(path: Option<&std::path::Path>) -> std::io::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        if !path.exists() {
            return Ok(Self::default());
        }
        let (records, _) = audit::read(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            orphans: orphans(&records),
        })
    }

    /// How many intents have no outcome.
    pub fn len(&self) -> usize {
        self.orphans.len()
    }

    /// True when every intent has its outcome.
    pub fn is_empty(&self) -> bool {
        self.orphans.is_empty()
    }
}

/// Intents with no outcome record of the same request id, action and path.
fn orphans(records: &[AuditRecord]) -> Vec<AuditRecord> {
    // One pass over the outcomes, then one over the intents: a log of a year's clean-ups (tens
    // of thousands of pairs) is read at every start, before the listener opens.
    fn key(r: &AuditRecord) -> (&str, &str, &str) {
        (&r.request_id, &r.action, &r.path)
    }
    let closed: std::collections::HashSet<_> = records
        .iter()
        .filter(|r| r.phase == Phase::Outcome)
        .map(key)
        .collect();
    records
        .iter()
        .filter(|r| r.phase == Phase::Intent && !closed.contains(&key(r)))
        .cloned()
        .collect()
}

/// Reconciles the snapshot's orphans once they are older than `grace`.
pub async fn reconcile(state: Arc<AppState>, snapshot: Snapshot, grace: Duration) -> Report {
    let mut report = Report::default();
    let Some(path) = snapshot.path else {
        return report;
    };
    if snapshot.orphans.is_empty() {
        return report;
    }
    let youngest = snapshot
        .orphans
        .iter()
        .filter_map(|r| humantime::parse_rfc3339_weak(&r.time).ok())
        .max();
    if let Some(age) = youngest.and_then(|t| t.elapsed().ok())
        && age < grace
    {
        tokio::time::sleep(grace - age).await;
    }
    // Read again: a draining predecessor may have written outcomes meanwhile.
    let records = match audit::read(&path) {
        Ok((records, _)) => records,
        Err(error) => {
            tracing::error!(%error, "audit log unreadable; intents not reconciled");
            return report;
        }
    };
    let still = orphans(&records);
    for intent in snapshot.orphans.iter().filter(|o| still.contains(o)) {
        // Asked again for each: a process sharing the log may be settling the same call.
        if state.audit.has_outcome(intent).await {
            continue;
        }
        match reconcile_one(&state, intent, AT_START).await {
            Ok(true) => report.completed += 1,
            Ok(false) => report.not_applied += 1,
            Err(why) => {
                crate::metrics::destructive("unreconciled");
                tracing::warn!(
                    request_id = %intent.request_id,
                    path = %intent.path,
                    reason = %why,
                    "cannot reconcile an intent without outcome; retried at the next start"
                );
                report.unresolved += 1;
            }
        }
    }
    tracing::info!(
        completed = report.completed,
        not_applied = report.not_applied,
        unresolved = report.unresolved,
        "audit intents without an outcome reconciled"
    );
    report
}

/// The reason a start-up reconciliation gives.
const AT_START: &str = "Reconciled at start: the intent had no outcome";

/// Settles a call sent while its answer never came (`record` is its intent's record): reads its
/// target and records the outcome the read proves, `reconciled: true`, so that a delete GitHub
/// performed is undone by `audit restore` like any other. `Some(performed)`, or `None` when the
/// read failed too (no record is written: the caller records the failure).
pub async fn settle(state: &AppState, record: &AuditRecord) -> Result<bool, String> {
    const UNANSWERED: &str = "Reconciled after the call: GitHub's answer never came";
    reconcile_one(state, record, UNANSWERED).await
}

/// Reads the intent's target and records the outcome (`why` opens its reason);
/// `Ok(performed)`, or why not (the read or the record failed: nothing was written).
async fn reconcile_one(state: &AppState, intent: &AuditRecord, why: &str) -> Result<bool, String> {
    let target = intent.path.strip_suffix("/restore").unwrap_or(&intent.path);
    let present = target_present(state, target).await?;
    let performed = if intent.action.starts_with("delete") {
        !present
    } else {
        present
    };
    let decision = if performed {
        Decision::Completed
    } else {
        Decision::NotApplied
    };
    let mut outcome = intent.at(Phase::Outcome, decision);
    outcome.reconciled = true;
    outcome.reason = Some(format!(
        "{why}, and GitHub shows the target {}",
        if present { "present" } else { "gone" }
    ));
    state
        .audit
        .write(&outcome)
        .await
        .map_err(|error| format!("the reconciled outcome was not written: {error}"))?;
    crate::metrics::destructive(&format!("reconciled_{decision}"));
    if performed {
        // Its process never got to drop the target from the caches (it died, or the answer never
        // came): every replica would serve it until its TTL ran out.
        match Route::parse(&Method::GET, target, None) {
            Ok(route) => crate::gate::invalidate(state, &route).await,
            Err(_) => tracing::warn!(path = %intent.path, "a reconciled target names no route"),
        }
    }
    Ok(performed)
}

/// GETs `path` (a version or a package) from GitHub: `Ok(true)` on 200, `Ok(false)` on 404.
async fn target_present(state: &AppState, path: &str) -> Result<bool, String> {
    let forwarded = Forwarded::from_request(&http::HeaderMap::new()).map_err(|e| e.to_string())?;
    // The proxy pays for its own reads; refused below GitHub's reserve, then retried next start.
    let ticket = admission::admit(state, &Payer::Proxy, Work::Check)
        .await
        .map_err(|e| e.to_string())?;
    let read = state.upstream.send(&ticket, Method::GET, path, &forwarded);
    let response = tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .map_err(|_| "GitHub did not answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    match response.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        other => Err(format!("GitHub answered {other}")),
    }
}
