//! Running instances: spawn each under a small shim, stop it with a signal, a timeout and
//! SIGKILL, re-adopt shims after an agent restart, capture logs, and the pure restart
//! rules (backoff, crash loops, memory limit). The agent composes these; this crate knows
//! nothing of releases, routes or the agent's state, and never restarts by itself.
//!
//! Map: `spec` (what to run) → `supervisor` (agent side: spawn, stop, adopt, stats) →
//! `shim` (the per-instance process: session, subreaper, pipes, stop) → `logfile` (the
//! shim's log writer) and `logs` (reading them back); `record` holds the run-dir files,
//! `procfs` the `/proc` readers, `policy` the restart maths.

pub mod creds;
mod error;
pub mod logfile;
pub mod logs;
pub mod policy;
pub mod procfs;
mod reaper;
pub mod record;
mod rfc3339;
pub mod shim;
pub mod spec;
mod supervisor;

pub use error::{Result, SupervisorError};
pub use logs::{Follower, LogLine, LogQuery};
pub use nix::sys::signal::Signal;
pub use policy::{
    jittered, memory_exceeded, Backoff, CrashLoop, CrashLoopDetector, RestartTracker,
};
pub use procfs::{ProcessId, ProcessStats};
pub use record::{ExitInfo, IdentityRecord};
pub use spec::InstanceSpec;
pub use supervisor::{Adopted, Instance, Supervisor, SupervisorConfig, HANDSHAKE_TIMEOUT};

/// The variable every instance gets with its instance id (design §5); adoption also
/// checks it in `/proc/PID/environ` before killing an orphan.
pub const INSTANCE_ENV: &str = "HOIST_INSTANCE";

/// The variable every instance gets with its shim's run directory (absolute): with
/// [`INSTANCE_ENV`], it marks a process as this root's instance, so an agent never
/// signals the same-named instance of an agent on another root.
pub const RUN_DIR_ENV: &str = "HOIST_RUN_DIR";

/// An error and its sources on one line, for logs and reports.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
