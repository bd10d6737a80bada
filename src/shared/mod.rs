//! The shared tier: what replicas must agree on, kept in Redis (`[shared] redis_url`).
//!
//! - **L2 cache**: answers every replica can read (`codec.rs`), written through on each fresh
//!   upstream answer, with a TTL covering the stale-if-error window. moka stays the L1.
//! - **Fleet-wide single flight**: an owned lock per key (`lock.rs`): the winner fetches, renews
//!   its lock while the upstream call lasts, writes L2 and releases only its own lock; the
//!   others poll L2 until the answer lands, or until the lock is gone without one (the leader
//!   failed or died), then fetch themselves.
//! - **Invalidation**: generations live in a Redis hash; a delete or restore `HINCRBY`s them and
//!   publishes the new values, and every replica raises its local copy. A replica whose
//!   subscription broke may have missed messages: on every (re)subscribe it drops its whole L1
//!   and reloads the generations before trusting its cache again. A `PING` on the subscription
//!   every second tells a stalled Redis (connections open, nothing arriving) from a quiet one.
//! - **One pace, global quotas**: Lua scripts (`scripts.rs`) claim the next mutation slot and
//!   take from per-client token buckets atomically, on Redis's clock.
//! - **Back-off**: a back-off one replica opens is stored and published; all replicas stop.
//! - **Data loss** (a flush, a restart without persistence): the generations' epoch, checked
//!   with every heartbeat, is gone or new; each replica resyncs and puts back the rule-budget
//!   calls and the last send it made ([`Replica::budget_debts`]), so budgets and the pace hold.
//!
//! Redis down: reads keep working on L1 and upstream (L2 is skipped), quotas fall back to
//! per-replica buckets of `quota / replicas`, and mutations are refused with 503 rather than
//! sent without the shared pace. The subscriber task reconnects on its own; one command that
//! timed out (a stall: `DEBUG SLEEP`, a paused process) marks only this replica down, and a
//! probe (`probe.rs`) PINGs it every few hundred milliseconds until it answers, then marks it
//! up. A replica that had to invalidate alone replays those bumps fleet-wide first.

mod codec;
mod lock;
mod probe;
mod scripts;

pub use lock::LockToken;

use std::{
    collections::HashMap,
    sync::{
        Arc, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::StreamExt;
use redis::{AsyncCommands, aio::ConnectionManager};
use tokio::sync::mpsc;

use crate::{
    cache::{Cache, Entry},
    config::SharedConfig,
    error::limit::{BackoffKind, BucketSnapshot},
    ratelimit::{Backoff, RateLimit},
};

/// The Redis tier.
pub struct Shared {
    config: SharedConfig,
    client: redis::Client,
    /// Set once the first connection succeeds; reconnects itself afterwards.
    conn: OnceLock<ConnectionManager>,
    /// Held for a whole resync: the subscriber and the probe may both start one, and spending
    /// put back twice after a data loss would count twice.
    resyncing: tokio::sync::Mutex<()>,
    /// Whether the tier answers now. An atomic: read on every miss and mutation.
    up: AtomicBool,
    /// Whether the subscription is live (resynced, heartbeat answered): the probe marks the tier
    /// up only then, or this replica would trust its L1 while missing the fleet's invalidations.
    subscribed: AtomicBool,
    scripts: scripts::Scripts,
}

/// What the tier keeps in step on this replica: the cache (invalidation generations, L1) and the
/// view of GitHub's rate limit (fleet-wide back-offs). Implemented where they live (`AppState`)
/// and handed over weakly, so the tier's tasks end when the replica's state is dropped.
pub trait Replica: Send + Sync + 'static {
    /// The cache whose generations and L1 follow the fleet's invalidations.
    fn cache(&self) -> &Cache;
    /// The rate limit that opens the fleet's back-offs.
    fn rate_limit(&self) -> &RateLimit;
    /// The longest a request to GitHub may take (`upstream.timeout`): a delete another replica
    /// had sent when Redis failed has its answer by then.
    fn longest_send(&self) -> Duration;
    /// The calls this replica made that rule budgets still count, per fleet-wide budget: put
    /// back when Redis loses its buckets.
    fn budget_debts(&self) -> Vec<BudgetDebt>;
    /// How long ago this replica last sent a mutation, if within a `pace`: put back when Redis
    /// loses the fleet's last send.
    fn last_send_within_pace(&self) -> Option<Duration>;
}

/// Calls one replica made that a fleet-wide rule budget still counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetDebt {
    /// The budget's name in Redis (`<rule>:<client>`).
    pub name: String,
    /// Its size per window.
    pub capacity: u32,
    /// Its window.
    pub window: Duration,
    /// Calls not yet refilled (a call made half a window ago counts as half a call).
    pub calls: f64,
}

