//! The control plane of one host (`hoist agent`): the only writer of the host's state.
//! It composes `hoist-state` (SQLite), `hoist-artifact` (the release store),
//! `hoist-supervisor` (instances under shims) and the proxy (configured over its control
//! socket), serves the API on a Unix socket, and reconciles what should run with what
//! is observed.
//!
//! It must not print (the binary does) and must not assume it is the parent of what runs:
//! instances and the proxy outlive it and are re-adopted by identity.

// `openapi.rs` describes the API in one large `json!`.
#![recursion_limit = "512"]

mod acme;
mod alerts;
mod applocks;
mod backup;
mod dashboard;
mod dashcharts;
mod dashpages;
/// The agent client now lives in `hoist-client`; re-exported for code that reached it here.
pub use hoist_client as client;
mod deploy;
mod doctor;
mod fleet;
mod health;
mod http;
mod jobs;
mod lifecycle;
pub mod metrics;
mod minutes;
mod openapi;
pub mod paths;
mod plan;
mod proxyctl;
mod recover;
mod routes;
mod runtime;
pub mod secrets;
mod server;
mod slo;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use hoist_state::Retention;
pub use paths::Paths;

/// How the agent was asked to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub root: PathBuf,
    pub socket: PathBuf,
    /// The proxy's HTTP listener.
    pub proxy: Option<SocketAddr>,
    /// The proxy's HTTPS listener (needs `proxy`).
    pub https: Option<SocketAddr>,
    pub dashboard: Option<SocketAddr>,
    /// How long and how many events, job runs, operations and history records are kept.
    pub retention: Retention,
    /// Where `/metrics` is served (Prometheus text, bearer token required).
    pub metrics: Option<SocketAddr>,
    /// The user instances, jobs and hooks run as when their service names none. `None`:
    /// [`DEFAULT_APPS_USER`] when the agent runs as root and that user exists, else the
    /// agent's own user. Naming the agent's own user (`root`) keeps apps beside the
    /// agent and the proxy, as the operator's explicit choice.
    pub apps_user: Option<String>,
    /// The proxy's cap on open client connections (`None`: the proxy's default).
    pub max_connections: Option<usize>,
}

/// The system user `hoist setup` creates for apps: a root agent runs them as it, so an
/// app never has the proxy's (or the agent's) uid unless the operator asks.
pub const DEFAULT_APPS_USER: &str = "hoist-apps";

