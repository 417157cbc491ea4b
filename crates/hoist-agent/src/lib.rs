//! The control plane of one host (`hoist agent`): the only writer of the host's state.
//! It composes `hoist-state` (SQLite), `hoist-artifact` (the release store),
//! `hoist-supervisor` (instances under shims) and the proxy (configured over its control
//! socket), serves the API on a Unix socket, and reconciles what should run with what
//! is observed.
//!
//! It must not print (the binary does) and must not assume it is the parent of what runs:
//! instances and the proxy outlive it and are re-adopted by identity.

pub mod client;
mod http;
pub mod paths;
pub mod secrets;
mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use paths::Paths;

/// How the agent was asked to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub root: PathBuf,
    pub socket: PathBuf,
    /// The proxy's HTTP listener.
    pub proxy: Option<SocketAddr>,
    pub dashboard: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the agent root `{path}`")]
    Root { path: PathBuf, source: std::io::Error },
    #[error("another agent is already running with root `{path}`")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot listen on `{path}`")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    State(#[from] hoist_state::StateError),
}

/// The live agent: shared by every request handler and background task.
pub struct Agent {
    pub paths: Paths,
    pub(crate) config: AgentConfig,
    pub(crate) boot: String,
    pub(crate) state: Mutex<hoist_state::State>,
    pub(crate) secrets: secrets::Secrets,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Agent {
    /// Opens the root (creating it), takes the one-agent-per-root lock and the state.
    pub fn open(config: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        let paths = Paths::new(&config.root);
        paths.create().map_err(|source| AgentError::Root { path: config.root.clone(), source })?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.lock_file())
            .map_err(|source| AgentError::Root { path: paths.lock_file(), source })?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| AgentError::AlreadyRunning { path: config.root.clone() })?;
        let state = hoist_state::State::open(&paths.state_db())?;
        let boot = new_boot_id();
        tracing::info!(root = %config.root.display(), boot = %boot, "agent starting");
        Ok(Arc::new(Agent {
            secrets: secrets::Secrets::new(&paths.secrets_dir()),
            paths,
            config,
            boot,
            state: Mutex::new(state),
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

    /// Locks the state database for one short operation.
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, hoist_state::State> {
        // A panic while holding the lock leaves SQLite consistent (every write is a
        // transaction), so a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let agent = Agent::open(config)?;
    let listener = http::bind_socket(&agent.config.socket)
        .map_err(|source| AgentError::Socket { path: agent.config.socket.clone(), source })?;
    tracing::info!(socket = %agent.config.socket.display(), "agent listening");
    let _ = agent.state().add_event(None, "agent.started", None, &format!("agent started (boot {})", agent.boot));
    tokio::select! {
        () = server::serve(agent.clone(), listener) => {}
        () = shutdown => tracing::info!("agent stopping; instances keep running"),
    }
    let _ = std::fs::remove_file(&agent.config.socket);
    Ok(())
}

/// `hoist agent connect`: bridges standard input and output to the agent's socket, so
/// that the API runs over any byte pipe (`ssh HOST hoist agent connect`). Blocking
/// copies on two threads: a bridge has nothing else to do.
pub fn connect(socket: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut up = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        // The request is complete; the answer may still be streaming.
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    let mut stdout = std::io::stdout().lock();
    std::io::copy(&mut down, &mut stdout)?;
    stdout.flush()
}

fn new_boot_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
