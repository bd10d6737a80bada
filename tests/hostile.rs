//! The wall: no path outside the Packages API, however encoded, reaches the upstream (the org token
//! may carry `repo` scope). Requests are written byte for byte on a raw socket so no client library
//! normalises them first.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use support::*;

#[tokio::test]
async fn no_hostile_path_reaches_the_upstream() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let corpus = hostile_corpus();
    assert!(corpus.len() >= 40, "the corpus shrank to {}", corpus.len());
    for (method, target) in &corpus {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            proxy.token()
        );
        let (status, answer) = raw(proxy.addr(), request.as_bytes()).await;
        assert!(
            matches!(status, 400 | 403 | 404 | 405 | 414 | 431),
            "{method} {target} answered {status}: {answer}"
        );
        assert_github_error(&answer);
        let log = sim.handle.log();
        assert!(
            log.is_empty(),
            "{method} {target} reached the upstream as {} {}",
            log[0].method,
            log[0].path
        );
    }
    // The same socket path still works for a legitimate request (the test can fail).
    let (status, _) = raw_get(
        proxy.addr(),
        "/orgs/acme/packages/container/web",
        proxy.token(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.handle.log().len(), 1);
}

/// `answer` (a whole HTTP/1 answer) is an error in GitHub's shape: a JSON body with a message.
fn assert_github_error(answer: &str) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {answer}"));
    assert!(json["message"].is_string(), "{answer}");
    assert!(json["documentation_url"].is_string(), "{answer}");
}

// A head hyper cannot parse never reaches the walk: hyper answered it with an empty body.
// Every refusal is in GitHub's shape, these too, and the connection still closes after one.
#[tokio::test]
async fn heads_hyper_refuses_get_githubs_error_shape() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let target = "/orgs/acme/packages/container/web";
    let long = "x".repeat(70_000);
    for (request, expected) in [
        (
            format!("GET {target} HTTP/1.1\r\nHost: p\r\nNo colon here\r\n\r\n"),
            400,
        ),
        (
            format!("GET {target} HTTP/1.1\r\nHost: p\r\nX-Big: {long}\r\n\r\n"),
            431,
        ),
        (format!("GET /{long} HTTP/1.1\r\nHost: p\r\n\r\n"), 431),
        (
            format!(
                "GET {target} HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            400,
        ),
    ] {
        // `raw` reads to the end: it returns only once the proxy closed the connection.
        let (status, answer) = raw(proxy.addr(), request.as_bytes()).await;
        assert_eq!(status, expected, "{answer}");
        assert_github_error(&answer);
        assert!(answer.contains("connection: close"), "{answer}");
    }
    assert!(sim.handle.log().is_empty());
    let (status, answer) = raw_get(proxy.addr(), target, proxy.token()).await;
    assert_eq!(status, 200, "{answer}");
}

// Found by a hostile review: with two `Authorization` headers the first won, so a front proxy
// reading the last one (for its logs, or its own checks) and this proxy disagreed on who the
// client was. Several are now a 400 in GitHub's shape, whatever their order, and nothing is sent.
#[tokio::test]
async fn repeated_authorization_headers_are_refused() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let url = proxy.url("/orgs/acme/packages/container/web/versions");
    let good = format!("Bearer {}", proxy.token());
    for pair in [
        [good.as_str(), "Bearer wrong"],
        ["Bearer wrong", good.as_str()],
        [good.as_str(), good.as_str()],
    ] {
        let reply = send(
            http::Method::GET,
            &url,
            None,
            &[("authorization", pair[0]), ("authorization", pair[1])],
        )
        .await;
        assert_eq!(reply.status, http::StatusCode::BAD_REQUEST, "{pair:?}");
        assert!(
            reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("one Authorization"),
            "{}",
            reply.text()
        );
    }
    assert!(
        sim.handle.log().is_empty(),
        "a refused request went upstream"
    );
    let one = send(http::Method::GET, &url, Some(proxy.token()), &[]).await;
    assert_eq!(one.status, http::StatusCode::OK);
}
