//! The org token's rate limit and fair sharing, with the simulator's fault injection: back-offs,
//! the reserve, the upstream concurrency cap, retries, per-client quotas, `/rate_limit`, and the
//! input limits that keep one hostile client from hurting the others.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use packages_proxy::sim::{Dataset, Fault, FaultKind, Simulator};
use support::*;

const WEB: &str = "/orgs/acme/packages/container/web/versions?per_page=10";

fn short_ttl(extra: &str) -> ProxyOptions {
    ProxyOptions {
        extra: format!(
            "[cache]\nversion_lists_ttl = \"50ms\"\nstale_while_revalidate = \"0s\"\n{extra}"
        ),
        ..ProxyOptions::default()
    }
}

#[tokio::test]
async fn a_primary_limit_stops_all_upstream_traffic_while_cached_reads_keep_working() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, short_ttl("")).await;
    let warm = get(&proxy.url(WEB), proxy.token()).await;
    sim.handle
        .inject(Fault::new(FaultKind::PrimaryRateLimit, 1));
    let limited = get(&proxy.url(&cold(0)), proxy.token()).await;
    assert_eq!(
        limited.status,
        StatusCode::FORBIDDEN,
        "GitHub's own answer passes through first"
    );
    let seen = sim.handle.log().len();
    tokio::time::sleep(Duration::from_millis(80)).await; // the warm entry is stale now
    for _ in 0..5 {
        let stale = get(&proxy.url(WEB), proxy.token()).await;
        assert_eq!(stale.status, StatusCode::OK);
        assert_eq!(stale.body, warm.body);
        assert!(
            stale
                .header("cache-status")
                .unwrap()
                .contains("stale-if-error")
        );
        // Answered as GitHub answers a spent primary limit, so GitHub's clients wait for the
        // reset instead of giving up on a 503.
        let uncached = get(&proxy.url(&cold(1)), proxy.token()).await;
        assert_eq!(uncached.status, StatusCode::FORBIDDEN);
        assert_eq!(uncached.header("x-ratelimit-remaining"), Some("0"));
        let reset: u64 = uncached
            .header("x-ratelimit-reset")
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            reset > epoch_now() + 60,
            "reset {reset} is not the primary window's end"
        );
        assert!(uncached.text().contains("API rate limit exceeded"));
    }
    assert_eq!(
        sim.handle.log().len(),
        seen,
        "the proxy kept calling GitHub during the back-off"
    );
}

#[tokio::test]
async fn a_secondary_limit_backs_off_for_retry_after_then_traffic_resumes() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, short_ttl("")).await;
    let kind = FaultKind::SecondaryRateLimit {
        status: StatusCode::FORBIDDEN,
        retry_after_secs: 1,
    };
    sim.handle.inject(Fault::new(kind, 1));
    assert_eq!(
        get(&proxy.url(&cold(0)), proxy.token()).await.status,
        StatusCode::FORBIDDEN
    );
    let seen = sim.handle.log().len();
    let during = get(&proxy.url(&cold(1)), proxy.token()).await;
    assert_eq!(during.status, StatusCode::FORBIDDEN);
    assert_eq!(during.header("retry-after"), Some("1"));
    assert!(during.text().contains("secondary rate limit"));
    assert_eq!(sim.handle.log().len(), seen);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get(&proxy.url(&cold(1)), proxy.token()).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.handle.log().len(), seen + 1);
}

