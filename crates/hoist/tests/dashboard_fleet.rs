//! `hoist dashboard --host NAME` for a fleet host: the agent there serves its dashboard on
//! its own loopback (`dashboard = "127.0.0.1:8421"` in its host config), and the command
//! opens an ssh local forward to that port which logs a browser in while the command runs
//! and is gone once it ends. One host of tests/netns (its own sshd); needs root and sshd.

mod common;
mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::text;
use hoist_testkit::{hoist_bin, parse_response, wait_until, ChildGuard, Response};
use netns::Fleet;

fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).expect("an HTTP response")
}

#[test]
fn hoist_dashboard_reaches_a_fleet_host_through_an_ssh_forward() {
    let fleet = Fleet::start(1);
    let tail = format!(
        "\n{}\n{}",
        fleet.ssh_toml(),
        fleet.hosts_toml(&["web", "worker"])
    );
    let file = common::fleet_project(&fleet.dir.join("app"), "v1", "", &tail);
    let hoist = |args: &[&str]| {
        Command::new(hoist_bin())
            .args(args)
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = hoist(&["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out.stderr));
    // Before: the agent serves no dashboard, and the command says so.
    let out = hoist(&["dashboard"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("serves no dashboard"),
        "{}",
        text(&out.stderr)
    );

    // The host config gets the key; the keeper starts the agent again with it.
    // (`agent stop` itself reports a failure: the keeper has the agent answering again
    // before it sees the socket go.)
    fleet.exec(
        0,
        "echo 'dashboard = \"127.0.0.1:8421\"' >> /etc/hoist/agent.toml && /usr/local/bin/hoist agent stop",
    );
    // The command stays up with its forward; the URL logs in through it.
    // Until the agent is back with its dashboard, the command fails at once.
    let mut line = String::new();
    let mut guard = None;
    for _ in 0..60 {
        let mut g = ChildGuard::spawn(
            Command::new(hoist_bin())
                .args(["dashboard", "--json", "--host", "h1", "-c"])
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .unwrap();
        let mut lines = BufReader::new(g.child.stdout.take().unwrap()).lines();
        if let Some(Ok(l)) = lines.next() {
            line = l;
            guard = Some(g);
            break;
        }
        drop(g);
        std::thread::sleep(Duration::from_millis(500));
    }
    let guard = guard.expect("`hoist dashboard` prints a URL once the agent serves one");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = v["url"].as_str().unwrap();
    let rest = url.strip_prefix("http://").unwrap();
    let (at, path) = rest.split_at(rest.find('/').unwrap());
    let local: SocketAddr = at.parse().unwrap();
    assert!(local.ip().is_loopback(), "{url}");
    assert_ne!(local.port(), 8421, "a local port of its own");
    let login = get(local, path, None);
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = get(local, "/", Some(&cookie));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Host "), "{}", page.body);
    // Still up a moment later (it lives as long as the command).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get(local, "/", Some(&cookie)).status, 200);

    // Once the command ends, so does the forward.
    guard.signal_group(nix::sys::signal::Signal::SIGTERM);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(local).is_err()
    })
    .expect("the forward ends when the command is stopped");
    drop(guard);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(local).is_err()
    })
    .expect("the forward ends with the command");
}
