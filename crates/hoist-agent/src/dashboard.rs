//! The dashboard (`hoist agent --dashboard ADDR`): server-rendered pages (`dashpages.rs`),
//! live updates by server-sent events, a few confirmed actions, and the socket's JSON API
//! (`server::route`), all behind the token in `<root>/dashboard.token` (0600).
//!
//! A browser presents the token once (`/login?token=…`, the URL `hoist dashboard` prints)
//! and gets an HttpOnly, SameSite=Strict session cookie; every action is a POST carrying
//! the session's CSRF token (a form field, or `X-CSRF-Token` for the API), from this
//! origin. API clients may send `Authorization: Bearer TOKEN` instead. Every answer
//! carries a strict Content-Security-Policy: only this origin's script and style, no
//! inline code, nothing fetched from elsewhere. `/v1/openapi.json` and the two static
//! files hold no data and are served without the token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use hoist_protocol::agent::DashboardInfo;

use crate::http::{self, Body};
use crate::Agent;

/// The token file under the root.
pub const TOKEN_FILE: &str = "dashboard.token";
const COOKIE: &str = "hoist_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 256;
/// A form (an action) is a few fields.
const MAX_FORM: u64 = 16 * 1024;
/// JSON bodies of the API (uploads excepted: they are streamed to disk).
const MAX_API_BODY: u64 = 4 * 1024 * 1024;
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

const JS: &str = include_str!("dashboard/dash.js");
const CSS: &str = include_str!("dashboard/dash.css");

/// The dashboard's memory: the token, the sessions, the bound address.
#[derive(Default)]
pub(crate) struct Dash {
    token: RwLock<Option<String>>,
    sessions: Mutex<HashMap<String, Session>>,
    addr: OnceLock<SocketAddr>,
    /// The last check of the history chain: (latest seq then, when, the report).
    pub(crate) verified: Mutex<Option<(i64, Instant, hoist_state::VerifyReport)>>,
}

#[derive(Clone)]
pub(crate) struct Session {
    pub csrf: String,
    created: Instant,
    /// The outcome of the last action, shown once on the next page.
    pub flash: Option<String>,
    id: String,
}

/// Who is asking.
pub(crate) enum Who {
    /// A browser with a session (pages and actions).
    Session(Session),
    /// An API client with the bearer token (the API and pages; no form actions).
    Bearer,
}

impl Who {
    pub(crate) fn csrf(&self) -> &str {
        match self {
            Who::Session(s) => &s.csrf,
            Who::Bearer => "",
        }
    }
}

fn random_hex(n: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Compares without an early exit, so the time taken says nothing about the secret.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Agent {
    fn dash_token_file(&self) -> std::path::PathBuf {
        self.config.root.join(TOKEN_FILE)
    }

    /// The token, read from its file (made when missing: 32 random bytes, hex, 0600).
    pub(crate) fn dashboard_token(&self) -> std::io::Result<String> {
        if let Some(t) = self
            .dash
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(t);
        }
        let path = self.dash_token_file();
        let token = match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            Ok(_) => self.write_dashboard_token()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.write_dashboard_token()?,
            Err(e) => return Err(e),
        };
        *self.dash.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    fn write_dashboard_token(&self) -> std::io::Result<String> {
        let token = random_hex(32)?;
        crate::paths::write_atomic(
            &self.dash_token_file(),
            format!("{token}\n").as_bytes(),
            0o600,
        )?;
        Ok(token)
    }

    /// `GET /v1/dashboard`.
    pub(crate) fn dashboard_info(&self) -> std::io::Result<DashboardInfo> {
        Ok(DashboardInfo {
            addr: self.dash.addr.get().map(|a| a.to_string()),
            token: self.dashboard_token()?,
        })
    }

    /// `POST /v1/dashboard/rotate` (`hoist dashboard --rotate`): a new token, and every
    /// session made with the old one ends.
    pub(crate) fn rotate_dashboard_token(&self) -> std::io::Result<DashboardInfo> {
        let token = self.write_dashboard_token()?;
        *self.dash.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        self.dash
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        tracing::info!("dashboard token rotated; sessions ended");
        self.dashboard_info()
    }

    pub(crate) fn set_flash(&self, session: &Session, message: String) {
        if let Some(s) = self
            .dash
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&session.id)
        {
            s.flash = Some(message);
        }
    }

    pub(crate) fn take_flash(&self, session: &Session) -> Option<String> {
        self.dash
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&session.id)
            .and_then(|s| s.flash.take())
    }
}

