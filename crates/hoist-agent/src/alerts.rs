//! Built-in alert rules, evaluated by the agent every few seconds from what it already
//! holds (instances, the proxy's counters, job runs, the root's free disk), and their
//! notifications: firing when a rule starts to hold, resolved when it stops, repeated
//! every [`REPEAT`] while it holds. Receivers are the app's `[alerts]`: a webhook (JSON
//! in Alertmanager's webhook format, so receivers written for Alertmanager work as they
//! are) and/or an Alertmanager (`POST /api/v2/alerts`, re-sent every [`AM_RESEND`] while
//! firing, as Alertmanager expects).
//!
//! Deliveries run in their own tasks with retries and never hold a lock the agent needs;
//! each outcome is recorded as an event (`alert.sent`, `alert.failed`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_core::spec::{alert_rules, AppSpec};

use crate::Agent;

/// How often a firing alert is notified again.
pub const REPEAT: Duration = Duration::from_secs(4 * 3600);
/// How often firing alerts are pushed to Alertmanager again (its resolve_timeout is 5m).
const AM_RESEND: Duration = Duration::from_secs(60);
/// The window of the ratio and latency rules.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Fewer requests than this in the window never fire the 5xx or latency rules.
const MIN_REQUESTS: u64 = 10;
/// Attempts per delivery (1 s, 2 s, 4 s, 8 s apart).
const ATTEMPTS: u32 = 5;

/// One alert as evaluated now.
#[derive(Debug, Clone)]
struct Firing {
    app: String,
    labels: BTreeMap<String, String>,
    summary: String,
    description: String,
}

#[derive(Debug, Clone)]
struct Active {
    firing: Firing,
    starts_at: chrono::DateTime<chrono::Utc>,
    notified: Instant,
    pushed: Instant,
}

/// What one pass added to a service's traffic: the growth of each of its releases'
/// counters since the pass before, added up.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    total: u64,
    errors: u64,
    bounds_ms: Vec<f64>,
    buckets: Vec<u64>,
}

/// The proxy's cumulative counters of one route and release, as last read.
#[derive(Debug, Clone, PartialEq)]
struct Counters {
    total: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl Counters {
    /// What they grew by since `before` (`None`: counted from zero). A counter that
    /// went backwards means the proxy (or the release's counters) started again: the
    /// whole value is growth (`hoist_state::minutes::growth`, the per-minute store's rule).
    fn growth(&self, before: Option<&Counters>) -> Counters {
        let Some(b) = before else {
            return self.clone();
        };
        match hoist_state::minutes::growth(
            (b.total, b.errors, &b.buckets),
            (self.total, self.errors, &self.buckets),
        ) {
            Some((total, errors, buckets)) => Counters {
                total,
                errors,
                buckets,
            },
            None => Counters {
                total: 0,
                errors: 0,
                buckets: vec![0; self.buckets.len()],
            },
        }
    }
}

/// What the evaluator remembers between passes.
#[derive(Default)]
pub(crate) struct Engine {
    active: HashMap<String, Active>,
    down_since: HashMap<String, Instant>,
    /// Per service: what each pass within the window added (see [`Sample`]).
    samples: HashMap<(String, String), VecDeque<Sample>>,
    /// Per service: each release's counters at the last pass. The window is the sum of
    /// each release's own growth, never a difference of sums over releases: the proxy
    /// drops the counters of releases retired long enough ago and a restarted proxy
    /// counts from zero, and a sum that shrank would hide a burst for up to a minute.
    counters: HashMap<(String, String), HashMap<String, Counters>>,
    logs: LogWatch,
    /// This pass is the first over a proxy this agent found already serving: the
    /// counters it reads ran before anyone watched (when is unknown), so they are the
    /// baseline, not traffic of the window (as `FirstSight` in the per-minute store).
    adopting: bool,
    /// Alerts read back from `<root>/alerts.json` at start, and when: they are not
    /// resolved for want of evidence before [`RESTORE_GRACE`] has passed (the rings and
    /// timers behind some rules start empty), only once seen and then gone.
    restored: std::collections::HashSet<String>,
    started: Option<Instant>,
}

/// How long alerts restored at start may go unseen before they count as resolved.
const RESTORE_GRACE: Duration = Duration::from_secs(120);

/// An active alert as kept in `<root>/alerts.json` (wall-clock times).
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    key: String,
    app: String,
    labels: BTreeMap<String, String>,
    summary: String,
    description: String,
    starts_at_ms: i64,
    notified_ms: i64,
    pushed_ms: i64,
}

/// What the log-pattern rules have read: an offset per log file, compiled patterns, and
/// when each rule's matches happened (only those within its window are kept).
#[derive(Default)]
struct LogWatch {
    offsets: HashMap<std::path::PathBuf, u64>,
    /// Apps whose existing files were skipped to their end (old lines never fire).
    primed: std::collections::HashSet<String>,
    patterns: HashMap<String, regex_lite::Regex>,
    hits: HashMap<(String, String), VecDeque<Instant>>,
}

/// Bytes read per log file per pass, at most: a flood is sampled, never slurped.
const LOG_READ_MAX: u64 = 1 << 20;

