//! The shared tier's soft failures, with a real `redis-server`: a stall (`DEBUG SLEEP`) heals by
//! itself, the fetch lock is owned and renewed, waiters learn that the leader failed, and a
//! replica that had to invalidate alone resyncs so no replica serves a deleted version.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use packages_proxy::sim::{Fault, FaultKind};
use support::*;

const WEB: &str = "/orgs/acme/packages/container/web/versions?per_page=10";

async fn fleet(sim: &Sim, redis: &Redis, n: usize, extra: &str, upstream: &str) -> Vec<TestProxy> {
    let mut proxies = Vec::new();
    for _ in 0..n {
        let opts = ProxyOptions {
            extra: format!(
                "[shared]\nredis_url = \"{}\"\nreplicas = {n}\n{extra}",
                redis.url()
            ),
            extra_upstream: "",
            upstream_timeout: Box::leak(upstream.to_owned().into_boxed_str()),
            public_url: Some(FLEET_URL),
            ..ProxyOptions::default()
        };
        proxies.push(spawn_proxy(sim, opts).await);
    }
    for proxy in &proxies {
        wait_up(proxy, true, Duration::from_secs(5)).await;
    }
    proxies
}

/// Every delete allowed, unpaced, without the multi-arch guard's registry reads.
fn deletes_allowed() -> String {
    format!("{}multi_arch_guard = false\n", allow_everything("0s"))
}

/// Polls the replica's `/metrics` until its tier is `up` (or down).
async fn wait_up(proxy: &TestProxy, up: bool, limit: Duration) {
    wait_shared_tier(&proxy.url("/metrics"), up, limit).await;
}

/// Blocks Redis for `secs` (`DEBUG SLEEP`), from a task that ends once Redis answers again.
async fn stall(redis: &Redis, secs: f64) -> tokio::task::JoinHandle<()> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    tokio::spawn(async move {
        let sleep = redis::cmd("DEBUG").arg("SLEEP").arg(secs).to_owned();
        // The client's own response timeout may end this call before the sleep does.
        let _ = sleep.query_async::<()>(&mut conn).await;
        let start = Instant::now();
        loop {
            let ping = redis::cmd("PING").query_async::<String>(&mut conn).await;
            if ping.is_ok() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "Redis never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn delete(proxy: &TestProxy, id: u64) -> StatusCode {
    let path = format!("/orgs/acme/packages/container/web/versions/{id}");
    send(Method::DELETE, &proxy.url(&path), Some(proxy.token()), &[])
        .await
        .status
}

async fn version(proxy: &TestProxy, id: u64) -> StatusCode {
    let path = format!("/orgs/acme/packages/container/web/versions/{id}");
    get(&proxy.url(&path), proxy.token()).await.status
}

// Regression: one command slower than `shared.timeout` marked the tier down and nothing probed
// it again: the replica refused every delete for minutes while Redis answered PING.
#[tokio::test]
async fn a_stalled_redis_is_marked_up_again_and_deletes_go_through_on_every_replica() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 3, &deletes_allowed(), "5s").await;
    let ids = get(&fleet[0].url(WEB), fleet[0].token()).await.ids();
    let stalled = stall(&redis, 2.0).await;
    // Each replica asks Redis (an L2 read for a cold key) while it sleeps: timed out, down.
    let cold: Vec<_> = fleet
        .iter()
        .enumerate()
        .map(|(i, proxy)| {
            let url = proxy.url(&format!(
                "/orgs/acme/packages/container/web/versions?per_page={}",
                40 + i
            ));
            let token = proxy.token().to_owned();
            tokio::spawn(async move { get(&url, &token).await.status })
        })
        .collect();
    for proxy in &fleet {
        wait_up(proxy, false, Duration::from_secs(2)).await;
    }
    for status in cold {
        assert_eq!(
            status.await.unwrap(),
            StatusCode::OK,
            "reads work while Redis stalls"
        );
    }
    stalled.await.unwrap();
    for proxy in &fleet {
        wait_up(proxy, true, Duration::from_secs(3)).await;
    }
    for (proxy, id) in fleet.iter().zip(&ids[..3]) {
        assert_eq!(delete(proxy, *id).await, StatusCode::NO_CONTENT);
    }
}

