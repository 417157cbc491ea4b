//! The `State` handle and its typed operations. Every write is a short transaction; a
//! commit that precedes an act visible outside the host (a switch of traffic) is durable
//! before the act, because the database runs with `synchronous=FULL`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::history::{self, HistoryRecord, VerifyReport};
use crate::{now_ms, Result, StateError};

/// The state of one host.
pub struct State {
    // Sibling modules (`leases`, `backups`) add their own `impl State` blocks.
    pub(crate) conn: Connection,
}

/// A release known to this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRow {
    pub app: String,
    pub release: String,
    pub manifest: String,
    pub spec: String,
    pub created_at_ms: i64,
}

/// Which release serves an app, and which one stays warm for an instant rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Current {
    pub app: String,
    pub release: String,
    pub standby: Option<String>,
    pub standby_until_ms: Option<i64>,
}

/// A deploy, rollback, restart or restore in progress or finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: i64,
    pub app: String,
    pub kind: String,
    pub release: Option<String>,
    pub previous: Option<String>,
    pub actor: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub result: String,
    pub reason: Option<String>,
}

/// One journal line: a step of an operation, before (`begin`) or after (`end`/`failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub operation: i64,
    pub step: String,
    pub phase: String,
    pub at_ms: i64,
    pub detail: Option<String>,
}

/// An instance the agent wants to exist (or is retiring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub instance: String,
    pub app: String,
    pub service: String,
    pub release: String,
    pub slot: i64,
    pub port: Option<u16>,
    /// `run` while it should be running, `stop` once it is being retired.
    pub desired: String,
    pub restarts: i64,
    pub created_at_ms: i64,
}

/// Something that happened on the host, for `hoist events` and the status view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    pub app: Option<String>,
    pub kind: String,
    pub subject: Option<String>,
    pub message: String,
}

/// Who holds an app's deploy lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRow {
    pub app: String,
    pub holder: String,
    pub agent_boot: String,
    pub since_ms: i64,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRun {
    pub id: i64,
    pub app: String,
    pub job: String,
    pub release: String,
    pub trigger: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
}

/// [`State::job_runs`]' query (the alert pass runs it every 2 s). The limit is written
/// in, not bound: SQLite reads a bound `LIMIT ?` as a constant of the plan, so a cached
/// statement would be prepared again at each run. One cached statement per limit (the
/// callers use a few fixed ones).
fn job_runs_sql(limit: usize) -> String {
    format!(
        "SELECT id, app, job, release, trigger, started_at, finished_at, status, exit_code, output
         FROM job_runs WHERE (?1 IS NULL OR app = ?1) ORDER BY id DESC LIMIT {limit}"
    )
}

impl State {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<State> {
        let mut conn = Connection::open(path).map_err(|source| StateError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The WAL is truncated back to this after a checkpoint, so it does not keep the
        // size of its largest burst forever.
        conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        crate::migrate::migrate(&mut conn)?;
        Ok(State { conn })
    }

    /// `PRAGMA integrity_check`: `ok` or the problems found, one a line (the first 20).
    pub fn integrity_check(&self) -> Result<String> {
        let mut stmt = self.conn.prepare("PRAGMA integrity_check(20)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("\n"))
    }

    /// `PRAGMA integrity_check(TABLE)`: one table and its indexes, `ok` or the problems
    /// (for when the whole check stops at the first damaged b-tree).
    pub fn integrity_check_table(&self, table: &str) -> Result<String> {
        let mut stmt = self.conn.prepare(&format!(
            "PRAGMA integrity_check(\"{}\")",
            table.replace('"', "\"\"")
        ))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("\n"))
    }

