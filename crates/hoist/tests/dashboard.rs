//! The dashboard (`hoist agent --dashboard ADDR`, `hoist dashboard`): a real browser
//! (Debian's chromium driven by Playwright for Python) logs in, follows live logs and
//! rolls back; requests without the token or with a forged action are refused and change
//! nothing; schemathesis fuzzes the API through the dashboard's listener; the OpenAPI
//! description covers every route; a page's server time with 20 instances and 1,000
//! history rows is printed (a figure, never asserted).

// The browser, the fuzzer and the figure print what they saw.
#![allow(clippy::print_stderr)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, Host};
use hoist_testkit::{free_port, parse_response, wait_until, workspace_root, Response};

fn scripts() -> PathBuf {
    workspace_root().join("crates/hoist/tests/dashboard")
}

fn artifacts() -> PathBuf {
    let dir = workspace_root().join("target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Python with the named modules, or a failure that names what is missing (the suite's
/// install step provides them; nothing is skipped).
fn python_with(modules: &[&str]) -> &'static str {
    let probe = Command::new("python3")
        .arg("-c")
        .arg(format!("import {}", modules.join(", ")))
        .output()
        .expect("python3 is needed (scripts/test.sh installs it)");
    assert!(
        probe.status.success(),
        "python3 lacks {modules:?} (scripts/test.sh installs them with pip): {}",
        text(&probe.stderr)
    );
    "python3"
}

/// A host whose agent serves the dashboard on a free port.
fn host_with_dashboard() -> (Host, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let host = Host::with_agent_args(&["--dashboard", &addr.to_string()]);
    wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok())
        .expect("the dashboard listens");
    (host, addr)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw).expect("an HTTP response")
}