impl LogWatch {
    fn evaluate(
        &mut self,
        dir: &std::path::Path,
        app: &str,
        spec: &AppSpec,
        now: Instant,
        firing: &mut Vec<Firing>,
    ) {
        use std::io::{Read, Seek};
        if spec.alerts.logs.is_empty() {
            return;
        }
        let first = self.primed.insert(app.to_string());
        let services: std::collections::BTreeSet<&str> = spec
            .alerts
            .logs
            .values()
            .map(|r| r.service.as_str())
            .collect();
        for service in services {
            let Ok(entries) = std::fs::read_dir(dir.join(service)) else {
                continue;
            };
            let mut lines = String::new();
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().and_then(|x| x.to_str()) != Some("log") {
                    continue;
                }
                let Ok(len) = e.metadata().map(|m| m.len()) else {
                    continue;
                };
                let from = match self.offsets.get(&path) {
                    // A file shorter than what was read was rotated: read it anew.
                    Some(&o) if o <= len => o,
                    Some(_) => 0,
                    None if first => len,
                    None => 0,
                };
                let from = from.max(len.saturating_sub(LOG_READ_MAX));
                if from < len {
                    if let Ok(mut f) = std::fs::File::open(&path) {
                        if f.seek(std::io::SeekFrom::Start(from)).is_ok() {
                            let _ = f.take(len - from).read_to_string(&mut lines);
                        }
                    }
                }
                self.offsets.insert(path, len);
            }
            for (name, rule) in spec
                .alerts
                .logs
                .iter()
                .filter(|(_, r)| r.service == service)
            {
                let Some(re) = self.pattern(&rule.pattern) else {
                    continue;
                };
                let n = lines.lines().filter(|l| re.is_match(l)).count();
                let hits = self
                    .hits
                    .entry((app.to_string(), name.clone()))
                    .or_default();
                hits.extend(std::iter::repeat_n(now, n));
                while hits
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > rule.within)
                {
                    hits.pop_front();
                }
                if hits.len() >= rule.count as usize {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: labels(&[
                            ("alertname", "log_pattern"),
                            ("app", app),
                            ("service", service),
                            ("rule", name),
                        ]),
                        summary: format!(
                            "`{service}` logged {} lines matching `{}` within {}s",
                            hits.len(),
                            rule.pattern,
                            rule.within.as_secs()
                        ),
                        description: format!(
                            "log rule `{name}`: see `hoist logs {service}` around now"
                        ),
                    });
                }
            }
        }
        // Files that went away (rotated out, instances removed) are forgotten.
        self.offsets.retain(|p, _| p.exists());
    }

    fn pattern(&mut self, p: &str) -> Option<&regex_lite::Regex> {
        if !self.patterns.contains_key(p) {
            // Validated with the app file; a pattern that fails here is skipped.
            let re = regex_lite::Regex::new(p).ok()?;
            self.patterns.insert(p.to_string(), re);
        }
        self.patterns.get(p)
    }
}

