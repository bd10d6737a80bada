//! The `packages-proxy` command: serve, check a config, mint client tokens, run the simulator or
//! the demo. Thin on purpose: everything it runs lives in the library.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use packages_proxy::{
    config::Config,
    demo,
    secret::{TokenHash, new_client_token},
    server,
    sim::{Dataset, Simulator},
};
use tracing_subscriber::EnvFilter;

/// An authenticating, caching proxy in front of GitHub's Packages REST API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "PACKAGES_PROXY_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Serve {
        /// The TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file (and that the org token can be read) without starting anything.
    CheckConfig {
        /// The TOML config.
        file: PathBuf,
    },
    /// Client tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run the simulated GitHub Packages API (for demos and benchmarks).
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: SocketAddr,
        /// The token the simulator accepts (use a fake one).
        #[arg(long, env = "SIMULATOR_TOKEN")]
        token: String,
        /// Generate N container packages in org `acme` instead of the sample data.
        #[arg(long)]
        packages: Option<usize>,
        /// Versions per generated package.
        #[arg(long, default_value_t = 50)]
        versions: usize,
    },
    /// Start the simulator with sample data and the proxy in front of it; prints a token and curl
    /// commands. Needs no GitHub access.
    Demo {
        /// Address the proxy listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a fresh random client token once, and the config entry holding only its hash.
    New {
        /// The client's name.
        #[arg(long)]
        name: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Serve { config } => serve(config).await,
        Command::CheckConfig { file } => check_config(file),
        Command::Token {
            command: TokenCommand::New { name },
        } => token_new(&name),
        Command::Simulate {
            listen,
            token,
            packages,
            versions,
        } => simulate(listen, token, packages, versions).await,
        Command::Demo { listen } => demo::run(listen).await,
    }
}

fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn serve(path: PathBuf) -> Result<()> {
    let config = Config::load(&path)?;
    let token = config.load_token().context("loading the org token")?;
    let running = server::start(config, token).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: readiness fails, draining in-flight requests");
    running.shutdown().await;
    Ok(())
}

fn check_config(path: PathBuf) -> Result<()> {
    let config = Config::load(&path)?;
    config.load_token().context("loading the org token")?;
    println!(
        "{}: ok ({} clients, {} owners)",
        path.display(),
        config.clients.len(),
        config.upstream.owners.len()
    );
    Ok(())
}

fn token_new(name: &str) -> Result<()> {
    let token = new_client_token().context("no randomness available")?;
    let hash = TokenHash::of(&token).to_hex();
    println!("Token for {name} (shown once; give it to the client, keep only the hash):");
    println!("{token}");
    println!();
    println!("Config entry:");
    println!("[[clients]]\nname = {name:?}\ntoken_sha256 = \"{hash}\"");
    Ok(())
}

async fn simulate(
    listen: SocketAddr,
    token: String,
    packages: Option<usize>,
    versions: usize,
) -> Result<()> {
    let dataset = match packages {
        Some(n) => Dataset::generated("acme", n, versions),
        None => Dataset::sample(),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let handle = Simulator::new(token)
        .dataset(dataset)
        .run_on(listener)
        .await?;
    println!("simulated GitHub Packages API on {}", handle.base_url());
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
