//! The deploy engine: makes a release current on this host without a failed request, and
//! undoes itself when anything fails. Every step is journaled before and after it runs.
//!
//! ```text
//! materialise → preflight → backup → pre_activate → start → healthy
//!   → [canary 5% → canary 25% → …] → switch → smoke → bake → drain → retire
//! ```
//!
//! A failure before `switch` stops the new instances and leaves the old release serving;
//! a failed smoke hook switches traffic back. Rollback is the same activation towards an
//! older release: when that release is still warm (its standby window), starting and
//! waiting take no time and the switch is all that happens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_core::spec::AppSpec;
use hoist_protocol::agent::{Outcome, Progress};
use hoist_protocol::proxy::Request;
use hoist_state::Current;

use crate::http::LineSender;
use crate::lifecycle::DataPlan;
use crate::Agent;

/// Why a deploy stopped, with the output that explains it.
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    pub lines: Vec<String>,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            lines: Vec::new(),
        }
    }
}

/// The proxy's counters of one release of one app, summed over its routes.
#[derive(Debug, Clone, Default)]
struct Counters {
    total: u64,
    errors: u64,
    bounds_ms: Vec<f64>,
    buckets: Vec<u64>,
}

impl Counters {
    fn of(routes: &[hoist_protocol::proxy::RouteStats], app: &str, release: &str) -> Counters {
        let mut c = Counters::default();
        let prefix = format!("{app}/");
        for r in routes
            .iter()
            .filter(|r| r.release == release && r.route.starts_with(&prefix))
        {
            c.total += r.status.iter().sum::<u64>() + r.upstream_errors;
            c.errors += r.status[4] + r.upstream_errors;
            if c.buckets.len() < r.latency.counts.len() {
                c.buckets.resize(r.latency.counts.len(), 0);
                c.bounds_ms = r.latency.bounds_ms.clone();
            }
            for (b, n) in c.buckets.iter_mut().zip(&r.latency.counts) {
                *b += n;
            }
        }
        c
    }

    fn minus(&self, base: &Counters) -> Counters {
        let mut d = self.clone();
        d.total = d.total.saturating_sub(base.total);
        d.errors = d.errors.saturating_sub(base.errors);
        for (b, n) in d.buckets.iter_mut().zip(&base.buckets) {
            *b = b.saturating_sub(*n);
        }
        d
    }

    /// The upper bound of the bucket holding the 99th percentile (infinite past the last).
    fn p99_ms(&self) -> Option<f64> {
        let n: u64 = self.buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let want = (n as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= want {
                return Some(self.bounds_ms.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// A canary step's figures: `12 of 40 answers 5xx (30.0%, limit 1%), p99 ≤ 25 ms`.
fn canary_figures(c: &Counters, canary: &hoist_core::spec::CanarySpec) -> String {
    let rate = if c.total == 0 {
        0.0
    } else {
        c.errors as f64 * 100.0 / c.total as f64
    };
    let mut s = format!(
        "{} of {} answers 5xx ({rate:.1}%, limit {})",
        c.errors,
        c.total,
        hoist_core::spec::percent_of_bp(canary.max_error_bp)
    );
    if let Some(p99) = c.p99_ms() {
        if p99.is_finite() {
            s.push_str(&format!(", p99 ≤ {p99} ms"));
        } else {
            s.push_str(", p99 above the last bucket");
        }
        if let Some(limit) = canary.max_p99 {
            s.push_str(&format!(" (limit {} ms)", limit.as_millis()));
        }
    }
    s
}

/// Why a canary step fails on these counters, if it does.
fn canary_verdict(c: &Counters, canary: &hoist_core::spec::CanarySpec) -> Option<String> {
    // Compared in integers: errors / total > max_bp / 10000.
    if u128::from(c.errors) * 10_000 > u128::from(c.total) * u128::from(canary.max_error_bp) {
        return Some("error rate over max_error_rate".into());
    }
    if let (Some(limit), Some(p99)) = (canary.max_p99, c.p99_ms()) {
        if p99 > limit.as_secs_f64() * 1000.0 {
            return Some("p99 over max_p99".into());
        }
    }
    None
}

/// A check or hook to run in a release.
#[derive(Clone, Copy)]
struct Command<'a> {
    name: &'a str,
    command: &'a str,
    /// `HOIST_URL`, for the smoke hook.
    url: Option<&'a str>,
    timeout: Duration,
}

impl<'a> Command<'a> {
    fn hook(name: &'a str, command: &'a str, spec: &AppSpec, url: Option<&'a str>) -> Command<'a> {
        Command {
            name,
            command,
            url,
            timeout: spec.hooks.timeout,
        }
    }
}

/// What kind of activation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deploy,
    Rollback,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
        }
    }
}

/// One running operation: its journal id and the stream to the client.
struct Op<'a> {
    agent: &'a Arc<Agent>,
    id: i64,
    tx: &'a LineSender,
    redact: Vec<String>,
    /// What a succeeded operation's history record says (the canary's steps).
    notes: std::sync::Mutex<Vec<String>>,
}

impl Op<'_> {
    async fn progress(&self, step: &str, phase: &str, message: Option<String>) {
        let _ = self
            .tx
            .send(&Progress::Step {
                step: step.into(),
                phase: phase.into(),
                at_ms: hoist_state::now_ms(),
                message,
            })
            .await;
    }

    /// Runs `step`, journaled before and after: `begin`, then `end` or `failed`.
    async fn step<T>(
        &self,
        step: &str,
        fut: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        self.journal(step, "begin", None);
        self.progress(step, "begin", None).await;
        crate::failpoint(step, "before");
        let out = fut.await;
        match &out {
            Ok(_) => {
                crate::failpoint(step, "after");
                self.journal(step, "end", None);
                self.progress(step, "end", None).await;
            }
            Err(f) => {
                self.journal(step, "failed", Some(&f.reason));
                self.progress(step, "failed", Some(f.reason.clone())).await;
            }
        }
        out
    }

