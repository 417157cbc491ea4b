//! `hoist proxy` as a process, through the real binary: it outlives the process that
//! started it, restarts from its saved table, switches its static route, and upgrades
//! itself under load without refusing a connection.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoist_protocol::proxy::{Reply, Request, Route, Upstream};
use hoist_proxy::Client;
use hoist_testkit::{hoist_bin, http_get, wait_until, ChildGuard};

/// A tiny upstream answering `name` to every request (one thread per connection).
fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    // Read one request head (these tests send no bodies).
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive GET on `conn` (opened if needed). The connection is dropped when the
/// proxy answers `Connection: close`, as HTTP clients do; any other end is a failure.
fn keep_alive_get(
    listen: SocketAddr,
    conn: &mut Option<(std::net::TcpStream, BufReader<std::net::TcpStream>)>,
) -> Result<String, String> {
    if conn.is_none() {
        let s = std::net::TcpStream::connect(listen).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        *conn = Some((s, r));
    }
    let (w, r) = conn.as_mut().unwrap();
    let result = (|| -> std::io::Result<(String, bool)> {
        w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!(
                "status line `{}`",
                line.trim_end()
            )));
        }
        let (mut len, mut close) = (0usize, false);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            close |= l == "connection: close";
        }
        let mut body = vec![0; len];
        std::io::Read::read_exact(r, &mut body)?;
        Ok((String::from_utf8_lossy(&body).into_owned(), close))
    })();
    match result {
        Ok((body, close)) => {
            if close {
                *conn = None;
            }
            Ok(body)
        }
        Err(e) => {
            *conn = None;
            Err(format!("keep-alive request: {e}"))
        }
    }
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn wait_serving(addr: SocketAddr, body: &str) {
    wait_until(Duration::from_secs(20), || {
        http_get(addr, "x", "/")
            .map(|r| r.body == body)
            .unwrap_or(false)
    })
    .unwrap_or_else(|e| panic!("proxy on {addr} never answered `{body}`: {e}"));
}

fn ping(control: &Path) -> Option<u32> {
    match Client::connect(control).ok()?.call(Request::Ping).ok()? {
        Reply::Pong { pid, .. } => Some(pid),
        _ => None,
    }
}

fn proxy_cmd(listen: SocketAddr, control: &Path) -> Command {
    let mut cmd = Command::new(hoist_bin());
    cmd.arg("proxy")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--control")
        .arg(control)
        .arg("--workers")
        .arg("2");
    cmd
}

#[test]
fn the_proxy_keeps_serving_after_the_process_that_started_it_is_killed() {
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let listen = free_addr();
    let up = upstream("alive");
    let cmd = format!(
        "{} proxy --listen {listen} --control {} --upstream {up} </dev/null >/dev/null 2>&1 & echo $!; wait",
        hoist_bin().display(),
        control.display()
    );
    let mut parent =
        ChildGuard::spawn(Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::piped())).unwrap();
    let mut pid = String::new();
    BufReader::new(parent.child.stdout.take().unwrap())
        .read_line(&mut pid)
        .unwrap();
    let proxy_pid: u32 = pid.trim().parse().unwrap();
    wait_serving(listen, "alive");
    // SIGKILL the parent alone (not its group): the proxy must not notice.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(parent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    parent.child.wait().unwrap();
    for _ in 0..20 {
        assert_eq!(http_get(listen, "x", "/").unwrap().body, "alive");
    }
    assert_eq!(ping(&control), Some(proxy_pid));
    // The guard kills the proxy with the group on drop.
}

#[test]
fn a_restarted_proxy_serves_its_saved_routes() {
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let state = dir.path().join("routes.json");
    let listen = free_addr();
    let up = upstream("saved");
    let mut cmd = proxy_cmd(listen, &control);
    cmd.arg("--state").arg(&state);
    let first = ChildGuard::spawn(&mut cmd).unwrap();
    wait_until(Duration::from_secs(20), || ping(&control).is_some()).unwrap();
    let route = Route {
        id: "notes/web".into(),
        app: "notes".into(),
        service: "web".into(),
        domains: vec!["*".into()],
        path_prefix: "/".into(),
        release: "r1".into(),
        upstreams: vec![Upstream {
            addr: up,
            instance: "web-1".into(),
        }],
        drain_timeout_ms: 1000,
        guards: Default::default(),
        tls: None,
        canary: None,
    };
    Client::connect(&control)
        .unwrap()
        .call(Request::SetRoute { route })
        .unwrap();
    wait_serving(listen, "saved");
    drop(first); // SIGKILL: no chance to save anything at exit
    let _second = ChildGuard::spawn(&mut cmd).unwrap();
    wait_serving(listen, "saved");
}

