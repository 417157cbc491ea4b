//! The plain-HTTP/1 connection loop (`plain`): bodiless requests are served without
//! hyper's server, everything else hands the connection to it. Checked on the wire: the
//! answers' framing for every kind of upstream body, pipelined requests across a hand-off
//! answered in order, and the end of a connection a client asked to close.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{route, Backend, Proxy};

/// One answer as the client read it: status, headers (names lowercase) and the body
/// decoded from its framing.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer to a request of `method`, following its framing (RFC 9112 §6.3).
fn read_answer(r: &mut impl BufRead, method: &str) -> Answer {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("a header line");
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 {
        return answer;
    }
    if answer.header("transfer-encoding") == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).expect("a chunk size");
            if size == 0 {
                line.clear();
                r.read_line(&mut line).unwrap();
                assert_eq!(line, "\r\n", "no trailers are sent unasked");
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).unwrap();
            assert!(chunk.ends_with(b"\r\n"));
            answer.body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let len: usize = answer
            .header("content-length")
            .expect("a length or chunks")
            .parse()
            .unwrap();
        answer.body = vec![0; len];
        r.read_exact(&mut answer.body).unwrap();
    }
    answer
}

/// An upstream that answers each path with fixed raw bytes, in every framing a response
/// can have; it records the request lines (and bodies) it read.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

fn raw_upstream() -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            std::thread::spawn(move || serve_raw(stream, &log));
        }
    });
    RawUpstream { addr, seen }
}

fn serve_raw(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut parts = request_line.split(' ');
        let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
        log.lock().unwrap().push(format!(
            "{method} {path} {}",
            String::from_utf8_lossy(&body)
        ));
        let head = method == "HEAD";
        let raw: &[u8] = match path {
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kind: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
            "/nocontent" => b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n",
            "/unmodified" => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 10\r\n\r\n",
            "/until-close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
            _ if head => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Sun, 06 Dec 2026 10:00:00 GMT\r\n\r\n",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Sun, 06 Dec 2026 10:00:00 GMT\r\n\r\nhello",
        };
        if writer.write_all(raw).is_err() || path == "/until-close" {
            return;
        }
    }
}

fn proxy_to(upstream: SocketAddr) -> Proxy {
    let proxy = Proxy::start(common::config());
    let backend_route = {
        let mut r = route("app/web", &["*"], "/", "r1", &[]);
        r.upstreams.push(hoist_protocol::proxy::Upstream {
            addr: upstream,
            instance: "raw".into(),
        });
        r
    };
    proxy.set_route(backend_route);
    proxy
}

fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

#[test]
fn every_upstream_framing_is_answered_as_hyper_frames_it() {
    let up = raw_upstream();
    let proxy = proxy_to(up.addr);
    let (mut r, mut w) = connect(proxy.addr);
    let ask = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, method: &str, path: &str| {
        write!(w, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_answer(r, method)
    };

    // A length: passed on, with the upstream's Date.
    let a = ask(&mut w, &mut r, "GET", "/");
    assert_eq!((a.status, &a.body[..]), (200, &b"hello"[..]));
    assert_eq!(a.header("content-length"), Some("5"));
    assert_eq!(a.header("date"), Some("Sun, 06 Dec 2026 10:00:00 GMT"));
    assert_eq!(a.header("connection"), None);

    // HEAD: the length its GET would have, no body.
    let a = ask(&mut w, &mut r, "HEAD", "/");
    assert_eq!((a.status, a.header("content-length")), (200, Some("5")));

    // Chunked upstream: chunked to the client, trailers not sent unasked.
    let a = ask(&mut w, &mut r, "GET", "/chunked");
    assert_eq!((a.status, &a.body[..]), (200, &b"abcde"[..]));
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.header("x-kind"), Some("chunked"));
    assert_eq!(a.header("content-length"), None);
    assert!(
        a.header("date").is_some(),
        "a Date where the upstream gave none"
    );

    // 204 and 304: no body and no length of one, whatever the upstream said.
    let a = ask(&mut w, &mut r, "GET", "/nocontent");
    assert_eq!((a.status, a.header("content-length")), (204, None));
    let a = ask(&mut w, &mut r, "GET", "/unmodified");
    assert_eq!((a.status, a.header("content-length")), (304, None));
    assert_eq!(a.header("etag"), Some("\"v1\""));

    // A body delimited by the upstream's close: chunked, and the connection kept.
    let a = ask(&mut w, &mut r, "GET", "/until-close");
    assert_eq!((a.status, &a.body[..]), (200, &b"until the end"[..]));
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    let a = ask(&mut w, &mut r, "GET", "/");
    assert_eq!(
        (a.status, &a.body[..]),
        (200, &b"hello"[..]),
        "the connection was kept"
    );
}

#[test]
fn pipelined_requests_across_a_hand_off_to_hyper_are_answered_in_order() {
    let up = raw_upstream();
    let proxy = proxy_to(up.addr);
    let (mut r, mut w) = connect(proxy.addr);
    // Two bodiless requests (this loop's), one with a body (hyper's from there on), then
    // two more, in one write: hyper gets the bytes this loop had read ahead.
    w.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /two HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\npayload\
          GET /four HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let methods = ["GET", "HEAD", "POST", "GET", "GET"];
    let answers: Vec<Answer> = methods.iter().map(|m| read_answer(&mut r, m)).collect();
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    assert_eq!(answers[0].body, b"hello");
    assert_eq!(answers[2].body, b"hello");
    assert_eq!(answers[4].body, b"abcde");
    assert_eq!(
        *up.seen.lock().unwrap(),
        [
            "GET /one ",
            "HEAD /two ",
            "POST /three payload",
            "GET /four ",
            "GET /chunked "
        ]
    );
}

#[test]
fn a_client_that_asks_to_close_gets_connection_close_and_the_end_of_the_connection() {
    let backend = Backend::start("b");
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("app/web", &["b.test"], "/", "r1", &[&backend]));
    let (mut r, mut w) = connect(proxy.addr);
    write!(
        w,
        "GET / HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let a = read_answer(&mut r, "GET");
    assert_eq!((a.status, &a.body[..]), (200, &b"b"[..]));
    assert_eq!(a.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        r.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
    // The proxy's own answers carry a Date and a length, as hyper's did.
    let (mut r, mut w) = connect(proxy.addr);
    write!(w, "GET / HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n").unwrap();
    let a = read_answer(&mut r, "GET");
    assert_eq!(a.status, 404);
    assert!(a.header("date").is_some(), "{a:?}");
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str())
    );
}

#[test]
fn an_http_1_0_request_is_hyper_s_and_answered_in_http_1_0() {
    let backend = Backend::start("b");
    let proxy = Proxy::start(common::config());
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[&backend]));
    // raw_exchange reads until the proxy closes: HTTP/1.0 without keep-alive ends there.
    let raw = common::raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nb"), "{text}");
}

#[test]
fn both_framings_after_requests_the_loop_served_are_still_refused_and_never_forwarded() {
    let up = raw_upstream();
    let proxy = proxy_to(up.addr);
    let (mut r, mut w) = connect(proxy.addr);
    // Two requests this loop serves, then a smuggling attempt (hyper's from there on):
    // the framing scanner must count it as the connection's third head.
    w.write_all(
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /two HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut r, "GET").status, 200);
    assert_eq!(read_answer(&mut r, "GET").status, 200);
    let refused = read_answer(&mut r, "POST");
    assert_eq!(refused.status, 400, "{refused:?}");
    assert_eq!(refused.header("connection"), Some("close"));
    assert_eq!(*up.seen.lock().unwrap(), ["GET /one ", "GET /two "]);
}
