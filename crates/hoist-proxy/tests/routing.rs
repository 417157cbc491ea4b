//! Routing by host and prefix, balancing, answers without an upstream, the control
//! socket's table and counters, the access log and the saved state — against real
//! upstream servers on port 0.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{route, Backend, KeepAlive, Proxy};
use hoist_protocol::proxy::{Reply, Request};
use hoist_testkit::http_get;

#[test]
fn exact_host_beats_any_and_longest_prefix_wins() {
    let (any, api, notes, notes_api) = (
        Backend::start("any"),
        Backend::start("any-api"),
        Backend::start("notes"),
        Backend::start("notes-api"),
    );
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("any", &["*"], "/", "r1", &[&any]));
    proxy.set_route(route("any-api", &["*"], "/api", "r1", &[&api]));
    proxy.set_route(route("notes", &["notes.example.com"], "/", "r1", &[&notes]));
    proxy.set_route(route(
        "notes-api",
        &["notes.example.com", "www.notes.example.com"],
        "/api/",
        "r1",
        &[&notes_api],
    ));
    for (host, path, want) in [
        ("notes.example.com", "/", "notes"),
        ("notes.example.com:8080", "/x", "notes"),
        ("NOTES.example.com", "/api/v1", "notes-api"),
        ("www.notes.example.com", "/api/", "notes-api"),
        ("notes.example.com", "/api", "notes"),
        ("elsewhere.test", "/api", "any-api"),
        ("elsewhere.test", "/api/deep/path?q=1", "any-api"),
        ("elsewhere.test", "/apix", "any"),
        ("elsewhere.test", "/", "any"),
    ] {
        let resp = http_get(proxy.addr, host, path).unwrap();
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, want),
            "{host}{path}"
        );
    }
    // The upstream gets the path and query as the client sent them.
    assert!(
        api.seen().iter().any(|s| s.path == "/api/deep/path?q=1"),
        "{:?}",
        api.seen()
    );
}

#[test]
fn requests_are_balanced_across_members() {
    let backends: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("b{i}"))).collect();
    let proxy = Proxy::start(common::config());
    proxy.set_route(route(
        "app/web",
        &["*"],
        "/",
        "r1",
        &backends.iter().collect::<Vec<_>>(),
    ));
    let mut client = KeepAlive::connect(proxy.addr).unwrap();
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..90 {
        let (status, body) = client.get("x", "/").unwrap();
        assert_eq!(status, 200);
        *hits.entry(body).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    for (name, n) in &hits {
        assert!(*n >= 20, "{name} got only {n} of 90: {hits:?}");
    }
}

#[test]
fn no_route_is_404_and_an_empty_set_is_503() {
    let proxy = Proxy::start(common::config());
    let resp = http_get(proxy.addr, "nobody.test", "/").unwrap();
    assert_eq!(resp.status, 404);
    assert!(resp.body.contains("nobody.test"), "{}", resp.body);
    proxy.set_route(route("empty", &["*"], "/", "r1", &[]));
    assert_eq!(http_get(proxy.addr, "x", "/").unwrap().status, 503);
    // Removing it brings back the 404, and removing it twice is an error naming it.
    assert_eq!(
        proxy.call(Request::RemoveRoute { id: "empty".into() }),
        Reply::Done
    );
    assert_eq!(http_get(proxy.addr, "x", "/").unwrap().status, 404);
    let err = proxy
        .client()
        .call(Request::RemoveRoute { id: "empty".into() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("`empty`"), "{err}");
}

#[test]
fn invalid_routes_and_versions_are_refused_with_reasons() {
    let proxy = Proxy::start(common::config());
    let b = Backend::start("b");
    let mut bad = route("bad", &["*"], "api", "r1", &[&b]);
    let err = proxy
        .client()
        .call(Request::SetRoute { route: bad.clone() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("prefix"), "{err}");
    bad.path_prefix = "/".into();
    bad.upstreams.push(bad.upstreams[0].clone());
    let err = proxy
        .client()
        .call(Request::SetRoute { route: bad })
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    // A line of another protocol version gets an error naming both versions.
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&proxy.control).unwrap();
    s.write_all(b"{\"version\":99,\"request\":{\"type\":\"ping\"}}\n")
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("`99`") && line.contains("error"), "{line}");
}