// Regression: `SET NX PX` then a plain `DEL`: a holder whose lock expired deleted the next one's.
#[tokio::test]
async fn a_slow_leader_cannot_release_another_replicas_lock() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 3, "lock_ttl = \"300ms\"\n", "5s").await;
    let shared: Vec<_> = fleet
        .iter()
        .map(|p| p.running.state.shared().unwrap().clone())
        .collect();
    let slow = shared[0].lock("k").await.unwrap().expect("first lock");
    let start = Instant::now();
    let next = loop {
        if let Some(token) = shared[1].lock("k").await.unwrap() {
            break token;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "lock never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The slow leader finishes now and releases "its" lock: the new holder's stays.
    shared[0].unlock("k", &slow).await;
    assert!(!shared[0].renew("k", &slow).await, "renewed a lock it lost");
    assert!(
        shared[2].lock("k").await.unwrap().is_none(),
        "lock was stolen"
    );
    assert!(shared[1].renew("k", &next).await);
    shared[1].unlock("k", &next).await;
    assert!(
        shared[2].lock("k").await.unwrap().is_some(),
        "own release failed"
    );
}

// Regression: the lock lived 5 s while an upstream call may take 30: a slow fetch lost its lock
// and the fleet fetched the same key twice.
#[tokio::test]
async fn a_leader_slower_than_the_lock_ttl_keeps_its_lock() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 2, "lock_ttl = \"300ms\"\n", "5s").await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(1500)),
        1,
    ));
    let leader = {
        let (url, token) = (fleet[0].url(WEB), fleet[0].token().to_owned());
        tokio::spawn(async move { get(&url, &token).await.status })
    };
    eventually(
        Duration::from_secs(5),
        "the leader's GET at GitHub",
        || async { sim.gets() > 0 },
    )
    .await;
    let follower = get(&fleet[1].url(WEB), fleet[1].token()).await;
    assert_eq!(follower.status, StatusCode::OK);
    assert_eq!(leader.await.unwrap(), StatusCode::OK);
    assert_eq!(
        sim.gets(),
        1,
        "the follower fetched too: the leader's lock expired"
    );
}

// Regression: when GitHub failed, every waiting replica polled L2 for the lock's whole life.
#[tokio::test]
async fn waiters_learn_that_the_leader_failed() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 3, "lock_ttl = \"20s\"\n", "1s").await;
    // The leader's call outlives upstream.timeout (1 s) and fails.
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(3)), 1));
    let leader = {
        let (url, token) = (fleet[0].url(WEB), fleet[0].token().to_owned());
        tokio::spawn(async move { get(&url, &token).await.status })
    };
    let start = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the leader's GET at GitHub",
        || async { sim.gets() > 0 },
    )
    .await;
    let waiters: Vec<_> = fleet[1..]
        .iter()
        .map(|proxy| {
            let (url, token) = (proxy.url(WEB), proxy.token().to_owned());
            tokio::spawn(async move { get(&url, &token).await.status })
        })
        .collect();
    assert!(leader.await.unwrap().is_server_error());
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), StatusCode::OK);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "waiters stalled {took:?} (lock 20 s)"
    );
}

