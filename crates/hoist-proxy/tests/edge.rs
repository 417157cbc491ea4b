//! The edge tried as a hostile client would (issue 12, item 4): malformed chunked
//! bodies are the client's fault (400, never an upstream error counted against the
//! release), both framings at once are refused, Host handling follows RFC 9112, a
//! client's X-Real-IP is not passed on as the proxy's, and the response timeout does not
//! count the client's upload time.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{proxy_to, raw_exchange, route, status_of, with_limits, Backend, Proxy};
use hoist_protocol::proxy::{Reply, Request};
use hoist_proxy::{Config, Limits};

fn stats(proxy: &Proxy) -> hoist_protocol::proxy::RouteStats {
    match proxy.call(Request::Stats) {
        Reply::Stats { routes } => routes.into_iter().find(|r| r.route == "app/web").unwrap(),
        other => panic!("{other:?}"),
    }
}

const MALFORMED_CHUNKS: &[(&str, &str)] = &[
    ("size ZZZ", "ZZZ\r\nhello\r\n0\r\n\r\n"),
    ("size -1", "-1\r\nhello\r\n0\r\n\r\n"),
    (
        "20 hex digits",
        "12345678901234567890\r\nhello\r\n0\r\n\r\n",
    ),
    ("bare LF", "5\nhello\n0\n\n"),
    ("size overflow", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
];

#[test]
fn malformed_chunked_bodies_are_the_clients_fault_and_never_count_as_5xx() {
    let b = Backend::start("b");
    let proxy = proxy_to(&b, common::config());
    for round in 0..10 {
        for (name, body) in MALFORMED_CHUNKS {
            let raw = format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            );
            let out = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(5));
            let status = status_of(&out);
            assert!(
                status == Some(400) || status.is_none(),
                "{name} (round {round}): {}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    let s = stats(&proxy);
    assert_eq!(s.status[4], 0, "no 5xx counted: {s:?}");
    assert_eq!(s.upstream_errors, 0, "no upstream error counted: {s:?}");
    // A well-framed chunked body still goes through.
    let out = raw_exchange(
        proxy.addr,
        b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&out), Some(200));
    assert!(b
        .seen()
        .iter()
        .any(|s| s.path == "/ok" && s.body == b"hello"));
}

#[test]
fn content_length_with_transfer_encoding_is_refused_and_closed() {
    let b = Backend::start("b");
    let proxy = proxy_to(&b, common::config());
    for raw in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let started = Instant::now();
        let out = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(20));
        let text = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&out), Some(400), "{text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
        // The proxy closed the connection itself (the read did not wait for the timeout).
        assert!(started.elapsed() < Duration::from_secs(15));
    }
    assert_eq!(b.count(), 0, "never forwarded: {:?}", b.seen());
}

