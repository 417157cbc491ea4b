//! The CLI and the agent's API given hostile input (issue 14): names and values that would
//! do harm later are refused before anything is stored, output reaches a terminal
//! escaped, a closed pipe ends a command quietly, and another user is told why it was
//! refused.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{agent_request, text, Host};
use hoist_testkit::hoist_bin;

/// `hoist secrets set NAME --app APP` with `value` on stdin.
fn secrets_set(host: &Host, app: &str, name: &str, value: &[u8]) -> Output {
    let mut child = Command::new(hoist_bin())
        .args(["secrets", "set", name, "--app", app])
        .env("HOIST_SOCKET", &host.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal may come before the value is read: the pipe is then closed.
    let _ = child.stdin.take().unwrap().write_all(value);
    child.wait_with_output().unwrap()
}

fn secret_files(host: &Host) -> Vec<String> {
    match std::fs::read_dir(host.root.join("secrets")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // The lock file that serialises writers is not a secret file.
            .filter(|n| n != ".lock")
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn secrets_with_bad_apps_names_or_values_are_refused_by_the_cli_and_the_agent() {
    let host = Host::new();
    let cases: &[(&str, &str, &[u8], &str)] = &[
        ("", "API_KEY", b"v", "invalid app name ``"),
        ("Probe", "API_KEY", b"v", "invalid app name `Probe`"),
        ("demo", "PORT", b"1", "secret name `PORT` is reserved"),
        (
            "demo",
            "HOIST_APP",
            b"x",
            "secret name `HOIST_APP` is reserved",
        ),
        ("demo", "PATH", b"/tmp", "secret name `PATH` is reserved"),
        (
            "demo",
            "LD_PRELOAD",
            b"/tmp/x.so",
            "secret name `LD_PRELOAD` is reserved",
        ),
        ("demo", "1BAD", b"v", "invalid secret name `1BAD`"),
        ("demo", "API_KEY", b"a\0b", "contains a NUL character"),
    ];
    for (app, name, value, message) in cases {
        let out = secrets_set(&host, app, name, value);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{app}/{name}: {err}");
        assert!(err.contains(message), "{app}/{name}: {err}");
    }
    assert_eq!(secret_files(&host), Vec::<String>::new());

    // The agent's endpoint refuses the same, whoever calls it.
    for (path, body) in [
        ("/v1/secrets/Probe/API_KEY", r#"{"value":"v"}"#),
        ("/v1/secrets/demo/LD_PRELOAD", r#"{"value":"/tmp/x.so"}"#),
        ("/v1/secrets/demo/PORT", r#"{"value":"1"}"#),
        ("/v1/secrets/demo/API_KEY", r#"{"value":"a\u0000b"}"#),
    ] {
        let (status, body) = agent_request(&host.socket, "PUT", path, body);
        assert_eq!(status, 400, "{path}: {body}");
    }
    assert_eq!(secret_files(&host), Vec::<String>::new());

    // A good one is stored: the refusals above are about the input, not the endpoint.
    let out = secrets_set(&host, "demo", "API_KEY", b"value\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(secret_files(&host), vec!["demo.json".to_string()]);
}

/// Raw ESC and bidi overrides, as an app file, an archive or an app may carry them.
const ESC: char = '\x1b';
const RLO: char = '\u{202e}';

fn assert_no_raw_controls(what: &str, out: &str) {
    assert!(
        !out.contains(ESC) && !out.contains(RLO),
        "{what} printed raw control characters: {out:?}"
    );
}

#[test]
fn control_characters_from_files_archives_and_apps_are_escaped() {
    let host = Host::new();
    // A worker whose log line carries a screen clear and a right-to-left override.
    let dir = host.project(
        "evil",
        "GREETING = \"hi\\u001b]0;pwned\\u0007\\u202e\"",
        "\n[services.evil]\ncommand = \"printf 'evil \\\\033[2J\\\\342\\\\200\\\\256gnp.exe\\\\n'; exec sleep 600\"\nroles = [\"web\"]\nstop_timeout = \"1s\"\n",
    );
    let file = dir.join("hoist.toml");
    let file = file.to_str().unwrap();

    // A value from the app file.
    let out = host.hoist(&["config", "-c", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert_no_raw_controls("config", &shown);
    assert!(shown.contains("hi\\x1b]0;pwned\\x07\\u{202e}"), "{shown}");

    // A file name from the project tree, named in a refusal.
    let toml = std::fs::read_to_string(file).unwrap();
    std::fs::write(
        file,
        toml.replace(
            "include = [\"VERSION\"]",
            "include = [\"VERSION\", \"report*\"]",
        ),
    )
    .unwrap();
    let name = format!("report{ESC}[31m{RLO}fdp.exe");
    std::fs::write(dir.join(&name), "x").unwrap();
    let out = host.hoist(&["build", "-c", file]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let said = text(&out.stderr);
    assert_no_raw_controls("build", &said);
    assert!(said.contains("report\\x1b[31m\\u{202e}fdp.exe"), "{said}");
    std::fs::remove_file(dir.join(&name)).unwrap();

    // A line the app wrote to its log.
    let out = host.deploy(&dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut shown = String::new();
    hoist_testkit::wait_until(std::time::Duration::from_secs(20), || {
        shown = text(&host.hoist(&["logs", "evil", "-c", file]).stdout);
        shown.contains("evil ")
    })
    .unwrap_or_else(|e| panic!("{e}: {shown}"));
    assert_no_raw_controls("logs", &shown);
    assert!(shown.contains("evil \\x1b[2J\\u{202e}gnp.exe"), "{shown}");
}

/// Runs `hoist ARGS` with stdout (or stderr) the write end of a pipe already closed at
/// the other end, as `hoist … | head -1` leaves it once `head` is done.
fn with_closed_pipe(host: &Host, args: &[&str], stderr_closed: bool) -> Output {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut cmd = Command::new(hoist_bin());
    cmd.args(args)
        .env("HOIST_SOCKET", &host.socket)
        .stdin(Stdio::null());
    if stderr_closed {
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(write));
    } else {
        cmd.stdout(Stdio::from(write)).stderr(Stdio::piped());
    }
    cmd.output().unwrap()
}

#[test]
fn a_closed_pipe_ends_commands_quietly() {
    let host = Host::new();
    let dir = host.project("piped", "", "");
    let file = dir.join("hoist.toml");
    let file = file.to_str().unwrap();
    let out = host.deploy(&dir);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let commands: &[&[&str]] = &[
        &["config", "-c", file],
        &["config", "-c", file, "--json"],
        &["status"],
        &["status", "--json"],
        &["history", "-c", file],
        &["releases", "-c", file],
        &["logs", "web", "-c", file],
        &["events", "--json"],
        &["secrets", "list", "--app", "demo"],
        &["--help"],
    ];
    for args in commands {
        let out = with_closed_pipe(&host, args, false);
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("error"), "{args:?}: {err}");
    }
    // With stderr closed, messages are lost but the exit code still tells.
    let out = with_closed_pipe(
        &host,
        &["status", "-c", "/nonexistent/hoist.toml", "--json"],
        true,
    );
    assert!(out.status.code() != Some(101), "{out:?}");
    // A new release (the same one would be refused as already current).
    std::fs::write(dir.join("VERSION"), "piped 2").unwrap();
    let out = with_closed_pipe(&host, &["deploy", "-c", file], true);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let mut gone = host.socket.clone();
    gone.set_file_name("nothing.sock");
    let out = Command::new(hoist_bin())
        .args(["status"])
        .env("HOIST_SOCKET", &gone)
        .stderr({
            let (read, write) = nix::unistd::pipe().unwrap();
            drop(read);
            Stdio::from(write)
        })
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

#[test]
fn an_artifact_of_another_app_is_refused_before_it_is_uploaded() {
    let host = Host::new();
    let mine = host.project("mine", "", "");
    let theirs = host.project("theirs", "", "");
    let toml = std::fs::read_to_string(theirs.join("hoist.toml")).unwrap();
    std::fs::write(
        theirs.join("hoist.toml"),
        toml.replacen("app = \"demo\"", "app = \"other\"", 1),
    )
    .unwrap();
    let artifact = host.dir.join("other.tar.zst");
    let out = host.hoist(&[
        "build",
        "-c",
        theirs.join("hoist.toml").to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = host.hoist(&[
        "deploy",
        "-c",
        mine.join("hoist.toml").to_str().unwrap(),
        "--artifact",
        artifact.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the artifact is of app `other`, the app file of `demo`"),
        "{err}"
    );
    assert!(!err.contains("Uploading"), "{err}");
    assert_eq!(files_under(&host.root.join("store")), Vec::<String>::new());
    assert_eq!(
        files_under(&host.root.join("releases")),
        Vec::<String>::new()
    );
}

#[test]
fn another_user_is_told_it_was_refused() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new();
    // As if the socket's mode had been loosened: the peer's uid is still checked.
    std::fs::set_permissions(&host.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&host.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(hoist_bin())
        .arg("status")
        .env("HOIST_SOCKET", &host.socket)
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused: another user (uid 65534) may not use this agent"),
        "{err}"
    );
    assert!(!err.contains("connection"), "{err}");
    // The agent's owner is still served.
    assert!(host.hoist(&["status"]).status.success());
}

/// What a bar or a spinner leaves in a stream: carriage returns and cursor movements.
fn has_bar_traces(s: &str) -> bool {
    s.contains('\r') || s.contains("\x1b[") || s.contains("Progress") || s.contains("Working")
}

#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let host = Host::new();
    let dir = host.project("bars", "", "\n[backups.files]\ndirectory = \"files\"\n");
    let data = host.root.join("data/demo/files");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("blob"), vec![3u8; 1 << 20]).unwrap();
    let file = dir.join("hoist.toml");
    let file = file.to_str().unwrap();

    // Not a terminal: messages only, line by line, as before.
    let out = host.deploy(&dir);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!has_bar_traces(&err), "{err:?}");
    let lines: Vec<&str> = err
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(lines[..3], ["Built", "Uploaded", "Step"], "{err}");
    let out = host.hoist(&["backup", "-c", file]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!has_bar_traces(&err), "{err:?}");
    assert!(err.starts_with("   Backed up `files` of `demo`"), "{err}");

    // --json: stdout is JSON lines, stderr has no bar.
    std::fs::write(dir.join("VERSION"), "bars 2").unwrap();
    let out = host.hoist(&["deploy", "-c", file, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !has_bar_traces(&text(&out.stderr)),
        "{:?}",
        text(&out.stderr)
    );
    for line in text(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // A terminal (a pty from `script`): the upload's bar and the backup's spinner are drawn.
    std::fs::write(dir.join("VERSION"), "bars 3").unwrap();
    let typescript = host.dir.join("deploy.tty");
    let run = |cmd: &str, typescript: &Path| {
        let out = Command::new("script")
            .args(["-qec", cmd])
            .arg(typescript)
            .env("HOIST_SOCKET", &host.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&std::fs::read(typescript).unwrap()).into_owned()
    };
    let hoist = hoist_bin();
    let shown = run(
        &format!("{} deploy -c {file}", hoist.display()),
        &typescript,
    );
    assert!(
        shown.contains("Progress") && shown.contains("upload ["),
        "{shown:?}"
    );
    let shown = run(
        &format!("{} backup -c {file}", hoist.display()),
        &host.dir.join("backup.tty"),
    );
    assert!(
        shown.contains("Working") && shown.contains("every backup of `demo`"),
        "{shown:?}"
    );
}
