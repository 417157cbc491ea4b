//! What runs on the host, in memory: every instance the agent keeps (its desired state in
//! `hoist-state`, its shim handle, its health and restart history), and the loops that
//! keep it true — starting, restarting with backoff, crash-loop detection, memory limits,
//! health probes — and the proxy's route table derived from it.
//!
//! Locking: one `std::sync::Mutex` around [`Runtime`], held only for bookkeeping, never
//! across a spawn, a stop or an await; slow work runs outside it and reports back.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_core::spec::{AppSpec, HealthKind, HealthSpec, HttpSpec};
use hoist_protocol::proxy::{Request, Route, Upstream};
use hoist_state::InstanceRow;
use hoist_supervisor::{
    Backoff, CrashLoop, CrashLoopDetector, InstanceSpec, ProcessStats, RestartTracker,
};

use crate::health::{self, Health, Tracker};
use crate::Agent;

/// The lifecycle of one instance as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for its (first or next) start.
    Pending,
    /// Its shim runs; see the health tracker for its health.
    Running,
    /// It exited and waits out its restart delay.
    Backoff,
    /// It failed too often in the window; restarts continue at the capped delay.
    CrashLoop,
    /// Asked to stop; the shim is escalating.
    Stopping,
}

/// One instance the agent keeps.
pub struct Live {
    pub row: InstanceRow,
    pub spec: InstanceSpec,
    pub health_spec: Option<HealthSpec>,
    pub http: Option<HttpSpec>,
    pub memory_limit: Option<u64>,
    pub handle: Option<hoist_supervisor::Instance>,
    pub tracker: Tracker,
    pub restarts: RestartTracker,
    pub crash: CrashLoopDetector,
    pub phase: Phase,
    pub next_start: Option<Instant>,
    pub started: Option<Instant>,
    pub last_exit: Option<String>,
    /// Bumped at every start: a health task of an earlier start sees it and ends.
    pub generation: u64,
    pub stats: Option<ProcessStats>,
    /// Set while a spawn runs outside the lock, so the loop does not start it twice.
    pub spawning: bool,
    /// Log lines its shim dropped (disk full), as last measured.
    pub dropped_lines: u64,
    /// When it was last restarted for failing its health check (doctor reports that for a
    /// while: the restart clears the unhealthy state within a supervision pass).
    pub unhealthy_at: Option<Instant>,
}

impl Live {
    /// May take traffic (web) or counts as up (worker) now.
    pub fn admitted(&self, now: Instant) -> bool {
        if self.phase != Phase::Running || self.handle.is_none() {
            return false;
        }
        match &self.health_spec {
            Some(spec) => self.tracker.admitted(now, spec),
            // Without a check, an instance counts as up once it has run for a second.
            None => self
                .started
                .is_some_and(|s| now.saturating_duration_since(s) >= Duration::from_secs(1)),
        }
    }

    /// The state word `hoist status` shows.
    pub fn state_word(&self, now: Instant) -> &'static str {
        match self.phase {
            Phase::Pending => "starting",
            Phase::Backoff => "backoff",
            Phase::CrashLoop => "crash-loop",
            Phase::Stopping => "stopping",
            Phase::Running => match (&self.health_spec, self.tracker.state()) {
                (None, _) if self.admitted(now) => "running",
                (None, _) => "starting",
                (Some(_), Health::Healthy) => "healthy",
                (Some(_), Health::Unhealthy) => "unhealthy",
                (Some(_), Health::Unknown) => "starting",
            },
        }
    }

    pub fn upstream(&self) -> Option<Upstream> {
        let port = self.row.port?;
        Some(Upstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            instance: self.row.instance.clone(),
        })
    }
}

/// The in-memory table of instances and what the proxy was last told.
#[derive(Default)]
pub struct Runtime {
    pub instances: BTreeMap<String, Live>,
    pub routes_sent: HashMap<String, Route>,
    /// App → its current spec (of the current release), for routes and jobs.
    pub specs: HashMap<String, (String, Arc<AppSpec>)>,
    /// (app, job) → its schedule and running run.
    pub jobs: HashMap<(String, String), crate::jobs::JobSlot>,
    /// App → its maintenance message, for apps in maintenance (saved in
    /// `<root>/maintenance.json`, and in the proxy's table through the routes).
    pub maintenance: BTreeMap<String, String>,
    /// App → (release, weight in basis points) of a canary in progress: its admitted
    /// instances ride on the app's routes as their canary side. In memory only: a dead
    /// agent's canary is undone at start (the proxy is told the routes without it).
    pub canaries: HashMap<String, (String, u32)>,
    /// (app, release) → job runs being spawned in it right now: pruning keeps its tree.
    pub starting: HashMap<(String, String), usize>,
    /// (app, release) whose tree a prune is removing: no run may start in it.
    pub pruning: std::collections::HashSet<(String, String)>,
    /// When every running instance's `stats` were last read (see [`Agent::refresh_stats`]).
    pub stats_at: Option<Instant>,
}

