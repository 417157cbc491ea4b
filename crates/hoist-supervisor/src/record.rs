//! The files a shim leaves in the run directory: its spec, its identity record (who the
//! shim and the app are, by pid and start time) and its exit record. Writes are atomic
//! (temp file, fsync, rename, fsync of the directory) so a reader sees old or new content,
//! never a torn file. This module does not start or signal processes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Result, SupervisorError};
use crate::procfs::ProcessId;

/// `<run_dir>/<instance>.spec.json`: the spec the shim was started with.
pub fn spec_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.spec.json"))
}

/// `<run_dir>/<instance>.json`: the identity record.
pub fn identity_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.json"))
}

/// `<run_dir>/<instance>.exit.json`: how the app ended.
pub fn exit_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.exit.json"))
}

/// `<run_dir>/<instance>.drops`: how many log lines the shim dropped, a fixed-width
/// number rewritten in place (so updating it needs no new disk space).
pub fn drops_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.drops"))
}

/// Reads a drop counter file; 0 when it is missing or unreadable.
pub fn read_drops(path: &Path) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// `<run_dir>/<instance>.shim.log`: the shim's own diagnostics (its stderr).
pub fn shim_log_path(run_dir: &Path, instance: &str) -> PathBuf {
    run_dir.join(format!("{instance}.shim.log"))
}

/// Who runs an instance. Written by the shim once the app exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub instance: String,
    pub app: String,
    pub service: String,
    pub release: String,
    pub shim: ProcessId,
    /// The app's main process; it leads its own process group (pgid = pid).
    pub process: ProcessId,
    #[serde(with = "crate::rfc3339")]
    pub started_at: DateTime<Utc>,
}

/// How an instance ended. Written by the shim just before it exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// The exit code, when the app exited by itself.
    pub code: Option<i32>,
    /// The signal that ended the app (`"SIGKILL"`), when one did.
    pub signal: Option<String>,
    #[serde(with = "crate::rfc3339")]
    pub at: DateTime<Utc>,
    /// The shim had been asked to stop the instance.
    pub stop_requested: bool,
    /// The group had to be killed with SIGKILL (stop timeout passed, or a kill was asked).
    pub killed: bool,
    /// Log lines that could not be written (disk full, I/O error).
    pub dropped_lines: u64,
}

impl ExitInfo {
    /// An exit the agent should count as a failure (restart with backoff).
    pub fn is_failure(&self) -> bool {
        !self.stop_requested && self.code != Some(0)
    }
}

/// Writes `value` as JSON to `path` atomically, mode 0600 (specs hold secrets).
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| SupervisorError::Malformed {
        what: "record",
        path: path.to_path_buf(),
        source: e,
    })?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SupervisorError::io("write", path, e)
    })
}

/// Reads a JSON record; `Ok(None)` when the file does not exist.
pub fn read<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| SupervisorError::Malformed {
                    what,
                    path: path.to_path_buf(),
                    source: e,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SupervisorError::io("read", path, e)),
    }
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| SupervisorError::io("create directory", dir, e))
}

/// Removes a file, ignoring that it is already gone.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SupervisorError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        let info = ExitInfo {
            code: Some(3),
            signal: None,
            // Stored with millisecond precision.
            at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 3),
            stop_requested: false,
            killed: false,
            dropped_lines: 0,
        };
        write_atomic(&path, &info).unwrap();
        assert_eq!(
            read::<ExitInfo>(&path, "exit record").unwrap(),
            Some(info.clone())
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(info.is_failure());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        assert!(read::<ExitInfo>(&dir.path().join("none"), "exit record")
            .unwrap()
            .is_none());
    }
}
