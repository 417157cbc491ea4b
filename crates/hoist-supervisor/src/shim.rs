//! The per-instance shim (`hoist shim --spec FILE`): a small process between the agent and
//! one app instance. It leaves the agent's session (so Ctrl-C to a foreground agent never
//! reaches the app), becomes a child subreaper (so descendants that double-fork away are
//! re-parented to it, reaped, and killed at the end), starts the app in its own process
//! group with exactly the given environment, and holds the app's stdout and stderr pipes,
//! writing every line to the instance's log. Because the shim, not the agent, holds the
//! pipes, the agent can die and come back without the app blocking or a line being lost.
//!
//! Protocol with the agent: one JSON line on the shim's stdout once the app exists (or it
//! failed to start); the identity record in the run dir; SIGTERM asks for a graceful stop
//! (stop signal to the group, `stop_timeout`, then SIGKILL to the group and every
//! descendant); SIGUSR2 asks to kill at once. On the app's exit the shim kills leftovers,
//! drains the pipes, writes the exit record and exits. It never restarts the app: restarts
//! are the agent's decision.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::signal::{kill, killpg, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::creds::Credentials;
use crate::error::{Result, SupervisorError};
use crate::logfile::LogWriter;
use crate::procfs::{self, ProcessId};
use crate::record::{self, ExitInfo, IdentityRecord};
use crate::spec::InstanceSpec;

/// The one line a shim writes on its stdout to the agent that started it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ShimReport {
    pub identity: Option<IdentityRecord>,
    pub error: Option<String>,
}

/// How often the shim re-checks the process table while a stop is in progress (a group
/// member may die without being the shim's child, so no SIGCHLD tells about it).
const STOP_TICK: Duration = Duration::from_millis(50);

/// How long the shim keeps draining pipes held open by processes it could not kill.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The shim's whole program (`hoist shim --spec FILE`, or the small `hoist-shim` binary
/// with the same arguments): sets up its diagnostics on stderr, runs, exits with the code.
/// `None` if `argv` is not `[_, "shim", "--spec", FILE]` (or `--spec=FILE`).
pub fn main(argv: &[std::ffi::OsString]) -> Option<std::convert::Infallible> {
    let spec = match argv {
        [_, cmd, flag, spec] if cmd == "shim" && flag == "--spec" => std::path::PathBuf::from(spec),
        [_, cmd, flag] if cmd == "shim" => {
            std::path::PathBuf::from(flag.to_str()?.strip_prefix("--spec=")?)
        }
        _ => return None,
    };
    // stderr is `<run_dir>/<instance>.shim.log`, opened by the supervisor, often on the
    // disk the app's logs fill: a failed diagnostic is dropped, never a panic (tracing's
    // own error report would `eprintln!`, which panics when stderr cannot be written, and
    // took the log pumps down with it). A fixed level, not an `EnvFilter`: its parser and
    // tables would cost every shim memory.
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Diagnostics)
        .log_internal_errors(false)
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
    let code = run(&spec, std::io::stdout());
    std::process::exit(code)
}

/// The shim's stderr, with write errors ignored.
struct Diagnostics;

impl Write for Diagnostics {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the shim for the spec at `spec_path`, reporting start-up to `report` (the shim's
/// stdout). Returns the shim's exit code: 0 once the app ran and its exit was recorded,
/// 1 when the app could not be started.
pub fn run(spec_path: &Path, mut report: impl Write) -> i32 {
    let started = match start(spec_path) {
        Ok(s) => s,
        Err(e) => {
            let msg = crate::error_chain(&e);
            tracing::error!(spec = %spec_path.display(), error = %msg, "shim failed to start the app");
            let _ = send(
                &mut report,
                &ShimReport {
                    identity: None,
                    error: Some(msg),
                },
            );
            return 1;
        }
    };
    let _ = send(
        &mut report,
        &ShimReport {
            identity: Some(started.identity.clone()),
            error: None,
        },
    );
    // The agent may be gone already, or go at any moment: nothing more is said to it.
    drop(report);
    supervise(started);
    0
}

fn send(out: &mut impl Write, report: &ShimReport) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

struct Started {
    spec: InstanceSpec,
    run_dir: std::path::PathBuf,
    identity: IdentityRecord,
    signals: SigSet,
    writer: Arc<Mutex<LogWriter>>,
    pumps: Vec<thread::JoinHandle<()>>,
}

fn start(spec_path: &Path) -> Result<Started> {
    let spec: InstanceSpec = record::read(spec_path, "instance spec")?.ok_or_else(|| {
        SupervisorError::io("read", spec_path, std::io::ErrorKind::NotFound.into())
    })?;
    spec.validate()?;
    let instance = spec.instance.clone();
    let setup = |step: &'static str| {
        let instance = instance.clone();
        move |source| SupervisorError::ShimSetup {
            instance,
            step,
            source,
        }
    };
    let parent = spec_path.parent().unwrap_or(Path::new("/"));
    // Absolute, as it becomes the app's root marker and the shim moves to `/`.
    let run_dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());

