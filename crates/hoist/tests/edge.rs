//! The proxy's edge with real processes (issues 12 and 14): nobody else can join its
//! listening port, a second agent on the same address fails clearly, a proxy killed with
//! SIGKILL refuses no connection (the agent keeps its listening socket and restarts it on
//! the same one), and the agent and the proxy raise their open-files limit.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{proxy_pid, release_of, text, Host, Load};
use hoist_testkit::{hoist_bin, http_get, wait_until, ChildGuard};

fn deployed() -> Host {
    let host = Host::new();
    let project = host.project("v1", "", "");
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(host.serving().is_some());
    host
}

/// Tries to bind `addr` the way a process that wants a share of the traffic would
/// (SO_REUSEADDR and SO_REUSEPORT, as a Python `socket` can); returns errno on failure.
fn bind_with_reuseport(addr: SocketAddr) -> Result<(), i32> {
    let SocketAddr::V4(v4) = addr else {
        panic!("v4 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let result = if rc == 0 && libc::listen(fd, 16) == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        };
        libc::close(fd);
        result
    }
}

#[test]
fn no_other_process_can_bind_the_proxys_port_with_so_reuseport() {
    let host = deployed();
    let got = bind_with_reuseport(host.proxy);
    assert_eq!(
        got,
        Err(libc::EADDRINUSE),
        "a foreign SO_REUSEPORT socket joined the proxy's port"
    );
    // Every request is still the proxy's.
    for _ in 0..20 {
        assert_eq!(http_get(host.proxy, "demo.test", "/").unwrap().status, 200);
    }
}

#[test]
fn a_second_agent_on_the_same_proxy_address_exits_with_a_clear_message() {
    let host = Host::new();
    let dir = hoist_testkit::tempdir();
    let log = dir.path().join("agent.log");
    let mut second = ChildGuard::spawn(
        Command::new(hoist_bin())
            .args(["agent", "--root"])
            .arg(dir.path().join("root"))
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .arg("--proxy")
            .arg(host.proxy.to_string())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    // It must exit by itself (before the fix it said "proxy started" and ran on).
    let mut status = None;
    wait_until(Duration::from_secs(60), || {
        status = second.child.try_wait().ok().flatten();
        status.is_some()
    })
    .expect("the second agent exits");
    let out = std::process::Output {
        status: status.unwrap(),
        stdout: Vec::new(),
        stderr: std::fs::read(&log).unwrap(),
    };
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the second agent started: {err}");
    assert!(
        err.contains(&host.proxy.to_string()) && err.contains("in use"),
        "the message names the address: {err}"
    );
    assert!(!err.contains("proxy started"), "{err}");
    // The first agent's proxy still serves.
    assert!(proxy_pid(&host.root).is_ok());
}

#[test]
fn a_proxy_killed_with_sigkill_refuses_no_connection() {
    let mut host = deployed();
    let load = Load::start(host.proxy);
    let kill_and_wait = |host: &Host| {
        let pid = proxy_pid(&host.root).expect("the proxy answers");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // The agent notices within a second and starts it again on the same socket.
        wait_until(Duration::from_secs(30), || {
            proxy_pid(&host.root).is_ok_and(|p| p != pid)
        })
        .expect("the agent restarted the proxy");
        std::thread::sleep(Duration::from_millis(300));
    };
    for _ in 0..3 {
        kill_and_wait(&host);
    }
    // An agent started while the proxy runs takes its socket from the proxy.
    host.kill_agent();
    host.start_agent();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..2 {
        kill_and_wait(&host);
    }
    let (ok, failed, errors) = load.finish();
    let refused: Vec<_> = errors
        .iter()
        .filter(|e| e.to_ascii_lowercase().contains("refused"))
        .collect();
    assert!(ok > 0);
    assert!(
        refused.is_empty(),
        "{} of {} requests were refused: {refused:?}",
        refused.len(),
        ok + failed
    );
    // Requests in flight at a kill may fail (closed without an answer); none is refused.
    assert!(failed <= 4 * 5 + 4, "{failed} failed: {errors:?}");
}

fn soft_and_hard_open_files(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let mut fields = line.split_whitespace().skip(3);
    (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    )
}

#[test]
fn the_agent_and_the_proxy_raise_their_open_files_limit() {
    let dir = hoist_testkit::tempdir();
    let root = dir.path().join("root");
    let socket = dir.path().join("agent.sock");
    let proxy = SocketAddr::from(([127, 0, 0, 1], hoist_testkit::free_port()));
    let mut cmd = Command::new(hoist_bin());
    cmd.args(["agent", "--root"])
        .arg(&root)
        .arg("--socket")
        .arg(&socket)
        .arg("--proxy")
        .arg(proxy.to_string())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; `ulimit -Sn 256` before exec.
    unsafe {
        cmd.pre_exec(|| {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
            setrlimit(Resource::RLIMIT_NOFILE, 256, hard)?;
            Ok(())
        });
    }
    let agent = ChildGuard::spawn(&mut cmd).unwrap();
    wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .expect("the agent answers");
    let proxy_pid = proxy_pid(&root).expect("the proxy answers");
    let _proxy_guard = KillOnDrop(proxy_pid);
    let (soft, hard) = soft_and_hard_open_files(agent.pid() as i32);
    assert_ne!(hard, "256", "the test needs a hard limit above 256");
    assert_eq!(soft, hard, "the agent's soft limit");
    let (soft, hard) = soft_and_hard_open_files(proxy_pid);
    assert_eq!(soft, hard, "the proxy's soft limit");
}

struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn two_apps_cannot_claim_the_same_domain_and_prefix() {
    let host = deployed();
    let first = host.serving().unwrap();
    let project = host.project("other", "", "");
    let file = project.join("hoist.toml");
    let toml = std::fs::read_to_string(&file)
        .unwrap()
        .replace("app = \"demo\"", "app = \"other\"");
    std::fs::write(&file, &toml).unwrap();
    let config = file.to_str().unwrap();

    let plan = host.hoist(&["plan", "-c", config]);
    let said = format!("{}{}", text(&plan.stdout), text(&plan.stderr));
    assert!(!plan.status.success(), "plan passed: {said}");
    assert!(said.contains("`demo`") && said.contains("`*`"), "{said}");

    let out = host.deploy(&project);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "the deploy took the route: {said}");
    assert!(said.contains("held by app `demo`"), "{said}");
    // The first app still gets every request.
    for _ in 0..10 {
        assert_eq!(host.serving().as_deref(), Some(first.as_str()));
    }

    // Its own domain is fine.
    std::fs::write(
        &file,
        toml.replace("domains = [\"*\"]", "domains = [\"other.test\"]"),
    )
    .unwrap();
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host.serving().as_deref(), Some(first.as_str()));
    let other = http_get(host.proxy, "other.test", "/").unwrap();
    assert_eq!(other.status, 200);
    assert_ne!(other.body, "");
}