fn threshold(spec: &AppSpec, rule: &str) -> Option<f64> {
    match spec.alerts.rules.get(rule) {
        Some(o) if !o.enabled => None,
        Some(o) => o.threshold.or_else(|| alert_rules::default_threshold(rule)),
        None => alert_rules::default_threshold(rule),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A stable identity of a label set (FNV-1a, hex), as Alertmanager's `fingerprint`.
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Agent {
    /// One pass: evaluates every app's rules and sends what changed.
    pub(crate) async fn evaluate_alerts(self: &Arc<Self>) {
        let specs: Vec<(String, Arc<AppSpec>)> = self
            .rt()
            .specs
            .iter()
            .map(|(app, (_, spec))| (app.clone(), spec.clone()))
            .collect();
        let stats = match &self.proxy {
            Some(p) => match p.request(hoist_protocol::proxy::Request::Stats).await {
                Ok(hoist_protocol::proxy::Reply::Stats { routes }) => Some(routes),
                _ => None,
            },
            None => None,
        };
        // Read before the per-minute store takes its first baselines and clears it.
        let adopting = stats.is_some()
            && self
                .minutes_adopting
                .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(routes) = &stats {
            self.record_minutes(routes);
        }
        let disk_free = nix::sys::statvfs::statvfs(&self.config.root)
            .ok()
            .filter(|fs| fs.blocks() > 0)
            .map(|fs| fs.blocks_available() as f64 / fs.blocks() as f64);
        let job_runs = self.db(|s| s.job_runs(None, 500)).unwrap_or_default();
        // Only what the stale rules read (each job's and backup's last success), by index
        // lookups: the counts `/metrics` adds would group every kept job run, every pass.
        let jobs: Vec<(&str, &str)> = specs
            .iter()
            .filter(|(_, spec)| threshold(spec, "job_missed").is_some())
            .flat_map(|(app, spec)| spec.jobs.keys().map(move |j| (app.as_str(), j.as_str())))
            .collect();
        let counts = self
            .db(|s| {
                Ok::<_, hoist_state::StateError>(hoist_state::MetricCounts {
                    job_last_success: s.job_last_success(&jobs)?,
                    backup_last_success: s.backup_last_success()?,
                    ..Default::default()
                })
            })
            .unwrap_or_default();
        // Certificate files and ACME records are read from disk.
        let certs = crate::off_workers(|| self.cert_statuses());
        let now_ms = hoist_state::now_ms();
        let now = Instant::now();
        let mut firing: Vec<Firing> = Vec::new();
        let mut engine = self.alert_engine().take_for_pass();
        engine.adopting = adopting;
        for (app, spec) in &specs {
            self.instance_rules(&mut engine, app, spec, now, &mut firing);
            if let Some(routes) = &stats {
                engine.traffic_rules(app, spec, routes, now, &mut firing);
            }
            if let (Some(free), Some(limit)) = (disk_free, threshold(spec, "disk_free_low")) {
                if free < limit {
                    firing.push(Firing {
                        app: app.clone(),
                        labels: labels(&[("alertname", "disk_free_low"), ("app", app)]),
                        summary: format!(
                            "{:.1}% of the disk holding hoist's root is free",
                            free * 100.0
                        ),
                        description: format!(
                            "below {:.1}%: remove old releases (`[deploy] keep_releases`), logs or backups, or grow the disk under {}",
                            limit * 100.0,
                            self.config.root.display()
                        ),
                    });
                }
            }
            if threshold(spec, "job_failed").is_some() {
                // The last finished run of each job decides. A skipped tick (the run
                // before was still going) is no run: it neither fails nor succeeds.
                let mut last: BTreeMap<&str, &hoist_state::JobRun> = BTreeMap::new();
                for r in job_runs.iter().filter(|r| {
                    &r.app == app && r.finished_at_ms.is_some() && r.status != "skipped"
                }) {
                    if last.get(r.job.as_str()).is_none_or(|l| l.id < r.id) {
                        last.insert(&r.job, r);
                    }
                }
                for (job, r) in last {
                    if r.status != "succeeded" && spec.jobs.contains_key(job) {
                        firing.push(Firing {
                            app: app.clone(),
                            labels: labels(&[("alertname", "job_failed"), ("app", app), ("job", job)]),
                            summary: format!("job `{job}` of `{app}`: its last run {}", r.status),
                            description: format!(
                                "see `hoist jobs` and the run's output; `hoist jobs run {job}` tries it again (run {}, exit code {:?})",
                                r.id, r.exit_code
                            ),
                        });
                    }
                }
            }
        }
        for (app, spec) in &specs {
            for (rule, name, service, long, short, limit) in
                self.slo_burning(app, spec, |r| threshold(spec, r))
            {
                let (lw, sw) = if rule == "slo_burn_fast" {
                    ("1h", "5m")
                } else {
                    ("6h", "30m")
                };
                firing.push(Firing {
                    app: app.clone(),
                    labels: labels(&[
                        ("alertname", rule),
                        ("app", app),
                        ("service", &service),
                        ("slo", &name),
                    ]),
                    summary: format!(
                        "SLO `{name}` of `{service}` burns its error budget {long:.1}x over {lw} and {short:.1}x over {sw}"
                    ),
                    description: format!(
                        "above {limit}x the budget runs out long before its window ends: see `hoist slo`, `hoist logs {service}`; if it began with the last deploy, `hoist rollback`"
                    ),
                });
            }
            cert_rules(app, spec, &certs, now_ms, &mut firing);
            stale_rules(app, spec, &counts, now_ms, &mut firing);
            let dir = self.paths.logs(app);
            crate::off_workers(|| engine.logs.evaluate(&dir, app, spec, now, &mut firing));
        }
        // Apps brought down and services removed are never evaluated again: their traffic
        // rings and down timers go with them (the alerts themselves resolve in `update`).
        let wanted = |(a, svc): &(String, String)| {
            specs
                .iter()
                .any(|(app, spec)| app == a && spec.services.contains_key(svc))
        };
        engine.samples.retain(|k, _| wanted(k));
        engine.counters.retain(|k, _| wanted(k));
        {
            let rt = self.rt();
            engine
                .down_since
                .retain(|id, _| rt.instances.contains_key(id));
        }
        let changes = engine.update(firing, now);
        // Kept on disk when a notification went out (a new alert, a repeat, a resolution),
        // not for Alertmanager's minutely re-sends.
        if changes.iter().any(|(_, _, webhook)| *webhook) {
            let path = self.paths.alerts_file();
            crate::off_workers(|| engine.save(&path));
        }
        *self.alert_engine() = engine;
        for (status, a, webhook) in changes {
            self.notify(&specs, status, a, webhook);
        }
    }

    fn instance_rules(
        &self,
        engine: &mut Engine,
        app: &str,
        spec: &AppSpec,
        now: Instant,
        firing: &mut Vec<Firing>,
    ) {
        let rt = self.rt();
        let mut seen = Vec::new();
        for (id, l) in rt.instances.iter().filter(|(_, l)| l.row.app == app) {
            seen.push(id.clone());
            let svc = l.row.service.as_str();
            let base = |name: &str| {
                labels(&[
                    ("alertname", name),
                    ("app", app),
                    ("service", svc),
                    ("instance", id),
                ])
            };
            let crash = l.phase == crate::runtime::Phase::CrashLoop;
            if crash && threshold(spec, "crash_loop").is_some() {
                firing.push(Firing {
                    app: app.to_string(),
                    labels: base("crash_loop"),
                    summary: format!("instance {id} of `{svc}` is crash-looping"),
                    description: format!(
                        "it exited {} times; read `hoist logs {svc}` for the cause, then fix and deploy, or `hoist rollback` (last exit: {})",
                        l.row.restarts,
                        l.last_exit.as_deref().unwrap_or("unknown")
                    ),
                });
            }
            let wanted = l.row.desired == "run";
            let down = wanted && !l.admitted(now);
            let since = if down {
                Some(*engine.down_since.entry(id.clone()).or_insert(now))
            } else {
                engine.down_since.remove(id);
                None
            };
            if let (Some(since), Some(secs)) = (since, threshold(spec, "instance_down")) {
                if !crash && now.duration_since(since) >= Duration::from_secs_f64(secs) {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: base("instance_down"),
                        summary: format!(
                            "instance {id} of `{svc}` has been down for {}s",
                            now.duration_since(since).as_secs()
                        ),
                        description: format!(
                            "state `{}`: check `hoist status` and `hoist logs {svc}`; a failing health check or a crash keeps it out of traffic",
                            l.state_word(now)
                        ),
                    });
                }
            }
            if let (Some(limit), Some(stats), Some(share)) = (
                l.memory_limit,
                l.stats.as_ref(),
                threshold(spec, "memory_near_limit"),
            ) {
                if limit > 0 && stats.rss_bytes as f64 >= share * limit as f64 {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: base("memory_near_limit"),
                        summary: format!(
                            "instance {id} of `{svc}` uses {} MiB of its {} MiB memory_limit",
                            stats.rss_bytes >> 20,
                            limit >> 20
                        ),
                        description:
                            "it is restarted at the limit: look for a leak, or raise `memory_limit`"
                                .into(),
                    });
                }
            }
        }
        engine
            .down_since
            .retain(|id, _| !id.starts_with(&format!("{app}-")) || seen.contains(id));
    }

    /// Sends one change to the app's receivers (`webhook` false: Alertmanager's re-send only).
    fn notify(
        self: &Arc<Self>,
        specs: &[(String, Arc<AppSpec>)],
        status: &'static str,
        a: Active,
        webhook: bool,
    ) {
        let Some((_, spec)) = specs.iter().find(|(app, _)| *app == a.firing.app) else {
            return;
        };
        let webhook = match (&spec.alerts.webhook, &spec.alerts.webhook_secret) {
            _ if !webhook => None,
            (Some(url), _) => Some(url.clone()),
            (None, Some(name)) => self
                .secrets
                .values(&a.firing.app)
                .ok()
                .and_then(|v| v.get(name).cloned()),
            (None, None) => None,
        };
        let now = chrono::Utc::now();
        let ends = if status == "resolved" {
            rfc3339(now)
        } else {
            "0001-01-01T00:00:00Z".to_string()
        };
        let alert = serde_json::json!({
            "status": status,
            "labels": a.firing.labels,
            "annotations": {"summary": a.firing.summary, "description": a.firing.description},
            "startsAt": rfc3339(a.starts_at),
            "endsAt": ends,
            "generatorURL": "",
            "fingerprint": fingerprint(&a.firing.labels),
        });
        let name = a
            .firing
            .labels
            .get("alertname")
            .cloned()
            .unwrap_or_default();
        if let Some(url) = webhook {
            let body = serde_json::json!({
                "version": "4",
                "groupKey": format!("{{}}:{{alertname=\"{name}\",app=\"{}\"}}", a.firing.app),
                "truncatedAlerts": 0,
                "status": status,
                "receiver": "hoist",
                "groupLabels": {"alertname": name},
                "commonLabels": a.firing.labels,
                "commonAnnotations": {"summary": a.firing.summary, "description": a.firing.description},
                "externalURL": "",
                "alerts": [alert],
            });
            let subject = format!("{name} {status}");
            self.deliver(&a.firing.app, "webhook", url, body, subject, spec);
        }
        if let Some(am) = &spec.alerts.alertmanager {
            let mut pushed = serde_json::json!({
                "labels": a.firing.labels,
                "annotations": {"summary": a.firing.summary, "description": a.firing.description},
                "startsAt": rfc3339(a.starts_at),
                "generatorURL": "http://hoist/alerts",
            });
            if status == "resolved" {
                pushed["endsAt"] = serde_json::Value::String(ends);
            }
            let url = format!("{}/api/v2/alerts", am.trim_end_matches('/'));
            self.deliver(
                &a.firing.app,
                "alertmanager",
                url,
                serde_json::json!([pushed]),
                format!("{name} {status}"),
                spec,
            );
        }
    }

    /// Posts `body` in its own task, retrying; the outcome is recorded as an event (the
    /// URL is not: a webhook URL may carry a token).
    fn deliver(
        self: &Arc<Self>,
        app: &str,
        receiver: &'static str,
        url: String,
        body: serde_json::Value,
        subject: String,
        spec: &AppSpec,
    ) {
        let agent = self.clone();
        let ca_roots = spec.alerts.ca_roots.clone();
        let app = app.to_string();
        tokio::spawn(async move {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let mut last = String::new();
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
                }
                match post(&url, &bytes, ca_roots.as_deref()).await {
                    Ok(code) if (200..300).contains(&code) => {
                        agent.event(
                            Some(&app),
                            "alert.sent",
                            Some(&subject),
                            &format!(
                                "{subject} delivered to the {receiver} (attempt {})",
                                attempt + 1
                            ),
                        );
                        return;
                    }
                    Ok(code) => last = format!("answered {code}"),
                    Err(e) => last = e,
                }
                tracing::warn!(app = %app, receiver, attempt, error = %last, "alert delivery failed");
            }
            agent.event(
                Some(&app),
                "alert.failed",
                Some(&subject),
                &format!(
                    "{subject} not delivered to the {receiver} after {ATTEMPTS} attempts: {last}"
                ),
            );
        });
    }
}

