//! Helpers shared by the supervisor's process tests: a spec with test defaults, a
//! supervisor running the real `hoist shim`, and a guard that kills an instance's whole
//! tree when a test ends (passing or not).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hoist_supervisor::{logs, InstanceSpec, LogQuery, Signal, Supervisor, SupervisorConfig};

/// A generous deadline: the machine is shared and noisy; this only bounds a hung test.
pub const LONG: Duration = Duration::from_secs(30);

/// A spec for `command` with test defaults; logs and run files under `root`.
pub fn spec(root: &Path, instance: &str, command: &str) -> InstanceSpec {
    InstanceSpec {
        instance: instance.to_string(),
        app: "demo".into(),
        service: "web".into(),
        release: "r1".into(),
        command: command.to_string(),
        cwd: root.to_path_buf(),
        env: vec![
            ("PATH".into(), "/usr/bin:/bin".into()),
            ("GREETING".into(), "hello world".into()),
        ],
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(1),
        user: None,
        log_dir: root.join("logs"),
        log_max_bytes: 1 << 20,
        log_keep: 3,
    }
}

pub fn run_dir(root: &Path) -> PathBuf {
    root.join("run")
}

/// A supervisor whose shims are the real `hoist` binary.
pub fn supervisor(root: &Path) -> Supervisor {
    Supervisor::new(SupervisorConfig {
        shim_exe: hoist_testkit::hoist_bin(),
        run_dir: run_dir(root),
        handshake_timeout: hoist_supervisor::HANDSHAKE_TIMEOUT,
    })
    .expect("supervisor")
}

/// Kills an instance's tree and waits for it when dropped.
pub struct Guard(pub hoist_supervisor::Instance);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill_now();
        self.0.wait_stopped(LONG);
    }
}

/// The `seq N` numbers in a service's logs, in log order.
pub fn seqs(log_dir: &Path, service: &str) -> Vec<u64> {
    logs::read(log_dir, service, &LogQuery::default())
        .expect("read logs")
        .iter()
        .filter_map(|l| l.line.strip_prefix("seq ")?.parse().ok())
        .collect()
}

/// The process's `/proc/PID/status` field `name`.
pub fn status_field(pid: i32, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}:"))
            .map(|v| v.trim().to_string())
    })
}

/// On drop, kills every instance still running from `root`'s run dir, so a test that
/// fails half-way (after the "agent" that spawned them died) leaves nothing behind.
pub struct RunDirGuard(pub PathBuf);

impl Drop for RunDirGuard {
    fn drop(&mut self) {
        let Ok(adopted) = supervisor(&self.0).adopt() else {
            return;
        };
        for a in adopted {
            if let hoist_supervisor::Adopted::Running(inst) = a {
                let _ = inst.kill_now();
                inst.wait_stopped(LONG);
            }
        }
    }
}