#[test]
fn malformed_chunked_bodies_from_a_client_do_not_fail_a_bake() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let host = Host::new();
    let bake = "bake = { duration = \"4s\", max_5xx_percent = 1 }";
    let v1 = host.project("v1", "", bake);
    let out = host.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let load = Load::start(host.proxy);
    // A hostile client sends broken chunked bodies for the whole deploy.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let bodies = [
        "ZZZ\r\nhello\r\n0\r\n\r\n",
        "-1\r\nhello\r\n0\r\n\r\n",
        "12345678901234567890\r\nhello\r\n0\r\n\r\n",
        "5\nhello\n0\n\n",
    ];
    let hostile = {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), host.proxy);
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                for body in bodies {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = write!(
                        s,
                        "POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
                    );
                    let mut out = Vec::new();
                    let _ = s.read_to_end(&mut out);
                    statuses.push(String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned());
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            statuses
        })
    };
    let v2 = host.project("v2", "", bake);
    let out = host.deploy(&v2);
    stop.store(true, Ordering::Relaxed);
    let statuses = hostile.join().unwrap();
    let (ok, failed, errors) = load.finish();
    assert!(
        out.status.success(),
        "the bake failed on the client's errors: {}",
        text(&out.stderr)
    );
    assert_eq!(host.serving().as_deref(), Some(release_of(&out).as_str()));
    assert!(
        sent.load(Ordering::Relaxed) >= 40,
        "{}",
        sent.load(Ordering::Relaxed)
    );
    // 400 from the proxy (or the app's own 4xx when it answered before the body broke);
    // never a 5xx.
    let not_4xx: Vec<_> = statuses
        .iter()
        .filter(|s| !s.is_empty() && !s.starts_with("HTTP/1.1 4"))
        .take(10)
        .collect();
    assert!(not_4xx.is_empty(), "{not_4xx:?}");
    assert!(ok > 0);
    assert_eq!(failed, 0, "{errors:?}");
}

