//! Shared pieces of the proxy's in-process tests: a proxy run on port 0 in its own
//! thread (stopped on drop), small real upstream servers that answer with their own
//! name, and blocking raw-socket HTTP clients so tests see exactly what crosses the wire.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hoist_protocol::proxy::{Reply, Request, Route, Upstream};
use hoist_proxy::{Client, Config};
use http_body_util::Full;
use hyper::{Request as HRequest, Response as HResponse};
use hyper_util::rt::TokioIo;

/// A proxy served in-process by `hoist_proxy::run`, on its own thread and runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    pub control: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    pub fn start(config: Config) -> Proxy {
        let dir = hoist_testkit::tempdir();
        let control = dir.path().join("control.sock");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let control_listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                hoist_proxy::run(config, vec![listener], control_listener, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("proxy run");
            });
        });
        let proxy = Proxy {
            addr,
            control,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        };
        hoist_testkit::wait_until(Duration::from_secs(10), || {
            Client::connect(&proxy.control).is_ok()
        })
        .expect("control socket answers");
        proxy
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.control).expect("control connect")
    }

    pub fn call(&self, request: Request) -> Reply {
        self.client().call(request).expect("control call")
    }

    pub fn set_route(&self, route: Route) {
        assert_eq!(self.call(Request::SetRoute { route }), Reply::Done);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Small, fast config for tests: 2 workers, short grace.
pub fn config() -> Config {
    Config {
        workers: 2,
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    }
}

/// [`config`] with these limits.
pub fn with_limits(limits: hoist_proxy::Limits) -> Config {
    Config { limits, ..config() }
}

/// A proxy started with `config` whose one route (any host, `/`) goes to `b`.
pub fn proxy_to(b: &Backend, config: Config) -> Proxy {
    let proxy = Proxy::start(config);
    proxy.set_route(route("app/web", &["*"], "/", "r1", &[b]));
    proxy
}

pub fn route(
    id: &str,
    domains: &[&str],
    prefix: &str,
    release: &str,
    upstreams: &[&Backend],
) -> Route {
    Route {
        id: id.into(),
        app: "app".into(),
        service: "web".into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        path_prefix: prefix.into(),
        release: release.into(),
        upstreams: upstreams
            .iter()
            .map(|b| Upstream {
                addr: b.addr,
                instance: b.name.clone(),
            })
            .collect(),
        drain_timeout_ms: 30_000,
        guards: Default::default(),
        tls: None,
        canary: None,
    }
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP/1.1 upstream (hyper on its own thread) answering `<name>` to every
/// request; `/slow/<ms>` waits first, `/big/<n>` answers n bytes. It records every request.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub count: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Backend::start_at(name, "127.0.0.1:0".parse().unwrap())
    }

    /// A backend on a given address (a member that comes back on its old port).
    pub fn start_at(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (n, s, c) = (name.to_string(), seen.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        _ = &mut stop_rx => return,
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    };
                    let (n, s, c) = (n.clone(), s.clone(), c.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: HRequest<hyper::body::Incoming>| {
                                let (n, s, c) = (n.clone(), s.clone(), c.clone());
                                async move {
                                    Ok::<_, std::convert::Infallible>(answer(&n, &s, &c, req).await)
                                }
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .max_headers(1000)
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        Backend {
            addr,
            name: name.to_string(),
            seen,
            count,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

async fn answer(
    name: &str,
    seen: &Mutex<Vec<Seen>>,
    count: &AtomicUsize,
    req: HRequest<hyper::body::Incoming>,
) -> HResponse<Full<Bytes>> {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (body, trailers) = match req.into_body().collect().await {
        Ok(c) => {
            let trailers = c
                .trailers()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (c.to_bytes().to_vec(), trailers)
        }
        Err(_) => Default::default(),
    };
    count.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        headers,
        body,
        trailers,
    });
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = path
        .strip_prefix("/big/")
        .and_then(|m| m.parse::<usize>().ok())
    {
        return HResponse::new(Full::new(Bytes::from(vec![b'x'; n])));
    }
    HResponse::new(Full::new(Bytes::from(name.to_string())))
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A keep-alive HTTP/1.1 client on one raw socket.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> std::io::Result<KeepAlive> {
        let writer = TcpStream::connect(addr)?;
        writer.set_read_timeout(Some(Duration::from_secs(20)))?;
        writer.set_nodelay(true)?;
        Ok(KeepAlive {
            reader: BufReader::new(writer.try_clone()?),
            writer,
        })
    }

    /// GETs `path` and returns (status, body); the body must have a Content-Length.
    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<(u16, String)> {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
        read_response(&mut self.reader)
    }
}

/// Reads one response head and its Content-Length body from `r`.
pub fn read_response(r: &mut impl BufRead) -> std::io::Result<(u16, String)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&line))?;
    let mut len = 0usize;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| bad(l))?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `raw` on a fresh connection and returns everything the proxy sent back until
/// it closed (or `wait` passed).
pub fn raw_exchange(addr: SocketAddr, raw: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

pub fn status_of(raw: &[u8]) -> Option<u16> {
    std::str::from_utf8(raw.get(..12)?)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}
