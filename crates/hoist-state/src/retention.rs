//! Retention: the tables that only grow (events, job runs, finished operations and their
//! journal, the history) are pruned by age and by count, so months of work leave a
//! state file of bounded size.
//!
//! The history stays verifiable. Its records are hash-chained, so dropping a prefix would
//! read as "records 1..S are missing". Instead, pruning records the hash of the last
//! pruned record (`S`) in a one-row checkpoint — exactly the `prev_hash` that record
//! `S + 1` was chained to when it was written — and appends a `retention` record to the
//! chain naming that checkpoint. `hoist history --verify` starts the walk from the
//! checkpoint instead of from the genesis hash, and checks it against the newest
//! `retention` record. Why that is as trustworthy as the unpruned chain: the checkpoint
//! alone cannot be moved (the first kept record must follow it, and the retention record
//! that names it sits later in the chain, under every later record's hash); dropping more
//! records from the front means rewriting that retention record, which breaks the chain
//! from there on. As before, only a rewrite of every record from the edit onwards goes
//! unnoticed — the chain has no secret, it detects partial edits, not a full forgery.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::history::{self, HistoryRecord};
use crate::store::State;
use crate::Result;

/// How long and how many of each kind of record are kept (host config `[retention]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    pub events_days: u32,
    pub events_max: u64,
    pub job_runs_days: u32,
    pub job_runs_max: u64,
    /// Finished operations and their journal (what recovery reads; the history keeps
    /// the outcome of each).
    pub operations_days: u32,
    pub operations_max: u64,
    pub history_days: u32,
    pub history_max: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            events_days: 30,
            events_max: 50_000,
            job_runs_days: 30,
            job_runs_max: 20_000,
            operations_days: 90,
            operations_max: 5_000,
            history_days: 400,
            history_max: 10_000,
        }
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub job_runs: u64,
    pub operations: u64,
    pub journal: u64,
    pub history: u64,
}

impl Pruned {
    pub fn is_empty(&self) -> bool {
        *self == Pruned::default()
    }
}

const DAY_MS: i64 = 86_400_000;

fn cutoff(now_ms: i64, days: u32) -> i64 {
    now_ms - days as i64 * DAY_MS
}