#[test]
fn with_the_agent_dead_an_instance_that_dies_stops_getting_requests() {
    let mut host = deployed();
    // The app process groups of the two instances, from their identity records.
    let mut groups = Vec::new();
    for e in std::fs::read_dir(host.root.join("run")).unwrap().flatten() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(e.path()).unwrap_or_default(),
        ) else {
            continue;
        };
        if let Some(pid) = v["process"]["pid"].as_i64() {
            groups.push(pid as i32);
        }
    }
    assert_eq!(groups.len(), 2, "two instances");
    host.kill_agent();
    let load = Load::start(host.proxy);
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(groups[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Long enough for many passes over both members (and for backoffs to expire).
    let mut served = 0;
    for _ in 0..300 {
        let r = http_get(host.proxy, "demo.test", "/").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        served += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, failed, errors) = load.finish();
    assert!(served > 0 && ok > 0);
    assert_eq!(failed, 0, "{:?}", &errors[..errors.len().min(10)]);
}

/// A project whose web service has guards in its `http` table.
fn guarded_project(host: &Host, name: &str, guards: &str) -> std::path::PathBuf {
    let project = host.project(name, "", "\n[secrets]\nrequired = [\"HTPASSWD\"]");
    let file = project.join("hoist.toml");
    let toml = std::fs::read_to_string(&file).unwrap().replace(
        "drain_timeout = \"2s\" }",
        &format!("drain_timeout = \"2s\", {guards} }}"),
    );
    std::fs::write(&file, toml).unwrap();
    project
}

#[test]
fn guards_declared_in_the_app_file_reach_the_proxy() {
    use base64::Engine as _;
    let host = Host::new();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let mut set = Command::new(hoist_bin())
        .args(["secrets", "set", "HTPASSWD", "--app", "demo"])
        .env("HOIST_SOCKET", &host.socket)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        set.stdin.as_mut().unwrap(),
        format!("alice:{hash}\n").as_bytes(),
    )
    .unwrap();
    drop(set.stdin.take());
    assert!(set.wait().unwrap().success());
    let project = guarded_project(
        &host,
        "v1",
        "max_body = \"1KiB\", basic_auth = { secret = \"HTPASSWD\", realm = \"staff\" }, \
         rate_limit = { requests = 1, per = \"1m\", burst = 20, key = [\"X-Client\"] }",
    );
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let auth = format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode("alice:pw")
    );
    let ask = |extra: &str, body: &str| {
        let raw = format!(
            "POST / HTTP/1.1\r\nHost: demo.test\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = std::net::TcpStream::connect(host.proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std::io::Write::write_all(&mut s, raw.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut out);
        hoist_testkit::parse_response(&out).map(|r| r.status)
    };
    assert_eq!(ask("X-Client: a\r\n", ""), Some(401), "no credentials");
    // With credentials the app answers (whatever it says to a POST /).
    let through = ask(&format!("X-Client: a\r\n{auth}"), "x");
    assert!(
        through.is_some_and(|s| ![401, 413, 429].contains(&s) && s < 500),
        "{through:?}"
    );
    let big = "x".repeat(2000);
    assert_eq!(ask(&format!("X-Client: b\r\n{auth}"), &big), Some(413));
    // The health path is exempt from auth (the agent's checks go to instances directly).
    assert_eq!(
        http_get(host.proxy, "demo.test", "/health").unwrap().status,
        200
    );
    // Client `c` spends its burst, then gets 429.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(ask(&format!("X-Client: c\r\n{auth}"), ""));
    }
    assert!(
        statuses[..20].iter().all(|s| *s != Some(429)),
        "{statuses:?}"
    );
    assert_eq!(statuses[24], Some(429), "{statuses:?}");

    // A malformed guard is refused with its file and line.
    let bad = guarded_project(&host, "bad", "trusted_proxies = [\"10.0.0.0/99\"]");
    let plan = host.hoist(&["plan", "-c", bad.join("hoist.toml").to_str().unwrap()]);
    let err = text(&plan.stderr);
    assert!(!plan.status.success());
    assert!(
        err.contains("hoist.toml:") && err.contains("10.0.0.0/99"),
        "{err}"
    );
}

