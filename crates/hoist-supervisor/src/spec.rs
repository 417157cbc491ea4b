//! What one instance is: the command, its environment and the limits the shim applies.
//! The agent builds an [`InstanceSpec`]; the supervisor hands it to the shim as a file.
//! This module validates names and knows nothing about processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SupervisorError};

/// Everything the shim needs to run one instance. The environment is exactly `env`
/// (plus `HOIST_INSTANCE` if the caller left it out): nothing of the agent's leaks in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Unique id of this instance on the host; names its run and log files.
    pub instance: String,
    pub app: String,
    pub service: String,
    pub release: String,
    /// Executed directly when it is a simple command (see `shim::direct_argv`), else run
    /// as `/bin/sh -c COMMAND`.
    pub command: String,
    /// The working directory, normally the release tree.
    pub cwd: PathBuf,
    /// The whole environment of the app, in order.
    pub env: Vec<(String, String)>,
    /// Sent to the app's process group to ask it to stop.
    #[serde(with = "signal_name")]
    pub stop_signal: Signal,
    /// How long the app may take to stop before its group is killed.
    pub stop_timeout: Duration,
    /// Run as this user (name), with its groups; `None` keeps the agent's user.
    pub user: Option<String>,
    /// Logs go to `<log_dir>/<service>/<instance>.log`.
    pub log_dir: PathBuf,
    /// A log file is rotated before it would grow past this many bytes.
    pub log_max_bytes: u64,
    /// How many rotated files (`.1` … `.N`) are kept besides the live one.
    pub log_keep: u32,
}

impl InstanceSpec {
    /// Checks the names that become file names, so no spec can write outside its dirs.
    pub fn validate(&self) -> Result<()> {
        if !is_safe_name(&self.instance) {
            return Err(SupervisorError::InvalidInstanceId {
                instance: self.instance.clone(),
            });
        }
        if !is_safe_name(&self.service) {
            return Err(SupervisorError::InvalidServiceName {
                service: self.service.clone(),
            });
        }
        Ok(())
    }

    /// The environment the app gets: `env`, with `HOIST_INSTANCE` set to the instance id
    /// (the marker adoption checks in `/proc/PID/environ`).
    pub fn app_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != crate::INSTANCE_ENV && k != crate::RUN_DIR_ENV)
            .cloned()
            .collect();
        env.push((crate::INSTANCE_ENV.to_string(), self.instance.clone()));
        env
    }

    /// The live log file of this instance.
    pub fn log_path(&self) -> PathBuf {
        log_path(&self.log_dir, &self.service, &self.instance)
    }
}

/// `<log_dir>/<service>/<instance>.log`.
pub fn log_path(log_dir: &Path, service: &str, instance: &str) -> PathBuf {
    log_dir.join(service).join(format!("{instance}.log"))
}

/// Letters, digits, `-` and `_`, 1 to 128 of them: safe as a file name component, and
/// free of `.` so that `<instance>.json` and `<instance>.exit.json` never collide.
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Signals travel by name (`"SIGTERM"`), which reads well in the spec file.
mod signal_name {
    use std::str::FromStr;

    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sig: &Signal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(sig.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(d)?;
        Signal::from_str(&name)
            .map_err(|_| serde::de::Error::custom(format!("unknown signal `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", "a/b", "..", "a.b", "x y", &"a".repeat(129)] {
            assert!(!is_safe_name(bad), "{bad:?} accepted");
        }
        for good in ["web-1", "worker_2", "A9"] {
            assert!(is_safe_name(good), "{good:?} refused");
        }
    }

    #[test]
    fn spec_round_trips_with_signal_names() {
        let spec = InstanceSpec {
            instance: "web-1".into(),
            app: "notes".into(),
            service: "web".into(),
            release: "r1".into(),
            command: "true".into(),
            cwd: "/".into(),
            env: vec![
                ("A".into(), "1".into()),
                ("HOIST_INSTANCE".into(), "stale".into()),
            ],
            stop_signal: Signal::SIGQUIT,
            stop_timeout: Duration::from_millis(1500),
            user: None,
            log_dir: "/tmp".into(),
            log_max_bytes: 1024,
            log_keep: 2,
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains("\"SIGQUIT\""), "{text}");
        assert_eq!(serde_json::from_str::<InstanceSpec>(&text).unwrap(), spec);
        let env = spec.app_env();
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("HOIST_INSTANCE".to_string(), "web-1".to_string())
            ]
        );
    }
}