/// Binds the dashboard's listener (the token file is made now, so `hoist dashboard`
/// finds it).
pub(crate) async fn bind(
    agent: &Agent,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    agent.dashboard_token()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let _ = agent.dash.addr.set(listener.local_addr()?);
    Ok(listener)
}

/// Serves the dashboard until the task is aborted.
pub(crate) async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let agent = agent.clone();
                async move {
                    let mut resp = answer(agent, req).await;
                    secure(&mut resp);
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

/// The headers every answer carries.
fn secure(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The login URL carries the token: never pass it to another site. (Not
    // `no-referrer`: a browser then sends `Origin: null` with this dashboard's own forms.)
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

pub(crate) fn html(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

fn asset(kind: &'static str, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, kind)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())).boxed())
        .expect("static response parts are valid")
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to);
    if let Some(c) = cookie {
        b = b.header(header::SET_COOKIE, c);
    }
    b.body(Full::new(Bytes::new()).boxed())
        .expect("static response parts are valid")
}

/// A refusal: JSON for the API, a short page for a browser.
fn refuse(api: bool, status: StatusCode, message: &str) -> Response<Body> {
    if api {
        let mut resp = http::error(status, message, None);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return resp;
    }
    html(status, crate::dashpages::refusal(status, message))
}

async fn answer(agent: Arc<Agent>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/v1/openapi.json") => {
            return http::json(StatusCode::OK, &crate::openapi::document())
        }
        ("GET" | "HEAD", "/static/dash.js") => return asset("text/javascript", JS),
        ("GET" | "HEAD", "/static/dash.css") => return asset("text/css", CSS),
        ("GET", "/login") => return login(&agent, &query),
        _ => {}
    }
    let api = path.starts_with("/v1/");
    let Some(who) = authenticate(&agent, &req) else {
        return refuse(
            api,
            StatusCode::UNAUTHORIZED,
            "the dashboard needs its token: open the URL `hoist dashboard` prints",
        );
    };
    // Bodies are bounded before anything reads them: a length is required (uploads,
    // streamed to disk by the API, excepted) and must be within the limit.
    let upload =
        method == Method::POST && matches!(path.as_str(), "/v1/releases" | "/v1/releases/blobs");
    if !upload {
        let limit = if api { MAX_API_BODY } else { MAX_FORM };
        if req.headers().contains_key(header::TRANSFER_ENCODING) {
            return refuse(
                api,
                StatusCode::LENGTH_REQUIRED,
                "a request body needs a Content-Length here",
            );
        }
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if length > limit {
            return refuse(
                api,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {limit} bytes"),
            );
        }
    }
    let safe = matches!(method, Method::GET | Method::HEAD);
    if !safe {
        if let Who::Session(s) = &who {
            if !same_origin(&req) {
                return refuse(
                    api,
                    StatusCode::FORBIDDEN,
                    "refused: the request did not come from this dashboard",
                );
            }
            if api {
                let given = req
                    .headers()
                    .get("x-csrf-token")
                    .map(|v| v.as_bytes())
                    .unwrap_or_default();
                if !same(given, s.csrf.as_bytes()) {
                    return refuse(
                        api,
                        StatusCode::FORBIDDEN,
                        "refused: a missing or wrong CSRF token",
                    );
                }
            }
        }
    }
    if api {
        return crate::server::route(agent, req).await;
    }
    if safe {
        return crate::dashpages::get(&agent, &who, &path, &query).await;
    }
    if method != Method::POST {
        return refuse(false, StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let Who::Session(session) = who else {
        return refuse(
            false,
            StatusCode::FORBIDDEN,
            "actions need a browser session (log in with the URL `hoist dashboard` prints)",
        );
    };
    let body = match http::read_body(req.into_body(), MAX_FORM as usize).await {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                false,
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is too large",
            )
        }
    };
    let form = parse_form(&body);
    let csrf = form.get("csrf").map(String::as_bytes).unwrap_or_default();
    if !same(csrf, session.csrf.as_bytes()) {
        return refuse(
            false,
            StatusCode::FORBIDDEN,
            "refused: a missing or wrong CSRF token",
        );
    }
    crate::dashpages::act(&agent, &session, &path, &form).await
}

/// A POST must come from a page of this dashboard: its `Origin` (or, without one, its
/// `Referer`) names this host.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let ours = format!("http://{host}");
    let from = |name| req.headers().get(name).and_then(|h| h.to_str().ok());
    // A browser says where a request comes from; only this origin (or the user's own
    // navigation) is taken.
    if from(hyper::header::HeaderName::from_static("sec-fetch-site"))
        .is_some_and(|s| s != "same-origin" && s != "none")
    {
        return false;
    }
    match (from(header::ORIGIN), from(header::REFERER)) {
        (Some(o), _) => o == ours,
        (None, Some(r)) => r == ours || r.starts_with(&format!("{ours}/")),
        // A client that sends neither is not a browser on another site.
        (None, None) => true,
    }
}