#[test]
fn maintenance_mode_under_load_survives_the_agent_and_keeps_instances_running() {
    let mut host = deployed();
    let project = host.dir.join("v1");
    let config = project.join("hoist.toml");
    let config = config.to_str().unwrap();
    let pids = host.pids();
    let load = Load::start(host.proxy);
    std::thread::sleep(Duration::from_millis(300));
    let out = host.hoist(&[
        "maintenance",
        "on",
        "--message",
        "back at noon",
        "-c",
        config,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = http_get(host.proxy, "demo.test", "/").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(r.body.contains("back at noon"), "{}", r.body);
    // It is the proxy's own state: it outlives the agent, and a new agent keeps it.
    host.kill_agent();
    assert_eq!(http_get(host.proxy, "demo.test", "/").unwrap().status, 503);
    host.start_agent();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http_get(host.proxy, "demo.test", "/").unwrap().status, 503);
    assert_eq!(host.pids(), pids, "the instances kept running");
    let out = host.hoist(&["maintenance", "off", "-c", config]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(http_get(host.proxy, "demo.test", "/").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, _failed, errors) = load.finish();
    assert!(ok > 0);
    let other: Vec<_> = errors
        .iter()
        .filter(|e| !e.starts_with("503 ") || !e.contains("back at noon"))
        .take(5)
        .collect();
    assert!(
        other.is_empty(),
        "only maintenance pages, no failures: {other:?}"
    );
    // Off by the agent's API for an app it does not run: refused with a reason.
    let out = host.hoist(&["maintenance", "on", "--app", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
}

/// The proxy's answer to the `connections` control request: (open, over capacity, max).
fn proxy_connections(root: &std::path::Path) -> (u64, u64, u64) {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(root.join("proxy/control.sock")).unwrap();
    s.write_all(b"{\"version\":1,\"request\":{\"type\":\"connections\"}}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let c = &v["response"]["ok"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
    (n("open"), n("over_capacity"), n("max"))
}

/// With `cap` connections held open, the next one is answered 503 and closed.
fn refused_over(host: &Host, cap: u64) {
    use std::io::{Read, Write};
    let before = proxy_connections(&host.root).1;
    let held: Vec<_> = (0..cap)
        .map(|_| std::net::TcpStream::connect(host.proxy).unwrap())
        .collect();
    wait_until(Duration::from_secs(20), || {
        proxy_connections(&host.root).0 == cap
    })
    .expect("the proxy counts the connections held");
    let mut next = std::net::TcpStream::connect(host.proxy).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = next.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("too many open connections"), "{answer:?}");
    assert_eq!(proxy_connections(&host.root).1, before + 1);
    drop(held);
    wait_until(Duration::from_secs(20), || {
        proxy_connections(&host.root).0 == 0
    })
    .expect("the held connections are closed");
}

/// Issue #12: the cap reached the proxy only on its command line, so a proxy that
/// outlived an agent restart kept the old agent's cap. An agent that adopts a running
/// proxy hands it its own; the proxy applies it without restarting, keeps it across
/// `hoist proxy upgrade`, and goes back to its default when the agent names none.
#[test]
fn a_restarted_agent_gives_the_running_proxy_its_connection_cap() {
    let mut host = Host::with_agent_args(&["--max-connections", "5"]);
    let pid = proxy_pid(&host.root).expect("the proxy answers");
    assert_eq!(proxy_connections(&host.root).2, 5);

    host.kill_agent();
    host.agent_args = vec!["--max-connections".into(), "2".into()];
    host.start_agent();
    wait_until(Duration::from_secs(20), || {
        proxy_connections(&host.root).2 == 2
    })
    .expect("the adopted proxy takes the new agent's cap");
    assert_eq!(
        proxy_pid(&host.root).unwrap(),
        pid,
        "the proxy was not restarted"
    );
    refused_over(&host, 2);

    // A successor started by an upgrade has the cap in force, not the one on the
    // command line its predecessor was started with.
    let out = Command::new(hoist_bin())
        .args(["proxy", "upgrade", "--control"])
        .arg(host.root.join("proxy/control.sock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let upgraded = proxy_pid(&host.root).unwrap();
    assert_ne!(upgraded, pid, "the upgrade started a successor");
    assert_eq!(proxy_connections(&host.root).2, 2, "the successor's cap");

    // An agent with no cap gives the proxy back its default (from its open-files limit).
    host.kill_agent();
    host.agent_args.clear();
    host.start_agent();
    wait_until(Duration::from_secs(20), || {
        proxy_connections(&host.root).2 > 5
    })
    .expect("the default cap again");
    assert_eq!(proxy_pid(&host.root).unwrap(), upgraded);
}

#[test]
fn the_connection_cap_comes_from_the_host_config_and_the_agent_flag() {
    use std::io::{Read, Write};
    let dir = hoist_testkit::tempdir();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "max_connections = 2\n").unwrap();
    let host = Host::with_agent_args(&["--config", config.to_str().unwrap()]);
    let _ = proxy_pid(&host.root).expect("the proxy answers");
    assert_eq!(proxy_connections(&host.root).2, 2, "the host config's cap");
    // Two idle connections fill the cap; the next is answered 503 and closed.
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(host.proxy).unwrap())
        .collect();
    wait_until(Duration::from_secs(20), || {
        proxy_connections(&host.root).0 == 2
    })
    .expect("the proxy counts both connections");
    let mut third = std::net::TcpStream::connect(host.proxy).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = third.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("too many open connections"), "{answer:?}");
    assert_eq!(proxy_connections(&host.root).1, 1);
    drop(held);
    drop(host);

    // The flag wins over the file.
    let host = Host::with_agent_args(&[
        "--config",
        config.to_str().unwrap(),
        "--max-connections",
        "7",
    ]);
    let _ = proxy_pid(&host.root).expect("the proxy answers");
    assert_eq!(proxy_connections(&host.root).2, 7, "the flag's cap");
}
