//! The HTTP behaviours of `hoist-testapp serve`, checked against the real binary over
//! real sockets: identity and counters, health (pass, fail, flapping), slow requests,
//! headers, echo, WebSockets, the data dir, writes into the release tree, and the
//! graceful stop on SIGTERM.

mod common;

use std::net::TcpStream;
use std::process::Command;

use common::{get, get_json, request, App, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use hoist_testkit::wait_until;
use nix::sys::signal::Signal;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn index_reports_identity_and_counts_requests_but_not_observers() {
    let mut cmd = common::command();
    cmd.args(["serve", "--port", "0"])
        .env("HOIST_RELEASE", "r-42")
        .env("HOIST_INSTANCE", "web-1")
        .env("HOIST_SERVICE", "web")
        .env("HOIST_APP", "notes");
    let app = App::start(cmd);
    let addr = app.listening();

    for expected in 1..=3u64 {
        let index = get_json(addr, "/");
        assert_eq!(index["count"], expected);
        assert_eq!(index["release"], "r-42");
        assert_eq!(index["instance"], "web-1");
        assert_eq!(index["service"], "web");
        assert_eq!(index["app"], "notes");
        assert_eq!(index["pid"], app.pid());
    }
    assert_eq!(get(addr, "/health").status, 200);
    let stats = get_json(addr, "/stats");
    assert_eq!(
        stats["count"], 3,
        "health checks and stats must not count: {stats}"
    );
    assert_eq!(stats["health_checks"], 1);

    let echoed = request(addr, "POST", "/echo", b"hello body");
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.body, "hello body");
    let index = get_json(addr, "/");
    assert_eq!(index["side_effects"], 1);
    assert_eq!(index["count"], 5);
}

#[test]
fn the_bare_command_serves_on_port_from_the_environment() {
    let port = hoist_testkit::free_port();
    let mut cmd = common::command();
    cmd.env("PORT", port.to_string());
    let app = App::start(cmd);
    let addr = app.listening();
    assert_eq!(addr.port(), port);
    assert_eq!(get(addr, "/health").body, "ok");
}

#[test]
fn health_fails_with_the_flag_or_its_environment_variable() {
    let (_app, addr) = App::serve(&["--fail-health"]);
    let response = get(addr, "/health");
    assert_eq!(response.status, 500);
    assert!(response.body.contains("--fail-health"), "{}", response.body);

    let mut cmd = common::command();
    cmd.args(["serve", "--port", "0"])
        .env("TESTAPP_FAIL_HEALTH", "1");
    let app = App::start(cmd);
    assert_eq!(get(app.listening(), "/health").status, 500);

    let mut cmd = common::command();
    cmd.args(["serve", "--port", "0"])
        .env("TESTAPP_FAIL_HEALTH", "0");
    let app = App::start(cmd);
    assert_eq!(get(app.listening(), "/health").status, 200);
}

#[test]
fn a_flapping_instance_passes_n_checks_then_fails_forever() {
    let (_app, addr) = App::serve(&["--health-pass-then-fail", "2"]);
    let statuses: Vec<u16> = (0..5).map(|_| get(addr, "/health").status).collect();
    assert_eq!(statuses, [200, 200, 500, 500, 500]);
}

#[test]
fn unhealthy_after_turns_health_to_500_once_the_time_has_passed() {
    let (_app, addr) = App::serve(&["--unhealthy-after", "0"]);
    assert_eq!(get(addr, "/health").status, 500);
    let (_app, addr) = App::serve(&["--unhealthy-after", "3600"]);
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn sleep_answers_no_sooner_than_asked_and_headers_shows_what_arrived() {
    let (_app, addr) = App::serve(&[]);
    let started = std::time::Instant::now();
    let slept = get_json(addr, "/sleep?ms=300");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(slept["slept_ms"], 300);
    assert_eq!(get(addr, "/sleep").status, 400);

    let mut stream = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /headers HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Request-Id: abc\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut raw).unwrap();
    let response = hoist_testkit::parse_response(&raw).unwrap();
    let headers: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(headers["host"], "example.test");
    assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    assert_eq!(headers["x-request-id"], "abc");
}

#[test]
fn unknown_routes_are_404_with_a_json_error() {
    let (_app, addr) = App::serve(&[]);
    let response = get(addr, "/nope");
    assert_eq!(response.status, 404);
    assert!(
        response.body.contains("no route for `GET /nope`"),
        "{}",
        response.body
    );
}

#[tokio::test]
async fn websockets_echo_and_are_counted_while_open() {
    let (_app, addr) = App::serve(&[]);
    let url = format!("ws://{addr}/ws");
    let connect = |url: String| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(url, tcp).await.unwrap().0
    };
    let mut first = connect(url.clone()).await;
    let mut second = connect(url.clone()).await;

    first.send(Message::text("ping one")).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::text("ping one")
    );
    second.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        second.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );

    let open = move || {
        let stats = get_json(addr, "/stats");
        stats["open_websockets"].as_u64().unwrap()
    };
    assert_eq!(tokio::task::spawn_blocking(open).await.unwrap(), 2);

    first.close(None).await.unwrap();
    // The close handshake completes when the server's close frame arrives.
    while let Some(Ok(_)) = first.next().await {}
    let one_left = tokio::task::spawn_blocking(move || wait_until(DEADLINE, || open() == 1))
        .await
        .unwrap();
    assert_eq!(one_left, Ok(()));

    // A plain GET on /ws is refused, not upgraded.
    let plain = tokio::task::spawn_blocking(move || get(addr, "/ws"))
        .await
        .unwrap();
    assert_eq!(plain.status, 400);
}

