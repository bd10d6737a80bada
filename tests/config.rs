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
