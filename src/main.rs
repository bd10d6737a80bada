//! The `packages-proxy` command: serve, check a config, mint client tokens, run the simulator or
//! the demo. Thin on purpose: everything it runs lives in the library.
#![forbid(unsafe_code)]

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use packages_proxy::{
    access_log, audit,
    config::Config,
    demo,
    policy::Decision,
    reconcile, reload,
    route::Route,
    secret::{TokenHash, new_client_token},
    server,
    sim::{Dataset, Simulator},
    undo::{self, Filter},
};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: a cache hit allocates ~20 small blocks and frees them on
/// the same thread, which mimalloc's per-thread free lists serve without locks or `brk`/`mmap`
/// churn (see benches/README.md for what it bought).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Test a policy before deploying it.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Read the audit log; undo a bad clean-up job.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
enum PolicyCommand {
    /// Print the decision the server would make for a client's request, and the rule behind it.
    /// Exits 0 when the call would be sent (or is a read, which needs no rule), 3 when it is
    /// refused, 4 when it is allowed only as a dry run (nothing is sent), 1 when it cannot be
    /// judged (no such client, a bad config or path).
    Explain {
        /// The TOML config (with its policy).
        #[arg(long, short)]
        config: PathBuf,
        /// The client's name.
        #[arg(long)]
        client: String,
        /// DELETE or POST.
        method: String,
        /// The API path, e.g. /orgs/acme/packages/container/web/versions/42
        path: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List audit records, filtered.
    List {
        /// The audit log (JSON Lines).
        #[arg(long)]
        log: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only this decision (allowed, denied, dry_run, refused, completed, failed, not_sent,
        /// not_applied).
        #[arg(long)]
        decision: Option<packages_proxy::audit::Decision>,
        /// Only this package (decoded name).
        #[arg(long)]
        package: Option<String>,
    },
    /// Restore every version a client deleted in a window, through a running proxy (so the
    /// restores are paced and audited). The proxy token comes from PACKAGES_PROXY_TOKEN.
    Restore {
        /// The audit log (JSON Lines).
        #[arg(long)]
        log: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// The proxy's URL.
        #[arg(long)]
        proxy: String,
        /// Print what would be restored; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// A client token allowed to restore versions.
        #[arg(long, env = "PACKAGES_PROXY_TOKEN", hide_env_values = true)]
        token: String,
    },
}

#[derive(clap::Args)]
struct FilterArgs {
    /// Only this client.
    #[arg(long)]
    client: Option<String>,
    /// Not before (RFC 3339, e.g. 2026-11-25T08:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Not after (RFC 3339).
    #[arg(long)]
    until: Option<String>,
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

fn main() -> std::process::ExitCode {
    // First of all: until a handler is installed, SIGHUP (a reload) kills the process and systemd
    // does not restart it. Building the multi-threaded runtime takes milliseconds on a busy host,
    // so the handlers are installed from a bare single-threaded one first: tokio's handlers are
    // process-wide and stay, and the streams work under any runtime with a signal driver.
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map(|early| {
            let _entered = early.enter();
            Signals::install()
        });
    let result = signals.map_err(anyhow::Error::from).and_then(|signals| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(signals))
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            // One readable line with its causes (`{:#}`), not a Debug dump with a backtrace.
            eprintln!("packages-proxy: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What `policy explain` finds the server would do with a call, and the code it exits with: a
/// script tells each from an error (1) and from clap's usage errors (2).
#[derive(Clone, Copy)]
enum Verdict {
    /// Sent to GitHub (or a read, which needs no rule): 0.
    Sent,
    /// Refused, by the policy or because the proxy does not serve the owner: 3.
    Denied,
    /// Allowed only as a dry run: answered with what would be done, nothing sent: 4.
    DryRun,
}

impl Verdict {
    fn exit_code(self) -> std::process::ExitCode {
        std::process::ExitCode::from(match self {
            Self::Sent => 0,
            Self::Denied => 3,
            Self::DryRun => 4,
        })
    }
}

async fn run(signals: Signals) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let cli = Cli::parse();
    if let Command::Serve { config: path } = &cli.command {
        // The config's [log] table applies to serve; a bad config is reported on stderr.
        let config = Config::load(path)?;
        init_tracing(cli.log_json || config.log.json, &config.log.level, true)?;
        serve(path.clone(), config, signals).await?;
        return Ok(ExitCode::SUCCESS);
    }
    init_tracing(cli.log_json, "info", false)?;
    let done = match cli.command {
        Command::Serve { .. } => Ok(()),
        Command::CheckConfig { file } => check_config(file),
        Command::Token {
            command: TokenCommand::New { name },
        } => token_new(&name),
        Command::Simulate {
            listen,
            token,
            packages,
            versions,
        } => simulate(listen, token, packages, versions, signals).await,
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    config,
                    client,
                    method,
                    path,
                },
        } => return explain(&config, &client, &method, &path).map(Verdict::exit_code),
        Command::Audit { command } => audit_command(command).await,
        Command::Demo { listen } => {
            let mut signals = signals;
            demo::run(listen, async move { signals.shutdown().await }).await
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// Prints what the server would do with the call, and why.
fn explain(config: &std::path::Path, client: &str, method: &str, target: &str) -> Result<Verdict> {
    let config = Config::load(config)?;
    if !config.clients.iter().any(|c| c.name == client) {
        anyhow::bail!("no client named {client:?} in the config");
    }
    let method: http::Method = method.to_ascii_uppercase().parse()?;
    let (path, query) = target
        .split_once('?')
        .map_or((target, None), |(p, q)| (p, Some(q)));
    let route = Route::parse(&method, path, query)
        .map_err(|e| anyhow::anyhow!("{method} {target}: {e}"))?;
    // Checked by the server before anything else: its answer is then 404, whatever the rules say.
    if !config.upstream.serves(&route.owner) {
        println!(
            "deny: the proxy does not serve this owner's packages (upstream.owners, \
             upstream.allow_user_routes): answered 404"
        );
        return Ok(Verdict::Denied);
    }
    if !route.operation.is_destructive() {
        println!("{method} {target}: not a destructive call; reads need no policy rule");
        return Ok(Verdict::Sent);
    }
    match config.policy.decide(client, &route) {
        Decision::Allow(protections) => {
            print_protections(&protections);
            Ok(if protections.dry_run() {
                Verdict::DryRun
            } else {
                Verdict::Sent
            })
        }
        Decision::NoRule => {
            println!(
                "deny: no rule allows {} for {client}",
                route.operation.as_str()
            );
            Ok(Verdict::Denied)
        }
        Decision::DeniedBy(rule) => {
            println!("deny: denied by rule {:?}", rule.name);
            Ok(Verdict::Denied)
        }
    }
}

/// Every matching allow rule, then the protections the server combines from them.
fn print_protections(protections: &packages_proxy::protections::Protections) {
    let names: Vec<String> = protections
        .rule_names()
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    println!("allow: matching allow rules {}", names.join(", "));
    println!("  combined protections (every matching rule applies):");
    let patterns = protections.protected_patterns();
    if patterns.is_empty() {
        println!("    protected tags: none");
    } else {
        println!(
            "    protected tags (checked at request time): {}",
            patterns.join(", ")
        );
    }
    let budgets = protections.budgets();
    if let Some((tightest, size)) = protections.tightest_budget() {
        let all: Vec<String> = budgets
            .iter()
            .map(|(rule, n)| format!("{rule:?} {n}"))
            .collect();
        println!(
            "    budget: each must have room and each is spent ({}); tightest {size} per client \
             per window (rule {tightest:?})",
            all.join(", ")
        );
    } else {
        println!("    budget: none");
    }
    if protections.policy_dry_run() {
        println!(
            "    dry run: yes (policy dry_run = true): the server only reports what it would do"
        );
    } else if protections.dry_run() {
        let by: Vec<String> = protections
            .rules()
            .iter()
            .filter(|r| r.dry_run())
            .map(|r| format!("{:?}", r.name))
            .collect();
        println!(
            "    dry run: yes (rule {}): the server only reports what it would do",
            by.join(", ")
        );
    } else {
        println!("    dry run: no");
    }
}

fn filter_of(args: FilterArgs) -> Result<Filter> {
    let time = |t: Option<String>| -> Result<Option<std::time::SystemTime>> {
        t.map(|t| {
            rfc3339_with_offset(&t).with_context(|| {
                format!("bad time {t:?}: use RFC 3339, e.g. 2026-11-24T22:00:00Z or ...+02:00")
            })
        })
        .transpose()
    };
    Ok(Filter {
        client: args.client,
        since: time(args.since)?,
        until: time(args.until)?,
        ..Filter::default()
    })
}

/// An RFC 3339 time with `Z` or a numeric offset (`+02:00`, `-05:30`): humantime reads only UTC.
fn rfc3339_with_offset(text: &str) -> Result<std::time::SystemTime> {
    let offset = text
        .len()
        .checked_sub(6)
        .and_then(|at| text.get(at..).map(|tail| (at, tail)))
        .filter(|(_, tail)| {
            let b = tail.as_bytes();
            matches!(b[0], b'+' | b'-')
                && b[1..3].iter().all(u8::is_ascii_digit)
                && b[3] == b':'
                && b[4..6].iter().all(u8::is_ascii_digit)
        });
    let Some((at, tail)) = offset else {
        return Ok(humantime::parse_rfc3339_weak(text)?);
    };
    let local = humantime::parse_rfc3339_weak(&format!("{}Z", &text[..at]))?;
    let hours: u64 = tail[1..3].parse()?;
    let minutes: u64 = tail[4..6].parse()?;
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    // `+02:00` is two hours ahead of UTC: the same instant is two hours earlier in UTC.
    Ok(if tail.starts_with('+') {
        local - shift
    } else {
        local + shift
    })
}

async fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::List {
            log,
            filter,
            decision,
            package,
        } => {
            let mut filter = filter_of(filter)?;
            filter.decision = decision;
            filter.package = package;
            let (records, bad) = audit::read(&log)?;
            for record in records.iter().filter(|r| filter.matches(r)) {
                println!("{}", serde_json::to_string(record)?);
            }
            for line in bad {
                eprintln!("line {line}: not an audit record");
            }
            Ok(())
        }
        AuditCommand::Restore {
            log,
            filter,
            proxy,
            dry_run,
            token,
        } => {
            let filter = filter_of(filter)?;
            if filter.client.is_none() || filter.since.is_none() {
                anyhow::bail!("--client and --since are required");
            }
            let (records, bad) = audit::read(&log)?;
            // A line that cannot be read may be a delete that is then not restored: say so.
            for line in &bad {
                eprintln!(
                    "line {line}: not an audit record (skipped: a delete recorded there is not \
                     restored)"
                );
            }
            let deleted = undo::deleted_targets(&records, &filter);
            let paths = deleted.in_restore_order();
            let results = undo::restore(&proxy, &token, &paths, dry_run).await?;
            let mut failed = 0;
            for result in &results {
                let path = &result.path;
                match &result.outcome {
                    undo::Outcome::WouldRestore => println!("would restore {path}"),
                    outcome if outcome.restored() => println!("restored {path}"),
                    undo::Outcome::Answered(status) => {
                        failed += 1;
                        println!("FAILED {path} ({status})");
                    }
                    undo::Outcome::DryRunByPolicy => {
                        failed += 1;
                        println!(
                            "FAILED {path} (the proxy's policy only dry-runs restores for this \
                             client: nothing was restored)"
                        );
                    }
                    undo::Outcome::NoAnswer(why) => {
                        failed += 1;
                        println!("FAILED {path} (no answer, restored or not: {why})");
                    }
                }
            }
            match deleted.packages.len() {
                0 => println!("{} versions, {failed} failed", results.len()),
                packages => println!(
                    "{packages} packages, {} versions, {failed} failed",
                    deleted.versions.len()
                ),
            }
            if failed > 0 {
                anyhow::bail!("{failed} restores failed");
            }
            Ok(())
        }
    }
}

/// `RUST_LOG` wins over the config's level. `serve` also starts the access log writer (one line
/// per request, batched off the request path, same format); other commands log through `tracing`.
fn init_tracing(json: bool, level: &str, access_log: bool) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: a log file or collector gets plain text, like the access lines.
    let ansi = std::io::stdout().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    if access_log {
        let format = if json {
            access_log::Format::Json
        } else {
            access_log::Format::Text
        };
        access_log::install(format, Box::new(std::io::stdout()))?;
    }
    Ok(())
}

async fn serve(path: PathBuf, config: Config, mut signals: Signals) -> Result<()> {
    let token = config.load_token().context("loading the org token")?;
    // Before serving, so this process's own new intents are never taken for a crash's orphans.
    let orphans = reconcile::Snapshot::take(config.mutations.audit_log.as_deref())
        .context("reading the audit log for intents without an outcome")?;
    // A predecessor still draining on the same log may yet write outcomes: wait that long.
    let grace =
        config.server.shutdown_delay + config.server.drain_timeout + config.upstream.timeout;
    // SIGTERM while starting (a deploy rolled back at once) is a clean exit, not a kill.
    let running = tokio::select! {
        running = server::start(config, token) => running?,
        () = signals.shutdown() => {
            eprintln!("packages-proxy: stopped while starting");
            return Ok(());
        }
    };
    if !orphans.is_empty() {
        tracing::warn!(
            intents = orphans.len(),
            "audit intents without an outcome: reconciling them against GitHub"
        );
        tokio::spawn(reconcile::reconcile(running.state.clone(), orphans, grace));
    }
    let watcher = reload::spawn(
        running.state.clone(),
        path,
        std::time::Duration::from_secs(2),
    );
    signals.shutdown().await;
    watcher.abort();
    tracing::info!("shutting down: readiness fails, draining in-flight requests");
    running.shutdown().await;
    // Drained: no request is left to log. A blocked stdout gets a few seconds, not forever.
    access_log::close(std::time::Duration::from_secs(5));
    Ok(())
}

fn check_config(path: PathBuf) -> Result<()> {
    let config = Config::load(&path)?;
    config.load_token().context("loading the org token")?;
    // What `serve` would find at start, checked without creating anything.
    if let Some(log) = &config.mutations.audit_log {
        let dir = log
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !dir.is_dir() {
            anyhow::bail!(
                "mutations.audit_log: the directory {} does not exist",
                dir.display()
            );
        }
    }
    println!(
        "{}: ok ({} clients, {} owners)",
        path.display(),
        config.clients.len(),
        config.upstream.owners.len()
    );
    Ok(())
}

fn token_new(name: &str) -> Result<()> {
    // Checked before a secret is shown: an entry `check-config` would refuse is no use.
    if !packages_proxy::config::is_client_name(name) {
        anyhow::bail!(
            "invalid client name {name:?}: {}",
            packages_proxy::config::CLIENT_NAME_RULE
        );
    }
    let token = new_client_token().context("no randomness available")?;
    let hash = TokenHash::of(&token).to_hex();
    println!("Token for {name} (shown once; give it to the client, keep only the hash):");
    println!("{token}");
    println!();
    println!("Config entry:");
    println!("[[clients]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"");
    Ok(())
}

async fn simulate(
    listen: SocketAddr,
    token: String,
    packages: Option<usize>,
    versions: usize,
    mut signals: Signals,
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
    signals.shutdown().await;
    handle.shutdown().await;
    Ok(())
}

/// The process' signal handlers, installed before anything else runs.
struct Signals {
    /// SIGTERM; `None` where it cannot be listened for (then Ctrl-C only).
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

// === impl Signals ===

impl Signals {
    /// Installs the SIGTERM and SIGHUP handlers. SIGHUP's stream is dropped at once: installing
    /// is what matters (tokio's handler then stays), so a SIGHUP before the reload watcher runs
    /// is ignored instead of killing the process; the watcher listens for later ones.
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let Err(error) = signal(SignalKind::hangup()) {
                eprintln!("packages-proxy: cannot handle SIGHUP: {error}");
            }
            let term = signal(SignalKind::terminate())
                .inspect_err(|error| {
                    eprintln!("packages-proxy: cannot handle SIGTERM (Ctrl-C only): {error}");
                })
                .ok();
            Self { term }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on SIGTERM or Ctrl-C (including one that arrived before this was called).
    async fn shutdown(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(term) => {
                        term.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = term => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339_with_offset;

    #[test]
    fn audit_times_take_any_rfc3339_offset() {
        let utc = rfc3339_with_offset("2026-12-01T03:00:00Z").unwrap();
        for same in [
            "2026-12-01T05:00:00+02:00",
            "2026-11-30T21:30:00-05:30",
            "2026-12-01T03:00:00+00:00",
        ] {
            assert_eq!(rfc3339_with_offset(same).unwrap(), utc, "{same}");
        }
        for bad in ["2026-12-01", "yesterday", "2026-12-01T05:00:00+2:00"] {
            assert!(rfc3339_with_offset(bad).is_err(), "{bad}");
        }
    }
}
