//! Pacing of mutating calls: one queue, slots at least `pace` apart (GitHub asks for a second
//! between mutations), a bounded queue, and a bound on how long a request may wait for its slot.
//!
//! Slots are handed out in arrival order under a std `Mutex` (held for a few instructions, never
//! across an `.await`); each request then sleeps until its own slot. A request that gives up
//! still used its slot: pacing errs on the slow side.
//!
//! At shutdown the pacer gets a send deadline ([`Pacer::drain_by`]): a mutation whose slot falls
//! after it is woken at once and refused as not sent ([`Pacer::wait_until`]), so its client gets
//! an answer and its intent an outcome before the process exits, instead of a reset connection.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

/// Mutations per client queued or in flight. A std `Mutex`: two map operations per mutation.
#[derive(Debug, Default)]
pub struct PerClient {
    counts: Mutex<std::collections::HashMap<String, usize>>,
}

/// A client's place in the queue; leaving (drop) frees it.
#[derive(Debug)]
pub struct Place {
    owner: std::sync::Arc<PerClient>,
    client: String,
}

impl PerClient {
    /// Takes a place for `client` if it has fewer than `max`.
    pub fn enter(self: &std::sync::Arc<Self>, client: &str, max: usize) -> Option<Place> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(client.to_owned()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Place {
            owner: self.clone(),
            client: client.to_owned(),
        })
    }
}

impl PerClient {
    /// No destructive call is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

/// The mutation queue.
#[derive(Debug)]
pub struct Pacer {
    pace: Duration,
    max_queue: usize,
    max_wait: Duration,
    state: Mutex<PacerState>,
    /// The last moment a mutation may still be sent, once shutdown started. A `watch`: every
    /// waiting mutation must see it the moment it is set, and late subscribers read it too.
    drain: watch::Sender<Option<Instant>>,
    /// This process's calls waiting for a send turn, by arrival.
    line: Arc<TurnLine>,
}

/// Calls of this process that will want a send turn, by arrival: only the first asks for it.
#[derive(Debug, Default)]
struct TurnLine {
    /// Places of the calls in the line now, and the last place given.
    places: std::sync::Mutex<(std::collections::BTreeSet<u64>, u64)>,
    /// Wakes the calls in the line when it moves.
    moved: tokio::sync::Notify,
}

/// A call's place in the line for send turns ([`Pacer::join_turn_line`]); left when dropped.
#[derive(Debug)]
pub struct InLine {
    line: Arc<TurnLine>,
    place: u64,
}

/// The process is shutting down and this mutation's slot came too late: it was not sent.
#[derive(Debug, Clone, Copy)]
pub struct Draining;

#[derive(Debug)]
struct PacerState {
    /// The earliest time the next slot may be given.
    next: Instant,
    /// When the last mutation was actually sent (while a send turn is held: when its lease ends).
    last_send: Option<Instant>,
    /// While a send turn is held: when the last mutation before it was sent, for a turn that
    /// ends without a send ([`Pacer::release`]).
    before_turn: Option<Instant>,
    /// The send turn held now, by its number, and the last number given.
    turn: Option<u64>,
    turns: u64,
    /// Slots handed out whose time has not come.
    waiting: usize,
}

/// A reserved slot; dropping it leaves the queue.
#[derive(Debug)]
pub struct Slot<'a> {
    at: Instant,
    pacer: &'a Pacer,
}

/// No slot: the queue is full or the wait too long; retry after this long.
#[derive(Debug, Clone, Copy)]
pub struct Busy {
    /// When a retry has a chance.
    pub retry_after: Duration,
}

// === impl Pacer ===

impl Pacer {
    /// A pacer giving slots `pace` apart.
    pub fn new(pace: Duration, max_queue: usize, max_wait: Duration) -> Self {
        Self {
            pace,
            max_queue,
            max_wait,
            state: Mutex::new(PacerState {
                next: Instant::now(),
                last_send: None,
                before_turn: None,
                turn: None,
                turns: 0,
                waiting: 0,
            }),
            drain: watch::Sender::new(None),
            line: Arc::default(),
        }
    }

    /// Joins the line for send turns: calls ask for a turn in the order they joined, so one
    /// that came first is not passed by later ones (after a back-off, all come out at once).
    pub fn join_turn_line(&self) -> InLine {
        let mut places = self.line.lock();
        places.1 += 1;
        let place = places.1;
        places.0.insert(place);
        drop(places);
        InLine {
            line: self.line.clone(),
            place,
        }
    }

    /// Shutdown started: mutations whose slot comes after `deadline` are not sent.
    pub fn drain_by(&self, deadline: Instant) {
        self.drain.send_replace(Some(deadline));
    }