#[test]
fn host_handling_follows_rfc_9112() {
    let b = Backend::start("b");
    let other = Backend::start("other");
    let proxy = proxy_to(&b, common::config());
    proxy.set_route(route("app/other", &["other.test"], "/", "r1", &[&other]));
    let ask = |raw: &str| {
        let out = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(5));
        (status_of(&out), String::from_utf8_lossy(&out).into_owned())
    };
    // An absolute-form target names the host; the Host header is replaced by it.
    let (status, text) =
        ask("GET http://other.test/x HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, Some(200), "{text}");
    assert!(text.ends_with("other"), "{text}");
    let seen = other.seen().pop().unwrap();
    assert_eq!(seen.header("host"), Some("other.test"));
    assert_eq!(seen.path, "/x");
    // A trailing dot is the same name.
    let (status, text) = ask("GET / HTTP/1.1\r\nHost: other.test.\r\nConnection: close\r\n\r\n");
    assert_eq!(status, Some(200), "{text}");
    assert!(text.ends_with("other"), "{text}");
    let (status, text) =
        ask("GET / HTTP/1.1\r\nHost: OTHER.test.:8080\r\nConnection: close\r\n\r\n");
    assert_eq!(status, Some(200), "{text}");
    assert!(text.ends_with("other"), "{text}");
    // HTTP/1.0 may omit Host; HTTP/1.1 may not.
    assert_eq!(ask("GET / HTTP/1.0\r\n\r\n").0, Some(200));
    let before = b.count() + other.count();
    for (name, raw, want) in [
        (
            "no host",
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "host with space",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            400,
        ),
        (
            "host with slash",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            400,
        ),
        (
            "host with userinfo",
            "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
            400,
        ),
        ("empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
        (
            "authority form",
            "GET other.test:80 HTTP/1.1\r\nHost: other.test\r\n\r\n",
            400,
        ),
        (
            "asterisk form on GET",
            "GET * HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
        (
            "ftp scheme",
            "GET ftp://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
            400,
        ),
        (
            "connect",
            "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n",
            405,
        ),
    ] {
        let (status, text) = ask(raw);
        assert_eq!(status, Some(want), "{name}: {text}");
    }
    assert_eq!(b.count() + other.count(), before, "none forwarded");
}

#[test]
fn a_clients_x_real_ip_is_not_passed_on() {
    let b = Backend::start("b");
    let proxy = proxy_to(&b, common::config());
    let out = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&out), Some(200));
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"]);
}

#[test]
fn a_slow_steady_upload_outlasts_the_response_timeout_and_a_stalled_one_is_cut() {
    let b = Backend::start("b");
    let limits = Limits {
        response_timeout: Duration::from_millis(1000),
        body_timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    let proxy = proxy_to(&b, with_limits(limits));
    // 10 chunks, 300 ms apart: 3 s of upload, three times the response timeout, but
    // never idle for the body timeout.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    for i in 0..10u8 {
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(&[b'0' + i]).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() > Duration::from_millis(1000));
    assert_eq!(
        status_of(&out),
        Some(200),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(b.seen().iter().any(|s| s.body == b"0123456789"));

    // A stalled one is cut at the body timeout, answered as the client's fault.
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        status_of(&out),
        Some(408),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let st = stats(&proxy);
    assert_eq!(
        (st.status[4], st.upstream_errors),
        (0, 0),
        "a stalled upload is not the upstream's fault: {st:?}"
    );
}

#[test]
fn a_member_that_refuses_is_ejected_and_readmitted_when_it_answers_again() {
    let b1 = Backend::start("b1");
    // A member whose process is gone: its port refuses connections.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr2 = gone.local_addr().unwrap();
    drop(gone);
    let limits = Limits {
        refused_backoff: Duration::from_millis(50),
        ..Limits::default()
    };
    let proxy = Proxy::start(Config {
        limits,
        ..common::config()
    });
    let mut r = route("app/web", &["*"], "/", "r1", &[&b1]);
    r.upstreams.push(hoist_protocol::proxy::Upstream {
        addr: addr2,
        instance: "b2".into(),
    });
    proxy.set_route(r);
    let mut client = common::KeepAlive::connect(proxy.addr).unwrap();
    for _ in 0..200 {
        assert_eq!(client.get("x", "/").unwrap(), (200, "b1".to_string()));
    }
    // It comes back on the same address: it is tried again and gets requests.
    let b2 = Backend::start_at("b2", addr2);
    hoist_testkit::wait_until(Duration::from_secs(60), || {
        client.get("x", "/").is_ok_and(|(s, _)| s == 200) && b2.count() > 0
    })
    .expect("the member that answers again is readmitted");
}

#[test]
fn connections_over_the_cap_get_503_and_are_closed() {
    let b = Backend::start("b");
    let limits = Limits {
        max_connections: 3,
        ..Limits::default()
    };
    let proxy = proxy_to(&b, with_limits(limits));
    let mut held: Vec<_> = (0..3)
        .map(|_| {
            let mut c = common::KeepAlive::connect(proxy.addr).unwrap();
            assert_eq!(c.get("x", "/").unwrap().0, 200);
            c
        })
        .collect();
    let out = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(
        status_of(&out),
        Some(503),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(b.count(), 3);
    match proxy.call(Request::Connections) {
        Reply::Connections {
            open,
            over_capacity,
            max,
        } => {
            assert_eq!((over_capacity, max), (1, 3));
            assert!(open >= 3);
        }
        other => panic!("{other:?}"),
    }
    // One closes: a new connection is served.
    drop(held.pop());
    hoist_testkit::wait_until(Duration::from_secs(10), || {
        status_of(&raw_exchange(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        )) == Some(200)
    })
    .expect("served again under the cap");
    for c in held.iter_mut() {
        assert_eq!(c.get("x", "/").unwrap().0, 200);
    }
}

#[test]
fn a_table_that_cannot_be_saved_is_not_published() {
    let old = Backend::start("old");
    let new = Backend::start("new");
    let dir = hoist_testkit::tempdir();
    let state = dir.path().join("routes.json");
    let proxy = Proxy::start(Config {
        state_file: Some(state.clone()),
        ..common::config()
    });
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&old]));
    // The state file can no longer be replaced (a non-empty directory sits there).
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("x"), "x").unwrap();
    let refused = proxy.client().call(Request::SetRoute {
        route: route("app/web", &["*"], "/", "r2", &[&new]),
    });
    assert!(refused.is_err(), "{refused:?}");
    // What clients are served is what a restarted proxy would load: the old table.
    for _ in 0..5 {
        let out = raw_exchange(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        assert!(String::from_utf8_lossy(&out).ends_with("old"));
    }
    assert_eq!(new.count(), 0);
}

