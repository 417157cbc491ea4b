//! Shared by the end-to-end tests: a host (a real agent with its proxy, on a temp root)
//! driven through the real CLI, app files for the test app, and a load generator.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hoist_testkit::{free_port, hoist_bin, http_get, tempdir, testapp_bin, wait_until, ChildGuard};

pub struct Host {
    // Dropped first (fields drop in order): every process under the test's directory is
    // killed, whatever happened, before the directory goes.
    _procs: hoist_testkit::RootGuard,
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub proxy: SocketAddr,
    pub agent: Option<ChildGuard>,
    /// Extra environment for the agent (failpoints).
    pub agent_env: Vec<(String, String)>,
    /// A command the agent is run under (`unshare -T ...`), if any.
    pub agent_wrapper: Vec<String>,
    /// The root is a tmpfs mounted by the test (unmounted on drop).
    tmpfs: bool,
    /// Extra arguments for the agent (`--config FILE`, `--https ADDR`).
    pub agent_args: Vec<String>,
}

impl Host {
    pub fn new() -> Host {
        Host::new_with(|_| {})
    }

    /// As [`Host::new`], with `prepare(root)` run before the agent starts.
    pub fn new_with(prepare: impl FnOnce(&Path)) -> Host {
        let mut h = Host::unstarted();
        prepare(&h.root);
        h.start_agent();
        h
    }

