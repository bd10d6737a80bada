//! TLS on the listener, over real sockets, with certificates made at test time: HTTPS with bearer
//! tokens, client certificates (mTLS) as identities, a certificate swap without a restart, and
//! plain HTTP on the TLS port.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod support;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use packages_proxy::{
    config::{Config, ConfigError, tls::CertFingerprint},
    secret::OrgToken,
    server::{self, Running},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{
    ClientConfig, RootCertStore,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use support::*;

const PACKAGES: &str = "/orgs/acme/packages?package_type=container";

/// A test certificate authority.
struct Ca {
    pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM, and the certificate's fingerprint.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    fingerprint: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.leaf(
            "packages-proxy",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        self.leaf(name, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate that expired yesterday.
    fn expired_server(&self) -> Leaf {
        self.leaf_with(
            "packages-proxy",
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            |params| {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            },
        )
    }

    fn leaf(&self, name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.leaf_with(name, sans, usage, |_| {})
    }

    fn leaf_with(
        &self,
        name: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params = CertificateParams::new(sans).unwrap();
        adjust(&mut params);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: CertFingerprint::of(cert.der()).to_hex(),
        }
    }
}

/// A proxy with `[server.tls]` in front of the simulator.
struct TlsProxy {
    running: Running,
    tokens: Vec<String>,
    dir: PathBuf,
    server_ca: Ca,
}

impl TlsProxy {
    /// Starts a proxy whose clients are team-a and team-b (tokens) plus `extra_clients` TOML;
    /// client certificates must chain to `client_ca`.
    async fn start(sim: &Sim, client_ca: &Ca, extra_clients: &str) -> Self {
        let dir = temp_dir("tls");
        let server_ca = Ca::new("server CA");
        write_pair(&dir, &server_ca.server());
        std::fs::write(dir.join("clients.pem"), &client_ca.pem).unwrap();
        // Uncached: every request below is meant to reach the simulator.
        let extra = format!(
            "[cache]\nenabled = false\n{}\n{extra_clients}",
            tls_table(&dir, true)
        );
        let opts = ProxyOptions {
            extra,
            ..ProxyOptions::default()
        };
        let (text, tokens) = proxy_config(&sim.handle.base_url(), 0, &opts);
        let config = Config::parse(&text).unwrap();
        let running = server::start(config, OrgToken::new(&sim.org_token).unwrap())
            .await
            .unwrap();
        Self {
            running,
            tokens,
            dir,
            server_ca,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.running.addr.port())
    }
}

/// `[server.tls]` for the files in `dir`.
fn tls_table(dir: &Path, client_ca: bool) -> String {
    let mut text = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"100ms\"\n",
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
    );
    if client_ca {
        let ca = dir.join("clients.pem");
        text.push_str(&format!("client_ca_file = \"{}\"\n", ca.display()));
    }
    text
}