#[test]
fn data_files_round_trip_through_hoist_data_dir() {
    let dir = hoist_testkit::tempdir();
    let mut cmd = common::command();
    cmd.args(["serve", "--port", "0"])
        .env("HOIST_DATA_DIR", dir.path());
    let app = App::start(cmd);
    let addr = app.listening();

    assert_eq!(
        request(addr, "PUT", "/data/state.txt", b"kept across releases").status,
        200
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state.txt")).unwrap(),
        "kept across releases"
    );
    let read = get(addr, "/data/state.txt");
    assert_eq!(
        (read.status, read.body.as_str()),
        (200, "kept across releases")
    );
    assert_eq!(get(addr, "/data/missing.txt").status, 404);
    for hostile in ["/data/..", "/data/../escape", "/data/a/b", "/data/"] {
        assert_eq!(
            request(addr, "PUT", hostile, b"x").status,
            400,
            "{hostile} must be refused"
        );
    }
    assert!(!dir.path().parent().unwrap().join("escape").exists());

    // Without a data dir the app says so instead of writing somewhere else.
    let (_app, addr) = App::serve(&[]);
    let response = request(addr, "PUT", "/data/state.txt", b"x");
    assert_eq!(response.status, 500);
    assert!(
        response.body.contains("HOIST_DATA_DIR"),
        "{}",
        response.body
    );
}

#[test]
fn write_release_file_writes_where_it_may() {
    let dir = hoist_testkit::tempdir();
    let mut cmd = common::command();
    cmd.args(["serve", "--port", "0"]).current_dir(dir.path());
    let app = App::start(cmd);
    let addr = app.listening();
    let report: serde_json::Value = serde_json::from_str(
        &request(addr, "POST", "/write-release-file?path=probe.txt", b"").body,
    )
    .unwrap();
    assert_eq!(report["written"], true, "{report}");
    assert!(std::fs::read_to_string(dir.path().join("probe.txt"))
        .unwrap()
        .contains("hoist-testapp"));

    // A directory cannot be written as a file, whoever we are.
    std::fs::create_dir(dir.path().join("static")).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&request(addr, "POST", "/write-release-file?path=static", b"").body)
            .unwrap();
    assert_eq!(
        (report["written"].clone(), report["errno"].clone()),
        (false.into(), "EISDIR".into())
    );

    for outside in ["/etc/passwd", "../x", ""] {
        let path = format!("/write-release-file?path={outside}");
        assert_eq!(request(addr, "POST", &path, b"").status, 400, "{outside}");
    }
}

#[test]
#[allow(clippy::print_stderr)] // a skipped test says why
fn write_release_file_reports_a_read_only_release() {
    let dir = hoist_testkit::tempdir();
    std::fs::write(dir.path().join("app.py"), "shipped\n").unwrap();
    let app = if nix::unistd::geteuid().is_root() {
        // Root ignores file modes; a read-only bind mount in a private mount namespace is
        // what a release tree looks like to a root app.
        let usable = Command::new("unshare")
            .args(["-m", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !usable {
            eprintln!("skipped: running as root and `unshare -m` is not available");
            return;
        }
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "sh",
            "-c",
            "mount --bind -o ro \"$0\" \"$0\" && cd \"$0\" && exec \"$1\" serve --port 0",
        ])
        .arg(dir.path())
        .arg(env!("CARGO_BIN_EXE_hoist-testapp"));
        App::start(cmd)
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("app.py"),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut cmd = common::command();
        cmd.args(["serve", "--port", "0"]).current_dir(dir.path());
        App::start(cmd)
    };
    let addr = app.listening();
    for path in ["app.py", "new-file.txt"] {
        let body = request(
            addr,
            "POST",
            &format!("/write-release-file?path={path}"),
            b"",
        )
        .body;
        let report: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(report["written"], false, "{report}");
        let errno = report["errno"].as_str().unwrap();
        assert!(errno == "EROFS" || errno == "EACCES", "{report}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("app.py")).unwrap(),
        "shipped\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
}

#[test]
fn sigterm_finishes_the_in_flight_request_then_exits_0() {
    let (mut app, addr) = App::serve(&[]);
    let slow = std::thread::spawn(move || get(addr, "/sleep?ms=1500"));
    wait_until(DEADLINE, || get_json(addr, "/stats")["in_flight"] == 1).unwrap();

    app.signal(Signal::SIGTERM);
    app.wait_stderr(|l| l.contains("stopped accepting"));
    // The listener is closed before draining: new connections are refused at once.
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    let response = slow.join().unwrap();
    assert_eq!(
        response.status, 200,
        "the in-flight request must complete: {}",
        response.body
    );
    assert!(app.wait_exit().success(), "stderr:\n{}", app.stderr_text());
    let stderr = app.stderr_text();
    let order =
        ["starting", "listening", "sigterm received", "exiting"].map(|word| stderr.find(word));
    assert!(
        order.iter().all(Option::is_some),
        "lifecycle lines missing:\n{stderr}"
    );
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "lifecycle out of order:\n{stderr}"
    );
}

#[tokio::test]
async fn sigterm_leaves_open_websockets_to_the_client() {
    let (app, addr) = App::serve(&[]);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();

    app.signal(Signal::SIGTERM);
    let app = tokio::task::spawn_blocking(move || {
        app.wait_stderr(|l| l.contains("stopped accepting"));
        app
    })
    .await
    .unwrap();
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let mut app = app;
    let status = tokio::task::spawn_blocking(move || app.wait_exit())
        .await
        .unwrap();
    assert!(status.success());
}