/// The interval of a schedule (`every`; a cron schedule has none and is not judged).
pub(crate) fn interval(s: &hoist_core::schedule::Schedule) -> Option<Duration> {
    match s {
        hoist_core::schedule::Schedule::Every(d) => Some(*d),
        hoist_core::schedule::Schedule::Cron(_) => None,
    }
}

/// What a job's last success may be late by beyond `job_missed` × its schedule (see
/// `alert_rules::JOB_MISSED_GRACE_SECS`): the scheduler's own jitter is no missed run.
const JOB_MISSED_GRACE: Duration = Duration::from_secs(alert_rules::JOB_MISSED_GRACE_SECS);

/// Backups older than `backup_stale` × their schedule, and jobs whose last success is
/// older than `job_missed` × theirs plus [`JOB_MISSED_GRACE`]. Judged from the last
/// success only: a backup or job that never succeeded yet is left to `job_failed` and
/// the deploy's own checks.
fn stale_rules(
    app: &str,
    spec: &AppSpec,
    counts: &hoist_state::MetricCounts,
    now_ms: i64,
    firing: &mut Vec<Firing>,
) {
    let age = |at: i64| Duration::from_millis(now_ms.saturating_sub(at).max(0) as u64);
    if let Some(k) = threshold(spec, "backup_stale") {
        for (a, name, at) in &counts.backup_last_success {
            let every = spec
                .backups
                .get(name)
                .and_then(|b| b.schedule.as_ref())
                .and_then(interval);
            if let (true, Some(every)) = (a == app, every) {
                if age(*at) > every.mul_f64(k) {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: labels(&[("alertname", "backup_stale"), ("app", app), ("backup", name)]),
                        summary: format!("backup `{name}` of `{app}` is {}s old", age(*at).as_secs()),
                        description: format!(
                            "its schedule is every {}s: see `hoist backups` for failed attempts, and run `hoist backup {name}`",
                            every.as_secs()
                        ),
                    });
                }
            }
        }
    }
    if let Some(k) = threshold(spec, "job_missed") {
        for (a, job, at) in &counts.job_last_success {
            let every = spec.jobs.get(job).and_then(|j| interval(&j.schedule));
            if let (true, Some(every)) = (a == app, every) {
                if age(*at) > every.mul_f64(k) + JOB_MISSED_GRACE {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: labels(&[("alertname", "job_missed"), ("app", app), ("job", job)]),
                        summary: format!("job `{job}` of `{app}` last succeeded {}s ago", age(*at).as_secs()),
                        description: format!(
                            "it should run every {}s: check `hoist jobs` and `hoist events`; `hoist jobs run {job}` runs it now",
                            every.as_secs()
                        ),
                    });
                }
            }
        }
    }
}