fn write_pair(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("server.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &leaf.key_pem).unwrap();
}

type TlsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A fresh HTTPS client (no pooled connection) trusting only `ca`, optionally presenting `identity`.
fn https_client(ca: &Ca, identity: Option<&Leaf>, http2: bool) -> TlsClient {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        connector.enable_http1().enable_http2().build()
    } else {
        connector.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A GET; `Err` when the connection or handshake failed.
async fn fetch(
    client: &TlsClient,
    url: &str,
    token: Option<&str>,
) -> Result<(StatusCode, Version, http::HeaderMap, Bytes), String> {
    let mut request = Request::get(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("request timed out")
        .map_err(|error| format!("{error:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Ok((parts.status, parts.version, parts.headers, body))
}

// Guards the basic promise: with `[server.tls]` the proxy speaks HTTPS (h2 by ALPN, HTTP/1.1 for
// clients that only offer it), bearer tokens work as before, and the request reaches GitHub.
#[tokio::test]
async fn https_with_a_bearer_token_reaches_the_simulator_over_h2_and_http1() {
    let sim = spawn_sim().await;
    let proxy = TlsProxy::start(&sim, &Ca::new("client CA"), "").await;
    for (http2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        sim.handle.clear_log();
        let client = https_client(&proxy.server_ca, None, http2);
        let (status, got, _, body) = fetch(&client, &proxy.url(PACKAGES), Some(&proxy.tokens[0]))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(got, version, "ALPN picks the protocol");
        let log = sim.handle.log();
        assert_eq!(log.len(), 1, "the request reached the simulator");
        assert_eq!(
            log[0].headers["authorization"],
            format!("Bearer {}", sim.org_token).as_str()
        );
    }
    let client = https_client(&proxy.server_ca, None, true);
    let (status, ..) = fetch(&client, &proxy.url(PACKAGES), None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token, no certificate");
    proxy.running.shutdown().await;
}

// Guards mTLS as an identity: a configured certificate names its client without any
// Authorization header; an unconfigured one (even from the trusted CA) is refused unless a token
// comes with it; a certificate from an unknown CA fails the handshake.
#[tokio::test]
async fn a_configured_client_certificate_authenticates_as_its_client_without_a_token() {
    let sim = spawn_sim().await;
    let client_ca = Ca::new("client CA");
    let known = client_ca.client("team-cert");
    let unknown = client_ca.client("stranger");
    let extra = format!(
        "\n[[clients]]\nname = \"team-cert\"\ncert_sha256 = \"{}\"\nupstream_per_minute = 7\n",
        known.fingerprint
    );
    let proxy = TlsProxy::start(&sim, &client_ca, &extra).await;

    let client = https_client(&proxy.server_ca, Some(&known), true);
    let (status, _, headers, _) = fetch(&client, &proxy.url("/rate_limit"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["x-ratelimit-limit"], "7",
        "the request counts against team-cert's quota"
    );
    sim.handle.clear_log();
    let (status, ..) = fetch(&client, &proxy.url(PACKAGES), None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sim.handle.log().len(),
        1,
        "the request reached the simulator"
    );

    let stranger = https_client(&proxy.server_ca, Some(&unknown), true);
    let (status, ..) = fetch(&stranger, &proxy.url(PACKAGES), None).await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "unknown certificate, no token"
    );
    let (status, ..) = fetch(&stranger, &proxy.url(PACKAGES), Some(&proxy.tokens[1]))
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "a token still works beside any certificate"
    );

    let rogue = Ca::new("rogue CA").client("team-cert");
    let rogue = https_client(&proxy.server_ca, Some(&rogue), true);
    assert!(
        fetch(&rogue, &proxy.url(PACKAGES), Some(&proxy.tokens[0]))
            .await
            .is_err(),
        "a certificate from an untrusted CA fails the handshake"
    );
    proxy.running.shutdown().await;
}

// Guards hot reload: a rotated certificate (same name, new CA) is served without a restart; a
// half-written rotation (new certificate, old key) is refused and the old pair keeps serving.
// Real time: the reload task polls real files every 100ms; `/metrics` says when it has seen them.
#[tokio::test]
async fn a_swapped_certificate_is_served_without_a_restart() {
    let sim = spawn_sim().await;
    let proxy = TlsProxy::start(&sim, &Ca::new("client CA"), "").await;
    let token = proxy.tokens[0].clone();
    let url = proxy.url(PACKAGES);
    let trusts_old = || https_client(&proxy.server_ca, None, false);
    let new_ca = Ca::new("rotated server CA");
    let trusts_new = || https_client(&new_ca, None, false);
    assert!(fetch(&trusts_old(), &url, Some(&token)).await.is_ok());
    assert!(fetch(&trusts_new(), &url, Some(&token)).await.is_err());

    // The certificate lands before its key: the pair does not match, the old one stays.
    let rotated = new_ca.server();
    std::fs::write(proxy.dir.join("server.pem"), &rotated.cert_pem).unwrap();
    let metrics = proxy.url("/metrics");
    let rejected = "packages_proxy_tls_reloads_total{result=\"rejected\"}";
    eventually(Duration::from_secs(10), "the bad pair rejected", || async {
        let page = match fetch(&trusts_old(), &metrics, None).await {
            Ok((_, _, _, body)) => String::from_utf8_lossy(&body).into_owned(),
            Err(_) => return false,
        };
        sample(&page, rejected).is_some_and(|n| n >= 1.0)
    })
    .await;
    let (status, ..) = fetch(&trusts_old(), &url, Some(&token)).await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "a bad pair keeps the old certificate"
    );

    std::fs::write(proxy.dir.join("server.key"), &rotated.key_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((status, ..)) = fetch(&trusts_new(), &url, Some(&token)).await {
            assert_eq!(status, StatusCode::OK);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fetch(&trusts_old(), &url, Some(&token)).await.is_err(),
        "the old certificate is no longer served"
    );
    proxy.running.shutdown().await;
}

// Guards the accept loop: a plain-HTTP client on the TLS port gets a closed connection (no hang, no
// crash), and the listener keeps serving HTTPS.
#[tokio::test]
async fn plain_http_on_the_tls_port_fails_cleanly_and_the_listener_keeps_serving() {
    let sim = spawn_sim().await;
    let proxy = TlsProxy::start(&sim, &Ca::new("client CA"), "").await;
    let started = Instant::now();
    let (status, _) = raw_get(proxy.running.addr, PACKAGES, &proxy.tokens[0]).await;
    assert_eq!(status, 0, "no HTTP answer on the TLS port");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the connection is closed, not left hanging"
    );
    let client = https_client(&proxy.server_ca, None, true);
    let (status, ..) = fetch(&client, &proxy.url(PACKAGES), Some(&proxy.tokens[0]))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    proxy.running.shutdown().await;
}

const MINIMAL: &str = "[upstream]\ntoken_env = \"GITHUB_TOKEN\"\nowners = [\"acme\"]\n";

fn config_error(text: &str) -> (String, String) {
    match Config::parse(text) {
        Err(ConfigError::Invalid { field, reason }) => (field, reason),
        Err(ConfigError::Tls { field, source }) => (field, source.to_string()),
        other => panic!("expected a config error, got {other:?}"),
    }
}

// Guards check-config: a certificate, key or CA bundle that cannot be used is a config error that
// names its key, not a failure at the first handshake; so are client entries that cannot work.
#[test]
fn unusable_tls_files_and_client_entries_are_config_errors_naming_the_key() {
    let dir = temp_dir("tls-config");
    let ca = Ca::new("config CA");
    write_pair(&dir, &ca.server());
    std::fs::write(dir.join("clients.pem"), &ca.pem).unwrap();
    let good = format!("[server]\n{}{MINIMAL}", tls_table(&dir, true));
    let config = Config::parse(&good).unwrap();
    let tls = config.server.tls.unwrap();
    assert_eq!(tls.reload_interval, Duration::from_millis(100));

    let other = ca.server();
    std::fs::write(dir.join("other.key"), &other.key_pem).unwrap();
    let expired = ca.expired_server();
    std::fs::write(dir.join("expired.pem"), &expired.cert_pem).unwrap();
    std::fs::write(dir.join("expired.key"), &expired.key_pem).unwrap();
    std::fs::write(dir.join("garbage.pem"), "not a certificate").unwrap();
    let cases = [
        (
            good.replace("server.pem", "missing.pem"),
            "server.tls.cert_file",
        ),
        (
            good.replace("server.pem", "garbage.pem"),
            "server.tls.cert_file",
        ),
        (
            good.replace("server.pem", "server.key"),
            "server.tls.cert_file",
        ),
        (
            good.replace("server.key", "server.pem"),
            "server.tls.key_file",
        ),
        (
            good.replace("server.key", "other.key"),
            "server.tls.key_file",
        ),
        (
            good.replace("clients.pem", "garbage.pem"),
            "server.tls.client_ca_file",
        ),
        (good.replace("100ms", "0s"), "server.tls.reload_interval"),
        // Found by the operator-surface review: an expired certificate was accepted at start
        // and swapped in on reload, and every handshake then failed.
        (
            good.replace("server.pem", "expired.pem")
                .replace("server.key", "expired.key"),
            "server.tls.cert_file",
        ),
    ];
    for (text, key) in cases {
        let (field, reason) = config_error(&text);
        assert_eq!(field, key, "{reason}");
    }

    let fp = ca.client("x").fingerprint;
    let cert_client = format!("\n[[clients]]\nname = \"c\"\ncert_sha256 = \"{fp}\"\n");
    // With a client CA, a certificate-only client is fine; the colon form is accepted too.
    let colons: Vec<String> = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
        .collect();
    let config = Config::parse(&format!("{good}{cert_client}")).unwrap();
    assert!(config.clients[0].token_hash.is_none());
    Config::parse(&format!(
        "{good}{}",
        cert_client.replace(&fp, &colons.join(":"))
    ))
    .unwrap();
    let cases = [
        // No client CA: no certificate is ever asked for, so the client could never get in.
        (
            format!("[server]\n{}{MINIMAL}{cert_client}", tls_table(&dir, false)),
            "clients[0].cert_sha256",
        ),
        (
            format!("[server]\n{MINIMAL}{cert_client}"),
            "clients[0].cert_sha256",
        ),
        (
            format!("{good}{}", cert_client.replace(&fp, "abc")),
            "clients[0].cert_sha256",
        ),
        (
            format!(
                "{good}{cert_client}{}",
                cert_client.replace("\"c\"", "\"d\"")
            ),
            "clients[1].cert_sha256",
        ),
        (
            format!("{good}\n[[clients]]\nname = \"neither\"\n"),
            "clients[0].token_sha256",
        ),
    ];
    for (text, key) in cases {
        let (field, reason) = config_error(&text);
        assert_eq!(field, key, "{reason}");
    }
}

// Found by a hostile review of the operator surface: a config reload also re-read the TLS files,
// so with a certificate mid-rotation (the file briefly missing) an emergency reload of clients
// and policy was rejected and never retried. A reload leaves the files to the listener's own
// reload, and says which changed settings it cannot apply.
#[tokio::test]
async fn a_reload_applies_clients_while_the_certificate_file_is_being_rotated() {
    let sim = spawn_sim().await;
    let dir = temp_dir("tls-reload");
    let server_ca = Ca::new("server CA");
    write_pair(&dir, &server_ca.server());
    let opts = ProxyOptions {
        extra: format!("[cache]\nenabled = false\n{}", tls_table(&dir, false)),
        ..ProxyOptions::default()
    };
    let (text, _) = proxy_config(&sim.handle.base_url(), 0, &opts);
    let path = dir.join("config.toml");
    std::fs::write(&path, &text).unwrap();
    let running = server::start(
        Config::load(&path).unwrap(),
        OrgToken::new(&sim.org_token).unwrap(),
    )
    .await
    .unwrap();
    // Mid-rotation: the certificate file is gone for a moment.
    std::fs::remove_file(dir.join("server.pem")).unwrap();
    let with_team_c = ProxyOptions {
        clients: vec!["team-a", "team-b", "team-c"],
        max_in_flight: 512,
        ..opts
    };
    let (text, tokens) = proxy_config(&sim.handle.base_url(), 0, &with_team_c);
    std::fs::write(&path, &text).unwrap();
    packages_proxy::reload::reload(&running.state, &path)
        .expect("a reload waited for the certificate file");
    let url = format!("https://127.0.0.1:{}{PACKAGES}", running.addr.port());
    let (status, ..) = fetch(
        &https_client(&server_ca, None, false),
        &url,
        Some(&tokens[2]),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "team-c was not added by the reload");
    // `server.max_in_flight` changed too, which only a restart applies: counted.
    let metrics = format!("https://127.0.0.1:{}/metrics", running.addr.port());
    let (_, _, _, page) = fetch(&https_client(&server_ca, None, false), &metrics, None)
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page).into_owned();
    assert_eq!(
        sample(&page, "packages_proxy_config_unapplied_total"),
        Some(1.0),
        "{page}"
    );
}
