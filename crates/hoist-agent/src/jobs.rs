//! Periodic jobs: `every` and `cron` schedules run in the app's current release with its
//! environment, under a shim like any instance (so a run survives the agent, and its
//! output is kept in the logs). A job never overlaps itself, not even across a deploy:
//! a tick that finds the previous run still going (whatever its release) is recorded as
//! `skipped`. A run past its `timeout` is stopped; the shim kills its whole group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hoist_core::spec::AppSpec;
use hoist_supervisor::InstanceSpec;

use crate::Agent;

/// One job of one app, as the scheduler tracks it.
#[derive(Default)]
pub struct JobSlot {
    pub next: Option<DateTime<Utc>>,
    pub running: Option<Running>,
}

pub struct Running {
    pub run_id: i64,
    pub handle: hoist_supervisor::Instance,
    pub started: Instant,
    pub timeout: Duration,
    pub timed_out: bool,
}

/// The instance id of a job run: the run's row id makes it unique and findable again.
pub fn run_instance(run_id: i64) -> String {
    format!("job-{run_id}")
}

impl Agent {
    /// One pass of the scheduler: finish ended runs, stop overdue ones, start due ones.
    pub(crate) async fn schedule_jobs(self: &Arc<Self>) {
        let host = self.host_name();
        let now = Utc::now();
        let specs: Vec<(String, String, Arc<AppSpec>)> = self
            .rt()
            .specs
            .iter()
            .map(|(app, (rel, spec))| (app.clone(), rel.clone(), spec.clone()))
            .collect();
        for (app, release, spec) in specs {
            for job in spec.jobs_on(&host) {
                let js = &spec.jobs[job];
                self.reap_job(&app, job).await;
                let key = (app.clone(), job.to_string());
                let due = {
                    let mut rt = self.rt();
                    let slot = rt.jobs.entry(key.clone()).or_default();
                    let next = *slot
                        .next
                        .get_or_insert_with(|| js.schedule.next_after(now).unwrap_or(now));
                    if next > now {
                        false
                    } else {
                        slot.next = js.schedule.next_after(now);
                        true
                    }
                };
                if due {
                    let _ = self.run_job(&spec, &release, job, "schedule").await;
                }
            }
        }
    }

    /// Starts a run of `job` now, unless one is still going (then records a `skipped`
    /// run and says so).
    pub(crate) async fn run_job(
        self: &Arc<Self>,
        spec: &AppSpec,
        release: &str,
        job: &str,
        trigger: &str,
    ) -> Result<i64, String> {
        let app = &spec.app;
        let js = spec
            .jobs
            .get(job)
            .ok_or_else(|| format!("`{app}` has no job `{job}`"))?;
        let busy = self
            .rt()
            .jobs
            .get(&(app.clone(), job.to_string()))
            .and_then(|s| s.running.as_ref().map(|r| r.run_id));
        if let Some(previous) = busy {
            let id = self
                .db(|s| s.start_job_run(app, job, release, trigger, "skipped"))
                .map_err(|e| e.to_string())?;
            let closed = self.db(|s| {
                s.finish_job_run(
                    id,
                    "skipped",
                    None,
                    &format!("run {previous} was still going"),
                )
            });
            self.noted(Some(app), "record a skipped job run", closed);
            self.event(
                Some(app),
                "job.skipped",
                Some(job),
                &format!("run {previous} is still going"),
            );
            return Err(format!("job `{job}` is still running (run {previous})"));
        }
        let run_id = self
            .db(|s| s.start_job_run(app, job, release, trigger, "running"))
            .map_err(|e| e.to_string())?;
        let env = self
            .app_env(spec, release, job, &BTreeMap::new())
            .map_err(|e| e.to_string())?;
        let ispec = InstanceSpec {
            instance: run_instance(run_id),
            app: app.clone(),
            service: job.to_string(),
            release: release.to_string(),
            command: js.command.clone(),
            cwd: self.paths.release_dir(app, release),
            env,
            stop_signal: hoist_supervisor::Signal::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            user: None,
            log_dir: self.paths.logs(app),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 2,
        };
        let sup = self.supervisor.clone();
        let spawned = tokio::task::spawn_blocking(move || sup.spawn(&ispec))
            .await
            .map_err(|e| e.to_string())?;
        match spawned {
            Ok(handle) => {
                let mut rt = self.rt();
                let slot = rt.jobs.entry((app.clone(), job.to_string())).or_default();
                slot.running = Some(Running {
                    run_id,
                    handle,
                    started: Instant::now(),
                    timeout: js.timeout,
                    timed_out: false,
                });
                Ok(run_id)
            }
            Err(e) => {
                let msg = crate::chain(&e);
                let closed = self.db(|s| s.finish_job_run(run_id, "failed", None, &msg));
                self.noted(Some(app), "record a failed job run", closed);
                // Its records (the shim's own log at least) would otherwise stay in the
                // run directory forever, one file per failed start.
                if let Err(e) = self.supervisor.forget(&run_instance(run_id)) {
                    tracing::warn!(app, job, error = %e, "cannot remove a failed job run's records");
                }
                Err(msg)
            }
        }
    }

    /// Records the end of `job`'s run if it ended; stops it if it is past its timeout.
    async fn reap_job(self: &Arc<Self>, app: &str, job: &str) {
        let key = (app.to_string(), job.to_string());
        let (ended, overdue) = {
            let mut rt = self.rt();
            let Some(run) = rt.jobs.get_mut(&key).and_then(|s| s.running.as_mut()) else {
                return;
            };
            let ended = !run.handle.is_running();
            let overdue = !ended && !run.timed_out && run.started.elapsed() > run.timeout;
            if overdue {
                run.timed_out = true;
            }
            (ended, overdue.then(|| run.handle.clone()))
        };
        if let Some(handle) = overdue {
            self.event(
                Some(app),
                "job.timeout",
                Some(job),
                "past its timeout; stopping it",
            );
            let _ = tokio::task::spawn_blocking(move || handle.stop()).await;
            return;
        }
        if !ended {
            return;
        }
        let Some(run) = self.rt().jobs.get_mut(&key).and_then(|s| s.running.take()) else {
            return;
        };
        let exit = run.handle.exit_status().ok().flatten();
        let code = exit.as_ref().and_then(|e| e.code);
        let status = if run.timed_out {
            "timeout"
        } else if exit.as_ref().is_some_and(|e| !e.is_failure()) {
            "succeeded"
        } else {
            "failed"
        };
        let output = self
            .last_log_lines(&run_instance(run.run_id), job, 20)
            .join("\n");
        let closed = self.db(|s| s.finish_job_run(run.run_id, status, code, &output));
        self.noted(Some(app), "record the end of a job run", closed);
        let _ = self.supervisor.forget(&run_instance(run.run_id));
        if status != "succeeded" {
            self.event(
                Some(app),
                &format!("job.{status}"),
                Some(job),
                &format!("run {} {status}", run.run_id),
            );
        }
    }
}
