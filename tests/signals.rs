//! Signals at any moment of `serve`'s life, sent to the real binary.
//!
//! Regression guarded: SIGHUP in the first milliseconds after `serve` started killed the process
//! (exit 129, which systemd's `Restart=on-failure` does not restart), and SIGTERM during start
//! was a kill rather than a clean exit. The handlers are now the first thing `main` installs.
//!
//! To hold the process in the middle of its start without racing it, its org token file is a
//! FIFO: reading it blocks until the test writes the token. The handlers must already be
//! installed by then (`SigCgt` in `/proc/<pid>/status`); the test signals the blocked process,
//! releases it, and keeps signalling through the rest of the start.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

#[path = "support/e2e.rs"]
mod e2e;

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use e2e::{BIN, Proc, TempDir, client, free_ports, send, token_pair};
use http::{Method, StatusCode};

/// Bit n-1 of `SigCgt` is signal n.
const SIGHUP_BIT: u64 = 1;
const SIGTERM_BIT: u64 = 1 << (15 - 1);

/// A `serve` process blocked on reading its token from a FIFO.
struct Starting {
    proc: Proc,
    port: u16,
    fifo: PathBuf,
}

fn start(dir: &TempDir, name: &str) -> Starting {
    let port = free_ports(1)[0];
    let (_, hash) = token_pair();
    let fifo = dir.path(&format!("{name}.token"));
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let path = dir.path(&format!("{name}.toml"));
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [upstream]\nbase_url = \"http://127.0.0.1:9\"\nallow_plain_http = true\n\
         token_file = \"{}\"\nowners = [\"acme\"]\n\
         [[clients]]\nname = \"team-a\"\ntoken_sha256 = \"{hash}\"\n",
        fifo.display()
    );
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&path);
    let proc = Proc::spawn(name, cmd, &dir.path(&format!("{name}.log")));
    Starting { proc, port, fifo }
}

/// Writes a fake org token into the FIFO (blocks until the process opens it) from a thread.
fn release(fifo: &Path) -> std::thread::JoinHandle<()> {
    let fifo = fifo.to_owned();
    std::thread::spawn(move || std::fs::write(fifo, token_pair().0).unwrap())
}

/// The signals the process catches (`SigCgt`), or `None` once it is gone.
fn caught(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("SigCgt:"))?;
    u64::from_str_radix(line.trim_start_matches("SigCgt:").trim(), 16).ok()
}

/// Polls until the process catches SIGHUP and SIGTERM; panics past the deadline or if it exits.
/// The process cannot get past its token file, so without early handlers this never succeeds.
async fn wait_handlers(proc: &mut Proc) {
    let bits = SIGHUP_BIT | SIGTERM_BIT;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(proc.try_exit().is_none(), "exited: {}", proc.log_text());
        if caught(proc.pid()).is_some_and(|c| c & bits == bits) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no SIGHUP/SIGTERM handler while start is held at the token file"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn signal(proc: &mut Proc, name: &str, round: usize) {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(proc.pid().to_string())
        .status()
        .unwrap();
    if let Some(status) = proc.try_exit() {
        panic!(
            "round {round}: exited with {status:?} (signal {:?}) after SIG{name}: {}",
            status.signal(),
            proc.log_text()
        );
    }
}

async fn ready(port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/readyz");
    matches!(
        send(&client(), Method::GET, &url, "", &[]).await,
        Ok((StatusCode::OK, _))
    )
}

#[tokio::test]
async fn sighup_in_a_loop_during_start_never_kills_the_process() {
    let dir = TempDir::new("signals-hup");
    for round in 0..3 {
        let Starting {
            mut proc,
            port,
            fifo,
        } = start(&dir, &format!("hup{round}"));
        wait_handlers(&mut proc).await;
        for _ in 0..10 {
            signal(&mut proc, "HUP", round);
        }
        let writer = release(&fifo);
        // Through the rest of the start (token, bind, state) and past readiness.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready(port).await {
            signal(&mut proc, "HUP", round);
            assert!(
                Instant::now() < deadline,
                "never ready: {}",
                proc.log_text()
            );
        }
        writer.join().unwrap();
        for _ in 0..10 {
            signal(&mut proc, "HUP", round);
        }
        assert!(
            ready(port).await,
            "round {round}: not serving after SIGHUPs"
        );
        proc.terminate();
        let status = proc.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "round {round}: SIGTERM exit {status:?}");
    }
}

#[tokio::test]
async fn sigterm_during_start_is_a_clean_exit() {
    let dir = TempDir::new("signals-term");
    let Starting { mut proc, fifo, .. } = start(&dir, "term");
    wait_handlers(&mut proc).await;
    signal(&mut proc, "TERM", 0);
    let writer = release(&fifo);
    let status = proc.wait_exit(Duration::from_secs(10)).await;
    writer.join().unwrap();
    assert!(
        status.success(),
        "{status:?} (signal {:?}): {}",
        status.signal(),
        proc.log_text()
    );
}

// The README's first command must stop the way a terminal, `timeout` or `docker stop` stops it.
// It caught SIGTERM (main installs the handler for every command) and waited for Ctrl-C only,
// so SIGTERM was swallowed and the demo ran on.
#[tokio::test]
async fn the_demo_stops_cleanly_on_sigterm() {
    let dir = TempDir::new("signals-demo");
    let port = free_ports(1)[0];
    let mut cmd = Command::new(BIN);
    cmd.arg("demo")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    let mut proc = Proc::spawn("demo", cmd, &dir.path("demo.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(port).await {
        assert!(proc.try_exit().is_none(), "exited: {}", proc.log_text());
        assert!(Instant::now() < deadline, "the demo never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proc.terminate();
    let status = proc.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "{status:?} (signal {:?}): {}",
        status.signal(),
        proc.log_text()
    );
}