#[tokio::test]
async fn below_the_reserve_background_revalidation_stops() {
    let org_token = fake_token("ghp_fake");
    let handle = Simulator::new(org_token.clone())
        .dataset(Dataset::sample())
        .rate_limit(20)
        .run()
        .await
        .unwrap();
    let sim = Sim { handle, org_token };
    let opts = ProxyOptions {
        extra: "[cache]\nversion_lists_ttl = \"50ms\"\nstale_while_revalidate = \"1m\"\n"
            .to_owned(),
        extra_upstream: "rate_limit_reserve = 0.99",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    get(&proxy.url(WEB), proxy.token()).await; // remaining 19 of 20: below 99%
    tokio::time::sleep(Duration::from_millis(80)).await;
    let stale = get(&proxy.url(WEB), proxy.token()).await;
    assert!(stale.header("cache-status").unwrap().contains("stale"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        sim.handle.log().len(),
        1,
        "a background revalidation spent the reserve"
    );
    // A miss still goes upstream.
    assert_eq!(
        get(&proxy.url(&cold(0)), proxy.token()).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.handle.log().len(), 2);
}

#[tokio::test]
async fn the_upstream_concurrency_cap_holds() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_upstream: "max_concurrency = 3",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(100)),
        20,
    ));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (url, token) = (proxy.url(&cold(i)), proxy.token().to_owned());
        tasks.push(tokio::spawn(async move { get(&url, &token).await.status }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(sim.handle.log().len(), 20);
    assert!(
        sim.handle.max_in_flight() <= 3,
        "{} upstream requests at once",
        sim.handle.max_in_flight()
    );
    assert!(
        sim.handle.max_in_flight() >= 2,
        "the test did not overlap requests"
    );
}

// Retries share the request's one deadline (`upstream.timeout`), and a retry starts only with a
// quarter of it left: GitHub's own 502 is answered instead of a retry that could only time out.
// Each retry used to get a whole timeout of its own, stretching the request past it.
#[tokio::test]
async fn retries_share_one_deadline() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        retries: 5,
        upstream_timeout: "2s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let slow_502 = FaultKind::Delayed {
        fault: Box::new(FaultKind::Status(StatusCode::BAD_GATEWAY)),
        delay: Duration::from_millis(700),
    };
    sim.handle.inject(Fault::new(slow_502, 10));
    let reply = get(&proxy.url(&cold(0)), proxy.token()).await;
    // 502 at 0.7 s, a retry after 100-200 ms (1.5 s left), 502 at ~1.6 s; the next wait
    // (200-400 ms) would leave less than 0.5 s, so GitHub's 502 is the answer.
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        sim.gets(),
        2,
        "one attempt and one retry within the deadline"
    );
}

#[tokio::test]
async fn gets_are_retried_and_mutations_never() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        retries: 2,
        // The multi-arch guard's fresh reads would take the fault meant for the DELETE.
        extra: allow_everything("0s") + "multi_arch_guard = false\n",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    sim.handle
        .inject(Fault::new(FaultKind::Status(StatusCode::BAD_GATEWAY), 2));
    assert_eq!(
        get(&proxy.url(&cold(0)), proxy.token()).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.handle.log().len(), 3, "two failures, one success");
    sim.handle.inject(Fault::new(FaultKind::Reset, 1));
    assert_eq!(
        get(&proxy.url(&cold(1)), proxy.token()).await.status,
        StatusCode::OK
    );

    let versions = get(&format!("{}{WEB}", sim.handle.base_url()), &sim.org_token).await;
    let id = versions.json()[2]["id"].as_u64().unwrap();
    sim.handle.clear_log();
    sim.handle.inject(Fault::new(
        FaultKind::Status(StatusCode::SERVICE_UNAVAILABLE),
        1,
    ));
    let path = format!("/orgs/acme/packages/container/web/versions/{id}");
    let reply = send(Method::DELETE, &proxy.url(&path), Some(proxy.token()), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let deletes = sim.deletes();
    assert_eq!(deletes, 1, "a mutation was retried");
}