#[test]
fn stats_count_per_route_and_release_and_the_access_log_has_a_line_per_request() {
    let dir = hoist_testkit::tempdir();
    let log = dir.path().join("access.log");
    let b = Backend::start("b");
    let proxy = Proxy::start(hoist_proxy::Config {
        access_log: Some(hoist_proxy::AccessLogTarget::File(log.clone())),
        ..common::config()
    });
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&b]));
    for _ in 0..5 {
        assert_eq!(http_get(proxy.addr, "x", "/hello?x=1").unwrap().status, 200);
    }
    let resp = http_get(proxy.addr, "x", "/").unwrap();
    assert_eq!(resp.status, 200);
    let Reply::Stats { routes } = proxy.call(Request::Stats) else {
        panic!("stats")
    };
    let r1 = routes
        .iter()
        .find(|s| s.route == "app/web" && s.release == "r1")
        .expect("r1 counters");
    assert_eq!(r1.status[1], 6, "{r1:?}");
    assert_eq!(r1.latency.counts.iter().sum::<u64>(), 6);
    assert_eq!(r1.bytes_out, 6, "one byte `b` per response");
    hoist_testkit::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() == 6)
            .unwrap_or(false)
    })
    .expect("six access log lines");
    let text = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for key in [
        "time",
        "route",
        "release",
        "method",
        "path",
        "status",
        "duration_ms",
        "upstream",
        "request_id",
        "bytes",
    ] {
        assert!(first.get(key).is_some(), "missing `{key}` in {first}");
    }
    assert_eq!(first["route"], "app/web");
    assert_eq!(first["path"], "/hello?x=1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], b.addr.to_string());
    // The request id the upstream saw is the one logged.
    let ids: Vec<String> = b
        .seen()
        .iter()
        .filter_map(|s| s.header("x-request-id").map(str::to_string))
        .collect();
    assert_eq!(ids[0], first["request_id"].as_str().unwrap());
}

#[test]
fn the_table_is_saved_and_a_new_proxy_starts_from_it() {
    let dir = hoist_testkit::tempdir();
    let state = dir.path().join("routes.json");
    let b = Backend::start("kept");
    {
        let proxy = Proxy::start(hoist_proxy::Config {
            state_file: Some(state.clone()),
            ..common::config()
        });
        proxy.set_route(route("app/web", &["*"], "/", "r1", &[&b]));
    }
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("app/web"), "{text}");
    let routes = hoist_proxy::load_state(&state).unwrap();
    let proxy = Proxy::start(hoist_proxy::Config {
        routes,
        state_file: Some(state),
        ..common::config()
    });
    assert_eq!(http_get(proxy.addr, "x", "/").unwrap().body, "kept");
}

#[test]
fn a_member_left_out_of_the_set_gets_nothing_and_rejoins_when_listed_again() {
    // The agent's health checks decide membership; the proxy obeys the set at once.
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&a, &b]));
    let mut client = KeepAlive::connect(proxy.addr).unwrap();
    let mut bodies =
        |n: usize| -> Vec<String> { (0..n).map(|_| client.get("x", "/").unwrap().1).collect() };
    let both = bodies(10);
    assert!(
        both.contains(&"a".to_string()) && both.contains(&"b".to_string()),
        "{both:?}"
    );
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&a]));
    let b_before = b.count();
    assert!(bodies(20).iter().all(|x| x == "a"));
    assert_eq!(
        b.count(),
        b_before,
        "an unhealthy member gets no request once it left the set"
    );
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&a, &b]));
    assert!(bodies(10).contains(&"b".to_string()), "b rejoined");
}

