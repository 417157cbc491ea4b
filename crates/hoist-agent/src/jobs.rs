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
    /// A run is being started (its shim spawned outside the lock): a second start of the
    /// same job in that window is refused like one during the run.
    pub starting: bool,
}

pub struct Running {
    pub run_id: i64,
    /// The release the run lives in: pruning keeps its tree until the run ends.
    pub release: String,
    pub handle: hoist_supervisor::Instance,
    pub started: Instant,
    pub timeout: Duration,
    pub timed_out: bool,
}

/// The instance id of a job run: the run's row id makes it unique and findable again.
pub fn run_instance(run_id: i64) -> String {
    format!("job-{run_id}")
}

/// How many due runs one scheduler pass starts at once: each start is a shim spawn (a
/// fork, an exec and a handshake), so 180 due jobs take seconds however they are done,
/// and they must not all wait on each other.
const CONCURRENT_STARTS: usize = 8;

/// Why a run did not start.
pub(crate) enum RunError {
    /// Its release is being (or was) pruned: the app's current release has moved on.
    Pruned,
    Other(String),
}

/// Holds a run's release (and its job's slot) while the run is being started; dropped,
/// it lets go of both. The run, once started, holds its release itself ([`Running`]).
struct Starting<'a> {
    agent: &'a Agent,
    job: (String, String),
    release: (String, String),
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut rt = self.agent.rt();
        if let Some(slot) = rt.jobs.get_mut(&self.job) {
            slot.starting = false;
        }
        if let Some(n) = rt.starting.get_mut(&self.release) {
            *n -= 1;
            if *n == 0 {
                rt.starting.remove(&self.release);
            }
        }
    }
}