#[tokio::test]
async fn one_client_over_its_quota_gets_429_while_another_is_unaffected() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra: "[quotas]\nupstream_per_minute = 3\nhits_per_minute = 1000\n".to_owned(),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    for i in 0..3 {
        assert_eq!(
            get(&proxy.url(&cold(i)), &proxy.tokens[0]).await.status,
            StatusCode::OK
        );
    }
    let over = get(&proxy.url(&cold(3)), &proxy.tokens[0]).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(over.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(over.header("x-ratelimit-resource"), Some("proxy-upstream"));
    assert!(over.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert!(over.json()["message"].as_str().unwrap().contains("quota"));
    // Cache hits come from another, larger bucket.
    assert_eq!(
        get(&proxy.url(&cold(0)), &proxy.tokens[0]).await.status,
        StatusCode::OK
    );
    // The other client has its own budget.
    assert_eq!(
        get(&proxy.url(&cold(3)), &proxy.tokens[1]).await.status,
        StatusCode::OK
    );
    assert_eq!(sim.handle.log().len(), 4);
}

#[tokio::test]
async fn rate_limit_is_answered_locally_per_client_with_effective_scopes() {
    let sim = spawn_sim().await;
    let audit = temp_dir("rate-limit").join("audit.jsonl");
    let opts = ProxyOptions {
        extra: format!(
            "[quotas]\nupstream_per_minute = 50\n[mutations]\naudit_log = {audit:?}\n\
             [[policy.allow]]\nname = \"a\"\nclients = [\"team-a\"]\nactions = [\"delete_version\"]\n"
        ),
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    get(&proxy.url(&cold(0)), &proxy.tokens[0]).await;
    get(&proxy.url(&cold(1)), &proxy.tokens[0]).await;
    sim.handle.clear_log();
    let a = get(&proxy.url("/rate_limit"), &proxy.tokens[0]).await;
    let b = get(&proxy.url("/api/v3/rate_limit"), &proxy.tokens[1]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["resources"]["core"]["limit"], 50);
    assert_eq!(a.json()["rate"]["remaining"], 48);
    assert_eq!(b.json()["rate"]["remaining"], 50);
    assert_eq!(a.header("x-ratelimit-remaining"), Some("48"));
    assert!(
        a.header("x-oauth-scopes")
            .unwrap()
            .contains("delete:packages")
    );
    assert_eq!(b.header("x-oauth-scopes"), Some("read:packages"));
    // HEAD, as GitHub answers it on every GET: the same headers, no body.
    let head = send(
        Method::HEAD,
        &proxy.url("/rate_limit"),
        Some(&proxy.tokens[1]),
        &[],
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("x-ratelimit-remaining"), Some("50"));
    assert!(head.body.is_empty());
    assert_eq!(
        send(Method::GET, &proxy.url("/rate_limit"), None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert!(sim.handle.log().is_empty(), "/rate_limit reached GitHub");
}

#[tokio::test]
async fn each_input_limit_answers_its_status_and_the_server_keeps_serving() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(&sim, ProxyOptions::default()).await;
    let token = proxy.token().to_owned();
    let long_uri = format!(
        "/orgs/acme/packages/container/web/versions?per_page=1&{}",
        "x".repeat(9000)
    );
    let (status, _) = raw_get(proxy.addr(), &long_uri, &token).await;
    assert_eq!(status, 414);
    let big_header = format!(
        "GET {WEB} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(20_000)
    );
    assert_eq!(raw(proxy.addr(), big_header.as_bytes()).await.0, 431);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!(
        "GET {WEB} HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\n{many}Connection: close\r\n\r\n"
    );
    assert_eq!(raw(proxy.addr(), many_headers.as_bytes()).await.0, 431);
    let body = format!(
        "DELETE /orgs/acme/packages/container/web HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(proxy.addr(), body.as_bytes()).await.0, 413);
    assert_eq!(get(&proxy.url(WEB), &token).await.status, StatusCode::OK);
    assert_eq!(
        sim.handle.log().len(),
        1,
        "a refused request reached GitHub"
    );
}

// Slow-loris: many connections that never finish their headers must not starve others, and are
// closed after the header read timeout.
#[tokio::test]
async fn half_open_connections_do_not_starve_normal_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_server: "header_read_timeout = \"500ms\"",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
        stream
            .write_all(b"GET /orgs/acme/packages HTTP/1.1\r\nHost: p\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    for i in 0..20 {
        assert_eq!(
            get(&proxy.url(&cold(i)), proxy.token()).await.status,
            StatusCode::OK
        );
    }
    // Each is closed 500 ms after it connected; a read waits for that, up to a deadline that
    // only a connection left open reaches.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    for stream in &mut slow {
        let mut buf = [0u8; 512];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1, // EOF, an error answer, or a reset
            Err(_) => {}
        }
    }
    assert_eq!(
        closed,
        slow.len(),
        "half-open connections were left open past the header timeout"
    );
}

/// Reads `stream` until the server closes it (EOF or an error), up to `limit`; returns how long
/// that took, or `None` if it stayed open.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {} // the rest of an answer
            Err(_) => return None,
        }
    }
}

