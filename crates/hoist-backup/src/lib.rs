//! Backup engines and the pure decisions around them: an online SQLite copy, a PostgreSQL
//! dump, a tar.zst of a directory; sealing a finished file (fsync, sha256, size, rename)
//! and checking it again before a restore; and which backups a GFS retention keeps.
//!
//! It knows nothing of the agent, its state or its API: callers pass paths and a
//! connection URL and get facts back. Every function blocks (run them off the async
//! runtime). A connection URL never leaves [`postgres::PgTarget`] except redacted.

pub mod directory;
pub mod file;
pub mod postgres;
pub mod reader;
pub mod retention;
pub mod sqlite;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What a backup or restore engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("`{path}` does not exist")]
    Missing { path: PathBuf },
    #[error("cannot read or write `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sqlite error on `{path}`")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("integrity check of `{path}` failed: {detail}")]
    Integrity { path: PathBuf, detail: String },
    #[error("backup file `{path}` does not match its record: {detail}")]
    Checksum { path: PathBuf, detail: String },
    #[error("cannot run `{tool}`")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// `target` is the redacted URL; `detail` has the password removed.
    #[error("`{tool}` failed on `{target}`: {detail}")]
    Tool {
        tool: String,
        target: String,
        detail: String,
    },
    #[error("not a usable postgres url `{url}`: {reason}")]
    Url { url: String, reason: String },
    /// A reader run as the app's user (`uid`) could not copy `path`; `detail` is its
    /// own account (a permission denied names the file).
    #[error("reading `{path}` as uid {uid} failed: {detail}")]
    Reader {
        path: PathBuf,
        uid: u32,
        detail: String,
    },
    #[error("archive entry `{entry}` is refused: {reason}")]
    Entry { entry: String, reason: String },
}

impl BackupError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Io { path, source }
    }

    pub(crate) fn sqlite(path: impl Into<PathBuf>) -> impl FnOnce(rusqlite::Error) -> BackupError {
        let path = path.into();
        move |source| BackupError::Sqlite { path, source }
    }
}

/// What a restore (or a verify) found in the restored data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// Rows per table (SQLite, PostgreSQL) or files per top-level entry (directory).
    pub tables: BTreeMap<String, u64>,
    /// A one-line summary for the record (`integrity ok, 3 tables, 1200 rows`).
    pub summary: String,
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;
