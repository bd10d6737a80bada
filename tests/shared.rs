//! Three replicas, one simulator and one real Redis (Debian's `redis-server`, started here on a
//! free loopback port): the fleet shares one warm cache, one fetch per key, invalidations, one
//! mutation pace, quotas and back-offs; and survives Redis going away and coming back.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use packages_proxy::sim::{Fault, FaultKind};
use support::*;

async fn fleet(sim: &Sim, redis: &Redis, extra: &str) -> Vec<TestProxy> {
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let opts = ProxyOptions {
            extra: format!(
                "[shared]\nredis_url = \"{}\"\nreplicas = 3\n{extra}",
                redis.url()
            ),
            public_url: Some(FLEET_URL),
            ..ProxyOptions::default()
        };
        proxies.push(spawn_proxy(sim, opts).await);
    }
    for proxy in &proxies {
        wait_up(proxy, true).await;
    }
    proxies
}

async fn wait_up(proxy: &TestProxy, up: bool) {
    wait_shared_tier(&proxy.url("/metrics"), up, Duration::from_secs(5)).await;
}

const WEB: &str = "/orgs/acme/packages/container/web/versions?per_page=10";

/// The multi-arch guard off: each replica reads a package's tagged manifests once (its own
/// digest cache), and `web`'s 200 tags would spend the fleet-wide quota before the deletes these
/// tests are about (tests/guard.rs covers the guard).
const GUARD_OFF: &str = "multi_arch_guard = false\n";

#[tokio::test]
async fn a_read_warmed_on_one_replica_is_served_by_the_others() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, "").await;
    let first = get(&fleet[0].url(WEB), fleet[0].token()).await;
    assert_eq!(sim.gets(), 1);
    for proxy in &fleet[1..] {
        let reply = get(&proxy.url(WEB), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, first.body);
        let status = reply.header("cache-status").unwrap();
        assert!(status.contains("detail=shared"), "{status}");
    }
    assert_eq!(
        sim.gets(),
        1,
        "another replica went upstream for a warm key"
    );
}

#[tokio::test]
async fn concurrent_cold_requests_across_replicas_make_one_upstream_call() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    // 300 requests at once on a busy machine can hold a Redis answer past the default 250 ms
    // timeout, and a replica that marks the tier down fetches alone (by design): this test is
    // about the lock, not a slow Redis (tests/shared_faults.rs).
    let fleet = fleet(&sim, &redis, "timeout = \"5s\"\n").await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(300)),
        1,
    ));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let proxy = &fleet[i % 3];
        let (url, token) = (proxy.url(WEB), proxy.token().to_owned());
        tasks.push(tokio::spawn(async move { get(&url, &token).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sim.gets(), 1, "the fleet fetched one key more than once");
}

#[tokio::test]
async fn a_delete_on_one_replica_is_invisible_on_the_others_at_once() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let extra = allow_everything("0s") + GUARD_OFF;
    let fleet = fleet(&sim, &redis, &extra).await;
    let ids: Vec<u64> = get(&fleet[1].url(WEB), fleet[1].token()).await.ids();
    get(&fleet[2].url(WEB), fleet[2].token()).await;
    let victim = ids[1];
    let path = format!("/orgs/acme/packages/container/web/versions/{victim}");
    let deleted = send(
        Method::DELETE,
        &fleet[0].url(&path),
        Some(fleet[0].token()),
        &[],
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for proxy in &fleet[1..] {
        let shown = get(&proxy.url(WEB), proxy.token()).await.ids();
        assert!(
            !shown.contains(&victim),
            "a replica still shows the deleted version"
        );
    }
}

#[tokio::test]
async fn mutations_through_all_replicas_are_paced_fleet_wide() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let extra = allow_everything("200ms") + GUARD_OFF;
    let fleet = fleet(&sim, &redis, &extra).await;
    let url = format!(
        "{}/orgs/acme/packages/container/web/versions?per_page=20",
        sim.handle.base_url()
    );
    let ids: Vec<u64> = get(&url, &sim.org_token).await.ids();
    let targets = ids[1..7]
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let proxy = &fleet[i % 3];
            (
                proxy.url(&format!("/orgs/acme/packages/container/web/versions/{id}")),
                proxy.token().to_owned(),
            )
        })
        .collect();
    for task in spawn_deletes(targets) {
        assert_eq!(task.await.unwrap(), StatusCode::NO_CONTENT);
    }
    let times = sim.arrivals(&Method::DELETE);
    assert_eq!(times.len(), 6);
    for pair in times.windows(2) {
        assert!(
            // The proxy gates each send `pace` apart; the simulator's arrival times add loopback
            // and scheduling jitter (seven tests share two cores), hence the margin.
            pair[1] - pair[0] >= Duration::from_millis(170),
            "mutations {:?} apart",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test]
async fn a_clients_quota_holds_across_replicas() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, "[quotas]\nupstream_per_minute = 3\n").await;
    for (i, proxy) in fleet.iter().enumerate() {
        let path = format!(
            "/orgs/acme/packages/container/web/versions?per_page={}",
            30 + i
        );
        assert_eq!(
            get(&proxy.url(&path), proxy.token()).await.status,
            StatusCode::OK
        );
    }
    let over = get(
        &fleet[0].url("/orgs/acme/packages/container/web/versions?per_page=40"),
        fleet[0].token(),
    )
    .await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.header("x-ratelimit-limit"), Some("3"));
    // Every replica reports the fleet-wide quota.
    let reported = get(&fleet[2].url("/rate_limit"), fleet[2].token())
        .await
        .json();
    assert_eq!(reported["rate"]["limit"], 3);
    assert_eq!(reported["rate"]["remaining"], 0);
}