/// Sends one `/healthz` on `stream` and reads the start of its answer.
async fn healthz_on(stream: &mut tokio::net::TcpStream, token: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

// An idle HTTP/1 keep-alive connection is closed after `idle_timeout`, not after the (shorter)
// header read timeout: hyper's own header timer used to close it then, so `idle_timeout` did
// nothing for HTTP/1 and a load balancer's pooled connections were cut every 10 s.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_server: "header_read_timeout = \"300ms\"\nidle_timeout = \"2s\"",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    healthz_on(&mut stream, proxy.token()).await;
    // Now idle: the server must close the connection on its own, and not before idle_timeout
    // (a timer never fires early, so the lower bound holds however busy the machine is).
    let open = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection stayed open past idle_timeout");
    assert!(
        open >= Duration::from_millis(1500),
        "closed after {open:?}, before idle_timeout (2 s)"
    );
}

// Once a request was served, the next head still has `header_read_timeout` from its first byte,
// however long the connection sat idle before it and however it trickles in.
#[tokio::test]
async fn a_slow_head_after_a_served_request_is_cut_off_at_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_server: "header_read_timeout = \"500ms\"\nidle_timeout = \"60s\"",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    healthz_on(&mut stream, proxy.token()).await;
    let (mut reader, mut writer) = stream.into_split();
    // One byte every 50 ms: each arrives well inside the timeout, the head never completes.
    let trickle = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: p\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "a trickled head was kept open for 10 s (idle_timeout is 60 s, the head timeout 500 ms)"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed after {:?}, before the head timeout",
        started.elapsed()
    );
}

// A body still being sent when the connection's limits fire is finished, not cut: the idle
// and head timeouts close a connection gracefully, after the answer in progress. Here GitHub
// trickles a list for longer than `idle_timeout` (the request counts as done once its head is
// answered; not JSON, so it is streamed as GitHub sends it), and the client must still get every
// byte.
#[tokio::test]
async fn a_body_still_streaming_past_the_idle_timeout_is_finished() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    let body: Vec<u8> = format!("[{}]", " ".repeat(998)).into_bytes();
    let served = body.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = upstream.accept().await {
            let body = served.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let _ = stream.read(&mut head).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                     content-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                // 10 pieces, 250 ms apart: the last arrives ~2.5 s after the head.
                for piece in body.chunks(100) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if stream.write_all(piece).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let opts = ProxyOptions {
        extra_server: "header_read_timeout = \"300ms\"\nidle_timeout = \"1s\"",
        ..ProxyOptions::uncached()
    };
    let proxy = spawn_proxy_to(&upstream_url, "ghp_fake_org_token", opts).await;
    let reply = get(
        &proxy.url("/orgs/acme/packages?package_type=container"),
        proxy.token(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body.as_ref(),
        body.as_slice(),
        "the answer was cut short"
    );
}

// Connections that never send a byte must not hold connection slots: a head timer only
// starts with the first byte (a regression a security review found: 20 silent sockets took a
// proxy with max_connections = 20 offline).
#[tokio::test]
async fn silent_connections_are_closed_and_do_not_exhaust_the_connection_cap() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_server: "header_read_timeout = \"300ms\"\nmax_connections = 20",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    let mut silent = Vec::new();
    for _ in 0..25 {
        silent.push(tokio::net::TcpStream::connect(proxy.addr()).await.unwrap());
    }
    let started = std::time::Instant::now();
    let reply = get(&proxy.url(WEB), proxy.token()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} behind silent connections",
        started.elapsed()
    );
}

