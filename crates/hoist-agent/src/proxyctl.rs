//! The agent's side of the proxy: starting `hoist proxy` detached (its own session, so it
//! outlives the agent), finding one that survived an agent restart, and sending it
//! control requests over its socket (one JSON line each way).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hoist_protocol::proxy::{Reply, Request, RequestLine, Response, ResponseLine};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the proxy does not answer on `{socket}`")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy's answer could not be read: {0}")]
    Protocol(String),
    #[error("the proxy refused: {0}")]
    Refused(String),
    #[error("cannot start the proxy `{exe}`")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy did not start listening on {listen} within {waited:?}; see `{log}`")]
    NotReady {
        listen: SocketAddr,
        waited: Duration,
        log: PathBuf,
    },
}

/// How to reach (and, if needed, start) this host's proxy.
#[derive(Debug, Clone)]
pub struct ProxyCtl {
    pub exe: PathBuf,
    pub listen: SocketAddr,
    pub https: Option<SocketAddr>,
    pub dir: PathBuf,
}

impl ProxyCtl {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("routes.json")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("proxy.log")
    }

    /// Sends one request and reads its answer.
    pub async fn request(&self, request: Request) -> Result<Reply, ProxyError> {
        send(&self.socket(), request).await
    }

    /// Pings the proxy; starts one if none answers. A proxy that survived the agent's
    /// death answers here and keeps serving, untouched.
    pub async fn ensure_running(&self) -> Result<(), ProxyError> {
        if matches!(self.request(Request::Ping).await, Ok(Reply::Pong { .. })) {
            return Ok(());
        }
        self.spawn()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if matches!(self.request(Request::Ping).await, Ok(Reply::Pong { .. })) {
                tracing::info!(listen = %self.listen, "proxy started");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ProxyError::NotReady {
            listen: self.listen,
            waited: Duration::from_secs(10),
            log: self.log_file(),
        })
    }

    fn spawn(&self) -> Result<(), ProxyError> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .map_err(|source| ProxyError::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| ProxyError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("proxy")
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--control")
            .arg(self.socket())
            .arg("--state")
            .arg(self.state_file())
            .arg("--access-log")
            .arg(self.dir.join("access.log"))
            .args(
                self.https
                    .iter()
                    .flat_map(|a| ["--https".to_string(), a.to_string()]),
            )
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent; the
        // proxy gets its own session so signals to the agent's terminal never reach it.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|source| ProxyError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        // Reap it whenever it ends; it outlives the agent if the agent dies first.
        std::thread::Builder::new()
            .name("reap-proxy".into())
            .stack_size(32 * 1024)
            .spawn(move || {
                let _ = child.wait();
            })
            .map_err(|source| ProxyError::Spawn {
                exe: self.exe.clone(),
                source,
            })?;
        Ok(())
    }
}

async fn send(socket: &Path, request: Request) -> Result<Reply, ProxyError> {
    let io = |source| ProxyError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(io)?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(&RequestLine::new(request))
        .map_err(|e| ProxyError::Protocol(e.to_string()))?;
    line.push(b'\n');
    wr.write_all(&line).await.map_err(io)?;
    let mut answer = String::new();
    // WaitDrained may take as long as a drain timeout; the caller bounds it.
    BufReader::new(rd)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    let resp: ResponseLine =
        serde_json::from_str(answer.trim()).map_err(|e| ProxyError::Protocol(e.to_string()))?;
    match resp.response {
        Response::Ok(reply) => Ok(reply),
        Response::Error { message } => Err(ProxyError::Refused(message)),
    }
}
