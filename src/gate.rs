//! The destructive path: policy decision, protected tags (read fresh), dry run, rule budget,
//! pacing, write-ahead audit, the one upstream mutation, outcome audit, cache invalidation.
//!
//! [`send_mutation`] is the only function that sends a DELETE or a restore upstream, and it takes
//! a [`Cleared`] that only [`execute`] can build after every check passed and the intent record
//! is on disk; dry runs return before one exists. So no path around the checks exists.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;
use tokio::sync::oneshot;

use crate::{
    admission::{self, Payer, Ticket, Work},
    audit::{self, AuditRecord, Phase},
    body::{self, Body},
    error::ProxyError,
    policy::Decision,
    protections::Protections,
    route::{Operation, PackageType, Query, Route},
    state::AppState,
    upstream::Forwarded,
};

/// The request header a client sends to ask for a dry run.
pub const DRY_RUN_HEADER: &str = "x-packages-proxy-dry-run";

/// The only dry-run header values that let a call through for real (compared case-insensitively).
const EXPLICIT_FALSE: [&str; 4] = ["0", "false", "no", "off"];

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
    /// The client asked for a dry run ([`dry_run_requested`]).
    pub dry_run_requested: bool,
    /// Base for `Link` rewriting (unused by 204s, kept for symmetry with reads).
    pub public_base: &'a str,
}