// Regression: after a replica invalidated alone (Redis failed mid-delete), its `diverged` flag
// was never read: the other replicas kept the deleted version, and its own higher generation
// swallowed the fleet's next bump, so it kept serving a version another replica deleted.
#[tokio::test]
async fn a_replica_that_invalidated_alone_resyncs_and_both_replicas_404() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 2, &deletes_allowed(), "5s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let ids = get(&a.url(WEB), a.token()).await.ids();
    let (first, second) = (ids[1], ids[2]);
    for proxy in [a, b] {
        assert_eq!(version(proxy, first).await, StatusCode::OK);
        assert_eq!(version(proxy, second).await, StatusCode::OK);
    }
    // A's delete reaches GitHub after 1 s; Redis stalls from just after it is sent until 2 s,
    // so A's fleet-wide invalidation times out and A invalidates alone.
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(1)), 1));
    let deleting = {
        let (url, token) = (
            a.url(&format!(
                "/orgs/acme/packages/container/web/versions/{first}"
            )),
            a.token().to_owned(),
        );
        tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await.status })
    };
    eventually(Duration::from_secs(5), "A's DELETE at GitHub", || async {
        !sim.arrivals(&Method::DELETE).is_empty()
    })
    .await;
    let stalled = stall(&redis, 2.0).await;
    assert_eq!(deleting.await.unwrap(), StatusCode::NO_CONTENT);
    let pending = sample(
        &scrape(&a.url("/metrics")).await,
        "packages_proxy_shared_invalidations_pending",
    );
    assert!(
        pending.unwrap() > 0.0,
        "the stall did not hit A's invalidation: the test would prove nothing"
    );
    assert_eq!(version(a, first).await, StatusCode::NOT_FOUND);
    stalled.await.unwrap();
    // Redis is back: A replays its invalidation, so B drops the deleted version too.
    eventually(
        Duration::from_secs(5),
        "B to drop the version deleted while Redis stalled",
        || async { version(b, first).await == StatusCode::NOT_FOUND },
    )
    .await;
    // B's subscription went unanswered during the stall: it is down until it resubscribes.
    for proxy in [a, b] {
        wait_up(proxy, true, Duration::from_secs(5)).await;
    }
    assert_eq!(version(a, second).await, StatusCode::OK); // cached on A again
    assert_eq!(delete(b, second).await, StatusCode::NO_CONTENT);
    for proxy in [a, b] {
        assert_eq!(version(proxy, first).await, StatusCode::NOT_FOUND);
        assert_eq!(version(proxy, second).await, StatusCode::NOT_FOUND);
    }
}

/// A command on a connection of its own to `redis`.
async fn redis_cmd<T: redis::FromRedisValue>(redis: &Redis, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

// Found by a hostile review: after a FLUSHALL (or an eviction of the generations table) with the
// replicas' connections left open, the next bump started again from 0 and handed out a number the
// replicas already used: the delete was confirmed and invalidated nothing, and both replicas went
// on serving the deleted version. A bump now goes past the number the bumping replica holds.
#[tokio::test]
async fn a_flushed_generation_table_still_invalidates_every_replica() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 2, &deletes_allowed(), "5s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let ids = get(&a.url(WEB), a.token()).await.ids();
    assert_eq!(delete(a, ids[1]).await, StatusCode::NO_CONTENT);
    for proxy in [a, b] {
        assert_eq!(version(proxy, ids[2]).await, StatusCode::OK); // cached after that bump
    }
    let _: () = redis_cmd(&redis, &redis::cmd("FLUSHALL")).await;
    assert_eq!(delete(a, ids[2]).await, StatusCode::NO_CONTENT);
    for proxy in [a, b] {
        eventually(
            Duration::from_secs(5),
            "the version deleted after the flush gone on every replica",
            || async { version(proxy, ids[2]).await == StatusCode::NOT_FOUND },
        )
        .await;
    }
}

