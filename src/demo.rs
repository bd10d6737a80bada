//! `packages-proxy demo`: the simulated Packages API with sample data and the proxy in front of
//! it, in one process, so a newcomer can try the proxy with curl and no GitHub access.

use std::net::SocketAddr;

use crate::{
    config::Config,
    secret::{OrgToken, TokenHash, new_client_token},
    server,
    sim::{Dataset, Simulator},
};

/// Runs the demo until `shutdown` resolves (the binary passes Ctrl-C or SIGTERM: it has installed
/// a SIGTERM handler, so waiting for Ctrl-C alone left `docker stop` or `timeout` unheard).
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let org_token = new_client_token()?;
    let client_token = new_client_token()?;
    // `acme/app`: two multi-arch images (`latest`, `v1`), a single-arch tag and two orphans.
    let dataset = Dataset::sample().multi_arch("acme", "app", "private", (2, 1, 2));
    let app = dataset.version_ids("acme", "container", "app");
    let sim = Simulator::new(org_token.clone())
        .dataset(dataset)
        .run()
        .await?;
    let audit =
        std::env::temp_dir().join(format!("packages-proxy-demo-{}.jsonl", std::process::id()));
    let config = Config::parse(&demo_config(listen, &sim.base_url(), &client_token, &audit))?;
    let running = server::start(config, OrgToken::new(&org_token)?).await?;
    print_instructions(&sim.base_url(), running.addr, &client_token);
    print_guard_examples(running.addr, &app, &audit);
    shutdown.await;
    running.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

/// The demo's config: the simulator as upstream and registry, org `acme` and user `octocat`, one
/// client, and one rule allowing version deletes in `acme/app` (the multi-arch guard on).
fn demo_config(
    listen: SocketAddr,
    upstream: &str,
    client_token: &str,
    audit: &std::path::Path,
) -> String {
    let hash = TokenHash::of(client_token).to_hex();
    format!(
        r#"
[server]
listen = "{listen}"
public_url = "http://{listen}"
drain_timeout = "2s"

[upstream]
base_url = "{upstream}"
allow_plain_http = true
# The demo hands the simulator's token to the proxy directly; this variable is never read.
token_env = "PACKAGES_PROXY_DEMO_UNUSED"
owners = ["acme", "octocat"]
allow_user_routes = true

# The simulator serves the container registry too (/v2/..., /token).
[registry]
base_url = "{upstream}"
allow_plain_http = true

[mutations]
pace = "0s"
audit_log = {audit:?}

[[policy.allow]]
name = "app-cleanup"
actions = ["delete_version"]
packages = ["app"]

[[clients]]
name = "demo"
token_sha256 = "{hash}"
"#
    )
}

fn print_instructions(upstream: &str, addr: SocketAddr, token: &str) {
    let base = format!("http://{addr}");
    println!(
        r#"
packages-proxy demo
  simulated GitHub Packages API: {upstream}   (only the proxy holds its token)
  proxy:                         {base}
  client "demo" token:           {token}

Try:
  export T={token}
  curl -s -H "Authorization: Bearer $T" "{base}/orgs/acme/packages?package_type=container"
  curl -si -H "Authorization: Bearer $T" "{base}/orgs/acme/packages/container/web/versions?per_page=5"   # Link points back here
  curl -s -H "Authorization: Bearer $T" "{base}/orgs/acme/packages/container/base%2Fruntime"
  curl -s -H "Authorization: Bearer $T" "{base}/user/packages?package_type=container"
  curl -s -X DELETE -H "Authorization: Bearer $T" "{base}/orgs/acme/packages/container/web/versions/1"   # 403: denied by default
  curl -s -H "Authorization: Bearer $T" "{base}/repos/acme/secrets"   # 404: only the Packages API
  curl -s "{base}/orgs/acme/packages?package_type=container"          # 401: no token

Ctrl-C stops it.
"#
    );
}

/// The multi-arch guard on `acme/app` (ids newest first: [0] the `latest` index, [2] its
/// linux/arm64 manifest, [10] an untagged orphan).
fn print_guard_examples(addr: SocketAddr, app: &[u64], audit: &std::path::Path) {
    let (Some(latest), Some(child), Some(orphan)) = (app.first(), app.get(2), app.get(10)) else {
        return;
    };
    let url = format!("http://{addr}/orgs/acme/packages/container/app/versions");
    println!(
        r#"The multi-arch guard (rule "app-cleanup" allows deleting versions of acme/app):
  curl -s -X DELETE -H "Authorization: Bearer $T" "{url}/{orphan}"   # 204: an untagged orphan
  curl -s -X DELETE -H "Authorization: Bearer $T" "{url}/{child}"   # 409: linux/arm64 of latest ({latest})
  curl -s -X DELETE -H "Authorization: Bearer $T" -H "X-Packages-Proxy-Dry-Run: 1" "{url}/{child}"   # 409 too, nothing sent
  tail -n 3 {audit}   # every decision, with "multi_arch_guard"
"#,
        audit = audit.display()
    );
}
