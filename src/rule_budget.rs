//! Rule budgets (`max_per_hour`): how many destructive calls a client may make under a rule per
//! budget window, spent only for a mutation that is sent.
//!
//! Every matching allow rule's budget is spent ([`take`]): a call passes only if each of them has
//! room, and each rule's budget then counts every call it allowed, whichever other rules matched
//! too. If one rule's budget is empty, the ones already taken for this call are given back, and a
//! call refused later (queue, quota, drain) gives back everything through [`Spent::give_back`].
//!
//! A token bucket of our own rather than governor's GCRA: a refused call must be able to give
//! its token back. Budgets are fleet-wide in Redis when the shared tier is up, else per replica.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::{policy::Rule, shared::Shared};

/// One rule's budget: `size` calls per client, refilling continuously over `window`.
#[derive(Debug)]
pub struct RuleBudget {
    size: u32,
    window: Duration,
    /// Per client: (tokens, last refill). A std `Mutex`: a map lookup and some arithmetic, never
    /// held across an await.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// What one call took from rule budgets, so a refusal can give it back.
#[derive(Debug, Default)]
#[must_use = "a budget taken for a call that is not sent must be given back"]
pub struct Spent {
    /// (rule, taken from the fleet-wide budget in Redis rather than this replica's).
    taken: Vec<(std::sync::Arc<Rule>, bool)>,
    client: String,
}

/// A rule's budget is empty: the call is refused.
#[derive(Debug, Clone)]
pub struct Empty {
    /// The rule whose budget is spent.
    pub rule: String,
    /// When it has room again.
    pub retry_after: Duration,
}

// === impl RuleBudget ===

impl RuleBudget {
    /// A budget of `size` (at least 1) per `window`.
    pub fn new(size: u32, window: Duration) -> Self {
        Self {
            size: size.max(1),
            window,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The budget's size per window.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// The window it refills over.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn per_second(&self) -> f64 {
        f64::from(self.size) / self.window.as_secs_f64().max(f64::EPSILON)
    }

    /// Takes one call from `client`'s budget; `Err` says how long until one is free.
    pub fn take(&self, client: &str) -> Result<(), Duration> {
        let capacity = f64::from(self.size);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(client.to_owned()).or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(bucket.1).as_secs_f64();
        bucket.0 = (bucket.0 + elapsed * self.per_second()).min(capacity);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - bucket.0) / self.per_second(),
        ))
    }

    /// Takes over what `previous` (the same rule before a reload) counted, if its size and
    /// window are unchanged: a reload must not hand a clean-up job its budget back.
    pub fn keep_from(&self, previous: &RuleBudget) {
        if previous.size != self.size || previous.window != self.window {
            return;
        }
        let kept = previous
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        *self.buckets.lock().unwrap_or_else(|p| p.into_inner()) = kept;
    }

    /// Counts one call the fleet-wide budget (in Redis) allowed, whatever this bucket holds:
    /// what this replica spent can then be put back if Redis loses it ([`RuleBudget::debts`]).
    pub fn mirror(&self, client: &str) {
        let capacity = f64::from(self.size);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(client.to_owned()).or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(bucket.1).as_secs_f64();
        bucket.0 = ((bucket.0 + elapsed * self.per_second()).min(capacity) - 1.0).max(0.0);
        bucket.1 = now;
    }

    /// Per client, the calls this bucket still counts (not yet refilled; fractions included).
    pub fn debts(&self) -> Vec<(String, f64)> {
        let capacity = f64::from(self.size);
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .iter()
            .filter_map(|(client, (tokens, at))| {
                let elapsed = now.saturating_duration_since(*at).as_secs_f64();
                let tokens = (tokens + elapsed * self.per_second()).min(capacity);
                let calls = capacity - tokens;
                (calls > 0.0).then(|| (client.clone(), calls))
            })
            .collect()
    }

    /// Gives back one call taken by [`RuleBudget::take`] (never above the size).
    pub fn give_back(&self, client: &str) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(client) {
            bucket.0 = (bucket.0 + 1.0).min(f64::from(self.size));
        }
    }
}

/// Takes one call from the budget of every rule in `rules` that has one, for `client`. All or
/// nothing: if one is empty, the ones taken are given back and the empty one is named.
pub async fn take(
    tier: Option<&Shared>,
    rules: &[std::sync::Arc<Rule>],
    client: &str,
) -> Result<Spent, Empty> {
    let mut spent = Spent {
        taken: Vec::new(),
        client: client.to_owned(),
    };
    for rule in rules {
        let Some(budget) = rule.budget() else {
            continue;
        };
        match take_one(tier, rule, budget, client).await {
            Ok(shared) => spent.taken.push((rule.clone(), shared)),
            Err(retry_after) => {
                spent.give_back(tier).await;
                return Err(Empty {
                    rule: rule.name.clone(),
                    retry_after,
                });
            }
        }
    }
    Ok(spent)
}

/// Takes from the fleet-wide budget when the shared tier is up (`Ok(true)`), else this
/// replica's (`Ok(false)`).
async fn take_one(
    tier: Option<&Shared>,
    rule: &Rule,
    budget: &RuleBudget,
    client: &str,
) -> Result<bool, Duration> {
    if let Some(shared) = tier.filter(|s| s.is_up()) {
        let name = format!("{}:{client}", rule.name);
        if let Ok(result) = shared
            .take_budget(&name, budget.size(), budget.window())
            .await
        {
            let taken = result
                .map(|_| true)
                .map_err(|snapshot| snapshot.retry_after);
            if taken.is_ok() {
                budget.mirror(client);
            }
            return taken;
        }
    }
    budget.take(client).map(|()| false)
}

// === impl Spent ===

impl Spent {
    /// Gives every call taken back: the mutation was not sent. Best effort in Redis (a refund
    /// lost to a Redis failure leaves the budget stricter, never looser).
    pub async fn give_back(mut self, tier: Option<&Shared>) {
        for (rule, shared) in self.taken.drain(..) {
            let Some(budget) = rule.budget() else {
                continue;
            };
            match (tier, shared) {
                (Some(tier), true) => {
                    budget.give_back(&self.client); // the mirror
                    let name = format!("{}:{}", rule.name, self.client);
                    if let Err(error) = tier
                        .refund_budget(&name, budget.size(), budget.window())
                        .await
                    {
                        tracing::warn!(%error, rule = %rule.name, "rule budget not given back");
                    }
                }
                _ => budget.give_back(&self.client),
            }
        }
    }
}