// Found by a hostile review: Redis restarting from an older snapshot brings back a lower
// generation under the same epoch, and the L2 entries stored under it. A replica joining then
// served a version deleted (and confirmed) before the crash from those entries. The replicas that
// used the higher numbers raise the table back when they resync.
#[tokio::test]
async fn a_rolled_back_generation_table_is_raised_back_by_the_replicas() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let extra = deletes_allowed();
    let first = fleet(&sim, &redis, 1, &extra, "5s").await;
    let a = &first[0];
    let ids = get(&a.url(WEB), a.token()).await.ids();
    // Stored in L2 under the generation before the delete.
    assert_eq!(version(a, ids[1]).await, StatusCode::OK);
    assert_eq!(delete(a, ids[1]).await, StatusCode::NO_CONTENT);
    // The rollback: the generations as they were before the delete, the epoch and L2 kept.
    let _: () = redis_cmd(
        &redis,
        redis::cmd("DEL").arg("packages-proxy:g:generations"),
    )
    .await;
    let _: () = redis_cmd(
        &redis,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    // A resyncs and raises the table back.
    eventually(Duration::from_secs(10), "the table raised back", || async {
        let table: std::collections::HashMap<String, u64> = redis_cmd(
            &redis,
            redis::cmd("HGETALL").arg("packages-proxy:g:generations"),
        )
        .await;
        !table.is_empty()
    })
    .await;
    let later = fleet(&sim, &redis, 1, &extra, "5s").await;
    assert_eq!(
        version(&later[0], ids[1]).await,
        StatusCode::NOT_FOUND,
        "a replica joining after the rollback served the deleted version"
    );
}

// Found by a hostile review: a back-off a replica opened while Redis was down never reached the
// fleet once Redis came back, so the other replicas went on sending into GitHub's limit.
#[tokio::test]
async fn a_back_off_opened_while_redis_was_down_reaches_the_fleet_when_it_returns() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 2, "", "5s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    redis.kill();
    wait_up(a, false, Duration::from_secs(10)).await;
    sim.handle.inject(Fault::new(
        FaultKind::SecondaryRateLimit {
            status: StatusCode::FORBIDDEN,
            retry_after_secs: 60,
        },
        1,
    ));
    let limited = get(&a.url(&cold(0)), a.token()).await;
    assert_eq!(limited.status, StatusCode::FORBIDDEN);
    redis.spawn();
    for proxy in [a, b] {
        wait_up(proxy, true, Duration::from_secs(10)).await;
    }
    // A announces its back-off when it resyncs, which may be after B's.
    let series = "packages_proxy_upstream_backoff_active";
    wait_for_sample(&b.url("/metrics"), series, 1.0, Duration::from_secs(10)).await;
    let before = sim.gets();
    let refused = get(&b.url(&cold(1)), b.token()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert_eq!(sim.gets(), before, "B sent into GitHub's limit");
}

/// A version B holds in its L1, and A's delete of it, sent and held 2 s at GitHub: returns the
/// version and the delete's answer to come.
async fn delete_slowly_at_github(
    sim: &Sim,
    a: &TestProxy,
    b: &TestProxy,
) -> (u64, tokio::task::JoinHandle<StatusCode>) {
    let target = get(&a.url(WEB), a.token()).await.ids()[1];
    assert_eq!(version(b, target).await, StatusCode::OK); // in B's L1
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(2)), 1));
    let deleting = {
        let url = a.url(&format!(
            "/orgs/acme/packages/container/web/versions/{target}"
        ));
        let token = a.token().to_owned();
        tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await.status })
    };
    eventually(Duration::from_secs(5), "A's DELETE at GitHub", || async {
        !sim.arrivals(&Method::DELETE).is_empty()
    })
    .await;
    (target, deleting)
}

// Found by a hostile review: Redis failing while a delete was at GitHub left the other replicas
// serving the deleted version from their L1 for the whole outage (the invalidation could not be
// published). A replica whose subscription breaks drops its L1, and again once any delete sent
// before the failure has had its answer.
#[tokio::test]
async fn a_delete_in_flight_when_redis_fails_is_not_served_stale_by_the_others() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let sim = spawn_sim().await;
    let extra = deletes_allowed();
    let fleet = fleet(&sim, &redis, 2, &extra, "3s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let (target, deleting) = delete_slowly_at_github(&sim, a, b).await;
    redis.kill();
    assert_eq!(deleting.await.unwrap(), StatusCode::NO_CONTENT);
    eventually(
        Duration::from_secs(15),
        "B to stop serving the version deleted as Redis failed",
        || async { version(b, target).await == StatusCode::NOT_FOUND },
    )
    .await;
}

