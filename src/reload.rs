//! Config reload without a restart: on SIGHUP, or when the config or policy file changes, the
//! file is parsed and validated, and the clients and policy are swapped atomically. An invalid
//! file keeps the last good config in force; the reason is logged and counted.
//!
//! Only `[[clients]]` (and their quotas) and the policy rules take effect on reload; listener,
//! upstream, cache and mutation settings need a restart: a reload that changes them names them
//! in the log and counts in `packages_proxy_config_unapplied_total`. A reload does not read the
//! TLS certificate files (the listener reloads those itself), so a certificate mid-rotation
//! never holds up clients and policy.
//!
//! Files are compared by content every `interval` rather than watched with inotify: Kubernetes
//! ConfigMaps change by swapping symlinks, which content polling sees and path watches may not.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::{auth::Clients, config::Config, config::ConfigError, state::AppState};

/// Re-reads `path` and swaps clients and policy; on error nothing changes.
pub fn reload(state: &AppState, path: &Path) -> Result<(), ConfigError> {
    match Config::load_for_reload(path).and_then(|config| fits_the_running_audit_log(state, config))
    {
        Ok(config) => {
            let clients = Clients::new(
                &config.clients,
                Some(&state.clients.load()),
                state.config.replicas(),
            );
            state.clients.store(Arc::new(clients));
            config.policy.keep_budgets_of(&state.policy.load());
            state.policy.store(config.policy.clone());
            state.credentials_generation.fetch_add(1, Ordering::Release);
            state.reloads_ok.fetch_add(1, Ordering::Relaxed);
            if config.mutations.audit_log != state.config.mutations.audit_log {
                tracing::warn!(
                    running = ?state.config.mutations.audit_log,
                    new = ?config.mutations.audit_log,
                    "mutations.audit_log changed: records keep going to the running one until a restart"
                );
            }
            let unapplied = needs_restart(&state.config, &config);
            if !unapplied.is_empty() {
                crate::metrics::reload_unapplied();
                tracing::warn!(
                    settings = %unapplied.join(", "),
                    "these settings changed in the file but are not applied until a restart"
                );
            }
            tracing::info!(
                clients = config.clients.len(),
                policy = ?config.policy,
                "config reloaded (clients and policy; other settings need a restart)"
            );
            Ok(())
        }
        Err(error) => {
            state.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %crate::error::DisplayChain(&error), "config reload rejected; the last good config stays in force");
            Err(error)
        }
    }
}

/// The settings whose change a reload cannot apply (everything but clients, quotas and the
/// policy), named for the log. The TLS files themselves reload on their own.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let (old_server, new_server) = (&running.server, &new.server);
    let mut checks: Vec<(&'static str, bool)> = vec![
        ("server.listen", old_server.listen != new_server.listen),
        (
            "server.admin_listen",
            old_server.admin_listen != new_server.admin_listen,
        ),
        (
            "server.public_url",
            old_server.public_url != new_server.public_url,
        ),
        (
            "server.tls",
            old_server
                .tls
                .as_ref()
                .map(|t| (&t.cert_file, &t.key_file, &t.client_ca_file))
                != new_server
                    .tls
                    .as_ref()
                    .map(|t| (&t.cert_file, &t.key_file, &t.client_ca_file)),
        ),
    ];
    let server_limits = |s: &crate::config::ServerConfig| {
        format!(
            "{} {} {:?} {:?} {:?} {:?} {} {} {}",
            s.max_in_flight,
            s.max_connections,
            s.drain_timeout,
            s.header_read_timeout,
            s.idle_timeout,
            s.shutdown_delay,
            s.max_uri_bytes,
            s.max_header_bytes,
            s.max_headers
        )
    };
    checks.push((
        "server (limits and timeouts)",
        server_limits(old_server) != server_limits(new_server),
    ));
    let debug =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    checks.push(("upstream", debug(&running.upstream, &new.upstream)));
    checks.push(("cache", debug(&running.cache, &new.cache)));
    checks.push((
        "mutations (pace, queue)",
        running.mutations.pace != new.mutations.pace
            || running.mutations.max_queue_wait != new.mutations.max_queue_wait
            || running.mutations.max_queue_per_client != new.mutations.max_queue_per_client,
    ));
    checks.push(("shared", debug(&running.shared, &new.shared)));
    checks.push(("registry", debug(&running.registry, &new.registry)));
    checks.push(("log", debug(&running.log, &new.log)));
    for (name, differs) in checks {
        if differs {
            changed.push(name);
        }
    }
    changed
}

/// The audit log is opened at start and stays (it needs a restart): a reload may not allow
/// destructive calls to a process started without one, however the new file sets
/// `mutations.audit_log`. Such a reload is rejected and the running policy stays.
fn fits_the_running_audit_log(state: &AppState, config: Config) -> Result<Config, ConfigError> {
    if config.policy.has_allow_rules() && !state.audit.is_enabled() {
        return Err(ConfigError::Invalid {
            field: "mutations.audit_log".to_owned(),
            reason: "this process was started without an audit log, and allow rules need one; \
                     restart it with the new config"
                .to_owned(),
        });
    }
    Ok(config)
}

/// Watches for SIGHUP and for changes of the config (and policy) file.
pub fn spawn(state: Arc<AppState>, path: PathBuf, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = fingerprint(&path, state.config.policy_file.as_deref());
        let mut hangup = hangup_signal();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = next_hangup(&mut hangup) => true,
            };
            let policy_file = Config::load(&path).ok().and_then(|c| c.policy_file);
            let now = fingerprint(&path, policy_file.as_deref());
            if forced || now != seen {
                seen = now;
                let _ = reload(&state, &path);
            }
        }
    })
}

/// A hash of the files' contents (`None` parts for unreadable files).
fn fingerprint(config: &Path, policy: Option<&Path>) -> u64 {
    let mut hasher = DefaultHasher::new();
    std::fs::read(config).ok().hash(&mut hasher);
    policy.map(std::fs::read).map(Result::ok).hash(&mut hasher);
    hasher.finish()
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(signal: &mut Hangup) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}