/// The tier cannot be used now.
#[derive(Debug, thiserror::Error)]
#[error("the shared tier (Redis) is unavailable")]
pub struct Down;

// === impl Shared ===

impl Shared {
    /// Prepares the tier (no I/O yet; [`Shared::spawn`] connects).
    pub fn new(config: &SharedConfig) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(config.redis_url.as_str())?,
            config: config.clone(),
            conn: OnceLock::new(),
            resyncing: tokio::sync::Mutex::new(()),
            up: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            scripts: scripts::Scripts::new(),
        })
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.conn.get().is_some()
    }

    /// Replicas in the fleet (quotas divide by it while Redis is down).
    pub fn replicas(&self) -> u32 {
        self.config.replicas
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.config.key_prefix)
    }

    fn conn(&self) -> Result<ConnectionManager, Down> {
        self.conn.get().cloned().ok_or(Down)
    }

    /// Runs one Redis operation under the timeout; any failure marks the tier down.
    async fn run<T, F>(&self, op: F) -> Result<T, Down>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.config.timeout, op).await {
            Ok(Ok(value)) => {
                self.mark_up();
                Ok(value)
            }
            Ok(Err(error)) => {
                self.mark_down(&error.to_string());
                Err(Down)
            }
            Err(_) => {
                self.mark_down("timed out");
                Err(Down)
            }
        }
    }

    /// Marks the tier up, but only while the subscription is live: a command that succeeds
    /// while the subscription cannot reconnect (Redis at `maxclients`, say) must not let this
    /// replica accept deletes and trust its L1 while it misses the fleet's invalidations.
    fn mark_up(&self) {
        if !self.subscribed.load(Ordering::Relaxed) {
            return;
        }
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("shared tier (Redis) answers again");
        }
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                error = why,
                "shared tier (Redis) down: per-replica quotas, no mutations"
            );
        }
    }

    /// The L2 entry for a cache key, if any (and the tier is up).
    pub async fn l2_get(&self, key: &str) -> Option<Entry> {
        if !self.is_up() {
            return None;
        }
        let mut conn = self.conn().ok()?;
        let key = self.key("c", key);
        let bytes: Option<Vec<u8>> = self.run(async move { conn.get(key).await }).await.ok()?;
        bytes.and_then(|b| codec::decode(&b))
    }

    /// Writes an entry to L2, expiring after `keep`.
    pub async fn l2_put(&self, key: &str, entry: &Entry, keep: Duration) {
        let Ok(mut conn) = self.conn() else { return };
        let key = self.key("c", key);
        let bytes = codec::encode(entry);
        let millis = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .run(async move { conn.pset_ex::<_, _, ()>(key, bytes, millis).await })
            .await;
    }

    /// Bumps generation scopes fleet-wide, each past the value this replica holds (`floors`);
    /// returns the new values.
    pub async fn bump(&self, floors: &[(String, u64)]) -> Result<Vec<(String, u64)>, Down> {
        let mut conn = self.conn()?;
        let hash = self.key("g", "generations");
        let channel = self.key("ch", "events");
        let floors = floors.to_vec();
        let script = self.scripts.bump.clone();
        self.run(async move {
            let mut out = Vec::with_capacity(floors.len());
            for (scope, floor) in floors {
                let value = bump_past(&mut conn, &script, &hash, &scope, floor).await?;
                let _: () = conn
                    .publish(&channel, format!("gen {value} {scope}"))
                    .await?;
                out.push((scope, value));
            }
            Ok(out)
        })
        .await
    }

    /// Claims the next fleet-wide mutation slot: `Ok(wait)` or, past `max_wait`,
    /// `Err(retry_after)`.
    pub async fn pace(
        &self,
        pace: Duration,
        max_wait: Duration,
    ) -> Result<Result<Duration, Duration>, Down> {
        let mut conn = self.conn()?;
        let key = self.key("p", "next-mutation");
        let script = self.scripts.pace.clone();
        let (pace_ms, max_ms) = (millis(pace), millis(max_wait));
        let wait: i64 = self
            .run(async move {
                script
                    .key(key)
                    .arg(pace_ms)
                    .arg(max_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let duration = Duration::from_millis(wait.unsigned_abs());
        Ok(if wait >= 0 {
            Ok(duration)
        } else {
            Err(duration)
        })
    }

    /// Gives a claimed fleet-wide slot back: its call was not sent (best effort).
    pub async fn unpace(&self, pace: Duration) {
        let Ok(mut conn) = self.conn() else { return };
        let key = self.key("p", "next-mutation");
        let script = self.scripts.unpace.clone();
        let pace_ms = millis(pace);
        let _ = self
            .run(async move {
                script
                    .key(key)
                    .arg(pace_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    /// Takes the fleet's next send turn, named `name`, if at least `pace` passed since its last
    /// send: `Ok(Ok)` (nobody else's comes for `lease`, [`Shared::renew_turn`] extends it, until
    /// [`Shared::sent`]), or `Ok(Err)` with how long to wait before asking again. On `Err` the
    /// turn may still have been taken (Redis answered too late): end it with [`Shared::sent`].
    pub async fn send_turn(
        &self,
        pace: Duration,
        lease: Duration,
        name: u64,
    ) -> Result<Result<(), Duration>, Down> {
        let mut conn = self.conn()?;
        let (last, held) = (self.key("p", "last-send"), self.key("p", "send-turn"));
        let before = self.key("p", "before-turn");
        let script = self.scripts.send.clone();
        let (pace_ms, lease_ms) = (millis(pace), millis(lease));
        let (wait, _): (u64, u64) = self
            .run(async move {
                script
                    .key(last)
                    .key(held)
                    .key(before)
                    .arg(pace_ms)
                    .arg(lease_ms)
                    .arg(name)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(if wait == 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait))
        })
    }

    /// How long until the fleet's next send turn is due (zero: now), taking nothing.
    pub async fn turn_due_in(&self, pace: Duration) -> Result<Duration, Down> {
        let mut conn = self.conn()?;
        let last = self.key("p", "last-send");
        let script = self.scripts.turn_due.clone();
        let pace_ms = millis(pace);
        let wait: u64 = self
            .run(async move { script.key(last).arg(pace_ms).invoke_async(&mut conn).await })
            .await?;
        Ok(Duration::from_millis(wait))
    }

    /// Extends a turn [`Shared::send_turn`] gave to `lease` from now; `Ok(false)` if it lapsed
    /// and was given again.
    pub async fn renew_turn(&self, turn: u64, lease: Duration) -> Result<bool, Down> {
        let mut conn = self.conn()?;
        let (last, held) = (self.key("p", "last-send"), self.key("p", "send-turn"));
        let script = self.scripts.renew_turn.clone();
        let lease_ms = millis(lease);
        let renewed: i64 = self
            .run(async move {
                script
                    .key(last)
                    .key(held)
                    .arg(turn)
                    .arg(lease_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    /// Ends a turn [`Shared::send_turn`] gave: records the send now. `Ok(false)`: the turn
    /// lapsed, and another may have been given since.
    pub async fn sent(&self, turn: u64) -> Result<bool, Down> {
        self.end_turn(self.scripts.sent.clone(), turn).await
    }

    /// Ends a turn [`Shared::send_turn`] gave without a send: the next turn is due `pace` after
    /// the last real send. `Ok(false)`: the turn lapsed, and another may have been given since
    /// (nothing changed).
    pub async fn release_turn(&self, turn: u64) -> Result<bool, Down> {
        self.end_turn(self.scripts.release_turn.clone(), turn).await
    }

    /// Runs `script` (SENT or RELEASE_TURN) on turn `turn`'s keys: the last send, the turn held
    /// and the last send before it (SENT does not read that one); `Ok(true)` if it ended the
    /// turn.
    async fn end_turn(&self, script: redis::Script, turn: u64) -> Result<bool, Down> {
        let mut conn = self.conn()?;
        let (last, held) = (self.key("p", "last-send"), self.key("p", "send-turn"));
        let before = self.key("p", "before-turn");
        let ended: i64 = self
            .run(async move {
                script
                    .key(last)
                    .key(held)
                    .key(before)
                    .arg(turn)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(ended == 1)
    }

    /// Takes one token from a fleet-wide bucket of `per_minute`.
    pub async fn take(
        &self,
        client: &str,
        bucket: &str,
        per_minute: u32,
    ) -> Result<Result<BucketSnapshot, BucketSnapshot>, Down> {
        self.bucket(
            &format!("{bucket}:{client}"),
            per_minute,
            Duration::from_secs(60),
            1,
        )
        .await
    }

    /// Gives one token back to a fleet-wide bucket of `per_minute`.
    pub async fn refund(&self, client: &str, bucket: &str, per_minute: u32) -> Result<(), Down> {
        self.bucket(
            &format!("{bucket}:{client}"),
            per_minute,
            Duration::from_secs(60),
            -1,
        )
        .await
        .map(|_| ())
    }

    /// Reads a fleet-wide bucket of `per_minute` without spending.
    pub async fn peek(
        &self,
        client: &str,
        bucket: &str,
        per_minute: u32,
    ) -> Result<BucketSnapshot, Down> {
        let result = self
            .bucket(
                &format!("{bucket}:{client}"),
                per_minute,
                Duration::from_secs(60),
                0,
            )
            .await?;
        Ok(result.unwrap_or_else(|snapshot| snapshot))
    }

    /// Takes one token from a fleet-wide budget of `capacity` per `window` (policy budgets).
    pub async fn take_budget(
        &self,
        name: &str,
        capacity: u32,
        window: Duration,
    ) -> Result<Result<BucketSnapshot, BucketSnapshot>, Down> {
        self.bucket(&format!("budget:{name}"), capacity, window, 1)
            .await
    }

    /// Gives one token back to a fleet-wide policy budget (a call refused before it was sent).
    pub async fn refund_budget(
        &self,
        name: &str,
        capacity: u32,
        window: Duration,
    ) -> Result<(), Down> {
        self.bucket(&format!("budget:{name}"), capacity, window, -1)
            .await
            .map(|_| ())
    }

    async fn bucket(
        &self,
        name: &str,
        capacity: u32,
        window: Duration,
        cost: i32,
    ) -> Result<Result<BucketSnapshot, BucketSnapshot>, Down> {
        let mut conn = self.conn()?;
        let key = self.key("q", name);
        let script = self.scripts.bucket.clone();
        let window_ms = millis(window).max(1);
        let (ok, remaining, reset_ms, retry_ms): (i64, i64, i64, i64) = self
            .run(async move {
                script
                    .key(key)
                    .arg(capacity)
                    .arg(window_ms)
                    .arg(cost)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let remaining = remaining.max(0).unsigned_abs();
        let retry_after = Duration::from_millis(retry_ms.max(0).unsigned_abs());
        // As the local bucket: with nothing left, the reset is when the next request is allowed.
        let reset = if remaining == 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (now + retry_after).as_secs_f64().ceil() as u64
        } else {
            (reset_ms.max(0).unsigned_abs() / 1000) + 1
        };
        let snapshot = BucketSnapshot {
            limit: u64::from(capacity),
            remaining,
            reset,
            retry_after,
        };
        Ok(if ok == 1 { Ok(snapshot) } else { Err(snapshot) })
    }

    /// Connects, then keeps the subscription (invalidations, back-offs) alive; also announces
    /// this replica's back-offs. Ends when the replica (its state) is dropped.
    pub fn spawn(self: &Arc<Self>, replica: Weak<dyn Replica>) {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(replica) = replica.upgrade() {
            replica.rate_limit().announce_to(tx);
        }
        tokio::spawn(announce_backoffs(self.clone(), rx));
        tokio::spawn(probe::probe_forever(self.clone(), replica.clone()));
        tokio::spawn(subscribe_forever(self.clone(), replica));
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn epoch_ms(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Bumps `scope` in the generations `hash` past `floor` (see `scripts::BUMP`).
async fn bump_past(
    conn: &mut ConnectionManager,
    script: &redis::Script,
    hash: &str,
    scope: &str,
    floor: u64,
) -> redis::RedisResult<u64> {
    script
        .key(hash)
        .arg(scope)
        .arg(floor)
        .invoke_async(conn)
        .await
}

/// Publishes back-offs this replica opens, and stores the latest for replicas that join later.
async fn announce_backoffs(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Backoff>) {
    while let Some(backoff) = rx.recv().await {
        let Ok(mut conn) = shared.conn() else {
            continue;
        };
        // One that fails (Redis down) is announced again by the next resync, if still open.
        let _ = shared
            .run(store_backoff(&shared, &mut conn, &backoff))
            .await;
    }
}

/// Stores a back-off for replicas that join later and publishes it to the others.
async fn store_backoff(
    shared: &Shared,
    conn: &mut ConnectionManager,
    backoff: &Backoff,
) -> redis::RedisResult<()> {
    let key = shared.key("b", "backoff-until");
    let channel = shared.key("ch", "events");
    let until_ms = epoch_ms(backoff.until_wall);
    let ttl = until_ms.saturating_sub(epoch_ms(SystemTime::now())).max(1);
    let kind_key = shared.key("b", "backoff-kind");
    // The deadline keeps the format replicas of the previous release read (a bare number,
    // `backoff <ms>`), so a rolling deploy never has a replica ignore a fleet back-off; the
    // kind and the strikes travel beside it (a replica that knows no strikes reads the kind).
    let kind = format!("{} {}", backoff.kind.as_str(), backoff.strikes);
    let kinded = format!("backoff {until_ms} {kind}");
    let _: () = conn.pset_ex(&key, until_ms, ttl).await?;
    let _: () = conn.pset_ex(&kind_key, &kind, ttl).await?;
    conn.publish::<_, _, ()>(&channel, kinded).await?;
    conn.publish::<_, _, ()>(&channel, format!("backoff {until_ms}"))
        .await
}

/// Keeps one subscription open; on every (re)subscribe, drops L1 and reloads shared state.
async fn subscribe_forever(shared: Arc<Shared>, replica: Weak<dyn Replica>) {
    let mut delay = Duration::from_millis(100);
    loop {
        if replica.strong_count() == 0 {
            return;
        }
        let mut connected = false;
        let ended = session(&shared, &replica, &mut connected).await;
        shared.subscribed.store(false, Ordering::Relaxed);
        if connected {
            // A subscription that had been live: reconnect at once, then back off afresh.
            delay = Duration::from_millis(100);
        }
        match ended {
            Ok(()) => delay = Duration::from_millis(100),
            Err(error) => {
                metrics::counter!(crate::metrics::SHARED_FAILURES).increment(1);
                if !connected && !shared.is_up() && delay == Duration::from_millis(100) {
                    // Never up, or up no more: say why once per series of retries (a refused
                    // login, a missing ACL permission, Redis unreachable), not every 2 s.
                    tracing::warn!(%error, "shared tier (Redis) not available; retrying");
                }
                shared.mark_down(&error.to_string());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// How often a subscription proves it still carries messages: a `PING` on its own connection.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// The shortest wait for the heartbeat's answer (four `shared.timeout`s when that is longer):
/// a false alarm costs every replica that raises it a refill of its L1 from GitHub.
const HEARTBEAT_MIN_WAIT: Duration = Duration::from_secs(1);

/// One subscription's life: connect, resync, apply messages until the connection breaks or
/// stops answering its heartbeat.
///
/// A Redis that stalls (a paused process, a host that stops answering) keeps its connections
/// open: no message arrives and none is missed as far as the stream can tell, while another
/// replica's invalidation is lost. Without the heartbeat this replica would serve what that
/// replica deleted until Redis answered again, however long that took.
async fn session(
    shared: &Arc<Shared>,
    replica: &Weak<dyn Replica>,
    connected: &mut bool,
) -> redis::RedisResult<()> {
    let wait = (shared.config.timeout * 4).max(HEARTBEAT_MIN_WAIT);
    let pubsub = within(wait, connect(shared)).await?;
    // Each of the resync's commands is bounded by the connection's response timeout.
    resync(shared, replica).await?;
    *connected = true;
    shared.subscribed.store(true, Ordering::Relaxed);
    shared.mark_up();
    tracing::info!("shared tier (Redis) connected");
    let (mut sink, mut messages) = pubsub.split();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await; // the first tick is now: the resync just proved the tier
    let why = loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { break "subscription closed" };
                let Some(replica) = replica.upgrade() else {
                    return Ok(());
                };
                if let Ok(text) = message.get_payload::<String>() {
                    apply(&*replica, &text);
                }
            }
            _ = heartbeat.tick() => {
                // Any reply will do (RESP2 answers a subscriber's PING with an array).
                let pong = tokio::time::timeout(wait, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    break "subscription stopped answering";
                }
                // A flush keeps every connection open: the epoch tells that the data is gone.
                match within(wait, lost_data(shared, replica)).await {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::warn!("shared tier (Redis) lost its data; resyncing");
                        if resync(shared, replica).await.is_err() {
                            break "resync after a data loss failed";
                        }
                    }
                    // Slow behind other commands (the read has the command connection's
                    // timeout, shorter than the heartbeat's): the PING just proved the
                    // subscription, so this round is skipped rather than counted as a break.
                    Err(_) => {}
                }
            }
        }
    };
    if let Some(replica) = replica.upgrade() {
        missing_invalidations(&*replica, Arc::downgrade(&replica));
    }
    Err(redis::RedisError::from((redis::ErrorKind::Io, why)))
}

/// Whether Redis no longer holds the generation table this replica adopted (its epoch is gone
/// or another one): a flush, or a restart without persistence under open connections.
async fn lost_data(shared: &Shared, replica: &Weak<dyn Replica>) -> redis::RedisResult<bool> {
    let Some(local) = replica.upgrade().map(|r| r.cache().generations.epoch()) else {
        return Ok(false);
    };
    let mut conn = shared
        .conn()
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))?;
    let epoch: Option<u64> = conn.get(shared.key("g", "epoch")).await?;
    Ok(epoch != Some(local))
}

/// The command connection (once) and a fresh subscription to the fleet's events.
async fn connect(shared: &Shared) -> redis::RedisResult<redis::aio::PubSub> {
    if shared.conn.get().is_none() {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(shared.config.timeout))
            .set_response_timeout(Some(shared.config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = shared
            .client
            .get_connection_manager_with_config(config)
            .await?;
        let _ = shared.conn.set(manager);
    }
    let mut pubsub = shared.client.get_async_pubsub().await?;
    pubsub.subscribe(shared.key("ch", "events")).await?;
    Ok(pubsub)
}

/// `step`, or an error once `wait` has passed (a stalled Redis accepts connections and then
/// answers nothing).
async fn within<T>(
    wait: Duration,
    step: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(wait, step).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer in time",
        )))
    })
}

/// The subscription broke: other replicas' invalidations no longer arrive. Deletes are refused
/// while Redis is down, but one another replica had already sent ends within `longest_send` and
/// its invalidation is lost: L1 is dropped now and once more after that (entries fetched in
/// between may predate the delete). Resubscribing drops it again.
fn missing_invalidations(replica: &dyn Replica, weak: Weak<dyn Replica>) {
    replica.cache().purge_all();
    let again = replica.longest_send() + Duration::from_secs(1);
    tokio::spawn(async move {
        tokio::time::sleep(again).await;
        if let Some(replica) = weak.upgrade() {
            replica.cache().purge_all();
        }
    });
}

/// Drops L1 (messages may have been missed) and loads generations and any back-off. Bumps this
/// replica made alone (Redis failed mid-invalidation) are first replayed fleet-wide, then the
/// fleet's table replaces this replica's outright: its own higher numbers would otherwise
/// swallow the fleet's next bumps, and the other replicas never learned of its deletes.
async fn resync(shared: &Arc<Shared>, replica: &Weak<dyn Replica>) -> redis::RedisResult<()> {
    let _one_at_a_time = shared.resyncing.lock().await;
    let mut conn = shared
        .conn
        .get()
        .cloned()
        .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))?;
    let (replayed, (local_epoch, local)) = match replica.upgrade() {
        Some(replica) => {
            let generations = &replica.cache().generations;
            (generations.diverged(), generations.table())
        }
        None => return Ok(()),
    };
    let generations_key = shared.key("g", "generations");
    let channel = shared.key("ch", "events");
    // Invalidations reach the fleet by PUBLISH: a Redis user whose ACL forbids it would leave
    // the tier up (deletes sent) while no other replica hears what they invalidate. One event
    // per resync, which every replica ignores, keeps such a tier down.
    let _: () = conn.publish(&channel, HELLO).await?;
    for scope in &replayed {
        let floor = local.get(scope).copied().unwrap_or(0);
        let value = bump_past(
            &mut conn,
            &shared.scripts.bump,
            &generations_key,
            scope,
            floor,
        )
        .await?;
        let _: () = conn
            .publish(&channel, format!("gen {value} {scope}"))
            .await?;
    }
    // The table's epoch: set once by whichever replica comes first after Redis (re)starts empty.
    let mut fresh = [0u8; 8];
    let _ = getrandom::fill(&mut fresh);
    let epoch_key = shared.key("g", "epoch");
    let _: bool = conn
        .set_nx(&epoch_key, u64::from_le_bytes(fresh) >> 1)
        .await?;
    let epoch: u64 = conn.get(&epoch_key).await?;
    if local_epoch != 0
        && local_epoch != epoch
        && let Some(replica) = replica.upgrade()
    {
        // Redis lost its data (a restart without persistence, a flush) while this replica ran:
        // the budgets and the last send it spent are put back, or every rule budget and the
        // pace would start afresh. Before the new epoch is adopted: a resync that fails here
        // is tried again whole (a call put back twice only makes a budget stricter).
        put_back_spending(shared, &mut conn, &*replica).await?;
    }
    if epoch == local_epoch {
        // Same table, yet lower than numbers this replica used: Redis came back from an older
        // snapshot (its epoch with it). Raised back, fleet-wide, or keys with those numbers
        // (and L2 entries the snapshot brought back under them) would be served again after
        // deletes that were confirmed.
        let fleet: HashMap<String, u64> = conn.hgetall(&generations_key).await?;
        for (scope, value) in &local {
            if fleet.get(scope).copied().unwrap_or(0) < *value {
                let raised: i64 = shared
                    .scripts
                    .raise
                    .key(&generations_key)
                    .arg(scope)
                    .arg(*value)
                    .invoke_async(&mut conn)
                    .await?;
                if raised == 1 {
                    let _: () = conn
                        .publish(&channel, format!("gen {value} {scope}"))
                        .await?;
                }
            }
        }
    }
    let generations: HashMap<String, u64> = conn.hgetall(&generations_key).await?;
    let backoff: Option<String> = conn.get(shared.key("b", "backoff-until")).await?;
    let backoff_kind: Option<String> = conn.get(shared.key("b", "backoff-kind")).await?;
    let Some(replica) = replica.upgrade() else {
        return Ok(());
    };
    if replayed.is_empty() {
        replica.cache().generations.adopt(epoch, &generations);
    } else {
        replica
            .cache()
            .generations
            .adopt_outright(epoch, &generations, &replayed);
        tracing::info!(
            scopes = replayed.len(),
            "invalidations made alone replayed fleet-wide"
        );
    }
    replica.cache().purge_all();
    let fleet_until = backoff
        .as_deref()
        .and_then(|until| until.parse::<u64>().ok());
    if let Some(until) = &backoff {
        let kind = backoff_kind.unwrap_or_default();
        apply_backoff(&*replica, &format!("{until} {kind}"));
    }
    // A back-off this replica opened while Redis was down never reached the fleet: announced
    // now, unless the fleet's own ends later.
    if let Some(own) = replica.rate_limit().backoff()
        && fleet_until.is_none_or(|fleet| fleet < epoch_ms(own.until_wall))
    {
        store_backoff(shared, &mut conn, &own).await?;
    }
    Ok(())
}

/// Puts this replica's rule-budget calls and its last send back into a Redis that lost them.
async fn put_back_spending(
    shared: &Shared,
    conn: &mut ConnectionManager,
    replica: &dyn Replica,
) -> redis::RedisResult<()> {
    let debts = replica.budget_debts();
    for debt in &debts {
        let _: i64 = shared
            .scripts
            .debit
            .key(shared.key("q", &format!("budget:{}", debt.name)))
            .arg(debt.capacity)
            .arg(millis(debt.window).max(1))
            .arg(debt.calls.to_string())
            .invoke_async(conn)
            .await?;
    }
    if let Some(ago) = replica.last_send_within_pace() {
        let _: i64 = shared
            .scripts
            .sent_ago
            .key(shared.key("p", "last-send"))
            .arg(millis(ago))
            .invoke_async(conn)
            .await?;
    }
    if !debts.is_empty() {
        tracing::info!(
            budgets = debts.len(),
            "rule budgets spent on this replica put back after Redis lost its data"
        );
    }
    Ok(())
}

/// A back-off another replica opened: `<until_ms> <kind> <strikes>` (a bare `<until_ms>` from an
/// older replica counts as a secondary limit: a wait with a deadline; no strikes, none).
fn apply_backoff(replica: &dyn Replica, text: &str) {
    let mut parts = text.split(' ');
    let until = parts.next().and_then(|until| until.parse::<u64>().ok());
    let kind = parts
        .next()
        .and_then(BackoffKind::parse)
        .unwrap_or(BackoffKind::Secondary);
    let strikes = parts
        .next()
        .and_then(|strikes| strikes.parse::<u32>().ok())
        .unwrap_or(0);
    if let Some(until) = until {
        replica
            .rate_limit()
            .open_until(UNIX_EPOCH + Duration::from_millis(until), kind, strikes);
    }
}

/// The event each resync publishes to prove it may ([`resync`]); nothing to apply.
const HELLO: &str = "hello";

/// One published event: `gen <value> <scope>` or `backoff <until_ms> <kind> <strikes>`.
fn apply(replica: &dyn Replica, text: &str) {
    if text == HELLO {
        return;
    }
    let mut parts = text.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("gen"), Some(value), Some(scope)) => {
            if let Ok(value) = value.parse() {
                replica.cache().generations.raise(scope, value);
            }
        }
        (Some("backoff"), Some(until), rest) => {
            let value = match rest {
                Some(kind) => format!("{until} {kind}"),
                None => until.to_owned(),
            };
            apply_backoff(replica, &value);
        }
        _ => tracing::debug!(message = text, "unknown shared-tier event"),
    }
}