impl Runtime {
    /// The releases of `app` that something lives in: an instance, a job run, or a run
    /// being started. Pruning never removes their trees.
    pub fn releases_in_use(&self, app: &str) -> std::collections::HashSet<String> {
        let mut used: std::collections::HashSet<String> = self
            .instances
            .values()
            .filter(|l| l.row.app == app)
            .map(|l| l.row.release.clone())
            .collect();
        for ((a, _), slot) in &self.jobs {
            if let Some(r) = slot.running.as_ref().filter(|_| a == app) {
                used.insert(r.release.clone());
            }
        }
        for ((a, release), n) in &self.starting {
            if a == app && *n > 0 {
                used.insert(release.clone());
            }
        }
        used
    }
}

/// The proxy's guards of one web service: its `http` guards, the app's maintenance
/// page, and the basic-auth users read from the named secret (`user:bcrypt-hash` lines;
/// hashes only reach the proxy).
fn route_guards(
    http: &hoist_core::spec::HttpSpec,
    maintenance: Option<&String>,
    htpasswd: Option<String>,
) -> hoist_protocol::proxy::Guards {
    use hoist_protocol::proxy as wire;
    let g = &http.guards;
    wire::Guards {
        maintenance: maintenance.map(|m| wire::Maintenance {
            message: m.clone(),
            retry_after_s: 60,
        }),
        rate_limit: g.rate_limit.as_ref().map(|r| wire::RateLimit {
            requests: r.requests,
            per_ms: r.per.as_millis().max(1) as u64,
            burst: r.burst,
            key: r.key.clone(),
        }),
        basic_auth: g.basic_auth.as_ref().map(|b| wire::BasicAuth {
            realm: b.realm.clone(),
            users: htpasswd
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (user, hash) = l.trim().split_once(':')?;
                    (!user.is_empty() && hash.starts_with("$2"))
                        .then(|| (user.to_string(), hash.to_string()))
                })
                .collect(),
            exempt: match &http.health.kind {
                hoist_core::spec::HealthKind::Http { path, .. } => vec![path.clone()],
                _ => Vec::new(),
            },
        }),
        max_body_bytes: g.max_body.map(|b| b.0),
        trusted_proxies: g.trusted_proxies.clone(),
    }
}

pub fn backoff() -> Backoff {
    Backoff {
        base: Duration::from_secs(1),
        factor: 2,
        cap: Duration::from_secs(60),
        reset_after: Duration::from_secs(30),
    }
}

pub fn crash_rule() -> CrashLoop {
    CrashLoop {
        window: Duration::from_secs(60),
        max_failures: 5,
    }
}

/// An instance id: safe as a file name, unique per app, service, release and slot.
pub fn instance_id(app: &str, service: &str, release: &str, slot: u32) -> String {
    format!("{}{slot}", instance_prefix(app, service, release))
}

/// What the ids of `release`'s instances of `service` start with.
pub fn instance_prefix(app: &str, service: &str, release: &str) -> String {
    let short: String = release.chars().take(8).collect();
    format!("{app}-{service}-{short}-")
}

/// A port that was free a moment ago on loopback.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where instance ports are drawn: below the kernel's ephemeral range, so an outgoing
/// connection (the proxy's, a probe's, a client's) never takes a port between its
/// allocation and the app's bind — the soak saw "Address already in use" from exactly
/// that. `None` (draw from `bind(0)`) when the ephemeral range starts too low.
fn instance_range() -> (Option<u16>, Option<u16>) {
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_lo < 12000 {
        return (None, None);
    }
    (Some(ephemeral_lo - 10000), Some(ephemeral_lo))
}

/// Hands out loopback ports to new web instances. "Free now" is not enough: the kernel
/// gives the same port to two `bind(0)`s in a row once the first socket is closed, and an
/// instance that is still starting, or waits out a restart delay, holds its port without
/// listening on it. So a port is also never one assigned to an instance the agent keeps,
/// nor one handed out in the last minute (its instance's row may not be kept yet); one
/// lock makes two deploys at once draw from the same list.
#[derive(Default)]
pub struct Ports {
    recent: std::sync::Mutex<std::collections::VecDeque<(u16, Instant)>>,
}

impl Ports {
    /// How long a handed-out port stays reserved without an instance row.
    const HOLD: Duration = Duration::from_secs(60);