/// Whether the request asks for a dry run, failing closed: a client that asked for one must never
/// mutate. Absent: no. Exactly one header whose value is an explicit false (`0`, `false`, `no`,
/// `off`; any case, surrounding whitespace ignored): no. Any other non-empty value (`1`, `yes`,
/// `2`, `"1"`), alone or repeated (`1, 1`, two headers `true`): yes. An empty or unreadable value,
/// a false that is repeated, or a false next to anything else (`0, 1`, headers `0` then `1`): 400,
/// since the client's intent is unclear and guessing "no" could delete for real.
pub fn dry_run_requested(headers: &HeaderMap) -> Result<bool, ProxyError> {
    let bad = |why: &str| {
        ProxyError::BadRequest(format!(
            "Invalid X-Packages-Proxy-Dry-Run header: {why}. Send it once, as 1 or true for a dry \
             run or 0 or false to send the call, or leave it out"
        ))
    };
    let mut members = 0usize;
    let mut falses = 0usize;
    for value in headers.get_all(DRY_RUN_HEADER) {
        let text = value
            .to_str()
            .map_err(|_| bad("the value is not plain text"))?;
        for member in text.split(',').map(str::trim) {
            if member.is_empty() {
                return Err(bad("the value is empty"));
            }
            members += 1;
            if EXPLICIT_FALSE
                .iter()
                .any(|f| member.eq_ignore_ascii_case(f))
            {
                falses += 1;
            }
        }
    }
    match (members, falses) {
        (0, _) => Ok(false),
        (_, 0) => Ok(true),
        (1, 1) => Ok(false),
        _ => Err(bad("it is repeated with a false value, so it is ambiguous")),
    }
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
    let protections = match policy.decide(m.client, m.route) {
        Decision::Allow(protections) => protections,
        Decision::NoRule => {
            let message = format!(
                "No policy rule allows {} for this client",
                m.route.operation.as_str()
            );
            let error = ProxyError::Forbidden(message);
            return Err(refuse(state, record, audit::Decision::Denied, error).await);
        }
        Decision::DeniedBy(rule) => {
            record.rule = Some(rule.name.clone());
            let error = ProxyError::Forbidden(format!("Denied by rule {}", rule.name));
            return Err(refuse(state, record, audit::Decision::Denied, error).await);
        }
    };
    record.rules = protections.rule_names();
    record.rule = record.rules.first().cloned();
    record.dry_run = protections.dry_run() || m.dry_run_requested;
    // With the tier that paces the fleet down, a call that would be sent is refused now, before
    // its checks read GitHub on the client's quota for a send that cannot happen.
    if !record.dry_run && state.shared.as_ref().is_some_and(|s| !s.is_up()) {
        return Err(refuse(state, record, audit::Decision::Refused, pacing_tier_down()).await);
    }
    let payer = Payer::client(m.client, m.limits);
    // A call that would be sent has the queue's patience from here, once for every wait before
    // the send: a GitHub back-off (waited out before its first reads, which it would only meet),
    // the first reads of its tags and image indexes (on its client's share of the upstream
    // slots), its pace slot, a back-off after it, its send turn. `max_queue_wait` bounds them
    // together, so a client hears within it whether its call was sent.
    let patience = tokio::time::Instant::now() + state.config.mutations.max_queue_wait;
    if !record.dry_run
        && let Err(error) = wait_out_backoff(state, patience).await
    {
        return Err(refuse(state, record, audit::Decision::Refused, error).await);
    }
    let checked = tokio::time::Instant::now();
    let enabled = protections.any(crate::policy::Rule::multi_arch_guard);
    let first_look = async {
        check_protected_tags(state, m.route, &protections, &payer, None).await?;
        Ok(crate::guard::check(state, m.route, enabled, &payer, None).await)
    };
    let looked = if record.dry_run {
        first_look.await
    } else {
        tokio::time::timeout_at(patience, first_look)
            .await
            .unwrap_or_else(|_| Err(turn_too_late(state)))
    };
    let guard = match looked {
        Ok(guard) => guard,
        Err(error) => {
            // A protected tag is the policy's refusal; anything else (GitHub, the quota, the
            // patience) is a refusal of this attempt.
            let decision = if matches!(error, ProxyError::Forbidden(_)) {
                audit::Decision::Denied
            } else {
                audit::Decision::Refused
            };
            return Err(refuse(state, record, decision, error).await);
        }
    };
    record.multi_arch_guard = guard.report;
    if let Some(error) = guard.refusal {
        return Err(refuse(state, record, audit::Decision::Refused, error).await);
    }
    if record.dry_run {
        crate::metrics::destructive(audit::Decision::DryRun.as_str());
        let record = record.at(Phase::Decision, audit::Decision::DryRun);
        state
            .audit
            .write(&record)
            .await
            .map_err(|error| ProxyError::Audit(error.into()))?;
        let guard = record.multi_arch_guard.as_ref();
        return Ok((dry_run_response(m.route, &protections, guard), None));
    }
    let max = state.config.mutations.max_queue_per_client;
    let Some(place) = state.per_client.enter(m.client, max) else {
        let error = ProxyError::TooManyRequests {
            message: format!("This client already has {max} destructive calls queued; retry later"),
            retry_after_secs: state.config.mutations.pace.as_secs().max(1),
        };
        return Err(refuse(state, record, audit::Decision::Refused, error).await);
    };
    // Its place among this process's calls for the send turn, taken on arrival: a back-off
    // that holds them all lets them out at once, and they are sent in the order they came.
    let in_line = state.pacer.join_turn_line();
    // During a GitHub back-off the queue waits (within its patience), never sends: one may have
    // opened while the call read its tags.
    if let Err(error) = wait_out_backoff(state, patience).await {
        return Err(refuse(state, record, audit::Decision::Refused, error).await);
    }
    let ticket = match admission::admit(state, &payer, Work::Mutation).await {
        Ok(ticket) => ticket,
        Err(error) => return Err(refuse(state, record, audit::Decision::Refused, error).await),
    };
    // Rule budgets last, after every check that may refuse: a refused call never spends one.
    let spent = match crate::rule_budget::take(
        state.shared.as_deref(),
        protections.rules(),
        m.client,
    )
    .await
    {
        Ok(spent) => spent,
        Err(empty) => {
            ticket.refund().await;
            return Err(refuse(
                state,
                record,
                audit::Decision::Refused,
                budget_spent(&empty),
            )
            .await);
        }
    };
    // The intent is an allowed call's first record: never sent without one.
    if !state.audit.is_enabled() {
        spent.give_back(state.shared.as_deref()).await;
        ticket.refund().await;
        return Err(ProxyError::Audit("no audit log is configured".into()));
    }
    // From the intent on, the mutation runs in its own task: a client that hangs up must not
    // cancel it between its intent and its outcome (an intent left open, a budget spent on a
    // call never sent), nor a DELETE already sent (stale cache entries behind it). A call still
    // waiting for its pace slot when its client leaves is not sent (`complete`).
    let owned = Owned {
        route: m.route.clone(),
        client: m.client.clone(),
        checked,
        policy: policy.clone(),
        forwarded: m.forwarded.clone(),
        public_base: m.public_base.to_owned(),
        request_id: m.request_id.to_owned(),
        ticket,
        spent,
        _place: place,
        in_line,
        patience,
    };
    // Held by this request's future: dropped with it when the client hangs up (or resets its
    // HTTP/2 stream), which tells the task that nobody waits for the call any more.
    let (_waiting, client) = oneshot::channel::<Infallible>();
    let task = tokio::spawn(complete(state.clone(), owned, record, client, Cleared(())));
    task.await
        .unwrap_or_else(|error| Err(ProxyError::Internal(Box::new(error))))
}

/// Waits out a GitHub back-off if it ends before the call's `patience` runs out and before
/// shutdown's send deadline; else the call is refused with the back-off's own answer (or the
/// shutdown's), so the client's throttling waits and retries.
async fn wait_out_backoff(
    state: &AppState,
    patience: tokio::time::Instant,
) -> Result<(), ProxyError> {
    let Some(wait) = state.upstream.rate_limit.backoff_remaining() else {
        return Ok(());
    };
    if tokio::time::Instant::now() + wait > patience {
        // Refused at once, in GitHub's shape: the upstream call would be.
        return state.upstream.refuse_during_backoff();
    }
    state
        .pacer
        .wait_until(tokio::time::Instant::now() + wait)
        .await
        .map_err(|_| ProxyError::ShuttingDown)
}