#[test]
fn the_control_socket_refuses_other_users() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let proxy = Proxy::start(common::config());
    if !nix::unistd::getuid().is_root() {
        return; // needs root to act as another user
    }
    // Open the path to anyone, as a mistaken chmod would: the uid check still refuses.
    let mut dir = proxy.control.parent().unwrap().to_path_buf();
    std::fs::set_permissions(&proxy.control, std::fs::Permissions::from_mode(0o777)).unwrap();
    while dir != std::path::Path::new("/") {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode | 0o005)).unwrap();
        if !dir.pop() {
            break;
        }
    }
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
# The proxy may close a refused peer before it has written: that is a refusal too.
try:
    s.sendall(b'{"version":1,"request":{"type":"routes"}}\n')
    print(repr(s.recv(4096)))
except Exception as e:
    print("error", e)
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).arg(&proxy.control);
    // SAFETY: setgid/setuid are async-signal-safe; the child drops to `nobody`.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534))?;
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said.contains("routes"),
        "another user was answered: {said}"
    );
    // The owner still is.
    assert!(proxy.client().call(Request::Routes).is_ok());
}

/// An upstream that answers every request with `head` and `first` and then sends no
/// more, keeping the connection open; it reports when the proxy closed its side.
struct StallingUpstream {
    addr: std::net::SocketAddr,
    closed_by_proxy: std::sync::mpsc::Receiver<()>,
}

fn stalling_upstream(response: &'static [u8]) -> StallingUpstream {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The threads end when the proxy closes the connections (or with the test process).
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                s.write_all(response).unwrap();
                // Nothing more; wait for the proxy to give up the connection.
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(());
            });
        }
    });
    StallingUpstream {
        addr,
        closed_by_proxy: rx,
    }
}

