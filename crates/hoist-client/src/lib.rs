//! The agent API's client, used by the CLI and the fleet: HTTP/1.1 either over the
//! agent's Unix socket (a new connection per request: connecting is a syscall) or over
//! the stdin/stdout of a command that bridges to it (`ssh HOST hoist agent connect`),
//! whose connections are kept and reused (a few idle ones per client), since spawning the
//! command costs far more than a request. Errors say whether the agent is absent,
//! refused, does not answer, answered an error, or the bridging command failed (with its
//! stderr, for the fleet layer to classify). It knows nothing of ssh itself: the command
//! and its arguments come from the caller. It depends on the wire types only, never on
//! the agent, so the CLI reaches the agent without linking it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{FutureExt, Shared};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use hoist_protocol::agent::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent answers on `{socket}`")]
    NotRunning {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("permission denied on the agent's socket `{socket}`")]
    Forbidden { socket: PathBuf },
    /// Connected, but the agent said nothing and did not answer a hello either within
    /// the timeout: frozen (stopped, stuck), not merely busy.
    #[error("the agent does not answer{}", not_answering(.pid, .state, .waited))]
    NoAnswer {
        /// Where: the socket path or `ssh HOST`.
        agent: String,
        /// The agent's pid and its state letter from /proc (`T`: stopped), when the agent
        /// is on this machine.
        pid: Option<i32>,
        state: Option<char>,
        waited: Duration,
    },
    #[error("{}", .0.error)]
    Api(ApiError, StatusCode),
    #[error("the agent's answer could not be read: {0}")]
    Protocol(String),
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bridging command could not start, or ended before the answer was complete.
    #[error("`{program}` failed{}{}", status.map(|s| format!(" with status {s}")).unwrap_or_default(), last_line(stderr))]
    Command {
        program: String,
        /// The exit status, when it exited (not killed by a signal, not still running).
        status: Option<i32>,
        /// The last lines of its stderr.
        stderr: String,
    },
}

fn not_answering(pid: &Option<i32>, state: &Option<char>, waited: &Duration) -> String {
    let within = format!("within {}s", waited.as_secs_f64());
    match (pid, state) {
        (Some(pid), Some(state)) => format!(
            " (pid {pid}, state {state}{}) {within}",
            match state {
                'T' | 't' => ": stopped",
                'D' => ": waiting on the disk",
                'Z' => ": dead, not yet reaped",
                _ => "",
            }
        ),
        (Some(pid), None) => format!(" (pid {pid}) {within}"),
        _ => format!(" {within}"),
    }
}

/// `: <the last non-empty line>` of a command's stderr, for the one-line message.
fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

