//! The agent's side of the proxy: starting `hoist proxy` detached (its own session, so it
//! outlives the agent), finding one that survived an agent restart, and sending it
//! control requests over its socket (one JSON line each way).
//!
//! The agent holds a duplicate of the proxy's listening sockets (HTTP, and HTTPS with
//! `--https`): it binds them before the first proxy starts (a port in use is then the
//! agent's own clear error) or asks a running proxy for them (`Listeners`, passed with
//! SCM_RIGHTS). A proxy that crashes is restarted on those same sockets, so connections
//! that arrive meanwhile wait in their queues instead of being refused.

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
    #[error("cannot listen on `{listen}` for the proxy: {source} (is another agent or server using this address?)")]
    Listen {
        listen: SocketAddr,
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
    /// `--max-connections` for the proxy (`None`: its default).
    pub max_connections: Option<usize>,
    pub dir: PathBuf,
    /// The proxy's listening sockets, kept open across proxy crashes (close-on-exec: no
    /// instance or shim inherits them).
    pub listener: std::sync::Arc<std::sync::Mutex<Option<Held>>>,
}

/// The listening sockets the agent keeps for its proxy.
#[derive(Debug)]
pub struct Held {
    pub plain: std::os::fd::OwnedFd,
    /// The HTTPS listener, when the proxy has one.
    pub https: Option<std::os::fd::OwnedFd>,
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
    /// death answers here and keeps serving, untouched but for the settings this agent
    /// gives a proxy it starts (see [`ProxyCtl::hand_settings`]): then `Ok(true)` (found
    /// running).
    pub async fn ensure_running(&self) -> Result<bool, ProxyError> {
        if matches!(self.request(Request::Ping).await, Ok(Reply::Pong { .. })) {
            self.hand_settings().await;
            if self.held().is_none() {
                let socket = self.socket();
                match tokio::task::spawn_blocking(move || fetch_listeners(&socket)).await {
                    Ok(Ok((mut fds, https))) if fds.len() > usize::from(https) => {
                        let https = if https { fds.pop() } else { None };
                        *self.slot() = Some(Held {
                            plain: fds.swap_remove(0),
                            https,
                        });
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "cannot take a copy of the proxy's listening socket; a proxy crash will refuse connections until it is restarted")
                    }
                    Err(_) => {}
                }
            }
            return Ok(true);
        }
        let (fd, https_fd) = self.bind_held()?;
        self.spawn(fd, https_fd)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if matches!(self.request(Request::Ping).await, Ok(Reply::Pong { .. })) {
                tracing::info!(listen = %self.listen, "proxy started");
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ProxyError::NotReady {
            listen: self.listen,
            waited: Duration::from_secs(10),
            log: self.log_file(),
        })
    }

    /// Gives a running proxy this agent's settings (its command line has those of the
    /// agent that started it, maybe with another `--max-connections`). A proxy too old
    /// to take them keeps its own until it is upgraded or restarted; that is logged, not
    /// fatal.
    async fn hand_settings(&self) {
        let request = Request::SetLimits {
            max_connections: self.max_connections.map_or(0, |n| n as u64),
        };
        if let Err(error) = self.request(request).await {
            tracing::warn!(%error, "cannot give the running proxy this agent's connection cap; it keeps its own until it restarts");
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.listener.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The raw number of the plain listening socket the agent holds, if any.
    fn held(&self) -> Option<std::os::fd::RawFd> {
        self.slot()
            .as_ref()
            .map(|h| std::os::fd::AsRawFd::as_raw_fd(&h.plain))
    }

    /// The sockets a new proxy starts on: those the agent holds, the missing ones bound
    /// now (and kept). Returns their raw numbers (plain, HTTPS).
    fn bind_held(&self) -> Result<(std::os::fd::RawFd, Option<std::os::fd::RawFd>), ProxyError> {
        use std::os::fd::{AsRawFd, OwnedFd};
        let bind = |listen: SocketAddr| {
            std::net::TcpListener::bind(listen)
                .map(OwnedFd::from)
                .map_err(|source| ProxyError::Listen { listen, source })
        };
        let mut slot = self.slot();
        let held = match slot.take() {
            Some(h) => h,
            None => Held {
                plain: bind(self.listen)?,
                https: None,
            },
        };
        let held = slot.insert(held);
        if let (Some(addr), None) = (self.https, &held.https) {
            held.https = Some(bind(addr)?);
        }
        Ok((
            held.plain.as_raw_fd(),
            held.https.as_ref().map(|fd| fd.as_raw_fd()),
        ))
    }

    /// Starts a proxy on the listening sockets `listen_fd` and `https_fd` (held by the
    /// agent).
    fn spawn(
        &self,
        listen_fd: std::os::fd::RawFd,
        https_fd: Option<std::os::fd::RawFd>,
    ) -> Result<(), ProxyError> {
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
            .args(
                self.max_connections
                    .iter()
                    .flat_map(|n| ["--max-connections".to_string(), n.to_string()]),
            )
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .stdin(std::process::Stdio::null())
            .env(
                "HOIST_PROXY_INHERIT",
                match https_fd {
                    Some(t) => format!("listen={listen_fd};tls={t}"),
                    None => format!("listen={listen_fd}"),
                },
            )
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid and fcntl are async-signal-safe and touch no memory of the
        // parent; the proxy gets its own session so signals to the agent's terminal never
        // reach it, and the listening socket (close-on-exec in the agent) is made
        // inheritable in the child only.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)?;
                for fd in std::iter::once(listen_fd).chain(https_fd) {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
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

/// Asks the proxy at `socket` for its listening sockets: the answer line arrives with
/// them attached (SCM_RIGHTS); `true` when the last one is the HTTPS listener. Blocking;
/// bounded by a read timeout.
fn fetch_listeners(socket: &Path) -> Result<(Vec<std::os::fd::OwnedFd>, bool), ProxyError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let io = |source| ProxyError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(&RequestLine::new(Request::Listeners))
        .map_err(|e| ProxyError::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let mut fds = Vec::new();
    let mut got = Vec::new();
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| io(e.into()))?;
        for c in msg.cmsgs().map_err(|e| io(e.into()))? {
            if let ControlMessageOwned::ScmRights(list) = c {
                // SAFETY: the kernel just installed these descriptors in this process
                // for this message; nothing else refers to them.
                fds.extend(
                    list.into_iter()
                        .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let n = msg.bytes;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"\n") {
            break;
        }
    }
    let resp: ResponseLine =
        serde_json::from_slice(&got).map_err(|e| ProxyError::Protocol(e.to_string()))?;
    match resp.response {
        Response::Ok(Reply::Listeners { count, https }) if count as usize == fds.len() => {
            Ok((fds, https))
        }
        Response::Ok(other) => Err(ProxyError::Protocol(format!(
            "expected listening sockets, got {other:?} with {} descriptors",
            fds.len()
        ))),
        Response::Error { message } => Err(ProxyError::Refused(message)),
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