    /// Whether every page of a table's own b-tree can be read (its indexes unused).
    pub fn table_readable(&self, table: &str) -> Result<()> {
        let t = table.replace('"', "\"\"");
        self.conn.query_row(
            &format!("SELECT count(*) FROM \"{t}\" NOT INDEXED"),
            [],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(())
    }

    /// The tables and indexes by their root page: (root page, `table` or `index`, name,
    /// the table it belongs to), to say what a damaged b-tree of `integrity_check` holds.
    pub fn root_pages(&self) -> Result<Vec<(i64, String, String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT rootpage, type, name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index') AND rootpage > 0",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    // --- releases ---------------------------------------------------------------------

    pub fn put_release(&self, app: &str, release: &str, manifest: &str, spec: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO releases (app, release, manifest, spec, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(app, release) DO UPDATE SET spec = excluded.spec",
            params![app, release, manifest, spec, now_ms()],
        )?;
        Ok(())
    }

    pub fn release(&self, app: &str, release: &str) -> Result<Option<ReleaseRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT app, release, manifest, spec, created_at FROM releases WHERE app = ?1 AND release = ?2",
                params![app, release],
                release_row,
            )
            .optional()?)
    }

    /// Releases of `app`, oldest first.
    pub fn releases(&self, app: &str) -> Result<Vec<ReleaseRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT app, release, manifest, spec, created_at FROM releases WHERE app = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map(params![app], release_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn delete_release(&self, app: &str, release: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM releases WHERE app = ?1 AND release = ?2",
            params![app, release],
        )?;
        Ok(())
    }