impl ClientError {
    pub fn hint(&self) -> Option<&str> {
        match self {
            ClientError::NotRunning { .. } => {
                Some("start one with `hoist agent`, or set HOIST_SOCKET to the socket of a running agent")
            }
            ClientError::Forbidden { .. } => Some("the agent belongs to another user: run this as that user"),
            ClientError::Api(e, _) => e.hint.as_deref(),
            ClientError::NoAnswer { state: Some('T' | 't'), .. } => {
                Some("it was stopped (SIGSTOP or a debugger): resume it with `kill -CONT PID`, or restart it")
            }
            ClientError::NoAnswer { .. } => Some("check the agent's log; restart it if it stays silent"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    transport: Transport,
}

#[derive(Debug, Clone)]
enum Transport {
    Unix(PathBuf),
    /// A command spawned per connection, speaking HTTP over its stdin/stdout. Its
    /// connections are kept (HTTP/1.1 keep-alive) and reused: spawning `ssh` and the
    /// remote bridge costs far more than a request.
    Command {
        program: PathBuf,
        args: Vec<OsString>,
        idle: Arc<Mutex<Vec<Conn>>>,
    },
}

/// One bridged connection: its request sender, and its command's end (exit status and
/// stderr), shared by whoever asks when the connection breaks.
struct Conn {
    sender: SendRequest<ReqBody>,
    ended: Shared<oneshot::Receiver<(Option<i32>, String)>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

/// Connections kept per command client; more concurrent requests open more.
const KEEP_IDLE: usize = 4;

/// How many lines of a failed command's stderr an error keeps.
const STDERR_LINES: usize = 20;
/// How long a command that broke the connection gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// How long the agent may stay silent (no answer, no line of a stream, no progress of a
/// body) before it is asked for a hello on another connection; and how long that hello
/// may take. A busy agent answers the hello and the wait goes on (a deploy's bake or a
/// restart may take minutes); a frozen one does not, and the request fails. Idle-based,
/// never a total: `logs -f` may run for days. `HOIST_CLIENT_TIMEOUT_MS` sets it (tests).
fn silence() -> Duration {
    std::env::var("HOIST_CLIENT_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(Duration::from_secs(10))
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            transport: Transport::Unix(socket.to_path_buf()),
        }
    }

    /// A client that runs `program args…` for each request and speaks HTTP over its
    /// stdin/stdout; the command lives as long as that request's connection.
    pub fn over_command(program: impl Into<PathBuf>, args: Vec<OsString>) -> Client {
        Client {
            transport: Transport::Command {
                program: program.into(),
                args,
                idle: Arc::default(),
            },
        }
    }

    /// The agent's socket, for a client over a Unix socket.
    pub fn socket(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Unix(p) => Some(p),
            Transport::Command { .. } => None,
        }
    }

    /// Where the agent is, for messages: the socket path, `ssh HOST` for an ssh bridge,
    /// else the command's name.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Unix(p) => p.display().to_string(),
            Transport::Command { program, args, .. } => {
                let name = program.file_name().map_or_else(
                    || program.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                // ssh's destination is the first argument after the options, which the
                // remote command follows.
                match ssh_destination(args) {
                    Some(dest) if name == "ssh" => format!("{name} {dest}"),
                    _ => name,
                }
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: ReqBody,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://agent{path}"))
            .header("host", "agent")
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.watched(self.send_raw(req)).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let err =
            serde_json::from_slice::<ApiError>(&bytes.to_bytes()).unwrap_or_else(|_| ApiError {
                error: format!("the agent answered {status}"),
                hint: None,
            });
        Err(ClientError::Api(err, status))
    }

    async fn send_raw(&self, req: Req) -> Result<Resp, ClientError> {
        match &self.transport {
            Transport::Unix(socket) => send_unix(socket, req).await,
            Transport::Command {
                program,
                args,
                idle,
            } => send_command(program, args, idle, req).await,
        }
    }

    /// Runs `fut` (a request, a body, the next line of a stream) for as long as the agent
    /// is alive: whenever it has been silent for [`silence`], a hello on another
    /// connection must be answered within the same time, else [`ClientError::NoAnswer`].
    async fn watched<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let wait = silence();
        tokio::pin!(fut);
        loop {
            match tokio::time::timeout(wait, &mut fut).await {
                Ok(r) => return r,
                Err(_) => self.probe(wait).await?,
            }
        }
    }

    /// `GET /v1/hello` within `wait`: Ok when the agent answers.
    async fn probe(&self, wait: Duration) -> Result<(), ClientError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri("http://agent/v1/hello")
            .header("host", "agent")
            .body(Self::empty())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut pid = None;
        let hello = async {
            match &self.transport {
                Transport::Unix(socket) => {
                    let stream = connect_unix(socket).await?;
                    // Known as soon as connected, even if the agent never accepts.
                    pid = stream.peer_cred().ok().and_then(|c| c.pid());
                    send_on(stream, req).await
                }
                Transport::Command { .. } => self.send_raw(req).await,
            }
        };
        match tokio::time::timeout(wait, hello).await {
            Ok(Ok(resp)) => {
                let _ = resp.into_body().collect().await;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::NoAnswer {
                agent: self.describe(),
                pid,
                state: pid.and_then(proc_state),
                waited: wait * 2,
            }),
        }
    }

    fn json_body<B: Serialize>(body: &B) -> ReqBody {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed()
    }

    fn empty() -> ReqBody {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    }

    /// A request with an optional JSON body and a JSON answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body.map_or_else(Self::empty, Self::json_body);
        let resp = self.send(method, path, body).await?;
        self.watched(read_json(resp)).await
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }

    /// A request whose answer is a JSON-lines stream; `on_item` sees each object as it
    /// arrives and returns false to stop reading.
    pub async fn stream<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mut on_item: impl FnMut(T) -> bool,
    ) -> Result<(), ClientError> {
        let body = body.map_or_else(Self::empty, Self::json_body);
        let mut resp = self.send(method, path, body).await?.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = self.watched(async { Ok(resp.frame().await) }).await? {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.len() <= 1 {
                    continue;
                }
                let item = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                if !on_item(item) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Streams a file as the request body (an artifact upload) and reads a JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
    ) -> Result<T, ClientError> {
        self.upload_progress(path, file, |_| {}).await
    }

    /// [`Client::upload`], calling `sent` with the bytes read from the file so far after
    /// each chunk (a progress bar's position).
    pub async fn upload_progress<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &Path,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<T, ClientError> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|source| ClientError::Read {
                path: file.to_path_buf(),
                source,
            })?;
        let stream = tokio_util_like::chunks(f, sent);
        let body = http_body_util::StreamBody::new(stream).boxed();
        let resp = self.send(Method::POST, path, body).await?;
        self.watched(read_json(resp)).await
    }
}

