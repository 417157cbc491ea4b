//! Test support shared by every crate's tests: the paths of the real binaries, child
//! processes owned by the test (killed with their process group on drop), waiting on a
//! condition with a deadline instead of sleeping, and a raw HTTP/1.1 client.
//!
//! Tests never use fixed ports, sleeps as synchronisation, or `pkill`.

pub mod certs;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The directory holding the workspace's built binaries (`target/debug`), found from the
/// running test executable (`target/debug/deps/<test>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test exe has a parent");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("target dir")
    } else {
        deps
    };
    dir.to_path_buf()
}

fn built(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// The real `hoist` binary.
pub fn hoist_bin() -> PathBuf {
    built("hoist")
}

/// The test app (`crates/hoist-testapp`).
pub fn testapp_bin() -> PathBuf {
    built("hoist-testapp")
}

/// The workspace root (where `Cargo.toml` with `[workspace]` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("condition not met within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process started in its own process group and killed (the whole group, with
/// SIGKILL) when the guard drops, so a failing test leaves nothing behind.
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        cmd.process_group(0);
        Ok(ChildGuard {
            child: cmd.spawn()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the child's process group.
    pub fn signal_group(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1. Prefer handing a bound listener to
/// the code under test; use this only where a process must bind by itself.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind :0")
}

/// A response read by [`http_get`].
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET with `Connection: close`, over a plain socket so that tests see
/// exactly what went over the wire.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed response"))
}

/// Parses a whole HTTP/1.1 response (Content-Length, chunked, or read-to-close body).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).ok()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// The prefix of every test's temporary directory, which the reaper looks for.
pub const TEMP_PREFIX: &str = "hoist-test-";

/// The file in a test's temporary directory naming the test process that owns it
/// (`PID START_TIME`), so the reaper can tell a live test's processes from leftovers.
pub const OWNER_FILE: &str = ".hoist-test-owner";

/// A fresh temporary directory, removed on drop, marked with its owner (this process).
pub fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir()
        .expect("tempdir");
    if let Some(me) = proc_start_time(std::process::id() as i32) {
        let _ = std::fs::write(
            dir.path().join(OWNER_FILE),
            format!("{} {me}\n", std::process::id()),
        );
    }
    dir
}

/// Field 22 of `/proc/PID/stat`: the start time that, with the pid, names a process.
fn proc_start_time(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Every live process (not this one) whose command line or `HOIST_RUN_DIR` names a path
/// under `root`: the agent (`--root`), the proxy (`--control`), the shims (`--spec`) and
/// the apps (their run-dir marker). Zombies are left out.
pub fn processes_under(root: &Path) -> Vec<i32> {
    let root = root.to_string_lossy().into_owned();
    let under = |path: &str| {
        path.strip_prefix(root.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                == Some("Z");
            !zombie && references(*pid, under)
        })
        .collect()
}

/// Whether `/proc/PID/cmdline` or the `HOIST_RUN_DIR` of `/proc/PID/environ` holds a
/// string `matches` accepts.
fn references(pid: i32, matches: impl Fn(&str) -> bool) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline
        .split(|b| *b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .any(&matches)
    {
        return true;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.strip_prefix("HOIST_RUN_DIR="))
        .any(matches)
}

/// SIGKILLs every process under `root` (see [`processes_under`]) until none is left, or
/// 10 s pass (a process that forks while it is killed leaves a child).
pub fn kill_processes_under(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = processes_under(root);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends, on drop, every process that runs under a test's root directory: the agent, its
/// proxy, shims and apps live in sessions of their own, out of reach of [`ChildGuard`].
pub struct RootGuard {
    root: PathBuf,
}

impl RootGuard {
    pub fn new(root: &Path) -> RootGuard {
        RootGuard {
            root: root.to_path_buf(),
        }
    }
}

impl Drop for RootGuard {
    fn drop(&mut self) {
        kill_processes_under(&self.root);
    }
}

/// Kills what earlier test runs left behind: processes under a `hoist-test-*` directory
/// of the temp dir that no longer exists, or whose owning test process has died. A
/// directory of a test that is still running (its owner alive, or no owner file) is never
/// touched. Returns the pids killed. Call it when a test starts its first host.
pub fn reap_stale() -> Vec<i32> {
    let tmp = std::env::temp_dir();
    let tmp_prefix = tmp.join(TEMP_PREFIX).to_string_lossy().into_owned();
    let stale_dir = |path: &str| -> bool {
        let Some(rest) = path.strip_prefix(&tmp_prefix) else {
            return false;
        };
        let name = rest.split('/').next().unwrap_or_default();
        let dir = tmp.join(format!("{TEMP_PREFIX}{name}"));
        if !dir.exists() {
            return true;
        }
        match std::fs::read_to_string(dir.join(OWNER_FILE)) {
            Ok(owner) => {
                let mut f = owner.split_whitespace();
                let pid = f.next().and_then(|p| p.parse::<i32>().ok());
                let start = f.next().and_then(|s| s.parse::<u64>().ok());
                match (pid, start) {
                    (Some(pid), Some(start)) => proc_start_time(pid) != Some(start),
                    _ => false,
                }
            }
            Err(_) => false,
        }
    };
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && references(*pid, stale_dir))
        .collect();
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        proc_start_time(pid).is_some()
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    != Some("Z")
            })
    }

    /// A process in a session of its own (out of reach of a ChildGuard) that names `path`
    /// in its arguments, and a child of it that names it only in `HOIST_RUN_DIR`.
    fn detached_under(path: &Path) -> (i32, i32) {
        let pids = path.with_extension("pids");
        // `setsid -f`: forked into a session of its own; setsid itself returns at once.
        let mut c = Command::new("setsid");
        c.args([
            "-f",
            "sh",
            "-c",
            "sleep 1000 & echo $$ $! > \"$1\"; wait",
            "sh",
        ])
        .arg(&pids)
        .arg(path)
        .env("HOIST_RUN_DIR", path.join("run"));
        let mut child = c.spawn().unwrap();
        wait_until(Duration::from_secs(30), || {
            std::fs::read_to_string(&pids).is_ok_and(|s| s.ends_with('\n'))
        })
        .unwrap();
        let _ = child.wait();
        let text = std::fs::read_to_string(&pids).unwrap();
        let mut f = text.split_whitespace().map(|p| p.parse::<i32>().unwrap());
        (f.next().unwrap(), f.next().unwrap())
    }

    #[test]
    fn a_root_guard_kills_every_process_under_its_root_on_drop() {
        let dir = tempdir();
        let root = dir.path().join("root");
        let (sh, sleep) = detached_under(&root);
        assert!(alive(sh) && alive(sleep));
        let mut found = processes_under(&root);
        found.sort();
        assert_eq!(found, {
            let mut v = vec![sh, sleep];
            v.sort();
            v
        });
        drop(RootGuard::new(&root));
        wait_until(Duration::from_secs(30), || !alive(sh) && !alive(sleep)).unwrap();
    }

    #[test]
    fn the_reaper_kills_leftovers_of_vanished_test_dirs_only() {
        let gone = tempdir();
        let (sh, sleep) = detached_under(&gone.path().join("root"));
        let live = tempdir();
        let (live_sh, live_sleep) = detached_under(&live.path().join("root"));
        let _cleanup = RootGuard::new(live.path());
        drop(gone);
        let reaped = reap_stale();
        assert!(
            reaped.contains(&sh) && reaped.contains(&sleep),
            "{reaped:?}"
        );
        wait_until(Duration::from_secs(30), || !alive(sh) && !alive(sleep)).unwrap();
        assert!(
            alive(live_sh) && alive(live_sleep),
            "a live test's processes were reaped"
        );
    }
}