/// The user apps run as, resolved when the agent starts.
#[derive(Debug, Clone)]
pub(crate) struct AppsUser {
    pub name: String,
    pub uid: nix::unistd::Uid,
    pub gid: nix::unistd::Gid,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the agent root `{path}`")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another agent is already running with root `{path}`")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot listen on `{path}`")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] hoist_state::StateError),
    /// The state cannot be read: the agent does not guess what runs (it would stop or
    /// start the wrong instances), it stops and says where to look.
    #[error("the state database `{path}` is damaged; the agent does not start on a state it cannot read (the apps and the proxy keep serving): keep a copy of it and rebuild it as docs/runbook/state.integrity.md shows")]
    StateDamaged {
        path: PathBuf,
        source: hoist_state::StateError,
    },
    #[error(transparent)]
    Supervisor(#[from] hoist_supervisor::SupervisorError),
    #[error(transparent)]
    Store(#[from] hoist_artifact::ArtifactError),
    #[error("cannot find the hoist executable to run shims and the proxy")]
    Exe(#[source] std::io::Error),
    #[error(transparent)]
    Proxy(#[from] proxyctl::ProxyError),
    #[error(
        "the apps' user `{user}` does not exist on this host (`hoist setup` creates `hoist-apps`)"
    )]
    NoAppsUser { user: String },
    #[error("cannot serve the dashboard on `{addr}`")]
    Dashboard {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on `{addr}`")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The live agent: shared by every request handler and background task.
pub struct Agent {
    pub paths: Paths,
    pub(crate) config: AgentConfig,
    pub(crate) boot: String,
    pub(crate) state: Mutex<hoist_state::State>,
    pub(crate) secrets: secrets::Secrets,
    pub(crate) runtime: Mutex<runtime::Runtime>,
    pub(crate) supervisor: hoist_supervisor::Supervisor,
    pub(crate) store: hoist_artifact::Store,
    /// Uploads hold it shared until their release is recorded; garbage collection holds it
    /// exclusively, so it never removes the blobs of a release being received.
    pub(crate) store_gate: tokio::sync::RwLock<()>,
    pub(crate) proxy: Option<proxyctl::ProxyCtl>,
    /// This host's name in the app file (`local` until a deploy names it).
    pub(crate) host: Mutex<String>,
    /// Each app's deploy lock: its mutex (deploys and rollbacks of an app never overlap,
    /// nor with the agent's own work on it) and the claim of the deploy or rollback that
    /// holds or waits for it, taken before the mutex, so a second deploy is refused naming
    /// it while the agent's own short work on the app (a standby window's end) is waited
    /// for. Kept only for apps something holds (`applocks.rs`).
    pub(crate) app_locks: applocks::AppLocks,
    /// `POST /v1/agent/stop` (`hoist agent stop`): ends [`run`] as a signal would.
    pub(crate) stop: tokio::sync::Notify,
    /// Certificates handed to the proxy; one issuance at a time (`tls.rs`).
    pub(crate) tls: tls::Keeper,
    /// The alert evaluator's memory (see `alerts.rs`).
    pub(crate) alerts: Mutex<alerts::Engine>,
    /// Ports for new web instances (see [`runtime::Ports`]).
    pub(crate) ports: runtime::Ports,
    /// Who apps run as when it is not the agent's own user (see [`AgentConfig::apps_user`]).
    pub(crate) apps_user: Option<AppsUser>,
    /// The `hoist` executable (shims, the proxy, backup readers run from it).
    pub(crate) exe: PathBuf,
    /// The dashboard's token and sessions (`dashboard.rs`).
    pub(crate) dash: dashboard::Dash,
    /// Per-minute traffic aggregates (`minutes.rs`).
    pub(crate) minutes: Mutex<hoist_state::minutes::Minutes>,
    /// The minute of the last pruning of `minutes`.
    pub(crate) minutes_pruned: Mutex<i64>,
    /// This agent found the proxy already serving and has not yet taken its counters
    /// as baselines (`minutes.rs`).
    pub(crate) minutes_adopting: std::sync::atomic::AtomicBool,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Agent {
    /// Opens the root (creating it), takes the one-agent-per-root lock and the state.
    pub fn open(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        // Files the agent, its shims and the proxy create (state, logs, the access log)
        // are readable by no other user: 0640 at most, whatever the caller's umask.
        let umask = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        nix::sys::stat::umask(umask | nix::sys::stat::Mode::from_bits_truncate(0o027));
        let paths = Paths::new(&config.root);
        paths.create().map_err(|source| AgentError::Root {
            path: config.root.clone(),
            source,
        })?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.lock_file())
            .map_err(|source| AgentError::Root {
                path: paths.lock_file(),
                source,
            })?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| AgentError::AlreadyRunning {
                path: config.root.clone(),
            })?;
        let state = hoist_state::State::open(&paths.state_db())?;
        let minutes = hoist_state::minutes::Minutes::open(&paths.minutes_db())?;
        let engine = alerts::Engine::load(&paths.alerts_file());
        // A new database (and its WAL files) exist only now.
        paths.make_private().map_err(|source| AgentError::Root {
            path: config.root.clone(),
            source,
        })?;
        let apps_user = resolve_apps_user(config.apps_user.as_deref())?;
        if let Some(u) = &apps_user {
            paths
                .share_with_apps(u.gid)
                .map_err(|source| AgentError::Root {
                    path: config.root.clone(),
                    source,
                })?;
            tracing::info!(user = %u.name, uid = %u.uid, "apps run as their own user");
        }
        let boot = new_boot_id();
        tracing::info!(root = %config.root.display(), boot = %boot, "agent starting");
        let exe = match std::env::var_os("HOIST_EXE") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().map_err(AgentError::Exe)?,
        };
        // The small shim binary beside ours, when installed: far less memory per instance.
        // Only of this very version: an old `hoist-shim` left beside a newer `hoist` might
        // not read the specs this agent writes.
        let small_shim = exe.with_file_name("hoist-shim");
        let same_version = std::process::Command::new(&small_shim)
            .arg("--version")
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && o.stdout == format!("hoist-shim {}\n", env!("CARGO_PKG_VERSION")).as_bytes()
            });
        let shim_exe = if same_version {
            small_shim
        } else {
            exe.clone()
        };
        let supervisor = hoist_supervisor::Supervisor::new(hoist_supervisor::SupervisorConfig {
            shim_exe,
            run_dir: paths.run_dir(),
            handshake_timeout: hoist_supervisor::HANDSHAKE_TIMEOUT,
        })?;
        let store = hoist_artifact::Store::open(&paths.store())?;
        let host = std::fs::read_to_string(paths.host_file())
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| hoist_core::spec::defaults::LOCAL_HOST.to_string());
        let proxy = config.proxy.map(|listen| proxyctl::ProxyCtl {
            exe: exe.clone(),
            listen,
            https: config.https,
            max_connections: config.max_connections,
            dir: paths.proxy_dir(),
            listener: Default::default(),
        });
        Ok(Arc::new(Agent {
            secrets: secrets::Secrets::new(&paths.secrets_dir()),
            paths,
            config,
            boot,
            state: Mutex::new(state),
            runtime: Mutex::new(runtime::Runtime::default()),
            supervisor,
            store,
            store_gate: tokio::sync::RwLock::new(()),
            proxy,
            host: Mutex::new(host),
            app_locks: Default::default(),
            stop: tokio::sync::Notify::new(),
            tls: tls::Keeper::default(),
            alerts: Mutex::new(engine),
            ports: Default::default(),
            apps_user,
            exe,
            dash: Default::default(),
            minutes: Mutex::new(minutes),
            minutes_pruned: Mutex::new(0),
            minutes_adopting: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        }))
    }

    pub(crate) fn hello(&self) -> hoist_protocol::agent::Hello {
        hoist_protocol::agent::Hello {
            api: hoist_protocol::agent::API_VERSION,
            version: env!("CARGO_PKG_VERSION").to_string(),
            boot: self.boot.clone(),
            pid: std::process::id(),
            root: self.config.root.display().to_string(),
            proxy: self.config.proxy.map(|a| a.to_string()),
        }
    }

    /// Runs one short operation on the state database, off the async workers.
    ///
    /// SQLite here is blocking I/O with `synchronous=FULL`: a commit waits for the disk.
    /// On the agent's multi-thread runtime the calling worker hands its other tasks to a
    /// fresh worker first (`block_in_place`), so a slow disk or a locked database stalls
    /// only the task that needs the state — never the API, health probes or log follows.
    /// (Outside such a runtime — unit tests — it simply runs.)
    pub(crate) fn db<R>(&self, f: impl FnOnce(&mut hoist_state::State) -> R) -> R {
        let run = || {
            // A panic while holding the lock leaves SQLite consistent (every write is a
            // transaction), so a poisoned lock is safe to keep using.
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut st)
        };
        off_workers(run)
    }

    /// A state write whose failure must not stop its caller (the work it records is done
    /// already): the failure is logged and recorded as a `state.error` event, so it is
    /// seen in `hoist events` rather than dropped.
    pub(crate) fn noted<T>(
        &self,
        app: Option<&str>,
        what: &str,
        result: Result<T, hoist_state::StateError>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = format!("cannot {what}: {}", chain(&e));
                tracing::error!(app, "{msg}");
                self.event(app, "state.error", None, &msg);
                None
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    raise_nofile_limit();
    let state_db = Paths::new(&config.root).state_db();
    let damaged = |e: AgentError| match e {
        AgentError::State(source) if source.is_damaged() => AgentError::StateDamaged {
            path: state_db.clone(),
            source,
        },
        e => e,
    };
    let agent = Agent::open(config).map_err(damaged)?;
    if let Some(proxy) = &agent.proxy {
        let adopted = proxy.ensure_running().await?;
        agent
            .minutes_adopting
            .store(adopted, std::sync::atomic::Ordering::Relaxed);
    }
    if let Ok(data) = std::fs::read(agent.paths.root.join("maintenance.json")) {
        match serde_json::from_slice(&data) {
            Ok(m) => agent.rt().maintenance = m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read maintenance.json; no app is in maintenance")
            }
        }
    }
    agent
        .recover()
        .await
        .map_err(|e| damaged(AgentError::State(e)))?;
    let apps: Vec<String> = agent.rt().specs.keys().cloned().collect();
    for app in apps {
        agent.sync_routes(&app).await;
    }
    let listener =
        http::bind_socket(&agent.config.socket).map_err(|source| AgentError::Socket {
            path: agent.config.socket.clone(),
            source,
        })?;
    tracing::info!(socket = %agent.config.socket.display(), "agent listening");
    agent.event(
        None,
        "agent.started",
        None,
        &format!("agent started (boot {})", agent.boot),
    );
    // Separate tasks, not branches of one `select!`: a task waiting on the state (see
    // `Agent::db`) must never hold up accepting connections.
    let serving = tokio::spawn(server::serve(agent.clone(), listener));
    let looping = tokio::spawn(loops(agent.clone()));
    let metrics = match metrics_listener(&agent).await {
        Ok(Some((listener, token))) => {
            Some(tokio::spawn(metrics::serve(agent.clone(), listener, token)))
        }
        Ok(None) => None,
        Err(e) => {
            serving.abort();
            looping.abort();
            let _ = std::fs::remove_file(&agent.config.socket);
            return Err(e);
        }
    };
    let dashboard = match agent.config.dashboard {
        Some(addr) => match dashboard::bind(&agent, addr).await {
            Ok(listener) => {
                tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving the dashboard");
                Some(tokio::spawn(dashboard::serve(agent.clone(), listener)))
            }
            Err(source) => {
                serving.abort();
                looping.abort();
                if let Some(m) = metrics {
                    m.abort();
                }
                let _ = std::fs::remove_file(&agent.config.socket);
                return Err(AgentError::Dashboard { addr, source });
            }
        },
        None => None,
    };
    tokio::select! {
        () = shutdown => {}
        () = agent.stop.notified() => tracing::info!("asked to stop over the API"),
    }
    tracing::info!("agent stopping; instances and the proxy keep running");
    serving.abort();
    looping.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(d) = dashboard {
        d.abort();
    }
    let _ = std::fs::remove_file(&agent.config.socket);
    Ok(())
}

