//! The `hoist proxy` process: binds one SO_REUSEPORT listener per worker (or inherits
//! them from the process it replaces), binds the control socket with mode 0600, picks
//! the starting table (hand-over, then the state file, then `--upstream`), and serves
//! until SIGTERM or SIGINT. It must not print; the binary reports its errors.
//!
//! Operational semantics: SIGTERM/SIGINT stop accepting; for one second more, requests
//! on open keep-alive connections are served with `Connection: close` (clients reconnect
//! without a failed request), then idle connections are closed, busy ones finish (up to
//! 30 s), WebSocket tunnels get a close 1001, and the process exits 0. `Upgrade` (see
//! `upgrade.rs`) hands every socket to a successor first, so the same stop sequence then
//! refuses nothing. SIGHUP is not handled: the agent starts the proxy in its own
//! session, so no terminal hang-up reaches it.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use hoist_protocol::proxy as wire;

use crate::{AccessLogTarget, Config, Inherited, Limits, ProxyError};

/// The id of the route `--upstream` makes.
pub const STATIC_ROUTE: &str = "static";

/// What `hoist proxy` was asked to do.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub listen: SocketAddr,
    /// The HTTPS listener's address (certificates come over the control socket and
    /// are kept in `certs.json` beside the state file).
    pub https: Option<SocketAddr>,
    pub control: PathBuf,
    pub state: Option<PathBuf>,
    pub access_log: Option<AccessLogTarget>,
    pub workers: Option<usize>,
    pub upstream: Option<SocketAddr>,
    pub trusted_proxies: Vec<IpAddr>,
    pub limits: Limits,
}

/// The route `--upstream ADDR` stands for: every host, every path.
pub fn static_route(upstream: SocketAddr) -> wire::Route {
    wire::Route {
        id: STATIC_ROUTE.into(),
        app: STATIC_ROUTE.into(),
        service: "web".into(),
        domains: vec!["*".into()],
        path_prefix: "/".into(),
        release: STATIC_ROUTE.into(),
        upstreams: vec![wire::Upstream {
            addr: upstream,
            instance: format!("{STATIC_ROUTE}-1"),
        }],
        drain_timeout_ms: 30_000,
        tls: None,
    }
}

/// Binds `count` listening sockets on `addr` with SO_REUSEPORT, so each worker gets its
/// own accept queue (the kernel spreads connections across them). Must be called inside
/// a tokio runtime (the sockets are made with tokio and handed back as std listeners).
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, ProxyError> {
    let mut out: Vec<TcpListener> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let err = |error| ProxyError::Listen { addr, error };
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.set_reuseport(true).map_err(err)?;
        socket.bind(addr).map_err(err)?;
        let listener = socket.listen(4096).map_err(err)?.into_std().map_err(err)?;
        // Port 0: the siblings must share the port the first one got.
        addr = listener.local_addr().map_err(err)?;
        out.push(listener);
    }
    Ok(out)
}

/// Binds the control socket at `path` (replacing a stale one), readable by its owner only.
pub fn bind_control(path: &Path) -> Result<UnixListener, ProxyError> {
    let err = |error| ProxyError::Control {
        path: path.to_path_buf(),
        error,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Runs the proxy process until SIGTERM/SIGINT or until it has handed over to a
/// successor. `args` are this process's arguments (without the program name), given to
/// a successor on upgrade.
pub fn run_process(opts: ProcessOptions, args: Vec<OsString>) -> Result<(), ProxyError> {
    let inherited = Inherited::from_env()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    let _context = runtime.enter();
    let workers = opts
        .workers
        .filter(|n| *n > 0)
        .unwrap_or_else(crate::default_workers);
    let (listeners, tls_listener, control, ready, routes) = match inherited {
        Some(i) => (
            i.listeners,
            i.tls_listener,
            i.control,
            Some(i.ready),
            i.routes,
        ),
        None => {
            let listeners = bind_reuseport(opts.listen, workers)?;
            let tls_listener = opts.https.map(crate::tls::bind).transpose()?;
            let control = bind_control(&opts.control)?;
            let mut routes = match &opts.state {
                Some(path) => crate::state::load(path)?.unwrap_or_default(),
                None => Vec::new(),
            };
            if let Some(up) = opts.upstream {
                if !routes.iter().any(|r| r.id == STATIC_ROUTE) {
                    routes.push(static_route(up));
                }
            }
            (listeners, tls_listener, control, None, routes)
        }
    };
    let config = Config {
        workers: listeners.len().max(1),
        limits: opts.limits,
        trusted_proxies: opts.trusted_proxies,
        access_log: opts.access_log,
        certs_file: opts
            .state
            .as_ref()
            .map(|s| s.with_file_name(crate::tls::CERTS_FILE)),
        tls_listener,
        state_file: opts.state,
        routes,
        upgrade_args: Some(args),
        ready,
        shutdown_grace: std::time::Duration::ZERO,
    };
    runtime.block_on(async move {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        crate::run(config, listeners, control, shutdown).await
    })
}