/// `cert_expiring` (a domain's certificate expires within the threshold, in days; at the
/// default, as doctor warns: in the last third of its lifetime, at most 14 days ahead,
/// unless its renewal is going on, so a 60 s or 7-day certificate does not fire from
/// birth) and `cert_renewal_failed` (its last ACME renewal attempt failed).
fn cert_rules(
    app: &str,
    spec: &AppSpec,
    certs: &[hoist_protocol::agent::CertStatus],
    now_ms: i64,
    firing: &mut Vec<Firing>,
) {
    for c in certs.iter().filter(|c| c.app == app) {
        let base = |name: &str| {
            labels(&[
                ("alertname", name),
                ("app", app),
                ("service", &c.service),
                ("domain", &c.domain),
            ])
        };
        let acme = c.source == "acme";
        let expiry = c
            .not_after
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        let explicit = spec
            .alerts
            .rules
            .get("cert_expiring")
            .is_some_and(|o| o.threshold.is_some());
        let start = c
            .not_before
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp());
        if let (Some(at), Some(days)) = (expiry, threshold(spec, "cert_expiring")) {
            let left = (at - now_ms) as f64 / 86_400_000.0;
            let due = if explicit {
                left < days
            } else {
                left <= 0.0
                    || !c.renewing
                        && now_ms / 1000 >= crate::doctor::cert_warn_from(start, at / 1000, acme)
            };
            if due {
                let when = c.not_after.as_deref().unwrap_or_default();
                firing.push(Firing {
                    app: app.to_string(),
                    labels: base("cert_expiring"),
                    summary: if left <= 0.0 {
                        format!("the certificate of `{}` expired at {when}", c.domain)
                    } else {
                        format!(
                            "the certificate of `{}` expires in {left:.1} days ({when})",
                            c.domain
                        )
                    },
                    description: if acme {
                        "hoist renews ACME certificates at two thirds of their lifetime: see `hoist certs` and `hoist events` for why this one was not".to_string()
                    } else {
                        format!(
                            "replace the {} with a renewed certificate (and key); the agent serves it within 15 s, no deploy needed",
                            c.source
                        )
                    },
                });
            }
        }
        if let (Some(last), Some(_)) = (&c.last, threshold(spec, "cert_renewal_failed")) {
            if !last.ok {
                firing.push(Firing {
                    app: app.to_string(),
                    labels: base("cert_renewal_failed"),
                    summary: format!(
                        "renewing the certificate of `{}` failed: {}",
                        c.domain, last.message
                    ),
                    description: format!(
                        "the old certificate serves until {}; check the CA is reachable and the domain points here (`hoist certs`), retries back off",
                        c.not_after.as_deref().unwrap_or("it expires")
                    ),
                });
            }
        }
    }
}

impl Agent {
    /// `hoist alerts test`: a firing notification named `hoist_test` sent to the app's
    /// receivers now (not kept as firing). False when the app is not deployed here.
    pub(crate) fn test_alert(self: &Arc<Self>, app: &str) -> Result<(), String> {
        let spec = self.rt().specs.get(app).map(|(_, s)| s.clone());
        let Some(spec) = spec else {
            return Err(format!("`{app}` is not deployed on this host"));
        };
        if spec.alerts.webhook.is_none()
            && spec.alerts.webhook_secret.is_none()
            && spec.alerts.alertmanager.is_none()
        {
            return Err(format!("`{app}` has no `[alerts]` webhook or alertmanager"));
        }
        let a = Active {
            firing: Firing {
                app: app.to_string(),
                labels: labels(&[
                    ("alertname", "hoist_test"),
                    ("app", app),
                    ("severity", "none"),
                ]),
                summary: format!("a test notification from hoist for `{app}`"),
                description: "sent by `hoist alerts test`; nothing is wrong".into(),
            },
            starts_at: chrono::Utc::now(),
            notified: Instant::now(),
            pushed: Instant::now(),
        };
        self.notify(&[(app.to_string(), spec)], "firing", a, true);
        Ok(())
    }
}

impl Engine {
    /// The engine with the firing alerts a previous agent kept in `path` (none when
    /// the file is absent or unreadable: then they fire again, as before).
    pub(crate) fn load(path: &std::path::Path) -> Engine {
        let mut e = Engine {
            started: Some(Instant::now()),
            ..Default::default()
        };
        let kept: Vec<Kept> = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot read the kept alerts; they fire again");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let (now, now_ms) = (Instant::now(), hoist_state::now_ms());
        let ago = |ms: i64| {
            now.checked_sub(Duration::from_millis((now_ms - ms).max(0) as u64))
                .unwrap_or(now)
        };
        for k in kept {
            e.restored.insert(k.key.clone());
            e.active.insert(
                k.key,
                Active {
                    firing: Firing {
                        app: k.app,
                        labels: k.labels,
                        summary: k.summary,
                        description: k.description,
                    },
                    starts_at: chrono::DateTime::from_timestamp_millis(k.starts_at_ms)
                        .unwrap_or_else(chrono::Utc::now),
                    notified: ago(k.notified_ms),
                    pushed: ago(k.pushed_ms),
                },
            );
        }
        e
    }

    /// Writes the firing alerts to `path` (temp, fsync, rename), with their last
    /// notification in wall-clock time, so a restarted agent does not notify them again.
    fn save(&self, path: &std::path::Path) {
        let (now, now_ms) = (Instant::now(), hoist_state::now_ms());
        let wall = |t: Instant| now_ms - now.saturating_duration_since(t).as_millis() as i64;
        let kept: Vec<Kept> = self
            .active
            .iter()
            .map(|(key, a)| Kept {
                key: key.clone(),
                app: a.firing.app.clone(),
                labels: a.firing.labels.clone(),
                summary: a.firing.summary.clone(),
                description: a.firing.description.clone(),
                starts_at_ms: a.starts_at.timestamp_millis(),
                notified_ms: wall(a.notified),
                pushed_ms: wall(a.pushed),
            })
            .collect();
        let bytes = serde_json::to_vec(&kept).unwrap_or_default();
        if let Err(err) = crate::paths::write_atomic(path, &bytes, 0o600) {
            tracing::warn!(error = %err, "cannot keep the firing alerts");
        }
    }