impl Agent {
    /// One pass of the scheduler: finish ended runs, stop overdue ones, start due ones
    /// (a few at a time, each in its own task). Runs in a task of its own, beside the
    /// supervision loop, so a slow spawn never holds up supervision.
    pub(crate) async fn schedule_jobs(self: &Arc<Self>) {
        let host = self.host_name();
        let now = Utc::now();
        let specs: Vec<(String, Arc<AppSpec>)> = self
            .rt()
            .specs
            .iter()
            .map(|(app, (_, spec))| (app.clone(), spec.clone()))
            .collect();
        let mut due = Vec::new();
        let mut wanted = std::collections::HashSet::new();
        for (app, spec) in &specs {
            for job in spec.jobs_on(&host) {
                wanted.insert((app.clone(), job.to_string()));
            }
        }
        self.forget_jobs(&wanted).await;
        for (app, spec) in specs {
            for job in spec.jobs_on(&host) {
                let js = &spec.jobs[job];
                self.reap_job(&app, job).await;
                let key = (app.clone(), job.to_string());
                let mut rt = self.rt();
                let slot = rt.jobs.entry(key.clone()).or_default();
                let next = *slot
                    .next
                    .get_or_insert_with(|| js.schedule.next_after(now).unwrap_or(now));
                if next <= now {
                    slot.next = js.schedule.next_after(now);
                    due.push(key);
                }
            }
        }
        let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_STARTS));
        let mut starts = tokio::task::JoinSet::new();
        for (app, job) in due {
            let agent = self.clone();
            let gate = gate.clone();
            starts.spawn(async move {
                let Ok(_permit) = gate.acquire_owned().await else {
                    return;
                };
                agent.run_scheduled(&app, &job).await;
            });
        }
        while starts.join_next().await.is_some() {}
    }

    /// Drops the slots of jobs no current release declares here any more (a deploy that
    /// removed the job, `hoist down` of its app): a run still going is reaped as usual
    /// until it ends (its end recorded, its timeout enforced), then its slot goes.
    async fn forget_jobs(self: &Arc<Self>, wanted: &std::collections::HashSet<(String, String)>) {
        let gone: Vec<(String, String)> = self
            .rt()
            .jobs
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for (app, job) in gone {
            self.reap_job(&app, &job).await;
            let mut rt = self.rt();
            let key = (app, job);
            if rt
                .jobs
                .get(&key)
                .is_some_and(|s| s.running.is_none() && !s.starting)
            {
                rt.jobs.remove(&key);
                tracing::info!(app = %key.0, job = %key.1, "job no longer declared; forgotten");
            }
        }
    }

    /// Starts a due run of `job` in `app`'s current release, read at the moment of the
    /// start: a deploy that switched (and pruned) since the pass began must not send the
    /// run into a release that is gone.
    async fn run_scheduled(self: &Arc<Self>, app: &str, job: &str) {
        for _ in 0..3 {
            let Some((release, spec)) = self.rt().specs.get(app).cloned() else {
                return;
            };
            if !spec.jobs.contains_key(job) {
                return;
            }
            match self.start_run(&spec, &release, job, "schedule").await {
                Err(RunError::Pruned) => continue,
                Ok(_) | Err(RunError::Other(_)) => return,
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
        match self.start_run(spec, release, job, trigger).await {
            Ok(id) => Ok(id),
            Err(RunError::Pruned) => Err(format!(
                "release `{release}` of `{}` was pruned; its current release has changed",
                spec.app
            )),
            Err(RunError::Other(e)) => Err(e),
        }
    }

    async fn start_run(
        self: &Arc<Self>,
        spec: &AppSpec,
        release: &str,
        job: &str,
        trigger: &str,
    ) -> Result<i64, RunError> {
        let app = &spec.app;
        let js = spec
            .jobs
            .get(job)
            .ok_or_else(|| RunError::Other(format!("`{app}` has no job `{job}`")))?;
        let job_key = (app.clone(), job.to_string());
        let release_key = (app.clone(), release.to_string());
        // Under one lock: is the job free, is its release still there? If so, both are
        // held (the slot, and the release against pruning) until the run is recorded.
        let held = {
            let mut rt = self.rt();
            if rt.pruning.contains(&release_key) {
                return Err(RunError::Pruned);
            }
            let slot = rt.jobs.entry(job_key.clone()).or_default();
            match (&slot.running, slot.starting) {
                (Some(r), _) => Err(Some(r.run_id)),
                (None, true) => Err(None),
                (None, false) => {
                    slot.starting = true;
                    *rt.starting.entry(release_key.clone()).or_default() += 1;
                    Ok(())
                }
            }
        };
        if let Err(previous) = held {
            let why = previous.map_or("a run is being started".to_string(), |p| {
                format!("run {p} is still going")
            });
            let id = self
                .db(|s| s.start_job_run(app, job, release, trigger, "skipped"))
                .map_err(|e| RunError::Other(e.to_string()))?;
            let closed = self.db(|s| s.finish_job_run(id, "skipped", None, &why));
            self.noted(Some(app), "record a skipped job run", closed);
            self.event(Some(app), "job.skipped", Some(job), &why);
            return Err(RunError::Other(format!(
                "job `{job}` is still running ({why})"
            )));
        }
        let _starting = Starting {
            agent: self,
            job: job_key.clone(),
            release: release_key,
        };
        let cwd = self.paths.release_dir(app, release);
        // Pruned before the hold was taken (the mark is gone once the tree is).
        if !cwd.is_dir() {
            return Err(RunError::Pruned);
        }
        let run_id = self
            .db(|s| s.start_job_run(app, job, release, trigger, "running"))
            .map_err(|e| RunError::Other(e.to_string()))?;
        let env = self
            .app_env(spec, release, job, &BTreeMap::new())
            .map_err(|e| RunError::Other(e.to_string()))?;
        let ispec = InstanceSpec {
            instance: run_instance(run_id),
            app: app.clone(),
            service: job.to_string(),
            release: release.to_string(),
            command: js.command.clone(),
            cwd,
            env,
            stop_signal: hoist_supervisor::Signal::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            user: self.run_as(None),
            log_dir: self.paths.logs(app),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 2,
        };
        let sup = self.supervisor.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            crate::failpoint("job_spawn", "before");
            sup.spawn(&ispec)
        })
        .await
        .map_err(|e| RunError::Other(e.to_string()))?;
        match spawned {
            Ok(handle) => {
                let mut rt = self.rt();
                let slot = rt.jobs.entry(job_key).or_default();
                slot.running = Some(Running {
                    run_id,
                    release: release.to_string(),
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
                Err(RunError::Other(msg))
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
