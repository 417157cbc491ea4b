//! Health of instances: the probes (HTTP, TCP, exec) and the hysteresis that turns their
//! results into a state. An instance becomes healthy only after `healthy_threshold`
//! consecutive passes, joins traffic only after staying healthy for `min_healthy`, and
//! turns unhealthy only after `unhealthy_threshold` consecutive failures, so a flapping
//! instance is never admitted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hoist_core::spec::{HealthKind, HealthSpec};
use hoist_supervisor::creds::Credentials;

/// What the hysteresis concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet (starting).
    Unknown,
    Healthy,
    Unhealthy,
}

/// Consecutive results and the state they lead to. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: Health,
    passes: u32,
    failures: u32,
    healthy_since: Option<Instant>,
    /// Whether the instance was ever healthy (an unhealthy turn after that restarts it).
    pub was_healthy: bool,
    /// Admitted without waiting: an instance a restarted agent found serving.
    trusted: bool,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            state: Health::Unknown,
            passes: 0,
            failures: 0,
            healthy_since: None,
            was_healthy: false,
            trusted: false,
        }
    }
}

impl Tracker {
    pub fn state(&self) -> Health {
        self.state
    }

    /// An instance that was taking traffic when the agent (re)started: it stays admitted
    /// until its checks say otherwise, so an agent restart never empties a route.
    pub fn serving(now: Instant) -> Tracker {
        Tracker {
            state: Health::Healthy,
            passes: 0,
            failures: 0,
            healthy_since: Some(now),
            was_healthy: true,
            trusted: true,
        }
    }

    /// Records one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, now: Instant, spec: &HealthSpec) -> Option<Health> {
        if ok {
            self.passes = self.passes.saturating_add(1);
            self.failures = 0;
            if self.state != Health::Healthy && self.passes >= spec.healthy_threshold.max(1) {
                self.state = Health::Healthy;
                self.healthy_since = Some(now);
                self.was_healthy = true;
                return Some(Health::Healthy);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.passes = 0;
            // A pass streak broken before it reached the threshold resets admission too.
            if self.state == Health::Unknown {
                return None;
            }
            if self.state != Health::Unhealthy && self.failures >= spec.unhealthy_threshold.max(1) {
                self.state = Health::Unhealthy;
                self.healthy_since = None;
                self.trusted = false;
                return Some(Health::Unhealthy);
            }
        }
        None
    }

    /// Healthy, and for at least `min_healthy`: may take traffic.
    pub fn admitted(&self, now: Instant, spec: &HealthSpec) -> bool {
        self.state == Health::Healthy
            && (self.trusted
                || self
                    .healthy_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= spec.min_healthy))
    }
}

/// Runs one probe of `spec` against an instance listening on `port` (if any), in `cwd`
/// with `env` for exec checks, as `user` (the instance's; `None`: the agent's own).
/// Never takes longer than the spec's timeout.
pub async fn probe(
    spec: &HealthSpec,
    port: Option<u16>,
    cwd: &Path,
    env: &[(String, String)],
    user: Option<&Credentials>,
) -> bool {
    let attempt = async {
        match &spec.kind {
            HealthKind::Http {
                path,
                expect_status,
            } => {
                let Some(port) = port else { return false };
                http_probe(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    path,
                    *expect_status,
                )
                .await
            }
            HealthKind::Tcp => {
                let Some(port) = port else { return false };
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            }
            HealthKind::Exec { command } => exec_probe(command, cwd, env, user).await,
        }
    };
    tokio::time::timeout(spec.timeout, attempt)
        .await
        .unwrap_or(false)
}

/// The most of a probe's answer that is read; a larger body fails the probe.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// One HTTP/1.1 GET through hyper's client: the whole (bounded) answer is read, so the
/// connection ends with a FIN after the app has written everything. Dropping it after
/// the status line left the rest unread, and the kernel answered the app's next write
/// with a reset (a `ConnectionResetError` in the app's log for every few probes).
async fn http_probe(addr: SocketAddr, path: &str, expect: Option<u16>) -> bool {
    use http_body_util::BodyExt;
    // A path hyper cannot parse as a URI (control characters, spaces) fails the probe
    // instead of being written raw.
    let Ok(req) = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::USER_AGENT, "hoist-health")
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
    else {
        return false;
    };
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let Ok((mut sender, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return false;
    };
    let conn = tokio::spawn(conn);
    let Ok(resp) = sender.send_request(req).await else {
        conn.abort();
        return false;
    };
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_PROBE_BODY);
    let complete = body.collect().await.is_ok();
    drop(sender);
    // The connection task ends once the answer is complete (`Connection: close`).
    let _ = conn.await;
    complete
        && match expect {
            Some(want) => status == want,
            None => (200..300).contains(&status),
        }
}

/// An exec probe runs as the instance does: a root agent drops to the instance's user,
/// groups and `no_new_privs` (the shim's drop), so a check command can do no more than
/// the app itself.
async fn exec_probe(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    user: Option<&Credentials>,
) -> bool {
    let mut cmd = tokio::process::Command::new("/bin/sh");
    if let Some(creds) = user.filter(|c| c.is_other_than_me()) {
        creds.drop_to(cmd.as_std_mut());
    }
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    // Dropped at the probe's timeout (this future is cancelled) or when it ends: the whole
    // group goes, not only the shell (a probe that forked would leave its children).
    let _group = child.id().map(|pid| KillGroupOnDrop(pid as i32));
    child.wait().await.is_ok_and(|s| s.success())
}

