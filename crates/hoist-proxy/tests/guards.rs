//! Per-route guards with raw requests (issue 12, item 3): maintenance, rate limiting,
//! basic auth, the body limit and trusted proxies, each answered by the proxy with its
//! own status, never reaching the upstream, and counted per route.

mod common;

use std::time::Duration;

use common::{raw_exchange, route, status_of, Backend, Proxy};
use hoist_protocol::proxy::{self as wire, Reply, Request};

fn guarded(b: &Backend, guards: wire::Guards) -> Proxy {
    let proxy = Proxy::start(common::config());
    let mut r = route("app/web", &["*"], "/", "r1", &[b]);
    r.guards = guards;
    proxy.set_route(r);
    proxy
}

fn stats(proxy: &Proxy) -> wire::RouteStats {
    match proxy.call(Request::Stats) {
        Reply::Stats { routes } => routes.into_iter().find(|r| r.route == "app/web").unwrap(),
        other => panic!("{other:?}"),
    }
}

fn get(proxy: &Proxy, path: &str, extra: &str) -> (Option<u16>, String) {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
    let out = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(10));
    (status_of(&out), String::from_utf8_lossy(&out).into_owned())
}

#[test]
fn maintenance_answers_503_with_retry_after_and_lets_acme_through() {
    let b = Backend::start("b");
    let guards = wire::Guards {
        maintenance: Some(wire::Maintenance {
            message: "back at <5>".into(),
            retry_after_s: 120,
        }),
        ..Default::default()
    };
    let proxy = guarded(&b, guards);
    for _ in 0..5 {
        let (status, text) = get(&proxy, "/", "");
        assert_eq!(status, Some(503), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("retry-after: 120"),
            "{text}"
        );
        assert!(text.contains("back at &lt;5&gt;"), "{text}");
    }
    assert_eq!(b.count(), 0);
    let (status, _) = get(&proxy, "/.well-known/acme-challenge/tok", "");
    assert_eq!(
        status,
        Some(200),
        "ACME challenges still reach their answerer"
    );
    let s = stats(&proxy);
    assert_eq!(s.guards.maintenance, 5);
    assert_eq!(
        s.status[4], 0,
        "maintenance is not counted as the release's 5xx"
    );
    // Off again: served.
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&b]));
    assert_eq!(get(&proxy, "/", "").0, Some(200));
}

#[test]
fn rate_limits_answer_429_per_key_with_retry_after() {
    let b = Backend::start("b");
    let guards = wire::Guards {
        rate_limit: Some(wire::RateLimit {
            requests: 1,
            per_ms: 60_000,
            burst: 3,
            key: vec!["CF-Connecting-IP".into()],
        }),
        ..Default::default()
    };
    let proxy = guarded(&b, guards);
    let alice = "CF-Connecting-IP: 1.1.1.1\r\n";
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/", alice).0, Some(200));
    }
    let (status, text) = get(&proxy, "/", alice);
    assert_eq!(status, Some(429), "{text}");
    let retry: u64 = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    // Another key has its own bucket; without the header the peer's address is the key.
    assert_eq!(
        get(&proxy, "/", "CF-Connecting-IP: 2.2.2.2\r\n").0,
        Some(200)
    );
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/", "").0, Some(200));
    }
    assert_eq!(get(&proxy, "/", "").0, Some(429));
    assert_eq!(b.count(), 7);
    assert_eq!(stats(&proxy).guards.rate_limited, 2);
}

#[test]
fn basic_auth_checks_bcrypt_hashes_and_exempts_health_and_acme() {
    use base64::Engine as _;
    let b = Backend::start("b");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let guards = wire::Guards {
        basic_auth: Some(wire::BasicAuth {
            realm: "staff".into(),
            users: vec![("alice".into(), hash)],
            exempt: vec!["/health".into()],
        }),
        ..Default::default()
    };
    let proxy = guarded(&b, guards);
    let creds = |u: &str, p: &str| {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let (status, text) = get(&proxy, "/", "");
    assert_eq!(status, Some(401), "{text}");
    assert!(
        text.contains("WWW-Authenticate: Basic realm=\"staff\"")
            || text
                .to_ascii_lowercase()
                .contains("www-authenticate: basic realm=\"staff\""),
        "{text}"
    );
    assert_eq!(get(&proxy, "/", &creds("alice", "wrong")).0, Some(401));
    assert_eq!(get(&proxy, "/", &creds("bob", "s3cret")).0, Some(401));
    assert_eq!(b.count(), 0);
    for _ in 0..3 {
        assert_eq!(get(&proxy, "/", &creds("alice", "s3cret")).0, Some(200));
    }
    assert_eq!(get(&proxy, "/health", "").0, Some(200));
    assert_eq!(
        get(&proxy, "/.well-known/acme-challenge/x", "").0,
        Some(200)
    );
    assert_eq!(b.count(), 5);
    assert_eq!(stats(&proxy).guards.unauthorized, 3);
}

#[test]
fn bodies_over_the_limit_get_413_before_the_upstream_sees_a_byte() {
    let b = Backend::start("b");
    let guards = wire::Guards {
        max_body_bytes: Some(10),
        ..Default::default()
    };
    let proxy = guarded(&b, guards);
    let send = |raw: &str| {
        let out = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(10));
        (status_of(&out), String::from_utf8_lossy(&out).into_owned())
    };
    let (status, text) =
        send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n01234567890");
    assert_eq!(status, Some(413), "{text}");
    let (status, text) = send(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n678901\r\n0\r\n\r\n",
    );
    assert_eq!(status, Some(413), "{text}");
    assert_eq!(b.count(), 0, "the upstream saw nothing");
    let (status, text) = send(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
    );
    assert_eq!(status, Some(200), "{text}");
    let (status, _) = send(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
    );
    assert_eq!(status, Some(200));
    assert!(b.seen().iter().any(|s| s.body == b"helloworld"));
    assert_eq!(stats(&proxy).guards.too_large, 2);
}

#[test]
fn forwarded_headers_are_believed_only_from_the_routes_trusted_proxies() {
    let b = Backend::start("b");
    let spoof =
        "X-Forwarded-For: 9.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: front.test\r\n";
    let untrusted = guarded(
        &b,
        wire::Guards {
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..Default::default()
        },
    );
    assert_eq!(get(&untrusted, "/", spoof).0, Some(200));
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["x"]);
    let trusted = guarded(
        &b,
        wire::Guards {
            trusted_proxies: vec!["127.0.0.0/8".into()],
            ..Default::default()
        },
    );
    assert_eq!(get(&trusted, "/", spoof).0, Some(200));
    let seen = b.seen().pop().unwrap();
    assert_eq!(seen.all("x-forwarded-for"), ["9.9.9.9, 127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.all("x-forwarded-host"), ["front.test"]);
    // A malformed block is refused with the route.
    let mut bad = route("app/bad", &["*"], "/x", "r1", &[&b]);
    bad.guards.trusted_proxies = vec!["10.0.0.0/40".into()];
    assert!(trusted
        .client()
        .call(Request::SetRoute { route: bad })
        .is_err());
}
