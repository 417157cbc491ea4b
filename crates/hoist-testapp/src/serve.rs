//! The HTTP server's lifecycle: bind, accept, and the graceful stop on SIGTERM (stop
//! accepting, let in-flight requests and open WebSockets finish, exit 0). What each path
//! answers lives in `routes`; this file never looks at a request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::cli::ServeArgs;
use crate::faults::{self, Running};
use crate::{out, routes};

/// Held by every connection and WebSocket task; the server knows all of them have ended
/// when the last clone is dropped (the receiver then yields `None`).
pub type TaskToken = mpsc::Sender<()>;

/// What every request handler reads and counts. Counters are atomics because handlers
/// run on many tasks; relaxed ordering is enough for numbers that are only reported.
#[derive(Debug)]
pub struct State {
    pub started: Instant,
    pub fail_health: bool,
    pub health_pass_then_fail: Option<u64>,
    pub unhealthy_after: Option<Duration>,
    pub release: Option<String>,
    pub instance: Option<String>,
    pub service: Option<String>,
    pub app: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub running: Running,
    /// Requests served, except `/health` and `/stats` (observers must not move it).
    pub count: AtomicU64,
    pub health_checks: AtomicU64,
    /// `POST /echo` requests: the app's stand-in for writes with side effects.
    pub side_effects: AtomicU64,
    pub in_flight: AtomicU64,
    pub open_websockets: AtomicU64,
    /// `--fail-percent`, and the `GET /` requests it has judged.
    pub fail_percent: u64,
    pub index_seq: AtomicU64,
}

impl State {
    fn new(args: &ServeArgs, running: Running) -> anyhow::Result<State> {
        let env = |name: &str| std::env::var(name).ok();
        Ok(State {
            started: Instant::now(),
            fail_health: args.fail_health,
            health_pass_then_fail: args.health_pass_then_fail,
            unhealthy_after: args.unhealthy_after.map(faults::seconds).transpose()?,
            release: env("HOIST_RELEASE"),
            instance: env("HOIST_INSTANCE"),
            service: env("HOIST_SERVICE"),
            app: env("HOIST_APP"),
            data_dir: env("HOIST_DATA_DIR").map(PathBuf::from),
            running,
            count: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            side_effects: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            open_websockets: AtomicU64::new(0),
            fail_percent: args.fail_percent,
            index_seq: AtomicU64::new(0),
        })
    }
}

/// Serves until a shutdown signal, then drains and returns.
pub async fn run(
    args: ServeArgs,
    running: Running,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state = Arc::new(State::new(&args, running)?);
    if !faults::slow_start(&args.faults, &mut shutdown).await? {
        return Ok(());
    }
    let listener = TcpListener::bind((args.bind, args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on `{}`",
                SocketAddr::new(args.bind, args.port)
            )
        })?;
    let addr = listener.local_addr()?;
    out::stdout(&format!("listening on {addr}"));
    out::log(&format!("listening on {addr}"));

    let (token, mut all_done) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(connection(stream, state.clone(), token.clone(), shutdown.clone()));
                }
                Err(error) => {
                    // Out of descriptors or the like: back off briefly instead of spinning.
                    out::log(&format!("accept failed: {error}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = faults::stopped(&mut shutdown) => break,
        }
    }
    // Closing the listener makes new connections fail fast instead of queueing.
    drop(listener);
    let websockets = state.open_websockets.load(Ordering::Relaxed);
    out::log(&format!(
        "stopped accepting; waiting for {} in-flight requests and {websockets} websockets",
        state.in_flight.load(Ordering::Relaxed)
    ));
    drop(token);
    let _ = all_done.recv().await;
    Ok(())
}

async fn connection(
    stream: TcpStream,
    state: Arc<State>,
    token: TaskToken,
    mut shutdown: watch::Receiver<bool>,
) {
    let handler_token = token.clone();
    let service = service_fn(move |req| routes::handle(state.clone(), handler_token.clone(), req));
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = faults::stopped(&mut shutdown) => {
            // Finishes the request in progress, then closes; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(token);
}