/// An upstream that sends its head and part of the body, then stalls: at the body-idle
/// timeout the client's connection is closed with the body cut short (never a response
/// that passes for complete: no final chunk, fewer bytes than Content-Length), the
/// upstream connection is closed (not pooled), and an upstream error is counted.
#[test]
fn a_response_body_that_stalls_is_cut_at_the_body_timeout_and_counted() {
    let cases: [(&str, &'static [u8]); 2] = [
        (
            "content-length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        ),
        (
            "chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        ),
    ];
    for (n, (name, response)) in cases.into_iter().enumerate() {
        let up = stalling_upstream(response);
        let proxy = Proxy::start(Config {
            limits: Limits {
                body_timeout: Duration::from_millis(500),
                ..Limits::default()
            },
            ..common::config()
        });
        let mut r = route("app/web", &["*"], "/", "r1", &[]);
        r.upstreams = vec![hoist_protocol::proxy::Upstream {
            addr: up.addr,
            instance: "stall".into(),
        }];
        proxy.set_route(r);
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let ended = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(k) => out.extend_from_slice(&buf[..k]),
                Err(e) => break Err(e),
            }
        };
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            matches!(&ended, Ok(()))
                || matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{name}: the client's connection was not ended: {ended:?} after {text:?}"
        );
        assert_eq!(status_of(&out), Some(200), "{name}: {text}");
        assert!(text.contains("0123456789"), "{name}: {text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        match name {
            "content-length" => assert_eq!(body, "0123456789", "fewer bytes than promised"),
            _ => assert!(
                !body.contains("\r\n0\r\n"),
                "{name}: no final chunk: {body:?}"
            ),
        }
        up.closed_by_proxy
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{name}: the upstream connection was kept"));
        let st = stats(&proxy);
        assert_eq!(st.upstream_errors, 1, "case {n} {name}: {st:?}");
    }
}

/// Trailer fields a client sends after a chunked request body reach the upstream (as
/// the old hyper client passed them), except those a trailer may not carry or that only
/// the proxy sets; a malformed trailer is the client's error (400), never forwarded.
#[test]
fn request_trailers_are_forwarded_with_the_same_checks_as_headers() {
    let b = Backend::start("b");
    let proxy = proxy_to(&b, common::config());
    let send = |raw: &str| {
        let out = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(20));
        (status_of(&out), String::from_utf8_lossy(&out).into_owned())
    };
    let head = "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                Trailer: X-Checksum\r\nConnection: close\r\n\r\n";
    // Data, then trailers; and trailers alone (the body's first and last frame).
    let (status, text) = send(&format!(
        "{head}5\r\nhello\r\n0\r\nX-Checksum: abc123\r\nContent-Length: 99\r\n\
         X-Forwarded-For: 6.6.6.6\r\nHost: evil\r\nX-Other: two words\r\n\r\n"
    ));
    assert_eq!(status, Some(200), "{text}");
    let (status, text) = send(&format!("{head}0\r\nX-Only: 1\r\n\r\n"));
    assert_eq!(status, Some(200), "{text}");
    let seen = b.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(
        seen[0].trailers,
        [
            ("x-checksum".to_string(), "abc123".to_string()),
            ("x-other".to_string(), "two words".to_string())
        ],
        "{seen:?}"
    );
    assert_eq!(seen[1].body, b"");
    assert_eq!(seen[1].trailers, [("x-only".to_string(), "1".to_string())]);

    // A trailer with a control byte or a bad name: refused as the client's, not forwarded.
    for bad in ["X-Bad: a\x01b", "Bad Name: 1", "X-Fold: a\r\n folded"] {
        let (status, text) = send(&format!("{head}5\r\nhello\r\n0\r\n{bad}\r\n\r\n"));
        assert_eq!(status, Some(400), "{bad:?}: {text}");
    }
    // The head and first chunk went up before the trailers were read: the upstream
    // saw the body break off, never a whole request.
    let seen = b.seen();
    assert!(
        seen[2..]
            .iter()
            .all(|s| s.body.is_empty() && s.trailers.is_empty()),
        "a malformed trailer reached the upstream: {seen:?}"
    );
    let st = stats(&proxy);
    assert_eq!(st.upstream_errors, 0, "{st:?}");
}