    fn traffic_rules(
        &mut self,
        app: &str,
        spec: &AppSpec,
        routes: &[hoist_protocol::proxy::RouteStats],
        now: Instant,
        firing: &mut Vec<Firing>,
    ) {
        let prefix = format!("{app}/");
        // A release seen for the first time counted all it holds since the last pass
        // (its counters start with its route, or with a restarted proxy), except on the
        // first pass over a proxy found already serving.
        let fresh = !self.adopting;
        let mut per_service: BTreeMap<String, (Sample, HashMap<String, Counters>)> =
            BTreeMap::new();
        for r in routes.iter().filter(|r| r.route.starts_with(&prefix)) {
            let service = r.route[prefix.len()..].to_string();
            let now_c = Counters {
                total: r.status.iter().sum::<u64>(),
                errors: r.status[4],
                buckets: r.latency.counts.clone(),
            };
            let before = self
                .counters
                .get(&(app.to_string(), service.clone()))
                .and_then(|m| m.get(&r.release));
            let grew = match before {
                None if !fresh => Counters {
                    total: 0,
                    errors: 0,
                    buckets: vec![0; now_c.buckets.len()],
                },
                before => now_c.growth(before),
            };
            let (s, seen) = per_service.entry(service).or_insert_with(|| {
                (
                    Sample {
                        at: now,
                        total: 0,
                        errors: 0,
                        bounds_ms: r.latency.bounds_ms.clone(),
                        buckets: vec![0; r.latency.counts.len()],
                    },
                    HashMap::new(),
                )
            });
            s.total += grew.total;
            s.errors += grew.errors;
            for (b, n) in s.buckets.iter_mut().zip(&grew.buckets) {
                *b += n;
            }
            seen.insert(r.release.clone(), now_c);
        }
        // Releases the proxy no longer reports contribute nothing from now on; what they
        // added earlier stays in the window.
        self.counters
            .retain(|(a, svc), _| a != app || per_service.contains_key(svc));
        for (service, (sample, seen)) in per_service {
            self.counters
                .insert((app.to_string(), service.clone()), seen);
            let ring = self
                .samples
                .entry((app.to_string(), service.clone()))
                .or_default();
            ring.push_back(sample);
            while ring
                .front()
                .is_some_and(|s| now.duration_since(s.at) >= WINDOW)
            {
                ring.pop_front();
            }
            let Some(new) = ring.back() else {
                continue;
            };
            let total: u64 = ring.iter().map(|s| s.total).sum();
            if total < MIN_REQUESTS {
                continue;
            }
            let errors: u64 = ring.iter().map(|s| s.errors).sum();
            let ratio = errors as f64 / total as f64;
            tracing::debug!(app, service = %service, total, errors, samples = ring.len(), "traffic window");
            if let Some(limit) = threshold(spec, "http_5xx_ratio") {
                if ratio > limit {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: labels(&[("alertname", "http_5xx_ratio"), ("app", app), ("service", &service)]),
                        summary: format!(
                            "`{service}` answered {:.1}% 5xx in the last minute ({errors} of {total})",
                            ratio * 100.0
                        ),
                        description: format!(
                            "above {:.1}%: read `hoist logs {service}`; if it began with the last deploy, `hoist rollback`",
                            limit * 100.0
                        ),
                    });
                }
            }
            if let Some(limit) = threshold(spec, "latency_p99") {
                // Passes whose buckets differ from the newest (another proxy version)
                // cannot be added to it.
                let mut counts = vec![0u64; new.buckets.len()];
                for s in ring.iter().filter(|s| s.bounds_ms == new.bounds_ms) {
                    for (c, n) in counts.iter_mut().zip(&s.buckets) {
                        *c += n;
                    }
                }
                let p99 = hoist_state::minutes::quantile_ms(&new.bounds_ms, &counts, 0.99) / 1000.0;
                if p99 > limit {
                    firing.push(Firing {
                        app: app.to_string(),
                        labels: labels(&[("alertname", "latency_p99"), ("app", app), ("service", &service)]),
                        summary: format!("`{service}`: p99 latency {p99:.2}s in the last minute"),
                        description: format!(
                            "above {limit}s: look for slow queries or an overloaded host (`hoist status`); add replicas if it is load"
                        ),
                    });
                }
            }
        }
    }

    /// Folds this pass in; returns the alerts to notify as firing and as resolved.
    /// `(status, alert, to the webhook too)`.
    fn update(&mut self, firing: Vec<Firing>, now: Instant) -> Vec<(&'static str, Active, bool)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for f in firing {
            let key = fingerprint(&f.labels);
            self.restored.remove(&key);
            seen.insert(key.clone());
            match self.active.get_mut(&key) {
                Some(a) => {
                    a.firing = f;
                    let repeat = now.duration_since(a.notified) >= REPEAT;
                    if repeat || now.duration_since(a.pushed) >= AM_RESEND {
                        a.pushed = now;
                        if repeat {
                            a.notified = now;
                        }
                        out.push(("firing", a.clone(), repeat));
                    }
                }
                None => {
                    let a = Active {
                        firing: f,
                        starts_at: chrono::Utc::now(),
                        notified: now,
                        pushed: now,
                    };
                    out.push(("firing", a.clone(), true));
                    self.active.insert(key, a);
                }
            }
        }
        let grace = self
            .started
            .is_some_and(|t| now.saturating_duration_since(t) < RESTORE_GRACE);
        let gone: Vec<String> = self
            .active
            .keys()
            .filter(|k| !(seen.contains(*k) || grace && self.restored.contains(*k)))
            .cloned()
            .collect();
        if !grace {
            self.restored.clear();
        }
        for k in gone {
            if let Some(a) = self.active.remove(&k) {
                out.push(("resolved", a, true));
            }
        }
        out
    }

    /// Firing and recent alerts for `hoist alerts`.
    /// Takes the engine out for a pass, which runs without the lock, leaving a copy of
    /// its active alerts behind: `hoist alerts` and the dashboard, read meanwhile, still
    /// see what is firing (an empty engine would say nothing is).
    pub(crate) fn take_for_pass(&mut self) -> Engine {
        let active = self.active.clone();
        std::mem::replace(
            self,
            Engine {
                active,
                ..Engine::default()
            },
        )
    }

    pub(crate) fn firing(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<_> = self
            .active
            .values()
            .map(|a| {
                serde_json::json!({
                    "labels": a.firing.labels,
                    "summary": a.firing.summary,
                    "description": a.firing.description,
                    "startsAt": rfc3339(a.starts_at),
                })
            })
            .collect();
        out.sort_by_key(|v| v["startsAt"].as_str().unwrap_or_default().to_string());
        out
    }
}

