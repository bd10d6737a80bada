//! The hostile request corpus shared by the routing wall and token-leak tests.

/// (method, request-target) pairs, each of which must be refused without reaching GitHub.
pub fn hostile_corpus() -> Vec<(&'static str, String)> {
    let long_login = "a".repeat(40);
    let long_name = "n".repeat(300);
    let mut corpus: Vec<(&'static str, String)> = [
        // Other GitHub APIs the token could reach.
        "/repos/acme/app",
        "/repos/acme/app/contents/.github/workflows/ci.yml",
        "/graphql",
        "/user",
        "/user/repos",
        "/user/keys",
        "/orgs/acme",
        "/orgs/acme/hooks",
        "/orgs/acme/actions/secrets",
        "/orgs/acme/members",
        "/",
        "/api/v3/repos/acme/app",
        "/api/v4/orgs/acme/packages?package_type=container",
        // Traversal in every encoding.
        "/user/../repos/acme/app",
        "/user/packages/../../repos/acme/app",
        "/orgs/acme/packages/../../../repos/acme/app",
        "/orgs/acme/./packages?package_type=container",
        "/orgs/acme/packages/%2e%2e/%2e%2e/repos/acme/app",
        "/orgs/acme/packages/%2E%2E/%2E%2E/repos/acme/app",
        "/orgs/acme/packages/%252e%252e/%252e%252e/repos",
        "/orgs/acme/packages/container/..%2F..%2F..%2Frepos%2Facme%2Fapp",
        "/orgs/acme/packages/container/%2e%2e%2f%2e%2e%2frepos",
        "/orgs/acme/packages/container/a%2F..%2F..%2F..%2Frepos",
        "/orgs/acme/packages/container/.%2F.",
        "/orgs/acme/packages/container/%2e%2e",
        "/orgs/acme/packages/container/%2E",
        "/orgs/acme/packages/container/web%252F..%252F..",
        "/orgs/acme/packages/container/web/versions/1/../../../../../repos/acme/app",
        "/api/v3/../repos/acme/app",
        "/users/octocat/../../repos/acme/app",
        "/orgs/acme/packages/container/web;/../../repos",
        // Backslashes, control characters, other percent-encodings.
        "/orgs/acme/packages/container/web%5c..%5c..%5crepos",
        "/orgs/acme/packages/container/web%00",
        "/orgs/acme/packages/container/web%0d%0aHost:%20evil.example",
        "/orgs/acme%2Fpackages/container/web",
        "/orgs/acme/packages/container%2Fweb",
        "/orgs/acme/packages/container/web/versions/1%2F..%2F2",
        "/%6frgs/acme/packages?package_type=container",
        "/orgs/%61cme/packages?package_type=container",
        "/orgs/acme/packages/container/web%2F%2Fx",
        "/orgs/acme/packages/container/%2Fweb",
        // Bad shapes.
        "/ORGS/acme/packages?package_type=container",
        "/orgs/acme/packages/CONTAINER/web",
        "/orgs/acme/packages/rpm/web",
        "/orgs/acme/packages/container/web/",
        "/orgs/acme/packages/container/web/versions/-1",
        "/orgs/acme/packages/container/web/versions/0x10",
        "/orgs/acme/packages/container/web/versions/99999999999999999999999",
        "/orgs/acme/packages/container/web/versions/1/extra",
        "/orgs/acme/packages/container/web/versions/1/restore",
        "/orgs/acme/packages?package_type=container&url=http://evil.example",
        "/orgs/acme/packages?package_type=container&per_page=100&page=1000",
    ]
    .into_iter()
    .map(|target| ("GET", target.to_owned()))
    .collect();
    corpus.push((
        "GET",
        format!("/orgs/{long_login}/packages?package_type=container"),
    ));
    corpus.push(("GET", format!("/orgs/acme/packages/container/{long_name}")));
    corpus.push((
        "GET",
        format!("/orgs/acme/packages/container/web/{}", "x/".repeat(2000)),
    ));
    // Odd methods and the destructive calls (refused in this release). `OPTIONS` of a served
    // path is a browser's preflight (a 204 answered by the proxy); of any other, a 404.
    for method in ["PUT", "PATCH", "TRACE", "DELETE", "POST"] {
        corpus.push((
            method,
            "/orgs/acme/packages/container/web/versions/1".to_owned(),
        ));
    }
    corpus.push((
        "POST",
        "/orgs/acme/packages/container/web/versions/1/restore".to_owned(),
    ));
    corpus.push((
        "POST",
        "/orgs/acme/packages/container/web/restore".to_owned(),
    ));
    corpus.push(("DELETE", "/orgs/acme/packages/container/web".to_owned()));
    corpus.push(("POST", "/graphql".to_owned()));
    corpus.push(("OPTIONS", "*".to_owned()));
    corpus.push(("OPTIONS", "/repos/acme/app/actions/secrets".to_owned()));
    corpus.push((
        "OPTIONS",
        "/orgs/acme/packages/container/web/../../../user".to_owned(),
    ));
    corpus.push(("CONNECT", "api.github.com:443".to_owned()));
    corpus
}