type Resp = hyper::Response<hyper::body::Incoming>;
type Req = Request<ReqBody>;

/// The state letter of a process (`R`, `S`, `D`, `T`, `Z`, …) from `/proc/PID/stat`.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the state follows the last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

async fn send_unix(socket: &Path, req: Req) -> Result<Resp, ClientError> {
    send_on(connect_unix(socket).await?, req).await
}

async fn connect_unix(socket: &Path) -> Result<tokio::net::UnixStream, ClientError> {
    tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                ClientError::Forbidden {
                    socket: socket.to_path_buf(),
                }
            } else {
                ClientError::NotRunning {
                    socket: socket.to_path_buf(),
                    source,
                }
            }
        })
}

async fn send_on(stream: tokio::net::UnixStream, req: Req) -> Result<Resp, ClientError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// One request over a bridged connection: an idle kept one when there is one (a request
/// the connection could not take is sent on a new one), else a new command.
async fn send_command(
    program: &Path,
    args: &[OsString],
    idle: &Mutex<Vec<Conn>>,
    mut req: Req,
) -> Result<Resp, ClientError> {
    let name = program.display().to_string();
    loop {
        let kept = {
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.sender.is_closed());
            idle.iter()
                .position(|c| c.sender.is_ready())
                .map(|i| idle.swap_remove(i))
        };
        let Some(mut conn) = kept else { break };
        match conn.sender.try_send_request(req).await {
            Ok(resp) => {
                keep(idle, conn);
                return Ok(resp);
            }
            // Never written to the connection: safe to send again elsewhere.
            Err(mut e) => match e.take_message() {
                Some(back) => req = back,
                None => return Err(broken(&name, conn, e.into_error()).await),
            },
        }
    }
    let mut conn = connect_command(&name, program, args).await?;
    match conn.sender.send_request(req).await {
        Ok(resp) => {
            keep(idle, conn);
            Ok(resp)
        }
        Err(e) => Err(broken(&name, conn, e).await),
    }
}

/// Returns a connection to the idle list (it serves again once its answer is read).
fn keep(idle: &Mutex<Vec<Conn>>, conn: Conn) {
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < KEEP_IDLE {
        idle.push(conn);
    }
}

/// The error of a request whose connection broke: the command's status and stderr.
async fn broken(name: &str, conn: Conn, e: hyper::Error) -> ClientError {
    drop(conn.sender);
    let (status, stderr) = conn
        .ended
        .await
        .unwrap_or((None, format!("the connection broke: {e}")));
    ClientError::Command {
        program: name.to_string(),
        status,
        stderr,
    }
}

/// Spawns the command and opens HTTP/1.1 over its stdin/stdout. The connection task owns
/// the child: when the connection ends (or breaks) it reaps it and publishes its status
/// and stderr, which a failed request reports.
async fn connect_command(
    name: &str,
    program: &Path,
    args: &[OsString],
) -> Result<Conn, ClientError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ClientError::Command {
            program: name.to_string(),
            status: None,
            stderr: e.to_string(),
        })?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(ClientError::Command {
            program: name.to_string(),
            status: None,
            stderr: "the command's standard streams could not be opened".into(),
        });
    };
    let stderr_task = tokio::spawn(tail(stderr));
    let (done_tx, done_rx) = oneshot::channel::<(Option<i32>, String)>();
    let io = TokioIo::new(tokio::io::join(stdout, stdin));
    let handshake = hyper::client::conn::http1::handshake(io).await;
    let (sender, conn) = match handshake {
        Ok(pair) => pair,
        Err(_) => {
            let (status, stderr) = finish(child, stderr_task).await;
            return Err(ClientError::Command {
                program: name.to_string(),
                status,
                stderr,
            });
        }
    };
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = done_tx.send(finish(child, stderr_task).await);
    });
    Ok(Conn {
        sender,
        ended: done_rx.shared(),
    })
}

/// Waits briefly for the command to exit (its stdin is closed by now), then kills it.
async fn finish(
    mut child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
) -> (Option<i32>, String) {
    let status = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(s)) => s.code(),
        _ => {
            let _ = child.kill().await;
            None
        }
    };
    let stderr = tokio::time::timeout(EXIT_GRACE, stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    (status, stderr)
}

