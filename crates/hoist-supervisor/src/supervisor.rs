//! The agent's handle on instances: spawn one under a shim, ask it to stop, kill it,
//! measure it, and re-adopt the shims a previous agent left running. Every signal goes
//! to a process only after its identity (pid + start time) was checked, so a reused pid
//! is never signalled. This module decides nothing about restarts (see `policy`) and
//! never touches the app's pipes (the shim holds them).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::error::{Result, SupervisorError};
use crate::procfs::{self, ProcessStats};
use crate::reaper::Ended;
use crate::record::{self, ExitInfo, IdentityRecord};
use crate::shim::ShimReport;
use crate::spec::{is_safe_name, InstanceSpec};

/// Where the shim executable is and where the shims keep their records.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The `hoist` binary (the agent passes `std::env::current_exe()`); it is run as
    /// `<shim_exe> shim --spec FILE`.
    pub shim_exe: PathBuf,
    /// Holds `<instance>.json` (identity), `<instance>.exit.json`, `<instance>.shim.log`.
    pub run_dir: PathBuf,
    /// How long a new shim may take to report that the app exists (or failed to start);
    /// past it the shim is killed and the start fails.
    pub handshake_timeout: Duration,
}

/// The default [`SupervisorConfig::handshake_timeout`]: generous, as the shim fsyncs its
/// identity record before it reports, and a busy disk can be slow.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns, stops and re-adopts instances. Cheap to share: it holds only paths.
#[derive(Debug, Clone)]
pub struct Supervisor {
    config: SupervisorConfig,
}

/// One instance, running or not, as known by its identity record.
#[derive(Debug, Clone)]
pub struct Instance {
    pub identity: IdentityRecord,
    run_dir: PathBuf,
    /// Raised when the shim ends (its pidfd turned readable, or the thread waiting for it
    /// saw it exit), so the agent's checks five times a second read a flag, not `/proc`.
    /// `None` where neither is available: then each check reads `/proc`.
    ended: Option<Arc<Ended>>,
}

/// The same instance: the same identity in the same run directory (how its end is
/// noticed is not part of it).
impl PartialEq for Instance {
    fn eq(&self, other: &Instance) -> bool {
        self.identity == other.identity && self.run_dir == other.run_dir
    }
}

impl Eq for Instance {}

/// What `adopt` found in the run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    /// The shim is alive and is the one that wrote the record.
    Running(Instance),
    /// The shim is gone. `exit` is its exit record, if it managed to write one.
    /// `orphan_killed` is set when the shim had died without ending the app, and the app
    /// (checked by identity and by its `HOIST_INSTANCE` marker) was killed.
    Exited {
        identity: IdentityRecord,
        exit: Option<ExitInfo>,
        orphan_killed: bool,
    },
}

impl Supervisor {
    /// A supervisor keeping its records in `config.run_dir` (created, mode 0700).
    pub fn new(mut config: SupervisorConfig) -> Result<Supervisor> {
        record::create_private_dir(&config.run_dir)?;
        // Absolute and canonical, as the shims put it in their apps' root marker.
        config.run_dir = fs::canonicalize(&config.run_dir)
            .map_err(|e| SupervisorError::io("resolve", &config.run_dir, e))?;
        Ok(Supervisor { config })
    }

    pub fn run_dir(&self) -> &Path {
        &self.config.run_dir
    }

