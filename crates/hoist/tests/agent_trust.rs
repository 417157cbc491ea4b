//! Issue 14, the agent's side: what an operator relies on over months. The API stays
//! answerable while the state database is held up, hostile query strings are answered
//! instead of crashing a handler, concurrent secret writes all land.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::wait_until;

/// One raw HTTP/1.1 exchange over the agent's socket; the answer as text (lossy).
fn raw(socket: &Path, request: &[u8]) -> std::io::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn get(socket: &Path, path: &str) -> std::io::Result<String> {
    raw(
        socket,
        format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// A writer holds the state database (an exclusive SQLite transaction, as a slow disk
/// would hold a commit), and requests that must write are waiting on it. The API still
/// answers `GET /v1/hello` while they wait: state access never occupies the runtime's
/// workers. Before the fix the waiting writers held both workers and hello answered
/// only after they had given up.
#[test]
fn the_api_answers_while_the_state_database_is_held_up() {
    let host = Host::new();
    let p = host.project("locked", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let db = rusqlite::Connection::open(host.root.join("state.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let socket = host.socket.clone();
            let finished = finished.clone();
            std::thread::spawn(move || {
                // A service action records an operation first: a state write.
                let _ = raw(
                    &socket,
                    b"POST /v1/services/demo/web/restart HTTP/1.1\r\nHost: agent\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Let the writers reach the database (they then wait for its lock, seconds).
    std::thread::sleep(Duration::from_millis(500));
    let hello = get(&host.socket, "/v1/hello").unwrap();
    let pending = 3 - finished.load(Ordering::SeqCst);
    db.execute_batch("ROLLBACK").unwrap();
    for w in writers {
        w.join().unwrap();
    }
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert_eq!(
        pending, 3,
        "hello answered only after writers waiting on the state had finished"
    );
    // The agent is whole afterwards.
    wait_until(Duration::from_secs(30), || host.serving().is_some()).unwrap();
}

/// `%` followed by a multi-byte character in a query value: answered (the value decoded
/// lossily), not a panic that drops the connection.
#[test]
fn a_percent_before_a_multibyte_character_is_answered() {
    let host = Host::new();
    let p = host.project("pct", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for query in [
        "grep=%\u{e9}t\u{e9}",
        "grep=%%\u{20ac}",
        "grep=a%e",
        "grep=%C3%A9+x",
    ] {
        let req = format!(
            "GET /v1/logs/demo/web?tail=5&{query} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
        );
        let resp = raw(&host.socket, req.as_bytes()).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.1 400"),
            "{query}: {resp:?}"
        );
    }
    // And the CLI's encoder round-trips through the agent's decoder.
    let out = host.hoist(&[
        "logs",
        "web",
        "-c",
        p.join("hoist.toml").to_str().unwrap(),
        "--grep",
        "é %+&=",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Twenty `hoist secrets set` at once, each a different name: every one is kept.
#[test]
fn concurrent_secret_sets_all_land() {
    let host = Host::new();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut c = std::process::Command::new(hoist_testkit::hoist_bin())
                .args(["secrets", "set", &format!("NAME_{i}"), "--app", "demo"])
                .env("HOIST_SOCKET", &host.socket)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(b"value").unwrap();
            c
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let out = host.hoist(&["secrets", "list", "--app", "demo"]);
    let listed = text(&out.stdout);
    for i in 0..20 {
        assert!(
            listed.contains(&format!("NAME_{i}")),
            "NAME_{i} lost: {listed}"
        );
    }
}

/// `--socket PATH` naming a regular file: the agent refuses and the file is untouched.
/// A stale socket (an agent SIGKILLed) is still replaced (`agent_cli` covers that).
#[test]
fn the_agent_never_replaces_a_regular_file_with_its_socket() {
    let dir = hoist_testkit::tempdir();
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let out = std::process::Command::new(hoist_testkit::hoist_bin())
        .args(["agent", "--root"])
        .arg(dir.path().join("root"))
        .arg("--socket")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a socket"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// A root the operator created 0755 beforehand, and a caller's umask of 0: the agent
/// makes the root 0700, and its state, logs and the proxy's access log are readable by
/// no other user.
#[test]
fn the_agent_keeps_its_root_private_whatever_it_finds() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // The umask is the test process's, inherited by the agent it starts.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let host = Host::new_with(|root| {
        std::fs::create_dir(root).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    });
    nix::sys::stat::umask(old);
    let root = host.root.clone();
    let p = host.project("private", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || host.serving().is_some()).unwrap();
    assert_eq!(mode(&root), 0o700, "root");
    let mut files = vec![root.join("state.db")];
    for e in walk(&root.join("logs"))
        .into_iter()
        .chain(walk(&root.join("proxy")))
    {
        if e.is_file() {
            files.push(e);
        }
    }
    assert!(files.len() > 2, "{files:?}");
    for f in files {
        assert_eq!(mode(&f) & 0o007, 0, "{} is {:o}", f.display(), mode(&f));
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn alive(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
}

/// `hoist agent stop`: the agent exits (status 0) and its socket goes; the instances and
/// the proxy keep serving; a new agent re-adopts the same processes.
#[test]
fn agent_stop_ends_the_agent_and_leaves_the_app_serving() {
    let mut host = Host::new();
    let p = host.project("stop", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || host.serving().is_some()).unwrap();
    let before = host.pids();
    let out = host.hoist(&["agent", "stop"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("keep running"),
        "{}",
        text(&out.stderr)
    );
    let status = host.agent.as_mut().unwrap().child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    host.agent = None;
    assert!(!host.socket.exists());
    assert!(before.iter().all(|(_, pid)| alive(*pid)), "{before:?}");
    assert!(host.serving().is_some());
    host.start_agent();
    wait_until(Duration::from_secs(20), || host.pids() == before).unwrap();
}

/// `hoist down`: every instance stops, the routes go, the history records it, and the
/// next deploy brings the app back.
#[test]
fn down_stops_the_app_and_its_routes_and_is_in_the_history() {
    let host = Host::new();
    let p = host.project("down", "", "");
    let cfg = p.join("hoist.toml").display().to_string();
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || host.serving().is_some()).unwrap();
    let pids = host.pids();
    let out = host.hoist(&["down", "-c", &cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(30), || {
        pids.iter().all(|(_, pid)| !alive(*pid))
    })
    .unwrap_or_else(|_| panic!("instances still running: {pids:?}"));
    assert_eq!(host.serving(), None);
    let st = host.status();
    assert!(st["apps"][0]["release"].is_null(), "{st}");
    assert_eq!(
        st["apps"][0]["instances"].as_array().unwrap().len(),
        0,
        "{st}"
    );
    let hist: serde_json::Value =
        serde_json::from_slice(&host.hoist(&["history", "--json"]).stdout).unwrap();
    let last = hist.as_array().unwrap().last().unwrap();
    assert_eq!(last["kind"], "down", "{last}");
    assert_eq!(last["result"], "succeeded", "{last}");
    // A second `down` has nothing to stop.
    let out = host.hoist(&["down", "-c", &cfg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // Nothing comes back by itself, even across an agent restart...
    let mut host = host;
    host.kill_agent();
    host.start_agent();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(host.serving(), None);
    // ...and a deploy brings it back.
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || host.serving().is_some()).unwrap();
}

fn plan_clock(host: &Host, cfg: &str, faketime: Option<&str>) -> (Option<i32>, serde_json::Value) {
    let mut cmd = match faketime {
        Some(offset) => {
            let mut c = std::process::Command::new("faketime");
            c.args(["-f", offset]).arg(hoist_testkit::hoist_bin());
            c
        }
        None => std::process::Command::new(hoist_testkit::hoist_bin()),
    };
    let out = cmd
        .args(["plan", "--json", "-c", cfg])
        .env("HOIST_SOCKET", &host.socket)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {} {}", text(&out.stdout), text(&out.stderr)));
    let clock = plan["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clock")
        .cloned()
        .unwrap();
    (out.status.code(), clock)
}

/// `hoist plan` compares the host's clock with the CLI's: a CLI whose clock is a minute
/// behind (libfaketime) sees the check fail, naming the difference; in step, it passes.
#[test]
fn plan_compares_the_host_clock_with_the_cli_clock() {
    let host = Host::new();
    let p = host.project("clock", "", "");
    let cfg = p.join("hoist.toml").display().to_string();
    let (code, clock) = plan_clock(&host, &cfg, None);
    assert_eq!(code, Some(0), "{clock}");
    assert_eq!(clock["ok"], true, "{clock}");
    assert!(
        clock["detail"].as_str().unwrap().contains("within"),
        "{clock}"
    );
    let (code, clock) = plan_clock(&host, &cfg, Some("-60s"));
    assert_eq!(code, Some(1), "{clock}");
    assert_eq!(clock["ok"], false, "{clock}");
    let detail = clock["detail"].as_str().unwrap();
    assert!(detail.contains("ahead of"), "{detail}");
}

/// Retention from the host config (`[retention] history_max = 3`): an agent that
/// starts prunes the history down to the newest records plus its own `retention`
/// record, and `hoist history --verify` still passes; later deploys chain on.
#[test]
fn retention_prunes_the_history_and_it_still_verifies() {
    let mut host = Host::new();
    for i in 0..5 {
        let p = host.project(&format!("ret{i}"), "", "");
        let out = host.deploy(&p);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let config = host.dir.join("agent.toml");
    std::fs::write(
        &config,
        "[retention]\nhistory_max = 3\nevents_max = 10\noperations_max = 2\n",
    )
    .unwrap();
    host.kill_agent();
    host.agent_args = vec!["--config".into(), config.display().to_string()];
    host.start_agent();
    let history = |host: &Host| -> Vec<serde_json::Value> {
        let out = host.hoist(&["history", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    wait_until(Duration::from_secs(30), || {
        history(&host).iter().any(|r| r["kind"] == "retention")
    })
    .unwrap_or_else(|_| panic!("never pruned: {:?}", history(&host)));
    let h = history(&host);
    assert_eq!(h.len(), 4, "{h:?}");
    assert_eq!(h[0]["seq"], 3, "{h:?}");
    let out = host.hoist(&["history", "--verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let p = host.project("ret-after", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = host.hoist(&["history", "--verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let events = text(&host.hoist(&["events", "--json"]).stdout);
    assert!(events.lines().count() <= 10 + 20, "{events}");
}

/// The health probe against a real Python `http.server` app (it writes the status line,
/// then headers and body in separate writes): every connection the app saw ends
/// cleanly. Before the fix about one probe in three was reset under the app, which
/// logged a `ConnectionResetError`/`BrokenPipeError` traceback.
#[test]
fn health_probes_never_reset_a_python_app() {
    let host = Host::new();
    let dir = host.dir.join("py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.py"),
        r#"import http.server, os, sys

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"x" * 16384
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print("served", self.path, flush=True)

    def log_message(self, *args):
        pass

class S(http.server.HTTPServer):
    def handle_error(self, request, client_address):
        print("connection error:", sys.exc_info()[0].__name__, flush=True)

S(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("hoist.toml"),
        r#"app = "py"

[build]
include = ["app.py"]

[services.web]
command = "python3 app.py"
replicas = 1
http = { domains = ["*"], health = { path = "/health", interval = "100ms", healthy_threshold = 1, min_healthy = "0s" } }

[[hosts]]
name = "local"
roles = ["web"]
"#,
    )
    .unwrap();
    let cfg = dir.join("hoist.toml").display().to_string();
    let out = host.hoist(&["deploy", "-c", &cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logs = || {
        text(
            &host
                .hoist(&["logs", "web", "-c", &cfg, "--tail", "100000"])
                .stdout,
        )
    };
    wait_until(Duration::from_secs(60), || {
        logs().matches("served /health").count() >= 60
    })
    .unwrap_or_else(|_| panic!("too few probes: {}", logs()));
    let all = logs();
    assert_eq!(
        all.matches("connection error").count(),
        0,
        "connections reset under the app:\n{all}"
    );
}

/// A state write that fails (here a trigger makes SQLite refuse to count a restart, as a
/// failing disk would refuse any write) is not dropped: the agent records a
/// `state.error` event naming what it could not record, and keeps supervising.
#[test]
fn a_failed_state_write_becomes_an_event() {
    let host = Host::new();
    let p = host.project("staterr", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = rusqlite::Connection::open(host.root.join("state.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse_restarts BEFORE UPDATE OF restarts ON instances
         BEGIN SELECT RAISE(ABORT, 'the disk refused the write'); END;",
    )
    .unwrap();
    let (_, pid) = host.pids()[0].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let events = || text(&host.hoist(&["events", "--json"]).stdout);
    wait_until(Duration::from_secs(30), || {
        events().lines().any(|l| {
            l.contains("\"state.error\"")
                && l.contains("count a restart")
                && l.contains("the disk refused the write")
        })
    })
    .unwrap_or_else(|_| panic!("no state.error event: {}", events()));
    // Supervision went on: the instance was started again.
    wait_until(Duration::from_secs(30), || {
        host.pids().iter().all(|(_, p)| *p != 0 && *p != pid)
    })
    .unwrap();
}

/// The uid of a live process.
fn uid_of(pid: u64) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// #12: a root agent runs apps as the apps' own user (`hoist-apps`, which `hoist setup`
/// creates), never as itself and the proxy; its directories let that user reach its
/// release (read-only) and its data dir; `--apps-user root` keeps apps beside the agent,
/// as the operator's explicit choice. The agent runs in a mount namespace with an /etc
/// of its own, where the user is created, so this machine gets no new user.
#[test]
fn a_root_agent_runs_apps_as_their_own_user() {
    let mut host = Host::new();
    let apps_uid = host.restart_with_apps_user();
    let etc = host.dir.join("etc");
    let job = format!(
        "[jobs.note]\ncommand = \"{} job --name note\"\nevery = \"1h\"\n\n[deploy]",
        hoist_testkit::testapp_bin().display()
    );
    let p = host.project("v1", "", "");
    // The check hook notes its groups where the apps' user may write.
    let shared = host.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let check = format!("{} check", hoist_testkit::testapp_bin().display());
    let toml = std::fs::read_to_string(p.join("hoist.toml"))
        .unwrap()
        .replacen("[deploy]", &job, 1)
        .replacen(
            &format!("command = \"{check}\""),
            &format!(
                "command = \"sh -c 'id -G > {}/hook-groups; exec {check}'\"",
                shared.display()
            ),
            1,
        );
    std::fs::write(p.join("hoist.toml"), toml).unwrap();
    // The deploy runs the app's `check` hook as the apps' user too.
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || host.serving().is_some()).unwrap();
    let proxy = common::proxy_pid(&host.root).unwrap() as u64;
    assert_eq!(uid_of(proxy), 0, "the proxy runs as the agent does");
    let pids = host.pids();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for (id, pid) in &pids {
        assert_eq!(uid_of(*pid), apps_uid, "{id} runs as the apps' user");
    }
    // Hooks keep the user's supplementary groups, as its instances do.
    let extra = std::fs::read_to_string(etc.join("extra")).unwrap();
    let hook_groups = std::fs::read_to_string(shared.join("hook-groups")).unwrap();
    assert!(
        hook_groups.split_whitespace().any(|g| g == extra.trim()),
        "the check hook ran without the group {} (its groups: {hook_groups})",
        extra.trim()
    );
    // A job writes its data dir, as that user.
    let cfg = p.join("hoist.toml");
    let out = host.hoist(&["jobs", "run", "note", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = host.root.join("data/demo/job-note.log");
    wait_until(Duration::from_secs(20), || written.exists()).expect("the job wrote its data dir");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), apps_uid);
    // The state, secrets and logs stay out of its reach.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&host.root), 0o711);
    for d in ["secrets", "logs", "run", "proxy", "tmp"] {
        assert_eq!(mode(&host.root.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&host.root.join("state.db")) & 0o077, 0);

    // The operator's explicit choice: apps beside the agent, as root.
    host.kill_agent();
    host.agent_args = vec!["--apps-user".into(), "root".into()];
    host.start_agent();
    let out = host.deploy(&host.project("v2", "", ""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r2 = common::release_of(&out);
    // v1's instances stay on standby, as they were started.
    let pids: Vec<(String, u64)> = host
        .pids()
        .into_iter()
        .filter(|(id, _)| id.contains(&r2[..8]))
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    for (id, pid) in &pids {
        assert_eq!(uid_of(*pid), 0, "{id} runs as root when asked");
    }
}