/// Whether a mutation's send was refused before anything left (a back-off opened, the upstream
/// queue was full): not sent, so its budget is given back.
fn refused_before_sending(error: &ProxyError) -> bool {
    matches!(
        error,
        ProxyError::BackingOff(_)
            | ProxyError::UpstreamQueueFull
            | ProxyError::ShuttingDown
            | ProxyError::ClientGone
    )
}

/// Closes the intent of a call that was never sent (shutdown, a back-off, a full queue, Redis
/// unable to pace it) with its outcome, and gives its rule budgets and its upstream charge back:
/// only sent calls spend (a charge the upstream already gave back is not given twice).
async fn unsent(
    state: &AppState,
    record: &AuditRecord,
    spent: crate::rule_budget::Spent,
    ticket: &Ticket,
    error: ProxyError,
) -> ProxyError {
    spent.give_back(state.shared.as_deref()).await;
    ticket.refund_unsent();
    let decision = if refused_before_sending(&error) {
        audit::Decision::NotSent
    } else if matches!(error, ProxyError::Forbidden(_)) {
        audit::Decision::Denied
    } else {
        audit::Decision::Refused
    };
    let mut outcome = record.at(Phase::Outcome, decision);
    outcome.reason = Some(match &error {
        ProxyError::ShuttingDown => {
            "Not sent: the proxy shut down before this call could be sent".to_owned()
        }
        ProxyError::ClientGone => {
            "Not sent: the client closed the request before this call was sent".to_owned()
        }
        other if decision == audit::Decision::NotSent => format!("Not sent: {other}"),
        other => other.to_string(),
    });
    crate::metrics::destructive(decision.as_str());
    if let Err(audit_error) = state.audit.write(&outcome).await {
        tracing::error!(error = %audit_error, "audit outcome of an unsent mutation not written");
        state
            .audit_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    error
}

/// What the mutation task owns.
struct Owned {
    route: Route,
    /// The client's name: the policy is asked again right before the send.
    client: Arc<str>,
    /// When the tags and the multi-arch guard were read before the call was queued.
    checked: tokio::time::Instant,
    /// The policy they were read under: a reload since has them read again before the send.
    policy: Arc<crate::policy::Policy>,
    forwarded: Forwarded,
    public_base: String,
    request_id: String,
    /// The admission point's ticket for the one upstream request.
    ticket: Ticket,
    /// The rule budgets this call took, given back if it is not sent.
    spent: crate::rule_budget::Spent,
    /// The client's place in the queue, held until the mutation is done.
    _place: crate::pace::Place,
    /// Its place in this process's line for send turns, taken on arrival.
    in_line: crate::pace::InLine,
    /// When the queue's patience with it ends (`max_queue_wait` after it joined the queue): a
    /// call not sent by then is refused, whichever wait it was in.
    patience: tokio::time::Instant,
}

/// Slot, send, outcome record, invalidation: everything after the intent is on disk. `client`
/// closes when the client stops waiting: until the send begins, the call is then closed as
/// `not_sent` (a clean-up job killed mid-run leaves no queued deletes behind it); once sent, it
/// runs to its outcome.
async fn complete(
    state: Arc<AppState>,
    mut m: Owned,
    record: AuditRecord,
    mut client: oneshot::Receiver<Infallible>,
    cleared: Cleared,
) -> Result<(Response<Body>, Option<u16>), ProxyError> {
    let spent = std::mem::take(&mut m.spent);
    let intent = record.at(Phase::Intent, audit::Decision::Allowed);
    if let Err(error) = state.audit.write(&intent).await {
        spent.give_back(state.shared.as_deref()).await;
        m.ticket.refund_unsent();
        return Err(ProxyError::Audit(error.into()));
    }
    // The slot is claimed after the intent is on disk, so the fsync never eats into the pace:
    // the send follows its slot at once, unless a back-off GitHub opened meanwhile (then the
    // call waits it out like the queue does, or is not sent: see `wait_for_slot`).
    let claimed = AtomicBool::new(false);
    let slot = tokio::select! {
        biased;
        // A closed channel is the client's hang-up (nothing is ever sent on it).
        _ = &mut client => Err(ProxyError::ClientGone),
        slot = wait_for_slot(&state, &claimed, m.patience) => slot,
    };
    if let Err(error) = slot {
        if claimed.load(Ordering::Relaxed) && refused_before_sending(&error) {
            give_back_slot(&state).await;
        }
        return Err(unsent(&state, &record, spent, &m.ticket, error).await);
    }
    // The client is watched until the request is on the wire: `Upstream::send` may still wait
    // for the client's share of the upstream slots, or for a slot.
    let mut sending = Box::pin(send_mutation(&state, &m, cleared));
    let mut watching = true;
    let sent = loop {
        tokio::select! {
            biased;
            sent = &mut sending => break sent,
            _ = &mut client, if watching => {
                watching = false; // a oneshot is polled once after it completes
                if !m.ticket.is_settled() {
                    break Err(ProxyError::ClientGone);
                }
            }
        }
    };
    drop(sending); // a call not sent leaves the upstream queue now
    let sent = match sent {
        // Refused before its request left: its ticket is not spent (the checks repeated before
        // the send: a reload that no longer allows it, a tag or an image index that now protects
        // its target, Redis failing the pace check), or the upstream client refused it and gave
        // the charge back itself.
        Err(error) if !m.ticket.is_settled() || refused_before_sending(&error) => {
            give_back_slot(&state).await;
            return Err(unsent(&state, &record, spent, &m.ticket, error).await);
        }
        sent => sent,
    };
    let sent = match sent {
        // Sent, and GitHub's answer never came (a timeout, a broken connection): performed or
        // not, nobody knows. Settled in the background by a read of the target, as a crash's
        // intent is at the next start; the client gets its 502 or 504 now. The call's place
        // in the queue is held until then, so a shutdown waits for the outcome.
        Err(error @ (ProxyError::Upstream(_) | ProxyError::UpstreamTimeout)) => {
            let (state, place) = (state.clone(), m._place);
            tokio::spawn(async move {
                let _place = place;
                settle_unanswered(&state, &record).await;
            });
            return Err(error);
        }
        sent => sent,
    };
    let mut outcome = record.at(Phase::Outcome, audit::Decision::Failed);
    if let Ok(response) = &sent {
        outcome.upstream_status = Some(response.status().as_u16());
        outcome.github_request_id = response
            .headers()
            .get("x-github-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if response.status().is_success() {
            outcome.decision = audit::Decision::Completed;
            invalidate(&state, &m.route).await;
        }
    } else if let Err(error) = &sent {
        outcome.reason = Some(error.to_string());
    }
    crate::metrics::destructive(outcome.decision.as_str());
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

/// Records the outcome of a call whose answer never came: what a read of its target proves
/// (`reconciled: true`; a performed call invalidates its cache entries), once GitHub has had
/// `upstream.timeout` to finish it. A read that fails (GitHub down, a back-off) is tried again
/// every `upstream.timeout`: recorded `failed`, a delete GitHub performed would be skipped by
/// `audit restore`. At shutdown the intent is left open instead, for the next start to
/// reconcile once its grace has passed (read early, a delete GitHub is still performing would be
/// recorded `not_applied`); so is one another process sharing the log has settled already.
async fn settle_unanswered(state: &AppState, record: &AuditRecord) {
    let every = state.config.upstream.timeout.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = state.pacer.drain_deadline_passed() => {
                tracing::warn!(
                    request_id = %record.request_id,
                    path = %record.path,
                    "a call whose answer never came is left for the next start to reconcile"
                );
                return;
            }
        }
        if state.audit.has_outcome(record).await {
            return;
        }
        // A performed call is dropped from the caches there, as any reconciled one.
        match crate::reconcile::settle(state, record).await {
            Ok(_) => return,
            Err(why) => {
                crate::metrics::destructive("unreconciled");
                tracing::warn!(
                    request_id = %record.request_id,
                    path = %record.path,
                    reason = %why,
                    "cannot settle a call whose answer never came yet; trying again"
                );
            }
        }
    }
}