    /// A host whose root is a tmpfs of `size` (`"8m"`), for disk-full tests. Needs root.
    pub fn on_tmpfs(size: &str) -> Host {
        let mut h = Host::unstarted();
        std::fs::create_dir_all(&h.root).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&h.root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (this test needs root): {}",
            text(&out.stderr)
        );
        h.tmpfs = true;
        h.start_agent();
        h
    }

    /// A host whose agent also gets `args`.
    pub fn with_agent_args(args: &[&str]) -> Host {
        let mut h = Host::unstarted();
        h.agent_args = args.iter().map(|a| a.to_string()).collect();
        h.start_agent();
        h
    }

    fn unstarted() -> Host {
        // Whatever an earlier, interrupted run left (its directory gone, or its test
        // process dead) is ended first.
        hoist_testkit::reap_stale();
        let dir = tempdir();
        let path = dir.path().to_path_buf();
        Host {
            _procs: hoist_testkit::RootGuard::new(&path),
            socket: path.join("agent.sock"),
            root: path.join("root"),
            proxy: SocketAddr::from(([127, 0, 0, 1], free_port())),
            dir: path,
            _dir: dir,
            agent: None,
            agent_env: Vec::new(),
            agent_wrapper: Vec::new(),
            tmpfs: false,
            agent_args: Vec::new(),
        }
    }

    /// Restarts the agent (root) with an apps' user of its own: it runs in a mount
    /// namespace whose /etc is an overlay where `hoist-apps` is created, so this machine
    /// gets no new user. The test's directory becomes 0711 (the user passes through it as
    /// through /var/lib). The user is also in a supplementary group, `hoist-extra`, whose
    /// gid is written to `<dir>/etc/extra`. Returns the user's uid.
    #[allow(dead_code)]
    pub fn restart_with_apps_user(&mut self) -> u32 {
        self.kill_agent();
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(etc.join("upper")).unwrap();
        std::fs::create_dir_all(etc.join("work")).unwrap();
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        self.agent_wrapper = vec![
            "unshare".into(),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "set -e; mount -t overlay overlay -o lowerdir=/etc,upperdir={e}/upper,workdir={e}/work /etc; \
                 id -u hoist-apps >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
                 --home-dir /nonexistent --shell /usr/sbin/nologin hoist-apps; \
                 groupadd -f hoist-extra; usermod -aG hoist-extra hoist-apps; \
                 id -u hoist-apps > {e}/uid; getent group hoist-extra | cut -d: -f3 > {e}/extra; \
                 exec \"$0\" \"$@\"",
                e = etc.display()
            ),
        ];
        self.start_agent();
        let uid: u32 = std::fs::read_to_string(etc.join("uid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(uid, 0);
        uid
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let mut cmd = match self.agent_wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(hoist_bin());
                c
            }
            None => Command::new(hoist_bin()),
        };
        let guard = ChildGuard::spawn(
            cmd.args(["agent", "--root"])
                .arg(&self.root)
                .arg("--socket")
                .arg(&self.socket)
                .arg("--proxy")
                .arg(self.proxy.to_string())
                .args(&self.agent_args)
                .envs(self.agent_env.iter().map(|(k, v)| (k, v)))
                .stderr(log),
        )
        .unwrap();
        self.agent = Some(guard);
        let socket = self.socket.clone();
        wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })
        .expect("the agent answers");
    }

    pub fn kill_agent(&mut self) {
        // SIGKILL to the agent alone: shims and the proxy live in their own sessions.
        let guard = self.agent.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(guard.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        drop(guard);
    }

    /// Writes an app file for the test app into a project dir named `name`.
    pub fn project(&self, name: &str, extra_env: &str, extra: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("VERSION"), name).unwrap();
        let app = testapp_bin();
        let toml = format!(
            r#"app = "demo"

[build]
include = ["VERSION"]

[env]
{extra_env}

[check]
command = "{app} check"

[services.web]
command = "{app} serve"
replicas = 2
stop_timeout = "5s"
http = {{ domains = ["*"], health = {{ path = "/health", interval = "100ms", healthy_threshold = 2, min_healthy = "200ms" }}, drain_timeout = "2s" }}

[deploy]
health_deadline = "5s"
standby = "10m"
{extra}

[[hosts]]
name = "local"
roles = ["web"]
"#,
            app = app.display()
        );
        std::fs::write(dir.join("hoist.toml"), toml).unwrap();
        dir
    }

    pub fn hoist(&self, args: &[&str]) -> Output {
        Command::new(hoist_bin())
            .args(args)
            .env("HOIST_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn deploy(&self, project: &Path) -> Output {
        self.hoist(&["deploy", "-c", project.join("hoist.toml").to_str().unwrap()])
    }

    /// The release answering `/` through the proxy.
    pub fn serving(&self) -> Option<String> {
        let resp = http_get(self.proxy, "demo.test", "/").ok()?;
        if resp.status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&resp.body).ok()?;
        v["release"].as_str().map(str::to_string)
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.hoist(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn pids(&self) -> Vec<(String, u64)> {
        let st = self.status();
        let mut v: Vec<(String, u64)> = st["apps"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["instance"].as_str().unwrap().to_string(),
                    i["pid"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // The agent first: alive, it would start the proxy again right after it is killed
        // below (and that proxy would outlive the test).
        drop(self.agent.take());
        // The shims and the proxy are in sessions of their own: stop them by their pids.
        if let Ok(entries) = std::fs::read_dir(self.root.join("run")) {
            for e in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                for key in ["shim", "process"] {
                    if let Some(pid) = v[key]["pid"].as_i64() {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        // And everything else under the test's directory: the proxy (found by its
        // arguments, not by asking it, as a stopped or wedged proxy never answers), shims
        // and apps whose records are gone, a CLI still waiting.
        hoist_testkit::kill_processes_under(&self.dir);
        if self.tmpfs {
            let _ = Command::new("umount").arg("-l").arg(&self.root).status();
        }
    }
}

/// One raw HTTP/1.1 request on the agent's socket: (status, body).
pub fn agent_request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    // A request refused on its path is answered before its body is read, and the
    // connection closed: the rest of the write may then fail; the answer is there.
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // The answer is read whole; a reset after it (the body we sent left unread on a
    // Unix socket) ends the read, not the answer.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        raw.extend_from_slice(&buf[..n]);
    }
    let r = hoist_testkit::parse_response(&raw).expect("an HTTP response");
    (r.status, r.body)
}

/// The proxy's pid, from its answer to a ping on the control socket.
pub fn proxy_pid(root: &Path) -> std::io::Result<i32> {
    use std::io::{BufRead, BufReader};
    let mut s = std::os::unix::net::UnixStream::connect(root.join("proxy/control.sock"))?;
    s.write_all(b"{\"version\":1,\"request\":{\"type\":\"ping\"}}\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    v["response"]["ok"]["pid"]
        .as_i64()
        .map(|p| p as i32)
        .ok_or_else(|| std::io::Error::other(line.clone()))
}

/// The app file the fleet suites deploy, written to `dir` with its files: the test app's
/// web service and a singleton worker (role `worker`). `VERSION` holds `version`, so each
/// version is its own release; `big.bin` is the same in every version, so a redeploy
/// must not send it again. `tail` follows `[deploy.rollout]`'s own lines: the rollout
/// keys, then `[ssh]` and `[[hosts]]`.
pub fn fleet_project(dir: &Path, version: &str, extra_env: &str, tail: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    std::fs::write(dir.join("big.bin"), vec![7u8; 256 * 1024]).unwrap();
    let toml = format!(
        r#"app = "demo"

[build]
include = ["VERSION", "big.bin"]

[env]
{extra_env}

[check]
command = "{app} check"

[services.web]
command = "{app} serve"
replicas = 1
stop_timeout = "5s"
http = {{ domains = ["*"], health = {{ path = "/health", interval = "100ms", healthy_threshold = 2, min_healthy = "100ms" }}, drain_timeout = "1s" }}

[services.worker]
command = "{app} worker"
singleton = true
roles = ["worker"]
stop_timeout = "5s"

[deploy]
health_deadline = "5s"
standby = "10m"

[deploy.rollout]
{tail}
"#,
        app = testapp_bin().display()
    );
    let file = dir.join("hoist.toml");
    std::fs::write(&file, toml).unwrap();
    file
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn release_of(out: &Output) -> String {
    let err = text(&out.stderr);
    err.lines()
        .find_map(|l| {
            l.split("release `")
                .nth(1)
                .map(|r| r.split('`').next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no release in {err}"))
}

/// Requests through the proxy in a loop on 4 threads until stopped: (ok, failed).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..4)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    // Bounded: at most 5 minutes of requests, whatever happens.
                    let deadline = std::time::Instant::now() + Duration::from_secs(300);
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                        match http_get(addr, "demo.test", "/") {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{} {}", r.status, r.body));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e.to_string());
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    pub fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// A webhook receiver run by a test (Alertmanager's webhook JSON): records every JSON
/// body posted to it and answers 200.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        // The thread ends with the test process; it holds no child process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver { addr, got }
    }

    /// Every alert, across the notifications so far, with this status for this rule.
    pub fn alerts(&self, status: &str, rule: &str) -> Vec<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
            .filter(|x| x["status"] == status && x["labels"]["alertname"] == rule)
            .collect()
    }

    /// The first notification with this status for this rule.
    pub fn find(&self, status: &str, rule: &str) -> Option<serde_json::Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .find(|v| {
                v["alerts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["status"] == status && x["labels"]["alertname"] == rule)
                })
            })
            .cloned()
    }
}
