//! The data plane: listeners, the route table, atomic switching, draining, hardened
//! HTTP/1 edges and per-route counters. It runs as its own process (`hoist proxy`),
//! configured over a Unix socket with `hoist_protocol::proxy` messages, and keeps
//! serving its last routes while nobody configures it.
//!
//! It never depends on the agent, never runs health checks (the agent decides which
//! instances form a set; the proxy only skips a member that refuses connections for a
//! moment), and never prints: logs go through `tracing`, the access log is data.
//!
//! Entry points: [`run`] serves on listeners it is given until a shutdown future
//! resolves (tests run it in-process on port 0); [`process::run_process`] is the
//! `hoist proxy` process (binds or inherits sockets, handles signals and upgrades);
//! [`Client`] talks to a running proxy's control socket.

mod access_log;
mod canary;
mod control;
mod error;
mod forward;
mod framing;
mod guards;
mod plain;
pub mod process;
mod state;
mod stats;
mod table;
mod timed_io;
pub mod tls;
mod upgrade;
mod upstream;
mod websocket;
mod worker;

use std::future::Future;
use std::net::{IpAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hoist_protocol::proxy as wire;

pub use access_log::AccessLogTarget;
pub use control::Client;
pub use error::ProxyError;
pub use stats::count_codes;
pub use upgrade::{Handoff, Inherited, INHERIT_ENV};

/// How many retired releases of each route keep their counters (beside the route's live
/// release and canary); older ones are forgotten, so memory does not grow with deploys.
pub const RETIRED_COUNTERS_KEPT: usize = 2;

/// Limits at the edges; the defaults are what a public-facing proxy should use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A client must send a whole request head within this (slowloris); it is also how
    /// long an idle keep-alive client connection is kept.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes; more gets 431.
    pub max_header_bytes: usize,
    /// Most request header lines; more gets 431.
    pub max_headers: usize,
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response head (504 after).
    pub response_timeout: Duration,
    /// Longest pause in a client's request body before the request is abandoned, and in
    /// an upstream's response body before the response is cut (the client's connection
    /// closed, the upstream's not reused, an upstream error counted).
    pub body_timeout: Duration,
    /// Longest time a client may take no response bytes before its connection is closed.
    pub write_timeout: Duration,
    /// How long a member that refused a connection is skipped.
    pub refused_backoff: Duration,
    /// Most open client connections (all workers); one more is answered 503 and closed
    /// at once. 0: derived from the open-files limit (half of it, less a reserve: each
    /// client connection may hold an upstream connection too).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            refused_backoff: Duration::from_secs(2),
            max_connections: 0,
        }
    }
}

/// How one proxy instance runs.
#[derive(Debug, Default)]
pub struct Config {
    /// Worker threads (each its own runtime); 0 means one per core.
    pub workers: usize,
    pub limits: Limits,
    /// Peers whose X-Forwarded-* headers are believed (and appended to).
    pub trusted_proxies: Vec<IpAddr>,
    pub access_log: Option<AccessLogTarget>,
    /// Where the table is saved after every change.
    pub state_file: Option<PathBuf>,
    /// The table to start with.
    pub routes: Vec<wire::Route>,
    /// Arguments for a successor process; without them `Upgrade` is refused.
    pub upgrade_args: Option<Vec<std::ffi::OsString>>,
    /// The HTTPS listener (every TLS worker thread gets a clone), if any.
    pub tls_listener: Option<TcpListener>,
    /// Where certificates are saved (0600) and loaded from at start.
    pub certs_file: Option<PathBuf>,
    /// Written to (one byte) and closed once the proxy serves.
    pub ready: Option<OwnedFd>,
    /// How long connections may finish after a shutdown before tunnels are closed and
    /// the rest is cut (zero means the default of 30 s).
    pub shutdown_grace: Duration,
}

/// What every worker and the control plane share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub published: table::Published,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpAddr>,
    pub access_log: Option<access_log::AccessLog>,
    pub request_id_prefix: String,
    pub shutdown_grace: Duration,
    /// Bumped when the process stops for good: every tunnel says goodbye.
    pub close_all_tunnels: tokio::sync::watch::Sender<u64>,
    /// Set when the workers stop accepting: responses then say `Connection: close`.
    pub closing: std::sync::atomic::AtomicBool,
    /// Open client connections, the cap on them (see [`Shared::max_connections`]), and
    /// those refused over it.
    pub open_connections: std::sync::atomic::AtomicUsize,
    max_connections: std::sync::atomic::AtomicUsize,
    /// The cap as configured (0: derived), for a successor's command line.
    configured_max_connections: std::sync::atomic::AtomicUsize,
    pub over_capacity: std::sync::atomic::AtomicU64,
    /// Certificates and ACME challenges (`tls.rs`).
    pub tls: tls::TlsState,
}