    // setsid fails for a process group leader; a shim started as a session leader (by
    // hand) is where it should be anyway.
    if let Err(e) = nix::unistd::setsid() {
        if nix::unistd::getsid(None) != Ok(nix::unistd::getpid()) {
            return Err(setup("leave the agent's session")(e));
        }
    }
    nix::sys::prctl::set_child_subreaper(true).map_err(setup("become a child subreaper"))?;
    // One malloc arena for the shim's few threads: a per-thread arena each would add its
    // own dirty pages to every shim.
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let _ = std::env::set_current_dir("/");
    mark_inherited_fds_cloexec();

    // Block the signals the main loop waits for before any thread exists, so every thread
    // inherits the mask and they are only ever taken by `sigwait` (the app's mask is reset
    // in `pre_exec` below).
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
        Signal::SIGUSR2,
        Signal::SIGALRM,
    ] {
        signals.add(s);
    }
    signals.thread_block().map_err(setup("block signals"))?;
    // An agent started under `nohup` or from a background job has signals ignored, and
    // ignored signals survive exec: restore the defaults so the app can be stopped.
    for s in signals.iter().chain([Signal::SIGUSR1]) {
        let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
        // SAFETY: installing SIG_DFL runs none of our code in signal context.
        unsafe { sigaction(s, &default) }.map_err(setup("reset signal dispositions"))?;
    }

    let creds = match &spec.user {
        Some(name) => Some(credentials(&spec.instance, name)?),
        None => None,
    };

    // The run directory in the app's environment marks its processes as this root's, so
    // recovery never mistakes another agent's instance of the same id for its own.
    let mut env = spec.app_env();
    env.push((
        crate::RUN_DIR_ENV.to_string(),
        run_dir.display().to_string(),
    ));
    // A command without shell syntax is executed directly: one process, whose pid is the
    // app's. Anything else goes through `/bin/sh -c`.
    let (program, args) = match direct_argv(&spec.command) {
        Some(mut argv) => (argv.remove(0), argv),
        None => (
            "/bin/sh".to_string(),
            vec!["-c".to_string(), spec.command.clone()],
        ),
    };
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let shim_pid = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec. It only makes raw syscalls
    // (sigprocmask, setgroups, setgid, setuid, prctl, getppid) on data prepared before the
    // fork and allocates nothing; the shim is single-threaded here (the pumps start later).
    unsafe {
        cmd.pre_exec(move || {
            // The shim's blocked signals would otherwise be inherited: an app with SIGTERM
            // blocked could never stop gracefully. (Command does not reset the mask.)
            SigSet::empty().thread_set_mask()?;
            if let Some(creds) = &creds {
                creds.apply()?;
            }
            // The app never outlives its shim unsupervised: the shim's death (SIGKILL
            // included) kills it. Set after the credentials change, which clears it; and
            // if the shim is already gone, do not start at all.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != shim_pid {
                return Err(std::io::Error::other("the shim died during the start"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| SupervisorError::AppSpawn {
        instance: spec.instance.clone(),
        message: format!("cannot run `{program}` in `{}`: {e}", spec.cwd.display()),
    })?;
    let app_pid = child.id() as i32;
    // Not reaped yet, so its /proc entry exists even if it already exited.
    let process = ProcessId::of(app_pid).unwrap_or(ProcessId {
        pid: app_pid,
        start_time: 0,
    });
    let shim = ProcessId::of(nix::unistd::getpid().as_raw()).unwrap_or(ProcessId {
        pid: nix::unistd::getpid().as_raw(),
        start_time: 0,
    });
    let identity = IdentityRecord {
        instance: spec.instance.clone(),
        app: spec.app.clone(),
        service: spec.service.clone(),
        release: spec.release.clone(),
        shim,
        process,
        started_at: Utc::now(),
    };

    let writer = Arc::new(Mutex::new(
        LogWriter::new(
            spec.log_path(),
            &spec.instance,
            spec.log_max_bytes,
            spec.log_keep,
        )
        .with_drop_counter(&record::drops_path(&run_dir, &spec.instance)),
    ));
    let pipes: Vec<(&'static str, Box<dyn Read + Send>)> = [
        child
            .stdout
            .take()
            .map(|p| ("stdout", Box::new(p) as Box<dyn Read + Send>)),
        child
            .stderr
            .take()
            .map(|p| ("stderr", Box::new(p) as Box<dyn Read + Send>)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut pumps = Vec::new();
    let mut started: Result<()> = Ok(());
    for (stream, src) in pipes {
        match pump(src, stream, writer.clone()) {
            Ok(handle) => pumps.push(handle),
            Err(e) => {
                started = Err(SupervisorError::AppSpawn {
                    instance: spec.instance.clone(),
                    message: format!("cannot start a log thread: {e}"),
                });
                break;
            }
        }
    }
    // Written after the pumps run so that a slow disk never holds the app's pipes.
    let started = started.and_then(|()| {
        record::write_atomic(&record::identity_path(&run_dir, &spec.instance), &identity)
    });
    if let Err(e) = started {
        // Without its pipes drained or its record written, the instance could never be
        // logged or adopted: end it rather than leave a process nobody can find.
        let mut status = None;
        kill_tree(nix::unistd::getpid(), Pid::from_raw(app_pid), &mut status);
        return Err(e);
    }
    tracing::info!(instance = %spec.instance, pid = app_pid, "app started");
    Ok(Started {
        spec,
        run_dir,
        identity,
        signals,
        writer,
        pumps,
    })
}

/// Copies one pipe into the log, a line at a time, until every writer has closed it.
fn pump(
    mut src: impl Read + Send + 'static,
    stream: &'static str,
    writer: Arc<Mutex<LogWriter>>,
) -> std::io::Result<thread::JoinHandle<()>> {
    /// A line without a newline is flushed once it grows this long.
    const MAX_PENDING: usize = 64 * 1024;
    thread::Builder::new()
        .name(format!("pump-{stream}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            // Small reads: a pipe holds 64 KiB, but a shim per instance keeps its buffers
            // for life, and a long line is assembled in `pending` anyway.
            let mut buf = vec![0u8; 8 * 1024];
            let mut pending: Vec<u8> = Vec::new();
            let flush = |bytes: &[u8]| {
                let lines: Vec<&[u8]> = bytes
                    .split(|b| *b == b'\n')
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                    .collect();
                // Whatever goes wrong while writing (a full disk, a panic in a diagnostic),
                // this thread goes on draining the pipe: an undrained pipe blocks the app.
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .write_lines(stream, &lines, Utc::now());
                }));
                if written.is_err() {
                    writer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .count_dropped(lines.len() as u64);
                }
            };
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!(stream, error = %e, "reading the app's output failed");
                        break;
                    }
                };
                pending.extend_from_slice(&buf[..n]);
                if let Some(last) = pending.iter().rposition(|b| *b == b'\n') {
                    flush(&pending[..last]);
                    pending.drain(..=last);
                }
                if pending.len() >= MAX_PENDING {
                    flush(&pending);
                    pending.clear();
                }
            }
            if !pending.is_empty() {
                flush(&pending);
            }
        })
}