/// SIGKILLs a process group when dropped.
struct KillGroupOnDrop(i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The interval between probes of `spec`, never below 50 ms. A starting instance is
/// probed at least every 250 ms: it joins as soon as its consecutive passes (and
/// `min_healthy`) allow, instead of waiting out a long steady-state interval.
pub fn interval(spec: &HealthSpec, starting: bool) -> Duration {
    let every = if starting {
        spec.interval.min(Duration::from_millis(250))
    } else {
        spec.interval
    };
    every.max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HealthSpec {
        let mut s = HealthSpec::with_defaults(HealthKind::Tcp);
        s.healthy_threshold = 3;
        s.unhealthy_threshold = 2;
        s.min_healthy = Duration::from_secs(2);
        s
    }

    /// A probe that times out takes its whole process group with it: a forked sleeper
    /// must not outlive it.
    #[tokio::test]
    async fn a_timed_out_exec_probe_kills_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let mut s = HealthSpec::with_defaults(HealthKind::Exec {
            command: format!("sleep 1000 & echo $! > {}; wait", pids.display()),
        });
        s.timeout = Duration::from_millis(500);
        let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string())];
        assert!(!probe(&s, None, dir.path(), &env, None).await);
        let pid: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
                st.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    == Some("Z")
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !gone() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !gone() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the probe's sleeper {pid} outlived the probe");
        }
    }

    #[test]
    fn admission_needs_consecutive_passes_and_min_healthy_time() {
        let s = spec();
        let t0 = Instant::now();
        let mut t = Tracker::default();
        assert_eq!(t.observe(true, t0, &s), None);
        assert_eq!(t.observe(true, t0, &s), None);
        assert_eq!(t.observe(true, t0, &s), Some(Health::Healthy));
        assert!(!t.admitted(t0 + Duration::from_secs(1), &s));
        assert!(t.admitted(t0 + Duration::from_secs(2), &s));
    }

    #[test]
    fn a_flapping_instance_is_never_admitted() {
        let s = spec();
        let t0 = Instant::now();
        let mut t = Tracker::default();
        for i in 0..50 {
            // pass, pass, fail: never three in a row
            t.observe(i % 3 != 2, t0 + Duration::from_secs(i), &s);
            assert!(!t.admitted(t0 + Duration::from_secs(i), &s));
        }
        assert_eq!(t.state(), Health::Unknown);
    }

    #[test]
    fn unhealthy_after_consecutive_failures_and_back() {
        let s = spec();
        let t0 = Instant::now();
        let mut t = Tracker::default();
        for _ in 0..3 {
            t.observe(true, t0, &s);
        }
        assert_eq!(t.observe(false, t0, &s), None);
        assert_eq!(t.observe(false, t0, &s), Some(Health::Unhealthy));
        assert!(!t.admitted(t0 + Duration::from_secs(10), &s));
        t.observe(true, t0, &s);
        t.observe(true, t0, &s);
        assert_eq!(
            t.observe(true, t0 + Duration::from_secs(10), &s),
            Some(Health::Healthy)
        );
        assert!(t.was_healthy);
    }

    #[tokio::test]
    async fn http_probe_checks_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for (i, stream) in listener.incoming().enumerate() {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let status = if i == 0 {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        assert!(http_probe(addr, "/health", None).await);
        assert!(!http_probe(addr, "/health", None).await);
        assert!(!http_probe("127.0.0.1:1".parse().unwrap(), "/health", None).await);
    }

    /// An app that writes its answer in pieces, as Python's `http.server` does (status
    /// line, then headers and body), and counts the connections that were reset under
    /// it. Every probe must read the whole answer and close cleanly: zero resets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_probe_reads_the_whole_answer_and_never_resets_the_app() {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let resets = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (r, n) = (resets.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let body = "x".repeat(8 * 1024);
                let pieces = [
                    "HTTP/1.0 200 OK\r\n".to_string(),
                    format!(
                        "Server: SimpleHTTP/0.6 Python/3\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    ),
                    body,
                ];
                let mut failed = false;
                for p in pieces {
                    // The probe has had time to act on what it got so far.
                    std::thread::sleep(Duration::from_millis(5));
                    if s.write_all(p.as_bytes()).and_then(|_| s.flush()).is_err() {
                        failed = true;
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
                // What the peer does last: a FIN (read returns 0) or a reset.
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        for _ in 0..30 {
            assert!(http_probe(addr, "/health", None).await);
        }
        for _ in 0..3000 {
            if served.load(Ordering::SeqCst) == 30 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(served.load(Ordering::SeqCst), 30);
        assert_eq!(
            resets.load(Ordering::SeqCst),
            0,
            "connections reset under the app"
        );
        assert!(!http_probe(addr, "/bad\r\nX-Evil: 1", None).await);
    }
}
