//! The shared tier with three `packages-proxy serve` *processes* (not in-process replicas), one
//! real Redis and the simulator (in this test process, so its request log is readable): the
//! fleet shares one warm cache, makes one upstream call for a thundering herd spread over all
//! three, and a delete through one process is invisible on the others at once.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

#[path = "support/e2e.rs"]
mod e2e;
mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use packages_proxy::sim::{Fault, FaultKind};
use support::{
    FLEET_URL, ProxyOptions, Redis, get, proxy_config, send, spawn_sim, temp_dir, wait_shared_tier,
};

const WEB: &str = "/orgs/acme/packages/container/web/versions?per_page=10";

#[tokio::test]
async fn three_processes_share_one_cache_one_fetch_and_invalidations() {
    let Some(redis) = Redis::start() else { return };
    let sim = spawn_sim().await;
    let dir = e2e::TempDir::new("shared-processes");
    let audit = temp_dir("shared-processes-audit").join("audit.jsonl");
    let ports = e2e::free_ports(3);
    let mut fleet = Vec::new();
    let mut token = String::new();
    for (i, port) in ports.iter().enumerate() {
        let opts = ProxyOptions {
            extra: format!(
                "[shared]\nredis_url = \"{}\"\nreplicas = 3\n\
                 [mutations]\npace = \"0s\"\naudit_log = \"{}\"\n\
                 [[policy.allow]]\nname = \"all\"\n",
                redis.url(),
                audit.with_extension(format!("{i}.jsonl")).display()
            ),
            public_url: Some(FLEET_URL),
            ..ProxyOptions::default()
        };
        let (text, tokens) = proxy_config(&sim.handle.base_url(), *port, &opts);
        // Every process gets the same client tokens, as one config rolled out to a fleet would.
        let text = match i {
            0 => {
                token = tokens[0].clone();
                text
            }
            _ => text.replace(
                &packages_proxy::secret::TokenHash::of(&tokens[0]).to_hex(),
                &packages_proxy::secret::TokenHash::of(&token).to_hex(),
            ),
        };
        let text = text.replace("PACKAGES_PROXY_TEST_UNUSED", e2e::ORG_TOKEN_ENV);
        let name = format!("p{i}");
        fleet.push(e2e::ProxyProc::start(&dir, &name, *port, &text, &sim.org_token).await);
    }
    // Each process connects to Redis in the background after it is ready: wait for its gauge.
    for proxy in &fleet {
        wait_shared_tier(&proxy.url("/metrics"), true, Duration::from_secs(5)).await;
    }

    // A read warmed through process 1 is served by 2 and 3 without GitHub.
    let first = get(&fleet[0].url(WEB), &token).await;
    assert_eq!(first.status, StatusCode::OK);
    for proxy in &fleet[1..] {
        let reply = get(&proxy.url(WEB), &token).await;
        assert_eq!(reply.body, first.body);
    }
    assert_eq!(
        sim.gets(),
        1,
        "another process went upstream for a warm key"
    );

    // 300 concurrent cold requests spread over the three processes: one upstream call.
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(300)),
        1,
    ));
    let cold = "/orgs/acme/packages/container/web/versions?per_page=33";
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (url, token) = (fleet[i % 3].url(cold), token.clone());
        tasks.push(tokio::spawn(async move { get(&url, &token).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        sim.gets(),
        2,
        "the fleet fetched one cold key more than once"
    );

    // A delete through process 1 is invisible on 2 and 3 at once.
    let ids: Vec<u64> = first.ids();
    let path = format!("/orgs/acme/packages/container/web/versions/{}", ids[1]);
    let deleted = send(Method::DELETE, &fleet[0].url(&path), Some(&token), &[]).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for proxy in &fleet[1..] {
        let shown = get(&proxy.url(WEB), &token).await.ids();
        assert!(
            !shown.contains(&ids[1]),
            "{} still shows the deleted version",
            proxy.name
        );
    }
    for proxy in &mut fleet {
        proxy.stop(Duration::from_secs(10)).await;
    }
}