// Found by a hostile review: a Redis that stalls (a paused process) keeps its connections open,
// so the other replicas' subscriptions never broke and they served a version deleted as it
// stalled until Redis answered again. The subscription's heartbeat goes unanswered instead.
#[tokio::test]
async fn a_delete_in_flight_when_redis_stalls_is_not_served_stale_by_the_others() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 2, &deletes_allowed(), "3s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let (target, deleting) = delete_slowly_at_github(&sim, a, b).await;
    let stalled_at = Instant::now();
    let _stalled = stall(&redis, 30.0).await;
    assert_eq!(deleting.await.unwrap(), StatusCode::NO_CONTENT);
    eventually(
        Duration::from_secs(15),
        "B to stop serving the version deleted as Redis stalled",
        || async { version(b, target).await == StatusCode::NOT_FOUND },
    )
    .await;
    assert!(
        stalled_at.elapsed() < Duration::from_secs(25),
        "B healed only once Redis answered again"
    );
}

/// Reads through `proxy` until the read reaches GitHub again (the replica dropped its L1 in a
/// resync): a key of its own (`per_page`), so no other replica's L2 write answers it.
async fn wait_for_resync(sim: &Sim, proxy: &TestProxy, per_page: u32) {
    let path = format!("/orgs/acme/packages/container/web/versions?per_page={per_page}");
    let fetched = || {
        sim.handle
            .log()
            .iter()
            .filter(|r| r.query.as_deref() == Some(&format!("per_page={per_page}")[..]))
            .count()
    };
    let before = fetched();
    eventually(Duration::from_secs(10), "the replica's resync", || async {
        assert_eq!(
            get(&proxy.url(&path), proxy.token()).await.status,
            StatusCode::OK
        );
        fetched() > before
    })
    .await;
}

// Found by a hostile review: a Redis that lost its data (a restart without persistence, a
// FLUSHALL) gave every rule budget and the fleet's pace a fresh start, so a clean-up job could
// spend its hourly budget again at once. Each replica now watches the generations' epoch, and
// puts the budgets it spent back when the data is gone.
#[tokio::test]
async fn rule_budgets_hold_when_redis_loses_its_data() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let audit = temp_dir("budget-flush").join("audit.jsonl");
    let extra = format!(
        "[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n[[policy.allow]]\nname = \"two\"\n\
         packages = [\"web\"]\nmax_per_hour = 2\nmulti_arch_guard = false\n"
    );
    let fleet = fleet(&sim, &redis, 2, &extra, "5s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let ids = sim.versions("web").await;
    assert_eq!(delete(a, ids[1]).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(b, ids[2]).await, StatusCode::NO_CONTENT);
    assert_eq!(delete(a, ids[3]).await, StatusCode::TOO_MANY_REQUESTS);
    for (proxy, per_page) in [(a, 31), (b, 32)] {
        let path = format!("/orgs/acme/packages/container/web/versions?per_page={per_page}");
        assert_eq!(
            get(&proxy.url(&path), proxy.token()).await.status,
            StatusCode::OK
        );
    }
    redis_cmd::<()>(&redis, &redis::cmd("FLUSHALL")).await;
    wait_for_resync(&sim, a, 31).await;
    wait_for_resync(&sim, b, 32).await;
    for proxy in [a, b] {
        assert_eq!(
            delete(proxy, ids[3]).await,
            StatusCode::TOO_MANY_REQUESTS,
            "the budget started afresh"
        );
    }
    assert_eq!(sim.deletes(), 2);
}