/// The 429 for a call refused because a matching rule's budget is spent.
fn budget_spent(empty: &crate::rule_budget::Empty) -> ProxyError {
    ProxyError::TooManyRequests {
        message: format!(
            "The destructive-call budget of rule {} is spent for this client",
            empty.rule
        ),
        retry_after_secs: empty.retry_after.as_secs().max(1),
    }
}

/// A claimed slot whose call was not sent: the queue moves up, fleet-wide when shared (a
/// clean-up job killed mid-run, or a replica shut down, must not hold up everyone's deletes by
/// the slots it no longer uses).
async fn give_back_slot(state: &AppState) {
    match &state.shared {
        Some(shared) => shared.unpace(state.config.mutations.pace).await,
        None => state.pacer.give_back(),
    }
}

/// The refusal of a call that would be sent while the shared tier is down.
fn pacing_tier_down() -> ProxyError {
    ProxyError::Unavailable(
        "The shared tier (Redis) that paces mutations across replicas is unavailable; \
         destructive calls are refused rather than sent unpaced"
            .to_owned(),
    )
}

/// Waits for this mutation's slot: fleet-wide through Redis when a shared tier is configured
/// (refused with 503 while Redis is down, never sent unpaced), else from the local pacer.
/// `claimed` is set once a slot is this call's (then an unsent call gives it back). A slot
/// further off than what is left of the call's `patience` is refused (429).
async fn wait_for_slot(
    state: &AppState,
    claimed: &AtomicBool,
    patience: tokio::time::Instant,
) -> Result<(), ProxyError> {
    let mutations = &state.config.mutations;
    let left = patience.saturating_duration_since(tokio::time::Instant::now());
    let too_long = |retry: Duration| ProxyError::TooManyRequests {
        message: "The mutation queue is full, or cannot send this call within max_queue_wait; \
                  retry later"
            .to_owned(),
        retry_after_secs: retry.as_secs_f64().ceil().max(1.0) as u64,
    };
    if let Some(shared) = &state.shared {
        let unavailable = pacing_tier_down;
        if !shared.is_up() {
            return Err(unavailable());
        }
        // Marked before the call: a client that hangs up while it is in flight cancels it, and
        // the slot Redis may already have given must come back (given back when none was,
        // the queue moves up by a pace; sends stay `pace` apart through their send turns).
        claimed.store(true, Ordering::Relaxed);
        let wait = match shared.pace(mutations.pace, left).await {
            Ok(Ok(wait)) => wait,
            Ok(Err(retry)) => {
                claimed.store(false, Ordering::Relaxed);
                return Err(too_long(retry));
            }
            Err(_) => {
                // Redis may have run the script and given a slot whose answer never came: given
                // back by one try in the background (the client's 503 does not wait for a
                // stalled Redis; over a stall the two commands keep their order on the one
                // connection). Given back when none was (the script never ran), the queue moves
                // up by a pace, as above; one not given back spaces later slots a pace further.
                claimed.store(false, Ordering::Relaxed);
                let (shared, pace) = (shared.clone(), mutations.pace);
                tokio::spawn(async move { shared.unpace(pace).await });
                return Err(unavailable());
            }
        };
        state
            .pacer
            .wait_until(tokio::time::Instant::now() + wait)
            .await
            .map_err(|_| ProxyError::ShuttingDown)?;
        return wait_out_backoff(state, patience).await;
    }
    let slot = state
        .pacer
        .reserve(left)
        .map_err(|busy| too_long(busy.retry_after))?;
    claimed.store(true, Ordering::Relaxed);
    slot.wait().await.map_err(|_| ProxyError::ShuttingDown)?;
    drop(slot);
    // A back-off GitHub opened while this call waited: waited out here, before the pace check,
    // so that calls it held up still go `pace` apart after it.
    wait_out_backoff(state, patience).await
}