    /// Starts `spec` under a new shim and returns once the app process exists. The shim
    /// is this process's child and is reaped by the reaper thread, so it never lingers as a
    /// zombie; it outlives this process if this process dies.
    pub fn spawn(&self, spec: &InstanceSpec) -> Result<Instance> {
        spec.validate()?;
        let run_dir = &self.config.run_dir;
        let id = &spec.instance;
        if let Some(old) =
            record::read::<IdentityRecord>(&record::identity_path(run_dir, id), "identity record")?
        {
            if old.shim.is_alive() {
                return Err(SupervisorError::AlreadyRunning {
                    instance: id.clone(),
                    pid: old.shim.pid,
                });
            }
            // A shim that died without recording an exit may have left its app (holding
            // the port this start needs): end it first, and keep its record (the only way
            // to find it) for as long as it cannot be ended.
            let exit_recorded = record::exit_path(run_dir, id).exists();
            if !exit_recorded && !end_orphan(&old, run_dir) {
                return Err(SupervisorError::AppSpawn {
                    instance: id.clone(),
                    message: format!(
                        "the previous app (pid {}) outlived its shim and could not be killed",
                        old.process.pid
                    ),
                });
            }
        }
        self.forget(id)?;
        let spec_path = record::spec_path(run_dir, id);
        record::write_atomic(&spec_path, spec)?;

        let shim_log_path = record::shim_log_path(run_dir, id);
        let shim_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&shim_log_path)
            .map_err(|e| SupervisorError::io("open", &shim_log_path, e))?;
        let exe = &self.config.shim_exe;
        let mut child = Command::new(exe)
            .arg("shim")
            .arg("--spec")
            .arg(&spec_path)
            // Nothing of the agent's environment (tokens, SSH_AUTH_SOCK) reaches the shim.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(|e| SupervisorError::ShimSpawn {
                instance: id.clone(),
                exe: exe.clone(),
                source: e,
            })?;

        let shim_pid = child.id();
        let line = child
            .stdout
            .take()
            .and_then(|out| read_report(out, self.config.handshake_timeout));
        if line.is_none() {
            // Hung or gone: a hung shim is killed (its app, if any, dies with it).
            let _ = kill(Pid::from_raw(shim_pid as i32), Signal::SIGKILL);
        }
        // From here the shim is on its own: reap it whenever it ends.
        let ended = crate::reaper::reap(child);
        // The shim has read the spec (or failed to); the secrets in it need not stay on disk.
        let _ = record::remove_if_exists(&spec_path);

        let report: Option<ShimReport> = line.and_then(|l| serde_json::from_str(l.trim()).ok());
        match report {
            Some(ShimReport {
                identity: Some(identity),
                ..
            }) => {
                tracing::info!(instance = %id, pid = identity.process.pid, shim = shim_pid, "instance spawned");
                Ok(Instance {
                    identity,
                    run_dir: run_dir.clone(),
                    ended,
                })
            }
            Some(ShimReport {
                error: Some(message),
                ..
            }) => Err(SupervisorError::AppSpawn {
                instance: id.clone(),
                message,
            }),
            _ => Err(SupervisorError::AppSpawn {
                instance: id.clone(),
                message: format!(
                    "the shim exited or did not report within {:?}; see `{}`",
                    self.config.handshake_timeout,
                    shim_log_path.display()
                ),
            }),
        }
    }

    /// Reads every identity record in the run directory and tells which instances still
    /// run (their shim has the recorded pid and start time) and which ended. A record whose
    /// pid now belongs to another process is reported as exited and that process is left
    /// alone. Apps whose shim died are killed, if they still carry their identity marker.
    pub fn adopt(&self) -> Result<Vec<Adopted>> {
        let dir = &self.config.run_dir;
        let entries =
            fs::read_dir(dir).map_err(|e| SupervisorError::io("read directory", dir, e))?;
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
            .filter(|stem| is_safe_name(stem))
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let path = record::identity_path(dir, &id);
            let identity = match record::read::<IdentityRecord>(&path, "identity record") {
                Ok(Some(identity)) if identity.instance == id => identity,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "skipping an unreadable identity record");
                    continue;
                }
            };
            if identity.shim.is_alive() {
                // Not our child: its pidfd tells when it ends (no `/proc` read per check).
                let ended = crate::reaper::watch(identity.shim);
                out.push(Adopted::Running(Instance {
                    identity,
                    run_dir: dir.clone(),
                    ended,
                }));
                continue;
            }
            let exit = record::read::<ExitInfo>(&record::exit_path(dir, &id), "exit record")
                .unwrap_or(None);
            let orphan_killed = exit.is_none() && kill_orphan(&identity, dir);
            if orphan_killed {
                // Gone before the record is forgotten and the instance started again.
                end_orphan(&identity, dir);
            }
            out.push(Adopted::Exited {
                identity,
                exit,
                orphan_killed,
            });
        }
        Ok(out)
    }

    /// The instance `instance` as its identity record describes it, running or not;
    /// `Ok(None)` if there is no record.
    pub fn instance(&self, instance: &str) -> Result<Option<Instance>> {
        let path = record::identity_path(&self.config.run_dir, instance);
        let identity = record::read::<IdentityRecord>(&path, "identity record")?;
        Ok(identity.map(|identity| Instance {
            identity,
            run_dir: self.config.run_dir.clone(),
            ended: None,
        }))
    }

    /// Removes the records of an instance that no longer runs (after the agent has taken
    /// note of its exit). Refuses while its shim is alive.
    pub fn forget(&self, instance: &str) -> Result<()> {
        let dir = &self.config.run_dir;
        if let Some(identity) = record::read::<IdentityRecord>(
            &record::identity_path(dir, instance),
            "identity record",
        )? {
            if identity.shim.is_alive() {
                return Err(SupervisorError::AlreadyRunning {
                    instance: instance.into(),
                    pid: identity.shim.pid,
                });
            }
        }
        for path in [
            record::identity_path(dir, instance),
            record::exit_path(dir, instance),
            record::spec_path(dir, instance),
            record::shim_log_path(dir, instance),
            record::drops_path(dir, instance),
        ] {
            record::remove_if_exists(&path)?;
        }
        Ok(())
    }
}

