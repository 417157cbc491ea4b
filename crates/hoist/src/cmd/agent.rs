//! `hoist agent`: runs the host agent in the foreground until SIGINT or SIGTERM, reading
//! the host config (`/etc/hoist/agent.toml`, flags win); `agent connect` bridges stdio to
//! its socket; `agent keep` (started by `hoist setup` where systemd is absent) restarts the
//! agent whenever it dies. Instances and the proxy are not children of this process's
//! session, so stopping the agent (or Ctrl-C in its terminal) leaves them serving.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::common;
use crate::exit::{with_exit, Exit};

/// The host config read when `--config` is not given and the file exists.
const HOST_CONFIG: &str = "/etc/hoist/agent.toml";
/// The keeper's pid file, locked while it runs: one keeper per host.
const KEEPER_PID: &str = "/run/hoist/keeper.pid";

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Where the agent keeps its state, releases, logs and data
    /// [default: /var/lib/hoist as root, ~/.local/state/hoist otherwise; or HOIST_ROOT]
    #[arg(long)]
    root: Option<PathBuf>,
    /// The API socket [default: HOIST_SOCKET, or /run/hoist/agent.sock as root]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The proxy's HTTP listener, where web services answer (e.g. 127.0.0.1:8080)
    #[arg(long)]
    proxy: Option<SocketAddr>,
    /// The proxy's HTTPS listener, for services with `tls` (e.g. 0.0.0.0:443)
    #[arg(long, value_name = "ADDR")]
    https: Option<SocketAddr>,
    /// Serve the dashboard and the API here, behind the token in `<root>/dashboard.token`
    /// (`hoist dashboard` prints the login URL; e.g. 127.0.0.1:8421)
    #[arg(long, value_name = "ADDR")]
    dashboard: Option<SocketAddr>,
    /// Serve `/metrics` (Prometheus text) here; scrapes need the bearer token in
    /// `<root>/metrics.token`
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// The user apps run as when their service names none [default: hoist-apps when
    /// the agent runs as root and that user exists; `root` keeps them beside the agent]
    #[arg(long, value_name = "NAME")]
    apps_user: Option<String>,
    /// Most open client connections the proxy keeps (plain and HTTPS together); one more
    /// is answered 503 and closed [default: half the open-files limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// The host config (keys `root`, `socket`, `proxy`, `https`, `dashboard`, `metrics`,
    /// `apps_user`, `max_connections`, and a `[retention]` table; flags override it)
    /// [default: /etc/hoist/agent.toml when it exists]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `/etc/hoist/agent.toml`: the same settings as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HostConfig {
    root: Option<PathBuf>,
    socket: Option<PathBuf>,
    proxy: Option<SocketAddr>,
    https: Option<SocketAddr>,
    dashboard: Option<SocketAddr>,
    /// `[retention]`: `events_days`, `events_max`, `job_runs_days`, `job_runs_max`,
    /// `operations_days`, `operations_max`, `history_days`, `history_max` (each
    /// defaulted when absent).
    retention: Option<hoist_agent::Retention>,
    metrics: Option<SocketAddr>,
    /// As `--apps-user`.
    apps_user: Option<String>,
    /// The proxy's cap on open client connections (as `--max-connections`).
    max_connections: Option<u64>,
}

/// The keys of [`HostConfig`], from its serde derive (the docs list exactly these).
pub(crate) fn host_config_keys() -> &'static [&'static str] {
    super::docs::serde_fields::<HostConfig>()
}