/// Waits for the app to exit or a stop request, ends the whole tree, records the exit.
fn supervise(started: Started) {
    let Started {
        spec,
        run_dir,
        identity,
        signals,
        writer,
        pumps,
    } = started;
    let me = nix::unistd::getpid();
    let app = Pid::from_raw(identity.process.pid);
    let mut status: Option<WaitStatus> = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut killed = false;
    let ticking = Arc::new(AtomicBool::new(false));

    loop {
        reap(app, &mut status);
        // On its own exit the app's leftovers are killed at once; during a stop, everything
        // that got the stop signal may finish until the deadline.
        if status.is_some() && (stop_deadline.is_none() || tree_empty(me)) {
            break;
        }
        if stop_deadline.is_some_and(|d| Instant::now() >= d) {
            killed = true;
            break;
        }
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(e) => {
                tracing::error!(error = %e, "sigwait failed; stopping the instance");
                killed = true;
                break;
            }
        };
        match sig {
            Signal::SIGCHLD | Signal::SIGALRM => {}
            Signal::SIGUSR2 => {
                tracing::info!(instance = %spec.instance, "kill requested");
                killed = true;
                break;
            }
            _ if stop_deadline.is_none() => {
                tracing::info!(instance = %spec.instance, signal = %sig, "stop requested");
                stop_deadline = Some(Instant::now() + spec.stop_timeout);
                signal_tree(me, app, spec.stop_signal);
                if let Err(e) = start_ticker(me, ticking.clone()) {
                    // Without a ticker the deadline could pass unnoticed: kill now instead.
                    tracing::error!(error = %e, "cannot time the stop; killing at once");
                    killed = true;
                    break;
                }
            }
            _ => {}
        }
    }
    ticking.store(false, Ordering::Relaxed);
    if killed {
        tracing::warn!(instance = %spec.instance, "killing the process group");
    }
    kill_tree(me, app, &mut status);

    // Every writer of the pipes is dead now, unless something could not be killed: then
    // give up on the last lines rather than hang forever.
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        for p in pumps {
            let _ = p.join();
        }
        let _ = done_tx.send(());
    });
    if done_rx.recv_timeout(DRAIN_TIMEOUT).is_err() {
        tracing::warn!(instance = %spec.instance, "log pipes still open after the tree was killed");
    }

    let (code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig.as_str().to_string())),
        _ => (None, None),
    };
    let info = ExitInfo {
        code,
        signal,
        at: Utc::now(),
        stop_requested: stop_deadline.is_some(),
        killed,
        dropped_lines: writer.lock().unwrap_or_else(|p| p.into_inner()).dropped(),
    };
    if let Err(e) = record::write_atomic(&record::exit_path(&run_dir, &spec.instance), &info) {
        tracing::error!(error = %crate::error_chain(&e), "cannot write the exit record");
    }
    tracing::info!(instance = %spec.instance, ?code, signal = ?info.signal, "instance exited");
}

