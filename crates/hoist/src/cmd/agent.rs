//! `hoist agent`: runs the host agent in the foreground until SIGINT or SIGTERM.
//! Instances and the proxy are not children of this process's session, so stopping the
//! agent (or Ctrl-C in its terminal) leaves them serving.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::common;

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
    /// The dashboard's HTTP listener
    #[arg(long)]
    dashboard: Option<SocketAddr>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Bridge standard input and output to the agent's socket (for `ssh HOST hoist agent connect`)
    Connect {
        /// The agent's socket [default: as for every command]
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Action::Connect { socket }) = args.action {
        let socket = socket.unwrap_or_else(common::default_socket);
        return hoist_agent::connect(&socket)
            .with_context(|| format!("cannot reach the agent on `{}`", socket.display()));
    }
    init_logging();
    let config = hoist_agent::AgentConfig {
        root: args.root.unwrap_or_else(common::default_root),
        socket: args.socket.unwrap_or_else(common::default_socket),
        proxy: args.proxy,
        dashboard: args.dashboard,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the agent's runtime")?;
    runtime.block_on(async {
        hoist_agent::run(config, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })
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
