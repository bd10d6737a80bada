//! The multi-arch guard end to end: real sockets, the simulator as Packages API *and* container
//! registry, the real proxy. Regression guarded: clean-up jobs deleting "untagged" versions that
//! are the platform manifests and attestations of a tagged multi-arch image (`docker pull :latest`
//! then fails with `manifest unknown`).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use http::{Method, StatusCode};
use packages_proxy::sim::{Dataset, RegistryFault};
use std::time::Duration;
use support::{
    ProxyOptions, Sim, TestProxy, eventually, send, spawn_proxy, spawn_sim_with, temp_dir,
};

const APP: &str = "/orgs/acme/packages/container/app";

/// `acme/app`, newest first: [0] index `latest, v2`, [1] its attestation, [2] its linux/arm64,
/// [3] its linux/amd64, [4] index `v1`, [5..=7] its children, [8] `single-1`, [9], [10] orphans.
fn dataset() -> Dataset {
    Dataset::new()
        .org("acme", 9919)
        .multi_arch("acme", "app", "private", (2, 1, 2))
}

struct Setup {
    sim: Sim,
    proxy: TestProxy,
    audit: std::path::PathBuf,
    /// Version ids of `acme/app`, newest first.
    ids: Vec<u64>,
}

/// A proxy allowing every delete under one rule with `rule_extra` lines, audited, unpaced.
async fn setup(rule_extra: &str) -> Setup {
    setup_with(rule_extra, ProxyOptions::default()).await
}

async fn setup_with(rule_extra: &str, opts: ProxyOptions) -> Setup {
    let sim = spawn_sim_with(dataset()).await;
    let audit = temp_dir("guard").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "{}\n[mutations]\npace = \"0s\"\naudit_log = {audit:?}\n\
             [[policy.allow]]\nname = \"cleanup\"\n{rule_extra}\n",
            opts.extra
        ),
        ..opts
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let url = format!("{}{APP}/versions?per_page=100", sim.handle.base_url());
    let ids = support::get(&url, &sim.org_token).await.ids();
    assert_eq!(ids.len(), 11);
    Setup {
        sim,
        proxy,
        audit,
        ids,
    }
}

impl Setup {
    async fn delete(&self, i: usize, headers: &[(&str, &str)]) -> support::Reply {
        let url = self.proxy.url(&format!("{APP}/versions/{}", self.ids[i]));
        send(Method::DELETE, &url, Some(self.proxy.token()), headers).await
    }

    fn deleted(&self, i: usize) -> bool {
        self.sim
            .handle
            .version_deleted("acme", "container", "app", self.ids[i])
            .unwrap()
    }

