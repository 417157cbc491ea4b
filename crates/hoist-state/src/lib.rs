//! The host's state in SQLite (WAL): schema and migrations, the deploy journal, the
//! hash-chained history, events, instances, locks and job runs. This crate is the only
//! place that speaks SQL; it knows nothing of processes, proxies or the network.
//!
//! Invariant: only the agent opens a host's state for writing (it holds an exclusive lock
//! file beside the database); the CLI never touches it directly.

pub mod backups;
mod history;
mod leases;
mod metrics;
mod migrate;
pub mod minutes;
mod retention;
mod store;

pub use history::{HistoryRecord, VerifyReport};
pub use leases::{Acquire, LeaseRow};
pub use metrics::MetricCounts;
pub use retention::{Pruned, Retention};
pub use store::*;

use std::path::PathBuf;

/// Everything that can go wrong with the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state database `{path}`")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database error: {0}")]
    Sql(rusqlite::Error),
    /// SQLite could not write for want of space (`SQLITE_FULL`, or an I/O error that was
    /// ENOSPC): the agent says where (it knows the path).
    #[error("the disk is full: the state database cannot be written")]
    DiskFull(rusqlite::Error),
    #[error("the state database has schema version {found}, newer than this hoist knows ({known}); upgrade hoist")]
    TooNew { found: i64, known: i64 },
    #[error("a deploy of `{app}` is already running: held by {holder} since {since}")]
    Locked {
        app: String,
        holder: String,
        since: String,
    },
    #[error("corrupt record in the state database: {0}")]
    Corrupt(String),
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> StateError {
        // SQLite's unix VFS reports ENOSPC on write as SQLITE_FULL.
        let full = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull);
        if full {
            StateError::DiskFull(e)
        } else {
            StateError::Sql(e)
        }
    }
}

impl StateError {
    /// Whether the error is a full disk.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StateError::DiskFull(_))
    }

    /// Whether SQLite found the file damaged (`SQLITE_CORRUPT`, or no database header).
    pub fn is_damaged(&self) -> bool {
        let sql = match self {
            StateError::Open { source, .. } => source,
            StateError::Sql(e) => e,
            _ => return false,
        };
        matches!(sql, rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
    }
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Milliseconds since the Unix epoch, the one time unit stored in the database.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