/// `application/x-www-form-urlencoded` into a map (the last value of a name wins).
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (
                crate::server::percent_decode(k),
                crate::server::percent_decode(v),
            )
        })
        .collect()
}

/// `GET /login?token=T`: the token for a session cookie, then the host page (so the
/// token leaves the address bar at once).
fn login(agent: &Agent, query: &str) -> Response<Body> {
    let given = crate::server::query_param(query, "token").unwrap_or("");
    let Ok(token) = agent.dashboard_token() else {
        return refuse(
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the dashboard token",
        );
    };
    if !same(given.as_bytes(), token.as_bytes()) {
        tracing::warn!("dashboard login with a wrong token refused");
        return refuse(
            false,
            StatusCode::UNAUTHORIZED,
            "this login link is not valid (the token was rotated?): run `hoist dashboard` again",
        );
    }
    let (Ok(id), Ok(csrf)) = (random_hex(32), random_hex(32)) else {
        return refuse(
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a session",
        );
    };
    {
        let mut sessions = agent
            .dash
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf,
                created: Instant::now(),
                flash: None,
                id: id.clone(),
            },
        );
    }
    tracing::info!("dashboard session opened");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    redirect("/", Some(cookie))
}

fn authenticate(agent: &Agent, req: &Request<Incoming>) -> Option<Who> {
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let token = agent.dashboard_token().ok()?;
        let want = format!("Bearer {token}");
        return same(auth.as_bytes(), want.as_bytes()).then_some(Who::Bearer);
    }
    let id = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })?;
    let sessions = agent
        .dash
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let s = sessions.get(&id)?;
    (s.created.elapsed() < SESSION_TTL).then(|| Who::Session(s.clone()))
}

/// A server-sent event stream fed by the returned sender.
pub(crate) fn sse() -> (SseSender, Response<Body>) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    }));
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(BodyExt::boxed(body))
        .expect("static response parts are valid");
    (SseSender { tx }, resp)
}

pub(crate) struct SseSender {
    tx: mpsc::Sender<Bytes>,
}

impl SseSender {
    /// Sends one message (each line of `data` its own `data:` field); false once the
    /// page has gone.
    pub(crate) async fn send(&self, data: &str) -> bool {
        let mut out = String::with_capacity(data.len() + 16);
        for line in data.split('\n') {
            out.push_str("data: ");
            out.push_str(line.trim_end_matches('\r'));
            out.push('\n');
        }
        out.push('\n');
        self.tx.send(Bytes::from(out)).await.is_ok()
    }

    /// A comment line: finds out whether the page is still there.
    pub(crate) async fn ping(&self) -> bool {
        self.tx
            .send(Bytes::from_static(b": ping\n\n"))
            .await
            .is_ok()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