// `server.max_in_flight` is one limit for the whole process: past it a request is refused at
// once with GitHub's shape and a `retry-after`, not queued, and the slot frees when an answer is
// sent.
#[tokio::test]
async fn requests_past_the_global_in_flight_limit_are_shed_at_once() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            max_in_flight: 2,
            ..ProxyOptions::default()
        },
    )
    .await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(1500)),
        2,
    ));
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let (url, token) = (proxy.url(&cold(i)), proxy.token().to_owned());
            tokio::spawn(async move { get(&url, &token).await.status })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "two slow reads upstream",
        || async { sim.arrivals(&Method::GET).len() == 2 },
    )
    .await;
    let shed = get(&proxy.url(WEB), proxy.token()).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "answered only once a slot was free: it was queued, not shed"
    );
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(shed.json()["message"].is_string(), "not GitHub's shape");
    // Found by a hostile review: probes were shed too, so a load balancer took a merely busy
    // replica out (every replica at once while GitHub was slow) and a kubelet restarted it.
    for probe in ["/healthz", "/readyz"] {
        let reply = get(&proxy.url(probe), proxy.token()).await;
        assert_eq!(reply.status, StatusCode::OK, "{probe} was shed");
    }
    assert_eq!(
        sim.arrivals(&Method::GET).len(),
        2,
        "the shed read went upstream"
    );
    for task in slow {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        get(&proxy.url(WEB), proxy.token()).await.status,
        StatusCode::OK
    );
}