/// The metrics listener and its token, when `--metrics` is set.
async fn metrics_listener(
    agent: &Agent,
) -> Result<Option<(tokio::net::TcpListener, String)>, AgentError> {
    let Some(addr) = agent.config.metrics else {
        return Ok(None);
    };
    let failed = |source| AgentError::Metrics { addr, source };
    let token = metrics::ensure_token(&agent.config.root).map_err(failed)?;
    let listener = metrics::bind(addr).await.map_err(failed)?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics");
    Ok(Some((listener, token)))
}

/// Raises the soft limit of open files to the hard one: every instance's pipes, log
/// files and API connection are files, and the agent may be started under a low soft
/// limit (a shell's `ulimit -Sn 256`). Failure is logged, never fatal.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
            }
        }
    }
}

/// `hoist agent connect`: bridges standard input and output to the agent's socket, so
/// that the API runs over any byte pipe (`ssh HOST hoist agent connect`). Blocking
/// copies on two threads: a bridge has nothing else to do.
pub fn connect(socket: &std::path::Path) -> std::io::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut up = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = pump(&mut std::io::stdin().lock(), &mut up);
        // The request is complete; the answer may still be streaming.
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    pump(&mut down, &mut std::io::stdout().lock())
}

/// Copies through a buffer until end of input. Not `std::io::copy`: it splices, and a
/// splice from the socket into the stdout pipe holds that pipe's lock while it waits for
/// the agent, so sshd blocks reading the pipe's other end and never passes the request on.
fn pump(from: &mut impl std::io::Read, to: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// The background work: supervision every 200 ms (memory limits, and so process stats,
/// every second where one is declared), housekeeping (standby windows, the proxy's liveness, jobs) every second.
async fn loops(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut pruned_at: Option<std::time::Instant> = None;
    let mut alerting: Option<tokio::task::JoinHandle<()>> = None;
    let mut scheduling: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        n += 1;
        agent.supervise_once(n % 5 == 0).await;
        // Retention once a minute by the clock (and just after start), not by a tick
        // count: under load a pass of this loop takes longer than its 200 ms. Each pass
        // is a few indexed deletes, bounded by what a minute adds.
        if pruned_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            pruned_at = Some(std::time::Instant::now());
            agent.apply_retention();
            off_workers(trim_heap);
        }
        if n % 5 == 0 {
            agent.housekeeping().await;
            // Jobs in their own task, like alerts: 180 due runs are 180 shim spawns,
            // seconds of work that must not hold up supervision. A pass still running
            // (a slow spawn) is not started twice; its due jobs wait for the next.
            if scheduling.as_ref().is_none_or(|t| t.is_finished()) {
                let agent = agent.clone();
                scheduling = Some(tokio::spawn(async move { agent.schedule_jobs().await }));
            }
            agent.schedule_backups().await;
        }
        // Alerts every 2 s, in their own task: a slow proxy answer must not hold up
        // supervision, and a pass still running is not started twice.
        if n % 10 == 0 && alerting.as_ref().is_none_or(|t| t.is_finished()) {
            let agent = agent.clone();
            alerting = Some(tokio::spawn(async move { agent.evaluate_alerts().await }));
        }
    }
}

