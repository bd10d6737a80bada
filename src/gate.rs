//! The destructive path: policy decision, protected tags (read fresh), dry run, budget, pacing,
//! write-ahead audit, the one upstream mutation, outcome audit, cache invalidation.
//!
//! [`send_mutation`] is the only function that sends a DELETE or a restore upstream, and it takes
//! a [`Cleared`] that only [`execute`] can build after every check passed and the intent record
//! is on disk; dry runs return before one exists. So no path around the checks exists.

use std::{sync::Arc, time::Duration};

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use crate::{
    admission::{self, Payer, Ticket, Work},
    audit::AuditRecord,
    body::{self, Body},
    error::ProxyError,
    policy::{Decision, Rule},
    route::{Operation, PackageType, Query, Route},
    state::AppState,
    upstream::Forwarded,
};

/// Everything a destructive request brings.
#[derive(Debug)]
pub struct Mutation<'a> {
    /// The typed route (a delete or restore).
    pub route: &'a Route,
    /// The client's validated headers.
    pub forwarded: &'a Forwarded,
    /// The client's name.
    pub client: &'a Arc<str>,
    /// The client's quotas.
    pub limits: &'a Arc<crate::quota::ClientLimits>,
    /// The proxy's request id.
    pub request_id: &'a str,
    /// The client's own `X-Request-Id`, if it sent a plain one (audited beside ours).
    pub client_request_id: Option<&'a str>,
    /// `X-Packages-Proxy-Dry-Run: 1` was sent.
    pub dry_run_requested: bool,
    /// Base for `Link` rewriting (unused by 204s, kept for symmetry with reads).
    pub public_base: &'a str,
}

/// Proof that a mutation passed every check and its intent is on disk.
pub struct Cleared(());

/// Runs the destructive path for one request.
pub async fn execute(
    state: &Arc<AppState>,
    m: Mutation<'_>,
) -> Result<(Response<Body>, Option<u16>), ProxyError> {
    let policy = state.policy.load_full();
    let mut record = AuditRecord::new(m.request_id, m.client, m.route);
    record.client_request_id = m.client_request_id.map(str::to_owned);
    let rule = match policy.decide(m.client, m.route) {
        Decision::Allow(rule) => rule,
        Decision::NoRule => {
            let message = format!(
                "No policy rule allows {} for this client",
                m.route.operation.as_str()
            );
            return Err(refuse(
                state,
                record,
                "denied",
                None,
                ProxyError::Forbidden(message),
            )
            .await);
        }
        Decision::DeniedBy(rule) => {
            let message = format!("Denied by rule {}", rule.name);
            return Err(refuse(
                state,
                record,
                "denied",
                Some(&rule),
                ProxyError::Forbidden(message),
            )
            .await);
        }
    };
    record.rule = Some(rule.name.clone());
    record.dry_run = policy.dry_run || m.dry_run_requested;
    let payer = Payer::client(m.client, m.limits);
    if let Err(error) = check_protected_tags(state, m.route, &rule, &payer).await {
        let decision = if error.status() == StatusCode::FORBIDDEN {
            "denied"
        } else {
            "refused"
        };
        return Err(refuse(state, record, decision, Some(&rule), error).await);
    }
    let guard = crate::guard::check(state, m.route, &rule, &payer).await;
    record.multi_arch_guard = guard.report;
    if let Some(error) = guard.refusal {
        return Err(refuse(state, record, "refused", Some(&rule), error).await);
    }
    if record.dry_run {
        crate::metrics::destructive("dry_run");
        let record = record.at("decision", "dry_run");
        state
            .audit
            .write(&record)
            .await
            .map_err(ProxyError::Audit)?;
        let guard = record.multi_arch_guard.as_ref();
        return Ok((dry_run_response(m.route, &rule, guard), None));
    }
    let max = state.config.mutations.max_queue_per_client;
    let Some(place) = state.per_client.enter(m.client, max) else {
        let error = ProxyError::TooManyRequests {
            message: format!("This client already has {max} destructive calls queued; retry later"),
            retry_after_secs: state.config.mutations.pace.as_secs().max(1),
        };
        return Err(refuse(state, record, "refused", Some(&rule), error).await);
    };
    if let Err(wait) = take_budget(state, &rule, m.client).await {
        let error = ProxyError::TooManyRequests {
            message: format!(
                "The destructive-call budget of rule {} is spent for this client",
                rule.name
            ),
            retry_after_secs: wait.as_secs().max(1),
        };
        return Err(refuse(state, record, "refused", Some(&rule), error).await);
    }
    // During a GitHub back-off the queue waits (up to the queue's patience), never sends.
    if let Some(wait) = state.upstream.budget.backoff_remaining()
        && wait <= state.config.mutations.max_queue_wait
    {
        tokio::time::sleep(wait).await;
    }
    let ticket = match admission::admit(state, &payer, Work::Mutation).await {
        Ok(ticket) => ticket,
        Err(error) => return Err(refuse(state, record, "refused", Some(&rule), error).await),
    };
    let intent = record.at("intent", "allowed");
    state
        .audit
        .write(&intent)
        .await
        .map_err(ProxyError::Audit)?;
    // From here on the mutation runs in its own task: a client that hangs up must not cancel a
    // DELETE already sent, leaving no outcome record and stale cache entries behind.
    let owned = Owned {
        route: m.route.clone(),
        forwarded: m.forwarded.clone(),
        public_base: m.public_base.to_owned(),
        request_id: m.request_id.to_owned(),
        ticket,
        _place: place,
    };
    let task = tokio::spawn(complete(state.clone(), owned, record, Cleared(())));
    task.await
        .unwrap_or_else(|error| Err(ProxyError::Internal(Box::new(error))))
}