    /// A free port, not in `assigned` (the ports of the instances the agent keeps).
    pub fn allocate(&self, assigned: &std::collections::HashSet<u16>) -> std::io::Result<u16> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) > Self::HOLD)
        {
            recent.pop_front();
        }
        let (lo, hi) = instance_range();
        for _ in 0..64 {
            let port = match (lo, hi) {
                (Some(lo), Some(hi)) => {
                    let mut r = [0u8; 2];
                    let _ = getrandom::fill(&mut r);
                    let port = lo + u16::from_ne_bytes(r) % (hi - lo);
                    // Free now, or try another.
                    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                        continue;
                    }
                    port
                }
                _ => free_port()?,
            };
            if !assigned.contains(&port) && !recent.iter().any(|(p, _)| *p == port) {
                recent.push_back((port, now));
                return Ok(port);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "every port the kernel offered is already assigned",
        ))
    }
}

impl Agent {
    pub(crate) fn rt(&self) -> std::sync::MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The environment of every process of `app` in `release` (instances, hooks, jobs):
    /// design §5's variables, the app's env, then secrets. Nothing of the agent's own
    /// environment but `PATH`.
    pub(crate) fn app_env(
        &self,
        spec: &AppSpec,
        release: &str,
        service: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, crate::secrets::SecretsError> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        );
        env.extend(spec.env.clone());
        env.extend(extra.clone());
        // The host's own `[[hosts]] env` is the most specific: it wins over the app's
        // and the service's.
        let host = self.host.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = spec.host(&host) {
            env.extend(h.env.clone());
        }
        env.extend(self.secrets.values(&spec.app)?);
        env.insert("HOIST_APP".into(), spec.app.clone());
        env.insert("HOIST_SERVICE".into(), service.to_string());
        env.insert("HOIST_RELEASE".into(), release.to_string());
        env.insert(
            "HOIST_DATA_DIR".into(),
            self.paths.data_dir(&spec.app).display().to_string(),
        );
        Ok(env.into_iter().collect())
    }

    /// The user a process of an app runs as: its service's `user`, else the apps' user
    /// (none: the agent's own).
    pub(crate) fn run_as(&self, service_user: Option<&String>) -> Option<String> {
        service_user
            .cloned()
            .or_else(|| self.apps_user.as_ref().map(|u| u.name.clone()))
    }

    /// Builds the in-memory instance for `row` of `spec`.
    pub(crate) fn live_for(&self, spec: &AppSpec, row: InstanceRow) -> Result<Live, String> {
        let svc = spec
            .services
            .get(&row.service)
            .ok_or_else(|| format!("service `{}` is not in the release's app file", row.service))?;
        let mut env = self
            .app_env(spec, &row.release, &row.service, &svc.env)
            .map_err(|e| e.to_string())?;
        if let Some(port) = row.port {
            env.push(("PORT".into(), port.to_string()));
        }
        env.push(("HOIST_INSTANCE".into(), row.instance.clone()));
        let spec_i = InstanceSpec {
            instance: row.instance.clone(),
            app: row.app.clone(),
            service: row.service.clone(),
            release: row.release.clone(),
            command: svc.command.clone(),
            cwd: self.paths.release_dir(&row.app, &row.release),
            env,
            stop_signal: hoist_supervisor::Signal::try_from(svc.stop_signal.number())
                .unwrap_or(hoist_supervisor::Signal::SIGTERM),
            stop_timeout: svc.stop_timeout,
            user: self.run_as(svc.user.as_ref()),
            log_dir: self.paths.logs(&row.app),
            log_max_bytes: svc.logs.max_size.0,
            log_keep: svc.logs.keep,
        };
        Ok(Live {
            spec: spec_i,
            health_spec: svc.effective_health().cloned(),
            http: svc.http.clone(),
            memory_limit: svc.memory_limit.map(|b| b.0),
            handle: None,
            tracker: Tracker::default(),
            restarts: RestartTracker::default(),
            crash: CrashLoopDetector::default(),
            phase: Phase::Pending,
            next_start: Some(Instant::now()),
            started: None,
            last_exit: None,
            generation: 0,
            stats: None,
            spawning: false,
            dropped_lines: 0,
            unhealthy_at: None,
            row,
        })
    }

    /// Starts `id` now (outside the lock) and its health task; records the outcome.
    pub(crate) async fn start_instance(self: &Arc<Self>, id: &str) {
        let spec = {
            let mut rt = self.rt();
            let Some(live) = rt.instances.get_mut(id) else {
                return;
            };
            if live.spawning
                || live.handle.is_some()
                || live.phase == Phase::Stopping
                || live.row.desired != "run"
            {
                return;
            }
            live.spawning = true;
            live.spec.clone()
        };
        let sup = self.supervisor.clone();
        let result = tokio::task::spawn_blocking(move || sup.spawn(&spec))
            .await
            .unwrap_or_else(|e| {
                Err(hoist_supervisor::SupervisorError::AppSpawn {
                    instance: String::new(),
                    message: e.to_string(),
                })
            });
        let generation = {
            let mut rt = self.rt();
            let Some(live) = rt.instances.get_mut(id) else {
                return;
            };
            live.spawning = false;
            match result {
                Ok(handle) => {
                    live.handle = Some(handle);
                    live.phase = Phase::Running;
                    live.started = Some(Instant::now());
                    live.next_start = None;
                    live.tracker = Tracker::default();
                    // A new shim counts its drops from zero.
                    live.dropped_lines = 0;
                    live.generation += 1;
                    live.generation
                }
                Err(e) => {
                    let msg = hoist_supervisor_error(&e);
                    tracing::warn!(instance = %id, error = %msg, "instance failed to start");
                    live.last_exit = Some(msg.clone());
                    let delay = live.restarts.next_delay(&backoff(), Duration::ZERO);
                    live.phase = Phase::Backoff;
                    live.next_start = Some(Instant::now() + delay);
                    let app = live.row.app.clone();
                    drop(rt);
                    self.event(Some(&app), "instance.start_failed", Some(id), &msg);
                    return;
                }
            }
        };
        self.watch_health(id.to_string(), generation);
    }

    /// Probes the instance at its interval until it is replaced or gone; every change of
    /// health is an event, and a change that affects traffic updates the routes at once.
    pub(crate) fn watch_health(self: &Arc<Self>, id: String, generation: u64) {
        let agent = self.clone();
        tokio::spawn(async move {
            // Exec probes run as the instance's user, resolved once per instance start.
            let user = {
                let rt = agent.rt();
                rt.instances
                    .get(&id)
                    .filter(|l| {
                        l.health_spec.as_ref().is_some_and(|h| {
                            matches!(h.kind, hoist_core::spec::HealthKind::Exec { .. })
                        })
                    })
                    .and_then(|l| l.spec.user.clone())
            };
            let creds = match user {
                Some(name) => match tokio::task::spawn_blocking(move || {
                    hoist_supervisor::creds::Credentials::of(&name)
                })
                .await
                {
                    Ok(Some(c)) => Some(c),
                    // No such user: the shim could not have started it either, and a
                    // probe must never fall back to the agent's own user.
                    _ => return,
                },
                None => None,
            };
            loop {
                let (spec, port, cwd, env, app, starting) = {
                    let rt = agent.rt();
                    let Some(live) = rt.instances.get(&id) else {
                        return;
                    };
                    if live.generation != generation || live.phase != Phase::Running {
                        return;
                    }
                    let Some(spec) = live.health_spec.clone() else {
                        return;
                    };
                    let starting = live.tracker.state() == Health::Unknown;
                    (
                        spec,
                        live.row.port,
                        live.spec.cwd.clone(),
                        live.spec.env.clone(),
                        live.row.app.clone(),
                        starting,
                    )
                };
                tokio::time::sleep(health::interval(&spec, starting)).await;
                let ok = health::probe(&spec, port, &cwd, &env, creds.as_ref()).await;
                let changed = {
                    let mut rt = agent.rt();
                    let Some(live) = rt.instances.get_mut(&id) else {
                        return;
                    };
                    if live.generation != generation {
                        return;
                    }
                    live.tracker.observe(ok, Instant::now(), &spec)
                };
                match changed {
                    Some(Health::Healthy) => {
                        agent.event(
                            Some(&app),
                            "instance.healthy",
                            Some(&id),
                            "health check passing",
                        );
                        // Admission also needs `min_healthy`: look again once it has passed.
                        let agent2 = agent.clone();
                        let wait = spec.min_healthy;
                        tokio::spawn(async move {
                            tokio::time::sleep(wait + Duration::from_millis(10)).await;
                            agent2.sync_routes(&app).await;
                        });
                    }
                    Some(Health::Unhealthy) => {
                        agent.event(
                            Some(&app),
                            "instance.unhealthy",
                            Some(&id),
                            "health check failing",
                        );
                        agent.sync_routes(&app).await;
                    }
                    _ => {}
                }
            }
        });
    }

    /// Records an event (best effort: a full disk must not stop supervision).
    pub(crate) fn event(
        &self,
        app: Option<&str>,
        kind: &str,
        subject: Option<&str>,
        message: &str,
    ) {
        if let Err(e) = self.db(|s| s.add_event(app, kind, subject, message)) {
            tracing::warn!(error = %e, kind, "cannot record an event");
        }
    }

    /// The routes of `app` from what runs now: for every web service of its current
    /// release, the admitted instances of that release. Sent only when they changed.
    pub(crate) async fn sync_routes(&self, app: &str) {
        if let Err(e) = self.sync_routes_checked(app).await {
            tracing::warn!(app, error = %e, "cannot update the proxy");
        }
    }

    /// As [`Agent::sync_routes`], failing when the proxy did not take a route.
    pub(crate) async fn sync_routes_checked(&self, app: &str) -> Result<(), String> {
        let Some(proxy) = &self.proxy else {
            return Ok(());
        };
        let spec = self.rt().specs.get(app).map(|(_, s)| s.clone());
        let tls = match &spec {
            Some(spec) => self.route_tls(spec).await,
            None => Default::default(),
        };
        let now = Instant::now();
        // Basic-auth users live in a secret: read only for apps that use it.
        let needs_secrets = self.rt().specs.get(app).is_some_and(|(_, s)| {
            s.services.values().any(|v| {
                v.http
                    .as_ref()
                    .is_some_and(|h| h.guards.basic_auth.is_some())
            })
        });
        let secrets = if needs_secrets {
            self.secrets.values(app).unwrap_or_default()
        } else {
            Default::default()
        };
        let wanted: Vec<Route> = {
            let rt = self.rt();
            let Some((release, spec)) = rt.specs.get(app) else {
                return Ok(());
            };
            spec.services
                .iter()
                .filter_map(|(name, svc)| svc.http.as_ref().map(|h| (name, h)))
                .map(|(name, http)| Route {
                    id: format!("{app}/{name}"),
                    app: app.to_string(),
                    service: name.clone(),
                    domains: http.domains.clone(),
                    path_prefix: http.path_prefix.clone(),
                    release: release.clone(),
                    upstreams: rt
                        .instances
                        .values()
                        .filter(|l| {
                            l.row.app == app && &l.row.service == name && &l.row.release == release
                        })
                        .filter(|l| l.row.desired == "run" && l.admitted(now))
                        .filter_map(Live::upstream)
                        .collect(),
                    drain_timeout_ms: http.drain_timeout.as_millis() as u64,
                    guards: route_guards(
                        http,
                        rt.maintenance.get(app),
                        http.guards
                            .basic_auth
                            .as_ref()
                            .and_then(|b| secrets.get(&b.secret).cloned()),
                    ),
                    tls: tls.get(name).cloned(),
                    canary: rt.canaries.get(app).filter(|(r, _)| r != release).map(
                        |(r, weight_bp)| hoist_protocol::proxy::Canary {
                            release: r.clone(),
                            upstreams: rt
                                .instances
                                .values()
                                .filter(|l| {
                                    l.row.app == app
                                        && &l.row.service == name
                                        && &l.row.release == r
                                })
                                .filter(|l| l.row.desired == "run" && l.admitted(now))
                                .filter_map(Live::upstream)
                                .collect(),
                            weight_bp: *weight_bp,
                        },
                    ),
                })
                .collect()
        };
        // Routes of services the current release no longer serves (removed, or no longer
        // web) go: left, they would send their domains to stopped instances' ports, which
        // another app may be given next.
        // Taken out of `routes_sent` before asking, so a sync running beside this one does
        // not ask to remove it too (the proxy refuses to remove a route twice); put back if
        // the proxy keeps it, for the next sync to try again.
        let stale: Vec<(String, Route)> = {
            let prefix = format!("{app}/");
            let mut rt = self.rt();
            let ids: Vec<String> = rt
                .routes_sent
                .keys()
                .filter(|id| id.starts_with(&prefix) && !wanted.iter().any(|r| &&r.id == id))
                .cloned()
                .collect();
            ids.into_iter()
                .filter_map(|id| rt.routes_sent.remove(&id).map(|r| (id, r)))
                .collect()
        };
        for (id, sent) in stale {
            match proxy.request(Request::RemoveRoute { id: id.clone() }).await {
                Ok(_) => {
                    tracing::info!(route = %id, "route of a service no longer served removed");
                }
                Err(e) => {
                    self.rt().routes_sent.insert(id.clone(), sent);
                    return Err(format!("the proxy kept route `{id}`: {e}"));
                }
            }
        }
        for route in wanted {
            let unchanged = self.rt().routes_sent.get(&route.id) == Some(&route);
            if unchanged {
                continue;
            }
            match proxy
                .request(Request::SetRoute {
                    route: route.clone(),
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(route = %route.id, release = %route.release, upstreams = route.upstreams.len(), "route set");
                    self.rt().routes_sent.insert(route.id.clone(), route);
                }
                Err(e) => {
                    self.rt().routes_sent.remove(&route.id);
                    return Err(format!("the proxy did not take route `{}`: {e}", route.id));
                }
            }
        }
        Ok(())
    }

    /// Turns the maintenance page of `app` on (with `message`) or off: saved first, then
    /// sent to the proxy with the app's routes.
    pub(crate) async fn set_maintenance(
        &self,
        app: &str,
        message: Option<String>,
    ) -> Result<(), String> {
        if !self.rt().specs.contains_key(app) {
            return Err(format!("no app `{app}` runs on this host"));
        }
        let all = {
            let mut rt = self.rt();
            match message {
                Some(m) => rt.maintenance.insert(app.to_string(), m),
                None => rt.maintenance.remove(app),
            };
            rt.maintenance.clone()
        };
        let data = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
        crate::paths::write_atomic(&self.paths.root.join("maintenance.json"), &data, 0o600)
            .map_err(|e| format!("cannot save the maintenance state: {e}"))?;
        self.sync_routes_checked(app).await
    }

    /// Forces the next `sync_routes` to send every route again (a new proxy process).
    pub(crate) fn forget_sent_routes(&self) {
        self.rt().routes_sent.clear();
    }

    /// Brings the resource use (`stats`) of every running instance up to date for a
    /// reader (`status`, the dashboard, `/metrics`), unless it was read less than a second
    /// ago. The reading is a scan of every process on the host (an instance's tree is
    /// found by parent pids), so an idle agent does it only where a memory limit needs it
    /// every second (`supervise_once`), and otherwise when someone looks.
    pub(crate) fn refresh_stats(&self) {
        if self
            .rt()
            .stats_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let table = crate::off_workers(hoist_supervisor::procfs::all_processes);
        let mut rt = self.rt();
        rt.stats_at = Some(Instant::now());
        for live in rt.instances.values_mut() {
            if let Some(handle) = live.handle.as_ref().filter(|h| h.is_running()) {
                live.stats = Some(handle.stats_in(&table));
            }
        }
    }

    /// One pass of supervision: notice exits, schedule restarts, start what is due,
    /// enforce memory limits, stop what is retired. Runs every 200 ms.
    pub(crate) async fn supervise_once(self: &Arc<Self>, measure: bool) {
        let now = Instant::now();
        // The process table (a /proc scan of the whole host) only when a running instance
        // has a memory limit to enforce; readers refresh the rest (`refresh_stats`).
        let limited =
            measure
                && self.rt().instances.values().any(|l| {
                    l.row.desired == "run" && l.handle.is_some() && l.memory_limit.is_some()
                });
        let table = limited.then(|| crate::off_workers(hoist_supervisor::procfs::all_processes));
        let mut to_start = Vec::new();
        let mut to_restart_unhealthy = Vec::new();
        let mut changed_apps = Vec::new();
        let mut events = Vec::new();
        let mut dead = Vec::new();
        {
            let mut rt = self.rt();
            if table.is_some() {
                rt.stats_at = Some(now);
            }
            for (id, live) in rt.instances.iter_mut() {
                if live.row.desired != "run" {
                    continue;
                }
                if let Some(handle) = &live.handle {
                    if !handle.is_running() {
                        let exit = handle.exit_status().ok().flatten();
                        let what = exit.as_ref().map_or("exited".to_string(), describe_exit);
                        let uptime = live
                            .started
                            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                        // Forgotten once whatever the shim left is gone (below).
                        dead.push((id.clone(), handle.clone()));
                        live.handle = None;
                        live.last_exit = Some(what.clone());
                        live.generation += 1;
                        let delay = live.restarts.next_delay(&backoff(), uptime);
                        let looping = live.crash.record_failure(&crash_rule(), now);
                        live.phase = if looping {
                            Phase::CrashLoop
                        } else {
                            Phase::Backoff
                        };
                        live.next_start =
                            Some(now + hoist_supervisor::jittered(delay, jitter_unit(id)));
                        live.row.restarts += 1;
                        changed_apps.push(live.row.app.clone());
                        events.push((
                            live.row.app.clone(),
                            if looping {
                                "instance.crash_loop"
                            } else {
                                "instance.exited"
                            },
                            id.clone(),
                            format!("{what}; restarting in {:.1}s", delay.as_secs_f64()),
                        ));
                        continue;
                    }
                    // Memory limit: the whole process tree counts. The process table is
                    // read once a second for all instances, not per instance per tick.
                    if let Some(table) = &table {
                        let stats = handle.stats_in(table);
                        if let Some(limit) = live.memory_limit {
                            if hoist_supervisor::memory_exceeded(&stats, limit)
                                && live.phase == Phase::Running
                            {
                                events.push((
                                    live.row.app.clone(),
                                    "instance.memory_limit",
                                    id.clone(),
                                    format!(
                                        "using {} bytes, over its limit of {limit}; restarting",
                                        stats.rss_bytes
                                    ),
                                ));
                                to_restart_unhealthy.push(id.clone());
                            }
                        }
                        live.stats = Some(stats);
                    }
                    if measure {
                        let dropped = handle.dropped_lines();
                        if dropped > live.dropped_lines {
                            events.push((
                                live.row.app.clone(),
                                "instance.log_dropped",
                                id.clone(),
                                format!(
                                    "{} log lines dropped (the log could not be written; {dropped} in all)",
                                    dropped - live.dropped_lines
                                ),
                            ));
                        }
                        live.dropped_lines = dropped;
                    }
                    // An instance that was healthy and turned unhealthy is restarted.
                    if live.tracker.was_healthy && live.tracker.state() == Health::Unhealthy {
                        events.push((
                            live.row.app.clone(),
                            "instance.restart_unhealthy",
                            id.clone(),
                            "unhealthy past its threshold; restarting".into(),
                        ));
                        live.tracker = Tracker::default();
                        live.unhealthy_at = Some(now);
                        to_restart_unhealthy.push(id.clone());
                    }
                } else if !live.spawning && live.next_start.is_some_and(|t| t <= now) {
                    to_start.push(id.clone());
                }
            }
        }
        // A shim that was killed may have left its app running (holding its port): end
        // it before its record, the only way to find it, is forgotten.
        for (id, handle) in dead {
            let sup = self.supervisor.clone();
            let ended = tokio::task::spawn_blocking(move || {
                let ended = handle.end_orphan();
                if ended {
                    let _ = sup.forget(&id);
                }
                (id, ended)
            })
            .await;
            if let Ok((id, false)) = ended {
                tracing::error!(instance = %id, "an app outlived its shim and could not be killed");
            }
        }
        for (app, kind, id, msg) in events {
            self.event(Some(&app), kind, Some(&id), &msg);
            if matches!(
                kind,
                "instance.exited" | "instance.crash_loop" | "instance.restart_unhealthy"
            ) {
                let bumped = self.db(|s| s.bump_restarts(&id));
                self.noted(Some(&app), "count a restart", bumped);
            }
        }
        for app in changed_apps {
            self.sync_routes(&app).await;
        }
        // Each restart waits out its instance's stop timeout on a task of its own, so one
        // frozen instance never holds up the supervision of the others.
        for id in to_restart_unhealthy {
            if let Some(stopping) = self.begin_restart(&id) {
                let agent = self.clone();
                tokio::spawn(async move { agent.finish_restart(&id, stopping).await });
            }
        }
        for id in to_start {
            let agent = self.clone();
            tokio::spawn(async move { agent.start_instance(&id).await });
        }
    }

    /// Takes `id` out of traffic, stops it (the shim escalates) and starts it again.
    pub(crate) async fn restart_instance(self: &Arc<Self>, id: &str) {
        if let Some(stopping) = self.begin_restart(id) {
            self.finish_restart(id, stopping).await;
        }
    }

    /// Marks `id` stopping at once (so the next supervision pass leaves it alone); returns
    /// its handle and app for [`Self::finish_restart`].
    fn begin_restart(&self, id: &str) -> Option<(Option<hoist_supervisor::Instance>, String)> {
        let mut rt = self.rt();
        let live = rt.instances.get_mut(id)?;
        live.phase = Phase::Stopping;
        live.generation += 1;
        Some((live.handle.clone(), live.row.app.clone()))
    }

    async fn finish_restart(
        self: &Arc<Self>,
        id: &str,
        (handle, app): (Option<hoist_supervisor::Instance>, String),
    ) {
        self.sync_routes(&app).await;
        if let Some(h) = handle {
            let timeout = self
                .rt()
                .instances
                .get(id)
                .map_or(Duration::from_secs(30), |l| l.spec.stop_timeout);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = h.stop();
                h.wait_stopped(timeout + Duration::from_secs(5))
            })
            .await;
        }
        let _ = self.supervisor.forget(id);
        let mut rt = self.rt();
        if let Some(live) = rt.instances.get_mut(id) {
            live.handle = None;
            live.phase = Phase::Pending;
            live.next_start = Some(Instant::now());
            live.row.restarts += 1;
        }
    }

    /// Stops `ids` and waits for them (each within its stop timeout); removes their rows.
    pub(crate) async fn stop_instances(self: &Arc<Self>, ids: &[String]) {
        let mut handles = Vec::new();
        {
            let mut rt = self.rt();
            for id in ids {
                if let Some(live) = rt.instances.get_mut(id) {
                    live.row.desired = "stop".into();
                    live.phase = Phase::Stopping;
                    live.generation += 1;
                    live.next_start = None;
                    handles.push((id.clone(), live.handle.clone(), live.spec.stop_timeout));
                }
            }
        }
        for (id, _, _) in &handles {
            let marked = self.db(|s| s.set_instance_desired(id, "stop"));
            self.noted(None, "mark an instance for stopping", marked);
        }
        let mut waits = Vec::new();
        for (id, handle, timeout) in handles {
            let sup = self.supervisor.clone();
            waits.push(tokio::task::spawn_blocking(move || {
                if let Some(h) = handle {
                    let _ = h.stop();
                    if !h.wait_stopped(timeout + Duration::from_secs(5)) {
                        let _ = h.kill_now();
                        h.wait_stopped(Duration::from_secs(5));
                    }
                }
                // Wait for a spawn that might be in flight to land before forgetting.
                let _ = sup.forget(&id);
                id
            }));
        }
        for w in waits {
            if let Ok(id) = w.await {
                let removed = self.db(|s| s.remove_instance(&id));
                self.noted(None, "drop a stopped instance's row", removed);
                self.rt().instances.remove(&id);
            }
        }
    }

    /// Adds the instances of `release` on `host` that are not in `existing` (rows first),
    /// ready for the supervision loop to start.
    pub(crate) fn add_instances_filtered(
        &self,
        spec: &AppSpec,
        release: &str,
        host: &str,
        existing: &[String],
    ) -> Result<Vec<String>, String> {
        let mut ids = Vec::new();
        for (service, replicas) in spec.services_on(host) {
            let svc = &spec.services[service];
            for slot in 0..replicas {
                let id = instance_id(&spec.app, service, release, slot);
                if existing.contains(&id) {
                    continue;
                }
                let port = if svc.http.is_some()
                    || matches!(
                        svc.effective_health().map(|h| &h.kind),
                        Some(HealthKind::Http { .. } | HealthKind::Tcp)
                    ) {
                    let assigned: std::collections::HashSet<u16> = self
                        .rt()
                        .instances
                        .values()
                        .filter_map(|l| l.row.port)
                        .collect();
                    Some(
                        self.ports
                            .allocate(&assigned)
                            .map_err(|e| format!("cannot find a free port: {e}"))?,
                    )
                } else {
                    None
                };
                let row = InstanceRow {
                    instance: id.clone(),
                    app: spec.app.clone(),
                    service: service.to_string(),
                    release: release.to_string(),
                    slot: slot as i64,
                    port,
                    desired: "run".into(),
                    restarts: 0,
                    created_at_ms: hoist_state::now_ms(),
                };
                self.db(|s| s.put_instance(&row))
                    .map_err(|e| e.to_string())?;
                let live = self.live_for(spec, row)?;
                self.rt().instances.insert(id.clone(), live);
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

fn describe_exit(e: &hoist_supervisor::ExitInfo) -> String {
    match (&e.code, &e.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by {sig}"),
        _ => "exited".into(),
    }
}

fn hoist_supervisor_error(e: &hoist_supervisor::SupervisorError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A stable pseudo-random number in [0, 1) per instance, so 20 instances that crash
/// together do not restart in lockstep.
fn jitter_unit(id: &str) -> f64 {
    let mut h: u64 = 1469598103934665603;
    for b in id.bytes() {
        h = (h ^ b as u64).wrapping_mul(1099511628211);
    }
    (h % 1000) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soak's "an upstream address is listed twice": ports handed out at once (two
    /// deploys, two slots of one service) must all differ, though none is listened on.
    #[test]
    fn ports_allocated_concurrently_are_all_different() {
        let ports = Arc::new(Ports::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ports = ports.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|_| ports.allocate(&Default::default()).unwrap())
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        let all: Vec<u16> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let distinct: std::collections::HashSet<u16> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "a port was handed out twice");
    }

    /// Soak finding: a port taken as the local end of an outgoing connection between its
    /// allocation and the app's bind. Instance ports are never in the ephemeral range.
    #[test]
    fn instance_ports_are_below_the_ephemeral_range() {
        let (Some(lo), Some(hi)) = instance_range() else {
            panic!("this machine's ephemeral range starts too low for the test");
        };
        let ports = Ports::default();
        for _ in 0..200 {
            let p = ports.allocate(&Default::default()).unwrap();
            assert!((lo..hi).contains(&p), "{p} is not in {lo}..{hi}");
        }
    }
}
