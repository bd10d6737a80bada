//! No token, and no hash of one, appears in logs, `Debug` output or responses, whatever the input.
//! One test per binary: it installs the process-wide log capture.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use http::Method;
use packages_proxy::secret::TokenHash;
use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_appear_in_logs_debug_output_or_responses() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .json()
        .init();

    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let mut answers = String::new();
    let client_token = proxy.token().to_owned();
    for path in [
        "/orgs/acme/packages?package_type=container",
        "/orgs/acme/packages/container/web/versions?per_page=5&page=2",
        "/orgs/acme/packages/container/nope",
        "/repos/acme/app",
        "/orgs/acme/packages/container/web/versions/1",
    ] {
        for method in [Method::GET, Method::DELETE] {
            let reply = send(method, &proxy.url(path), Some(&client_token), &[]).await;
            answers.push_str(&format!(
                "{:?}{}",
                reply.headers,
                String::from_utf8_lossy(&reply.body)
            ));
        }
    }
    for (method, target) in hostile_corpus() {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {client_token}\r\nConnection: close\r\n\r\n"
        );
        answers.push_str(&raw(proxy.addr(), request.as_bytes()).await.1);
    }
    // Malformed and hostile headers, including the org token presented as a client token.
    let org = sim.org_token.clone();
    let long_etag = "W/\"x\", ".repeat(300);
    let malformed: Vec<Vec<u8>> = vec![
        format!("Authorization: Bearer {org}\r\n").into_bytes(),
        format!("Authorization: token {org}\r\nAuthorization: Bearer {client_token}\r\n")
            .into_bytes(),
        b"Authorization: Bearer \xff\xfe\r\n".to_vec(),
        format!("Authorization: Basic {org}\r\n").into_bytes(),
        format!("Authorization: Bearer {client_token}\r\nX-GitHub-Api-Version: {org}\r\n")
            .into_bytes(),
        format!("Authorization: Bearer {client_token}\r\nAccept: {org}\x01\r\n").into_bytes(),
        format!("Authorization: Bearer {client_token}\r\nIf-None-Match: {long_etag}\r\n")
            .into_bytes(),
        format!("Authorization: Bearer {client_token}\r\nContent-Length: 999999\r\n").into_bytes(),
    ];
    for headers in malformed {
        let mut request = b"GET /orgs/acme/packages/container/web HTTP/1.1\r\nHost: p\r\n".to_vec();
        request.extend_from_slice(&headers);
        request.extend_from_slice(b"Connection: close\r\n\r\n");
        answers.push_str(&raw(proxy.addr(), &request).await.1);
    }
    let bad = send(
        Method::GET,
        &proxy.url("/orgs/acme/packages?package_type=container"),
        None,
        &[("authorization", "Bearer")],
    )
    .await;
    answers.push_str(&String::from_utf8_lossy(&bad.body));
    answers.push_str(&format!("{:?}", proxy.running));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"request\""),
        "the capture saw no request log lines"
    );
    let secrets = [
        sim.org_token.clone(),
        client_token.clone(),
        TokenHash::of(&client_token).to_hex(),
        TokenHash::of(&sim.org_token).to_hex(),
    ];
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        assert!(
            !answers.contains(secret.as_str()),
            "a secret reached a response or Debug output"
        );
    }
}
