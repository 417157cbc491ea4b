//! Switching and draining (reliability A4, A5, I8): atomic swaps under concurrent
//! keep-alive load, slow requests finishing on the old set, `WaitDrained`, and retries
//! only for requests that never reached an upstream.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{route, Backend, KeepAlive, Proxy};
use hoist_protocol::proxy::{Reply, Request};
use hoist_testkit::http_get;

#[test]
fn a_thousand_swaps_under_64_keep_alive_clients_fail_no_request() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("app/web", &["*"], "/", "blue", &[&blue]));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (stop, ok, failures, addr) =
                (stop.clone(), ok.clone(), failures.clone(), proxy.addr);
            std::thread::spawn(move || {
                let mut c = KeepAlive::connect(addr).expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    match c.get("x", "/") {
                        Ok((200, body)) if body == "blue" || body == "green" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failures.lock().unwrap().push(format!("{other:?}"));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    hoist_testkit::wait_until(Duration::from_secs(10), || ok.load(Ordering::Relaxed) > 200)
        .expect("load flows");
    let mut control = proxy.client();
    for i in 0..1000 {
        let (release, to) = if i % 2 == 0 {
            ("green", &green)
        } else {
            ("blue", &blue)
        };
        let reply = control
            .call(Request::SetRoute {
                route: route("app/web", &["*"], "/", release, &[to]),
            })
            .unwrap();
        assert_eq!(reply, Reply::Done);
    }
    // Keep the load on the final set for a moment, then stop.
    let before = ok.load(Ordering::Relaxed);
    hoist_testkit::wait_until(Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > before + 200
    })
    .expect("load");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        blue.count() > 0 && green.count() > 0,
        "both sets served: {} / {}",
        blue.count(),
        green.count()
    );
}

#[test]
fn slow_requests_finish_on_the_old_set_and_wait_drained_waits_for_them() {
    let (old, new) = (Backend::start("old"), Backend::start("new"));
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&old]));
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                http_get(addr, "x", "/slow/1500").map(|r| (r.status, r.body))
            })
        })
        .collect();
    hoist_testkit::wait_until(Duration::from_secs(10), || old.count() == 10)
        .expect("slow requests reached old");
    proxy.set_route(route("app/web", &["*"], "/", "r2", &[&new]));
    // New requests go to the new set at once.
    assert_eq!(http_get(proxy.addr, "x", "/").unwrap().body, "new");
    let Reply::Draining { upstreams } = proxy.call(Request::Draining) else {
        panic!("draining")
    };
    assert_eq!(upstreams.len(), 1, "{upstreams:?}");
    assert_eq!((upstreams[0].addr, upstreams[0].in_flight), (old.addr, 10));
    let reply = proxy.call(Request::WaitDrained {
        addrs: vec![old.addr],
        timeout_ms: 20_000,
    });
    assert_eq!(
        reply,
        Reply::Drained {
            drained: true,
            closed_tunnels: 0,
            in_flight: 0
        }
    );
    for t in slow {
        assert_eq!(t.join().unwrap().unwrap(), (200, "old".to_string()));
    }
    let Reply::Draining { upstreams } = proxy.call(Request::Draining) else {
        panic!("draining")
    };
    assert!(upstreams.iter().all(|u| u.in_flight == 0), "{upstreams:?}");
}

/// A port that refuses connections: bound once, then released.
fn refusing_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

#[test]
fn a_refused_member_is_retried_elsewhere() {
    let live = Backend::start("live");
    let proxy = Proxy::start(common::config());
    let mut r = route("app/web", &["*"], "/", "r1", &[&live]);
    r.upstreams.insert(
        0,
        hoist_protocol::proxy::Upstream {
            addr: refusing_addr(),
            instance: "dead".into(),
        },
    );
    proxy.set_route(r);
    for _ in 0..20 {
        let resp = http_get(proxy.addr, "x", "/").unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "live"));
    }
}

/// An upstream that reads a request and closes without answering, as a crash would
/// (or an instance killed with connections still in its listen queue): its address
/// and how many requests reached it.
fn dying_member() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let dying = TcpListener::bind("127.0.0.1:0").unwrap();
    let dying_addr = dying.local_addr().unwrap();
    let dying_seen = Arc::new(AtomicUsize::new(0));
    let seen = dying_seen.clone();
    std::thread::spawn(move || {
        for stream in dying.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            if let Ok(n) = s.read(&mut buf) {
                if n > 0 {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }
            drop(s);
        }
    });
    (dying_addr, dying_seen)
}

/// A route whose first member is `dying` (see [`dying_member`]) and second `live`.
fn live_behind(dying: std::net::SocketAddr, live: &Backend) -> hoist_protocol::proxy::Route {
    let mut r = route("app/web", &["*"], "/", "r1", &[live]);
    r.upstreams.insert(
        0,
        hoist_protocol::proxy::Upstream {
            addr: dying,
            instance: "dying".into(),
        },
    );
    r
}

#[test]
fn a_get_on_a_fresh_connection_that_dies_unanswered_is_sent_to_another_member() {
    let (dying_addr, dying_seen) = dying_member();
    let live = Backend::start("live");
    let proxy = Proxy::start(common::config());
    proxy.set_route(live_behind(dying_addr, &live));
    // Each on its own connection, so the worker's rotation reaches the dying member.
    for _ in 0..20 {
        let resp = http_get(proxy.addr, "x", "/").unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "live"));
    }
    assert!(
        dying_seen.load(Ordering::SeqCst) > 0,
        "the dying member was tried"
    );
}

#[test]
fn a_member_that_dies_mid_post_is_not_retried() {
    let (dying_addr, dying_seen) = dying_member();
    let live = Backend::start("live");
    let proxy = Proxy::start(common::config());
    proxy.set_route(live_behind(dying_addr, &live));
    let (mut ok, mut bad_gateway) = (0, 0);
    for i in 0..20 {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = format!("order-{i}");
        write!(
            s,
            "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        match common::status_of(&out) {
            Some(200) => ok += 1,
            Some(502) => bad_gateway += 1,
            other => panic!(
                "unexpected answer {other:?}: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    let live_posts = live.seen().iter().filter(|s| s.method == "POST").count();
    assert!(bad_gateway > 0 && ok > 0, "ok {ok}, 502 {bad_gateway}");
    assert_eq!(
        live_posts, ok,
        "the live member saw only the requests it answered"
    );
    assert_eq!(
        dying_seen.load(Ordering::SeqCst),
        bad_gateway,
        "each failed POST reached the dying member once"
    );
    // No request reached both members: that would be a duplicated side effect.
    let live_bodies: Vec<Vec<u8>> = live.seen().iter().map(|s| s.body.clone()).collect();
    let mut unique = live_bodies.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), live_bodies.len());
}