/// The TLS client of https receivers: the system's roots plus those of `ca_roots`.
fn tls_config(ca_roots: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::acme::system_roots() {
        let _ = roots.add(der);
    }
    if let Some(path) = ca_roots {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
        let mut n = 0;
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let der = der.map_err(|e| format!("`{path}` is not PEM: {e}"))?;
            roots
                .add(der)
                .map_err(|e| format!("`{path}` holds a certificate that cannot be a root: {e}"))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("`{path}` holds no certificate"));
        }
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// One HTTP/1.1 POST of JSON over http or https (rustls; the system's roots plus
/// `ca_roots`); the status code, or why there is none. Bounded by 10 s.
async fn post(url: &str, body: &[u8], ca_roots: Option<&str>) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return Err("only http:// and https:// receivers are supported".to_string()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // `[v6]:port`, `host:port` or a bare host.
    let (host, has_port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, true),
        _ => (authority, false),
    };
    let host_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let work = async {
        let tcp = tokio::net::TcpStream::connect(&host_port)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut s: Box<dyn Stream> = if tls {
            let config = tls_config(ca_roots)?;
            let name = rustls_pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
            .map_err(|e| format!("invalid server name: {e}"))?;
            let s = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            Box::new(s)
        } else {
            Box::new(tcp)
        };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: hoist\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(body).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 512];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let line = String::from_utf8_lossy(&buf[..got]);
        line.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "no HTTP status in the answer".to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out after 10s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash_loop() -> Firing {
        Firing {
            app: "a".into(),
            labels: labels(&[("alertname", "crash_loop"), ("app", "a")]),
            summary: "s".into(),
            description: "d".into(),
        }
    }

    #[test]
    fn alerts_fire_once_and_resolve() {
        let mut e = Engine::default();
        let f = crash_loop();
        let now = Instant::now();
        let kinds = |c: Vec<(&'static str, Active, bool)>| {
            c.into_iter().map(|(s, _, w)| (s, w)).collect::<Vec<_>>()
        };
        let c = e.update(vec![f.clone()], now);
        assert_eq!(kinds(c), [("firing", true)], "fires");
        let c = e.update(vec![f.clone()], now + Duration::from_secs(5));
        assert!(c.is_empty(), "deduplicated");
        let c = e.update(vec![f.clone()], now + AM_RESEND);
        assert_eq!(
            kinds(c),
            [("firing", false)],
            "re-sent to Alertmanager only"
        );
        let c = e.update(vec![f], now + REPEAT);
        assert_eq!(kinds(c), [("firing", true)], "repeated");
        let c = e.update(vec![], now + REPEAT + Duration::from_secs(5));
        assert_eq!(kinds(c), [("resolved", true)], "resolves");
        assert!(e.firing().is_empty());
    }

    #[test]
    fn alerts_firing_stay_readable_while_a_pass_has_the_engine() {
        let mut e = Engine::default();
        let f = crash_loop();
        let now = Instant::now();
        e.update(vec![f.clone()], now);
        let mut pass = e.take_for_pass();
        assert_eq!(e.firing(), pass.firing(), "left behind while the pass runs");
        assert_eq!(e.firing().len(), 1);
        // The pass keeps the state that decides: the alert is still known as active.
        assert!(pass
            .update(vec![f], now + Duration::from_secs(2))
            .is_empty());
    }
}

#[cfg(test)]
mod cert_tests {
    use super::*;

    fn cert(from_s: i64, to_s: i64) -> hoist_protocol::agent::CertStatus {
        let t = |s| rfc3339(chrono::DateTime::from_timestamp(s, 0).unwrap());
        hoist_protocol::agent::CertStatus {
            domain: "a.test".into(),
            app: "demo".into(),
            service: "web".into(),
            source: "file `/c.pem`".into(),
            issuer: None,
            not_before: Some(t(from_s)),
            not_after: Some(t(to_s)),
            serving: true,
            renewing: false,
            last: None,
            problem: None,
        }
    }

    fn fires(extra: &str, c: &hoist_protocol::agent::CertStatus, now_s: i64) -> bool {
        let spec = hoist_config::parse_str(
            "hoist.toml",
            &format!("app = \"demo\"\n[services.web]\ncommand = \"x\"\nhttp = {{ domains = [\"*\"], health = \"/health\" }}\n{extra}"),
        )
        .unwrap()
        .spec;
        let mut firing = Vec::new();
        cert_rules(
            "demo",
            &spec,
            std::slice::from_ref(c),
            now_s * 1000,
            &mut firing,
        );
        firing
            .iter()
            .any(|f| f.labels["alertname"] == "cert_expiring")
    }