/// The login URL `hoist dashboard --json` prints.
fn login_url(host: &Host) -> String {
    let out = host.hoist(&["dashboard", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["url"].as_str().unwrap().to_string()
}

fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

/// Logs in with the URL's token; the session cookie (`name=value`).
fn session(addr: SocketAddr, url: &str) -> String {
    let r = request(addr, "GET", &path_of(url), &[], b"");
    assert_eq!(r.status, 303, "{}", r.body);
    let cookie = r.header("set-cookie").expect("a session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    cookie.split(';').next().unwrap().to_string()
}

fn history(host: &Host) -> Vec<serde_json::Value> {
    let out = host.hoist(&["history", "--json", "--limit", "5000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn deploy_two(host: &Host) -> (String, String) {
    let env = "TESTAPP_LOG_RATE = \"4\"";
    let extra = "\n[jobs.nightly]\ncommand = \"true\"\nevery = \"1h\"\n\n[backups.files]\ndirectory = \"uploads\"\n";
    let v1 = host.project("v1", env, extra);
    let out = host.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = common::release_of(&out);
    let v2 = host.project("v2", env, extra);
    let out = host.deploy(&v2);
    assert!(out.status.success(), "{}", text(&out.stderr));
    (r1, common::release_of(&out))
}

#[test]
fn a_browser_logs_in_follows_logs_and_rolls_back_and_forgeries_are_refused() {
    let python = python_with(&["playwright"]);
    let (host, addr) = host_with_dashboard();
    let (r1, r2) = deploy_two(&host);
    let url = login_url(&host);

    // Refusals first; none of them changes anything.
    let before = history(&host);
    let cookie = session(addr, &url);
    let no_token = request(addr, "GET", "/", &[], b"");
    assert_eq!(no_token.status, 401);
    assert_eq!(request(addr, "GET", "/v1/status", &[], b"").status, 401);
    let wrong = request(addr, "GET", "/login?token=0000", &[], b"");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert_eq!(
        request(
            addr,
            "GET",
            "/v1/status",
            &[("Cookie", "hoist_session=forged")],
            b""
        )
        .status,
        401
    );
    // The confirmation page holds the session's CSRF token.
    let confirm = request(
        addr,
        "GET",
        "/apps/demo/confirm/rollback",
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    let csp = confirm.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!confirm.body.contains("<script>"), "no inline script");
    let csrf = confirm
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let form = |csrf: &str| format!("csrf={csrf}&release={r1}");
    let post = |headers: &[(&str, &str)], body: &str| {
        request(
            addr,
            "POST",
            "/apps/demo/do/rollback",
            headers,
            body.as_bytes(),
        )
        .status
    };
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    // No session at all.
    assert_eq!(post(&[form_type], &form(&csrf)), 401);
    // A session but no CSRF token, or a wrong one.
    assert_eq!(
        post(&[form_type, ("Cookie", &cookie)], &format!("release={r1}")),
        403
    );
    assert_eq!(
        post(&[form_type, ("Cookie", &cookie)], &form(&"0".repeat(64))),
        403
    );
    // The right token from another site's page.
    let evil = [
        form_type,
        ("Cookie", &cookie),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(post(&evil, &form(&csrf)), 403);
    // The bearer token does not do browser actions.
    let token = std::fs::read_to_string(host.root.join("dashboard.token")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    assert_eq!(
        post(&[form_type, ("Authorization", &bearer)], &form(&csrf)),
        403
    );
    // The API with a session needs the CSRF header.
    let rb =
        format!("{{\"app\":\"demo\",\"host\":\"local\",\"actor\":\"x\",\"release\":\"{r1}\"}}");
    let api = |headers: &[(&str, &str)]| {
        request(addr, "POST", "/v1/rollback", headers, rb.as_bytes()).status
    };
    assert_eq!(api(&[("Cookie", &cookie)]), 403);
    // Oversized bodies: 413, read by nobody.
    let big = "x".repeat(20 * 1024);
    assert_eq!(post(&[form_type, ("Cookie", &cookie)], &big), 413);
    let huge = vec![b'{'; 5 * 1024 * 1024];
    assert_eq!(
        request(
            addr,
            "POST",
            "/v1/plan",
            &[("Authorization", &bearer)],
            &huge
        )
        .status,
        413
    );
    assert_eq!(
        history(&host),
        before,
        "a refused request changed the history"
    );
    assert_eq!(host.serving(), Some(r2.clone()));

    // Traffic through the proxy, for the charts: recorded per minute on the agent's
    // next alert pass.
    for _ in 0..20 {
        assert_eq!(
            hoist_testkit::http_get(host.proxy, "demo.test", "/")
                .unwrap()
                .status,
            200
        );
    }
    wait_until(Duration::from_secs(30), || {
        let r = request(
            addr,
            "GET",
            "/v1/minutes?app=demo&service=web",
            &[("Authorization", &bearer)],
            b"",
        );
        r.status == 200 && r.body.contains("\"requests\"")
    })
    .expect("the requests are in the per-minute aggregates");

    // The browser: login, app, live logs, rollback with its confirmation.
    let logdir = host.root.join("logs/demo/web");
    let started = Instant::now();
    let out = Command::new(python)
        .arg(scripts().join("browser.py"))
        .args([
            &url,
            artifacts().to_str().unwrap(),
            logdir.to_str().unwrap(),
            &r2,
            &r1,
        ])
        .output()
        .unwrap();
    eprintln!(
        "browser run: {:.1} s\n{}{}",
        started.elapsed().as_secs_f64(),
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed (screenshots in {})",
        artifacts().display()
    );
    assert_eq!(host.serving(), Some(r1.clone()));
    let after = history(&host);
    let last = after.last().unwrap();
    assert_eq!(last["kind"], "rollback", "{last}");
    assert_eq!(last["actor"], "dashboard", "{last}");
    assert_eq!(last["release"], r1.as_str(), "{last}");
    // The other actions, each confirmed with the session's CSRF token and recorded.
    for (action, field, kind) in [
        ("restart", "service=web", "restart"),
        ("job", "job=nightly", "job"),
        ("backup", "name=files", "backup"),
    ] {
        let body = format!("csrf={csrf}&{field}");
        let r = request(
            addr,
            "POST",
            &format!("/apps/demo/do/{action}"),
            &[form_type, ("Cookie", &cookie)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 303, "{action}: {}", r.body);
        let last = history(&host).pop().unwrap();
        assert_eq!(last["kind"], kind, "{last}");
        assert_eq!(last["actor"], "dashboard", "{last}");
    }
    let page = request(addr, "GET", "/apps/demo", &[("Cookie", &cookie)], b"");
    assert!(
        page.body.contains("backup files"),
        "the outcome is shown once"
    );
    for shot in [
        "1-host",
        "2-app",
        "3-logs",
        "4-events",
        "5-confirm",
        "6-after-rollback",
        "7-phone",
    ] {
        assert!(
            artifacts().join(format!("{shot}.png")).exists(),
            "{shot}.png"
        );
    }
}

#[test]
fn the_api_through_the_dashboard_is_described_fuzzed_and_rotated() {
    let python = python_with(&["schemathesis"]);
    let (host, addr) = host_with_dashboard();
    let (_r1, r2) = deploy_two(&host);
    let url = login_url(&host);
    let token = std::fs::read_to_string(host.root.join("dashboard.token")).unwrap();
    let token = token.trim().to_string();
    let bearer = format!("Bearer {token}");

    // The description, without the token; every route it names is served (never the
    // router's "no such endpoint"), and a path it does not name is not.
    let doc = request(addr, "GET", "/v1/openapi.json", &[], b"");
    assert_eq!(doc.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut count = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m = method.to_uppercase();
            if path == "/v1/agent/stop" || path == "/v1/dashboard/rotate" {
                continue;
            }
            let concrete = path
                .replace("{app}", "nothing-here")
                .replace("{service}", "web")
                .replace("{job}", "j")
                .replace("{name}", "N")
                .replace("{action}", "status");
            let r = request(addr, &m, &concrete, &[("Authorization", &bearer)], b"");
            assert!(
                !r.body.contains("no such endpoint") && r.status != 405,
                "{m} {path}: {} {}",
                r.status,
                r.body
            );
            count += 1;
        }
    }
    assert!(count > 25, "{count} operations");
    let r = request(
        addr,
        "GET",
        "/v1/nothing",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        request(
            addr,
            "DELETE",
            "/v1/status",
            &[("Authorization", &bearer)],
            b""
        )
        .status,
        405
    );

    // schemathesis: no 5xx, every answer as described (the description's `follow`
    // parameters are left out of its copy: a stream that never ends is not a test case).
    let before = std::time::Instant::now();
    let out = Command::new(python)
        .arg(scripts().join("fuzz.py"))
        .args([
            &format!("http://{addr}"),
            &token,
            artifacts().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    eprintln!(
        "schemathesis: {:.1} s\n{}{}",
        before.elapsed().as_secs_f64(),
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems");
    assert_eq!(host.serving(), Some(r2), "the app still serves");

    // Rotation: the old login URL and its sessions stop working, the new one works.
    let old_session = session(addr, &url);
    let out = host.hoist(&["dashboard", "--rotate", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_url = v["url"].as_str().unwrap();
    assert_ne!(new_url, url);
    assert_eq!(request(addr, "GET", &path_of(&url), &[], b"").status, 401);
    assert_eq!(
        request(addr, "GET", "/", &[("Cookie", &old_session)], b"").status,
        401
    );
    let fresh = session(addr, new_url);
    assert_eq!(
        request(addr, "GET", "/", &[("Cookie", &fresh)], b"").status,
        200
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(host.root.join("dashboard.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Appends `n` finished operations to the history of a stopped agent's state, through
/// hoist-state itself (so the chain stays whole).
fn add_history(root: &Path, n: usize) {
    let mut st = hoist_state::State::open(&root.join("state.db")).unwrap();
    for i in 0..n {
        let op = st
            .begin_operation("demo", "restart", Some("r"), None, "figure")
            .unwrap();
        st.finish_operation(op.id, "succeeded", Some(&format!("row {i}")), None)
            .unwrap();
    }
}

/// The figure: the server time of the app's page (and the host page) with 20 instances
/// and 1,000 history rows, from the `dashboard` key of a host config. Printed, never
/// asserted (a shared 2-core machine).
#[test]
fn figure_page_time_with_20_instances_and_1000_history_rows() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut host = Host::with_agent_args(&[]);
    // Without an address nothing listens, and `hoist dashboard` says so.
    let out = host.hoist(&["dashboard"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("serves no dashboard"),
        "{}",
        text(&out.stderr)
    );
    assert!(TcpStream::connect(addr).is_err());
    let config = host.dir.join("agent.toml");
    std::fs::write(&config, format!("dashboard = \"{addr}\"\n")).unwrap();
    host.kill_agent();
    host.agent_args = vec!["--config".into(), config.display().to_string()];
    host.start_agent();
    wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok())
        .expect("the dashboard listens (from the host config's `dashboard` key)");
    let project = host.project("v1", "", "");
    let toml = std::fs::read_to_string(project.join("hoist.toml")).unwrap();
    std::fs::write(
        project.join("hoist.toml"),
        toml.replace("replicas = 2", "replicas = 20"),
    )
    .unwrap();
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    host.kill_agent();
    add_history(&host.root, 1000);
    host.start_agent();
    wait_until(Duration::from_secs(30), || {
        host.status()["apps"][0]["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 20)
    })
    .expect("20 instances re-adopted");
    assert!(history(&host).len() > 1000);
    let cookie = session(addr, &login_url(&host));
    for (name, path) in [
        ("app page", "/apps/demo"),
        ("host page", "/"),
        ("events page", "/events"),
    ] {
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let r = request(addr, "GET", path, &[("Cookie", &cookie)], b"");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.status, 200);
        }
        // The first app page also checks the whole history chain (cached afterwards).
        let first = times[0];
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        eprintln!(
            "figure: {name} ({path}) with 20 instances and 1,000 history rows (debug build): first {first:.1} ms, then median {:.1} ms, best {:.1} ms, worst {:.1} ms (20 requests)",
            times[10], times[0], times[19]
        );
    }
}
