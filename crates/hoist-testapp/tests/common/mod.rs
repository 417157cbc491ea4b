//! Helpers for the test app's own tests: start the real binary with its output captured
//! line by line, wait for a line with a deadline, and speak raw HTTP/1.1 (any method,
//! with a body) to it. Only tests use this; it must not grow behaviour of its own.

#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoist_testkit::{wait_until, ChildGuard, Response};

/// Long enough for a debug build on a loaded 2-core machine; only failures wait this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The real test app, started in its own process group and killed with the test.
pub struct App {
    pub guard: ChildGuard,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Set by each reader thread at end of file.
    closed: [Arc<AtomicBool>; 2],
}

pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoist-testapp"));
    // A test's environment must not leak flags into the app (hoist passes TESTAPP_*).
    for (key, _) in std::env::vars() {
        if key.starts_with("TESTAPP_") || key.starts_with("HOIST_") || key == "PORT" {
            cmd.env_remove(key);
        }
    }
    cmd
}

impl App {
    /// Starts `hoist-testapp ARGS` with `cmd`'s environment.
    pub fn start(mut cmd: Command) -> App {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = ChildGuard::spawn(&mut cmd).expect("start hoist-testapp");
        let (stdout, out_closed) = collect(guard.child.stdout.take().expect("stdout"));
        let (stderr, err_closed) = collect(guard.child.stderr.take().expect("stderr"));
        App {
            guard,
            stdout,
            stderr,
            closed: [out_closed, err_closed],
        }
    }

    /// `hoist-testapp ARGS`.
    pub fn run(args: &[&str]) -> App {
        let mut cmd = command();
        cmd.args(args);
        App::start(cmd)
    }

    /// Starts `serve` with `args` and waits for its `listening on ADDR` line.
    pub fn serve(args: &[&str]) -> (App, SocketAddr) {
        let app = App::run(&[&["serve", "--port", "0"], args].concat());
        let addr = app.listening();
        (app, addr)
    }

    pub fn listening(&self) -> SocketAddr {
        let line = self.wait_stdout(|l| l.starts_with("listening on "));
        line["listening on ".len()..]
            .parse()
            .expect("address in `listening on` line")
    }

    pub fn pid(&self) -> i32 {
        self.guard.pid() as i32
    }

    /// Waits for a stdout line matching `pred` and returns it.
    pub fn wait_stdout(&self, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stdout, &self.stderr, pred, "stdout")
    }

    /// Waits for a stderr line matching `pred` and returns it.
    pub fn wait_stderr(&self, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stderr, &self.stderr, pred, "stderr")
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the process to exit and its output to be read, with the deadline, and
    /// returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        let child = &mut self.guard.child;
        wait_until(DEADLINE, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        })
        .unwrap_or_else(|e| panic!("hoist-testapp did not exit: {e}"));
        let closed = &self.closed;
        wait_until(DEADLINE, || {
            closed.iter().all(|c| c.load(Ordering::Acquire))
        })
        .unwrap_or_else(|e| panic!("hoist-testapp's output stayed open after it exited: {e}"));
        status.expect("exit status")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }
}

fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, Arc<AtomicBool>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicBool::new(false));
    let (sink, done) = (lines.clone(), closed.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
        done.store(true, Ordering::Release);
    });
    (lines, closed)
}

fn wait_line(
    lines: &Mutex<Vec<String>>,
    stderr: &Mutex<Vec<String>>,
    pred: impl Fn(&str) -> bool,
    what: &str,
) -> String {
    let mut found = None;
    let waited = wait_until(DEADLINE, || {
        found = lines.lock().unwrap().iter().find(|l| pred(l)).cloned();
        found.is_some()
    });
    if let Err(e) = waited {
        panic!(
            "no matching line on {what}: {e}\nstderr:\n{}",
            stderr.lock().unwrap().join("\n")
        );
    }
    found.expect("line")
}

/// One HTTP/1.1 request with `Connection: close` over a plain socket.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    hoist_testkit::parse_response(&raw).expect("well-formed response")
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, b"")
}

pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let response = get(addr, path);
    assert_eq!(response.status, 200, "GET {path}: {}", response.body);
    serde_json::from_str(&response.body).expect("json body")
}

/// Resident memory of `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value")
}

/// Whether a process with this pid exists (zombies included).
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}