#[tokio::test]
async fn a_rules_budget_holds_across_replicas() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let audit = temp_dir("shared-budget").join("audit.jsonl");
    let extra = format!(
        "[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n[[policy.allow]]\nname = \"two\"\nmax_per_hour = 2\n{GUARD_OFF}"
    );
    let fleet = fleet(&sim, &redis, &extra).await;
    let url = format!(
        "{}/orgs/acme/packages/container/web/versions?per_page=20",
        sim.handle.base_url()
    );
    let ids: Vec<u64> = get(&url, &sim.org_token).await.ids();
    let mut statuses = Vec::new();
    for (i, id) in ids[1..4].iter().enumerate() {
        let proxy = &fleet[i];
        let path = format!("/orgs/acme/packages/container/web/versions/{id}");
        statuses.push(
            send(Method::DELETE, &proxy.url(&path), Some(proxy.token()), &[])
                .await
                .status,
        );
    }
    assert_eq!(
        statuses,
        [
            StatusCode::NO_CONTENT,
            StatusCode::NO_CONTENT,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn a_back_off_opened_by_one_replica_stops_all_of_them() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, "").await;
    let kind = FaultKind::SecondaryRateLimit {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after_secs: 30,
    };
    sim.handle.inject(Fault::new(kind, 1));
    assert_eq!(
        get(&fleet[0].url(WEB), fleet[0].token()).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let seen = sim.handle.log().len();
    for proxy in &fleet[1..] {
        // The announcement reaches the others through Redis's pub/sub.
        let metrics = proxy.url("/metrics");
        let backoff = "packages_proxy_upstream_backoff_active";
        wait_for_sample(&metrics, backoff, 1.0, Duration::from_secs(5)).await;
        let reply = get(
            &proxy.url("/orgs/acme/packages/container/web/versions?per_page=55"),
            proxy.token(),
        )
        .await;
        // GitHub's answer to a rate-limited request, with the fleet's deadline.
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=30).contains(&wait), "retry-after {wait}");
        assert!(reply.text().contains("secondary rate limit"));
    }
    assert_eq!(
        sim.handle.log().len(),
        seen,
        "a replica called GitHub during the fleet's back-off"
    );
}