    /// Issue 14: at the default threshold a short-lived certificate fires in the last
    /// third of its lifetime, not from birth; a threshold in days is taken as written.
    #[test]
    fn a_short_lived_certificate_fires_in_its_last_third_at_the_default() {
        const DAY: i64 = 86_400;
        let now = 1_800_000_000;
        let week = cert(now - DAY, now + 6 * DAY);
        assert!(!fires("", &week, now), "a day into a week");
        assert!(fires("", &week, now + 5 * DAY), "in its last third");
        let year = cert(now - DAY, now + 364 * DAY);
        assert!(!fires("", &year, now + 300 * DAY));
        assert!(fires("", &year, now + 351 * DAY), "14 days before");
        let set = "[alerts.rules.cert_expiring]\nthreshold = 10\n";
        assert!(fires(set, &week, now), "6 days left, threshold 10 days");
    }
}

#[cfg(test)]
mod kept_tests {
    use super::*;

    #[test]
    fn kept_alerts_are_not_notified_again_and_resolve_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.json");
        let f = Firing {
            app: "a".into(),
            labels: labels(&[("alertname", "slo_burn_fast"), ("app", "a")]),
            summary: "s".into(),
            description: "d".into(),
        };
        let mut e = Engine::load(&path);
        let now = Instant::now();
        assert_eq!(e.update(vec![f.clone()], now).len(), 1, "fires");
        e.save(&path);
        let first = e.firing();

        // A restarted agent: still true, nothing is sent; the start time is kept.
        let mut e = Engine::load(&path);
        assert!(e.update(vec![f.clone()], Instant::now()).is_empty());
        assert_eq!(e.firing(), first);
        // Not yet seen after a restart: kept through the grace, then resolved.
        let mut e = Engine::load(&path);
        let now = Instant::now();
        assert!(e.update(vec![], now).is_empty(), "within the grace");
        let c = e.update(vec![], now + RESTORE_GRACE);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].0, "resolved");
    }
}

#[cfg(test)]
mod traffic_tests {
    use super::*;

    fn stats(total_2xx: u64, errors: u64) -> Vec<hoist_protocol::proxy::RouteStats> {
        releases(&[("r1", total_2xx, errors)])
    }

    /// The proxy's answer with one entry per `(release, 2xx, 5xx)` of `demo/web`.
    fn releases(of: &[(&str, u64, u64)]) -> Vec<hoist_protocol::proxy::RouteStats> {
        of.iter()
            .map(|(release, ok, errors)| hoist_protocol::proxy::RouteStats {
                route: "demo/web".into(),
                release: release.to_string(),
                status: [0, *ok, 0, 0, *errors],
                upstream_errors: 0,
                bytes_out: 0,
                in_flight: 0,
                latency: hoist_protocol::proxy::Histogram {
                    bounds_ms: vec![1.0],
                    counts: vec![ok + errors, 0],
                    sum_ms: 0.0,
                },
                requests: vec![],
                guards: Default::default(),
            })
            .collect()
    }

    fn spec() -> AppSpec {
        hoist_config::parse_str(
            "hoist.toml",
            "app = \"demo\"\n[services.web]\ncommand = \"x\"\nhttp = { domains = [\"*\"], health = \"/health\" }\n",
        )
        .unwrap()
        .spec
    }

    fn names(firing: &[Firing]) -> Vec<String> {
        firing
            .iter()
            .map(|f| f.labels["alertname"].clone())
            .collect()
    }

    /// Counters that vanish (a release retired long ago, whose counters the proxy
    /// dropped) or go back to zero (a restarted proxy) within the window take nothing
    /// away from it: the burst they counted still fires, and traffic after them counts.
    #[test]
    fn dropped_or_restarted_counters_leave_the_burst_in_the_window() {
        let spec = spec();
        let mut e = Engine::default();
        let t = Instant::now();
        let pass = |e: &mut Engine, at: u64, routes: &[(&str, u64, u64)]| {
            let mut firing = Vec::new();
            let routes = releases(routes);
            e.traffic_rules(
                "demo",
                &spec,
                &routes,
                t + Duration::from_secs(at),
                &mut firing,
            );
            names(&firing)
        };
        assert!(pass(&mut e, 0, &[("r1", 0, 0)]).is_empty());
        assert_eq!(pass(&mut e, 2, &[("r1", 5, 30)]), ["http_5xx_ratio"]);
        // r1's counters are dropped; r2 serves a few good answers.
        assert_eq!(pass(&mut e, 4, &[("r2", 4, 0)]), ["http_5xx_ratio"]);
        // The proxy restarts: r2 counts from zero again, with more 5xx.
        assert_eq!(pass(&mut e, 6, &[("r2", 0, 2)]), ["http_5xx_ratio"]);
        // Good answers only, once the burst has left the window: resolved.
        assert!(pass(&mut e, 70, &[("r2", 200, 2)]).is_empty());
        // Only r2's growth since the pass before is left: 200 good answers.
        let ring = &e.samples[&("demo".to_string(), "web".to_string())];
        assert_eq!(ring.len(), 1, "older passes left the window");
        assert_eq!((ring[0].total, ring[0].errors), (200, 0));
    }

    #[test]
    fn an_adopted_proxys_earlier_counts_are_a_baseline() {
        let spec = spec();
        let mut e = Engine {
            adopting: true,
            ..Default::default()
        };
        let t = Instant::now();
        let mut firing = Vec::new();
        e.traffic_rules("demo", &spec, &releases(&[("r1", 0, 30)]), t, &mut firing);
        assert!(firing.is_empty(), "counted before anyone watched");
        e.adopting = false;
        let later = t + Duration::from_secs(2);
        e.traffic_rules(
            "demo",
            &spec,
            &releases(&[("r1", 0, 40)]),
            later,
            &mut firing,
        );
        assert_eq!(
            names(&firing),
            ["http_5xx_ratio"],
            "the growth since then counts"
        );
    }

    #[test]
    fn a_burst_of_5xx_fires_the_ratio_rule() {
        let spec = spec();
        let mut e = Engine::default();
        let now = Instant::now();
        let mut firing = Vec::new();
        e.traffic_rules("demo", &spec, &stats(0, 20), now, &mut firing);
        let names: Vec<_> = firing
            .iter()
            .map(|f| f.labels["alertname"].clone())
            .collect();
        assert_eq!(names, ["http_5xx_ratio"]);
    }
}