/// The last [`STDERR_LINES`] lines of a stream, read to its end.
async fn tail(mut stderr: tokio::process::ChildStderr) -> String {
    use tokio::io::AsyncReadExt;
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                // Bound memory on a chatty command: keep the tail only.
                if kept.len() > 64 * 1024 {
                    kept.drain(..kept.len() - 32 * 1024);
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&kept);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n")
}

/// The destination of an ssh argv: the first argument that is not an option or an
/// option's value (options that take a value are the ones OpenSSH documents).
fn ssh_destination(args: &[OsString]) -> Option<String> {
    const WITH_VALUE: &str = "BbcDEeFIiJLlmOoPpQRSWw";
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(arg) = it.next() {
        let Some(flags) = arg.strip_prefix('-') else {
            return Some(arg.into_owned());
        };
        if flags == "-" {
            return it.next().map(|a| a.into_owned());
        }
        // `-oX=y` carries its value; `-o X=y` takes the next argument.
        if let Some(pos) = flags.find(|c| WITH_VALUE.contains(c)) {
            if pos == flags.len() - 1 {
                it.next();
            }
        }
    }
    None
}

/// A whole JSON answer.
async fn read_json<T: DeserializeOwned>(
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<T, ClientError> {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    serde_json::from_slice(&bytes.to_bytes()).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A file read as a stream of body frames, 256 KiB at a time.
mod tokio_util_like {
    use bytes::Bytes;
    use hyper::body::Frame;
    use tokio::io::AsyncReadExt;

    pub fn chunks(
        file: tokio::fs::File,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static
    {
        let sent = std::sync::Arc::new(sent);
        futures_util::stream::unfold(Some((file, 0u64)), move |state| {
            let sent = sent.clone();
            async move {
                let (mut file, done) = state?;
                let mut buf = vec![0u8; 256 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        let done = done + n as u64;
                        sent(done);
                        Some((Ok(Frame::data(Bytes::from(buf))), Some((file, done))))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Client {
        Client::over_command("/bin/sh", vec!["-c".into(), script.into()])
    }

    #[tokio::test]
    async fn a_command_that_speaks_http_answers() {
        // Reads the request's head, then answers: a real process on the other end of the pipes.
        let client = sh(
            "head -n 1 >/dev/null; printf 'HTTP/1.1 200 OK\\r\\ncontent-length: 8\\r\\n\\r\\n{\"a\":41}'",
        );
        let v: serde_json::Value = client.get("/v1/hello").await.unwrap();
        assert_eq!(v["a"], 41);
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_stderr() {
        let client = sh("for i in $(seq 1 30); do echo line$i >&2; done; echo 'Permission denied (publickey).' >&2; exit 255");
        let err = client
            .get::<serde_json::Value>("/v1/hello")
            .await
            .unwrap_err();
        let ClientError::Command { status, stderr, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*status, Some(255));
        assert!(
            stderr.ends_with("Permission denied (publickey)."),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), STDERR_LINES, "{stderr}");
        assert!(err.to_string().contains("Permission denied"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_command_error() {
        let client = Client::over_command("/nonexistent/ssh", vec![]);
        let err = client
            .get::<serde_json::Value>("/v1/hello")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Command { status: None, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_agent_is_named_with_its_pid_and_state() {
        // A listener that never accepts: connections wait in its backlog, as they do on
        // a stopped agent's socket.
        let dir = std::env::temp_dir().join(format!("hoist-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("a.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::env::set_var("HOIST_CLIENT_TIMEOUT_MS", "200");
        let err = Client::new(&socket)
            .get::<serde_json::Value>("/v1/status")
            .await
            .unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let ClientError::NoAnswer { pid, state, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*pid, Some(std::process::id() as i32));
        assert!(state.is_some(), "{err}");
        assert!(
            err.to_string().starts_with(&format!(
                "the agent does not answer (pid {}",
                std::process::id()
            )),
            "{err}"
        );
    }

    #[test]
    fn describe_names_the_ssh_destination() {
        let args: Vec<OsString> = [
            "-F",
            "/x/cfg",
            "-p",
            "22",
            "-oBatchMode=yes",
            "-o",
            "A=b",
            "root@h1",
            "/usr/local/bin/hoist",
            "agent",
            "connect",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let c = Client::over_command("/usr/bin/ssh", args);
        assert_eq!(c.describe(), "ssh root@h1");
        assert_eq!(
            Client::new(Path::new("/run/a.sock")).describe(),
            "/run/a.sock"
        );
    }
}
