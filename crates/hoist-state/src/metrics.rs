//! Aggregates behind the agent's `/metrics`: counts and last-success times read with a
//! few grouped queries per scrape (indexes keep them cheap), never kept in memory.

use rusqlite::params;

use crate::{Result, State};

/// Totals the metrics endpoint exposes, one row per label set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MetricCounts {
    /// `(app, job, result, runs)` for finished job runs.
    pub job_runs: Vec<(String, String, String, u64)>,
    /// `(app, job, finished_at_ms)` of each job's last successful run.
    pub job_last_success: Vec<(String, String, i64)>,
    /// `(app, name, finished_at_ms)` of each backup's last good copy.
    pub backup_last_success: Vec<(String, String, i64)>,
    /// `(app, result, deploys)` for finished deploys.
    pub deploys: Vec<(String, String, u64)>,
}

impl State {
    /// When each of `jobs` (app, job) last succeeded (those that ever did): one index
    /// lookup each, whatever the number of runs kept. For the alert pass, which runs
    /// every 2 s and needs no counts.
    pub fn job_last_success(&self, jobs: &[(&str, &str)]) -> Result<Vec<(String, String, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT max(finished_at) FROM job_runs
             WHERE app = ?1 AND job = ?2 AND status = 'succeeded'",
        )?;
        let mut out = Vec::new();
        for (app, job) in jobs {
            let at: Option<i64> = stmt.query_row(params![app, job], |r| r.get(0))?;
            if let Some(at) = at {
                out.push((app.to_string(), job.to_string(), at));
            }
        }
        Ok(out)
    }

    /// Each backup's last good copy: `(app, name, finished_at_ms)`.
    pub fn backup_last_success(&self) -> Result<Vec<(String, String, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT app, name, MAX(finished_at) FROM backups
             WHERE status = 'ok' AND trigger != 'verify' AND finished_at IS NOT NULL
             GROUP BY app, name ORDER BY app, name",
        )?;
        let rows = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn metric_counts(&self) -> Result<MetricCounts> {
        let mut out = MetricCounts::default();
        let mut stmt = self.conn.prepare_cached(
            "SELECT app, job, status, COUNT(*) FROM job_runs
             WHERE finished_at IS NOT NULL GROUP BY app, job, status ORDER BY app, job, status",
        )?;
        out.job_runs = stmt
            .query_map(params![], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT app, job, MAX(finished_at) FROM job_runs
             WHERE status = 'succeeded' AND finished_at IS NOT NULL GROUP BY app, job ORDER BY app, job",
        )?;
        out.job_last_success = stmt
            .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        out.backup_last_success = self.backup_last_success()?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT app, result, COUNT(*) FROM operations
             WHERE kind = 'deploy' AND result != 'running' GROUP BY app, result ORDER BY app, result",
        )?;
        out.deploys = stmt
            .query_map(params![], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_group_finished_runs_and_deploys() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = State::open(&dir.path().join("s.db")).unwrap();
        let a = st
            .start_job_run("app", "nightly", "r1", "schedule", "running")
            .unwrap();
        st.finish_job_run(a, "succeeded", Some(0), "").unwrap();
        let b = st
            .start_job_run("app", "nightly", "r1", "schedule", "running")
            .unwrap();
        st.finish_job_run(b, "failed", Some(1), "").unwrap();
        st.start_job_run("app", "nightly", "r1", "schedule", "running")
            .unwrap();
        let op = st
            .begin_operation("app", "deploy", Some("r1"), None, "t")
            .unwrap();
        st.finish_operation(op.id, "succeeded", None, None).unwrap();
        st.begin_operation("app", "deploy", Some("r2"), None, "t")
            .unwrap();
        let c = st.metric_counts().unwrap();
        assert_eq!(
            c.job_runs,
            vec![
                ("app".into(), "nightly".into(), "failed".into(), 1),
                ("app".into(), "nightly".into(), "succeeded".into(), 1)
            ]
        );
        assert_eq!(c.job_last_success.len(), 1);
        assert_eq!(c.deploys, vec![("app".into(), "succeeded".into(), 1)]);
    }

    #[test]
    fn a_jobs_last_success_is_one_index_lookup() {
        // The alert pass asks every 2 s; it used to group every kept run (20,000 at the
        // default retention) under the state lock.
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("s.db")).unwrap();
        for (job, status) in [("a", "succeeded"), ("a", "failed"), ("b", "failed")] {
            let id = st
                .start_job_run("app", job, "r1", "schedule", "running")
                .unwrap();
            st.finish_job_run(id, status, Some(0), "").unwrap();
        }
        let last = st
            .job_last_success(&[("app", "a"), ("app", "b"), ("other", "a")])
            .unwrap();
        assert_eq!(last.len(), 1, "{last:?}");
        assert_eq!((last[0].0.as_str(), last[0].1.as_str()), ("app", "a"));
        assert_eq!(c_last(&st), last);
        let mut stmt = st
            .conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT max(finished_at) FROM job_runs
                 WHERE app = 'app' AND job = 'a' AND status = 'succeeded'",
            )
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("INDEX job_runs_succeeded")),
            "{plan:?}"
        );
    }

    /// The same answer as `/metrics` gives.
    fn c_last(st: &State) -> Vec<(String, String, i64)> {
        st.metric_counts().unwrap().job_last_success
    }
}