    fn journal(&self, step: &str, phase: &str, detail: Option<&str>) {
        if let Err(e) = self.agent.db(|s| s.journal(self.id, step, phase, detail)) {
            tracing::error!(error = %e, step, "cannot journal a deploy step");
        }
    }

    /// Hides every secret value in a line of hook output before it is sent or kept.
    fn redact(&self, line: &str) -> String {
        let mut out = line.to_string();
        for secret in &self.redact {
            if secret.len() >= 4 {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }

    async fn output(&self, source: &str, line: &str) {
        let _ = self
            .tx
            .send(&Progress::Output {
                source: source.into(),
                line: self.redact(line),
            })
            .await;
    }
}

impl Agent {
    /// Runs a deploy (or rollback) to the end, streaming progress to `tx`; the last line
    /// is always a `Done` with the outcome.
    pub(crate) async fn activate(
        self: &Arc<Self>,
        kind: Kind,
        spec: Arc<AppSpec>,
        release: String,
        host: String,
        actor: String,
        tx: LineSender,
    ) -> Outcome {
        self.activate_with(kind, spec, release, host, actor, tx, DataPlan::Untouched)
            .await
    }

    /// [`Agent::activate`] with what a rollback does to the app's data; its note is the
    /// history record's reason, so the history says which data the app runs on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn activate_with(
        self: &Arc<Self>,
        kind: Kind,
        spec: Arc<AppSpec>,
        release: String,
        host: String,
        actor: String,
        tx: LineSender,
        data: DataPlan,
    ) -> Outcome {
        let app = spec.app.clone();
        let started = Instant::now();
        let previous = self.db(|s| s.current(&app)).ok().flatten();
        let prev_release = previous.as_ref().map(|c| c.release.clone());
        let op = match self.db(|s| {
            s.begin_operation(
                &app,
                kind.name(),
                Some(&release),
                prev_release.as_deref(),
                &actor,
            )
        }) {
            Ok(op) => op,
            Err(e) => {
                return self.outcome(
                    &app,
                    Err(Failure::new(e.to_string())),
                    &release,
                    prev_release,
                    started,
                )
            }
        };
        let commit = self.commit_of(&app, &release);
        let redact: Vec<String> = self
            .secrets
            .values(&app)
            .map(|m| m.into_values().collect())
            .unwrap_or_default();
        let o = Op {
            agent: self,
            id: op.id,
            tx: &tx,
            redact,
            notes: Default::default(),
        };
        let result = self
            .run_steps(&o, kind, &spec, &release, &host, previous.as_ref(), &data)
            .await;
        if let Err(f) = &result {
            for line in &f.lines {
                o.output("failure", line).await;
            }
        }
        let notes = std::mem::take(&mut *o.notes.lock().unwrap_or_else(|e| e.into_inner()));
        let (res, reason) = match &result {
            Ok(()) => {
                // The data note (a rollback's restore or kept data) and the canary's steps.
                let mut all: Vec<String> = data.note().map(str::to_string).into_iter().collect();
                all.extend(notes);
                ("succeeded", (!all.is_empty()).then(|| all.join("; ")))
            }
            Err(f) => ("failed", Some(f.reason.clone())),
        };
        if let Err(e) =
            self.db(|s| s.finish_operation(op.id, res, reason.as_deref(), commit.as_deref()))
        {
            tracing::error!(error = %e, "cannot record the end of an operation");
        }
        self.event(
            Some(&app),
            &format!("{}.{res}", kind.name()),
            Some(&release),
            reason.as_deref().unwrap_or("ok"),
        );
        let released = self.db(|s| s.release_lock(&app));
        self.noted(Some(&app), "release the deploy lock", released);
        self.outcome(&app, result, &release, prev_release, started)
    }

    fn outcome(
        &self,
        app: &str,
        result: Result<(), Failure>,
        release: &str,
        previous: Option<String>,
        started: Instant,
    ) -> Outcome {
        Outcome {
            app: app.to_string(),
            result: if result.is_ok() {
                "succeeded".into()
            } else {
                "failed".into()
            },
            release: Some(release.to_string()),
            previous,
            reason: result.err().map(|f| f.reason),
            url: self.config.proxy.map(|a| format!("http://{a}/")),
            duration_ms: started.elapsed().as_millis() as i64,
        }
    }

    fn commit_of(&self, app: &str, release: &str) -> Option<String> {
        let row = self.db(|s| s.release(app, release)).ok().flatten()?;
        let m: serde_json::Value = serde_json::from_str(&row.manifest).ok()?;
        m.pointer("/build/commit")
            .and_then(|c| c.as_str())
            .map(str::to_string)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_steps(
        self: &Arc<Self>,
        o: &Op<'_>,
        kind: Kind,
        spec: &Arc<AppSpec>,
        release: &str,
        host: &str,
        previous: Option<&Current>,
        data: &DataPlan,
    ) -> Result<(), Failure> {
        let app = spec.app.clone();
        if previous.is_some_and(|p| p.release == release) {
            return Err(Failure::new(format!(
                "release `{release}` is already current"
            )));
        }
        o.step("materialise", async {
            self.materialise(&app, release).await
        })
        .await?;
        self.paths
            .give_data_dir(&app, self.apps_user.as_ref().map(|u| (u.uid, u.gid)))
            .map_err(|e| Failure::new(format!("cannot create the data dir: {e}")))?;
        if kind == Kind::Deploy {
            o.step("preflight", async {
                self.preflight(o, spec, release).await
            })
            .await?;
            // Every `before_deploy` backup; a failure stops the deploy before `pre_activate`.
            o.step("backup", async {
                let (notes, taken) = self
                    .backups_before_deploy(spec)
                    .await
                    .map_err(Failure::new)?;
                // `taken` lines name the backup a rollback across this deploy restores.
                for (name, id) in taken {
                    o.journal("backup", "taken", Some(&format!("{name}={id}")));
                }
                for note in notes {
                    o.journal("backup", "note", Some(&note));
                    o.progress("backup", "note", Some(note)).await;
                }
                Ok(())
            })
            .await?;
            if let Some(cmd) = &spec.hooks.pre_activate {
                o.step(
                    "pre_activate",
                    self.run_command(
                        o,
                        spec,
                        release,
                        &Command::hook("pre_activate", cmd, spec, None),
                    ),
                )
                .await?;
            }
        }
        if let DataPlan::Restore { backups, .. } = data {
            self.restore_in_rollback(o, spec, previous, backups).await?;
        }
        let old_ids = self.instances_of(&app, |r| r != release);
        let new_ids = o
            .step("start", async {
                self.start_release(spec, release, host, &old_ids).await
            })
            .await?;
        // A rollback goes back to a release that served: traffic waits only for its web
        // instances (warm ones are admitted already); its workers start alongside.
        let gate: Vec<String> = match kind {
            Kind::Deploy => new_ids.clone(),
            Kind::Rollback => {
                let rt = self.rt();
                new_ids
                    .iter()
                    .filter(|id| rt.instances.get(*id).is_some_and(|l| l.http.is_some()))
                    .cloned()
                    .collect()
            }
        };
        if let Err(f) = o
            .step(
                "healthy",
                self.wait_healthy(&gate, spec.deploy.health_deadline),
            )
            .await
        {
            // Nothing switched: the old release keeps serving. New instances go away
            // unless they belong to a release that was already warm (a rollback target).
            if kind == Kind::Deploy {
                self.stop_instances(&new_ids).await;
            }
            self.restart_stopped_singletons(&app, previous).await;
            if let (DataPlan::Restore { .. }, Some(p)) = (data, previous) {
                // The restore stopped everything: the release that was current runs again
                // (on the restored data, which the history's failed record names).
                self.stop_instances(&new_ids).await;
                self.start_previous(&app, p).await;
            }
            return Err(f);
        }
        let has_web = spec.services.values().any(|s| s.http.is_some());
        if kind == Kind::Deploy && spec.deploy.canary.is_some() && (previous.is_none() || !has_web)
        {
            let why = if has_web {
                "no release serves yet, so there is nothing to compare with"
            } else {
                "the app has no web service"
            };
            o.output("canary", &format!("skipped: {why}")).await;
        }
        if let (Kind::Deploy, Some(canary), Some(_), true, Some(_)) =
            (kind, &spec.deploy.canary, previous, has_web, &self.proxy)
        {
            if let Err(f) = self.canary(o, spec, release, canary, &new_ids).await {
                // Nothing was switched: every client goes back to the release that
                // serves (the route without its canary side), then the new one stops.
                self.rt().canaries.remove(&app);
                if let Err(e) = self.sync_routes_checked(&app).await {
                    tracing::error!(app = %app, error = %e, "cannot take the canary off the routes");
                }
                self.stop_instances(&new_ids).await;
                self.restart_stopped_singletons(&app, previous).await;
                return Err(f);
            }
            // The switch below replaces each route whole: its release becomes the
            // canary's and the canary side goes, in one table.
            self.rt().canaries.remove(&app);
        }
        let standby_until = hoist_state::now_ms() + spec.deploy.standby.as_millis() as i64;
        let cur = Current {
            app: app.clone(),
            release: release.to_string(),
            standby: previous.map(|p| p.release.clone()),
            standby_until_ms: previous.map(|_| standby_until),
        };
        o.step("switch", async { self.switch(spec.clone(), &cur).await })
            .await?;
        if let (Kind::Deploy, Some(cmd)) = (kind, &spec.hooks.smoke) {
            let url = self.config.proxy.map(|a| format!("http://{a}"));
            if let Err(f) = o
                .step(
                    "smoke",
                    self.run_command(
                        o,
                        spec,
                        release,
                        &Command::hook("smoke", cmd, spec, url.as_deref()),
                    ),
                )
                .await
            {
                self.switch_back(o, spec, previous, &new_ids).await?;
                return Err(f);
            }
        }
        if let (Kind::Deploy, Some(bake)) = (kind, &spec.deploy.bake) {
            if let Err(f) = o
                .step("bake", self.bake(&app, release, bake, &new_ids))
                .await
            {
                self.switch_back(o, spec, previous, &new_ids).await?;
                return Err(f);
            }
        }
        let drain_ms = spec
            .services
            .values()
            .filter_map(|s| s.http.as_ref())
            .map(|h| h.drain_timeout.as_millis() as u64)
            .max()
            .unwrap_or(0);
        let old_web: Vec<std::net::SocketAddr> = {
            let rt = self.rt();
            old_ids
                .iter()
                .filter_map(|id| rt.instances.get(id))
                .filter(|l| l.http.is_some())
                .filter_map(|l| l.upstream().map(|u| u.addr))
                .collect()
        };
        o.step("drain", async {
            if let (Some(proxy), false) = (&self.proxy, old_web.is_empty()) {
                proxy
                    .request(Request::WaitDrained {
                        addrs: old_web.clone(),
                        timeout_ms: drain_ms,
                    })
                    .await
                    .map_err(|e| Failure::new(format!("drain failed: {e}")))?;
            }
            Ok(())
        })
        .await?;
        o.step("retire", async {
            self.retire(&app, spec.deploy.standby > Duration::ZERO)
                .await;
            Ok(())
        })
        .await?;
        o.step("prune", async {
            self.prune(&app, spec.deploy.keep_releases as usize).await;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// After a failed smoke hook or bake: traffic goes back to the release that served
    /// before (still warm), and the new instances stop.
    /// The data half of a rollback across a migration, before the target starts: the
    /// backups are checked (refused before anything stops), every instance of the app
    /// stops and its routes go, then each backup is restored and checked. A failed
    /// restore starts the current release again (the engines leave data as it was).
    async fn restore_in_rollback(
        self: &Arc<Self>,
        o: &Op<'_>,
        spec: &Arc<AppSpec>,
        previous: Option<&Current>,
        backups: &[(String, i64)],
    ) -> Result<(), Failure> {
        let app = spec.app.clone();
        let prepared = o
            .step("restore_check", async {
                self.prepare_rollback_restore(spec, backups)
                    .await
                    .map_err(|e| Failure::new(format!("refused before anything stopped: {e}")))
            })
            .await?;
        o.journal("restore_check", "note", Some(&prepared.describe()));
        o.step("stop", async {
            let ids = self.instances_of(&app, |_| true);
            self.stop_instances(&ids).await;
            self.sync_routes(&app).await;
            Ok(())
        })
        .await?;
        let restored = o
            .step("restore", async {
                self.run_rollback_restore(prepared, |line| {
                    o.journal("restore", "restored", Some(line))
                })
                .await
                .map_err(Failure::new)
            })
            .await;
        match restored {
            Ok(lines) => {
                for line in lines {
                    o.progress("restore", "note", Some(line)).await;
                }
                Ok(())
            }
            Err(f) => {
                if let Some(p) = previous {
                    self.start_previous(&app, p).await;
                }
                Err(f)
            }
        }
    }

    /// Starts `previous` (the release that was current) again after a rollback's restore
    /// stopped it and the rollback could not finish.
    async fn start_previous(self: &Arc<Self>, app: &str, previous: &Current) {
        let Some(spec) = self.spec_of(app, &previous.release) else {
            tracing::error!(app, "no spec to start the current release again");
            return;
        };
        if let Err(e) = self.start_current(&spec, &previous.release).await {
            tracing::error!(app, error = %e, "the current release did not start again");
        }
    }

    async fn switch_back(
        self: &Arc<Self>,
        o: &Op<'_>,
        spec: &Arc<AppSpec>,
        previous: Option<&Current>,
        new_ids: &[String],
    ) -> Result<(), Failure> {
        if let Some(prev) = previous {
            let back = self
                .spec_of(&spec.app, &prev.release)
                .unwrap_or_else(|| spec.clone());
            let cur = Current {
                app: spec.app.clone(),
                release: prev.release.clone(),
                standby: None,
                standby_until_ms: None,
            };
            o.step("switch_back", async { self.switch(back, &cur).await })
                .await?;
        }
        self.stop_instances(new_ids).await;
        Ok(())
    }

    /// The bake window: for `bake.duration` after the switch, the proxy's own counters
    /// for the new release are read every half second. More than `max_5xx_percent` of
    /// 5xx answers (upstream errors count as 5xx), a p99 over `max_p99`, or a new
    /// instance turning unhealthy fails it. Ratios are judged from 20 answers on.
    async fn bake(
        &self,
        app: &str,
        release: &str,
        bake: &hoist_core::spec::BakeSpec,
        new_ids: &[String],
    ) -> Result<(), Failure> {
        let Some(proxy) = &self.proxy else {
            return Ok(());
        };
        let snapshot = || async {
            match proxy.request(Request::Stats).await {
                Ok(hoist_protocol::proxy::Reply::Stats { routes }) => {
                    Ok(Counters::of(&routes, app, release))
                }
                Ok(other) => Err(Failure::new(format!(
                    "the proxy answered {other:?} to a stats request"
                ))),
                Err(e) => Err(Failure::new(format!(
                    "cannot read the proxy's counters: {e}"
                ))),
            }
        };
        let base = snapshot().await?;
        let until = Instant::now() + bake.duration;
        while Instant::now() < until {
            tokio::time::sleep(
                Duration::from_millis(500).min(until.saturating_duration_since(Instant::now())),
            )
            .await;
            let now = snapshot().await?.minus(&base);
            if now.total >= 20 {
                let pct = now.errors as f64 * 100.0 / now.total as f64;
                if pct > bake.max_5xx_percent as f64 {
                    return Err(Failure::new(format!(
                        "the bake failed: {pct:.1}% of {} answers were 5xx or upstream errors (limit {}%)",
                        now.total, bake.max_5xx_percent
                    )));
                }
                if let (Some(limit), Some(p99)) = (bake.max_p99, now.p99_ms()) {
                    if p99 > limit.as_secs_f64() * 1000.0 {
                        return Err(Failure::new(format!(
                            "the bake failed: p99 latency {p99:.0} ms over {} answers is above {} ms",
                            now.total,
                            limit.as_millis()
                        )));
                    }
                }
            }
            let sick: Vec<String> = {
                let rt = self.rt();
                new_ids
                    .iter()
                    .filter(|id| {
                        rt.instances.get(*id).is_some_and(|l| {
                            l.handle.is_none()
                                || l.tracker.state() == crate::health::Health::Unhealthy
                        })
                    })
                    .cloned()
                    .collect()
            };
            if let Some(id) = sick.first() {
                return Err(Failure::new(format!(
                    "the bake failed: instance `{id}` turned unhealthy or exited"
                )));
            }
        }
        Ok(())
    }

    /// The proxy's counters of `release` of `app` now.
    async fn release_counters(&self, app: &str, release: &str) -> Result<Counters, Failure> {
        let Some(proxy) = &self.proxy else {
            return Ok(Counters::default());
        };
        match proxy.request(Request::Stats).await {
            Ok(hoist_protocol::proxy::Reply::Stats { routes }) => {
                Ok(Counters::of(&routes, app, release))
            }
            Ok(other) => Err(Failure::new(format!(
                "the proxy answered {other:?} to a stats request"
            ))),
            Err(e) => Err(Failure::new(format!(
                "cannot read the proxy's counters: {e}"
            ))),
        }
    }

    /// The canary: for each step, the proxy sends that share of clients to the new
    /// release (sticky per client), and after `interval` the step is judged on the new
    /// release's own counters over that step — 5xx share (upstream errors count) and p99
    /// — once `min_requests` answers were seen (a step short of them waits up to
    /// [`CanarySpec::MAX_EXTENSIONS`] more intervals, saying so, then fails: a canary
    /// nobody used proves nothing). A step fails early as soon as it has `min_requests`
    /// answers over a limit, so a bad release reaches as few clients as possible. Each
    /// step is journaled (`canary 5%`), its figures shown and kept for the history.
    ///
    /// [`CanarySpec::MAX_EXTENSIONS`]: hoist_core::spec::CanarySpec::MAX_EXTENSIONS
    async fn canary(
        self: &Arc<Self>,
        o: &Op<'_>,
        spec: &Arc<AppSpec>,
        release: &str,
        canary: &hoist_core::spec::CanarySpec,
        new_ids: &[String],
    ) -> Result<(), Failure> {
        use hoist_core::spec::{percent_of_bp, CanarySpec};
        let app = &spec.app;
        let steps = canary.steps_bp.len();
        for (i, &bp) in canary.steps_bp.iter().enumerate() {
            let pct = percent_of_bp(bp);
            let name = format!("canary {pct}");
            let judged = o
                .step(&name, async {
                    self.rt()
                        .canaries
                        .insert(app.clone(), (release.to_string(), bp));
                    self.sync_routes_checked(app).await.map_err(Failure::new)?;
                    let base = self.release_counters(app, release).await?;
                    let started = Instant::now();
                    let mut until = started + canary.interval;
                    let mut extended = 0;
                    let at = format!("canary step {} of {steps} ({pct} of clients)", i + 1);
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        tokio::time::sleep(Duration::from_millis(250).min(left)).await;
                        let now = self.release_counters(app, release).await?.minus(&base);
                        let figures = canary_figures(&now, canary);
                        if now.total >= canary.min_requests {
                            if let Some(why) = canary_verdict(&now, canary) {
                                return Err(Failure::new(format!(
                                    "{at} failed after {:.1}s: {why} ({figures})",
                                    started.elapsed().as_secs_f64()
                                )));
                            }
                        }
                        if let Some(id) = self.sick_instance(new_ids) {
                            return Err(Failure::new(format!(
                                "{at} failed: instance `{id}` turned unhealthy or exited ({figures})"
                            )));
                        }
                        if Instant::now() < until {
                            continue;
                        }
                        if now.total >= canary.min_requests {
                            return Ok(format!("{pct}: {figures}: promoted"));
                        }
                        if extended == CanarySpec::MAX_EXTENSIONS {
                            return Err(Failure::new(format!(
                                "{at} failed: only {} answers in {:.0}s, fewer than min_requests = {}; not enough traffic to judge the new release",
                                now.total,
                                started.elapsed().as_secs_f64(),
                                canary.min_requests
                            )));
                        }
                        extended += 1;
                        o.output(
                            "canary",
                            &format!(
                                "{pct}: {} of min_requests = {} answers seen; waiting {:?} more ({extended} of {})",
                                now.total,
                                canary.min_requests,
                                canary.interval,
                                CanarySpec::MAX_EXTENSIONS
                            ),
                        )
                        .await;
                        until += canary.interval;
                    }
                })
                .await?;
            o.output("canary", &judged).await;
            o.journal(&name, "note", Some(&judged));
            o.notes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("canary {judged}"));
        }
        Ok(())
    }

    /// The first of `ids` that exited or turned unhealthy.
    fn sick_instance(&self, ids: &[String]) -> Option<String> {
        let rt = self.rt();
        ids.iter()
            .find(|id| {
                rt.instances.get(*id).is_some_and(|l| {
                    l.handle.is_none() || l.tracker.state() == crate::health::Health::Unhealthy
                })
            })
            .cloned()
    }

    /// Keeps the newest `keep` releases of `app` (never dropping the current or standby
    /// one, whatever their age) and removes the others' trees; then the blobs no kept
    /// release of any app references.
    pub(crate) async fn prune(&self, app: &str, keep: usize) {
        let rows = self.db(|s| s.releases(app)).unwrap_or_default();
        let cur = self.db(|s| s.current(app)).ok().flatten();
        let protected = |r: &str| {
            cur.as_ref()
                .is_some_and(|c| c.release == r || c.standby.as_deref() == Some(r))
        };
        // Read again below, under the lock, when the doomed releases are marked.
        let running = self.rt().releases_in_use(app);
        // One index lookup per release of the app (not a read of its whole history, which
        // grew with every deploy and held the state lock for it).
        let served: std::collections::HashSet<String> = self.db(|s| {
            rows.iter()
                .filter(|r| s.served(app, &r.release).unwrap_or(false))
                .map(|r| r.release.clone())
                .collect()
        });
        let current_at = cur
            .as_ref()
            .and_then(|c| rows.iter().find(|r| r.release == c.release))
            .map_or(i64::MAX, |r| r.created_at_ms);
        // Releases that never served and are older than the current one failed: they go
        // first. Then the oldest, until `keep` remain. Current and standby always stay, and
        // so does anything with instances (or a newer upload waiting for its deploy).
        let mut doomed: Vec<String> = Vec::new();
        let removable =
            |r: &hoist_state::ReleaseRow| !protected(&r.release) && !running.contains(&r.release);
        for r in rows.iter().filter(|r| {
            removable(r) && !served.contains(&r.release) && r.created_at_ms < current_at
        }) {
            doomed.push(r.release.clone());
        }
        let mut left = rows.len() - doomed.len();
        for r in rows.iter().filter(|r| removable(r)) {
            if left <= keep.max(1) {
                break;
            }
            if r.created_at_ms < current_at && !doomed.contains(&r.release) {
                doomed.push(r.release.clone());
                left -= 1;
            }
        }
        // A job run may have started in one of them since the list was made: under the
        // runtime's lock, drop those still in use and mark the rest, so that no run starts
        // in a tree being removed (a run checks the mark under the same lock).
        {
            let mut rt = self.rt();
            let used = rt.releases_in_use(app);
            doomed.retain(|r| !used.contains(r));
            for r in &doomed {
                rt.pruning.insert((app.to_string(), r.clone()));
            }
        }
        for release in &doomed {
            let dir = self.paths.release_dir(app, release);
            let removed = hoist_artifact::remove_tree(&dir);
            if let Err(e) = &removed {
                tracing::warn!(app, release = %release, error = %e, "cannot remove a pruned release tree");
            } else {
                let forgot = self.db(|s| s.delete_release(app, release));
                self.noted(Some(app), "forget a pruned release", forgot);
                tracing::info!(app, release = %release, "release pruned");
            }
            self.rt()
                .pruning
                .remove(&(app.to_string(), release.clone()));
        }
        if doomed.is_empty() {
            return;
        }
        let _gate = self.store_gate.write().await;
        let mut kept = Vec::new();
        let apps = self.db(|s| s.apps()).unwrap_or_default();
        for a in apps {
            let rows = self.db(|s| s.releases(&a)).unwrap_or_default();
            kept.extend(
                rows.iter()
                    .filter_map(|r| hoist_artifact::ReleaseId::parse(&r.release)),
            );
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.gc(&kept)).await {
            Ok(Ok(report)) => tracing::info!(app, ?report, "blob store collected"),
            Ok(Err(e)) => tracing::warn!(app, error = %e, "blob garbage collection failed"),
            Err(e) => tracing::warn!(app, error = %e, "blob garbage collection failed"),
        }
    }

    async fn materialise(&self, app: &str, release: &str) -> Result<(), Failure> {
        let dir = self.paths.release_dir(app, release);
        if dir.exists() {
            return Ok(());
        }
        let store = self.store.clone();
        let id = hoist_artifact::ReleaseId::parse(release)
            .ok_or_else(|| Failure::new(format!("`{release}` is not a release id")))?;
        std::fs::create_dir_all(self.paths.releases(app))
            .map_err(|e| Failure::new(e.to_string()))?;
        // Shared with uploads: another app's garbage collection clears the store's `tmp/`,
        // where the executable variant of a blob is written on first use.
        let _gate = self.store_gate.read().await;
        tokio::task::spawn_blocking(move || {
            let manifest = store.manifest(&id)?;
            store.materialise(&manifest, &dir).map(|_| ())
        })
        .await
        .map_err(|e| Failure::new(e.to_string()))?
        .map_err(|e| {
            Failure::new(format!(
                "cannot materialise `{release}`: {}",
                crate::chain(&e)
            ))
        })
    }

    /// Secrets present, then the app's own `check` command inside the new release.
    async fn preflight(&self, o: &Op<'_>, spec: &AppSpec, release: &str) -> Result<(), Failure> {
        let conflicts = self.route_conflicts(spec, &self.host_name());
        if !conflicts.is_empty() {
            return Err(Failure::new(format!(
                "{} (give each app its own `domains` or `path_prefix`)",
                conflicts.join("; ")
            )));
        }
        let have = self.secrets.names(&spec.app).unwrap_or_default();
        let missing: Vec<&String> = spec
            .secrets
            .required
            .iter()
            .filter(|n| !have.contains(n))
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|n| format!("`{n}`")).collect();
            return Err(Failure::new(format!(
                "missing secrets: {} (set them with `hoist secrets set NAME --app {}`)",
                names.join(", "),
                spec.app
            )));
        }
        // Certificates before anything starts: a bad file fails here with the running
        // release untouched, and a missing ACME certificate is issued now.
        for note in self.preflight_tls(spec).await.map_err(Failure::new)? {
            o.output("tls", &note).await;
        }
        if let Some(check) = &spec.check {
            let cmd = Command {
                name: "check",
                command: &check.command,
                url: None,
                timeout: check.timeout,
            };
            self.run_command(o, spec, release, &cmd).await?;
        }
        Ok(())
    }

    /// Runs a check or hook with the app's environment, streaming its output; its whole
    /// process group is killed at `timeout`.
    async fn run_command(
        &self,
        o: &Op<'_>,
        spec: &AppSpec,
        release: &str,
        cmd: &Command<'_>,
    ) -> Result<(), Failure> {
        use tokio::io::AsyncReadExt;
        let Command {
            name,
            command,
            url,
            timeout,
        } = *cmd;
        let dir = self.paths.release_dir(&spec.app, release);
        let mut env = self
            .app_env(spec, release, name, &BTreeMap::new())
            .map_err(|e| Failure::new(e.to_string()))?;
        if let Some(url) = url {
            env.push(("HOIST_URL".into(), url.to_string()));
        }
        let mut sh = tokio::process::Command::new("/bin/sh");
        // Hooks run as the apps do: the same user, its groups, and no_new_privs.
        if let Some(u) = &self.apps_user {
            let creds = hoist_supervisor::creds::Credentials::of(&u.name).ok_or_else(|| {
                Failure::new(format!("the apps' user `{}` no longer exists", u.name))
            })?;
            creds.drop_to(sh.as_std_mut());
        }
        let mut child = sh
            .arg("-c")
            .arg(format!("exec 2>&1; {command}"))
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Failure::new(format!("cannot run the {name} command: {e}")))?;
        let pid = child.id().map(|p| p as i32);
        let mut out = child.stdout.take().expect("piped");
        let mut tail: Vec<String> = Vec::new();
        let run = async {
            // Bounded as the shims bound app logs: a line is cut at MAX_HOOK_LINE bytes,
            // and past MAX_HOOK_OUTPUT bytes the rest is drained but not shown or kept.
            let mut lines = HookLines::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match out.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for line in lines.push(&buf[..n]) {
                    o.output(name, &line).await;
                    tail.push(o.redact(&line));
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
            for line in lines.finish() {
                o.output(name, &line).await;
                tail.push(o.redact(&line));
            }
            child.wait().await
        };
        let status = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => {
                return Err(Failure::new(format!(
                    "the {name} command failed to run: {e}"
                )))
            }
            Err(_) => {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(Failure {
                    reason: format!("the {name} command timed out after {timeout:?}"),
                    lines: tail,
                });
            }
        };
        if let Some(pid) = pid {
            // Leftover background children of the hook die with it.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if status.success() {
            Ok(())
        } else {
            let code = status
                .code()
                .map_or("a signal".to_string(), |c| format!("status {c}"));
            Err(Failure {
                reason: format!("the {name} command `{command}` exited with {code}"),
                lines: tail,
            })
        }
    }