#[tokio::test]
async fn without_redis_reads_work_and_mutations_are_refused_until_it_returns() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let sim = spawn_sim().await;
    let extra = allow_everything("0s") + GUARD_OFF;
    let fleet = fleet(&sim, &redis, &extra).await;
    let url = format!(
        "{}/orgs/acme/packages/container/web/versions?per_page=20",
        sim.handle.base_url()
    );
    let ids: Vec<u64> = get(&url, &sim.org_token).await.ids();
    get(&fleet[0].url(WEB), fleet[0].token()).await;

    // A delete before Redis goes away: the generations count 1 now, on every replica.
    let earlier = format!("/orgs/acme/packages/container/web/versions/{}", ids[3]);
    let gone = send(
        Method::DELETE,
        &fleet[0].url(&earlier),
        Some(fleet[0].token()),
        &[],
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);

    redis.kill();
    for proxy in &fleet {
        // Reads: warm from L1 or cold from upstream, Redis or not.
        assert_eq!(
            get(&proxy.url(WEB), proxy.token()).await.status,
            StatusCode::OK
        );
        wait_up(proxy, false).await;
        assert_eq!(
            get(
                &proxy.url("/orgs/acme/packages/container/web/versions?per_page=66"),
                proxy.token()
            )
            .await
            .status,
            StatusCode::OK
        );
    }
    let path = format!("/orgs/acme/packages/container/web/versions/{}", ids[2]);
    let refused = send(
        Method::DELETE,
        &fleet[1].url(&path),
        Some(fleet[1].token()),
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("Redis")
    );
    assert_eq!(sim.deletes(), 1, "only the delete before Redis went away");

    redis.spawn();
    for proxy in &fleet {
        wait_up(proxy, true).await;
    }
    // Redis came back empty: a new generation epoch. A delete must still reach every replica.
    let shown = |reply: &Reply| reply.ids();
    let listing = "/orgs/acme/packages/container/web/versions?per_page=20";
    assert!(shown(&get(&fleet[0].url(listing), fleet[0].token()).await).contains(&ids[2]));
    assert!(shown(&get(&fleet[2].url(listing), fleet[2].token()).await).contains(&ids[2]));
    let done = send(
        Method::DELETE,
        &fleet[1].url(&path),
        Some(fleet[1].token()),
        &[],
    )
    .await;
    assert_eq!(done.status, StatusCode::NO_CONTENT);
    // `up` is the probe's PING; a replica's subscription may come back a moment later. A bump it
    // missed meanwhile is caught by the resubscribe (L1 dropped, generations reloaded), so the
    // delete shows everywhere within that moment, not necessarily at once.
    for proxy in [&fleet[0], &fleet[2]] {
        let what = "a replica to stop showing a version deleted after Redis restarted";
        eventually(Duration::from_secs(5), what, || async {
            !shown(&get(&proxy.url(listing), proxy.token()).await).contains(&ids[2])
        })
        .await;
    }
    // The L2 works again: a key warmed on one replica is served by another without GitHub.
    let fresh = "/orgs/acme/packages/container/web/versions?per_page=77";
    get(&fleet[0].url(fresh), fleet[0].token()).await;
    let before = sim.gets();
    get(&fleet[2].url(fresh), fleet[2].token()).await;
    assert_eq!(sim.gets(), before);
}

// Found in review: a purge changed only the purging replica's L1, so L2 served the purged
// entry back, and purge generations diverged from the fleet's so a later delete was missed.
#[tokio::test]
async fn a_purge_reaches_every_replica_and_the_l2() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let mut fleet = Vec::new();
    for _ in 0..2 {
        let opts = ProxyOptions {
            extra: format!("[shared]\nredis_url = \"{}\"\nreplicas = 2\n", redis.url()),
            admins: vec!["team-b"],
            public_url: Some(FLEET_URL),
            ..ProxyOptions::default()
        };
        let proxy = spawn_proxy(&sim, opts).await;
        wait_up(&proxy, true).await;
        fleet.push(proxy);
    }
    get(&fleet[0].url(WEB), fleet[0].token()).await;
    get(&fleet[1].url(WEB), fleet[1].token()).await;
    assert_eq!(sim.gets(), 1);
    for body in [
        "{}",
        r#"{"owner":"acme"}"#,
        r#"{"owner":"acme","package_type":"container","package_name":"web"}"#,
    ] {
        let request = http::Request::post(fleet[0].url("/admin/cache/purge"))
            .header("authorization", format!("Bearer {}", fleet[0].tokens[1]))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        assert_eq!(
            client().request(request).await.unwrap().status(),
            StatusCode::OK,
            "{body}"
        );
        // The purge reaches replica 2 through Redis's pub/sub: until then it may still hit.
        let before = sim.gets();
        let what = format!("{body}: replica 2 to drop the purged entry");
        eventually(Duration::from_secs(5), &what, || async {
            let reply = get(&fleet[1].url(WEB), fleet[1].token()).await;
            assert_eq!(reply.status, StatusCode::OK);
            sim.gets() > before
        })
        .await;
        assert_eq!(sim.gets(), before + 1, "{body}: fetched more than once");
    }
}