/// The client and the policy as they are now: a reload while the call waited (a client removed,
/// a deny rule added to stop a runaway clean-up, its rule turned to a dry run) applies to every
/// call not yet sent, however long it was queued.
fn still_allowed(state: &AppState, m: &Owned) -> Result<Protections, ProxyError> {
    const LATE: &str =
        "(the configuration was reloaded while this call was queued; it was not sent)";
    if !state.clients.load().has(&m.client) {
        return Err(ProxyError::Forbidden(format!(
            "The client is no longer configured {LATE}"
        )));
    }
    match state.policy.load().decide(&m.client, &m.route) {
        Decision::Allow(protections) if !protections.dry_run() => Ok(protections),
        Decision::Allow(_) => Err(ProxyError::Forbidden(format!(
            "The policy now only reports {} for this client {LATE}",
            m.route.operation.as_str()
        ))),
        Decision::NoRule => Err(ProxyError::Forbidden(format!(
            "No policy rule allows {} for this client any more {LATE}",
            m.route.operation.as_str()
        ))),
        Decision::DeniedBy(rule) => Err(ProxyError::Forbidden(format!(
            "Denied by rule {} {LATE}",
            rule.name
        ))),
    }
}

/// Drops the package's cached entries and its owner's lists, fleet-wide when shared.
pub(crate) async fn invalidate(state: &AppState, route: &Route) {
    let scopes = crate::cache::Generations::scopes_of(route);
    if let Err(error) =
        crate::cache::invalidate(&state.cache, state.shared.as_deref(), &scopes).await
    {
        // Only reachable if Redis failed between the send and now (mutations are refused while
        // it is down): this replica is invalidated; the others' entries expire with their TTL.
        tracing::error!(%error, "fleet-wide invalidation failed; this replica only");
        state.cache.generations.bump_alone(&scopes);
    }
}