impl Agent {
    /// Ends standby windows that have passed and restarts a proxy that died (it reloads
    /// its last routes from its state file; the agent sends them again anyway).
    async fn housekeeping(self: &Arc<Self>) {
        if let Some(proxy) = &self.proxy {
            if proxy
                .request(hoist_protocol::proxy::Request::Ping)
                .await
                .is_err()
            {
                tracing::warn!("the proxy does not answer; starting it again");
                if proxy.ensure_running().await.is_ok() {
                    self.forget_sent_routes();
                    self.tls.forget_sent();
                    let apps: Vec<String> = self.rt().specs.keys().cloned().collect();
                    for app in apps {
                        self.sync_routes(&app).await;
                    }
                }
            }
        }
        self.renew_due();
        self.refresh_file_certs().await;
        let now = hoist_state::now_ms();
        // Bind first: a guard in a `for` head would be held for the whole loop.
        let apps = self.db(|s| s.apps()).unwrap_or_default();
        for app in apps {
            let cur = self.db(|s| s.current(&app)).ok().flatten();
            let Some(mut cur) = cur else { continue };
            if cur.standby.is_some() && cur.standby_until_ms.is_some_and(|t| t <= now) {
                // A deploy in progress owns the instances; try again next time.
                let Ok(_guard) = self.app_lock(&app).try_lock_owned() else {
                    continue;
                };
                tracing::info!(app = %app, standby = ?cur.standby, "standby window over");
                cur.standby = None;
                cur.standby_until_ms = None;
                let ended = self.db(|s| s.set_current(&cur));
                if self
                    .noted(Some(&app), "end the standby window", ended)
                    .is_some()
                {
                    self.retire(&app, false).await;
                }
            }
        }
    }