#[test]
fn switch_moves_the_static_route_and_bad_usage_exits_2() {
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let listen = free_addr();
    let (blue, green) = (upstream("blue"), upstream("green"));
    let mut cmd = proxy_cmd(listen, &control);
    cmd.arg("--upstream").arg(blue.to_string());
    let _proxy = ChildGuard::spawn(&mut cmd).unwrap();
    wait_serving(listen, "blue");
    let out = Command::new(hoist_bin())
        .args(["proxy", "switch", "--control"])
        .arg(&control)
        .args(["--upstream", &green.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http_get(listen, "x", "/").unwrap().body, "green");
    let out = Command::new(hoist_bin())
        .args(["proxy", "--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`--control`") && stderr.contains("hint:"),
        "{stderr}"
    );
}

#[test]
fn an_upgrade_under_load_refuses_no_connection() {
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let listen = free_addr();
    let up = upstream("up");
    let mut cmd = proxy_cmd(listen, &control);
    cmd.arg("--upstream").arg(up.to_string());
    let mut old = ChildGuard::spawn(&mut cmd).unwrap();
    wait_serving(listen, "up");
    let old_pid = ping(&control).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    // Half the clients open a fresh connection per request (a refused connect shows up
    // there), half keep theirs alive (a connection closed under a request shows up there).
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut conn = None;
                while !stop.load(Ordering::Relaxed) {
                    let got = if i % 2 == 0 {
                        http_get(listen, "x", "/")
                            .map(|r| r.body)
                            .map_err(|e| e.to_string())
                    } else {
                        keep_alive_get(listen, &mut conn)
                    };
                    match got {
                        Ok(body) if body == "up" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(20), || ok.load(Ordering::Relaxed) > 200).unwrap();
    // Three hand-overs in a row: each successor upgrades in turn.
    let mut pids = vec![old_pid];
    for _ in 0..3 {
        let out = Command::new(hoist_bin())
            .args(["proxy", "upgrade", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = ping(&control).expect("the successor answers on the same control socket");
        assert!(
            !pids.contains(&pid),
            "a new process serves: {pid} after {pids:?}"
        );
        pids.push(pid);
        let before = ok.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(20), || {
            ok.load(Ordering::Relaxed) > before + 100
        })
        .unwrap();
    }
    // The first process drained and exited by itself.
    wait_until(Duration::from_secs(30), || {
        old.child.try_wait().ok().flatten().is_some()
    })
    .expect("old proxy exits");
    let after = ok.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(20), || {
        ok.load(Ordering::Relaxed) > after + 200
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok.load(Ordering::Relaxed),
        failures.first()
    );
    // The successors are in the first one's process group: the guard ends them too.
    let last = *pids.last().unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(last as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn out_of_file_descriptors_the_proxy_backs_off_and_recovers() {
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let listen = free_addr();
    let up = upstream("fine");
    let mut cmd = proxy_cmd(listen, &control);
    cmd.arg("--upstream").arg(up.to_string());
    let proxy = ChildGuard::spawn(&mut cmd).unwrap();
    wait_serving(listen, "fine");
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .unwrap()
        .count();
    let limit = open_fds + 8;
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", proxy.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");
    // Far more connections than descriptors: accept fails with EMFILE for most.
    let held: Vec<_> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(listen).ok())
        .collect();
    assert!(held.len() > limit, "only {} connections opened", held.len());
    wait_until(Duration::from_secs(10), || {
        std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
            .unwrap()
            .count()
            >= limit
    })
    .expect("the proxy runs out of descriptors");
    drop(held);
    // Once the clients are gone, the proxy serves again (no restart, no spinning dead).
    wait_serving(listen, "fine");
    assert!(ping(&control).is_some());
}

/// The proxy's stats after `n` requests, with or without `--no-code-counters`:
/// (2xx responses, per-code counts).
fn counted(n: usize, extra: &[&str]) -> (u64, u64) {
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let listen = free_addr();
    let mut cmd = proxy_cmd(listen, &control);
    cmd.arg("--upstream")
        .arg(upstream("counted").to_string())
        .args(extra);
    let _proxy = ChildGuard::spawn(&mut cmd).unwrap();
    wait_serving(listen, "counted");
    for _ in 0..n {
        assert_eq!(http_get(listen, "x", "/").unwrap().body, "counted");
    }
    let Reply::Stats { routes } = Client::connect(&control)
        .unwrap()
        .call(Request::Stats)
        .unwrap()
    else {
        panic!("not stats")
    };
    let r = &routes[0];
    (r.status[1], r.requests.iter().map(|c| c.count).sum())
}

#[test]
fn no_code_counters_turns_the_per_code_counters_off_and_keeps_the_classes() {
    // wait_serving sends requests of its own: compare with what was counted by class.
    let (ok, by_code) = counted(5, &[]);
    assert!(ok >= 5 && by_code == ok, "on by default: {ok} {by_code}");
    let (ok, by_code) = counted(5, &["--no-code-counters"]);
    assert!(ok >= 5, "classes are still counted: {ok}");
    assert_eq!(by_code, 0, "no per-code counts");
}

/// The HTTP-01 peers the agent handed a proxy are kept across `hoist proxy upgrade`
/// (persisted with the certificates, beside `--state`): the successor relays a token
/// another host holds, and then across a SIGKILL and restart with no agent at all.
#[test]
fn acme_peers_are_kept_across_an_upgrade_and_a_restart() {
    use hoist_protocol::proxy::TlsRequest;
    let dir = hoist_testkit::tempdir();
    let control = dir.path().join("control.sock");
    let state = dir.path().join("routes.json");
    let listen = free_addr();
    let token = "UpgradeE6Jyg8AtauVR3PxSsefWFPtIkStD8BFXT9";
    let answer: &'static str = "UpgradeE6Jyg8AtauVR3PxSsefWFPtIkStD8BFXT9.thumb";
    // Another host's proxy, holding the token (it closes after each answer, as a proxy
    // does for the relay's `Connection: close`).
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut head = String::new();
            let mut r = BufReader::new(s.try_clone().unwrap());
            while r.read_line(&mut head).is_ok_and(|n| n > 2) {
                head.clear();
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    let mut cmd = proxy_cmd(listen, &control);
    cmd.arg("--state").arg(&state);
    let first = ChildGuard::spawn(&mut cmd).unwrap();
    wait_until(Duration::from_secs(20), || ping(&control).is_some()).unwrap();
    let reply = Client::connect(&control)
        .unwrap()
        .call(Request::Tls {
            request: TlsRequest::SetAcmePeers {
                app: "notes".into(),
                peers: vec![peer.to_string()],
            },
        })
        .unwrap();
    assert_eq!(reply, Reply::Done);
    let relayed = || {
        http_get(
            listen,
            "notes.test",
            &format!("/.well-known/acme-challenge/{token}"),
        )
        .map(|r| (r.status, r.body))
        .ok()
    };
    assert_eq!(relayed(), Some((200, answer.to_string())));
    let old_pid = ping(&control).unwrap();
    let out = Command::new(hoist_bin())
        .args(["proxy", "upgrade", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_pid = ping(&control).unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(
        relayed(),
        Some((200, answer.to_string())),
        "the upgrade's successor forgot the ACME peers"
    );
    // The successor is in the first one's process group: the guard kills both.
    drop(first);
    wait_until(Duration::from_secs(20), || ping(&control).is_none()).unwrap();
    let _again = ChildGuard::spawn(&mut cmd).unwrap();
    wait_until(Duration::from_secs(20), || ping(&control).is_some()).unwrap();
    assert_eq!(relayed(), Some((200, answer.to_string())));
}
