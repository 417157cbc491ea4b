//! The `hoist proxy` process: binds one listening socket, shared by the workers (or
//! inherits it from the process it replaces, or from the agent that kept it open across a
//! crash), raises its open-files limit, binds the control socket created 0600, picks
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
        guards: Default::default(),
        tls: None,
        canary: None,
    }
}

/// Binds the one listening socket of `addr`, without SO_REUSEPORT: every worker
/// accepts on a duplicate of it, and no other process (of any uid) can bind the port and
/// take a share of its connections while it is open. A port in use is an error naming
/// the address.
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let err = |error| ProxyError::Listen { addr, error };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // SO_REUSEADDR only lets the port be bound again while old connections sit in
    // TIME_WAIT; Linux refuses a second bind beside a listening socket with it.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(4096).map_err(err)?.into_std().map_err(err)
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
    // The socket is created 0600 (umask for the bind), never chmod-ed after: there is no
    // moment when another user could connect. (The umask is process-wide; the proxy binds
    // this before it starts any thread that creates files.)
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(err)?;
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(std::io::Error::other(format!(
            "the socket was created with mode {mode:o}"
        ))));
    }
    Ok(listener)
}

/// Raises the soft limit of open files to the hard limit: every client connection and
/// every upstream connection is a file, and a service manager or shell may start the
/// proxy with a soft limit as low as 256. Failure is logged, never fatal.
pub fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open-files limit"),
    }
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
    raise_nofile_limit();
    // An upgrade hands over everything; an agent restarting a crashed proxy hands over
    // only the listening sockets it kept open (so no connection was refused meanwhile).
    let (listeners, tls_listener, control, ready, routes) = match inherited {
        Some(Inherited {
            listeners,
            tls_listener,
            control: Some(control),
            ready,
            routes: Some(routes),
        }) => (listeners, tls_listener, control, ready, routes),
        other => {
            // The agent bound them with std's short queue; connections wait in it while a
            // crashed proxy is restarted, so make it as long as ours.
            let lengthen = |l: &TcpListener| {
                let _ = nix::sys::socket::listen(
                    l,
                    nix::sys::socket::Backlog::new(4096)
                        .unwrap_or(nix::sys::socket::Backlog::MAXCONN),
                );
            };
            let (listeners, tls_listener) = match other {
                Some(i) if !i.listeners.is_empty() => {
                    i.listeners.iter().for_each(lengthen);
                    i.tls_listener.iter().for_each(lengthen);
                    (i.listeners, i.tls_listener)
                }
                _ => (vec![bind_listener(opts.listen)?], None),
            };
            // An HTTPS listener the agent did not pass (none was asked for before) is
            // bound here like at any start.
            let tls_listener = match tls_listener {
                Some(l) => Some(l),
                None => opts.https.map(crate::tls::bind).transpose()?,
            };
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
        workers,
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
