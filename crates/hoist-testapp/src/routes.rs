//! What each path answers: identity and counters (`/`, `/stats`), health (`/health`),
//! slow requests (`/sleep`), the request headers as the app saw them (`/headers`), a
//! write with a side effect (`/echo`), a WebSocket echo (`/ws`), the persistent data dir
//! (`/data/NAME`) and a write attempt into the release tree (`/write-release-file`).
//!
//! Handlers never fail the connection: every problem is an HTTP status with a JSON body.
//! The server's lifecycle (accept, drain) lives in `serve`.

use std::convert::Infallible;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::out;
use crate::serve::{State, TaskToken};

type Reply = Response<Full<Bytes>>;

/// Request bodies larger than this are refused: the app is a test double, not a store.
const MAX_BODY: usize = 64 * 1024 * 1024;

pub async fn handle(
    state: Arc<State>,
    token: TaskToken,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_owned();
    let observer = matches!(path.as_str(), "/health" | "/stats");
    if !observer {
        state.count.fetch_add(1, Ordering::Relaxed);
    }
    let _in_flight = (!observer).then(|| Gauge::up(&state, |s| &s.in_flight));
    let reply = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => index(&state),
        (Method::GET, "/health") => health(&state),
        (Method::GET, "/stats") => stats(&state),
        (Method::GET, "/sleep") => sleep(&state, &req).await,
        (Method::GET, "/headers") => headers(&req),
        (Method::GET, p) if p.starts_with("/status/") => status_reply(&state, p),
        (Method::POST, "/echo") => echo(&state, req).await.unwrap_or_else(Refused::into_reply),
        (Method::GET, "/ws") => websocket(state.clone(), token, req),
        (Method::PUT, p) if p.starts_with("/data/") => put_data(&state, req)
            .await
            .unwrap_or_else(Refused::into_reply),
        (Method::GET, p) if p.starts_with("/data/") => get_data(&state, p)
            .await
            .unwrap_or_else(Refused::into_reply),
        (Method::POST, "/write-release-file") => write_release_file(&req),
        (method, _) => error(
            StatusCode::NOT_FOUND,
            format!("no route for `{method} {path}`"),
        ),
    };
    Ok(reply)
}

/// Counts something up while alive (an in-flight request, an open WebSocket).
struct Gauge {
    state: Arc<State>,
    field: fn(&State) -> &AtomicU64,
}

