//! Canary routes: a share of clients goes to the canary release, each client sticky (a
//! cookie the proxy sets, or a hash of its address), counted per release, and saved in
//! the route table so a restarted proxy keeps the same split.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{route, Backend, Proxy};
use hoist_protocol::proxy::{Canary, Reply, Request, Route, Upstream};

/// One GET on a fresh connection: (status, body, the `hoist_canary` cookie set, if any).
fn get(addr: SocketAddr, cookie: Option<&str>) -> (u16, String, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: a=b; {c}\r\n"));
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\n{cookie}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let set = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_string())
        .find(|v| v.starts_with("hoist_canary="));
    (status, body.to_string(), set)
}

fn with_canary(stable: &Backend, canary: &Backend, weight_bp: u32) -> Route {
    let mut r = route("app/web", &["*"], "/", "blue", &[stable]);
    r.canary = Some(Canary {
        release: "green".into(),
        upstreams: vec![Upstream {
            addr: canary.addr,
            instance: canary.name.clone(),
        }],
        weight_bp,
    });
    r
}

fn cookie(seed: u32) -> String {
    format!("hoist_canary={seed:08x}")
}

#[test]
fn a_weighted_share_of_clients_reaches_the_canary_and_each_stays_there() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let dir = hoist_testkit::tempdir();
    let state = dir.path().join("routes.json");
    let proxy = Proxy::start(hoist_proxy::Config {
        state_file: Some(state.clone()),
        ..common::config()
    });
    proxy.set_route(with_canary(&blue, &green, 2500));
    let clients: Vec<u32> = (0..400).map(|i| i * 7919 + 13).collect();
    let side = |seed: u32| {
        let (status, body, set) = get(proxy.addr, Some(&cookie(seed)));
        assert_eq!(status, 200);
        assert!(set.is_none(), "a client with a cookie keeps it: {set:?}");
        body
    };
    let first: Vec<String> = clients.iter().map(|s| side(*s)).collect();
    let on_green = first.iter().filter(|b| *b == "green").count();
    assert!(
        (40..=160).contains(&on_green),
        "about a quarter of 400 clients expected on the canary, got {on_green}"
    );
    // Sticky: the same cookie reaches the same release, every time.
    for (seed, was) in clients.iter().zip(&first).take(100) {
        for _ in 0..3 {
            assert_eq!(&side(*seed), was, "client {seed:08x} moved");
        }
    }
    // Counted per release.
    let Reply::Stats { routes } = proxy.call(Request::Stats) else {
        panic!("stats")
    };
    let answered = |release: &str| {
        routes
            .iter()
            .find(|r| r.route == "app/web" && r.release == release)
            .map_or(0, |r| r.status[1])
    };
    assert_eq!(answered("green") as usize, green.count());
    assert_eq!(answered("blue") as usize, blue.count());

    // A bigger step keeps every canary client on the canary and adds others.
    proxy.set_route(with_canary(&blue, &green, 5000));
    let second: Vec<String> = clients.iter().map(|s| side(*s)).collect();
    for ((seed, a), b) in clients.iter().zip(&first).zip(&second) {
        assert!(
            a != "green" || b == "green",
            "client {seed:08x} left the canary when its weight grew"
        );
    }
    let on_green2 = second.iter().filter(|b| *b == "green").count();
    assert!(on_green2 > on_green, "{on_green2} <= {on_green}");

    // Saved in the table on disk, canary included (a restarted proxy keeps the split).
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(
        saved.contains("\"canary\"") && saved.contains("\"weight_bp\": 5000"),
        "{saved}"
    );
    let Reply::Routes { routes } = proxy.call(Request::Routes) else {
        panic!("routes")
    };
    assert_eq!(routes[0].canary.as_ref().unwrap().weight_bp, 5000);

    // Weight 0: nobody; the canary removed: nobody, and no cookie is set any more.
    proxy.set_route(with_canary(&blue, &green, 0));
    assert!(clients.iter().take(50).all(|s| side(*s) == "blue"));
    proxy.set_route(route("app/web", &["*"], "/", "blue", &[&blue]));
    let (_, body, set) = get(proxy.addr, None);
    assert_eq!((body.as_str(), set), ("blue", None));
}

#[test]
fn a_cookieless_client_is_sticky_by_address_and_gets_the_cookie_of_its_side() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let proxy = Proxy::start(common::config());
    proxy.set_route(with_canary(&blue, &green, 5000));
    let (status, body, set) = get(proxy.addr, None);
    assert_eq!(status, 200);
    let set = set.expect("a cookie is set on a route with a canary");
    assert!(set.contains("Path=/") && set.contains("HttpOnly"), "{set}");
    let value = set.split(';').next().unwrap().to_string();
    // Without the cookie, the same address keeps landing on the same side; with the
    // cookie it was given, too.
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, None).1, body);
        assert_eq!(get(proxy.addr, Some(&value)).1, body);
    }
    // All or nothing at the ends.
    proxy.set_route(with_canary(&blue, &green, 10_000));
    assert_eq!(get(proxy.addr, None).1, "green");
    // A canary without members sends nobody there.
    let mut r = with_canary(&blue, &green, 10_000);
    r.canary.as_mut().unwrap().upstreams.clear();
    proxy.set_route(r);
    assert_eq!(get(proxy.addr, None).1, "blue");
}

#[test]
fn a_canary_of_the_same_release_or_a_shared_member_is_refused() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let proxy = Proxy::start(common::config());
    let mut r = with_canary(&blue, &green, 100);
    r.canary.as_mut().unwrap().release = "blue".into();
    let err = proxy
        .client()
        .call(Request::SetRoute { route: r })
        .unwrap_err();
    assert!(err.to_string().contains("other than the route's"), "{err}");
    let mut r = with_canary(&blue, &blue, 100);
    r.canary.as_mut().unwrap().upstreams[0].instance = "x".into();
    let err = proxy
        .client()
        .call(Request::SetRoute { route: r })
        .unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[test]
fn a_cookieless_client_is_sticky_by_its_rate_limit_key() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let proxy = Proxy::start(common::config());
    let mut r = with_canary(&blue, &green, 5000);
    r.guards.rate_limit = Some(hoist_protocol::proxy::RateLimit {
        requests: 1_000_000,
        per_ms: 1000,
        burst: 1_000_000,
        key: vec!["X-Client".into()],
    });
    proxy.set_route(r);
    let as_client = |key: &str| {
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: x\r\nX-Client: {key}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    // Clients behind one address, told apart by their key: spread over both sides, each
    // on the same side every time.
    let first: Vec<String> = (0..40).map(|i| as_client(&format!("client-{i}"))).collect();
    assert!(first.iter().any(|b| b == "green") && first.iter().any(|b| b == "blue"));
    for (i, was) in first.iter().enumerate() {
        for _ in 0..3 {
            assert_eq!(&as_client(&format!("client-{i}")), was, "client-{i} moved");
        }
    }
}
