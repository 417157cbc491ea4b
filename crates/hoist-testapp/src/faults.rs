//! The faults a release can have that do not depend on HTTP: crashing at start or later,
//! leaking memory, logging at a set rate, spawning a child, and the signal handling
//! (graceful or stubborn). Each background fault runs on its own OS thread so that it
//! keeps its pace even when the async runtime is busy, and never blocks the server.
//!
//! Nothing here serves requests or decides what a health check answers.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::cli::Faults;
use crate::out;

/// What the background faults expose to the rest of the app.
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// The last `seq <n>` printed by `--log-rate` (0 before the first).
    pub log_seq: Arc<AtomicU64>,
    /// The pid of the `--spawn-child` child.
    pub child_pid: Option<u32>,
}

/// Exits 1 after printing an import error when `--crash-at-start` is set.
pub fn crash_at_start(faults: &Faults) {
    if faults.crash_at_start {
        out::import_error();
        out::log("exiting with code 1: crash at start");
        std::process::exit(1);
    }
}

/// Starts every background fault the flags ask for.
pub fn start(faults: &Faults) -> anyhow::Result<Running> {
    let mut running = Running::default();
    if let Some(secs) = faults.crash_after {
        let code = faults.exit_code;
        let delay = seconds(secs)?;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            out::log(&format!("crashing after {secs}s with exit code {code}"));
            std::process::exit(code);
        });
    }
    if let Some(mib) = faults.leak_mib_per_sec {
        anyhow::ensure!(
            mib.is_finite() && mib > 0.0,
            "`--leak-mib-per-sec` must be positive, not `{mib}`"
        );
        out::log(&format!("leaking {mib} MiB/s"));
        std::thread::spawn(move || leak(mib));
    }
    if let Some(rate) = faults.log_rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "`--log-rate` must be positive, not `{rate}`"
        );
        let seq = running.log_seq.clone();
        std::thread::spawn(move || log_at_rate(rate, &seq));
    }
    if faults.spawn_child {
        running.child_pid = Some(spawn_child()?);
    }
    Ok(running)
}

/// A duration from a flag's seconds, refusing what `Duration` cannot hold.
pub fn seconds(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("`{secs}` is not a number of seconds"))
}

/// Starts `sleep 3600` in our process group (the default for a child), so only a kill of
/// the whole group ends it. A thread reaps it so that it never lingers as a zombie.
pub fn spawn_child() -> anyhow::Result<u32> {
    let mut child = Command::new("sleep")
        .arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start `sleep 3600`: {e}"))?;
    let pid = child.id();
    out::log(&format!("spawned child pid {pid}"));
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

fn leak(mib_per_sec: f64) {
    const MIB: f64 = 1024.0 * 1024.0;
    let start = Instant::now();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut leaked = 0usize;
    loop {
        // Allocate what the rate says is due by now, so a late wake-up catches up.
        let due = (start.elapsed().as_secs_f64() * mib_per_sec * MIB) as usize;
        if due > leaked {
            // A non-zero fill writes every page, so the memory counts in RSS at once.
            kept.push(vec![0x5a; due - leaked]);
            leaked = due;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_at_rate(lines_per_sec: f64, last: &AtomicU64) {
    let start = Instant::now();
    let pause = Duration::from_secs_f64((1.0 / lines_per_sec).min(0.01));
    let mut next = 1u64;
    let mut batch = String::new();
    loop {
        let due = (start.elapsed().as_secs_f64() * lines_per_sec) as u64;
        if due >= next {
            batch.clear();
            for n in next..=due {
                batch.push_str("seq ");
                batch.push_str(&n.to_string());
                batch.push('\n');
            }
            out::stdout(&batch);
            last.store(due, Ordering::Relaxed);
            next = due + 1;
        }
        std::thread::sleep(pause);
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so that a signal during a slow start is
/// not lost) and returns a receiver that turns `true` when the app should stop.
/// With `ignore_sigterm`, SIGTERM is logged and ignored; SIGINT still stops the app.
pub fn shutdown_signal(ignore_sigterm: bool) -> anyhow::Result<watch::Receiver<bool>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_sigterm {
                        out::log("sigterm received, ignored");
                        continue;
                    }
                    out::log("sigterm received");
                }
                _ = int.recv() => out::log("sigint received"),
            }
            let _ = tx.send(true);
            return;
        }
    });
    Ok(rx)
}

/// Resolves once `rx` says stop (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Sleeps for `--slow-start` unless asked to stop first; `Ok(false)` means stop now.
pub async fn slow_start(
    faults: &Faults,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<bool> {
    let Some(secs) = faults.slow_start else {
        return Ok(true);
    };
    let delay = seconds(secs)?;
    out::log(&format!("slow start: waiting {secs}s"));
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(true),
        _ = stopped(shutdown) => Ok(false),
    }
}
