//! `packages-proxy demo`: the simulated Packages API with sample data and the proxy in front of
//! it, in one process, so a newcomer can try the proxy with curl and no GitHub access.

use std::net::SocketAddr;

use crate::{
    config::Config,
    secret::{OrgToken, TokenHash, new_client_token},
    server,
    sim::{Dataset, Simulator},
};

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let org_token = new_client_token()?;
    let client_token = new_client_token()?;
    let sim = Simulator::new(org_token.clone())
        .dataset(Dataset::sample())
        .run()
        .await?;
    let config = Config::parse(&demo_config(listen, &sim.base_url(), &client_token))?;
    let running = server::start(config, OrgToken::new(&org_token)?).await?;
    print_instructions(&sim.base_url(), running.addr, &client_token);
    tokio::signal::ctrl_c().await?;
    running.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

/// The demo's config: the simulator as upstream, org `acme` and user `octocat`, one client.
fn demo_config(listen: SocketAddr, upstream: &str, client_token: &str) -> String {
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
