//! The simulated GitHub Packages API, driven over a real socket as a proxy would drive it.

// `allow-unwrap-in-tests` covers `#[test]` bodies only; the helpers below panic on purpose too.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use packages_proxy::sim::{Dataset, Fault, FaultKind, SimHandle, Simulator};
use serde_json::Value;

const TOKEN: &str = "ghp_simulated";
const DOCS: &str = "https://docs.github.com/rest";
const GET: Method = Method::GET;
const DELETE: Method = Method::DELETE;
const POST: Method = Method::POST;
const WEB: &str = "/orgs/acme/packages/container/web/versions";
const UI_KIT: &str = "/orgs/acme/packages/npm/ui-kit";
const BASE_RUNTIME: &str = "/orgs/acme/packages/container/base%2Fruntime";

#[derive(Clone)]
struct Sim {
    handle: SimHandle,
    client: Client<HttpConnector, Empty<Bytes>>,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Sim {
    async fn start() -> Self {
        Self::with(Simulator::new(TOKEN).dataset(Dataset::sample())).await
    }

    async fn with(simulator: Simulator) -> Self {
        let handle = simulator.run().await.unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { handle, client }
    }

    /// Sends with a valid token; `url` is a path on the simulator or an absolute URL.
    async fn call(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.raw(method, url, &all).await.unwrap()
    }

    async fn get(&self, url: &str) -> Resp {
        self.call(GET, url, &[]).await
    }

    async fn status(&self, method: Method, url: &str) -> u16 {
        self.call(method, url, &[]).await.status.as_u16()
    }

    async fn raw(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Resp, hyper_util::client::legacy::Error> {
        let base = self.handle.base_url();
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{base}{url}")
        };
        let mut req = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let (parts, body) = self
            .client
            .request(req.body(Empty::new()).unwrap())
            .await?
            .into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// A value by JSON pointer, e.g. `/0/name`.
    fn at(&self, pointer: &str) -> Value {
        self.json().pointer(pointer).cloned().unwrap_or(Value::Null)
    }

    fn code(&self) -> u16 {
        self.status.as_u16()
    }

    fn len(&self) -> usize {
        self.json().as_array().unwrap().len()
    }

    fn message(&self) -> String {
        self.json()["message"].as_str().unwrap().to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn remaining(&self) -> u64 {
        self.header("x-ratelimit-remaining").parse().unwrap()
    }

    /// The URL of `rel` in the `Link` header.
    fn link(&self, rel: &str) -> Option<String> {
        let wanted = format!("; rel=\"{rel}\"");
        let part = self
            .header("link")
            .split(", ")
            .find(|part| part.ends_with(&wanted))?;
        Some(
            part.trim_end_matches(&wanted)
                .trim_matches(['<', '>'])
                .to_owned(),
        )
    }

    fn ids(&self) -> Vec<u64> {
        let items = self.json().as_array().unwrap().clone();
        items.iter().map(|v| v["id"].as_u64().unwrap()).collect()
    }
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_and_cost_nothing() {
    let sim = Sim::start().await;
    let before = sim.handle.rate_limit().remaining;
    let none = sim.raw(GET, UI_KIT, &[]).await.unwrap();
    assert_eq!(none.code(), 401);
    assert_eq!(none.message(), "Requires authentication");
    let bad = [("authorization", "Bearer nope")];
    let wrong = sim.raw(GET, UI_KIT, &bad).await.unwrap();
    assert_eq!(wrong.code(), 401);
    assert_eq!(wrong.message(), "Bad credentials");
    assert_eq!(wrong.at("/documentation_url"), DOCS);
    assert_eq!(sim.handle.rate_limit().remaining, before);
    let token = format!("token {TOKEN}");
    let good = [("authorization", token.as_str())];
    assert_eq!(sim.raw(GET, UI_KIT, &good).await.unwrap().code(), 200);
    assert_eq!(sim.handle.rate_limit().remaining, before - 1);
}

#[tokio::test]
async fn listing_packages_requires_a_valid_package_type() {
    let sim = Sim::start().await;
    let list = "/orgs/acme/packages";
    assert_eq!(sim.status(GET, list).await, 400);
    let pypi = format!("{list}?package_type=pypi");
    assert_eq!(sim.status(GET, &pypi).await, 400);
    let capped = format!("{list}?package_type=npm&per_page=100&page=101");
    assert_eq!(sim.status(GET, &capped).await, 400);
    let containers = sim.get("/orgs/ACME/packages?package_type=container").await;
    assert_eq!((containers.code(), containers.len()), (200, 4));
    assert_eq!(containers.header("link"), "", "one page: no Link");
    let public = format!("{list}?package_type=container&visibility=public");
    let public = sim.get(&public).await;
    assert_eq!(public.len(), 1);
    assert_eq!(public.at("/0/name"), "base/runtime");
    assert_eq!(public.at("/0/owner/type"), "Organization");
    assert_eq!(public.at("/0/version_count"), 12);
    let npm = sim.get(&format!("{list}?package_type=npm")).await;
    assert_eq!(npm.at("/0/repository/full_name"), "acme/ui-kit");
}

#[tokio::test]
async fn version_pages_link_to_numeric_id_urls_until_every_version_is_seen() {
    let sim = Sim::start().await;
    let base = sim.handle.base_url();
    let first = sim.get(&format!("{WEB}?per_page=100")).await;
    let next = first.link("next").unwrap();
    let path = "/organizations/9919/packages/container/web/versions";
    assert_eq!(next, format!("{base}{path}?per_page=100&page=2"));
    let last = next.replace("page=2", "page=3");
    assert_eq!(first.link("last").unwrap(), last);
    assert!(first.link("prev").is_none() && first.link("first").is_none());
    let mut ids = first.ids();
    let mut url = Some(next);
    while let Some(current) = url {
        let page = sim.get(&current).await;
        assert_eq!(page.code(), 200);
        ids.extend(page.ids());
        url = page.link("next");
        if url.is_none() {
            assert!(page.link("last").is_none());
            assert!(page.link("prev").unwrap().ends_with("page=2"));
            assert!(page.link("first").unwrap().ends_with("page=1"));
        }
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    let past = sim.get(&format!("{WEB}?per_page=100&page=4")).await;
    assert_eq!((past.code(), past.body.as_ref()), (200, b"[]".as_ref()));
}

#[tokio::test]
async fn encoded_slashes_name_packages_and_the_log_keeps_the_raw_path() {
    let sim = Sim::start().await;
    let package = sim.get(BASE_RUNTIME).await;
    assert_eq!(package.at("/name"), "base/runtime");
    let url = package.at("/url").as_str().unwrap().to_owned();
    assert!(url.ends_with(BASE_RUNTIME), "{url}");
    let lower = "/orgs/acme/packages/container/base%2fruntime/versions";
    let versions = sim.get(lower).await;
    assert_eq!(versions.len(), 12);
    assert_eq!(versions.at("/0/metadata/container/tags/0"), "latest");
    let raw = sim.get("/orgs/acme/packages/container/base/runtime").await;
    assert_eq!((raw.code(), raw.message()), (404, "Not Found".into()));
    assert_eq!(raw.at("/status"), "404");
    let log = sim.handle.log();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].path, BASE_RUNTIME);
    assert_eq!(log[1].path, lower);
    assert_eq!((log[0].query.as_deref(), &log[0].method), (None, &GET));
    sim.handle.clear_log();
    assert!(sim.handle.log().is_empty());
}

#[tokio::test]
async fn a_matching_etag_gets_a_free_304_while_a_200_costs_one() {
    let sim = Sim::start().await;
    let full = sim.get(WEB).await;
    let etag = full.header("etag").to_owned();
    assert!(etag.starts_with("W/\""));
    for name in [
        "x-oauth-scopes",
        "x-accepted-oauth-scopes",
        "set-cookie",
        "vary",
    ] {
        assert!(full.headers.contains_key(name), "{name}");
    }
    assert_eq!(full.header("x-ratelimit-resource"), "core");
    let json = "application/json; charset=utf-8";
    assert_eq!(full.header("content-type"), json);
    let cached = sim.call(GET, WEB, &[("if-none-match", &etag)]).await;
    assert_eq!((cached.code(), cached.body.len()), (304, 0));
    assert_eq!(cached.header("etag"), etag);
    assert_eq!(cached.remaining(), full.remaining());
    let other = [("if-none-match", "W/\"other\", \"x\"")];
    let again = sim.call(GET, WEB, &other).await;
    assert_eq!(again.code(), 200);
    assert_eq!(again.remaining(), full.remaining() - 1);
    let id = "x-github-request-id";
    assert_ne!(again.header(id), full.header(id));
}

#[tokio::test]
async fn deleted_versions_move_to_the_deleted_list_until_restored() {
    let sim = Sim::start().await;
    let list = "/orgs/acme/packages/container/team-a-api/versions";
    let id = sim.get(list).await.ids()[1];
    let version = format!("{list}/{id}");
    let deleted = |sim: &Sim| {
        let handle = &sim.handle;
        handle.version_deleted("acme", "container", "team-a-api", id)
    };
    assert_eq!(sim.status(DELETE, &version).await, 204);
    assert_eq!(deleted(&sim), Some(true));
    assert!(!sim.get(list).await.ids().contains(&id));
    let gone = sim.get(&format!("{list}?state=deleted")).await;
    assert_eq!(gone.at("/0/id"), id);
    assert!(gone.at("/0/deleted_at").is_string());
    assert_eq!(sim.status(GET, &version).await, 404);
    assert_eq!(sim.status(DELETE, &version).await, 404);
    let package = sim.get("/orgs/acme/packages/container/team-a-api").await;
    assert_eq!(package.at("/version_count"), 7);
    assert_eq!(sim.status(POST, &format!("{version}/restore")).await, 204);
    assert_eq!(deleted(&sim), Some(false));
    assert!(sim.get(list).await.ids().contains(&id));
    assert_eq!(sim.get(&version).await.at("/id"), id);
    let unknown = sim.handle.version_deleted("acme", "container", "web", 1);
    assert_eq!(unknown, None);
}

#[tokio::test]
async fn deleting_the_last_version_is_refused() {
    let sim = Sim::start().await;
    let list = "/orgs/acme/packages/rubygems/acme-cli/versions";
    let ids = sim.get(list).await.ids();
    assert_eq!(sim.status(DELETE, &format!("{list}/{}", ids[0])).await, 204);
    let refused = sim.call(DELETE, &format!("{list}/{}", ids[1]), &[]).await;
    assert_eq!(refused.code(), 400);
    let message = refused.message();
    assert!(
        message.starts_with("You cannot delete the last version"),
        "{message}"
    );
}

#[tokio::test]
async fn deleted_packages_vanish_until_restored() {
    let sim = Sim::start().await;
    let package = "/orgs/acme/packages/container/team-b%2Fworker";
    let deleted = |sim: &Sim| {
        let handle = &sim.handle;
        handle.package_deleted("acme", "container", "team-b/worker")
    };
    assert_eq!(sim.status(DELETE, package).await, 204);
    assert_eq!(deleted(&sim), Some(true));
    assert_eq!(sim.status(GET, package).await, 404);
    assert_eq!(sim.status(DELETE, package).await, 404);
    let listed = sim.get("/orgs/acme/packages?package_type=container").await;
    assert_eq!(listed.len(), 3);
    let restore = format!("{package}/restore?token=pkg-token");
    assert_eq!(sim.status(POST, &restore).await, 204);
    assert_eq!(sim.status(POST, &restore).await, 404);
    assert_eq!(sim.status(GET, package).await, 200);
    assert_eq!(deleted(&sim), Some(false));
    let unknown = sim.handle.package_deleted("acme", "container", "nope");
    assert_eq!(unknown, None);
}

#[tokio::test]
async fn injected_faults_apply_in_order_then_stop() {
    let sim = Sim::start().await;
    let secondary = FaultKind::SecondaryRateLimit {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after_secs: 7,
    };
    for kind in [
        FaultKind::Status(StatusCode::SERVICE_UNAVAILABLE),
        FaultKind::Latency(Duration::from_millis(150)),
        FaultKind::Reset,
        FaultKind::PrimaryRateLimit,
        secondary,
    ] {
        sim.handle.inject(Fault::new(kind, 1));
    }
    let unavailable = sim.get(UI_KIT).await;
    assert_eq!(unavailable.code(), 503);
    assert_eq!(unavailable.at("/status"), "503");
    let started = Instant::now();
    assert_eq!(sim.status(GET, UI_KIT).await, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let auth = format!("Bearer {TOKEN}");
    let reset = sim.raw(GET, UI_KIT, &[("authorization", &auth)]).await;
    assert!(reset.is_err(), "the connection is dropped unanswered");
    let primary = sim.get(UI_KIT).await;
    assert_eq!(primary.code(), 403);
    assert_eq!(primary.header("x-ratelimit-remaining"), "0");
    let message = primary.message();
    assert!(
        message.starts_with("API rate limit exceeded for user ID"),
        "{message}"
    );
    let limited = sim.get(UI_KIT).await;
    assert_eq!((limited.code(), limited.header("retry-after")), (429, "7"));
    let message = limited.message();
    assert!(
        message.starts_with("You have exceeded a secondary rate limit"),
        "{message}"
    );
    assert_eq!(sim.status(GET, UI_KIT).await, 200);
    let bad_gateway = FaultKind::Status(StatusCode::BAD_GATEWAY);
    sim.handle.inject(Fault::new(bad_gateway, 5));
    sim.handle.clear_faults();
    assert_eq!(sim.status(GET, UI_KIT).await, 200);
    // Faulted and reset requests are logged too.
    assert_eq!(sim.handle.log().len(), 7);
}

#[tokio::test]
async fn an_exhausted_rate_limit_answers_403_until_reset() {
    let limited = Simulator::new(TOKEN)
        .dataset(Dataset::sample())
        .rate_limit(2);
    let sim = Sim::with(limited).await;
    assert_eq!(sim.get(UI_KIT).await.remaining(), 1);
    assert_eq!(sim.get(UI_KIT).await.remaining(), 0);
    let refused = sim.get(UI_KIT).await;
    assert_eq!(refused.code(), 403);
    let snapshot = sim.handle.rate_limit();
    let state = (snapshot.limit, snapshot.remaining, snapshot.used);
    assert_eq!(state, (2, 0, 2));
    let reset = snapshot.reset.to_string();
    assert_eq!(refused.header("x-ratelimit-reset"), reset);
}

#[tokio::test]
async fn user_routes_act_as_the_authenticated_user_and_link_by_user_id() {
    let sim = Sim::start().await;
    let mine = sim.get("/user/packages?package_type=container").await;
    assert_eq!(mine.at("/0/name"), "hello_docker");
    assert_eq!(mine.at("/0/owner/type"), "User");
    let url = mine.at("/0/url").as_str().unwrap().to_owned();
    assert!(url.ends_with("/users/octocat/packages/container/hello_docker"));
    let page = sim
        .get("/user/packages/container/hello_docker/versions")
        .await;
    let next = page.link("next").unwrap();
    let path = "/user/583231/packages/container/hello_docker/versions";
    assert_eq!(next, format!("{}{path}?page=2", sim.handle.base_url()));
    assert_eq!(page.link("last").unwrap(), next.replace("page=2", "page=9"));
    let second = sim.get(&next).await.ids();
    assert_eq!(second.len(), 30);
    assert!(second[0] < page.ids()[29]);
    let theirs = "/users/octocat/packages/container/hello_docker/versions";
    let theirs = sim.get(&format!("{theirs}?per_page=100")).await;
    assert!(theirs.link("next").unwrap().contains(path));
    let by_id = sim.get("/user/583231/packages/npm/dotfiles").await;
    assert_eq!(by_id.at("/visibility"), "private");
    let by_org_id = "/organizations/9919/packages/npm/ui-kit/versions";
    assert_eq!(sim.get(by_org_id).await.len(), 4);
    let org_path = "/orgs/octocat/packages/npm/dotfiles";
    assert_eq!(sim.status(GET, org_path).await, 404, "octocat is a user");
    let ghost = Simulator::new(TOKEN).dataset(Dataset::sample());
    let ghost = Sim::with(ghost.authenticated_as("ghost")).await;
    assert_eq!(ghost.status(GET, "/user/packages/npm/dotfiles").await, 404);
}

#[tokio::test]
async fn docker_conflicts_list_the_owners_docker_packages() {
    let sim = Sim::start().await;
    let org = sim.get("/orgs/acme/docker/conflicts").await;
    assert_eq!(org.len(), 1);
    assert_eq!(org.at("/0/name"), "legacy-app");
    assert_eq!(org.at("/0/package_type"), "docker");
    let mine = sim.get("/user/docker/conflicts").await;
    assert_eq!(mine.body.as_ref(), b"[]");
    let theirs = "/users/octocat/docker/conflicts";
    assert_eq!(sim.status(GET, theirs).await, 200);
}

#[tokio::test]
async fn unknown_paths_methods_and_api_versions_are_rejected() {
    let sim = Sim::start().await;
    assert_eq!(sim.status(Method::PUT, UI_KIT).await, 404);
    assert_eq!(sim.status(POST, UI_KIT).await, 404);
    assert_eq!(sim.status(GET, "/repos/acme/app").await, 404);
    assert_eq!(sim.status(GET, "/orgs/nobody/packages/npm/x").await, 404);
    let old = [("x-github-api-version", "2021-01-01")];
    let bad = sim.call(GET, UI_KIT, &old).await;
    assert_eq!(bad.code(), 400);
    assert!(bad.message().starts_with("Invalid API version"));
    for version in ["2022-11-28", "2026-03-10"] {
        let good = sim
            .call(GET, UI_KIT, &[("x-github-api-version", version)])
            .await;
        assert_eq!(good.code(), 200);
    }
}

#[tokio::test]
async fn concurrency_is_measured_and_shutdown_stops_serving() {
    let sim = Sim::start().await;
    let slow = FaultKind::Latency(Duration::from_millis(100));
    sim.handle.inject(Fault::new(slow, 4));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let sim = sim.clone();
        calls.spawn(async move { sim.status(GET, UI_KIT).await });
    }
    assert_eq!(calls.join_all().await, [200; 4]);
    assert_eq!(sim.handle.max_in_flight(), 4);
    let addr = sim.handle.addr();
    sim.handle.clone().shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let generated = Dataset::generated("bench", 3, 5);
    let bench = Sim::with(Simulator::new(TOKEN).dataset(generated)).await;
    let listed = bench
        .get("/orgs/bench/packages?package_type=container")
        .await;
    assert_eq!(listed.at("/2/name"), "pkg-2");
    assert_eq!(listed.at("/2/version_count"), 5);
}