    /// Log files of instances whose release has left the disk (pruned), once nothing has
    /// written them for [`LOGS_GRACE`]: rotation bounds one instance's files, this how
    /// many instances' files pile up as deploys come and go. A kept release's logs stay
    /// (it can be rolled back to, or be the failure someone is reading about).
    fn prune_instance_logs(&self) {
        let live: std::collections::HashSet<String> = self.rt().instances.keys().cloned().collect();
        let names = |dir: &std::path::Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let older_than = std::time::SystemTime::now() - LOGS_GRACE;
        let mut removed = 0;
        for app in names(&self.paths.root.join("logs")) {
            let logs = self.paths.logs(&app);
            let kept: Vec<String> = names(&self.paths.releases(&app))
                .into_iter()
                .filter(|r| !r.starts_with('.'))
                .collect();
            for service in names(&logs) {
                let ours = format!("{app}-{service}-");
                let kept: Vec<String> = kept
                    .iter()
                    .map(|r| runtime::instance_prefix(&app, &service, r))
                    .collect();
                let keep = |instance: &str| {
                    live.contains(instance)
                        || !instance.starts_with(&ours)
                        || kept.iter().any(|p| instance.starts_with(p.as_str()))
                };
                match hoist_supervisor::logs::prune(&logs, &service, keep, older_than) {
                    Ok(r) => removed += r.len(),
                    Err(e) => {
                        tracing::warn!(app = %app, service = %service, error = %e, "cannot prune old instances' logs")
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                instances = removed,
                "pruned the logs of instances of removed releases"
            );
        }
    }

    /// Applies the retention of the host config to the state and the instances' logs.
    fn apply_retention(&self) {
        off_workers(|| self.prune_instance_logs());
        let r = self.config.retention;
        let pruned = self.db(|s| s.prune(&r, hoist_state::now_ms()));
        if let Some(p) = self.noted(None, "prune old records", pruned) {
            if !p.is_empty() {
                tracing::info!(
                    events = p.events,
                    job_runs = p.job_runs,
                    operations = p.operations,
                    journal = p.journal,
                    history = p.history,
                    "retention pruned old records"
                );
            }
        }
    }

    pub(crate) fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.app_locks.mutex(app)
    }

    pub(crate) fn alert_engine(&self) -> std::sync::MutexGuard<'_, alerts::Engine> {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn host_name(&self) -> String {
        self.host.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long the logs of an instance whose release was pruned stay after their last line.
const LOGS_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs blocking work (SQLite, file I/O, a lock) without stalling the runtime: on the
/// agent's multi-thread runtime the calling worker first hands its other tasks to a fresh
/// worker (`block_in_place`); elsewhere (unit tests) it simply runs.
pub(crate) fn off_workers<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A test hook: with `HOIST_FAILPOINT=STEP:before` (or `:after`) in its environment the
/// agent stops dead at that step of a deploy — it writes `<root>/failpoint` and sleeps —
/// so a crash-consistency test can SIGKILL it exactly there instead of guessing with
/// sleeps. Unset, it costs one comparison.
pub(crate) fn failpoint(step: &str, phase: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let Some(point) = POINT.get_or_init(|| std::env::var("HOIST_FAILPOINT").ok()) else {
        return;
    };
    if point.split_once(':') == Some((step, phase)) {
        tracing::warn!(step, phase, "failpoint reached; pausing");
        if let Ok(root) = std::env::var("HOIST_FAILPOINT_MARK") {
            let _ = std::fs::write(root, format!("{step}:{phase}"));
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// The user apps run as, if not the agent's own (see [`AgentConfig::apps_user`]).
fn resolve_apps_user(named: Option<&str>) -> Result<Option<AppsUser>, AgentError> {
    let me = nix::unistd::geteuid();
    let name = match named {
        Some(n) => n.to_string(),
        None if me.is_root() => DEFAULT_APPS_USER.to_string(),
        None => return Ok(None),
    };
    let found = nix::unistd::User::from_name(&name).ok().flatten();
    let Some(user) = found else {
        if named.is_some() {
            return Err(AgentError::NoAppsUser { user: name });
        }
        tracing::warn!(
            user = %name,
            "apps run as root, the agent's and the proxy's user: create the system user `{name}` (`hoist setup` does) or name one with `apps_user`"
        );
        return Ok(None);
    };
    if user.uid == me {
        return Ok(None);
    }
    Ok(Some(AppsUser {
        name,
        uid: user.uid,
        gid: user.gid,
    }))
}

/// Caps glibc's malloc arenas at two. Call it before the agent's runtime starts threads.
///
/// The soak showed why: the agent's live heap stays under 6 MB (heaptrack's peak, whatever
/// the work), yet its RSS climbed from 13 to 40 MB in ten minutes. Every blocking-pool
/// thread (state writes, shim spawns, 180 job starts a second) gets a malloc arena of its
/// own, up to 16 on two cores, and each keeps the high-water mark of what passed through
/// it. Two arenas, and [`trim_heap`] once a minute, bound that part (not shown yet to
/// level RSS on its own: see ARCHITECTURE.md).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the memory malloc holds free (in every arena) back to the system.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arenas' own locks; it is safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn new_boot_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod bridge_tests {
    #[test]
    fn the_bridge_copies_until_the_end() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        super::pump(&mut &data[..], &mut out).unwrap();
        assert_eq!(out, data);
    }
}
