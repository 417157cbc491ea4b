//! The agent through the real binary: its socket, one agent per root, surviving a stale
//! socket after SIGKILL, secrets set from stdin and never shown, the `connect` bridge.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hoist_testkit::{hoist_bin, tempdir, wait_until, ChildGuard};

struct Agent {
    guard: ChildGuard,
    root: PathBuf,
    socket: PathBuf,
}

fn start_agent(dir: &Path) -> Agent {
    let root = dir.join("root");
    let socket = dir.join("agent.sock");
    let guard = ChildGuard::spawn(
        Command::new(hoist_bin())
            .args(["agent", "--root"])
            .arg(&root)
            .arg("--socket")
            .arg(&socket)
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap()),
    )
    .unwrap();
    let a = Agent {
        guard,
        root,
        socket,
    };
    wait_until(Duration::from_secs(20), || {
        hoist(&a, &["secrets", "list", "--app", "x"])
            .status
            .success()
    })
    .expect("agent answers");
    a
}

fn hoist(agent: &Agent, args: &[&str]) -> Output {
    hoist_stdin(agent, args, "")
}

fn hoist_stdin(agent: &Agent, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(hoist_bin())
        .args(args)
        .env("HOIST_SOCKET", &agent.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn secrets_are_set_from_stdin_kept_0600_and_never_shown() {
    let dir = tempdir();
    let agent = start_agent(dir.path());
    let canary = "canary-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4";

    let out = hoist_stdin(
        &agent,
        &["secrets", "set", "DATABASE_URL", "--app", "notes"],
        &format!("{canary}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = hoist(&agent, &["secrets", "list", "--app", "notes", "--json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["names"], serde_json::json!(["DATABASE_URL"]));

    let file = agent.root.join("secrets/notes.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        stored["DATABASE_URL"], canary,
        "the trailing newline is not part of the value"
    );
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(!log.contains(canary), "the agent's log shows the secret");
    assert!(!text(&out.stderr).contains(canary) && !text(&out.stdout).contains(canary));

    let out = hoist(
        &agent,
        &["secrets", "unset", "DATABASE_URL", "--app", "notes"],
    );
    assert!(out.status.success());
    let out = hoist(
        &agent,
        &["secrets", "unset", "DATABASE_URL", "--app", "notes"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "unsetting a missing secret fails"
    );
    assert!(
        text(&out.stderr).contains("no secret `DATABASE_URL` for `notes`"),
        "{}",
        text(&out.stderr)
    );
    drop(agent.guard);
}

#[test]
fn the_socket_is_private_and_one_agent_owns_a_root() {
    let dir = tempdir();
    let agent = start_agent(dir.path());
    assert_eq!(
        std::fs::metadata(&agent.socket)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let out = Command::new(hoist_bin())
        .args(["agent", "--root"])
        .arg(&agent.root)
        .arg("--socket")
        .arg(dir.path().join("other.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("another agent is already running with root"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_agent_killed_with_sigkill_leaves_nothing_that_stops_the_next_one() {
    let dir = tempdir();
    let agent = start_agent(dir.path());
    hoist_stdin(&agent, &["secrets", "set", "K", "--app", "a"], "v");
    agent.guard.signal_group(nix::sys::signal::Signal::SIGKILL);
    drop(agent.guard);
    assert!(
        agent.socket.exists(),
        "a killed agent leaves its socket file behind"
    );
    let again = start_agent(dir.path());
    let out = hoist(&again, &["secrets", "list", "--app", "a"]);
    assert_eq!(text(&out.stdout), "K\n");
}

#[test]
fn connect_bridges_stdin_and_stdout_to_the_api() {
    let dir = tempdir();
    let agent = start_agent(dir.path());
    let out = hoist_stdin(
        &agent,
        &["agent", "connect"],
        "GET /v1/hello HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resp = hoist_testkit::parse_response(&out.stdout).expect("an HTTP response");
    assert_eq!(resp.status, 200);
    let hello: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(hello["api"], 1);
}

#[test]
fn without_an_agent_commands_say_how_to_start_one() {
    let dir = tempdir();
    let out = Command::new(hoist_bin())
        .args(["secrets", "list", "--app", "notes"])
        .env("HOIST_SOCKET", dir.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: no agent answers on"), "{err}");
    assert!(err.contains("hint: start one with `hoist agent`"), "{err}");
}

#[test]
fn another_user_cannot_reach_the_agent() {
    if !nix::unistd::geteuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("skipped: needs root and setpriv to act as another user");
        }
        return;
    }
    let dir = tempdir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = start_agent(dir.path());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(hoist_bin())
        .args(["secrets", "list", "--app", "notes"])
        .env("HOIST_SOCKET", &agent.socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("error: permission denied on the agent's socket"),
        "{}",
        text(&out.stderr)
    );
}
