//! `hoist init` then `hoist deploy`, unedited, on a real project of each kind the starter
//! templates know (issue 14: the Flask starter listed `templates/**` and `static/**`
//! whether or not they existed, and its first build failed). Each project is built by
//! its own toolchain (pip from PyPI, node, cargo), deployed through a real agent and
//! answers 200 through the proxy.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::{hoist_bin, http_get, wait_until};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, body) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

/// `hoist ARGS` run in the project directory, as a user would, against `host`'s agent.
fn hoist_in(host: &Host, dir: &Path, args: &[&str]) -> Output {
    Command::new(hoist_bin())
        .args(args)
        .current_dir(dir)
        .env("HOIST_SOCKET", &host.socket)
        // The project's own `target/`, as `include` expects, not the test's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `hoist init` then `hoist deploy` in `dir`; then `/` through the proxy must say `expect`.
fn init_and_deploy(host: &Host, dir: &Path, expect: &str) -> String {
    let out = hoist_in(host, dir, &["init"]);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let written = std::fs::read_to_string(dir.join("hoist.toml")).unwrap();
    let out = hoist_in(host, dir, &["deploy"]);
    assert!(
        out.status.success(),
        "deploy of\n{written}\nfailed: {}\n--- agent log:\n{}",
        text(&out.stderr),
        std::fs::read_to_string(host.dir.join("agent.log")).unwrap_or_default()
    );
    let mut last = String::new();
    let served = wait_until(Duration::from_secs(30), || {
        match http_get(host.proxy, "example.test", "/") {
            Ok(r) if r.status == 200 && r.body.contains(expect) => true,
            Ok(r) => {
                last = format!("{} {}", r.status, r.body);
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        }
    });
    assert!(served.is_ok(), "not served: {last}\n{}", text(&out.stderr));
    written
}

#[test]
fn flask_with_gunicorn_from_pypi() {
    let host = Host::new();
    let dir = host.dir.join("hello-flask");
    // A plain Flask project: no `templates/` or `static/`.
    write(
        &dir,
        &[
            ("requirements.txt", "flask\ngunicorn\n"),
            (
                "app.py",
                "from flask import Flask\n\napp = Flask(__name__)\n\n\
                 @app.get('/')\ndef index():\n    return 'hello from flask'\n\n\
                 @app.get('/health')\ndef health():\n    return 'ok'\n",
            ),
        ],
    );
    let written = init_and_deploy(&host, &dir, "hello from flask");
    assert!(!written.contains("templates/**"), "{written}");
    // It really is gunicorn serving, from the vendored packages.
    let st = host.status();
    let pid = st["apps"][0]["instances"][0]["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("gunicorn"), "{cmdline}");
}

#[test]
fn node_app_without_dependencies() {
    let host = Host::new();
    let dir = host.dir.join("hello-node");
    write(
        &dir,
        &[
            ("package.json", r#"{"name":"hello-node","main":"server.js"}"#),
            (
                "server.js",
                "const http = require('http');\n\
                 http.createServer((req, res) => { res.end(req.url === '/health' ? 'ok' : 'hello from node'); })\n\
                 .listen(Number(process.env.PORT), '127.0.0.1');\n",
            ),
        ],
    );
    init_and_deploy(&host, &dir, "hello from node");
}

#[test]
fn rust_binary_on_the_standard_library() {
    let host = Host::new();
    let dir = host.dir.join("hello-rs");
    write(
        &dir,
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"hello-rs\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
            ),
            (
                "src/main.rs",
                r#"use std::io::{BufRead, BufReader, Write};

fn main() {
    let port = std::env::var("PORT").expect("PORT");
    let listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
    for stream in listener.incoming().flatten() {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
            line.clear();
        }
        let body = "hello from rust";
        let _ = write!(
            reader.get_mut(),
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
"#,
            ),
        ],
    );
    let written = init_and_deploy(&host, &dir, "hello from rust");
    assert!(written.contains("[services.web]"), "{written}");
}