impl State {
    /// Removes what `r` no longer keeps, as of `now_ms`. Running job runs and unfinished
    /// operations are never removed. Each table in its own short transaction.
    pub fn prune(&mut self, r: &Retention, now_ms: i64) -> Result<Pruned> {
        let events = self.conn.execute(
            "DELETE FROM events WHERE at < ?1
               OR id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![cutoff(now_ms, r.events_days), r.events_max as i64],
        )? as u64;
        let job_runs = self.conn.execute(
            "DELETE FROM job_runs WHERE status != 'running' AND (started_at < ?1
               OR id <= (SELECT id FROM job_runs ORDER BY id DESC LIMIT 1 OFFSET ?2))",
            params![cutoff(now_ms, r.job_runs_days), r.job_runs_max as i64],
        )? as u64;
        let (operations, journal) = {
            let tx = self.conn.transaction()?;
            tx.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS doomed_ops (id INTEGER PRIMARY KEY); DELETE FROM doomed_ops;",
            )?;
            tx.execute(
                "INSERT INTO doomed_ops SELECT id FROM operations WHERE result != 'running' AND (
                   coalesce(finished_at, started_at) < ?1
                   OR id <= (SELECT id FROM operations WHERE result != 'running'
                             ORDER BY id DESC LIMIT 1 OFFSET ?2))",
                params![cutoff(now_ms, r.operations_days), r.operations_max as i64],
            )?;
            let journal = tx.execute(
                "DELETE FROM journal WHERE operation IN (SELECT id FROM doomed_ops)",
                [],
            )? as u64;
            let operations = tx.execute(
                "DELETE FROM operations WHERE id IN (SELECT id FROM doomed_ops)",
                [],
            )? as u64;
            tx.execute("DELETE FROM doomed_ops", [])?;
            tx.commit()?;
            (operations, journal)
        };
        let history = self.prune_history(r, now_ms)?;
        Ok(Pruned {
            events,
            job_runs,
            operations,
            journal,
            history,
        })
    }

    fn prune_history(&mut self, r: &Retention, now_ms: i64) -> Result<u64> {
        let tx = self.conn.transaction()?;
        let by_age: Option<i64> = tx.query_row(
            "SELECT max(seq) FROM history WHERE at < ?1",
            params![cutoff(now_ms, r.history_days)],
            |row| row.get(0),
        )?;
        let by_count: Option<i64> = tx
            .query_row(
                "SELECT seq FROM history ORDER BY seq DESC LIMIT 1 OFFSET ?1",
                params![r.history_max as i64],
                |row| row.get(0),
            )
            .optional()?;
        let Some(last) = by_age.max(by_count) else {
            return Ok(0);
        };
        let first: i64 = tx.query_row("SELECT min(seq) FROM history", [], |row| row.get(0))?;
        let hash: String = tx.query_row(
            "SELECT hash FROM history WHERE seq = ?1",
            params![last],
            |row| row.get(0),
        )?;
        let n = tx.execute("DELETE FROM history WHERE seq <= ?1", params![last])? as u64;
        tx.execute(
            "INSERT INTO history_checkpoint (id, seq, hash, at) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at",
            params![last, hash, now_ms],
        )?;
        history::append(
            &tx,
            HistoryRecord {
                seq: 0,
                at_ms: now_ms,
                app: history::HOST_RECORD_APP.into(),
                kind: history::RETENTION_KIND.into(),
                release: None,
                previous: None,
                commit: None,
                actor: "agent".into(),
                result: "succeeded".into(),
                duration_ms: 0,
                reason: Some(format!(
                    "records {first}..{last} pruned by retention; {}",
                    history::checkpoint_text(last, &hash)
                )),
            },
        )?;
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("state.db")).unwrap();
        (dir, st)
    }

    fn deploys(st: &mut State, n: usize) {
        for i in 0..n {
            let op = st
                .begin_operation("notes", "deploy", Some(&format!("r{i}")), None, "ci")
                .unwrap();
            st.journal(op.id, "switch", "begin", None).unwrap();
            st.journal(op.id, "switch", "end", None).unwrap();
            st.finish_operation(op.id, "succeeded", None, None).unwrap();
        }
    }

    #[test]
    fn pruning_by_count_keeps_the_history_verifiable() {
        let (_d, mut st) = state();
        deploys(&mut st, 30);
        let r = Retention {
            history_max: 10,
            operations_max: 5,
            ..Retention::default()
        };
        let pruned = st.prune(&r, crate::now_ms()).unwrap();
        assert_eq!(pruned.history, 20);
        assert_eq!(pruned.operations, 25);
        assert_eq!(pruned.journal, 50);
        let report = st.verify_history().unwrap();
        assert_eq!(report.problems, Vec::<String>::new());
        // Ten kept and the retention record; the chain goes on.
        assert_eq!(report.records, 11);
        deploys(&mut st, 3);
        st.prune(&r, crate::now_ms()).unwrap();
        assert_eq!(st.verify_history().unwrap().problems, Vec::<String>::new());
        let hist = st.history(None, 100).unwrap();
        assert_eq!(hist.last().unwrap().kind, "retention");
        assert_eq!(hist.first().unwrap().seq, 25);
    }

    #[test]
    fn pruning_by_age_and_the_tampering_it_still_detects() {
        let (_d, mut st) = state();
        deploys(&mut st, 8);
        for i in 0..100 {
            st.add_event(Some("notes"), "instance.exited", None, &format!("{i}"))
                .unwrap();
        }
        let id = st
            .start_job_run("notes", "cleanup", "r1", "schedule", "running")
            .unwrap();
        // Everything is a day old as of "tomorrow"; the running job run stays.
        let later = crate::now_ms() + 2 * DAY_MS;
        let r = Retention {
            events_days: 1,
            job_runs_days: 1,
            operations_days: 1,
            history_days: 1,
            ..Retention::default()
        };
        let pruned = st.prune(&r, later).unwrap();
        assert_eq!(pruned.events, 100);
        assert_eq!(pruned.history, 8);
        assert_eq!(st.job_runs(None, 10).unwrap()[0].id, id);
        assert_eq!(st.verify_history().unwrap().problems, Vec::<String>::new());
        // Moving the checkpoint (to hide more of the past) is found.
        st.conn
            .execute("UPDATE history_checkpoint SET seq = seq + 1", [])
            .unwrap();
        assert!(!st.verify_history().unwrap().problems.is_empty());
    }
}
