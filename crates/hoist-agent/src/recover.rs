//! What a starting agent does before it serves: reconcile what it finds running (shims
//! found by their identity records, checked by pid *and* start time) with its journal
//! and desired state. It never trusts the journal alone:
//!
//! - an instance whose shim lives and whose row wants it running is re-adopted, not
//!   restarted; a live instance without such a row is an orphan and is stopped;
//! - a row whose instance is gone is started again;
//! - an operation left open by a dead agent is closed as failed, and instances of
//!   releases that are neither current nor standby are stopped, so exactly one release
//!   serves each route.

use std::sync::Arc;
use std::time::Instant;

use hoist_core::spec::AppSpec;
use hoist_supervisor::Adopted;

use crate::runtime::Phase;
use crate::Agent;

impl Agent {
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<(), hoist_state::StateError> {
        // 1. Close what a dead agent left open.
        // A read error here must not pass for "nothing was interrupted": the agent
        // refuses to start rather than act on a state it cannot read.
        let open = self.db(|s| s.unfinished_operations())?;
        for op in open {
            self.close_interrupted(&op)?;
        }

        // 2. Desired state from the table, with each release's spec.
        let rows = self.db(|s| s.instances())?;
        let mut specs: std::collections::HashMap<(String, String), Arc<AppSpec>> =
            Default::default();
        for row in rows {
            let key = (row.app.clone(), row.release.clone());
            let spec = match specs.get(&key) {
                Some(s) => s.clone(),
                None => match self.spec_of(&row.app, &row.release) {
                    Some(s) => {
                        specs.insert(key, s.clone());
                        s
                    }
                    None => {
                        tracing::warn!(instance = %row.instance, "instance of an unknown release; dropping its row");
                        let removed = self.db(|s| s.remove_instance(&row.instance));
                        self.noted(
                            Some(&row.app),
                            "drop the row of an unknown release's instance",
                            removed,
                        );
                        continue;
                    }
                },
            };
            match self.live_for(&spec, row.clone()) {
                Ok(live) => {
                    self.rt().instances.insert(row.instance.clone(), live);
                }
                Err(e) => {
                    tracing::warn!(instance = %row.instance, error = %e, "cannot rebuild an instance")
                }
            }
        }
        let apps = self.db(|s| s.apps())?;
        for app in apps {
            let cur = self.db(|s| s.current(&app))?;
            if let Some(cur) = cur {
                let spec = specs
                    .get(&(app.clone(), cur.release.clone()))
                    .cloned()
                    .or_else(|| self.spec_of(&app, &cur.release));
                if let Some(spec) = spec {
                    self.rt()
                        .specs
                        .insert(app.clone(), (cur.release.clone(), spec));
                }
            }
        }

        // 3. What really runs.
        let found = self.supervisor.adopt().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the run directory");
            Vec::new()
        });
        let mut orphans = Vec::new();
        let mut adopted = Vec::new();
        let runs = self.db(|s| s.job_runs(None, 200))?;
        for a in found {
            match a {
                Adopted::Running(handle) => {
                    let id = handle.id().to_string();
                    // A job run that outlived the agent: keep watching it to its end.
                    if let Some(run) = runs
                        .iter()
                        .find(|r| r.status == "running" && crate::jobs::run_instance(r.id) == id)
                    {
                        let timeout = self
                            .rt()
                            .specs
                            .get(&run.app)
                            .and_then(|(_, s)| s.jobs.get(&run.job).map(|j| j.timeout))
                            .unwrap_or(std::time::Duration::from_secs(3600));
                        let started = Instant::now()
                            .checked_sub(
                                (chrono::Utc::now() - handle.started_at())
                                    .to_std()
                                    .unwrap_or_default(),
                            )
                            .unwrap_or_else(Instant::now);
                        self.rt()
                            .jobs
                            .entry((run.app.clone(), run.job.clone()))
                            .or_default()
                            .running = Some(crate::jobs::Running {
                            run_id: run.id,
                            release: run.release.clone(),
                            handle,
                            started,
                            timeout,
                            timed_out: false,
                        });
                        continue;
                    }
                    let mut rt = self.rt();
                    match rt.instances.get_mut(&id) {
                        Some(live) if live.row.desired == "run" => {
                            let age = (chrono::Utc::now() - handle.started_at())
                                .to_std()
                                .unwrap_or_default();
                            live.handle = Some(handle);
                            live.phase = Phase::Running;
                            live.started = Instant::now().checked_sub(age).or(Some(Instant::now()));
                            live.next_start = None;
                            live.generation += 1;
                            adopted.push((id.clone(), live.generation));
                        }
                        _ => orphans.push((id, handle)),
                    }
                }
                Adopted::Exited {
                    identity,
                    orphan_killed,
                    ..
                } => {
                    if orphan_killed {
                        tracing::warn!(instance = %identity.instance, "killed an app whose shim had died");
                    }
                    let _ = self.supervisor.forget(&identity.instance);
                }
            }
        }
        // Runs neither adopted above nor finished died with the agent's host or shim.
        let alive: Vec<i64> = self
            .rt()
            .jobs
            .values()
            .filter_map(|s| s.running.as_ref().map(|r| r.run_id))
            .collect();
        let closed = self.db(|s| s.close_lost_job_runs_except(&alive));
        self.noted(None, "close the job runs a dead agent left running", closed);
        tracing::info!(
            adopted = adopted.len(),
            orphans = orphans.len(),
            "re-adopted running instances"
        );
        // What the proxy serves now is the truth about traffic: adopted instances in its
        // sets stay there (their checks resume and correct it), so the routes never empty.
        if let Some(proxy) = &self.proxy {
            if let Ok(hoist_protocol::proxy::Reply::Routes { mut routes }) =
                proxy.request(hoist_protocol::proxy::Request::Routes).await
            {
                // A canary a dead agent left in the proxy is undone before its instances
                // are stopped below: every client goes back to the route's release (the
                // committed one), so none is sent to an instance that is going away.
                for route in routes.iter_mut().filter(|r| r.canary.is_some()) {
                    route.canary = None;
                    let set = hoist_protocol::proxy::Request::SetRoute {
                        route: route.clone(),
                    };
                    match proxy.request(set).await {
                        Ok(_) => {
                            tracing::warn!(route = %route.id, "took off the canary an interrupted deploy left")
                        }
                        Err(e) => {
                            tracing::error!(route = %route.id, error = %e, "cannot take off the canary an interrupted deploy left")
                        }
                    }
                }
                let serving: std::collections::HashSet<&str> = routes
                    .iter()
                    .flat_map(|r| r.upstreams.iter().map(|u| u.instance.as_str()))
                    .collect();
                let now = Instant::now();
                let mut rt = self.rt();
                for live in rt.instances.values_mut() {
                    if live.handle.is_some() && serving.contains(live.row.instance.as_str()) {
                        live.tracker = crate::health::Tracker::serving(now);
                    }
                }
                for route in routes {
                    rt.routes_sent.insert(route.id.clone(), route);
                }
            }
        }
        for (id, generation) in adopted {
            self.watch_health(id, generation);
        }
        for (id, handle) in orphans {
            tracing::warn!(instance = %id, pid = handle.app_pid(), "stopping an instance nothing wants");
            let timeout = std::time::Duration::from_secs(30);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = handle.stop();
                if !handle.wait_stopped(timeout) {
                    let _ = handle.kill_now();
                }
            })
            .await;
            let _ = self.supervisor.forget(&id);
        }

        // 4. Rows marked for stopping finish stopping; releases neither current nor
        //    standby (an interrupted deploy's) go away.
        let apps = self.db(|s| s.apps())?;
        let mut currents = std::collections::HashMap::new();
        for app in apps {
            let cur = self.db(|s| s.current(&app))?;
            currents.insert(app, cur);
        }
        let stale: Vec<String> = {
            let rt = self.rt();
            rt.instances
                .values()
                .filter(|l| {
                    let cur = currents.get(&l.row.app).cloned().flatten();
                    let keep = cur.as_ref().is_some_and(|c| {
                        c.release == l.row.release || c.standby.as_deref() == Some(&l.row.release)
                    });
                    l.row.desired != "run" || !keep
                })
                .map(|l| l.row.instance.clone())
                .collect()
        };
        if !stale.is_empty() {
            tracing::info!(
                count = stale.len(),
                "stopping instances of no current or standby release"
            );
            self.stop_instances(&stale).await;
        }

        // 5. Every current release has all its instances (an interrupted deploy may have
        //    stopped a singleton of the release that serves again).
        let host = self.host_name();
        let current: Vec<(String, String, Arc<AppSpec>)> = self
            .rt()
            .specs
            .iter()
            .map(|(a, (r, s))| (a.clone(), r.clone(), s.clone()))
            .collect();
        for (app, release, spec) in current {
            let existing = self.instances_of(&app, |r| r == release);
            match self.add_instances_filtered(&spec, &release, &host, &existing) {
                Ok(added) if !added.is_empty() => {
                    tracing::info!(app = %app, count = added.len(), "starting missing instances of the current release");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(app = %app, error = %e, "cannot restore the current release's instances")
                }
            }
        }
        Ok(())
    }

    /// Closes an operation a dead agent left open with what is actually true. The truth
    /// about traffic is the committed current release, not the journal's last line: the
    /// agent may have died after `switch` committed but before it journaled `end`.
    ///
    /// - The new release is committed and everything after the switch that verifies it
    ///   (the smoke hook, the bake window) has passed or is not configured: the operation
    ///   succeeded; recovery finishes what is left (drain, retire).
    /// - It is committed but not verified: production goes back to the release before
    ///   (committed again), and the operation failed, saying so. With no release before,
    ///   there is nothing to go back to: it stays, and the record says what did not run.
    /// - It is not committed: the operation failed and the old release serves.
    ///
    /// So the history never contradicts the current release.
    fn close_interrupted(
        &self,
        op: &hoist_state::Operation,
    ) -> Result<(), hoist_state::StateError> {
        let journal = self.db(|s| s.journal_of(op.id))?;
        let current = self.db(|s| s.current(&op.app))?;
        let step = journal
            .last()
            .map_or("start".to_string(), |j| format!("{} ({})", j.step, j.phase));
        let done = |name: &str| journal.iter().any(|j| j.step == name && j.phase == "end");
        let began = |name: &str| journal.iter().any(|j| j.step == name && j.phase == "begin");
        let committed = op.release.is_some()
            && op.release != op.previous
            && current.as_ref().map(|c| &c.release) == op.release.as_ref()
            && began("switch");
        // What verifies a deploy after its switch, from the release's own spec; a spec that
        // cannot be read counts every verification that began as required.
        let spec = op.release.as_deref().and_then(|r| self.spec_of(&op.app, r));
        let needs = |name: &str, configured: fn(&AppSpec) -> bool| {
            op.kind == "deploy" && spec.as_deref().map_or(began(name), configured) && !done(name)
        };
        let unverified: Vec<&str> = [
            ("smoke", needs("smoke", |s| s.hooks.smoke.is_some())),
            ("bake", needs("bake", |s| s.deploy.bake.is_some())),
        ]
        .into_iter()
        .filter_map(|(n, missing)| missing.then_some(n))
        .collect();
        // A rollback across a migration whose restore finished before the agent stopped:
        // the data is the target's, so the target is made current (recovery then starts
        // its instances) rather than the migrated release running on restored data.
        let restored: Vec<&str> = journal
            .iter()
            .filter(|j| j.step == "restore" && j.phase == "restored")
            .filter_map(|j| j.detail.as_deref())
            .collect();
        if op.kind == "rollback" && !committed && !restored.is_empty() {
            if let Some(target) = &op.release {
                tracing::warn!(app = %op.app, release = %target, "a rollback restored its data before the agent stopped: making its release current");
                let cur = hoist_state::Current {
                    app: op.app.clone(),
                    release: target.clone(),
                    standby: None,
                    standby_until_ms: None,
                };
                self.db(|s| s.set_current(&cur))?;
                let reason = format!(
                    "completed by recovery: data restored ({}) before the agent stopped during `{step}`; `{target}` made current and started",
                    restored.join("; ")
                );
                self.db(|s| s.finish_operation(op.id, "succeeded", Some(&reason), None))?;
                self.event(Some(&op.app), "rollback.succeeded", Some(target), &reason);
                return Ok(());
            }
        }
        let (result, reason) = if !committed {
            (
                "failed",
                format!("interrupted: the agent stopped during `{step}`; the release before still serves"),
            )
        } else if unverified.is_empty() {
            (
                "succeeded",
                format!("completed by recovery: the agent stopped during `{step}` after the switch was committed"),
            )
        } else if let Some(previous) = &op.previous {
            // Switched but never verified: production goes back to what it was.
            tracing::warn!(app = %op.app, release = %previous, "switching back to the release before the interrupted deploy");
            let back = hoist_state::Current {
                app: op.app.clone(),
                release: previous.clone(),
                standby: None,
                standby_until_ms: None,
            };
            self.db(|s| s.set_current(&back))?;
            (
                "failed",
                format!(
                    "interrupted: the agent stopped during `{step}` before {} ran; recovery switched back to `{previous}`",
                    unverified.join(" and ")
                ),
            )
        } else {
            (
                "succeeded",
                format!(
                    "completed by recovery: the agent stopped during `{step}` after the switch was committed; {} did not run and there is no earlier release to go back to",
                    unverified.join(" and ")
                ),
            )
        };
        tracing::warn!(app = %op.app, operation = op.id, %reason, "closing an interrupted operation");
        self.db(|s| s.finish_operation(op.id, result, Some(&reason), None))?;
        let kind = format!("{}.{result}", op.kind);
        self.event(Some(&op.app), &kind, op.release.as_deref(), &reason);
        Ok(())
    }
}