    /// Every app this host knows.
    pub fn apps(&self) -> Result<Vec<String>> {
        // Cached, like the other statements the agent runs every second or two
        // (housekeeping, the alert pass): preparing one costs more than running it.
        let mut stmt = self
            .conn
            .prepare_cached("SELECT DISTINCT app FROM releases ORDER BY app")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // --- current ----------------------------------------------------------------------

    pub fn current(&self, app: &str) -> Result<Option<Current>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT app, release, standby, standby_until FROM current WHERE app = ?1",
            )?
            .query_row(params![app], |r| {
                Ok(Current {
                    app: r.get(0)?,
                    release: r.get(1)?,
                    standby: r.get(2)?,
                    standby_until_ms: r.get(3)?,
                })
            })
            .optional()?)
    }

    pub fn set_current(&self, cur: &Current) -> Result<()> {
        self.conn.execute(
            "INSERT INTO current (app, release, standby, standby_until, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(app) DO UPDATE SET release = excluded.release, standby = excluded.standby,
               standby_until = excluded.standby_until, updated_at = excluded.updated_at",
            params![cur.app, cur.release, cur.standby, cur.standby_until_ms, now_ms()],
        )?;
        Ok(())
    }

    /// `hoist down`: no release is current for `app` any more (its releases stay kept).
    pub fn clear_current(&self, app: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM current WHERE app = ?1", params![app])?;
        Ok(())
    }

    // --- operations and journal -------------------------------------------------------

    pub fn begin_operation(
        &self,
        app: &str,
        kind: &str,
        release: Option<&str>,
        previous: Option<&str>,
        actor: &str,
    ) -> Result<Operation> {
        let at = now_ms();
        self.conn.execute(
            "INSERT INTO operations (app, kind, release, previous, actor, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![app, kind, release, previous, actor, at],
        )?;
        let id = self.conn.last_insert_rowid();
        self.operation(id)?
            .ok_or_else(|| StateError::Corrupt(format!("operation {id} vanished")))
    }

    pub fn operation(&self, id: i64) -> Result<Option<Operation>> {
        Ok(self
            .conn
            .query_row(
                &format!("{OP_SELECT} WHERE id = ?1"),
                params![id],
                operation_row,
            )
            .optional()?)
    }

    /// The finished operations of `app`, oldest first (what a rollback reads to find the
    /// migrations it would cross).
    pub fn operations_of(&self, app: &str) -> Result<Vec<Operation>> {
        let mut stmt = self.conn.prepare(&format!(
            "{OP_SELECT} WHERE app = ?1 AND result != 'running' ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![app], operation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Operations never finished: what a restarted agent must resolve.
    pub fn unfinished_operations(&self) -> Result<Vec<Operation>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{OP_SELECT} WHERE result = 'running' ORDER BY id"))?;
        let rows = stmt.query_map([], operation_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a step's phase (`begin` before it runs, `end` or `failed` after).
    pub fn journal(
        &self,
        operation: i64,
        step: &str,
        phase: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "INSERT INTO journal (operation, step, phase, at, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![operation, step, phase, now_ms(), detail],
        )?;
        Ok(())
    }

    pub fn journal_of(&self, operation: i64) -> Result<Vec<JournalEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT operation, step, phase, at, detail FROM journal WHERE operation = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![operation], |r| {
            Ok(JournalEntry {
                operation: r.get(0)?,
                step: r.get(1)?,
                phase: r.get(2)?,
                at_ms: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Closes an operation and appends its history record, in one transaction.
    pub fn finish_operation(
        &mut self,
        id: i64,
        result: &str,
        reason: Option<&str>,
        commit: Option<&str>,
    ) -> Result<HistoryRecord> {
        let tx = self.conn.transaction()?;
        let at = now_ms();
        tx.execute(
            "UPDATE operations SET result = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
            params![id, result, reason, at],
        )?;
        let op = tx
            .query_row(
                &format!("{OP_SELECT} WHERE id = ?1"),
                params![id],
                operation_row,
            )
            .optional()?
            .ok_or_else(|| StateError::Corrupt(format!("operation {id} vanished")))?;
        let rec = history::append(
            &tx,
            HistoryRecord {
                seq: 0,
                at_ms: at,
                app: op.app.clone(),
                kind: op.kind.clone(),
                release: op.release.clone(),
                previous: op.previous.clone(),
                commit: commit.map(str::to_string),
                actor: op.actor.clone(),
                result: result.to_string(),
                duration_ms: at - op.started_at_ms,
                reason: reason.map(str::to_string),
            },
        )?;
        tx.commit()?;
        Ok(rec)
    }

    pub fn history(&self, app: Option<&str>, limit: usize) -> Result<Vec<HistoryRecord>> {
        history::list(&self.conn, app, limit)
    }

    /// Whether `release` of `app` has a succeeded record in the history (it served).
    pub fn served(&self, app: &str, release: &str) -> Result<bool> {
        history::served(&self.conn, app, release)
    }

    pub fn verify_history(&self) -> Result<VerifyReport> {
        history::verify(&self.conn)
    }

    // --- instances --------------------------------------------------------------------

    pub fn put_instance(&self, row: &InstanceRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO instances (instance, app, service, release, slot, port, desired, restarts, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT(instance) DO UPDATE SET desired = excluded.desired, restarts = excluded.restarts, port = excluded.port",
            params![
                row.instance,
                row.app,
                row.service,
                row.release,
                row.slot,
                row.port,
                row.desired,
                row.restarts,
                row.created_at_ms
            ],
        )?;
        Ok(())
    }

    pub fn set_instance_desired(&self, instance: &str, desired: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET desired = ?2 WHERE instance = ?1",
            params![instance, desired],
        )?;
        Ok(())
    }

    pub fn bump_restarts(&self, instance: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE instances SET restarts = restarts + 1 WHERE instance = ?1",
            params![instance],
        )?;
        Ok(())
    }

    pub fn remove_instance(&self, instance: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM instances WHERE instance = ?1",
            params![instance],
        )?;
        Ok(())
    }

    pub fn instances(&self) -> Result<Vec<InstanceRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT instance, app, service, release, slot, port, desired, restarts, created_at FROM instances ORDER BY app, service, release, slot",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(InstanceRow {
                instance: r.get(0)?,
                app: r.get(1)?,
                service: r.get(2)?,
                release: r.get(3)?,
                slot: r.get(4)?,
                port: r.get(5)?,
                desired: r.get(6)?,
                restarts: r.get(7)?,
                created_at_ms: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // --- events -----------------------------------------------------------------------

    pub fn add_event(
        &self,
        app: Option<&str>,
        kind: &str,
        subject: Option<&str>,
        message: &str,
    ) -> Result<Event> {
        let at = now_ms();
        self.conn.execute(
            "INSERT INTO events (at, app, kind, subject, message) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at, app, kind, subject, message],
        )?;
        Ok(Event {
            id: self.conn.last_insert_rowid(),
            at_ms: at,
            app: app.map(str::to_string),
            kind: kind.to_string(),
            subject: subject.map(str::to_string),
            message: message.to_string(),
        })
    }

    /// Events after `after_id`, oldest first, at most `limit`.
    pub fn events(&self, after_id: i64, limit: usize) -> Result<Vec<Event>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, app, kind, subject, message FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after_id, limit as i64], |r| {
            Ok(Event {
                id: r.get(0)?,
                at_ms: r.get(1)?,
                app: r.get(2)?,
                kind: r.get(3)?,
                subject: r.get(4)?,
                message: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // --- locks ------------------------------------------------------------------------

    /// Takes the deploy lock of `app`. A lock left by an earlier life of the agent (another
    /// `agent_boot`) is stale: its holder died with that agent, so it is taken over.
    pub fn acquire_lock(&self, app: &str, holder: &str, agent_boot: &str) -> Result<()> {
        if let Some(lock) = self.lock(app)? {
            if lock.agent_boot == agent_boot {
                let since = chrono_like(lock.since_ms);
                return Err(StateError::Locked {
                    app: app.to_string(),
                    holder: lock.holder,
                    since,
                });
            }
            tracing::warn!(app, holder = %lock.holder, "recovering a deploy lock left by a dead agent");
        }
        self.conn.execute(
            "INSERT INTO locks (app, holder, agent_boot, since) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(app) DO UPDATE SET holder = excluded.holder, agent_boot = excluded.agent_boot, since = excluded.since",
            params![app, holder, agent_boot, now_ms()],
        )?;
        Ok(())
    }

    pub fn lock(&self, app: &str) -> Result<Option<LockRow>> {
        Ok(self
            .conn
            .query_row(
                "SELECT app, holder, agent_boot, since FROM locks WHERE app = ?1",
                params![app],
                |r| {
                    Ok(LockRow {
                        app: r.get(0)?,
                        holder: r.get(1)?,
                        agent_boot: r.get(2)?,
                        since_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn release_lock(&self, app: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM locks WHERE app = ?1", params![app])?;
        Ok(())
    }

    // --- job runs ---------------------------------------------------------------------

    pub fn start_job_run(
        &self,
        app: &str,
        job: &str,
        release: &str,
        trigger: &str,
        status: &str,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO job_runs (app, job, release, trigger, started_at, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![app, job, release, trigger, now_ms(), status],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_job_run(
        &self,
        id: i64,
        status: &str,
        exit_code: Option<i32>,
        output: &str,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE job_runs SET finished_at = ?2, status = ?3, exit_code = ?4, output = ?5 WHERE id = ?1",
            params![id, now_ms(), status, exit_code, output],
        )?;
        Ok(())
    }

    /// The most recent runs, newest last.
    pub fn job_runs(&self, app: Option<&str>, limit: usize) -> Result<Vec<JobRun>> {
        let mut stmt = self.conn.prepare_cached(&job_runs_sql(limit))?;
        let rows = stmt.query_map(params![app], |r| {
            Ok(JobRun {
                id: r.get(0)?,
                app: r.get(1)?,
                job: r.get(2)?,
                release: r.get(3)?,
                trigger: r.get(4)?,
                started_at_ms: r.get(5)?,
                finished_at_ms: r.get(6)?,
                status: r.get(7)?,
                exit_code: r.get(8)?,
                output: r.get(9)?,
            })
        })?;
        let mut runs: Vec<JobRun> = rows.collect::<rusqlite::Result<_>>()?;
        runs.reverse();
        Ok(runs)
    }

    /// Runs left `running` by a dead agent are closed as `lost`.
    pub fn close_lost_job_runs(&self) -> Result<usize> {
        self.close_lost_job_runs_except(&[])
    }

    /// As [`State::close_lost_job_runs`], but for the runs in `alive` (re-adopted).
    pub fn close_lost_job_runs_except(&self, alive: &[i64]) -> Result<usize> {
        let running: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id FROM job_runs WHERE status = 'running'")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut n = 0;
        for id in running.into_iter().filter(|id| !alive.contains(id)) {
            n += self.conn.execute(
                "UPDATE job_runs SET status = 'lost', finished_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
        }
        Ok(n)
    }
}

const OP_SELECT: &str =
    "SELECT id, app, kind, release, previous, actor, started_at, finished_at, result, reason FROM operations";

fn operation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operation> {
    Ok(Operation {
        id: r.get(0)?,
        app: r.get(1)?,
        kind: r.get(2)?,
        release: r.get(3)?,
        previous: r.get(4)?,
        actor: r.get(5)?,
        started_at_ms: r.get(6)?,
        finished_at_ms: r.get(7)?,
        result: r.get(8)?,
        reason: r.get(9)?,
    })
}

fn release_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRow> {
    Ok(ReleaseRow {
        app: r.get(0)?,
        release: r.get(1)?,
        manifest: r.get(2)?,
        spec: r.get(3)?,
        created_at_ms: r.get(4)?,
    })
}

/// Seconds since the epoch in a form a person can read in a lock message.
fn chrono_like(ms: i64) -> String {
    let secs = ms / 1000;
    let ago = (now_ms() / 1000 - secs).max(0);
    format!("{ago}s ago (unix {secs})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_periodic_queries_are_not_prepared_again_at_each_run() {
        let (_dir, st) = state();
        st.put_release("notes", "r1", "{}", "{}").unwrap();
        for _ in 0..3 {
            st.apps().unwrap();
            st.current("notes").unwrap();
            st.job_runs(None, 500).unwrap();
            st.job_runs(Some("notes"), 50).unwrap();
        }
        // A cached statement whose plan depends on a bound value (SQLite reads a bound
        // `LIMIT ?` as a constant) is prepared again at every run: caching it saves nothing.
        for limit in [500, 50] {
            let stmt = st.conn.prepare_cached(&job_runs_sql(limit)).unwrap();
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "job_runs is prepared again at each call"
            );
        }
    }

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("state.db")).unwrap();
        (dir, st)
    }

    #[test]
    fn migrations_are_idempotent_and_integrity_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(State::open(&path).unwrap());
        let st = State::open(&path).unwrap();
        assert_eq!(st.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn operations_are_journaled_and_chained_into_history() {
        let (_d, mut st) = state();
        let op = st
            .begin_operation("notes", "deploy", Some("r2"), Some("r1"), "alice")
            .unwrap();
        st.journal(op.id, "verify", "begin", None).unwrap();
        st.journal(op.id, "verify", "end", None).unwrap();
        assert_eq!(st.unfinished_operations().unwrap().len(), 1);
        st.finish_operation(op.id, "succeeded", None, Some("abc"))
            .unwrap();
        let op2 = st
            .begin_operation("notes", "rollback", Some("r1"), Some("r2"), "bob")
            .unwrap();
        st.finish_operation(op2.id, "failed", Some("health check failed"), None)
            .unwrap();
        assert!(st.unfinished_operations().unwrap().is_empty());
        assert_eq!(st.journal_of(op.id).unwrap().len(), 2);
        let hist = st.history(Some("notes"), 10).unwrap();
        assert_eq!(hist.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(hist[1].reason.as_deref(), Some("health check failed"));
        assert_eq!(st.verify_history().unwrap().problems, Vec::<String>::new());
    }

    #[test]
    fn altered_and_removed_history_records_are_reported() {
        let (_d, mut st) = state();
        for i in 0..4 {
            let op = st
                .begin_operation("notes", "deploy", Some(&format!("r{i}")), None, "ci")
                .unwrap();
            st.finish_operation(op.id, "succeeded", None, None).unwrap();
        }
        st.conn
            .execute(
                "UPDATE history SET record = replace(record, 'succeeded', 'failed') WHERE seq = 2",
                [],
            )
            .unwrap();
        st.conn
            .execute("DELETE FROM history WHERE seq = 3", [])
            .unwrap();
        let report = st.verify_history().unwrap();
        assert_eq!(report.records, 3);
        assert_eq!(
            report.problems,
            vec![
                "record 2 was altered".to_string(),
                "records 3..3 are missing".to_string(),
                "record 4 does not follow the record before it".to_string(),
            ]
        );
    }

    /// The query plan of `sql`, one detail line each.
    fn plan(st: &State, sql: &str) -> Vec<String> {
        let mut stmt = st
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn an_apps_history_and_whether_a_release_served_are_index_lookups() {
        // Every deploy asks which of its app's releases ever served (to prune the
        // others). It used to read and parse the whole history (10,000 records at the
        // default retention) under the state lock: the soak's API latency grew with it.
        let (_d, mut st) = state();
        for i in 0..30 {
            let app = if i % 3 == 0 { "notes" } else { "blog" };
            let op = st
                .begin_operation(app, "deploy", Some(&format!("r{i}")), None, "ci")
                .unwrap();
            let result = if i % 2 == 0 { "succeeded" } else { "failed" };
            st.finish_operation(op.id, result, None, None).unwrap();
        }
        let notes = st.history(Some("notes"), 3).unwrap();
        let releases: Vec<_> = notes.iter().map(|h| h.release.clone().unwrap()).collect();
        assert_eq!(releases, ["r21", "r24", "r27"]);
        assert_eq!(st.history(None, 2).unwrap().len(), 2);
        assert!(st.served("notes", "r0").unwrap());
        assert!(!st.served("notes", "r3").unwrap(), "r3 failed");
        assert!(!st.served("blog", "r0").unwrap(), "r0 is notes'");
        assert!(st.served("blog", "r2").unwrap());
        let by_app = plan(
            &st,
            "SELECT record FROM history WHERE app = 'notes' ORDER BY seq DESC LIMIT 3",
        );
        assert!(
            by_app.iter().any(|l| l.contains("INDEX history_by_app")),
            "{by_app:?}"
        );
        let served = plan(
            &st,
            "SELECT EXISTS (SELECT 1 FROM history
               WHERE app = 'notes' AND release = 'r0' AND result = 'succeeded')",
        );
        assert!(
            served.iter().any(|l| l.contains("INDEX history_served")),
            "{served:?}"
        );
        assert!(
            !by_app
                .iter()
                .chain(&served)
                .any(|l| l.starts_with("SCAN history")),
            "{by_app:?} {served:?}"
        );
        assert_eq!(st.verify_history().unwrap().problems, Vec::<String>::new());
    }

    #[test]
    fn records_written_before_the_history_columns_are_found_after_the_migration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut st = State::open(&path).unwrap();
            let op = st
                .begin_operation("notes", "deploy", Some("r1"), None, "ci")
                .unwrap();
            st.finish_operation(op.id, "succeeded", None, None).unwrap();
            // As a version-4 database has it: no columns beside the record.
            st.conn
                .execute_batch(
                    "DROP INDEX history_by_app; DROP INDEX history_served; DROP INDEX job_runs_succeeded;
                     ALTER TABLE history DROP COLUMN app; ALTER TABLE history DROP COLUMN release;
                     ALTER TABLE history DROP COLUMN result; PRAGMA user_version = 4;",
                )
                .unwrap();
        }
        let st = State::open(&path).unwrap();
        assert!(st.served("notes", "r1").unwrap());
        assert_eq!(st.history(Some("notes"), 10).unwrap().len(), 1);
        assert_eq!(st.verify_history().unwrap().problems, Vec::<String>::new());
    }

    #[test]
    fn a_lock_is_exclusive_within_one_agent_life_and_recovered_after() {
        let (_d, st) = state();
        st.acquire_lock("notes", "alice@laptop", "boot-1").unwrap();
        let err = st.acquire_lock("notes", "bob@ci", "boot-1").unwrap_err();
        assert!(
            err.to_string().contains("held by alice@laptop since"),
            "{err}"
        );
        // The agent died and came back: the old holder is gone.
        st.acquire_lock("notes", "bob@ci", "boot-2").unwrap();
        assert_eq!(st.lock("notes").unwrap().unwrap().holder, "bob@ci");
        st.release_lock("notes").unwrap();
        assert!(st.lock("notes").unwrap().is_none());
    }

    #[test]
    fn job_runs_left_running_are_closed_as_lost() {
        let (_d, st) = state();
        let id = st
            .start_job_run("notes", "cleanup", "r1", "schedule", "running")
            .unwrap();
        st.start_job_run("notes", "cleanup", "r1", "schedule", "skipped")
            .unwrap();
        assert_eq!(st.close_lost_job_runs().unwrap(), 1);
        let runs = st.job_runs(Some("notes"), 10).unwrap();
        assert_eq!(runs[0].id, id);
        assert_eq!(runs[0].status, "lost");
        assert_eq!(runs[1].status, "skipped");
    }
}