/// How old the tag and guard reads may be when a call is sent; older ones are read again.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// The one place a mutation is sent upstream; never retried.
///
/// Right before the send, in this order: the fleet's next send turn coming due (at least
/// `pace` after its last send), the call's upstream slot, the turn itself (nobody else's comes
/// until this call is sent or gives it up), the policy as it is now, and the checks that read
/// GitHub again if the first ones are older than [`RECHECK_AFTER`] or a reload changed the rules
/// since (read again if a reload comes while they read). So whatever held the call (the queue,
/// a back-off, the wait for a slot), what it checked is at most that old when it goes out: a tag
/// pushed meanwhile (a protected one, or one that puts an image index back in use) stops it.
/// The reads go out on the call's own slot, and only the call whose turn it is makes them:
/// calls a back-off held together do not all read at once. Until its turn is due a call holds
/// nothing (its client's reads are not held up behind its queued deletes), and it never holds
/// the fleet's turn while it waits for a slot (no other client's deletes wait on its client's
/// slow reads). The turn is renewed while the call reads; a turn another call took first, or one
/// that lapsed, sends the call back to waiting, its slot given back.
async fn send_mutation(
    state: &Arc<AppState>,
    m: &Owned,
    _cleared: Cleared,
) -> Result<Response<Body>, ProxyError> {
    let mut looked = (m.checked, m.policy.clone());
    // Turns go to this process's calls in the order they got here, each within what is left of
    // the queue's patience: a call that keeps losing the turn to other replicas, or waits for
    // it behind a call whose reads are slow, or for its client's upstream share, is refused (and
    // gives its slot back), never sent late. A call whose slot came at the end of its patience
    // still has one pace for its turn (due at most a pace after the last send), rather than
    // being refused once its slot came; and each round of its reads right before the send has
    // at least `LAST_READS`.
    let in_line = &m.in_line;
    let patience = m
        .patience
        .max(tokio::time::Instant::now() + state.config.mutations.pace);
    let too_late = || tokio::time::sleep_until(patience);
    let held = loop {
        still_allowed(state, m)?;
        tokio::select! {
            biased;
            () = state.pacer.drain_deadline_passed() => return Err(ProxyError::ShuttingDown),
            () = too_late() => return Err(turn_too_late(state)),
            () = in_line.first() => {}
        }
        tokio::select! {
            biased;
            () = too_late() => return Err(turn_too_late(state)),
            due = turn_due(state) => due?,
        }
        // A back-off GitHub opened while the call waited in line is waited out as the queue
        // waits one out (or the call is refused with its answer), not met at the slot.
        wait_out_backoff(state, patience).await?;
        if tokio::time::Instant::now() >= patience {
            return Err(turn_too_late(state));
        }
        // Out of the line while it waits for its slot (its client's share may be busy): the
        // calls behind it may take the turn meanwhile. Back in its place if it does not.
        in_line.step_out();
        // Shutdown's send deadline also ends the wait for a slot: past it nothing is sent.
        let held = tokio::select! {
            biased;
            () = state.pacer.drain_deadline_passed() => return Err(ProxyError::ShuttingDown),
            () = too_late() => return Err(turn_too_late(state)),
            held = state.upstream.acquire(&m.ticket) => held?,
        };
        let Some(mut turn) = try_turn(state).await? else {
            in_line.step_in();
            continue; // another call's turn came first: wait for the next, holding nothing
        };
        let attempt = async {
            let mut stale = looked.0.elapsed() >= RECHECK_AFTER;
            let mut looks = 0;
            loop {
                let policy = state.policy.load_full();
                let protections = still_allowed(state, m)?;
                if !stale && Arc::ptr_eq(&looked.1, &policy) {
                    return Ok(());
                }
                looks += 1;
                if looks > MAX_LOOKS {
                    return Err(ProxyError::Unavailable(
                        "The configuration kept changing while this call read its tags and \
                         image indexes again; it was not sent"
                            .to_owned(),
                    ));
                }
                // The proxy pays for its own second look: the call was charged already.
                let started = tokio::time::Instant::now();
                let reads_until = patience.max(started + LAST_READS);
                tokio::select! {
                    biased;
                    () = state.pacer.drain_deadline_passed() => return Err(ProxyError::ShuttingDown),
                    () = tokio::time::sleep_until(reads_until) => return Err(turn_too_late(state)),
                    looked = second_look(state, &m.route, &protections, &held) => looked?,
                }
                looked = (started, policy);
                stale = false; // read again only if a reload came meanwhile
            }
        };
        let attempted = tokio::select! {
            attempted = attempt => attempted,
            () = turn.keep(state) => {
                in_line.step_in();
                continue; // lapsed: wait for the next one
            }
        };
        // A back-off GitHub opened while the call read again (with its answer to those reads,
        // or to anyone's request meanwhile) is waited out as one that opened while it waited
        // in line, or the call is refused with its answer; it is not met at the send. The turn
        // goes back first (nothing was sent), and is taken again after the back-off. Only a
        // back-off that is open now: one that ends by itself, so the wait cannot spin.
        let backing_off = state.upstream.rate_limit.backoff_remaining().is_some();
        match attempted {
            Err(ProxyError::BackingOff(_)) | Ok(()) if backing_off => {
                drop(turn);
                wait_out_backoff(state, patience).await?;
                in_line.step_in();
                continue;
            }
            attempted => attempted?,
        }
        // Lapsed while the call read (Redis lost it): wait for the next turn.
        if turn.end(state).await? {
            break held;
        }
        in_line.step_in();
    };
    let response = state
        .upstream
        .send_holding(
            &m.ticket,
            held,
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
    *out.headers_mut() = state
        .upstream
        .response_headers(&m.route, &m.public_base, &parts.headers);
    Ok(out)
}

/// What a call whose patience is (nearly) spent still has for one round of its reads right
/// before the send (tags, image indexes): GitHub answers those in well under a second when it
/// is well, and a call is not refused for reading them once its turn came.
const LAST_READS: Duration = Duration::from_secs(5);

/// How many times a call reads its tags and image indexes again before one send: a reload
/// during the reads has them read again, but reloads faster than the reads must not hold the
/// fleet's send turn for good.
const MAX_LOOKS: u32 = 3;

/// The multi-arch guard, then the protected tags (the last read before the send: it is the
/// freshest), read again on the call's own upstream slot.
async fn second_look(
    state: &AppState,
    route: &Route,
    protections: &Protections,
    held: &crate::upstream::Permit,
) -> Result<(), ProxyError> {
    let payer = Payer::Proxy;
    let enabled = protections.any(crate::policy::Rule::multi_arch_guard);
    if let Some(refusal) = crate::guard::check(state, route, enabled, &payer, Some(held))
        .await
        .refusal
    {
        return Err(refusal);
    }
    check_protected_tags(state, route, protections, &payer, Some(held)).await
}

/// How long a send turn holds off everyone else's without being renewed: the longest the fleet's
/// deletes stall if its holder dies (a process killed, Redis answering a turn's request too late
/// for its caller).
const TURN_LEASE: Duration = Duration::from_secs(5);

/// Longest single wait for a turn while another call holds one (its lease may end early).
const TURN_POLL: Duration = Duration::from_millis(100);

/// Waits until the next send turn is due: at least `pace` after the last send, fleet-wide
/// through Redis when shared (which must answer), and after this replica's own last send (a
/// flush may have cost Redis the fleet's record of it).
async fn turn_due(state: &AppState) -> Result<(), ProxyError> {
    let pace = state.config.mutations.pace;
    loop {
        let fleet = match &state.shared {
            Some(shared) => shared
                .turn_due_in(pace)
                .await
                .map_err(|_| redis_stopped())?,
            None => Duration::ZERO,
        };
        let wait = fleet.max(state.pacer.turn_due_in());
        if wait.is_zero() {
            return Ok(());
        }
        // Longer than a pace: another call holds a turn, which ends when it is sent.
        let wait = if wait > pace {
            wait.min(TURN_POLL)
        } else {
            wait
        };
        state
            .pacer
            .wait_until(tokio::time::Instant::now() + wait)
            .await
            .map_err(|_| ProxyError::ShuttingDown)?;
    }
}

/// Takes the next send turn if it is due, else `None` (another call took it first).
async fn try_turn(state: &Arc<AppState>) -> Result<Option<Turn>, ProxyError> {
    let turn = |name, shared| Turn {
        state: state.clone(),
        name,
        shared,
        ended: false,
    };
    let Some(shared) = &state.shared else {
        return Ok(state
            .pacer
            .send_turn(TURN_LEASE)
            .ok()
            .map(|name| turn(name, false)));
    };
    if state.pacer.turn_due_in() > Duration::ZERO {
        return Ok(None);
    }
    // Named here: a turn Redis gave after its caller stopped waiting is ended by that name.
    let name = turn_name();
    match shared
        .send_turn(state.config.mutations.pace, TURN_LEASE, name)
        .await
    {
        Ok(Ok(())) => Ok(Some(turn(name, true))),
        Ok(Err(_)) => Ok(None),
        Err(_) => {
            release_in_the_background(shared.clone(), name, Given::MaybeLater);
            Err(redis_stopped())
        }
    }
}

/// A fresh turn name: random, below 2^53 (Lua's numbers hold it exactly).
fn turn_name() -> u64 {
    let random = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    (random >> 11).max(1)
}

/// Whether the turn a background release is for is surely Redis's already.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Given {
    /// The call held it: one answer from Redis settles it (released, or lapsed and given on).
    Held,
    /// Redis may give it after its caller stopped waiting: a first try can find nothing yet.
    MaybeLater,
}

