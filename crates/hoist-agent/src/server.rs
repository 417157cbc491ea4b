//! The API router: one function per endpoint, each a short call into the agent.
//! Only the owner of the socket (or root) may talk to the agent: the socket is 0600 and
//! every connection's peer uid is checked, in case the file mode was changed.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use hoist_protocol::agent::{SecretNames, SecretValue, Status};

use crate::http::{self, Body};
use crate::Agent;

const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

pub(crate) async fn serve(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    let me = nix::unistd::getuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match http::peer_uid(&stream) {
            Some(uid) if uid == me || uid == 0 => {}
            other => {
                tracing::warn!(peer_uid = ?other, "refused a connection from another user");
                continue;
            }
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(route(agent, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn route(agent: Arc<Agent>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    match (method, parts.as_slice()) {
        (Method::GET, ["v1", "hello"]) => http::json(StatusCode::OK, &agent.hello()),
        (Method::GET, ["v1", "status"]) => status(&agent),
        (Method::GET, ["v1", "events"]) => events(agent, req.uri().query().unwrap_or("")),
        (Method::GET, ["v1", "secrets", app]) => match agent.secrets.names(app) {
            Ok(names) => http::json(StatusCode::OK, &SecretNames { app: app.to_string(), names }),
            Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        },
        (Method::PUT, ["v1", "secrets", app, name]) => {
            let (app, name) = (app.to_string(), name.to_string());
            let body = match http::read_body(req.into_body(), MAX_JSON_BODY).await {
                Ok(b) => b,
                Err(e) => return http::error(StatusCode::BAD_REQUEST, e, None),
            };
            let Ok(v) = serde_json::from_slice::<SecretValue>(&body) else {
                return http::error(StatusCode::BAD_REQUEST, "expected {\"value\": \"...\"}", None);
            };
            match agent.secrets.set(&app, &name, &v.value) {
                Ok(()) => {
                    tracing::info!(app = %app, secret = %name, "secret set");
                    http::json(StatusCode::OK, &serde_json::json!({"app": app, "name": name}))
                }
                Err(e) => http::error(StatusCode::BAD_REQUEST, e.to_string(), None),
            }
        }
        (Method::DELETE, ["v1", "secrets", app, name]) => match agent.secrets.unset(app, name) {
            Ok(true) => http::json(StatusCode::OK, &serde_json::json!({"app": app, "name": name})),
            Ok(false) => http::error(StatusCode::NOT_FOUND, format!("no secret `{name}` for `{app}`"), None),
            Err(e) => http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        },
        _ => http::error(StatusCode::NOT_FOUND, format!("no such endpoint `{path}`"), None),
    }
}

fn status(agent: &Agent) -> Response<Body> {
    let apps = match agent.state().apps() {
        Ok(a) => a,
        Err(e) => return http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    };
    let mut out = Vec::new();
    for app in apps {
        let cur = agent.state().current(&app).ok().flatten();
        out.push(hoist_protocol::agent::AppStatus {
            app,
            release: cur.as_ref().map(|c| c.release.clone()),
            standby: cur.and_then(|c| c.standby),
            url: agent.config.proxy.map(|a| format!("http://{a}/")),
            instances: Vec::new(),
        });
    }
    http::json(
        StatusCode::OK,
        &Status { host: hostname(), agent: agent.hello(), apps: out },
    )
}

/// `GET /v1/events?after=N&follow=1`: events after id N as JSON lines; with `follow`,
/// new ones as they are recorded, until the reader goes away.
fn events(agent: Arc<Agent>, query: &str) -> Response<Body> {
    let mut after: i64 = query_param(query, "after").and_then(|v| v.parse().ok()).unwrap_or(0);
    let follow = query_param(query, "follow").is_some_and(|v| v != "0");
    let (tx, resp) = http::stream();
    tokio::spawn(async move {
        loop {
            let batch = agent.state().events(after, 500).unwrap_or_default();
            for ev in &batch {
                if !tx.send(ev).await {
                    return;
                }
                after = ev.id;
            }
            if batch.len() == 500 {
                continue;
            }
            if !follow || tx.is_closed() {
                return;
            }
            // Events are rare and a poll is one indexed query: simpler than a second
            // notification path that could disagree with the table.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    resp
}

/// The value of `name` in a URL query string (no percent-decoding: values are ids and flags).
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some("1"),
        _ => None,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "local".into())
}
