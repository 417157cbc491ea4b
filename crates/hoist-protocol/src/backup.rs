//! The backup part of the agent's API (all under `/v1/backups`):
//!
//! - `GET /v1/backups?app=APP`: every attempt, newest last ([`BackupInfo`]s);
//! - `POST /v1/backups/{app}` with [`TakeRequest`]: take one backup of each named (or
//!   every) `[backups.NAME]` now; answers the attempts, failed ones included;
//! - `POST /v1/backups/{app}/verify` with [`TakeRequest`]: restore the latest backup of
//!   each into a scratch place and check it; answers the verify records;
//! - `POST /v1/backups/{app}/restore` with [`RestoreRequest`]: answers a
//!   [`RestoreResult`], or an error when nothing was touched (a corrupt file is refused
//!   before any service stops).
//!
//! No message carries a database URL: sources are named by their secret's name.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One backup (or verify) attempt, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: i64,
    pub app: String,
    pub name: String,
    /// `sqlite`, `postgres` or `directory`.
    pub kind: String,
    pub file: Option<String>,
    pub copy: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub started_at_ms: i64,
    pub duration_ms: Option<i64>,
    pub release: Option<String>,
    /// `schedule`, `before_deploy`, `manual` or `verify`.
    pub trigger: String,
    /// `running`, `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// What a verify found (integrity, row counts).
    pub checked: Option<String>,
    /// For a verify: the backup it restored.
    pub verified: Option<i64>,
}

/// Which backups to take or verify: one name, or all of the app's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "manual")]
    pub actor: String,
}

fn manual() -> String {
    "cli".into()
}

/// Restore `[backups.NAME]` from one backup (its id) or the latest good one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub name: String,
    #[serde(default)]
    pub backup: Option<i64>,
    #[serde(default = "manual")]
    pub actor: String,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResult {
    pub app: String,
    pub name: String,
    pub backup: i64,
    /// Instances stopped for the restore and started again (their services).
    pub services: Vec<String>,
    /// One line: integrity and row counts.
    pub checked: String,
    /// Rows per table (files per top-level entry for a directory).
    pub tables: BTreeMap<String, u64>,
    pub duration_ms: i64,
}