impl Gauge {
    fn up(state: &Arc<State>, field: fn(&State) -> &AtomicU64) -> Gauge {
        field(state).fetch_add(1, Ordering::Relaxed);
        Gauge {
            state: state.clone(),
            field,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.field)(&self.state).fetch_sub(1, Ordering::Relaxed);
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_reply(status: StatusCode, value: Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: String) -> Reply {
    json_reply(status, json!({ "error": message }))
}

/// A request the app refuses: the status and the message of its JSON body.
struct Refused(StatusCode, String);

impl Refused {
    fn into_reply(self) -> Reply {
        error(self.0, self.1)
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    // Values are taken literally (no percent-decoding): tests pass plain numbers and paths.
    req.uri()
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn index(state: &State) -> Reply {
    // `n * p % 100 < p` holds for exactly p of every 100 consecutive n, evenly spread.
    let n = state.index_seq.fetch_add(1, Ordering::Relaxed);
    let status = if n * state.fail_percent % 100 < state.fail_percent {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    json_reply(
        status,
        json!({
            "release": state.release,
            "instance": state.instance,
            "service": state.service,
            "app": state.app,
            "pid": std::process::id(),
            "count": state.count.load(Ordering::Relaxed),
            "side_effects": state.side_effects.load(Ordering::Relaxed),
        }),
    )
}

fn health(state: &State) -> Reply {
    let before = state.health_checks.fetch_add(1, Ordering::Relaxed);
    let reason = if state.fail_health {
        Some("--fail-health")
    } else if state
        .health_pass_then_fail
        .is_some_and(|passes| before >= passes)
    {
        Some("--health-pass-then-fail")
    } else if state
        .unhealthy_after
        .is_some_and(|after| state.started.elapsed() >= after)
    {
        Some("--unhealthy-after")
    } else {
        None
    };
    match reason {
        None => reply(StatusCode::OK, "text/plain", "ok"),
        Some(flag) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("unhealthy: {flag}"),
        ),
    }
}

fn stats(state: &State) -> Reply {
    json_reply(
        StatusCode::OK,
        json!({
            "open_websockets": state.open_websockets.load(Ordering::Relaxed),
            "count": state.count.load(Ordering::Relaxed),
            "in_flight": state.in_flight.load(Ordering::Relaxed),
            "health_checks": state.health_checks.load(Ordering::Relaxed),
            "side_effects": state.side_effects.load(Ordering::Relaxed),
            "log_seq": state.running.log_seq.load(Ordering::Relaxed),
            "child_pid": state.running.child_pid,
            "pid": std::process::id(),
            "release": state.release,
            "uptime_ms": state.started.elapsed().as_millis() as u64,
        }),
    )
}

async fn sleep(state: &State, req: &Request<Incoming>) -> Reply {
    let Some(ms) = query_param(req, "ms").and_then(|ms| ms.parse::<u64>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "expected `?ms=N`".to_owned());
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    json_reply(
        StatusCode::OK,
        json!({ "slept_ms": ms, "release": state.release, "pid": std::process::id() }),
    )
}

/// `/status/NNN`: answers with that status (a release that fails some requests).
fn status_reply(state: &State, path: &str) -> Reply {
    match path["/status/".len()..]
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(code) => json_reply(
            code,
            json!({ "status": code.as_u16(), "release": state.release }),
        ),
        None => error(StatusCode::BAD_REQUEST, "expected `/status/NNN`".to_owned()),
    }
}

/// The request headers as a JSON object; repeated headers are joined with `, ` as
/// HTTP allows, so a proxy test sees exactly one value per name.
fn headers(req: &Request<Incoming>) -> Reply {
    let mut map = serde_json::Map::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    json_reply(StatusCode::OK, Value::Object(map))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refused> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => Err(Refused(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
    }
}

async fn echo(state: &State, req: Request<Incoming>) -> Result<Reply, Refused> {
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = read_body(req).await?;
    state.side_effects.fetch_add(1, Ordering::Relaxed);
    let mut response = Response::new(Full::new(body));
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    Ok(response)
}

/// Accepts the upgrade and echoes text and binary messages until either side closes.
/// The connection counts as open from the 101 on, so a client that has its handshake
/// answered already sees itself in `/stats`. A graceful stop waits for it rather than
/// closing it: draining WebSockets is the proxy's job, and tests must see it do that.
fn websocket(state: Arc<State>, token: TaskToken, req: Request<Incoming>) -> Reply {
    let wants_websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| wants_websocket)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a websocket upgrade".to_owned(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let open = Gauge::up(&state, |s| &s.open_websockets);
    tokio::spawn(async move {
        let _token = token;
        let _open = open;
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo_messages(ws).await;
            }
            Err(e) => out::log(&format!("websocket upgrade failed: {e}")),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

async fn echo_messages<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Pings are answered and closes acknowledged by tungstenite while we keep reading.
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            break;
        }
    }
}

/// `NAME` of `/data/NAME` when it is one plain file name (no traversal out of the dir).
fn data_name(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/data/")?;
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Some(name),
        _ => None,
    }
}

fn data_path(state: &State, path: &str) -> Result<std::path::PathBuf, Refused> {
    let Some(dir) = &state.data_dir else {
        return Err(Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "`HOIST_DATA_DIR` is not set".to_owned(),
        ));
    };
    match data_name(path) {
        Some(name) => Ok(dir.join(name)),
        None => Err(Refused(
            StatusCode::BAD_REQUEST,
            format!("`{path}` is not `/data/` and a plain file name"),
        )),
    }
}

async fn put_data(state: &State, req: Request<Incoming>) -> Result<Reply, Refused> {
    let path = data_path(state, req.uri().path())?;
    let body = read_body(req).await?;
    match tokio::fs::write(&path, &body).await {
        Ok(()) => Ok(json_reply(
            StatusCode::OK,
            json!({ "path": path, "bytes": body.len() }),
        )),
        Err(e) => Err(Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write `{}`: {e}", path.display()),
        )),
    }
}

async fn get_data(state: &State, uri_path: &str) -> Result<Reply, Refused> {
    let path = data_path(state, uri_path)?;
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(reply(StatusCode::OK, "application/octet-stream", bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Refused(
            StatusCode::NOT_FOUND,
            format!("`{}` does not exist", path.display()),
        )),
        Err(e) => Err(Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read `{}`: {e}", path.display()),
        )),
    }
}

/// Tries to append to `P` (relative to the working dir, the release tree) and reports
/// the outcome as JSON, always with 200: a refusal (`EACCES`, `EROFS`) is the expected
/// answer on a read-only release, and tests read `errno` from the body.
fn write_release_file(req: &Request<Incoming>) -> Reply {
    let Some(target) = query_param(req, "path") else {
        return error(StatusCode::BAD_REQUEST, "expected `?path=P`".to_owned());
    };
    let relative = Path::new(&target)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if target.is_empty() || !relative {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{target}` is not a path inside the working dir"),
        );
    }
    let attempt = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&target)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"written by hoist-testapp\n"));
    let body = match attempt {
        Ok(()) => json!({ "path": target, "written": true, "errno": null, "error": null }),
        Err(e) => {
            let errno = e
                .raw_os_error()
                .map(|code| format!("{:?}", nix::errno::Errno::from_raw(code)));
            json!({ "path": target, "written": false, "errno": errno, "error": e.to_string() })
        }
    };
    json_reply(StatusCode::OK, body)
}