impl Shared {
    /// The cap on open client connections now (an agent may change it; see
    /// [`Shared::set_max_connections`]).
    pub fn max_connections(&self) -> usize {
        self.max_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the cap (0: derived from the open-files limit); connections already open over
    /// a lowered cap are left to finish.
    pub fn set_max_connections(&self, configured: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.configured_max_connections.store(configured, Relaxed);
        self.max_connections
            .store(effective_max_connections(configured), Relaxed);
    }

    /// The cap as configured (0: derived).
    pub fn configured_max_connections(&self) -> usize {
        self.configured_max_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn effective_max_connections(configured: usize) -> usize {
    match configured {
        0 => auto_max_connections(),
        n => n,
    }
}

/// The connection cap when none is configured: half the open-files limit less a reserve
/// for logs, the control socket and the listeners.
fn auto_max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    (soft.saturating_sub(64) / 2).clamp(16, 1 << 20) as usize
}

/// Waits until a flag turns true (or its sender is gone), holding no borrow across
/// the wait so that the future stays `Send`.
pub(crate) async fn until_true(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// The table saved in a state file (empty when there is none yet).
pub fn load_state(path: &std::path::Path) -> Result<Vec<wire::Route>, ProxyError> {
    Ok(state::load(path)?.unwrap_or_default())
}

/// The number of cores, the default worker count.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Serves `listeners` (all bound to the proxy's address; worker `i` gets listener
/// `i % len`) and the control socket until `shutdown` resolves or an upgrade hands over,
/// then stops accepting and lets connections finish.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    control_listener: UnixListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let listen_err = |error| ProxyError::Listen { addr, error };
    if listeners.is_empty() {
        return Err(listen_err(std::io::Error::other("no listening socket")));
    }
    let access_log = config
        .access_log
        .as_ref()
        .map(access_log::AccessLog::open)
        .transpose()?;
    let mut prefix = [0u8; 4];
    let _ = getrandom::fill(&mut prefix);
    let shared = Arc::new(Shared {
        published: table::Published::default(),
        limits: config.limits.clone(),
        trusted_proxies: config.trusted_proxies.clone(),
        access_log,
        request_id_prefix: prefix.iter().map(|b| format!("{b:02x}")).collect(),
        shutdown_grace: if config.shutdown_grace.is_zero() {
            Duration::from_secs(30)
        } else {
            config.shutdown_grace
        },
        close_all_tunnels: tokio::sync::watch::Sender::new(0),
        closing: std::sync::atomic::AtomicBool::new(false),
        open_connections: std::sync::atomic::AtomicUsize::new(0),
        max_connections: std::sync::atomic::AtomicUsize::new(effective_max_connections(
            config.limits.max_connections,
        )),
        configured_max_connections: std::sync::atomic::AtomicUsize::new(
            config.limits.max_connections,
        ),
        over_capacity: std::sync::atomic::AtomicU64::new(0),
        tls: tls::TlsState::load(config.certs_file.clone())?,
    });
    let control_path = control_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()))
        .unwrap_or_default();
    let control_err = |error| ProxyError::Control {
        path: control_path.clone(),
        error,
    };
    let handoff = config.upgrade_args.clone().map(|args| Handoff {
        listen_fds: listeners.iter().map(|l| l.as_raw_fd()).collect(),
        tls_fd: config.tls_listener.as_ref().map(|l| l.as_raw_fd()),
        control_fd: control_listener.as_raw_fd(),
        args,
    });
    let control = Arc::new(control::Control::new(
        shared.clone(),
        config.state_file.clone(),
        handoff,
        listeners.iter().map(|l| l.as_raw_fd()).collect(),
        config.tls_listener.as_ref().map(|l| l.as_raw_fd()),
        config.routes,
    )?);
    if let Some(path) = &config.state_file {
        state::save(path, &control.routes())?;
    }

    let workers = if config.workers == 0 {
        default_workers()
    } else {
        config.workers
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut done = Vec::with_capacity(workers);
    for i in 0..workers {
        let listener = listeners[i % listeners.len()]
            .try_clone()
            .map_err(listen_err)?;
        done.push(
            worker::spawn(i, shared.clone(), listener, stop_rx.clone())
                .map_err(ProxyError::Runtime)?,
        );
    }
    if let Some(tls_listener) = &config.tls_listener {
        done.extend(tls::spawn_workers(
            workers,
            shared.clone(),
            tls_listener,
            stop_rx.clone(),
        )?);
    }
    control_listener
        .set_nonblocking(true)
        .map_err(control_err)?;
    let control_socket =
        tokio::net::UnixListener::from_std(control_listener.try_clone().map_err(control_err)?)
            .map_err(control_err)?;
    if let Some(ready) = config.ready {
        let mut pipe = std::fs::File::from(ready);
        let _ = std::io::Write::write_all(&mut pipe, b"1");
    }
    tracing::info!(%addr, workers, "proxy serving");

    let mut upgraded = control.stop.subscribe();
    let control_task = tokio::spawn(control::serve(
        control.clone(),
        control_socket,
        control.stop.subscribe(),
    ));
    tokio::select! {
        _ = shutdown => tracing::info!("proxy shutting down"),
        _ = crate::until_true(&mut upgraded) => tracing::info!("proxy handed over; draining"),
    }
    control.stop.send_replace(true);
    let _ = stop_tx.send(true);
    let _ = control_task.await;
    for d in done {
        let _ = d.await;
    }
    // The original sockets close here; a successor holds its own references.
    drop(listeners);
    drop(config.tls_listener);
    drop(control_listener);
    Ok(())
}
