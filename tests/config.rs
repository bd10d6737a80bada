//! Config loading: the documented example loads, and mistakes name their key.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

use packages_proxy::config::{Config, ConfigError};

const MINIMAL: &str = r#"
[server]
[upstream]
token_env = "GITHUB_TOKEN"
owners = ["acme"]
"#;

#[test]
fn the_example_config_loads() {
    let config = Config::parse(include_str!("../config/example.toml")).unwrap();
    assert_eq!(config.upstream.origin, "https://api.github.com");
    assert_eq!(config.clients.len(), 2);
    assert_eq!(
        config.server.public_url.as_deref(),
        Some("https://packages-proxy.internal.example")
    );
}

#[test]
fn defaults_are_explicit_and_safe() {
    let config = Config::parse(MINIMAL).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert!(!config.upstream.allow_user_routes);
    assert!(!config.upstream.allow_plain_http);
    assert!(config.clients.is_empty());
    assert_eq!(config.upstream.prefix, "");
}

#[test]
fn ghes_base_urls_keep_their_prefix() {
    let text = MINIMAL.replace(
        "[upstream]",
        "[upstream]\nbase_url = \"https://ghe.example/api/v3/\"",
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.upstream.origin, "https://ghe.example");
    assert_eq!(config.upstream.prefix, "/api/v3");
}