    /// Ids of `app`'s instances whose release matches `pred`.
    pub(crate) fn instances_of(&self, app: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
        self.rt()
            .instances
            .values()
            .filter(|l| l.row.app == app && l.row.desired == "run" && pred(&l.row.release))
            .map(|l| l.row.instance.clone())
            .collect()
    }

    /// Adds the instances of `release` that do not exist yet (a warm release reuses its
    /// own); singleton services of other releases stop first, so two never run at once.
    async fn start_release(
        self: &Arc<Self>,
        spec: &AppSpec,
        release: &str,
        host: &str,
        old_ids: &[String],
    ) -> Result<Vec<String>, Failure> {
        let singles: Vec<String> = {
            let rt = self.rt();
            old_ids
                .iter()
                .filter(|id| {
                    rt.instances.get(*id).is_some_and(|l| {
                        spec.services
                            .get(&l.row.service)
                            .is_some_and(|s| s.singleton)
                    })
                })
                .cloned()
                .collect()
        };
        self.stop_instances(&singles).await;
        let existing = self.instances_of(&spec.app, |r| r == release);
        let added = self
            .add_instances_filtered(spec, release, host, &existing)
            .map_err(Failure::new)?;
        for id in &added {
            let agent = self.clone();
            let id = id.clone();
            tokio::spawn(async move { agent.start_instance(&id).await });
        }
        Ok(existing.into_iter().chain(added).collect())
    }

