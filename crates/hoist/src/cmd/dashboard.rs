//! `hoist dashboard [--host NAME] [--json] [--rotate]`: the URL that logs a browser into
//! a host's dashboard (opened when stdout is a terminal). This machine's agent is reached
//! directly; a fleet host through an ssh local forward to its dashboard's port that stays
//! up while this command runs (Ctrl-C ends it).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hoist_protocol::agent::DashboardInfo;
use hyper::Method;

use super::common::{self, HostArgs};
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, Exit};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// The host whose dashboard to open (one; default: this machine, or the app file's
    /// only host)
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Print `{"url": "..."}` (the URL holds the token: keep it private)
    #[arg(long)]
    pub json: bool,
    /// Make a new token first: every earlier login URL and session stops working
    #[arg(long)]
    pub rotate: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    let [target] = targets.as_slice() else {
        let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        return Err(common::usage(
            anyhow::anyhow!(
                "which host's dashboard? the app file has {}",
                names.join(", ")
            ),
            "pick one with --host NAME",
        ));
    };
    let client = target.client.clone();
    let info: DashboardInfo = common::block_on(async move {
        if args.rotate {
            client
                .call::<(), _>(Method::POST, "/v1/dashboard/rotate", None)
                .await
        } else {
            client.get("/v1/dashboard").await
        }
    })
    .map_err(common::agent_error)?;
    if args.rotate && !args.json {
        output::status("Rotated", "the dashboard token; earlier sessions are ended");
    }
    let Some(addr) = info.addr.as_deref() else {
        if args.rotate {
            return Ok(());
        }
        return Err(with_exit(
            Exit::Failed,
            anyhow::anyhow!(
                "the agent on `{}` serves no dashboard: start it with `--dashboard ADDR` (or `dashboard = \"ADDR\"` in /etc/hoist/agent.toml)",
                target.name
            ),
        ));
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("the agent named a bad dashboard address `{addr}`: {e}"))?;
    // A wildcard listener is reached on the loopback address of its host.
    let reach = if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    };
    let url = |at: SocketAddr| format!("http://{at}/login?token={}", info.token);
    let Some(remote) = target.remote.clone() else {
        show(&url(reach), args.json)?;
        return Ok(());
    };
    // A fleet host: forward a free local port to the dashboard, for as long as we run.
    let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| anyhow::anyhow!("no free local port for the forward: {e}"))?;
    common::block_on(async move {
        let mut child = remote
            .forward_command(local.port(), &reach.to_string())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run ssh: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = e.read_to_string(&mut err).await;
                }
                return Err(anyhow::anyhow!(
                    "the ssh forward to `{}` ended ({status}): {}",
                    target.name,
                    remote.classify(&err)
                ));
            }
            if TcpStream::connect_timeout(&local, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!(
                    "the ssh forward to `{}` did not open within 30 s",
                    target.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        show(&url(local), args.json)?;
        if !args.json {
            output::status(
                "Forwarding",
                &format!(
                    "{local} to {} on {} while this runs (Ctrl-C ends it)",
                    reach, target.name
                ),
            );
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            status = child.wait() => {
                return Err(anyhow::anyhow!("the ssh forward to `{}` ended ({})", target.name,
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())));
            }
        }
        let _ = child.kill().await;
        Ok(())
    })
}

/// Prints the URL (and opens it in a browser on a terminal).
fn show(url: &str, json: bool) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if json {
        output::json(&serde_json::json!({ "url": url }))?;
        return Ok(());
    }
    output::data(url)?;
    if std::io::stdout().is_terminal() {
        // Best effort: a host without a desktop has no opener, and the URL is printed.
        let _ = std::process::Command::new("xdg-open")
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    Ok(())
}