// Found in review: a crafted L2 entry could panic the decoder (stranding the key) or smuggle
// headers to every team. Whatever sits in Redis, answers come from GitHub's allow-list.
#[tokio::test]
async fn crafted_l2_entries_are_ignored() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, "").await;
    let mut crafted = vec![1u8, 0, 200];
    crafted.extend_from_slice(&0u64.to_be_bytes()); // fetched at the epoch
    crafted.extend_from_slice(&u64::MAX.to_be_bytes()); // fresh forever
    crafted.extend_from_slice(&0u32.to_be_bytes()); // no etag
    crafted.extend_from_slice(&u16::MAX.to_be_bytes()); // 65,535 headers
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let epoch: u64 = redis::AsyncCommands::get(&mut conn, "packages-proxy:g:epoch")
        .await
        .unwrap();
    let key = format!(
        "packages-proxy:c:2022-11-28|application/vnd.github+json|{FLEET_URL}|/orgs/acme/packages/container/web/versions?state=active&per_page=10&page=1|g{epoch}.0.0.0"
    );
    let key = key.as_str();
    // First a well-formed entry at that key: replica 1 serves it, which proves the key is right.
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let mut valid = vec![1u8, 0, 200];
    valid.extend_from_slice(&now_ms.to_be_bytes());
    valid.extend_from_slice(&60_000u64.to_be_bytes());
    valid.extend_from_slice(&0u32.to_be_bytes());
    valid.extend_from_slice(&0u16.to_be_bytes());
    valid.extend_from_slice(&3u32.to_be_bytes());
    valid.extend_from_slice(b"[7]");
    let _: () = redis::AsyncCommands::set(&mut conn, key, valid)
        .await
        .unwrap();
    assert_eq!(
        &get(&fleet[0].url(WEB), fleet[0].token()).await.body[..],
        b"[7]"
    );
    // Then crafted ones: replicas 2 and 3 ignore them and ask GitHub.
    let mut forever = crafted.clone();
    forever.truncate(forever.len() - 2);
    forever.extend_from_slice(&0u16.to_be_bytes());
    forever.extend_from_slice(&2u32.to_be_bytes());
    forever.extend_from_slice(b"[]");
    for (proxy, bytes) in fleet[1..].iter().zip([crafted, forever]) {
        let _: () = redis::AsyncCommands::set(&mut conn, key, bytes)
            .await
            .unwrap();
        for _ in 0..2 {
            let reply = get(&proxy.url(WEB), proxy.token()).await;
            assert_eq!(reply.status, StatusCode::OK);
            let served = reply.json().as_array().is_some_and(|a| a.len() == 10);
            assert!(served, "a crafted entry was served");
        }
    }
}

// An answer another replica fetched (an L2 hit) costs GitHub nothing, so it costs the client's
// upstream quota nothing either: the token taken before the fleet lookup is given back.
#[tokio::test]
async fn an_l2_hit_does_not_spend_the_clients_upstream_quota() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, "[quotas]\nupstream_per_minute = 2\n").await;
    assert_eq!(
        get(&fleet[0].url(WEB), fleet[0].token()).await.status,
        StatusCode::OK
    );
    let shared = get(&fleet[1].url(WEB), fleet[1].token()).await;
    assert!(
        shared
            .header("cache-status")
            .unwrap()
            .contains("detail=shared")
    );
    let cold = get(
        &fleet[2].url("/orgs/acme/packages/container/web/versions?per_page=44"),
        fleet[2].token(),
    )
    .await;
    assert_eq!(cold.status, StatusCode::OK, "the L2 hit spent a token");
    let over = get(
        &fleet[2].url("/orgs/acme/packages/container/web/versions?per_page=45"),
        fleet[2].token(),
    )
    .await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
}

// Found by a hostile review: a client's `no-cache` was answered from the fleet's copy in Redis
// while that copy was fresh, however long ago GitHub had confirmed it: a version deleted in
// GitHub's web UI was served to every `no-cache` read until the TTL ran out.
#[tokio::test]
async fn no_cache_asks_github_even_while_the_fleet_holds_a_fresh_copy() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    // "0s": every `no-cache` goes to GitHub (a copy confirmed within the interval would do).
    let fleet = fleet(&sim, &redis, "[cache]\nmin_revalidate_interval = \"0s\"\n").await;
    let no_cache = [("cache-control", "no-cache")];
    get(&fleet[0].url(WEB), fleet[0].token()).await;
    assert_eq!(sim.gets(), 1);
    // Cold here, fresh in Redis: a plain read takes the fleet's copy, `no-cache` does not.
    let shared = get(&fleet[1].url(WEB), fleet[1].token()).await;
    assert!(
        shared
            .header("cache-status")
            .unwrap()
            .contains("detail=shared"),
        "{:?}",
        shared.header("cache-status")
    );
    assert_eq!(sim.gets(), 1);
    for (proxy, gets) in [(&fleet[2], 2), (&fleet[1], 3), (&fleet[1], 4)] {
        let forced = send(Method::GET, &proxy.url(WEB), Some(proxy.token()), &no_cache).await;
        assert_eq!(forced.status, StatusCode::OK);
        let status = forced.header("cache-status").unwrap();
        assert!(!status.contains("detail=shared"), "{status}");
        assert_eq!(
            sim.gets(),
            gets,
            "a no-cache read was answered from Redis: {status}"
        );
    }
}