    /// Waits until every instance in `ids` is admitted. An instance that exits fails the
    /// wait at once with its last log lines; so does the deadline.
    async fn wait_healthy(&self, ids: &[String], deadline: Duration) -> Result<(), Failure> {
        let until = Instant::now() + deadline;
        loop {
            let now = Instant::now();
            let (all_in, failed) = {
                let rt = self.rt();
                let mut all_in = true;
                let mut failed = None;
                for id in ids {
                    match rt.instances.get(id) {
                        Some(l) if l.admitted(now) => {}
                        Some(l) => {
                            all_in = false;
                            if let Some(exit) = &l.last_exit {
                                failed = Some((id.clone(), l.row.service.clone(), exit.clone()));
                            }
                        }
                        None => {
                            all_in = false;
                            failed = Some((id.clone(), String::new(), "vanished".into()));
                        }
                    }
                }
                (all_in, failed)
            };
            if all_in {
                return Ok(());
            }
            if let Some((id, service, exit)) = failed {
                return Err(Failure {
                    reason: format!("instance `{id}` {exit} before it became healthy"),
                    lines: self.last_log_lines(&id, &service, 20),
                });
            }
            if now >= until {
                let waiting: Vec<String> = {
                    let rt = self.rt();
                    ids.iter()
                        .filter(|id| !rt.instances.get(*id).is_some_and(|l| l.admitted(now)))
                        .cloned()
                        .collect()
                };
                let first = waiting.first().cloned().unwrap_or_default();
                let service = self
                    .rt()
                    .instances
                    .get(&first)
                    .map(|l| l.row.service.clone())
                    .unwrap_or_default();
                return Err(Failure {
                    reason: format!(
                        "{} did not become healthy within {deadline:?}",
                        waiting
                            .iter()
                            .map(|w| format!("`{w}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    lines: self.last_log_lines(&first, &service, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The last lines an instance wrote (from its log file).
    pub(crate) fn last_log_lines(&self, id: &str, service: &str, n: usize) -> Vec<String> {
        let Some(app) = self
            .rt()
            .instances
            .get(id)
            .map(|l| l.row.app.clone())
            .or_else(|| id.split('-').next().map(str::to_string))
        else {
            return Vec::new();
        };
        let query = hoist_supervisor::LogQuery {
            since: None,
            grep: None,
            tail: Some(n * 4),
        };
        hoist_supervisor::logs::read(&self.paths.logs(&app), service, &query)
            .map(|lines| {
                let mine: Vec<String> = lines
                    .into_iter()
                    .filter(|l| l.instance == id)
                    .map(|l| l.line)
                    .collect();
                mine[mine.len().saturating_sub(n)..].to_vec()
            })
            .unwrap_or_default()
    }

    /// Records the new current release durably, then points the proxy at it.
    pub(crate) async fn switch(&self, spec: Arc<AppSpec>, cur: &Current) -> Result<(), Failure> {
        self.db(|s| s.set_current(cur))
            .map_err(|e| Failure::new(e.to_string()))?;
        // Between the durable commit and the proxy's update: the crash tests stop here.
        crate::failpoint("switch_commit", "after");
        self.rt()
            .specs
            .insert(cur.app.clone(), (cur.release.clone(), spec));
        self.sync_routes_checked(&cur.app)
            .await
            .map_err(Failure::new)
    }

    pub(crate) fn spec_of(&self, app: &str, release: &str) -> Option<Arc<AppSpec>> {
        let row = self.db(|s| s.release(app, release)).ok().flatten()?;
        serde_json::from_str(&row.spec).ok().map(Arc::new)
    }

    /// After a switch: workers of other releases stop; web instances of the standby
    /// release stay warm (when a standby window is set); everything else stops.
    pub(crate) async fn retire(self: &Arc<Self>, app: &str, keep_standby: bool) {
        let cur = self.db(|s| s.current(app)).ok().flatten();
        let Some(cur) = cur else { return };
        let standby = cur.standby.clone().filter(|_| keep_standby);
        let ids: Vec<String> = {
            let rt = self.rt();
            rt.instances
                .values()
                .filter(|l| l.row.app == app && l.row.release != cur.release)
                .filter(|l| {
                    !(standby.as_deref() == Some(l.row.release.as_str()) && l.http.is_some())
                })
                .map(|l| l.row.instance.clone())
                .collect()
        };
        self.stop_instances(&ids).await;
    }

    /// After a failed start: singletons of the still-current release that were stopped
    /// to make room are started again.
    async fn restart_stopped_singletons(self: &Arc<Self>, app: &str, previous: Option<&Current>) {
        let Some(prev) = previous else { return };
        let Some(spec) = self.spec_of(app, &prev.release) else {
            return;
        };
        let existing = self.instances_of(app, |r| r == prev.release);
        if let Ok(added) =
            self.add_instances_filtered(&spec, &prev.release, &self.host_name(), &existing)
        {
            for id in added {
                let agent = self.clone();
                tokio::spawn(async move { agent.start_instance(&id).await });
            }
        }
    }
}

/// The longest hook output line kept whole, as for app logs (`hoist-supervisor::logfile`).
const MAX_HOOK_LINE: usize = 16 * 1024;
/// The most hook output shown and kept per command; the rest is read and counted.
const MAX_HOOK_OUTPUT: u64 = 1024 * 1024;

/// Splits a hook's output into bounded lines: a line longer than [`MAX_HOOK_LINE`] is cut
/// (and says how much was cut); past [`MAX_HOOK_OUTPUT`] bytes nothing more is returned
/// but a final count. Memory stays bounded whatever the hook prints.
#[derive(Default)]
struct HookLines {
    line: Vec<u8>,
    cut: u64,
    total: u64,
    hidden: u64,
}

impl HookLines {
    fn push(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            let room = MAX_HOOK_LINE.saturating_sub(self.line.len());
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.cut += (part.len() - keep) as u64;
            match ended {
                Some(i) => {
                    out.extend(self.end_line());
                    bytes = &bytes[i..];
                }
                None => bytes = &[],
            }
        }
        out
    }

    fn end_line(&mut self) -> Option<String> {
        let size = self.line.len() as u64 + self.cut;
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        text = text.trim_end_matches('\r').to_string();
        if self.cut > 0 {
            text.push_str(&format!("…[cut {} bytes]", self.cut));
        }
        self.line.clear();
        self.cut = 0;
        if self.total >= MAX_HOOK_OUTPUT {
            self.hidden += size + 1;
            return None;
        }
        self.total += size + 1;
        Some(text)
    }

    fn finish(mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.line.is_empty() || self.cut > 0 {
            out.extend(self.end_line());
        }
        if self.hidden > 0 {
            out.push(format!("…[{} more bytes of output not shown]", self.hidden));
        }
        out
    }
}

#[cfg(test)]
mod canary_tests {
    use super::*;
    use hoist_core::spec::CanarySpec;

    fn spec(max_error_bp: u32, max_p99_ms: Option<u64>) -> CanarySpec {
        CanarySpec {
            steps_bp: vec![500],
            interval: Duration::from_secs(1),
            max_error_bp,
            max_p99: max_p99_ms.map(Duration::from_millis),
            min_requests: 20,
        }
    }

    fn counters(total: u64, errors: u64, slow: u64) -> Counters {
        // `slow` answers in the 250–500 ms bucket, the rest under 5 ms.
        Counters {
            total,
            errors,
            bounds_ms: vec![5.0, 250.0, 500.0],
            buckets: vec![total - slow, 0, slow, 0],
        }
    }

    #[test]
    fn a_step_fails_over_its_error_rate_or_p99_and_passes_at_the_limit() {
        // 1 % of 200 is 2: two errors pass, three fail.
        assert_eq!(canary_verdict(&counters(200, 2, 0), &spec(100, None)), None);
        assert_eq!(
            canary_verdict(&counters(200, 3, 0), &spec(100, None)).as_deref(),
            Some("error rate over max_error_rate")
        );
        // 0.5 %: a basis-point limit below a percent.
        assert!(canary_verdict(&counters(1000, 6, 0), &spec(50, None)).is_some());
        assert!(canary_verdict(&counters(1000, 5, 0), &spec(50, None)).is_none());
        // p99: 2 slow answers of 100 put the 99th percentile in the ≤500 ms bucket.
        let c = counters(100, 0, 2);
        assert_eq!(c.p99_ms(), Some(500.0));
        assert!(canary_verdict(&c, &spec(100, Some(300))).is_some());
        assert!(canary_verdict(&c, &spec(100, Some(500))).is_none());
        assert!(canary_verdict(&counters(100, 0, 1), &spec(100, Some(300))).is_none());
    }

    #[test]
    fn the_figures_say_what_was_seen_and_the_limits() {
        let f = canary_figures(&counters(40, 12, 0), &spec(100, Some(300)));
        assert_eq!(
            f,
            "12 of 40 answers 5xx (30.0%, limit 1%), p99 ≤ 5 ms (limit 300 ms)"
        );
        assert_eq!(
            canary_figures(&Counters::default(), &spec(150, None)),
            "0 of 0 answers 5xx (0.0%, limit 1.5%)"
        );
    }
}
