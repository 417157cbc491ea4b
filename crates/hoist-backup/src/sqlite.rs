//! SQLite: an online, consistent copy of a live database through SQLite's backup API,
//! and a restore that is checked before it replaces anything. Never a copy of the live
//! file: a file copy taken mid-commit (or without its WAL) is not a database.
//!
//! The copy runs as one step (`step(-1)`): one read transaction over the whole source,
//! so the result is the database as of one commit. In WAL mode that does not block the
//! app's writers; a step in several pieces would restart whenever the app commits and
//! might never finish under a steady stream of writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{backup::StepResult, Connection, OpenFlags};

use crate::file::{self, Sealed};
use crate::{BackupError, Checked, Result};

/// How long to wait out a lock held by the app (a checkpoint, a rollback-journal write).
const BUSY: Duration = Duration::from_secs(30);

/// Copies the database at `source` to `dest` (sealed: fsynced, hashed, renamed).
pub fn backup(source: &Path, dest: &Path) -> Result<Sealed> {
    let partial = file::partial_path(dest);
    copy(source, &partial)?;
    file::seal(&partial, dest)
}

/// The online copy of `source` into a new file `to` (0600), without its sidecars.
pub(crate) fn copy(source: &Path, to: &Path) -> Result<()> {
    if !source.exists() {
        return Err(BackupError::Missing {
            path: source.to_path_buf(),
        });
    }
    let _ = std::fs::remove_file(to);
    {
        // Read-only, and never created: a missing file must not become an empty database.
        let src = Connection::open_with_flags(
            source,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(BackupError::sqlite(source))?;
        src.busy_timeout(BUSY)
            .map_err(BackupError::sqlite(source))?;
        // Created 0600 before SQLite opens it: the copy holds the app's data.
        drop(file::create_private(to)?);
        let mut dst = Connection::open(to).map_err(BackupError::sqlite(to))?;
        let deadline = std::time::Instant::now() + BUSY;
        {
            let b = rusqlite::backup::Backup::new(&src, &mut dst)
                .map_err(BackupError::sqlite(source))?;
            loop {
                match b.step(-1).map_err(BackupError::sqlite(source))? {
                    StepResult::Done => break,
                    // Busy/Locked: the app holds a lock for a moment; anything else
                    // (`More` cannot happen with -1) is retried the same way.
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        return Err(BackupError::Integrity {
                            path: source.to_path_buf(),
                            detail: "the database stayed locked for 30s".into(),
                        })
                    }
                }
            }
        }
        dst.close().map_err(|(_, e)| BackupError::sqlite(to)(e))?;
    }
    remove_sidecars(to);
    Ok(())
}

/// Replaces the database at `target` with the backup at `backup`: copied beside the
/// target, checked (`PRAGMA integrity_check`), then renamed over it after the target's
/// stale `-wal` and `-shm` are removed (an old WAL replayed onto the restored file would
/// corrupt it). The app must not have the database open.
pub fn restore(backup: &Path, target: &Path) -> Result<Checked> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "db".into());
    let tmp = target.with_file_name(format!(".{name}.restore"));
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(BackupError::io(dir))?;
    }
    let owner = file::Owner::of_target(target);
    let result = (|| {
        {
            let mut src = std::fs::File::open(backup).map_err(BackupError::io(backup))?;
            let mut dst = file::create_private(&tmp)?;
            std::io::copy(&mut src, &mut dst).map_err(BackupError::io(&tmp))?;
            dst.sync_all().map_err(BackupError::io(&tmp))?;
        }
        let checked = check(&tmp)?;
        remove_sidecars(&tmp);
        // The database stays the app's: same owner and mode as the file it replaces.
        if let Some(o) = owner {
            o.apply(&tmp, true)?;
        }
        for side in sidecars(target) {
            match std::fs::remove_file(&side) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackupError::io(side)(e)),
            }
        }
        std::fs::rename(&tmp, target).map_err(BackupError::io(target))?;
        file::sync_dir(target)?;
        Ok(checked)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        remove_sidecars(&tmp);
    }
    result
}

/// The first column of every row `sql` returns, as text.
fn strings(conn: &Connection, path: &Path, sql: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(sql).map_err(BackupError::sqlite(path))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(BackupError::sqlite(path))?;
    rows.collect::<rusqlite::Result<_>>()
        .map_err(BackupError::sqlite(path))
}

/// `PRAGMA integrity_check` and the row count of every table.
pub fn check(path: &Path) -> Result<Checked> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(BackupError::sqlite(path))?;
    let problems = strings(&conn, path, "PRAGMA integrity_check")?;
    if problems != ["ok"] {
        return Err(BackupError::Integrity {
            path: path.to_path_buf(),
            detail: problems.join("; "),
        });
    }
    let names = strings(
        &conn,
        path,
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let mut tables = BTreeMap::new();
    for name in names {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {quoted}"), [], |r| r.get(0))
            .map_err(BackupError::sqlite(path))?;
        tables.insert(name, n.max(0) as u64);
    }
    let rows: u64 = tables.values().sum();
    Ok(Checked {
        summary: format!("integrity ok, {} tables, {rows} rows", tables.len()),
        tables,
    })
}

/// Restores the backup into `scratch` (a directory of its own) and checks it.
pub fn verify(backup: &Path, scratch: &Path) -> Result<Checked> {
    restore(backup, &scratch.join("verify.db"))
}

fn sidecars(db: &Path) -> [PathBuf; 2] {
    let s = db.as_os_str().to_string_lossy();
    [
        PathBuf::from(format!("{s}-wal")),
        PathBuf::from(format!("{s}-shm")),
    ]
}

pub(crate) fn remove_sidecars(db: &Path) {
    for side in sidecars(db) {
        let _ = std::fs::remove_file(side);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(path: &Path, rows: i64) {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
            .unwrap();
        for i in 0..rows {
            c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
                .unwrap();
        }
    }

    fn count(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// An app running as its own user must still own (and be able to write) its
    /// database after a restore by a root agent.
    #[test]
    fn a_restore_keeps_the_databases_owner_and_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        assert!(nix_is_root(), "this test needs root (it chowns)");
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.db");
        db(&live, 3);
        let sealed = backup(&live, &dir.path().join("b.sqlite")).unwrap();
        std::os::unix::fs::chown(&live, Some(4242), Some(4343)).unwrap();
        std::fs::set_permissions(&live, std::fs::Permissions::from_mode(0o640)).unwrap();
        restore(&sealed.path, &live).unwrap();
        let m = std::fs::metadata(&live).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4242, 4343, 0o640));
        assert_eq!(count(&live), 3);
    }

    fn nix_is_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn backup_then_restore_over_a_changed_database() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.db");
        db(&live, 100);
        let sealed = backup(&live, &dir.path().join("b.sqlite")).unwrap();
        assert!(sealed.size > 0);
        db(&live, 50);
        assert_eq!(count(&live), 150);
        let checked = restore(&sealed.path, &live).unwrap();
        assert_eq!(checked.tables["t"], 100);
        assert_eq!(count(&live), 100);
    }

    #[test]
    fn a_missing_source_is_reported_and_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("none.db");
        let err = backup(&live, &dir.path().join("b.sqlite")).unwrap_err();
        assert!(matches!(err, BackupError::Missing { .. }));
        assert!(!live.exists());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_the_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app.db");
        db(&live, 3);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![7u8; 8192]).unwrap();
        assert!(restore(&junk, &live).is_err());
        assert_eq!(count(&live), 3);
        assert!(!dir.path().join(".app.db.restore").exists());
    }
}
