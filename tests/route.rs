//! Routing and `Link` rewriting as tables: what parses to which canonical upstream path.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

use http::Method;
use packages_proxy::{
    error::ProxyError,
    link,
    route::{Operation, Route},
};

fn parse(method: Method, target: &str) -> Result<Route, ProxyError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Route::parse(&method, path, query)
}

#[test]
fn canonical_paths_are_rebuilt_from_the_typed_route() {
    let cases = [
        (
            "/orgs/acme/packages?package_type=container",
            "/orgs/acme/packages?package_type=container",
        ),
        (
            "/orgs/acme/packages?page=2&package_type=npm&per_page=500&visibility=private",
            "/orgs/acme/packages?package_type=npm&visibility=private&per_page=100&page=2",
        ),
        (
            "//orgs//acme/packages/container/base%2fruntime",
            "/orgs/acme/packages/container/base%2Fruntime",
        ),
        (
            "/api/v3/users/octocat/packages/npm/x/versions?state=deleted",
            "/users/octocat/packages/npm/x/versions?state=deleted",
        ),
        (
            "/user/packages/container/a%2Fb%2Fc/versions/42",
            "/user/packages/container/a%2Fb%2Fc/versions/42",
        ),
        ("/orgs/acme/docker/conflicts", "/orgs/acme/docker/conflicts"),
    ];
    for (input, canonical) in cases {
        let route = parse(Method::GET, input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(route.path_and_query(), canonical, "{input}");
    }
}

#[test]
fn the_method_picks_the_operation() {
    let path = "/orgs/acme/packages/container/web/versions/7";
    assert_eq!(
        parse(Method::GET, path).unwrap().operation,
        Operation::GetVersion
    );
    assert_eq!(
        parse(Method::HEAD, path).unwrap().operation,
        Operation::GetVersion
    );
    assert_eq!(
        parse(Method::DELETE, path).unwrap().operation,
        Operation::DeleteVersion
    );
    assert!(matches!(
        parse(Method::POST, path),
        Err(ProxyError::NotFound)
    ));
    let restore = "/orgs/acme/packages/container/web/versions/7/restore";
    assert_eq!(
        parse(Method::POST, restore).unwrap().operation,
        Operation::RestoreVersion
    );
    assert!(matches!(
        parse(Method::GET, restore),
        Err(ProxyError::NotFound)
    ));
    let restore_token = "/orgs/acme/packages/container/web/restore?token=abc";
    let route = parse(Method::POST, restore_token).unwrap();
    assert!(
        !format!("{route:?}").contains("abc"),
        "Debug shows the restore token"
    );
}

#[test]
fn templates_never_contain_names() {
    let route = parse(
        Method::GET,
        "/orgs/acme/packages/container/secret-name/versions/9",
    )
    .unwrap();
    assert_eq!(
        route.template(),
        "/orgs/{org}/packages/{package_type}/{package_name}/versions/{package_version_id}"
    );
}

fn request_route() -> Route {
    parse(
        Method::GET,
        "/orgs/acme/packages/container/base%2Fruntime/versions?per_page=2",
    )
    .unwrap()
}

#[test]
fn link_urls_in_the_numeric_id_form_map_back_to_the_request_owner() {
    let upstream = "https://api.github.com";
    let value = "<https://api.github.com/organizations/9919/packages/container/base%2Fruntime/versions?per_page=2&page=2>; rel=\"next\", \
                 <https://api.github.com/organizations/9919/packages/container/base%2Fruntime/versions?per_page=2&page=6>; rel=\"last\"";
    let out = link::rewrite(value, upstream, "https://proxy.example", &request_route()).unwrap();
    assert_eq!(
        out,
        "<https://proxy.example/orgs/acme/packages/container/base%2Fruntime/versions?per_page=2&page=2>; rel=\"next\", \
         <https://proxy.example/orgs/acme/packages/container/base%2Fruntime/versions?per_page=2&page=6>; rel=\"last\""
    );
}

#[test]
fn link_urls_to_anything_else_on_the_upstream_are_dropped() {
    let upstream = "https://api.github.com";
    let value = "<https://api.github.com/repos/acme/app>; rel=\"next\", \
                 <https://api.github.com/organizations/1/packages/container/other/versions?page=2>; rel=\"last\", \
                 <https://api.github.com/orgs/evil/packages/container/base%2Fruntime/versions?page=2>; rel=\"prev\"";
    assert_eq!(
        link::rewrite(value, upstream, "https://proxy.example", &request_route()),
        None
    );
}