// Found by a hostile review: the cache key did not name the base an answer's URLs are rewritten
// onto, so a replica with another `public_url` on the same Redis (a rename rolling out, two
// deployments sharing it) served the first one's `Link`, body URLs and ETags, and a 304 from
// GitHub never mended them.
#[tokio::test]
async fn replicas_with_another_public_url_never_serve_each_others_urls() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let shared = format!("[shared]\nredis_url = \"{}\"\nreplicas = 2\n", redis.url());
    let first = spawn_proxy(
        &sim,
        ProxyOptions {
            extra: shared.clone(),
            ..ProxyOptions::default()
        },
    )
    .await;
    let renamed = spawn_proxy(
        &sim,
        ProxyOptions {
            public_url: Some("https://renamed.example"),
            extra: shared,
            ..ProxyOptions::default()
        },
    )
    .await;
    wait_up(&first, true).await;
    wait_up(&renamed, true).await;
    let old = get(&first.url(WEB), first.token()).await;
    assert!(
        old.text().contains(&first.url("/orgs/acme/")),
        "{}",
        old.text()
    );
    let new = get(&renamed.url(WEB), renamed.token()).await;
    assert_eq!(new.status, StatusCode::OK);
    assert!(
        !new.text().contains(&first.url("/")),
        "the other replica's URLs: {}",
        new.text()
    );
    assert!(new.text().contains("https://renamed.example/orgs/acme/"));
    let link = new.header("link").expect("a Link header");
    assert!(
        link.starts_with("<https://renamed.example/orgs/acme/"),
        "{link}"
    );
    assert_ne!(new.header("etag"), old.header("etag"));
    // Each base is an entry of its own, in Redis as in memory.
    assert_eq!(sim.gets(), 2);
    let again = get(&renamed.url(WEB), renamed.token()).await;
    assert_eq!(again.body, new.body);
    assert_eq!(sim.gets(), 2);
}

// Found by a hostile review: a Redis user whose ACL forbids PUBLISH left the tier up, so deletes
// were sent and their invalidations reached no other replica. Each resync publishes once: such a
// tier never comes up (counted, logged), and deletes are refused as with Redis down.
#[tokio::test]
async fn a_redis_user_that_may_not_publish_keeps_the_tier_down() {
    let Some(redis) = Redis::start() else { return };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "nopublish",
            "on",
            ">secret",
            "~*",
            "&*",
            "+@all",
            "-publish",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = redis
        .url()
        .replacen("redis://", "redis://nopublish:secret@", 1);
    let sim = spawn_sim().await;
    let web = sim.versions("web").await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra: format!(
                "[shared]\nredis_url = \"{url}\"\n{}{GUARD_OFF}",
                allow_everything("0s")
            ),
            ..ProxyOptions::default()
        },
    )
    .await;
    let metrics = proxy.url("/metrics");
    let failures = "packages_proxy_shared_failures_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(&scrape(&metrics).await, failures).unwrap_or(0.0) < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed resync counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sample(&scrape(&metrics).await, "packages_proxy_shared_tier_up"),
        Some(0.0)
    );
    let path = format!("/orgs/acme/packages/container/web/versions/{}", web[1]);
    let refused = send(Method::DELETE, &proxy.url(&path), Some(proxy.token()), &[]).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(sim.deletes(), 0);
}

// Found by a hostile review of the operator surface: with Redis down, a delete still ran its
// checks (the multi-arch guard's registry and API reads, charged to the client) before the pace
// refused it: 147 reads, then a 429 "quota spent" instead of the promised 503. A call that would
// be sent is refused at once while the tier that paces the fleet is down.
#[tokio::test]
async fn with_redis_down_a_delete_is_refused_before_it_reads_anything() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let sim = spawn_sim().await;
    let fleet = fleet(&sim, &redis, &allow_everything("0s")).await;
    let proxy = &fleet[0];
    let web = sim.versions("web").await;
    redis.kill();
    wait_up(proxy, false).await;
    let before = sim.handle.log().len();
    let path = format!("/orgs/acme/packages/container/web/versions/{}", web[1]);
    let refused = send(Method::DELETE, &proxy.url(&path), Some(proxy.token()), &[]).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("Redis"), "{}", refused.text());
    assert_eq!(
        sim.handle.log().len(),
        before,
        "the refused delete read GitHub first"
    );
    assert_eq!(sim.deletes(), 0);
}
