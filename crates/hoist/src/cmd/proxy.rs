//! `hoist proxy`: runs the reverse proxy in the foreground (the agent starts it detached
//! and configures it over `--control`), and the small clients of its control socket:
//! `switch` (replace the `--upstream` route's set), `upgrade` (hand the sockets to a
//! fresh process), `routes` and `stats` (JSON on stdout). All the work is in
//! `hoist_proxy`; this file only maps arguments and prints.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hoist_protocol::proxy::{Reply, Request, Upstream};
use hoist_proxy::process::{ProcessOptions, STATIC_ROUTE};
use hoist_proxy::{AccessLogTarget, Client, Limits};

use crate::exit::{with_exit, Exit, Reported};
use crate::output;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// The HTTP listener (e.g. 127.0.0.1:8080)
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The HTTPS listener (e.g. 0.0.0.0:443); certificates are set over the control
    /// socket and kept in `certs.json` beside `--state`
    #[arg(long, value_name = "ADDR")]
    https: Option<SocketAddr>,
    /// The control socket (created with mode 0600)
    #[arg(long)]
    control: Option<PathBuf>,
    /// Keep the route table in this file and start from it
    #[arg(long)]
    state: Option<PathBuf>,
    /// Write a JSON line per request to this file (`-` for stdout)
    #[arg(long, value_name = "FILE")]
    access_log: Option<String>,
    /// Worker threads, sharing the one listening socket [default: one per core]
    #[arg(long)]
    workers: Option<usize>,
    /// Send every request to ADDR (a static `*` route named `static`)
    #[arg(long, value_name = "ADDR")]
    upstream: Option<SocketAddr>,
    /// A peer whose X-Forwarded-* headers are believed (repeatable)
    #[arg(long = "trust-proxy", value_name = "IP")]
    trusted: Vec<IpAddr>,
    /// Close a connection whose request head is not complete within this many seconds
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    header_timeout: f64,
    /// Most open client connections; more are answered 503 and closed [default: half the
    /// open-files limit]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Do not count responses per method and exact status code (`hoist_http_requests_total`
    /// then has no series from this proxy); to measure what those counters cost. Status
    /// classes and latency are still counted
    #[arg(long)]
    no_code_counters: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Replace the upstream of the `--upstream` route of a running proxy
    Switch {
        #[arg(long)]
        control: PathBuf,
        #[arg(long, value_name = "ADDR")]
        upstream: SocketAddr,
    },
    /// Hand the listening sockets to a fresh proxy process, then drain and exit
    Upgrade {
        #[arg(long)]
        control: PathBuf,
        /// The binary to start [default: the running proxy's own]
        #[arg(long)]
        exe: Option<PathBuf>,
    },
    /// Print the route table as JSON
    Routes {
        #[arg(long)]
        control: PathBuf,
    },
    /// Print the counters per route and release as JSON
    Stats {
        #[arg(long)]
        control: PathBuf,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Switch { control, upstream }) => switch(&control, upstream),
        Some(Action::Upgrade { control, exe }) => {
            let reply = call(&control, Request::Upgrade { exe })?;
            if let Reply::Upgraded { pid } = reply {
                output::status("Upgraded", &format!("the proxy now runs as pid `{pid}`"));
            }
            Ok(())
        }
        Some(Action::Routes { control }) => {
            let reply = call(&control, Request::Routes)?;
            output::json(&reply)?;
            Ok(())
        }
        Some(Action::Stats { control }) => {
            let reply = call(&control, Request::Stats)?;
            output::json(&reply)?;
            Ok(())
        }
        None => serve(args),
    }
}

fn serve(args: Args) -> anyhow::Result<()> {
    let usage = |what: &str| {
        output::error(&format!("`hoist proxy` needs `{what}`"));
        output::hint("e.g. `hoist proxy --listen 127.0.0.1:8080 --control /run/hoist/proxy.sock`");
        anyhow::Error::from(Reported(Exit::Usage))
    };
    let listen = args.listen.ok_or_else(|| usage("--listen"))?;
    let control = args.control.ok_or_else(|| usage("--control"))?;
    if !(args.header_timeout.is_finite() && args.header_timeout > 0.0) {
        return Err(with_exit(
            Exit::Usage,
            anyhow::anyhow!("`--header-timeout` must be a positive number of seconds"),
        ));
    }
    init_logging();
    let access_log = args.access_log.map(|a| match a.as_str() {
        "-" => AccessLogTarget::Stdout,
        path => AccessLogTarget::File(PathBuf::from(path)),
    });
    let limits = Limits {
        header_read_timeout: Duration::from_secs_f64(args.header_timeout),
        max_connections: args.max_connections.unwrap_or(0),
        ..Limits::default()
    };
    let opts = ProcessOptions {
        listen,
        https: args.https,
        control,
        state: args.state,
        access_log,
        workers: args.workers,
        upstream: args.upstream,
        trusted_proxies: args.trusted,
        limits,
    };
    hoist_proxy::count_codes(!args.no_code_counters);
    let own_args: Vec<_> = std::env::args_os().skip(1).collect();
    hoist_proxy::process::run_process(opts, own_args).context("the proxy stopped")
}

fn call(control: &std::path::Path, request: Request) -> anyhow::Result<Reply> {
    let mut client = Client::connect(control).map_err(|e| {
        output::error(&e.to_string());
        output::hint("is `hoist proxy` running with this `--control` socket?");
        anyhow::Error::from(Reported(Exit::Failed))
    })?;
    Ok(client.call(request)?)
}

/// Replaces the static route's set with `upstream`; the old member drains.
fn switch(control: &std::path::Path, upstream: SocketAddr) -> anyhow::Result<()> {
    let Reply::Routes { routes } = call(control, Request::Routes)? else {
        anyhow::bail!("the proxy answered `routes` with something else");
    };
    let Some(mut route) = routes.into_iter().find(|r| r.id == STATIC_ROUTE) else {
        output::error(&format!("the proxy has no `{STATIC_ROUTE}` route"));
        output::hint("`switch` works on a proxy started with `--upstream`");
        return Err(Reported(Exit::Failed).into());
    };
    route.upstreams = vec![Upstream {
        addr: upstream,
        instance: format!("{STATIC_ROUTE}-{upstream}"),
    }];
    call(control, Request::SetRoute { route })?;
    Ok(())
}

/// The proxy's own logs on stderr: `RUST_LOG` filters, `info` by default (lifecycle
/// only: start, drains, upgrades; nothing per request, the access log is separate).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