/// `docs/reference/host-config.md`'s rows: key, type, default, example, meaning. A key
/// of [`HostConfig`] missing here fails `every_host_config_key_is_documented`.
pub(crate) const HOST_CONFIG_DOCS: &[(&str, &str, &str, &str, &str)] = &[
    ("root", "path", "`/var/lib/hoist` as root, `~/.local/state/hoist` otherwise", "root = \"/srv/hoist\"", "State, releases, logs and app data (`--root`)."),
    ("socket", "path", "`/run/hoist/agent.sock` as root", "socket = \"/run/hoist/agent.sock\"", "The API socket (`--socket`)."),
    ("proxy", "address", "`127.0.0.1:8080`", "proxy = \"0.0.0.0:80\"", "The proxy's HTTP listener (`--proxy`)."),
    ("https", "address", "none (no HTTPS)", "https = \"0.0.0.0:443\"", "The proxy's HTTPS listener (`--https`). DNS-01 and wildcard certificates are not supported yet."),
    ("dashboard", "address", "none", "dashboard = \"127.0.0.1:9000\"", "Serve the dashboard and the same JSON API as the socket, behind the token in `<root>/dashboard.token` (`--dashboard`; `hoist dashboard` prints the login URL). Nothing listens without it."),
    ("retention", "table", "see `[retention]`", "[retention]", "How long records are kept."),
    ("metrics", "address", "none", "metrics = \"127.0.0.1:9464\"", "Serve `/metrics` (Prometheus text; bearer token in `<root>/metrics.token`)."),
    ("max_connections", "integer", "half the open-files limit", "max_connections = 20000", "The proxy's cap on open client connections, plain and HTTPS together; one more is answered 503 and closed (`--max-connections`)."),
    ("apps_user", "user name", "`hoist-apps` when the agent runs as root and that user exists", "apps_user = \"www-data\"", "Who instances, jobs and hooks run as when their service names no `user` (`--apps-user`); `root` keeps them beside the agent."),
];

