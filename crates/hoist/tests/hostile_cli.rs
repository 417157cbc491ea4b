//! The CLI and the agent's API given hostile input (issue 14): names and values that would
//! do harm later are refused before anything is stored, output reaches a terminal
//! escaped, a closed pipe ends a command quietly, and another user is told why it was
//! refused.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{text, Host};
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
    child.stdin.take().unwrap().write_all(value).unwrap();
    child.wait_with_output().unwrap()
}

/// One raw HTTP/1.1 request on the agent's socket: (status, body).
fn agent_request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let r = hoist_testkit::parse_response(&raw).expect("an HTTP response");
    (r.status, r.body)
}

fn secret_files(host: &Host) -> Vec<String> {
    match std::fs::read_dir(host.root.join("secrets")) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
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