    /// Sleeps until `at` (a slot's time), or fails at once if shutdown started (now or while
    /// waiting) with a send deadline before `at`.
    pub async fn wait_until(&self, at: Instant) -> Result<(), Draining> {
        let mut drain = self.drain.subscribe();
        loop {
            if drain
                .borrow_and_update()
                .is_some_and(|deadline| at > deadline)
            {
                return Err(Draining);
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => return Ok(()),
                changed = drain.changed() => {
                    if changed.is_err() {
                        // The pacer is gone with the state: nothing left to drain.
                        tokio::time::sleep_until(at).await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Whether shutdown's send deadline has passed: nothing may be sent any more.
    pub fn past_drain_deadline(&self) -> bool {
        self.drain
            .borrow()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Resolves once shutdown's send deadline has passed (never, while the process runs).
    pub async fn drain_deadline_passed(&self) {
        let mut drain = self.drain.subscribe();
        loop {
            let deadline = *drain.borrow_and_update();
            if let Some(deadline) = deadline {
                tokio::time::sleep_until(deadline).await;
                return;
            }
            if drain.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Reserves the next slot if it comes within `patience` (and the queue's `max_wait`), or
    /// says when to come back.
    pub fn reserve(&self, patience: Duration) -> Result<Slot<'_>, Busy> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let at = state.next.max(now);
        let wait = at - now;
        if state.waiting >= self.max_queue || wait > self.max_wait.min(patience) {
            return Err(Busy {
                retry_after: wait.max(self.pace),
            });
        }
        state.next = at + self.pace;
        state.waiting += 1;
        Ok(Slot { at, pacer: self })
    }

    /// Takes the next send turn if at least `pace` passed since the last send: `Ok` with the
    /// turn's number, recorded as a send `lease` ahead (nobody else's turn comes while this one
    /// checks and sends, until [`Pacer::sent`] or the lease ends; [`Pacer::renew`] extends it),
    /// or `Err` with how long to wait before asking again. A predecessor that sent late (a slow
    /// fsync, a busy core) pushes its successors back.
    pub fn send_turn(&self, lease: Duration) -> Result<u64, Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.last_send.map(|last| last + self.pace) {
            Some(due) if due > now => Err(due - now),
            _ => {
                state.turns += 1;
                let turn = state.turns;
                state.turn = Some(turn);
                state.before_turn = state.last_send;
                state.last_send = Some(now + lease);
                Ok(turn)
            }
        }
    }

    /// How long until the next send turn is due (zero: now), taking nothing.
    pub fn turn_due_in(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_send.map_or(Duration::ZERO, |last| {
            (last + self.pace).saturating_duration_since(Instant::now())
        })
    }

    /// Extends a turn's lease to `lease` from now; `false` if it lapsed (another was given).
    pub fn renew(&self, turn: u64, lease: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.turn != Some(turn) {
            return false;
        }
        state.last_send = Some(Instant::now() + lease);
        true
    }

    /// Ends a turn [`Pacer::send_turn`] gave: records the send now. `false`: the turn lapsed,
    /// and another may have been given since.
    pub fn sent(&self, turn: u64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.turn != Some(turn) {
            return false;
        }
        state.turn = None;
        state.last_send = Some(Instant::now());
        true
    }

    /// Ends a turn [`Pacer::send_turn`] gave without a send (its call was refused or its client
    /// left before it was sent): the next turn is due `pace` after the last real send, not
    /// after this turn. Nothing if the turn lapsed and another was given since.
    pub fn release(&self, turn: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.turn == Some(turn) {
            state.turn = None;
            state.last_send = state.before_turn;
        }
    }

    /// Records a send the fleet's pace (in Redis) let through, so that it can be put back if
    /// Redis loses it ([`Pacer::last_send_within_pace`]).
    pub fn record_send(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_send = Some(Instant::now());
    }

    /// How long ago the last send was, if less than `pace` ago.
    pub fn last_send_within_pace(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ago = state.last_send?.elapsed();
        (ago < self.pace).then_some(ago)
    }

    /// A claimed slot was not used (the call was not sent): the queue moves up by one pace, so
    /// calls that come later are not held up by it. Sends stay `pace` apart whatever the slots
    /// say ([`Pacer::send_turn`]).
    pub fn give_back(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.next = state.next.checked_sub(self.pace).unwrap_or(now).max(now);
    }

    /// Mutations waiting for their slot now.
    pub fn waiting(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).waiting
    }
}

// === impl Slot ===

impl Slot<'_> {
    /// How long until this slot's time.
    pub fn wait_time(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Sleeps until this slot's time; fails if shutdown leaves no time to send in it.
    pub async fn wait(&self) -> Result<(), Draining> {
        self.pacer.wait_until(self.at).await
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.pacer.state.lock().unwrap_or_else(|p| p.into_inner());
        state.waiting = state.waiting.saturating_sub(1);
    }
}

// === impl TurnLine ===

impl TurnLine {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::BTreeSet<u64>, u64)> {
        self.places.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// === impl InLine ===

impl InLine {
    /// Leaves the line for now, keeping this call's place (while it waits for its upstream slot:
    /// a call held there must not hold up those behind it).
    pub fn step_out(&self) {
        self.line.lock().0.remove(&self.place);
        self.line.moved.notify_waiters();
    }

    /// Comes back to this call's place in the line.
    pub fn step_in(&self) {
        self.line.lock().0.insert(self.place);
    }

    /// Waits until this call is the first in the line.
    pub async fn first(&self) {
        loop {
            let moved = self.line.moved.notified();
            if self.line.lock().0.first() == Some(&self.place) {
                return;
            }
            moved.await;
        }
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.line.lock().0.remove(&self.place);
        self.line.moved.notify_waiters();
    }
}