impl Instance {
    pub fn id(&self) -> &str {
        &self.identity.instance
    }

    /// The app's main process; it leads the instance's process group.
    pub fn app_pid(&self) -> i32 {
        self.identity.process.pid
    }

    pub fn shim_pid(&self) -> i32 {
        self.identity.shim.pid
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.identity.started_at
    }

    /// Log lines the shim has dropped so far (disk full, I/O errors).
    pub fn dropped_lines(&self) -> u64 {
        record::read_drops(&record::drops_path(&self.run_dir, self.id()))
    }

    /// Whether the instance's shim (and so the instance) is still running.
    pub fn is_running(&self) -> bool {
        match &self.ended {
            Some(ended) => !ended.get(),
            None => self.identity.shim.is_alive(),
        }
    }

    /// Whether the shim's end is signalled to this process (a pidfd, or a thread waiting
    /// for its own child) rather than read from `/proc` at each [`Instance::is_running`].
    pub fn end_is_signalled(&self) -> bool {
        self.ended.is_some()
    }

    /// How the instance ended; `Ok(None)` while it runs. A shim that died without
    /// writing its record (it was SIGKILLed) yields a record with neither code nor signal.
    pub fn exit_status(&self) -> Result<Option<ExitInfo>> {
        if self.is_running() {
            return Ok(None);
        }
        let recorded =
            record::read::<ExitInfo>(&record::exit_path(&self.run_dir, self.id()), "exit record")?;
        Ok(Some(recorded.unwrap_or(ExitInfo {
            code: None,
            signal: None,
            at: Utc::now(),
            stop_requested: false,
            killed: false,
            dropped_lines: 0,
        })))
    }

    /// Asks the shim to stop the instance: the stop signal to the app's group, then
    /// SIGKILL after `stop_timeout`. Returns at once; the shim completes the stop even if
    /// the caller dies. Stopping an instance that already ended does nothing.
    pub fn stop(&self) -> Result<()> {
        self.signal_shim(Signal::SIGTERM)
    }

    /// Asks the shim to SIGKILL the whole tree now. If the shim is gone but the app
    /// still runs under its identity, kills the app's group directly.
    pub fn kill_now(&self) -> Result<()> {
        if self.is_running() {
            return self.signal_shim(Signal::SIGUSR2);
        }
        kill_orphan(&self.identity, &self.run_dir);
        Ok(())
    }

