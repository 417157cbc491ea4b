//! What several commands share: where the agent lives, a runtime for async calls, and
//! turning the agent client's errors into messages with hints.

use std::path::PathBuf;

use hoist_client::{Client, ClientError};

use crate::exit::{with_exit, with_hint, Exit};

/// The agent's root when none is given: system-wide for root, per-user otherwise.
pub fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("HOIST_ROOT") {
        return PathBuf::from(root);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/hoist");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("hoist")
}

/// The agent's socket: `HOIST_SOCKET`, else the default place for this user.
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("HOIST_SOCKET") {
        return PathBuf::from(s);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/hoist/agent.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("hoist/agent.sock"),
        None => default_root().join("agent.sock"),
    }
}

/// A client for the agent every command talks to.
pub fn client() -> Client {
    Client::new(&default_socket())
}

/// A small runtime for one command's calls to the agent.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can always be built")
        .block_on(fut)
}

/// The agent client's error as the user should see it.
pub fn agent_error(err: ClientError) -> anyhow::Error {
    match (&err, err.hint().map(str::to_string)) {
        // A request the agent could not understand is a usage error; a refusal (a lock
        // held, a release missing) is a failed operation that changed nothing.
        (ClientError::Api(_, status), hint) if *status == hyper::StatusCode::BAD_REQUEST => {
            let e = with_exit(Exit::Usage, anyhow::anyhow!("{err}"));
            match hint {
                Some(h) => with_hint(e, h),
                None => e,
            }
        }
        (_, Some(hint)) => with_hint(anyhow::anyhow!("{err}"), hint),
        (_, None) => anyhow::anyhow!("{err}"),
    }
}

/// `user@host`, for the history.
pub fn actor() -> String {
    let uid = nix::unistd::getuid();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| uid.to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{user}@{host}")
}

/// A size for people: `512 B`, `3.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
