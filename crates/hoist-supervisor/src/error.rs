//! The supervisor's error type: every variant names the instance, path or process it is
//! about, so the agent can report it without adding context. No I/O happens here.

use std::path::PathBuf;

/// Everything that can go wrong while spawning, stopping, adopting or logging instances.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid instance id `{instance}`: use letters, digits, `-` and `_` only")]
    InvalidInstanceId { instance: String },

    #[error("invalid service name `{service}`: use letters, digits, `-` and `_` only")]
    InvalidServiceName { service: String },

    #[error("instance `{instance}` is already running (shim pid {pid})")]
    AlreadyRunning { instance: String, pid: i32 },

    #[error("unknown user `{user}` for instance `{instance}`")]
    UnknownUser { instance: String, user: String },

    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("malformed {what} `{}`", path.display())]
    Malformed {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot start the shim `{}` for instance `{instance}`", exe.display())]
    ShimSpawn {
        instance: String,
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the shim for instance `{instance}` failed to start the app: {message}")]
    AppSpawn { instance: String, message: String },

    #[error("cannot signal {what} pid {pid} of instance `{instance}`")]
    Signal {
        instance: String,
        what: &'static str,
        pid: i32,
        #[source]
        source: nix::Error,
    },

    #[error("cannot set up the shim for instance `{instance}`: {step}")]
    ShimSetup {
        instance: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// Shorthand for the crate's results.
pub type Result<T, E = SupervisorError> = std::result::Result<T, E>;

impl SupervisorError {
    /// An I/O error on `path`, with what was being done to it.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SupervisorError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