#[test]
fn head_and_expect_continue_keep_the_framing_intact() {
    use std::io::{BufRead, BufReader, Read, Write};
    let b = Backend::start("body");
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&b]));
    // HEAD: the length of the GET body, no body, and the connection stays usable.
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_ascii_lowercase());
    }
    assert!(head[0].contains(" 200 "), "{head:?}");
    assert!(head.contains(&"content-length: 4".to_string()), "{head:?}");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(
        common::read_response(&mut r).unwrap(),
        (200, "body".to_string())
    );
    // Expect: 100-continue: the client hears 100 before it sends the body.
    let mut s = std::net::TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(
        common::read_response(&mut r).unwrap(),
        (200, "body".to_string())
    );
    assert!(b.seen().iter().any(|s| s.body == b"hello"));
}

/// Issue #14: the proxy kept the counters of every release it ever routed (36 KB each),
/// so RSS grew with every deploy. After many swaps, each with a new release and often a
/// new canary, the counters held are the live releases' (route and canary) and the few
/// most recently retired ones; those of a removed route go with it.
#[test]
fn counters_of_retired_releases_are_forgotten_after_many_swaps() {
    use hoist_protocol::proxy::{Canary, RouteStats, Upstream};
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let proxy = Proxy::start(common::config());
    let held = |proxy: &Proxy| -> Vec<RouteStats> {
        let Reply::Stats { routes } = proxy.call(Request::Stats) else {
            panic!("stats")
        };
        routes
    };
    let swaps = 300;
    for n in 0..swaps {
        let (live, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let mut r = route("app/web", &["*"], "/", &format!("r{n}"), &[live]);
        if n % 3 == 0 {
            r.canary = Some(Canary {
                release: format!("c{n}"),
                upstreams: vec![Upstream {
                    addr: other.addr,
                    instance: other.name.clone(),
                }],
                weight_bp: 5000,
            });
        }
        proxy.set_route(r);
        proxy.set_route(route(
            "other/web",
            &["other.example.com"],
            "/",
            &format!("o{n}"),
            &[live],
        ));
        if n % 50 == 0 {
            assert_eq!(http_get(proxy.addr, "x", "/").unwrap().status, 200);
        }
    }
    let last = swaps - 1;
    let routes = held(&proxy);
    let releases = |id: &str| -> Vec<String> {
        let mut v: Vec<String> = routes
            .iter()
            .filter(|s| s.route == id)
            .map(|s| s.release.clone())
            .collect();
        v.sort();
        v
    };
    let app = releases("app/web");
    assert!(
        app.len() <= 1 + hoist_proxy::RETIRED_COUNTERS_KEPT,
        "{} counters held for app/web after {swaps} releases: {:?}…",
        app.len(),
        &app[..app.len().min(8)]
    );
    assert!(
        app.contains(&format!("r{last}")),
        "the live release: {app:?}"
    );
    assert!(
        app.contains(&format!("r{}", last - 1)),
        "the release just retired is still readable: {app:?}"
    );
    let other = releases("other/web");
    assert!(
        other.len() <= 1 + hoist_proxy::RETIRED_COUNTERS_KEPT,
        "{} counters held for other/web",
        other.len()
    );
    assert!(other.contains(&format!("o{last}")), "{other:?}");
    // A live canary's counters are kept beside the route's.
    let mut r = route("app/web", &["*"], "/", "final", &[&a]);
    r.canary = Some(Canary {
        release: "final-canary".into(),
        upstreams: vec![Upstream {
            addr: b.addr,
            instance: b.name.clone(),
        }],
        weight_bp: 5000,
    });
    proxy.set_route(r);
    let routes = held(&proxy);
    for want in ["final", "final-canary"] {
        assert!(
            routes
                .iter()
                .any(|s| s.route == "app/web" && s.release == want),
            "{want}"
        );
    }
    // A removed route leaves no counters behind.
    assert_eq!(
        proxy.call(Request::RemoveRoute {
            id: "other/web".into()
        }),
        Reply::Done
    );
    let routes = held(&proxy);
    assert!(
        routes.iter().all(|s| s.route != "other/web"),
        "{:?}",
        routes
            .iter()
            .map(|s| (&s.route, &s.release))
            .collect::<Vec<_>>()
    );
}
