//! WebSockets through the proxy (reliability A6): tunnelled both ways, alive after a
//! swap, closed with 1001 "going away" at the drain timeout or when `WaitDrained` gives
//! up, and counted as tunnels while draining.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Proxy;
use futures_util::{SinkExt, StreamExt};
use hoist_protocol::proxy::{Reply, Request, Route, Upstream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server answering `<name>:<message>`, on its own thread.
struct WsBackend {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl WsBackend {
    fn start(name: &str) -> WsBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let name = name.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                    };
                    let name = name.clone();
                    tokio::spawn(async move {
                        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                            return;
                        };
                        while let Some(Ok(msg)) = ws.next().await {
                            match msg {
                                Message::Text(t) => {
                                    let sent = ws.send(Message::text(format!("{name}:{t}"))).await;
                                    if sent.is_err() {
                                        return;
                                    }
                                }
                                Message::Close(_) => return,
                                _ => {}
                            }
                        }
                    });
                }
            });
        });
        WsBackend { addr, _stop: stop }
    }
}

fn ws_route(release: &str, backend: &WsBackend, drain_timeout_ms: u64) -> Route {
    Route {
        id: "app/web".into(),
        app: "app".into(),
        service: "web".into(),
        domains: vec!["*".into()],
        path_prefix: "/".into(),
        release: release.into(),
        upstreams: vec![Upstream {
            addr: backend.addr,
            instance: release.into(),
        }],
        drain_timeout_ms,
        guards: Default::default(),
        tls: None,
        canary: None,
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(proxy: SocketAddr) -> Ws {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{proxy}/socket"), stream)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo(ws: &mut Ws, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo: {other:?}"),
    }
}

/// Waits for the close frame and returns its code.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn websockets_survive_a_swap_and_close_with_1001_at_the_drain_timeout() {
    let (old, new) = (WsBackend::start("old"), WsBackend::start("new"));
    let proxy = tokio::task::spawn_blocking(|| Proxy::start(common::config()))
        .await
        .unwrap();
    let control = proxy.control.clone();
    let call = move |req: Request| {
        let control = control.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                hoist_proxy::Client::connect(&control)
                    .unwrap()
                    .call(req)
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let drain = Duration::from_millis(1500);
    call(Request::SetRoute {
        route: ws_route("r1", &old, 60_000),
    })
    .await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(open(proxy.addr).await);
    }
    for ws in &mut sockets {
        assert_eq!(echo(ws, "hi").await, "old:hi");
    }
    let swapped = Instant::now();
    call(Request::SetRoute {
        route: ws_route("r2", &new, drain.as_millis() as u64),
    })
    .await;
    // Old tunnels still work after the swap; new connections go to the new set.
    for ws in &mut sockets {
        assert_eq!(echo(ws, "still").await, "old:still");
    }
    let mut fresh = open(proxy.addr).await;
    assert_eq!(echo(&mut fresh, "hello").await, "new:hello");
    let Reply::Draining { upstreams } = call(Request::Draining).await else {
        panic!("draining")
    };
    assert_eq!(
        upstreams
            .iter()
            .map(|u| (u.addr, u.tunnels))
            .collect::<Vec<_>>(),
        vec![(old.addr, 5)]
    );
    for ws in &mut sockets {
        assert_eq!(close_code(ws).await, Some(CloseCode::Away));
    }
    assert!(
        swapped.elapsed() >= drain,
        "closed only at the drain timeout, not before"
    );
    // The tunnel on the new set is untouched.
    assert_eq!(echo(&mut fresh, "again").await, "new:again");
    let reply = call(Request::WaitDrained {
        addrs: vec![old.addr],
        timeout_ms: 5000,
    })
    .await;
    assert_eq!(
        reply,
        Reply::Drained {
            drained: true,
            closed_tunnels: 0,
            in_flight: 0
        }
    );
    drop(fresh);
    tokio::task::spawn_blocking(move || drop(proxy))
        .await
        .unwrap();
}

#[tokio::test]
async fn wait_drained_closes_the_remaining_tunnels_at_its_timeout() {
    let (old, new) = (WsBackend::start("old"), WsBackend::start("new"));
    let proxy = tokio::task::spawn_blocking(|| Proxy::start(common::config()))
        .await
        .unwrap();
    let control = proxy.control.clone();
    let call = move |req: Request| {
        let control = control.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                hoist_proxy::Client::connect(&control)
                    .unwrap()
                    .call(req)
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    call(Request::SetRoute {
        route: ws_route("r1", &old, 600_000),
    })
    .await;
    let mut a = open(proxy.addr).await;
    let mut b = open(proxy.addr).await;
    assert_eq!(echo(&mut a, "x").await, "old:x");
    call(Request::SetRoute {
        route: ws_route("r2", &new, 600_000),
    })
    .await;
    let waiting = tokio::spawn(call(Request::WaitDrained {
        addrs: vec![old.addr],
        timeout_ms: 300,
    }));
    assert_eq!(close_code(&mut a).await, Some(CloseCode::Away));
    assert_eq!(close_code(&mut b).await, Some(CloseCode::Away));
    let Reply::Drained {
        drained,
        closed_tunnels,
        ..
    } = waiting.await.unwrap()
    else {
        panic!("drained")
    };
    assert_eq!((drained, closed_tunnels), (true, 2));
    tokio::task::spawn_blocking(move || drop(proxy))
        .await
        .unwrap();
}

#[test]
fn other_upgrades_are_not_tunnelled() {
    let b = common::Backend::start("plain");
    let proxy = Proxy::start(common::config());
    proxy.set_route(common::route("app/web", &["*"], "/", "r1", &[&b]));
    for upgrade in ["h2c", "foo/1", "websocket"] {
        // `websocket` without `Connection: upgrade` is not a handshake either.
        let connection = if upgrade == "websocket" {
            "keep-alive"
        } else {
            "Upgrade, HTTP2-Settings"
        };
        let settings = if upgrade == "h2c" {
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        } else {
            ""
        };
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\nUpgrade: {upgrade}\r\n{settings}\r\n");
        let out = common::raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_millis(500));
        assert_eq!(
            common::status_of(&out),
            Some(200),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    for seen in b.seen() {
        assert_eq!(seen.header("upgrade"), None, "{seen:?}");
        assert_eq!(seen.header("http2-settings"), None, "{seen:?}");
        assert_eq!(seen.header("connection"), None, "{seen:?}");
    }
    assert_eq!(b.count(), 3);
}