/// What the mutation task owns.
struct Owned {
    route: Route,
    forwarded: Forwarded,
    public_base: String,
    request_id: String,
    /// The admission point's ticket for the one upstream request.
    ticket: Ticket,
    /// The client's place in the queue, held until the mutation is done.
    _place: crate::pace::Place,
}

/// Slot, send, outcome record, invalidation: everything after the intent is on disk.
async fn complete(
    state: Arc<AppState>,
    m: Owned,
    record: AuditRecord,
    cleared: Cleared,
) -> Result<(Response<Body>, Option<u16>), ProxyError> {
    // The slot is claimed after the intent is on disk, so the fsync never eats into the pace:
    // the send follows its slot at once.
    if let Err(error) = wait_for_slot(&state).await {
        let mut outcome = record.at("outcome", "refused");
        outcome.reason = Some(error.to_string());
        crate::metrics::destructive("refused");
        if let Err(audit_error) = state.audit.write(&outcome).await {
            tracing::error!(error = %audit_error, "audit outcome of a refused mutation not written");
        }
        return Err(error);
    }
    let sent = send_mutation(&state, &m, cleared).await;
    let mut outcome = record.at("outcome", "failed");
    if let Ok(response) = &sent {
        outcome.upstream_status = Some(response.status().as_u16());
        outcome.github_request_id = response
            .headers()
            .get("x-github-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response.status().is_success() {
            outcome.decision = "completed".to_owned();
            invalidate(&state, &m.route).await;
        }
    } else if let Err(error) = &sent {
        outcome.reason = Some(error.to_string());
    }
    crate::metrics::destructive(&outcome.decision);
    if let Err(error) = state.audit.write(&outcome).await {
        // The call was made; it cannot be unsent. The intent record stands without an outcome.
        tracing::error!(%error, request_id = %m.request_id, "audit outcome not written");
        state
            .audit_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let response = sent?;
    let status = response.status().as_u16();
    Ok((response, Some(status)))
}

/// Waits for this mutation's slot: fleet-wide through Redis when a shared tier is configured
/// (refused with 503 while Redis is down, never sent unpaced), else from the local pacer.
async fn wait_for_slot(state: &AppState) -> Result<(), ProxyError> {
    let mutations = &state.config.mutations;
    let too_long = |retry: Duration| ProxyError::TooManyRequests {
        message: "The mutation queue is full; retry later".to_owned(),
        retry_after_secs: retry.as_secs_f64().ceil().max(1.0) as u64,
    };
    if let Some(shared) = &state.shared {
        let unavailable = || {
            ProxyError::Unavailable(
                "The shared tier (Redis) that paces mutations across replicas is unavailable; \
                 destructive calls are refused rather than sent unpaced"
                    .to_owned(),
            )
        };
        if !shared.is_up() {
            return Err(unavailable());
        }
        let wait = shared
            .pace(mutations.pace, mutations.max_queue_wait)
            .await
            .map_err(|_| unavailable())?
            .map_err(too_long)?;
        refuse_past_drain(state, wait)?;
        tokio::time::sleep(wait).await;
        return shared
            .before_send(mutations.pace)
            .await
            .map_err(|_| unavailable());
    }
    let slot = state
        .pacer
        .reserve()
        .map_err(|busy| too_long(busy.retry_after))?;
    refuse_past_drain(state, slot.wait_time())?;
    slot.wait().await;
    drop(slot);
    state.pacer.before_send().await;
    Ok(())
}

/// Takes one call from the rule's budget for `client`: fleet-wide in Redis when the shared tier
/// is up, else this replica's own.
async fn take_budget(state: &AppState, rule: &Rule, client: &str) -> Result<(), Duration> {
    let Some(size) = rule.budget_size() else {
        return Ok(());
    };
    if let Some(shared) = state.shared.as_ref().filter(|s| s.is_up()) {
        let window = state.config.mutations.budget_window;
        let name = format!("{}:{client}", rule.name);
        if let Ok(result) = shared.take_budget(&name, size, window).await {
            return result.map(|_| ()).map_err(|snapshot| snapshot.retry_after);
        }
    }
    rule.take_budget(client)
}

/// While draining, a slot further away than half the drain deadline is refused (503) instead
/// of being cut off mid-wait when the process exits.
fn refuse_past_drain(state: &AppState, wait: Duration) -> Result<(), ProxyError> {
    if state.is_draining() && wait > state.config.server.drain_timeout / 2 {
        return Err(ProxyError::ShuttingDown);
    }
    Ok(())
}

/// Drops the package's cached entries and its owner's lists, fleet-wide when shared.
async fn invalidate(state: &AppState, route: &Route) {
    let scopes = crate::cache::Generations::scopes_of(route);
    if let Err(error) = crate::cache::invalidate(state, &scopes).await {
        // Only reachable if Redis failed between the send and now (mutations are refused while
        // it is down): this replica is invalidated; the others' entries expire with their TTL.
        tracing::error!(%error, "fleet-wide invalidation failed; this replica only");
        state.cache.generations.bump_alone(&scopes);
    }
}

/// The one place a mutation is sent upstream; never retried.
async fn send_mutation(
    state: &AppState,
    m: &Owned,
    _cleared: Cleared,
) -> Result<Response<Body>, ProxyError> {
    let response = state
        .upstream
        .send(
            &m.ticket,
            m.route.operation.method(),
            &m.route.path_and_query(),
            &m.forwarded,
        )
        .await?;
    let (parts, body) = response.into_parts();
    // 204 in practice: buffer what there is, so the task's answer does not depend on the client.
    let body = crate::cache::read_body(body, 64 * 1024)
        .await
        .map_err(|_| ProxyError::Upstream("reading GitHub's answer to a mutation failed".into()))?;
    let mut out = Response::new(crate::body::full(body));
    *out.status_mut() = parts.status;
    *out.headers_mut() =
        crate::proxy::response_headers(state, &m.route, &m.public_base, &parts.headers);
    Ok(out)
}

/// Audits a refusal (best effort: a refusal is safe even unaudited) and returns its error.
async fn refuse(
    state: &AppState,
    record: AuditRecord,
    decision: &str,
    rule: Option<&Arc<Rule>>,
    error: ProxyError,
) -> ProxyError {
    crate::metrics::destructive(decision);
    let mut record = record.at("decision", decision);
    record.rule = rule.map(|r| r.name.clone());
    record.reason = Some(error.to_string());
    if let Err(audit_error) = state.audit.write(&record).await {
        tracing::error!(error = %audit_error, "audit record of a refusal not written");
        state
            .audit_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    error
}

fn dry_run_response(
    route: &Route,
    rule: &Rule,
    guard: Option<&crate::guard::Report>,
) -> Response<Body> {
    let body = json!({
        "multi_arch_guard": guard,
        "dry_run": true,
        "decision": "allow",
        "rule": rule.name,
        "action": route.operation.as_str(),
        "protected_tags": rule.protected_patterns(),
        "upstream_request": {
            "method": route.operation.method().as_str(),
            "path": route.path(),
        },
        "message": "Allowed; not sent because this is a dry run",
    });
    let mut response = Response::new(body::full(body.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Refuses a delete that would remove a protected tag. Reads fresh from upstream (never the
/// cache); if that read fails, refuses (fail closed).
///
/// Each page read is an upstream request admitted and charged to the client (dry runs and
/// refused deletes too); a whole-package delete reads at most `mutations.max_check_pages`
/// pages and is refused with 422 past them.
async fn check_protected_tags(
    state: &AppState,
    route: &Route,
    rule: &Rule,
    payer: &Payer,
) -> Result<(), ProxyError> {
    let deleting = matches!(
        route.operation,
        Operation::DeleteVersion | Operation::DeletePackage
    );
    let tagged_type = route
        .package
        .as_ref()
        .is_some_and(|p| matches!(p.package_type, PackageType::Container | PackageType::Docker));
    if !(rule.protects_tags() && deleting && tagged_type) {
        return Ok(());
    }
    let mut read = route.clone();
    let pages = if route.operation == Operation::DeleteVersion {
        read.operation = Operation::GetVersion;
        1
    } else {
        read.operation = Operation::ListVersions;
        state.config.mutations.max_check_pages
    };
    for page in 1..=pages {
        if read.operation == Operation::ListVersions {
            read.query = Query {
                per_page: Some(100),
                page: Some(page),
                ..Query::default()
            };
        }
        let ticket = admission::admit(state, payer, Work::Check).await?;
        let versions = fresh_read(state, &ticket, &read).await?;
        let versions = match versions {
            serde_json::Value::Array(list) => list,
            one => vec![one],
        };
        for version in &versions {
            let tags = tags_of(version);
            if let Some(tag) = rule.protected_tag(&tags) {
                return Err(ProxyError::Forbidden(format!(
                    "The version carries the protected tag {tag}"
                )));
            }
        }
        if versions.len() < 100 {
            return Ok(());
        }
    }
    Err(ProxyError::Unprocessable(format!(
        "The package has more than {} versions to check for protected tags; delete versions \
         one by one first",
        u64::from(pages) * 100
    )))
}

async fn fresh_read(
    state: &AppState,
    ticket: &Ticket,
    route: &Route,
) -> Result<serde_json::Value, ProxyError> {
    let unavailable =
        |why: String| ProxyError::Unavailable(format!("Cannot verify protected tags: {why}"));
    let forwarded = Forwarded::from_request(&http::HeaderMap::new())?;
    let path = route.path_and_query();
    let read = state.upstream.send(ticket, Method::GET, &path, &forwarded);
    let response = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| unavailable("upstream timed out".to_owned()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(ProxyError::NotFound);
    }
    if status != StatusCode::OK {
        return Err(unavailable(format!("upstream answered {status}")));
    }
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| unavailable(e.to_string()))
}

/// Container tags (`metadata.container.tags`) or docker tags (`metadata.docker.tag`).
fn tags_of(version: &serde_json::Value) -> Vec<String> {
    let metadata = &version["metadata"];
    let tags = metadata["container"]["tags"]
        .as_array()
        .or_else(|| metadata["docker"]["tag"].as_array());
    tags.map(|list| {
        list.iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    })
    .unwrap_or_default()
}