/// The host config: the named file (which must exist), else the default one when present.
fn host_config(path: Option<&Path>) -> anyhow::Result<HostConfig> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None if Path::new(HOST_CONFIG).exists() => PathBuf::from(HOST_CONFIG),
        None => return Ok(HostConfig::default()),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the host config `{}`", path.display()))?;
    let mut config: HostConfig = toml::from_str(&text).map_err(|e| {
        with_exit(
            Exit::Usage,
            anyhow::anyhow!("invalid host config `{}`: {}", path.display(), e.message()),
        )
    })?;
    // Relative paths are relative to the file, not to wherever the agent was started.
    let base = path.parent().unwrap_or(Path::new("/"));
    config.root = config.root.map(|p| base.join(p));
    config.socket = config.socket.map(|p| base.join(p));
    if config.max_connections == Some(0) {
        return Err(with_exit(
            Exit::Usage,
            anyhow::anyhow!(
                "invalid host config `{}`: `max_connections` must be at least 1 (leave it out for the default)",
                path.display()
            ),
        ));
    }
    Ok(config)
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Bridge standard input and output to the agent's socket (for `ssh HOST hoist agent connect`)
    Connect {
        /// The agent's socket [default: the host config's, else as for every command]
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The host config [default: /etc/hoist/agent.toml when it exists]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Stop the agent answering on the socket; instances and the proxy keep running, and
    /// the next agent re-adopts them (under systemd or `hoist setup`'s keeper, stop those
    /// instead: they start it again)
    Stop {
        /// The agent's socket [default: the host config's, else as for every command]
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The host config [default: /etc/hoist/agent.toml when it exists]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the agent and start it again whenever it exits (for hosts without systemd)
    #[command(hide = true)]
    Keep {
        /// The host config, passed to the agent
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Connect { socket, config }) => {
            let socket = match socket {
                Some(s) => s,
                None => host_config(config.as_deref())?
                    .socket
                    .unwrap_or_else(common::default_socket),
            };
            return hoist_agent::connect(&socket)
                .with_context(|| format!("cannot reach the agent on `{}`", socket.display()));
        }
        Some(Action::Stop { socket, config }) => {
            let socket = match socket {
                Some(s) => s,
                None => host_config(config.as_deref())?
                    .socket
                    .unwrap_or_else(common::default_socket),
            };
            return stop(&socket);
        }
        Some(Action::Keep { config }) => {
            init_logging();
            return keep(config);
        }
        None => {}
    }
    let file = host_config(args.config.as_deref())?;
    if args.https.or(file.https).is_some() && args.proxy.or(file.proxy).is_none() {
        // The HTTPS listener belongs to the proxy, which only runs with `--proxy`.
        return Err(with_exit(
            Exit::Usage,
            anyhow::anyhow!("`--https` (or `https` in the host config) needs `--proxy`"),
        ));
    }
    init_logging();
    let config = hoist_agent::AgentConfig {
        root: args.root.or(file.root).unwrap_or_else(common::default_root),
        socket: args
            .socket
            .or(file.socket)
            .unwrap_or_else(common::default_socket),
        proxy: args.proxy.or(file.proxy),
        https: args.https.or(file.https),
        dashboard: args.dashboard.or(file.dashboard),
        retention: file.retention.unwrap_or_default(),
        metrics: args.metrics.or(file.metrics),
        apps_user: args.apps_user.or(file.apps_user),
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    hoist_agent::tune_allocator();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Idle blocking threads go after 2 s, not 10: each state call hands a worker to a
        // pool thread (block_in_place), and the pool wakes its idle threads in turn, so with
        // a 10 s keep-alive the threads of a burst (20 instances started at once) all stay,
        // each with its stack, for as long as the agent runs.
        .thread_keep_alive(Duration::from_secs(2))
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    runtime.block_on(async {
        hoist_agent::run(config, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })
}

/// `hoist agent stop`: asks the agent to exit and waits until its socket is gone.
fn stop(socket: &Path) -> anyhow::Result<()> {
    let client = hoist_agent::client::Client::new(socket);
    let hello: hoist_protocol::agent::Hello =
        common::block_on(client.call::<(), _>(hyper::Method::POST, "/v1/agent/stop", None))
            .map_err(common::agent_error)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_ok() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the agent (pid {}) did not stop within 30 s", hello.pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::output::status(
        "Stopped",
        &format!(
            "the agent (pid {}, root {}); instances and the proxy keep running",
            hello.pid, hello.root
        ),
    );
    Ok(())
}

/// The keeper: runs `hoist agent` as a child and starts it again when it exits (after
/// 1 s, doubling to 30 s while it keeps failing fast). SIGTERM or SIGINT stops the agent
/// and then the keeper. Its pid file is locked, so a second keeper exits at once.
fn keep(config: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    // The path is taken now: after an upgrade replaces the file, `current_exe` names the
    // deleted inode, while the path holds the new binary.
    let exe = std::env::current_exe().context("cannot find the hoist binary")?;
    let pid_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(KEEPER_PID)
        .with_context(|| format!("cannot open `{KEEPER_PID}`"))?;
    let mut pid_file =
        nix::fcntl::Flock::lock(pid_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| anyhow::anyhow!("another keeper holds `{KEEPER_PID}`"))?;
    pid_file.set_len(0)?;
    writeln!(pid_file, "{}", std::process::id())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the keeper's runtime")?;
    let result = runtime.block_on(keep_loop(exe, config));
    let _ = std::fs::remove_file(KEEPER_PID);
    drop(pid_file);
    result
}

async fn keep_loop(exe: PathBuf, config: Option<PathBuf>) -> anyhow::Result<()> {
    hoist_fleet::keeper::Keeper::agent(exe, config)
        .run(shutdown_signal())
        .await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The agent's own logs: human-readable on a terminal, JSON lines otherwise (design:
/// structured logs for machines). `RUST_LOG` filters, `info` by default.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_config_is_read_strictly_and_relative_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, hoist_fleet::setup::DEFAULT_AGENT_TOML).unwrap();
        let config = host_config(Some(&file)).unwrap();
        assert_eq!(
            config.https,
            Some("0.0.0.0:443".parse().unwrap()),
            "what setup writes"
        );
        std::fs::write(&file, "proxy = \"0.0.0.0:80\"\nroot = \"state\"\n").unwrap();
        let config = host_config(Some(&file)).unwrap();
        assert_eq!(config.proxy, Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(config.root, Some(dir.path().join("state")));
        assert_eq!(config.socket, None);

        std::fs::write(&file, "proxy = \"0.0.0.0:80\"\nproxi = 1\n").unwrap();
        let err = format!("{:#}", host_config(Some(&file)).unwrap_err());
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("proxi"), "{err}");

        let missing = dir.path().join("nope.toml");
        assert!(host_config(Some(&missing)).is_err());
    }

    #[test]
    fn the_host_config_names_the_metrics_address() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "metrics = \"127.0.0.1:9464\"\n").unwrap();
        let config = host_config(Some(&file)).unwrap();
        assert_eq!(config.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        std::fs::write(&file, "metrics = \"not an address\"\n").unwrap();
        assert!(host_config(Some(&file)).is_err());
    }

    #[test]
    fn the_host_config_sets_the_proxy_connection_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "max_connections = 500\n").unwrap();
        assert_eq!(host_config(Some(&file)).unwrap().max_connections, Some(500));
        std::fs::write(&file, "max_connections = 0\n").unwrap();
        let err = format!("{:#}", host_config(Some(&file)).unwrap_err());
        assert!(err.contains("max_connections"), "{err}");
        std::fs::write(&file, "max_connections = -3\n").unwrap();
        assert!(host_config(Some(&file)).is_err());
    }
}
