//! Zero-downtime upgrade of the proxy process: the listening sockets (and the control
//! socket) are inherited by a fresh process of the binary, which loads the current table
//! and says "ready" on a pipe; only then does this process stop accepting and drain. The
//! sockets are never closed in between, so the kernel queues new connections for
//! whichever process accepts next and none is refused.
//!
//! The hand-over is described to the successor in one environment variable,
//! `HOIST_PROXY_INHERIT=listen=3,4;control=5;ready=7;table=/path` (fd numbers are the
//! same in both processes because they are inherited, not duplicated).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use hoist_protocol::proxy as wire;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

use crate::error::ProxyError;

/// The environment variable that carries the hand-over.
pub const INHERIT_ENV: &str = "HOIST_PROXY_INHERIT";
/// How long a successor may take to say it serves.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// What a process needs to start its successor: its sockets and its command line.
#[derive(Debug)]
pub struct Handoff {
    /// Listening sockets and the control socket, kept open by `run` for its lifetime.
    pub listen_fds: Vec<RawFd>,
    /// The HTTPS listener, if any.
    pub tls_fd: Option<RawFd>,
    pub control_fd: RawFd,
    /// Arguments of the successor (this process's own, without the program name).
    pub args: Vec<OsString>,
}

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: `fd` is open for the duration of this call (owned by `run` or the caller).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(borrowed, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

impl Handoff {
    /// Starts the successor and waits until it serves; returns its pid.
    pub async fn spawn_successor(
        &self,
        exe: Option<PathBuf>,
        routes: &[wire::Route],
    ) -> Result<u32, ProxyError> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| ProxyError::Upgrade(format!("{what}: {e}"));
        let exe = match exe {
            Some(p) => p,
            None => {
                std::env::current_exe().map_err(|e| fail("cannot find the running binary", &e))?
            }
        };
        let table = std::env::temp_dir().join(format!(
            "hoist-proxy-handoff-{}-{}.json",
            std::process::id(),
            crate::table::now_ms()
        ));
        let data = serde_json::to_vec(routes).map_err(|e| fail("cannot encode the table", &e))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&table)
            .and_then(|mut f| f.write_all(&data))
            .map_err(|e| fail("cannot write the hand-over table", &e))?;
        let (ready_rd, ready_wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| fail("cannot create the ready pipe", &e))?;
        let mut fds = self.listen_fds.clone();
        fds.extend(self.tls_fd);
        fds.push(self.control_fd);
        fds.push(ready_wr.as_raw_fd());
        let listen = self
            .listen_fds
            .iter()
            .map(|fd| fd.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut value = format!(
            "listen={listen};control={};ready={};table={}",
            self.control_fd,
            ready_wr.as_raw_fd(),
            table.display()
        );
        if let Some(fd) = self.tls_fd {
            value.push_str(&format!(";tls={fd}"));
        }
        // The fds are inherited only across this one spawn; nothing else in this process
        // starts children, so clearing close-on-exec for a moment leaks them nowhere.
        for fd in &fds {
            set_cloexec(*fd, false).map_err(|e| fail("cannot pass a socket on", &e))?;
        }
        let spawned = std::process::Command::new(&exe)
            .args(&self.args)
            .env(INHERIT_ENV, value)
            .spawn();
        for fd in &fds {
            let _ = set_cloexec(*fd, true);
        }
        drop(ready_wr);
        let mut child =
            spawned.map_err(|e| fail(&format!("cannot start `{}`", exe.display()), &e))?;
        let pid = child.id();
        let wait = tokio::task::spawn_blocking(move || {
            let mut pipe = std::fs::File::from(ready_rd);
            let mut byte = [0u8; 1];
            matches!(pipe.read(&mut byte), Ok(1))
        });
        let ready = matches!(
            tokio::time::timeout(READY_TIMEOUT, wait).await,
            Ok(Ok(true))
        );
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&table);
            return Err(ProxyError::Upgrade(format!(
                "the new process `{}` (pid {pid}) did not become ready",
                exe.display()
            )));
        }
        tracing::info!(pid, exe = %exe.display(), "successor serves; this proxy stops accepting");
        Ok(pid)
    }
}

/// What a successor found in [`INHERIT_ENV`].
#[derive(Debug)]
pub struct Inherited {
    pub listeners: Vec<std::net::TcpListener>,
    pub tls_listener: Option<std::net::TcpListener>,
    /// Absent when the agent restarts a crashed proxy: it passes only the listening
    /// socket it kept open (`listen=N`), and the proxy binds its control socket and loads
    /// its state file as at any start.
    pub control: Option<std::os::unix::net::UnixListener>,
    pub ready: Option<OwnedFd>,
    pub routes: Option<Vec<wire::Route>>,
}

impl Inherited {
    /// Takes the hand-over from the environment, if this process is a successor.
    pub fn from_env() -> Result<Option<Inherited>, ProxyError> {
        let Some(value) = std::env::var_os(INHERIT_ENV) else {
            return Ok(None);
        };
        let value = value.to_string_lossy().into_owned();
        let bad = |message: String| ProxyError::Inherit {
            value: value.clone(),
            message,
        };
        let (mut listen, mut control, mut ready, mut table) = (Vec::new(), None, None, None);
        let mut tls = None;
        for part in value.split(';') {
            let (key, val) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("`{part}` is not key=value")))?;
            let fd = |v: &str| -> Result<OwnedFd, ProxyError> {
                let n: RawFd = v
                    .parse()
                    .map_err(|_| bad(format!("`{v}` is not a file descriptor")))?;
                if n < 3 {
                    return Err(bad(format!("fd `{n}` is a standard stream")));
                }
                set_cloexec(n, true).map_err(|e| bad(format!("fd `{n}` is not open: {e}")))?;
                // SAFETY: the parent passed `n` to this process for it alone, it is open
                // (checked just above), and nothing else in this process refers to it.
                Ok(unsafe { OwnedFd::from_raw_fd(n) })
            };
            match key {
                "listen" => {
                    for v in val.split(',') {
                        listen.push(std::net::TcpListener::from(fd(v)?));
                    }
                }
                "control" => control = Some(std::os::unix::net::UnixListener::from(fd(val)?)),
                "ready" => ready = Some(fd(val)?),
                "tls" => tls = Some(std::net::TcpListener::from(fd(val)?)),
                "table" => table = Some(PathBuf::from(val)),
                other => return Err(bad(format!("unknown key `{other}`"))),
            }
        }
        // The proxy's threads start later; the hand-over must not reach a child of ours.
        std::env::remove_var(INHERIT_ENV);
        let routes = match table {
            Some(table) => {
                let data = std::fs::read(&table)
                    .map_err(|e| bad(format!("cannot read `{}`: {e}", table.display())))?;
                let _ = std::fs::remove_file(&table);
                Some(serde_json::from_slice(&data).map_err(|e| bad(format!("bad table: {e}")))?)
            }
            None => None,
        };
        if listen.is_empty() {
            return Err(bad("no listening socket".into()));
        }
        if control.is_some() != routes.is_some() {
            return Err(bad("a control socket and a table go together".into()));
        }
        Ok(Some(Inherited {
            listeners: listen,
            tls_listener: tls,
            control,
            ready,
            routes,
        }))
    }
}