/// Releases turn `name` in the background, tried for a lease and a little more: a try that
/// fails (Redis stalled), or comes before Redis gave a turn its caller stopped waiting for,
/// would otherwise hold the fleet's deletes for the rest of its lease. Its call was not sent, so
/// the next turn is due `pace` after the last real send.
fn release_in_the_background(shared: Arc<crate::shared::Shared>, name: u64, given: Given) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let until = tokio::time::Instant::now() + TURN_LEASE + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            match shared.release_turn(name).await {
                Ok(true) => return,
                Ok(false) if given == Given::Held => return,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

/// The refusal of a call that did not get its send turn within `max_queue_wait`.
fn turn_too_late(state: &AppState) -> ProxyError {
    ProxyError::TooManyRequests {
        message: "The mutation queue did not reach this call in time; it was not sent, retry \
                  later"
            .to_owned(),
        retry_after_secs: state.config.mutations.pace.as_secs().max(1),
    }
}

fn redis_stopped() -> ProxyError {
    ProxyError::Unavailable(
        "The shared tier (Redis) that paces mutations across replicas stopped answering before \
         the call was sent; it was not sent"
            .to_owned(),
    )
}

/// A call's send turn ([`crate::pace::Pacer::send_turn`], or the fleet's in Redis); one not
/// ended by the send (the call was refused, or its client left, before it was sent) is released
/// when dropped: the next turn is due `pace` after the last real send, not after this turn.
struct Turn {
    state: Arc<AppState>,
    /// Its name: the local pacer's number, or the one Redis gave (a renewal keeps it).
    name: u64,
    shared: bool,
    ended: bool,
}

impl Turn {
    /// Renews the lease while the call reads; resolves only if the turn lapsed and was given
    /// again: the call must then wait for another.
    async fn keep(&self, state: &AppState) {
        loop {
            tokio::time::sleep(TURN_LEASE / 3).await;
            let renewed = match (&state.shared, self.shared) {
                // Redis not answering is no proof the turn lapsed: asked again at the next
                // tick, and the send asks Redis once more.
                (Some(shared), true) => shared
                    .renew_turn(self.name, TURN_LEASE)
                    .await
                    .unwrap_or(true),
                _ => state.pacer.renew(self.name, TURN_LEASE),
            };
            if !renewed {
                return;
            }
        }
    }

    /// Records the send now. `Ok(false)`: the turn lapsed; another may have been given since.
    async fn end(&mut self, state: &AppState) -> Result<bool, ProxyError> {
        let name = self.name;
        let ended = match (&state.shared, self.shared) {
            (Some(shared), true) => {
                let ended = shared.sent(name).await.map_err(|_| redis_stopped())?;
                if ended {
                    state.pacer.record_send();
                }
                ended
            }
            _ => state.pacer.sent(name),
        };
        self.ended = true;
        Ok(ended)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let name = self.name;
        match (&self.state.shared, self.shared) {
            (Some(shared), true) => release_in_the_background(shared.clone(), name, Given::Held),
            _ => self.state.pacer.release(name),
        }
    }
}

/// Audits a refusal (best effort: a refusal is safe even unaudited) and returns its error.
async fn refuse(
    state: &AppState,
    record: AuditRecord,
    decision: audit::Decision,
    error: ProxyError,
) -> ProxyError {
    crate::metrics::destructive(decision.as_str());
    let mut record = record.at(Phase::Decision, decision);
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
    protections: &Protections,
    guard: Option<&crate::guard::Report>,
) -> Response<Body> {
    let rules = protections.rule_names();
    let body = json!({
        "multi_arch_guard": guard,
        "dry_run": true,
        "decision": "allow",
        "rule": rules.first(),
        "rules": rules,
        "action": route.operation.as_str(),
        "protected_tags": protections.protected_patterns(),
        "budgets": protections
            .budgets()
            .into_iter()
            .map(|(rule, size)| json!({ "rule": rule, "max_per_hour": size }))
            .collect::<Vec<_>>(),
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
    protections: &Protections,
    payer: &Payer,
    lent: Option<&crate::upstream::Permit>,
) -> Result<(), ProxyError> {
    let deleting = matches!(
        route.operation,
        Operation::DeleteVersion | Operation::DeletePackage
    );
    let tagged_type = route
        .package
        .as_ref()
        .is_some_and(|p| matches!(p.package_type, PackageType::Container | PackageType::Docker));
    if !(protections.protects_tags() && deleting && tagged_type) {
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
        let versions = fresh_read(state, &ticket, lent, &read).await?;
        let versions = match versions {
            serde_json::Value::Array(list) => list,
            one => vec![one],
        };
        for version in &versions {
            let tags = tags_of(version);
            if let Some((tag, rule)) = protections.protected_tag(&tags) {
                return Err(ProxyError::Forbidden(format!(
                    "The version carries the tag {tag}, protected by rule {rule}"
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
    lent: Option<&crate::upstream::Permit>,
    route: &Route,
) -> Result<serde_json::Value, ProxyError> {
    let unavailable =
        |why: String| ProxyError::Unavailable(format!("Cannot verify protected tags: {why}"));
    let forwarded = Forwarded::from_request(&http::HeaderMap::new())?;
    let path = route.path_and_query();
    let read = state
        .upstream
        .send_on(ticket, lent, Method::GET, &path, &forwarded);
    let response = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| unavailable("upstream timed out".to_owned()))?
        .map_err(|e| match e {
            // GitHub's own shape, so the client's throttling waits instead of retrying a 503.
            ProxyError::BackingOff(answer) => ProxyError::BackingOff(answer),
            other => unavailable(other.to_string()),
        })?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Err(ProxyError::NotFound);
    }
    if response
        .extensions()
        .get::<crate::ratelimit::RateLimited>()
        .is_some()
        && let Some(backoff) = state.upstream.rate_limit.backoff()
    {
        let limit = state.upstream.rate_limit.snapshot().limit;
        return Err(ProxyError::BackingOff(backoff.answer(limit)));
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
