//! `cache::key` both ways: inputs that must differ give different keys; spellings that must not
//! (query order, defaults, slashes, the `%2f` case, the owner's case) give one. A wrong key
//! poisons every team.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

use http::{HeaderMap, HeaderValue, Method};
use packages_proxy::{
    cache::{Generations, key},
    route::Route,
    upstream::Forwarded,
};

fn key_of(
    target: &str,
    headers: &[(&'static str, &'static str)],
    ghes: bool,
    gens: &Generations,
) -> String {
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let route = Route::parse(&Method::GET, path, query).unwrap();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, HeaderValue::from_static(value));
    }
    let base = if ghes {
        "https://p.example/api/v3"
    } else {
        "https://p.example"
    };
    key(&route, &Forwarded::from_request(&map).unwrap(), base, gens)
}

#[test]
fn spellings_of_one_request_share_a_key() {
    let gens = Generations::default();
    let same = [
        "/orgs/acme/packages/container/base%2Fruntime/versions",
        "//orgs/acme/packages/container/base%2fruntime/versions?page=1",
        "/orgs/acme/packages/container/base%2Fruntime/versions?per_page=30&page=1&state=active",
        "/orgs/acme/packages/container/base%2Fruntime/versions?state=active&page=1&per_page=30",
        "/api/v3/orgs/acme/packages/container/base%2Fruntime/versions",
        "/orgs/ACME/packages/container/base%2Fruntime/versions",
    ];
    let first = key_of(same[0], &[], false, &gens);
    for spelling in &same[1..] {
        assert_eq!(key_of(spelling, &[], false, &gens), first, "{spelling}");
    }
    let explicit_version = key_of(
        same[0],
        &[("x-github-api-version", "2022-11-28")],
        false,
        &gens,
    );
    assert_eq!(
        explicit_version, first,
        "the default API version is explicit in the key"
    );
    let lists = key_of("/orgs/acme/packages?package_type=npm", &[], false, &gens);
    assert_eq!(
        key_of(
            "/orgs/acme/packages?per_page=30&package_type=npm&page=1",
            &[],
            false,
            &gens
        ),
        lists
    );
}

#[test]
fn different_answers_get_different_keys() {
    let gens = Generations::default();
    let base = "/orgs/acme/packages/container/web/versions";
    let keys = [
        key_of(base, &[], false, &gens),
        key_of(base, &[], true, &gens), // Link URLs carry /api/v3
        key_of(base, &[("accept", "application/json")], false, &gens),
        key_of(
            base,
            &[("x-github-api-version", "2026-03-10")],
            false,
            &gens,
        ),
        key_of(&format!("{base}?page=2"), &[], false, &gens),
        key_of(&format!("{base}?per_page=31"), &[], false, &gens),
        key_of(&format!("{base}?state=deleted"), &[], false, &gens),
        key_of(
            "/orgs/acme/packages/container/web%2Fx/versions",
            &[],
            false,
            &gens,
        ),
        key_of("/orgs/acme/packages/npm/web/versions", &[], false, &gens),
        // GitHub finds `web`, not `WEB`: one spelling's 404 must not answer for the other.
        key_of(
            "/orgs/acme/packages/container/WEB/versions",
            &[],
            false,
            &gens,
        ),
        key_of(
            "/orgs/acme/packages/container/Web/versions",
            &[],
            false,
            &gens,
        ),
        key_of(
            "/orgs/other/packages/container/web/versions",
            &[],
            false,
            &gens,
        ),
        key_of(
            "/users/acme/packages/container/web/versions",
            &[],
            false,
            &gens,
        ),
        key_of("/user/packages/container/web/versions", &[], false, &gens),
        key_of("/orgs/acme/packages/container/web", &[], false, &gens),
        key_of(
            "/orgs/acme/packages?package_type=container",
            &[],
            false,
            &gens,
        ),
        key_of(
            "/orgs/acme/packages?package_type=container&visibility=public",
            &[],
            false,
            &gens,
        ),
    ];
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
}

#[test]
fn a_write_changes_the_keys_of_its_package_and_owner_lists_only() {
    let gens = Generations::default();
    let web = "/orgs/acme/packages/container/web/versions?per_page=100";
    let other = "/orgs/acme/packages/container/other/versions";
    let list = "/orgs/acme/packages?package_type=container";
    let before = [web, other, list].map(|t| key_of(t, &[], false, &gens));
    let delete = Route::parse(
        &Method::DELETE,
        "/orgs/acme/packages/container/web/versions/1",
        None,
    )
    .unwrap();
    gens.bump_all(&Generations::scopes_of(&delete));
    let after = [web, other, list].map(|t| key_of(t, &[], false, &gens));
    assert_ne!(before[0], after[0], "the package's entries survived");
    assert_eq!(
        before[1], after[1],
        "another package's entries were dropped"
    );
    assert_ne!(before[2], after[2], "the owner's lists survived");
}

// Guards issue 14: keys stopped folding package names, so invalidation must still reach every
// spelling's entries through the case-folded package scope.
#[test]
fn a_write_changes_the_keys_of_every_spelling_of_its_package() {
    let gens = Generations::default();
    let spellings = [
        "/orgs/acme/packages/container/web/versions",
        "/orgs/Acme/packages/container/WEB/versions",
        "/orgs/acme/packages/container/Web",
    ];
    let before = spellings.map(|t| key_of(t, &[], false, &gens));
    let delete = Route::parse(
        &Method::DELETE,
        "/orgs/ACME/packages/container/wEb/versions/1",
        None,
    )
    .unwrap();
    gens.bump_all(&Generations::scopes_of(&delete));
    let after = spellings.map(|t| key_of(t, &[], false, &gens));
    for ((spelling, old), new) in spellings.iter().zip(&before).zip(&after) {
        assert_ne!(old, new, "{spelling} survived the delete");
    }
}