// A request refused before it reaches GitHub (the upstream queue is full) costs the client
// nothing: its quota of requests that need GitHub is given back.
#[tokio::test]
async fn a_request_refused_before_it_is_sent_is_not_charged() {
    let sim = spawn_sim().await;
    let proxy = spawn_proxy(
        &sim,
        ProxyOptions {
            extra_upstream: "max_concurrency = 1\nmax_queue = 0",
            extra: "[quotas]\nupstream_per_minute = 10\n".to_owned(),
            ..ProxyOptions::default()
        },
    )
    .await;
    let slow = slow_read_at_github(&sim, &proxy, proxy.token(), Duration::from_millis(1500)).await;
    for i in 1..4 {
        let refused = get(&proxy.url(&cold(i)), proxy.token()).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(sim.gets(), 1, "a refused read went upstream");
    let remaining = |reply: Reply| reply.json()["rate"]["remaining"].as_u64().unwrap();
    let left = remaining(get(&proxy.url("/rate_limit"), proxy.token()).await);
    assert_eq!(left, 9, "only the read that was sent is charged");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
}

// A request whose client hangs up while it waits for an upstream slot is never sent, so it costs
// the client nothing, and it leaves the queue. The charge used to stay with the request's dropped
// future, and its place in the queue for good: `max_queue` such clients refused every later
// request that found the slots busy, until a restart.
#[tokio::test]
async fn a_client_that_hangs_up_while_queued_is_not_charged() {
    let sim = spawn_sim().await;
    let mut opts = ProxyOptions::uncached();
    opts.extra_upstream = "max_concurrency = 1\nmax_queue = 3";
    opts.upstream_timeout = "30s";
    opts.extra += "[quotas]\nupstream_per_minute = 10\n";
    let proxy = spawn_proxy(&sim, opts).await;
    let slow = slow_read_at_github(&sim, &proxy, proxy.token(), Duration::from_secs(6)).await;
    let mut waiting = Vec::new();
    for i in 1..4 {
        waiting.push(send_head(proxy.addr(), "GET", &cold(i), proxy.token()).await);
    }
    wait_upstream_queued(&proxy, 3.0).await;
    drop(waiting); // the three clients give up
    wait_upstream_queued(&proxy, 0.0).await;
    let remaining = |reply: Reply| reply.json()["rate"]["remaining"].as_u64().unwrap();
    let left = remaining(get(&proxy.url("/rate_limit"), proxy.token()).await);
    assert_eq!(left, 9, "only the read that was sent is charged");
    // The slow read still holds the only slot: the next read queues instead of being refused.
    assert!(!slow.is_finished(), "the test outlived the slow read");
    let next = get(&proxy.url(&cold(4)), proxy.token()).await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(sim.gets(), 2, "an abandoned read was sent");
}

// Found by a hostile review: the upstream queue was first come, first served across clients, so
// one client's burst of misses held every slot and queued ahead of everyone: another client's
// one read waited behind all of it. A client now holds at most its share of the slots
// (`upstream.max_concurrency_per_client`, half of them by default); its other requests wait for
// its own turns, and another client's read takes a free slot at once.
#[tokio::test]
async fn one_clients_burst_of_misses_does_not_queue_ahead_of_another_client() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_upstream: "max_concurrency = 4",
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    sim.handle.inject(Fault::new(
        FaultKind::Latency(Duration::from_millis(1000)),
        20,
    ));
    let burst: Vec<_> = (0..12)
        .map(|i| {
            let (url, token) = (proxy.url(&cold(i)), proxy.tokens[0].clone());
            tokio::spawn(async move { get(&url, &token).await.status })
        })
        .collect();
    // Two of team-a's reads at GitHub (its share of four slots), ten waiting for its turns.
    wait_upstream_queued(&proxy, 10.0).await;
    eventually(Duration::from_secs(10), "two of them at GitHub", || async {
        sim.gets() == 2
    })
    .await;
    let other = get(&proxy.url(&cold(50)), &proxy.tokens[1]).await;
    assert_eq!(other.status, StatusCode::OK);
    let arrivals: Vec<String> = sim
        .handle
        .log()
        .iter()
        .map(|r| r.query.clone().unwrap_or_default())
        .collect();
    let position = arrivals
        .iter()
        .position(|query| query.contains("per_page=70"))
        .expect("team-b's read reached GitHub");
    assert!(
        position <= 3,
        "team-b's read reached GitHub {}th, behind team-a's burst: {arrivals:?}",
        position + 1
    );
    for task in burst {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
}

// Found by a hostile review: the proxy's own revalidations took no share of the upstream slots,
// so one client reading many stale keys started enough of them to hold every slot, and other
// clients' misses queued behind that background work. The proxy's work has a share like a client.
#[tokio::test]
async fn background_revalidations_hold_at_most_a_share_of_the_upstream_slots() {
    let sim = spawn_sim().await;
    let opts = ProxyOptions {
        extra_upstream: "max_concurrency = 4\nmax_concurrency_per_client = 2",
        extra: "[cache]\nversion_lists_ttl = \"1s\"\n".to_owned(),
        upstream_timeout: "30s",
        ..ProxyOptions::default()
    };
    let proxy = spawn_proxy(&sim, opts).await;
    for i in 0..6 {
        assert_eq!(
            get(&proxy.url(&cold(i)), proxy.token()).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(sim.gets(), 6);
    // Past the TTL every one is stale: a read answers it at once and revalidates it behind.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.handle
        .inject(Fault::new(FaultKind::Latency(Duration::from_secs(3)), 7));
    for i in 0..6 {
        let stale = get(&proxy.url(&cold(i)), proxy.token()).await;
        assert!(
            cache_status(&stale).contains("stale"),
            "{}",
            cache_status(&stale)
        );
    }
    // Two revalidations at GitHub (the proxy's share of the slots), four waiting for it.
    wait_upstream_queued(&proxy, 4.0).await;
    assert_eq!(sim.gets(), 8);
    // Another client's miss takes one of the two slots left, at once.
    let other = {
        let (url, token) = (proxy.url(&cold(9)), proxy.tokens[1].clone());
        tokio::spawn(async move { get(&url, &token).await.status })
    };
    eventually(
        Duration::from_secs(2),
        "the other client's read at GitHub",
        || async { sim.gets() == 9 },
    )
    .await;
    assert_eq!(other.await.unwrap(), StatusCode::OK);
}
