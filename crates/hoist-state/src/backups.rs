//! Backup records: one row per attempt (a backup, or a verify of one), written `running`
//! before the work starts and closed `ok` only once the file is sealed in place, so that
//! an agent killed mid-backup never leaves a partial file recorded as good; a starting
//! agent closes what a dead one left `running` as `failed`.
//!
//! It stores what it is given (paths, checksums, a summary) and decides nothing about
//! files or retention. A database URL is never passed in: rows hold names and paths.

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::{now_ms, Result, State};

/// One backup (or verify) attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRow {
    pub id: i64,
    pub app: String,
    pub name: String,
    /// `sqlite`, `postgres` or `directory`.
    pub kind: String,
    pub file: Option<String>,
    pub copy: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// The release current when it was taken.
    pub release: Option<String>,
    /// `schedule`, `before_deploy`, `manual` or `verify`.
    pub trigger: String,
    /// `running`, `ok` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// What the last check found (integrity, row counts), for verify rows.
    pub checked: Option<String>,
    /// For a verify row: the backup it restored.
    pub verified: Option<i64>,
}

/// What is known when an attempt starts.
#[derive(Debug, Clone, Copy)]
pub struct NewBackup<'a> {
    pub app: &'a str,
    pub name: &'a str,
    pub kind: &'a str,
    pub release: Option<&'a str>,
    pub trigger: &'a str,
    pub verified: Option<i64>,
}

/// What a finished attempt produced.
#[derive(Debug, Clone, Default)]
pub struct BackupDone<'a> {
    pub file: Option<&'a str>,
    pub copy: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub size: Option<i64>,
    pub checked: Option<&'a str>,
}

const SELECT: &str = "SELECT id, app, name, kind, file, copy, sha256, size, started_at, \
    finished_at, duration_ms, release, trigger, status, error, checked, verified FROM backups";

fn row(r: &Row<'_>) -> rusqlite::Result<BackupRow> {
    Ok(BackupRow {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        file: r.get(4)?,
        copy: r.get(5)?,
        sha256: r.get(6)?,
        size: r.get(7)?,
        started_at_ms: r.get(8)?,
        finished_at_ms: r.get(9)?,
        duration_ms: r.get(10)?,
        release: r.get(11)?,
        trigger: r.get(12)?,
        status: r.get(13)?,
        error: r.get(14)?,
        checked: r.get(15)?,
        verified: r.get(16)?,
    })
}

impl State {
    /// Records an attempt as `running`; returns its id.
    pub fn begin_backup(&self, b: &NewBackup<'_>) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO backups (app, name, kind, release, trigger, status, started_at, verified)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7)",
            params![
                b.app,
                b.name,
                b.kind,
                b.release,
                b.trigger,
                now_ms(),
                b.verified
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Closes an attempt as `ok`: call only once its file is sealed in place.
    pub fn finish_backup(&self, id: i64, done: &BackupDone<'_>) -> Result<()> {
        let at = now_ms();
        self.conn.execute(
            "UPDATE backups SET status = 'ok', file = COALESCE(?2, file), copy = ?3,
               sha256 = COALESCE(?4, sha256), size = COALESCE(?5, size), checked = ?6,
               finished_at = ?7, duration_ms = ?7 - started_at
             WHERE id = ?1",
            params![
                id,
                done.file,
                done.copy,
                done.sha256,
                done.size,
                done.checked,
                at
            ],
        )?;
        Ok(())
    }

    /// Closes an attempt as `failed` with its (already redacted) error.
    pub fn fail_backup(&self, id: i64, error: &str) -> Result<()> {
        let at = now_ms();
        self.conn.execute(
            "UPDATE backups SET status = 'failed', error = ?2, finished_at = ?3,
               duration_ms = ?3 - started_at WHERE id = ?1",
            params![id, error, at],
        )?;
        Ok(())
    }

    /// Sets the file of an attempt still running (for a verify: the backup it reads).
    pub fn set_backup_file(&self, id: i64, file: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE backups SET file = ?2 WHERE id = ?1",
            params![id, file],
        )?;
        Ok(())
    }

    pub fn backup(&self, id: i64) -> Result<Option<BackupRow>> {
        Ok(self
            .conn
            .query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
            .optional()?)
    }

    /// Attempts of `app` (all apps with None), newest last, at most `limit`.
    pub fn backups(&self, app: Option<&str>, limit: usize) -> Result<Vec<BackupRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "{SELECT} WHERE (?1 IS NULL OR app = ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![app, limit as i64], row)?;
        let mut out: Vec<BackupRow> = rows.collect::<rusqlite::Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// The good backups of one `[backups.NAME]` (not verifies), oldest first: what can be
    /// restored and what retention prunes.
    pub fn good_backups(&self, app: &str, name: &str) -> Result<Vec<BackupRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "{SELECT} WHERE app = ?1 AND name = ?2 AND status = 'ok' AND trigger != 'verify'
             ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![app, name], row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets a pruned backup (its files are already gone).
    pub fn delete_backup(&self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM backups WHERE id = ?1", params![id])?;
        Ok(())
    }

    /// Attempts left `running` by a dead agent are closed as `failed`; returns how many.
    pub fn close_lost_backups(&self) -> Result<usize> {
        let at = now_ms();
        Ok(self.conn.execute(
            "UPDATE backups SET status = 'failed',
               error = 'interrupted: the agent stopped during the backup',
               finished_at = ?1, duration_ms = ?1 - started_at
             WHERE status = 'running'",
            params![at],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_good_only_once_finished_and_lost_ones_fail() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        let new = NewBackup {
            app: "notes",
            name: "db",
            kind: "sqlite",
            release: Some("r1"),
            trigger: "manual",
            verified: None,
        };
        let a = st.begin_backup(&new).unwrap();
        let b = st.begin_backup(&new).unwrap();
        assert!(st.good_backups("notes", "db").unwrap().is_empty());
        st.finish_backup(
            a,
            &BackupDone {
                file: Some("/b/1.sqlite"),
                sha256: Some("ab"),
                size: Some(10),
                ..Default::default()
            },
        )
        .unwrap();
        let v = st
            .begin_backup(&NewBackup {
                trigger: "verify",
                verified: Some(a),
                ..new
            })
            .unwrap();
        st.finish_backup(v, &BackupDone::default()).unwrap();
        assert_eq!(st.close_lost_backups().unwrap(), 1);
        let good = st.good_backups("notes", "db").unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].id, a);
        assert_eq!(good[0].sha256.as_deref(), Some("ab"));
        let lost = st.backup(b).unwrap().unwrap();
        assert_eq!(lost.status, "failed");
        assert!(lost.error.unwrap().contains("interrupted"));
        assert_eq!(st.backups(Some("notes"), 10).unwrap().len(), 3);
        st.delete_backup(a).unwrap();
        assert!(st.good_backups("notes", "db").unwrap().is_empty());
    }
}
