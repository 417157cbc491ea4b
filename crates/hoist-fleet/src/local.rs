//! This machine's agent as a host: for the quickstart, a deploy with no agent answering
//! starts one in the background (its own session, so it outlives the command and its
//! terminal) and waits until it answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hoist_client::{Client, ClientError};
use hoist_protocol::agent::Hello;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot start a local agent: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the local agent did not start (see `{}`)", log.display())]
    NoAnswer { log: PathBuf },
    /// An agent is there but does not work (frozen, another user's): never start a second.
    #[error(transparent)]
    Client(ClientError),
}

/// Where a started agent lives and listens.
#[derive(Debug, Clone)]
pub struct LocalAgent {
    /// The `hoist` executable to run as `hoist agent`.
    pub exe: PathBuf,
    pub root: PathBuf,
    pub socket: PathBuf,
    /// The proxy's listener (`127.0.0.1:8080`, or a free port when it is taken).
    pub proxy: SocketAddr,
    /// Its log file (appended).
    pub log: PathBuf,
}

/// The proxy address for a new local agent: 127.0.0.1:8080 when free, else any free port.
pub fn default_proxy() -> std::io::Result<SocketAddr> {
    match std::net::TcpListener::bind("127.0.0.1:8080") {
        Ok(l) => l.local_addr(),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr(),
    }
}

/// `Ok(true)` when an agent answers on `client`, `Ok(false)` when none is there (no
/// socket, or nothing listening on it), else the error (it answers wrongly or not at all).
pub async fn answers(client: &Client) -> Result<bool, ClientError> {
    match client.get::<Hello>("/v1/hello").await {
        Ok(_) => Ok(true),
        Err(ClientError::NotRunning { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Starts `agent` in the background and waits (up to 10 s) until it answers.
pub async fn start(agent: &LocalAgent) -> Result<Client, LocalError> {
    std::fs::create_dir_all(&agent.root).map_err(LocalError::Spawn)?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&agent.log)
        .map_err(LocalError::Spawn)?;
    let mut cmd = std::process::Command::new(&agent.exe);
    cmd.arg("agent")
        .arg("--root")
        .arg(&agent.root)
        .arg("--socket")
        .arg(&agent.socket)
        .arg("--proxy")
        .arg(agent.proxy.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().map_err(LocalError::Spawn)?)
        .stderr(logf);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().map_err(LocalError::Spawn)?;
    let client = Client::new(&agent.socket);
    for _ in 0..200 {
        if client.get::<Hello>("/v1/hello").await.is_ok() {
            return Ok(client);
        }
        // It exited (a taken socket, a bad root): no point waiting.
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LocalError::NoAnswer {
        log: agent.log.clone(),
    })
}

/// The agent on `socket` when one answers; else, when `may_start`, a new one started as
/// `agent` describes; else the client's error.
pub async fn ensure(
    socket: &Path,
    may_start: bool,
    agent: impl FnOnce() -> std::io::Result<LocalAgent>,
) -> Result<(Client, Option<LocalAgent>), LocalError> {
    let client = Client::new(socket);
    match answers(&client).await {
        Ok(true) => Ok((client, None)),
        Ok(false) if may_start => {
            let agent = agent().map_err(LocalError::Spawn)?;
            let client = start(&agent).await?;
            Ok((client, Some(agent)))
        }
        Ok(false) => Err(LocalError::Client(
            client
                .get::<Hello>("/v1/hello")
                .await
                .err()
                .unwrap_or_else(|| ClientError::Protocol("the agent went away".into())),
        )),
        Err(e) => Err(LocalError::Client(e)),
    }
}
