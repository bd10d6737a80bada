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

// Found by a hostile review of the rewrite above: it matched any lone write shaped like hyper's
// refusal, body bytes included. A streamed answer to an HTTP/1.0 client (no chunk framing) had a
// piece of its body replaced by a JSON error. Only a head hyper answers by itself is rewritten:
// new head bytes arrived, and no request is in flight.
#[tokio::test]
async fn body_bytes_shaped_like_a_refusal_are_never_rewritten() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pieces: [&[u8]; 3] = [
        b"[\"first piece\",",
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        b"\"last piece\"]",
    ];
    let body: Vec<u8> = pieces.concat();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let len = body.len();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\nconnection: close\r\ncontent-length: {len}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                // Each piece its own frame at the proxy, and its own write to the client.
                for piece in pieces {
                    let _ = stream.write_all(piece).await;
                    let _ = stream.flush().await;
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                }
            });
        }
    });
    // Over `max_entry_bytes`: streamed through as it comes.
    let opts = ProxyOptions {
        extra: "[cache]\nmax_entry_bytes = 16\n".to_owned(),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy_to(&upstream, "ghp_fake_pieces", opts).await;
    let request = format!(
        "GET /orgs/acme/packages/container/web/versions HTTP/1.0\r\nHost: p\r\nAuthorization: Bearer {}\r\n\r\n",
        proxy.token()
    );
    for _ in 0..2 {
        let (_, answer) = raw(proxy.addr(), request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
        let (_, got) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(got.as_bytes(), &body[..], "the body was changed");
    }
}