// With the budgets: the fleet's last send is put back too, so the pace holds across the loss.
#[tokio::test]
async fn the_pace_holds_when_redis_loses_its_data() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let pace = Duration::from_secs(4);
    let extra = format!("{}multi_arch_guard = false\n", allow_everything("4s"));
    let fleet = fleet(&sim, &redis, 2, &extra, "5s").await;
    let (a, b) = (&fleet[0], &fleet[1]);
    let ids = sim.versions("team-a-api").await;
    let path = |id: u64| format!("/orgs/acme/packages/container/team-a-api/versions/{id}");
    for (proxy, per_page) in [(a, 31), (b, 32)] {
        let list = format!("/orgs/acme/packages/container/web/versions?per_page={per_page}");
        assert_eq!(
            get(&proxy.url(&list), proxy.token()).await.status,
            StatusCode::OK
        );
    }
    let first = send(Method::DELETE, &a.url(&path(ids[1])), Some(a.token()), &[]).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    redis_cmd::<()>(&redis, &redis::cmd("FLUSHALL")).await;
    wait_for_resync(&sim, a, 31).await;
    wait_for_resync(&sim, b, 32).await;
    let second = send(Method::DELETE, &b.url(&path(ids[2])), Some(b.token()), &[]).await;
    assert_eq!(second.status, StatusCode::NO_CONTENT);
    let sent = sim.arrivals(&Method::DELETE);
    assert_eq!(sent.len(), 2);
    assert!(
        sent[1] - sent[0] >= pace - Duration::from_millis(50),
        "deletes {:?} apart with a {pace:?} pace",
        sent[1] - sent[0]
    );
}

// Found by a hostile review: any Redis command that succeeded marked the tier up, even while the
// subscription could not reconnect (Redis at `maxclients`): the replica accepted deletes and
// trusted its L1 while it missed the fleet's invalidations. Only a live subscription marks it up.
#[tokio::test]
async fn a_replica_without_its_subscription_stays_down_whatever_else_answers() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, 2, &deletes_allowed(), "5s").await;
    let b = &fleet[1];
    // A slow read at GitHub: its fetch lock, taken while the tier is up, is renewed in Redis
    // for as long as the read lasts (the command connection answers).
    let slow = slow_read_at_github(&sim, b, b.token(), Duration::from_secs(4)).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .unwrap();
    let connected: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Room for every connection but the two subscriptions, which are then cut.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(connected - 2)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: u32 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_up(b, false, Duration::from_secs(5)).await;
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    let ids = sim.versions("web").await;
    assert_eq!(
        delete(b, ids[1]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "a delete through a replica that misses the fleet's invalidations"
    );
    let up = sample(
        &scrape(&b.url("/metrics")).await,
        "packages_proxy_shared_tier_up",
    );
    assert_eq!(up, Some(0.0));
}

// Found by a hostile review of the send turn: after a FLUSHALL the fleet's record of its last
// send was gone, and another replica sent 0.6 s after it (pace 1 s) before the first replica
// wrote its send back. A lost record now counts as a send at the moment it is found missing.
#[tokio::test]
async fn after_a_flush_another_replicas_delete_still_waits_a_pace() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let sim = spawn_sim().await;
    let fleet = fleet(
        &sim,
        &redis,
        2,
        &format!("{}multi_arch_guard = false\n", allow_everything("1s")),
        "5s",
    )
    .await;
    let web = sim.versions("web").await;
    assert_eq!(delete(&fleet[0], web[1]).await, StatusCode::NO_CONTENT);
    let _: () = redis_cmd(&redis, &redis::cmd("FLUSHALL")).await;
    assert_eq!(delete(&fleet[1], web[2]).await, StatusCode::NO_CONTENT);
    let arrivals = sim.arrivals(&Method::DELETE);
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(950),
        "two deletes {gap:?} apart, pace 1 s"
    );
}