/// Words a command may start with that only a shell understands.
const SHELL_WORDS: &[&str] = &[
    "exec", "cd", "export", "set", "unset", "eval", "if", "for", "while", "until", "case", "!",
    ".", "source", "trap", "ulimit", "umask", "wait", "command", "builtin", "alias", "exit",
    "return", "shift", "read", "readonly", "local", "getopts", "hash", "type", "times", "jobs",
    "fg", "bg",
];

/// The argv of `command` when it is a simple command a shell would run unchanged: words,
/// quotes and backslashes only. `None` when it has any shell syntax (expansions,
/// redirections, pipes, lists, globs, assignments, builtins), which needs `/bin/sh -c`.
pub fn direct_argv(command: &str) -> Option<Vec<String>> {
    if command
        .chars()
        .any(|c| ";&|<>()$`*?[]{}~#\n\r".contains(c) || (c.is_control() && c != '\t'))
    {
        return None;
    }
    let argv = shlex::split(command)?;
    let first = argv.first()?;
    if first.is_empty() || first.contains('=') || SHELL_WORDS.contains(&first.as_str()) {
        return None;
    }
    Some(argv)
}

/// Wakes the main loop every [`STOP_TICK`] while a stop is in progress.
fn start_ticker(me: Pid, ticking: Arc<AtomicBool>) -> std::io::Result<()> {
    ticking.store(true, Ordering::Relaxed);
    thread::Builder::new()
        .name("stop-tick".into())
        .stack_size(32 * 1024)
        .spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                thread::sleep(STOP_TICK);
                let _ = kill(me, Signal::SIGALRM);
            }
        })
        .map(drop)
}

/// Reaps every exited child (the app and re-parented descendants alike: no zombies),
/// keeping the app's status.
fn reap(app: Pid, status: &mut Option<WaitStatus>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => {
                if s.pid() == Some(app)
                    && matches!(s, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                {
                    *status = Some(s);
                }
            }
        }
    }
}

/// Whether no live process is left below the shim (the app's group and escapees alike).
fn tree_empty(me: Pid) -> bool {
    procfs::descendants(me.as_raw(), &procfs::all_processes())
        .iter()
        .all(|p| p.state == 'Z')
}

/// Sends `sig` to the app's group and to every descendant that left it, so escaped
/// workers get the same chance to stop gracefully.
fn signal_tree(me: Pid, app: Pid, sig: Signal) {
    let _ = killpg(app, sig);
    for p in procfs::descendants(me.as_raw(), &procfs::all_processes()) {
        if p.pgid != app.as_raw() && p.state != 'Z' {
            let _ = kill(Pid::from_raw(p.pid), sig);
        }
    }
}

/// SIGKILLs the app's group and every descendant of the shim until none is left. A
/// process forking while it is killed leaves a child re-parented to the shim, hence rounds.
fn kill_tree(me: Pid, app: Pid, status: &mut Option<WaitStatus>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        reap(app, status);
        let table = procfs::all_processes();
        let mut targets = procfs::descendants(me.as_raw(), &table);
        targets.extend(procfs::group_members(app.as_raw(), &table));
        targets.retain(|s| s.state != 'Z');
        if targets.is_empty() {
            return;
        }
        let _ = killpg(app, Signal::SIGKILL);
        for t in &targets {
            let _ = kill(Pid::from_raw(t.pid), Signal::SIGKILL);
        }
        if Instant::now() >= deadline {
            let pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();
            tracing::error!(?pids, "processes survived SIGKILL");
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Marks every inherited descriptor above stderr close-on-exec, so the app gets only
/// 0, 1 and 2 whatever the agent left open.
fn mark_inherited_fds_cloexec() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it
    // touches no memory. Std's descriptors are close-on-exec already, so nothing changes
    // for them.
    let rc = unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "close_range failed");
    }
}

fn credentials(instance: &str, name: &str) -> Result<Credentials> {
    Credentials::of(name).ok_or_else(|| SupervisorError::UnknownUser {
        instance: instance.to_string(),
        user: name.to_string(),
    })
}