fn field_of(text: &str) -> String {
    match Config::parse(text) {
        Err(ConfigError::Invalid { field, .. }) => field,
        Err(ConfigError::Parse(error)) => error.to_string(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn mistakes_name_the_key() {
    let cases = [
        (MINIMAL.replace("owners", "ownerz"), "ownerz"),
        (
            MINIMAL.replace("[server]", "[server]\nlisten = \"nowhere\""),
            "listen",
        ),
        (
            MINIMAL.replace("token_env = \"GITHUB_TOKEN\"", ""),
            "upstream.token_env",
        ),
        (
            MINIMAL.replace(
                "token_env = \"GITHUB_TOKEN\"",
                "token_env = \"A\"\ntoken_file = \"/x\"",
            ),
            "upstream.token_env",
        ),
        (
            MINIMAL.replace(
                "[upstream]",
                "[upstream]\nbase_url = \"http://api.github.com\"",
            ),
            "upstream.base_url",
        ),
        (
            MINIMAL.replace("[upstream]", "[upstream]\nbase_url = \"ftp://x\""),
            "upstream.base_url",
        ),
        (MINIMAL.replace("[\"acme\"]", "[]"), "upstream.owners"),
        (
            MINIMAL.replace("[\"acme\"]", "[\"ac/me\"]"),
            "upstream.owners",
        ),
        (
            MINIMAL.replace("[server]", "[server]\nmax_in_flight = 0"),
            "server.max_in_flight",
        ),
        (
            MINIMAL.replace("[upstream]", "[upstream]\ntimeout = \"soon\""),
            "timeout",
        ),
        (
            format!("{MINIMAL}\n[log]\nformat = \"xml\"\n"),
            "log.format",
        ),
        (format!("{MINIMAL}\n[log]\nlevel = \"=[\"\n"), "log.level"),
        (
            MINIMAL.replace("[upstream]", "[upstream]\ntoken = \"ghp_inline\""),
            "token",
        ),
        (
            format!("{MINIMAL}\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"zz\"\n"),
            "clients[0].token_sha256",
        ),
        (
            format!(
                "{MINIMAL}\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\n",
                h = "ab".repeat(32)
            ),
            "clients[1].name",
        ),
        (
            format!(
                "{MINIMAL}\n[[clients]]\nname = \"a b\"\ntoken_sha256 = \"{}\"\n",
                "ab".repeat(32)
            ),
            "clients[0].name",
        ),
    ];
    for (text, key) in cases {
        let field = field_of(&text);
        assert!(
            field.contains(key),
            "expected the error to name {key:?}, got {field:?}"
        );
    }
}

/// Values that passed `check-config` and then panicked in `serve` (or at the first request):
/// tokio's semaphore limit, moka's and `Instant`'s limits on lifetimes, hyper's buffer sizes.
const RUNTIME_LIMITS: [(&str, &str, &str); 9] = [
    (
        "server",
        "max_connections = 2305843009213693952",
        "server.max_connections",
    ),
    (
        "server",
        "max_in_flight = 2305843009213693952",
        "server.max_in_flight",
    ),
    (
        "server",
        "max_uri_bytes = 18446744073709551615",
        "server.max_uri_bytes",
    ),
    (
        "server",
        "header_read_timeout = \"18446744073709551615s\"",
        "server.header_read_timeout",
    ),
    (
        "cache",
        "version_ttl = \"18446744073709551615s\"",
        "cache.version_ttl",
    ),
    (
        "cache",
        "stale_if_error = \"2000years\"",
        "cache.stale_if_error",
    ),
    (
        "mutations",
        "pace = \"18446744073709551615s\"",
        "mutations.pace",
    ),
    (
        "upstream",
        "max_queue = 18446744073709551615",
        "upstream.max_queue",
    ),
    (
        "quotas",
        "max_in_flight = 2305843009213693952",
        "clients[0].max_in_flight",
    ),
];

/// `MINIMAL` with one client and `line` in `[table]`.
fn with_line(table: &str, line: &str) -> String {
    let mut text = format!(
        "{MINIMAL}\n[[clients]]\nname = \"team-a\"\ntoken_sha256 = \"{}\"\n",
        "ab".repeat(32)
    );
    if text.contains(&format!("[{table}]\n")) {
        text = text.replace(&format!("[{table}]\n"), &format!("[{table}]\n{line}\n"));
    } else {
        text.push_str(&format!("\n[{table}]\n{line}\n"));
    }
    text
}

#[test]
fn values_the_runtime_cannot_hold_are_refused_with_their_key() {
    for (table, line, key) in RUNTIME_LIMITS {
        let field = field_of(&with_line(table, line));
        assert!(field.starts_with(key), "{line}: got field {field:?}");
    }
    // The bounds leave every sensible value alone.
    for (table, line) in [
        ("server", "max_connections = 100000"),
        ("cache", "version_ttl = \"30days\""),
        ("mutations", "pace = \"1h\""),
    ] {
        Config::parse(&with_line(table, line)).unwrap();
    }
}

/// Through the binary: `check-config` and `serve` both refuse, name the key, and do not panic.
#[test]
fn check_config_and_serve_refuse_what_would_panic() {
    let dir = std::env::temp_dir().join(format!("packages-proxy-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (table, line, key)) in RUNTIME_LIMITS.into_iter().enumerate() {
        let text =
            with_line(table, line).replace("[server]\n", "[server]\nlisten = \"127.0.0.1:0\"\n");
        let path = dir.join(format!("limits-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let runs = [
            vec!["check-config".into(), path.clone().into_os_string()],
            vec![
                "serve".into(),
                "--config".into(),
                path.clone().into_os_string(),
            ],
        ];
        for args in runs {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
                .args(&args)
                .env("GITHUB_TOKEN", "ghp_fake_not_a_real_token")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?} {line}: {stderr}");
            assert!(stderr.contains(key), "{args:?} {line}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?} {line}: {stderr}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_clients_share_of_the_upstream_slots_is_from_one_to_all_of_them() {
    for line in [
        "max_concurrency_per_client = 0",
        "max_concurrency = 4\nmax_concurrency_per_client = 5",
    ] {
        let field = field_of(&with_line("upstream", line));
        assert_eq!(field, "upstream.max_concurrency_per_client", "{line}");
    }
    for line in [
        "max_concurrency = 4\nmax_concurrency_per_client = 4",
        "max_concurrency = 1",
    ] {
        Config::parse(&with_line("upstream", line)).unwrap();
    }
    let config = Config::parse(&with_line("upstream", "max_concurrency = 25")).unwrap();
    assert_eq!(
        config.upstream.max_concurrency_per_client, 13,
        "half, rounded up"
    );
}

// Found by a hostile review of the operator surface: `check-config` passed configs that `serve`
// refused at once (the admin listener on the main one's address, an audit log in a directory
// that does not exist), and `token new` printed a secret for a name the config refuses.
#[test]
fn check_config_refuses_what_serve_cannot_start_and_token_new_what_the_config_refuses() {
    let dir = std::env::temp_dir().join(format!("packages-proxy-operator-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let same_port = with_line(
        "server",
        "listen = \"127.0.0.1:49999\"\nadmin_listen = \"127.0.0.1:49999\"",
    );
    let field = field_of(&same_port);
    assert_eq!(field, "server.admin_listen");
    let missing = dir.join("no-such-dir").join("audit.jsonl");
    let audit_in_nowhere = with_line("mutations", &format!("audit_log = {missing:?}"));
    let path = dir.join("audit-nowhere.toml");
    std::fs::write(&path, audit_in_nowhere).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
        .args(["check-config".as_ref(), path.as_os_str()])
        .env("GITHUB_TOKEN", "ghp_fake_not_a_real_token")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");
    for name in ["team a", "", "a\u{1b}"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
            .args(["token", "new", "--name", name])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{name:?}: {stdout}");
        assert!(
            !stdout.contains("ppx_"),
            "{name:?}: a secret was shown: {stdout}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_packages-proxy"))
        .args(["token", "new", "--name", "team-c"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let entry = stdout.split("Config entry:\n").nth(1).unwrap();
    let parsed: toml::Value = toml::from_str(entry).unwrap();
    assert_eq!(parsed["clients"][0]["name"].as_str(), Some("team-c"));
    let _ = std::fs::remove_dir_all(&dir);
}