    fn registry_requests(&self) -> usize {
        let log = self.sim.handle.log();
        log.iter()
            .filter(|r| r.path.starts_with("/v2/") || r.path == "/token")
            .count()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn refuses_the_platform_manifest_and_attestation_of_a_tagged_index() {
    let s = setup("").await;
    let arm64 = s.delete(2, &[]).await;
    assert_eq!(arm64.status, StatusCode::CONFLICT);
    let message = arm64.json()["message"].as_str().unwrap().to_owned();
    assert!(message.contains("latest"), "{message}");
    assert!(message.contains(&s.ids[0].to_string()), "{message}");
    assert!(message.contains("linux/arm64"), "{message}");
    assert!(arm64.json()["documentation_url"].is_string());

    let attestation = s.delete(1, &[]).await;
    assert_eq!(attestation.status, StatusCode::CONFLICT);
    assert!(
        attestation.json()["message"]
            .as_str()
            .unwrap()
            .contains("attestation manifest")
    );
    // A child of the older index `v1` is held too, naming that tag.
    let old = s.delete(6, &[]).await;
    assert_eq!(old.status, StatusCode::CONFLICT);
    assert!(old.json()["message"].as_str().unwrap().contains("v1"));
    assert!(!s.deleted(1) && !s.deleted(2) && !s.deleted(6));
}

#[tokio::test]
async fn allows_an_untagged_orphan_and_a_tagged_single_image() {
    let s = setup("").await;
    assert_eq!(s.delete(10, &[]).await.status, StatusCode::NO_CONTENT);
    assert!(s.deleted(10));
    assert_eq!(s.delete(8, &[]).await.status, StatusCode::NO_CONTENT);
    assert!(s.deleted(8));
}

#[tokio::test]
async fn fails_closed_when_the_registry_is_down_or_answers_garbage() {
    let s = setup("").await;
    for fault in [
        RegistryFault::Down,
        RegistryFault::Status(StatusCode::INTERNAL_SERVER_ERROR),
        RegistryFault::BadJson,
    ] {
        s.sim.handle.inject_registry(fault.clone(), 1);
        let reply = s.delete(10, &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");
        let message = reply.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("container registry"), "{message}");
        if fault == RegistryFault::Down {
            // What kind of failure, never its causes (hosts, resolver, TLS, hyper internals).
            assert!(
                message.contains(
                    "from the container registry: the registry could not be reached. The delete"
                ),
                "{message}"
            );
        }
        assert!(!s.deleted(10), "deleted despite {fault:?}");
    }
    // Once the registry answers again the same delete goes through.
    assert_eq!(s.delete(10, &[]).await.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn works_through_the_registry_token_challenge() {
    let s = setup("").await;
    assert_eq!(s.delete(9, &[]).await.status, StatusCode::NO_CONTENT);
    let log = s.sim.handle.log();
    let registry: Vec<_> = log
        .iter()
        .filter(|r| r.path.starts_with("/v2/") || r.path == "/token")
        .collect();
    // Challenge, token, retry with the registry token.
    assert!(
        registry[0]
            .path
            .starts_with("/v2/acme/app/manifests/sha256:")
    );
    assert!(registry[0].headers.get("authorization").is_none());
    assert_eq!(registry[1].path, "/token");
    let basic = registry[1].headers["authorization"].to_str().unwrap();
    assert!(basic.starts_with("Basic "), "{basic}");
    let bearer = registry[2].headers["authorization"].to_str().unwrap();
    assert!(bearer.starts_with("Bearer simreg_"), "{bearer}");
    // The org token never reaches a manifest request.
    assert!(
        registry
            .iter()
            .filter(|r| r.path.starts_with("/v2/"))
            .all(|r| r
                .headers
                .get("authorization")
                .is_none_or(|v| !v.to_str().unwrap().contains(&s.sim.org_token)))
    );
    // One token for the repository serves every later read.
    assert_eq!(
        registry.iter().filter(|r| r.path == "/token").count(),
        1,
        "the registry token was not reused"
    );
}

#[tokio::test]
async fn multi_arch_guard_false_on_the_rule_switches_it_off() {
    let s = setup("multi_arch_guard = false").await;
    assert_eq!(s.delete(2, &[]).await.status, StatusCode::NO_CONTENT);
    assert!(s.deleted(2));
    assert_eq!(s.registry_requests(), 0, "the registry was read");
    let records = s.audit();
    assert_eq!(
        records.last().unwrap()["multi_arch_guard"]["decision"],
        "off"
    );
}

#[tokio::test]
async fn a_dry_run_reports_what_the_guard_refuses_without_mutating() {
    let s = setup("").await;
    let dry = [("x-packages-proxy-dry-run", "1")];
    let refused = s.delete(3, &dry).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("latest")
    );
    let allowed = s.delete(10, &dry).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(allowed.json()["multi_arch_guard"]["decision"], "allow");
    assert!(!s.deleted(3) && !s.deleted(10));
    assert!(
        s.sim
            .handle
            .log()
            .iter()
            .all(|r| r.method != Method::DELETE),
        "a dry run sent a DELETE"
    );
    let records = s.audit();
    let refusal = &records[0];
    assert_eq!(refusal["dry_run"], true);
    assert_eq!(refusal["decision"], "refused");
    assert_eq!(refusal["multi_arch_guard"]["decision"], "refuse");
}

#[tokio::test]
async fn the_audit_record_carries_every_guard_decision() {
    let s = setup("").await;
    assert_eq!(s.delete(2, &[]).await.status, StatusCode::CONFLICT);
    assert_eq!(s.delete(9, &[]).await.status, StatusCode::NO_CONTENT);
    let records = s.audit();
    let refusal = &records[0];
    let guard = &refusal["multi_arch_guard"];
    assert_eq!(guard["decision"], "refuse");
    assert_eq!(guard["held_by"]["version_id"], s.ids[0]);
    assert_eq!(guard["held_by"]["tags"][0], "latest");
    assert_eq!(
        guard["held_by"]["role"],
        "the linux/arm64 platform manifest"
    );
    assert!(guard["digest"].as_str().unwrap().starts_with("sha256:"));
    // Intent and outcome of the allowed delete both carry the guard's decision.
    for record in &records[1..] {
        assert_eq!(record["multi_arch_guard"]["decision"], "allow", "{record}");
        assert_eq!(record["multi_arch_guard"]["tagged_versions"], 3);
    }
    assert_eq!(records.last().unwrap()["decision"], "completed");
}

#[tokio::test]
async fn manifests_are_cached_by_digest_across_decisions() {
    let s = setup("").await;
    let dry = [("x-packages-proxy-dry-run", "1")];
    assert_eq!(s.delete(10, &dry).await.status, StatusCode::OK);
    let first = s.registry_requests();
    assert!(first >= 3, "the first decision read {first} times");
    let second = s.delete(9, &dry).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(
        s.registry_requests(),
        first,
        "a cached manifest was read again"
    );
    let guard = &second.json()["multi_arch_guard"];
    assert_eq!(guard["registry_reads"], 0);
    assert_eq!(guard["cached_manifests"], 3);
}

#[tokio::test]
async fn a_whole_package_delete_is_not_guarded() {
    // Deleting the package removes the index with its children: no tag is left broken.
    let s = setup("").await;
    let url = s.proxy.url(APP);
    let reply = send(Method::DELETE, &url, Some(s.proxy.token()), &[]).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(s.registry_requests(), 0);
    assert_eq!(
        s.audit().last().unwrap()["multi_arch_guard"]["decision"],
        "whole_package"
    );
}

#[tokio::test]
async fn registry_reads_are_bounded_per_decision_and_a_retry_continues_from_the_cache() {
    let opts = ProxyOptions {
        extra_registry: "max_reads_per_decision = 2",
        ..ProxyOptions::default()
    };
    let s = setup_with("", opts).await;
    // Challenge and token use up the bound; the third read would pass it.
    let first = s.delete(10, &[]).await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        first.json()["message"]
            .as_str()
            .unwrap()
            .contains("registry.max_reads_per_decision")
    );
    assert_eq!(s.registry_requests(), 2);
    // Two more manifests, then the last one: three tagged images in all.
    assert_eq!(
        s.delete(10, &[]).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert!(!s.deleted(10));
    assert_eq!(s.delete(10, &[]).await.status, StatusCode::NO_CONTENT);
    assert!(s.deleted(10));
}

#[tokio::test]
async fn registry_reads_are_charged_to_the_clients_quota() {
    let opts = ProxyOptions {
        extra: "[quotas]\nupstream_per_minute = 4\n".to_owned(),
        ..ProxyOptions::default()
    };
    let s = setup_with("", opts).await;
    // One version page and three registry requests spend the four; the next read is refused.
    let reply = s.delete(10, &[]).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("x-ratelimit-resource"), Some("proxy-upstream"));
    assert_eq!(s.registry_requests(), 3);
    assert!(!s.deleted(10));
}

#[test]
fn the_registry_base_url_is_validated_like_the_upstreams() {
    let base = "[upstream]\ntoken_env = \"T\"\nowners = [\"acme\"]\n";
    let plain = format!("{base}[registry]\nbase_url = \"http://ghcr.example\"\n");
    let error = packages_proxy::config::Config::parse(&format!("[server]\n{plain}"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("registry.base_url"), "{error}");
    let ghes =
        format!("[server]\n{base}[registry]\nbase_url = \"https://containers.ghe.example\"\n");
    let config = packages_proxy::config::Config::parse(&ghes).unwrap();
    assert_eq!(config.registry.origin, "https://containers.ghe.example");
    let default = packages_proxy::config::Config::parse(&format!("[server]\n{base}")).unwrap();
    assert_eq!(default.registry.origin, "https://ghcr.io");
}

// Found by a hostile review of the second look: it read the protected tags first and the guard's
// version list after them; when GitHub was slow to answer the list, a protected tag pushed
// meanwhile was seconds old at the send and still not seen. The tags are read last now.
#[tokio::test]
async fn a_tag_pushed_while_the_guard_reads_again_stops_the_delete() {
    use packages_proxy::sim::{Fault, FaultKind};
    let sim = spawn_sim_with(dataset()).await;
    let audit = temp_dir("guard-slow-look").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[mutations]\npace = \"1500ms\"\naudit_log = {audit:?}\n\
             [[policy.allow]]\nname = \"cleanup\"\nprotect_tags = [\"keep*\"]\n"
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let url = format!("{}{APP}/versions?per_page=100", sim.handle.base_url());
    let ids = support::get(&url, &sim.org_token).await.ids();
    // The two untagged orphans, deleted at once: the second waits a pace, then reads again.
    let deletes: Vec<_> = [ids[9], ids[10]]
        .into_iter()
        .map(|id| {
            let url = proxy.url(&format!("{APP}/versions/{id}"));
            let token = proxy.token().to_owned();
            tokio::spawn(async move { send(Method::DELETE, &url, Some(&token), &[]).await })
        })
        .collect();
    let intents = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"intent\""))
            .count()
    };
    eventually(Duration::from_secs(10), "one sent, one queued", || async {
        sim.deletes() == 1 && intents() == 2
    })
    .await;
    let queued = if sim
        .handle
        .version_deleted("acme", "container", "app", ids[9])
        == Some(true)
    {
        ids[10]
    } else {
        ids[9]
    };
    // Its second look: GitHub answers the guard's version list 2 s late.
    let before = sim.gets();
    sim.handle
        .inject(Fault::new(FaultKind::SlowAnswer(Duration::from_secs(2)), 1));
    eventually(
        Duration::from_secs(5),
        "the second look at GitHub",
        || async { sim.gets() > before },
    )
    .await;
    assert!(
        sim.handle
            .set_tags("acme", "container", "app", queued, &["keep-me"])
    );
    let mut statuses = Vec::new();
    for delete in deletes {
        statuses.push(delete.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 403]);
    assert_eq!(
        sim.handle
            .version_deleted("acme", "container", "app", queued),
        Some(false),
        "a version tagged during the second look was deleted"
    );
}