    /// When the shim died without recording an exit (it was killed), kills what is left
    /// of the app and waits until none of it is left; true when nothing is left.
    pub fn end_orphan(&self) -> bool {
        if self.is_running() || record::exit_path(&self.run_dir, self.id()).exists() {
            return true;
        }
        end_orphan(&self.identity, &self.run_dir)
    }

    /// Waits until the instance has ended, or `timeout` passes; true if it ended.
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Memory, CPU and process count of the instance's whole tree: every descendant of
    /// its shim (escaped ones included), read from `/proc`. Zero once it ended.
    pub fn stats(&self) -> ProcessStats {
        self.stats_in(&procfs::all_processes())
    }

    /// As [`Instance::stats`], from a process table read once for many instances.
    pub fn stats_in(&self, table: &[procfs::Stat]) -> ProcessStats {
        if self.is_running() {
            return procfs::sum_stats(&procfs::descendants(self.shim_pid(), table));
        }
        ProcessStats::default()
    }

    fn signal_shim(&self, sig: Signal) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.shim_pid()), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(SupervisorError::Signal {
                instance: self.id().to_string(),
                what: "shim",
                pid: self.shim_pid(),
                source,
            }),
        }
    }
}

/// Reads the shim's one-line report, waiting at most `timeout` for it.
fn read_report(out: std::process::ChildStdout, timeout: Duration) -> Option<String> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        if reader.buffer().is_empty() {
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            let mut pfd = libc::pollfd {
                fd: reader.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on the stack, for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc == 0 || (rc < 0 && nix::errno::Errno::last() == nix::Error::EINTR) {
                continue;
            }
            if rc < 0 {
                return None;
            }
        }
        // The report is one short line written at once: read what is there.
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            return None;
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done || line.len() > 1 << 20 {
            return String::from_utf8(line).ok();
        }
    }
}

/// Kills what is left of an orphaned instance and waits (up to 10 s) until none of its
/// processes is left; true when none is.
fn end_orphan(identity: &IdentityRecord, run_dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        kill_orphan(identity, run_dir);
        if orphan_processes(identity, run_dir).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The live processes of an instance whose shim is gone: those carrying both its markers
/// (`HOIST_INSTANCE` = the instance, `HOIST_RUN_DIR` = this run directory) that started no
/// earlier than its app.
fn orphan_processes(identity: &IdentityRecord, run_dir: &Path) -> Vec<procfs::Stat> {
    let me = std::process::id() as i32;
    procfs::all_processes()
        .into_iter()
        .filter(|s| {
            s.pid != me
                && s.state != 'Z'
                && s.start_time + 1 >= identity.process.start_time
                && is_marked(s.pid, identity, run_dir)
        })
        .collect()
}

fn is_marked(pid: i32, identity: &IdentityRecord, run_dir: &Path) -> bool {
    procfs::environ_has(pid, crate::INSTANCE_ENV, &identity.instance)
        && procfs::environ_has(pid, crate::RUN_DIR_ENV, &run_dir.display().to_string())
}

/// Kills what is left of an instance whose shim is gone without recording an exit: the
/// app's group, if the app is still the recorded process (pid + start time) and carries its
/// markers (this instance, this run directory: never another root's), and every other
/// process carrying both markers that started no earlier than the app (descendants that
/// escaped the group, or whose leader already died). True if anything was killed.
fn kill_orphan(identity: &IdentityRecord, run_dir: &Path) -> bool {
    let p = identity.process;
    let mut killed = false;
    if p.is_alive() && is_marked(p.pid, identity, run_dir) {
        tracing::warn!(instance = %identity.instance, pid = p.pid, "killing an instance whose shim died");
        killed |= killpg(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok();
    }
    for s in orphan_processes(identity, run_dir) {
        tracing::warn!(instance = %identity.instance, pid = s.pid, "killing an escaped process of an instance whose shim died");
        killed |= kill(Pid::from_raw(s.pid), Signal::SIGKILL).is_ok();
    }
    killed
}
