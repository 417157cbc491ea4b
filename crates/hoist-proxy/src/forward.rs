//! The request path: pick a route and an upstream, rewrite the headers at the edge
//! (hop-by-hop out, X-Forwarded-* and a request id in), send the request on a pooled
//! upstream connection, and stream the response back while counting it.
//!
//! Retries happen only when nothing of the request reached an upstream (connect refused
//! or timed out, or a pooled connection that hyper hands the request back from). It must
//! not block the worker thread, and it never answers a request that raced a swap with an
//! error: a claim on a draining upstream is dropped and the route looked up again.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::table::{now_ms, InFlight, RouteEntry, Table, Upstream};
use crate::worker::Worker;
use crate::Shared;

/// How many upstream attempts one request may make (claims on draining members, refused
/// connects, connections that handed the request back).
const MAX_ATTEMPTS: usize = 8;
/// How many times a bodiless idempotent request is sent again after a kept connection
/// failed under it.
const MAX_REPLAYS: usize = 2;
/// Idle upstream connections kept per upstream and worker thread.
const POOL_MAX_IDLE: usize = 512;

thread_local! {
    /// This worker thread's view of the published table: re-read only when the version
    /// moves, so the request path takes no lock.
    static TABLE: RefCell<Option<(u64, Arc<Table>)>> = const { RefCell::new(None) };
    /// Idle upstream connections of this worker thread. Each worker runs a
    /// current-thread runtime, so a connection's task runs where its pool is.
    // A list, not a hash map: a worker talks to a handful of upstreams, and a scan of
    // a few addresses costs less than hashing one (twice per request).
    static POOL: RefCell<Vec<(SocketAddr, Vec<SendRequest<ClientBody>>)>> = const { RefCell::new(Vec::new()) };
    static REQUEST_SEQ: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    static POOL_RETURNS: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` on this thread's current snapshot.
pub(crate) fn with_table<R>(shared: &Shared, f: impl FnOnce(&Table) -> R) -> R {
    let version = shared.published.version();
    TABLE.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|(v, _)| *v != version) {
            *slot = Some(shared.published.load());
        }
        let (_, table) = slot.as_ref().expect("just filled");
        f(table)
    })
}

fn pool_checkout(addr: SocketAddr) -> Option<SendRequest<ClientBody>> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (_, idle) = pool.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(conn) = idle.pop() {
            if conn.is_ready() {
                return Some(conn);
            }
            // Closed by the upstream while idle (or not ready): drop it.
        }
        None
    })
}

fn pool_return(addr: SocketAddr, conn: SendRequest<ClientBody>) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        // Now and then forget connections to upstreams that went away (each deploy
        // brings new addresses; their idle connections are closed, never checked out).
        let n = POOL_RETURNS.with(|c| {
            c.set(c.get().wrapping_add(1));
            c.get()
        });
        if n % 4096 == 0 {
            pool.retain_mut(|(_, idle)| {
                idle.retain(|c| !c.is_closed());
                !idle.is_empty()
            });
        }
        let idle = match pool.iter().position(|(a, _)| *a == addr) {
            Some(i) => &mut pool[i].1,
            None => {
                pool.push((addr, Vec::new()));
                &mut pool.last_mut().expect("just pushed").1
            }
        };
        if idle.len() < POOL_MAX_IDLE {
            idle.push(conn);
        }
    })
}

/// Hands a connection whose response just ended back to the pool, once hyper says it
/// can take the next request (usually at once; otherwise when its task catches up).
fn recycle(addr: SocketAddr, mut conn: SendRequest<ClientBody>) {
    if conn.is_ready() {
        pool_return(addr, conn);
    } else if !conn.is_closed() {
        tokio::spawn(async move {
            if conn.ready().await.is_ok() {
                pool_return(addr, conn);
            }
        });
    }
}

/// What became of a client's request body on its way up, shared between the body (moved
/// into hyper's client) and the request path that reads it after a failure.
#[derive(Debug, Default)]
pub(crate) struct BodyState {
    flags: std::sync::atomic::AtomicU8,
    /// `now_ms()` when the last byte was handed on (0: not yet).
    done_at: std::sync::atomic::AtomicU64,
}

impl BodyState {
    const MALFORMED: u8 = 1;
    const STALLED: u8 = 2;

    fn set(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::Relaxed);
    }

    fn has(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & flag != 0
    }

    fn finish(&self) {
        let _ = self
            .done_at
            .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// When the whole body had been passed on, if it has.
    fn done_at(&self) -> Option<u64> {
        Some(self.done_at.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }
}

/// A client's request body on its way up: fails when the client sends nothing for
/// `timeout` (a slow or stalled upload must not pin a connection and an upstream slot),
/// and records whether it ended, or failed by the client's fault (a malformed chunk, a
/// stall), so the failure is answered as the client's and never counted against the
/// release.
pub(crate) struct ClientBody {
    /// `None` for a request replayed without a body, or whose body was read whole first.
    inner: Option<Incoming>,
    /// A body read whole before it is sent (to enforce a route's body limit).
    buffered: Option<Bytes>,
    timeout: std::time::Duration,
    // Made only when the body first waits: most requests have none.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<BodyState>,
}

impl ClientBody {
    fn new(inner: Incoming, timeout: std::time::Duration, state: Arc<BodyState>) -> ClientBody {
        if inner.is_end_stream() {
            state.finish();
        }
        ClientBody {
            inner: Some(inner),
            buffered: None,
            timeout,
            timer: None,
            state,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(this.buffered.take().map(|b| Ok(Frame::data(b))));
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(timer) = this.timer.as_mut() {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.timeout);
                }
                match &frame {
                    Some(Err(_)) => this.state.set(BodyState::MALFORMED),
                    None => this.state.finish(),
                    Some(Ok(_)) if this.inner.as_ref().is_none_or(|i| i.is_end_stream()) => {
                        this.state.finish()
                    }
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.state.set(BodyState::STALLED);
                    return Poll::Ready(Some(Err(format!(
                        "the client sent no body data for {timeout:?}"
                    )
                    .into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(i) => i.is_end_stream(),
            None => self.buffered.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(i) => i.size_hint(),
            None => SizeHint::with_exact(self.buffered.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The body of every response the proxy sends.
// Unboxed on purpose: one allocation less per request; a response body is moved into
// hyper once and never copied around.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ProxyBody {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ProxyBody {
    fn text(msg: String) -> ProxyBody {
        ProxyBody::Full(Some(Bytes::from(msg)))
    }
    fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }
}

/// An upstream response body and what to do when it ends.
pub(crate) struct UpstreamBody {
    body: Incoming,
    guard: Exchange,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper's server stops polling once `is_end_stream` is true, so that is checked
        // here too, not only a `None` frame.
        self.guard.complete |= self.body.is_end_stream();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Upstream(up) => {
                let polled = Pin::new(&mut up.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            up.guard.bytes += data.len() as u64;
                        }
                    }
                    Poll::Ready(None) => up.guard.complete = true,
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Upstream(up) => up.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream(up) => up.body.size_hint(),
        }
    }
}

/// One exchange with an upstream, from the response head to the end of its body: holds
/// the in-flight claim (what draining waits for) and the connection to recycle.
struct Exchange {
    claim: InFlight,
    conn: Option<SendRequest<ClientBody>>,
    route: Arc<RouteEntry>,
    bytes: u64,
    complete: bool,
    log: Option<crate::access_log::Entry>,
    /// This worker (not the process-wide state): its reference count stays on this core.
    worker: Arc<Worker>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.route.counters.finish(self.bytes);
        if let Some(conn) = self.conn.take() {
            if self.complete {
                recycle(self.claim.0.addr, conn);
            }
        }
        if let (Some(mut entry), Some(log)) =
            (self.log.take(), self.worker.shared.access_log.as_ref())
        {
            entry.bytes = self.bytes;
            log.write(&entry);
        }
    }
}

/// Why an upstream gave no response.
// Lives only between a send and its match, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
enum SendError {
    /// Nothing of the request left the proxy; `req` comes back for another attempt.
    NotSent(Request<ClientBody>),
    /// The request may have reached the upstream: never retried.
    Failed(String),
    Timeout,
}

/// Connects to an upstream; every failure here means nothing was sent.
async fn connect(
    shared: &Shared,
    up: &Upstream,
    upgrades: bool,
) -> Result<SendRequest<ClientBody>, String> {
    let stream = match tokio::time::timeout(
        shared.limits.connect_timeout,
        tokio::net::TcpStream::connect(up.addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Passive health: skip a member that cannot be reached, longer each time.
            up.connect_failed(shared.limits.refused_backoff);
            return Err(format!("connect: {e}"));
        }
        Err(_) => {
            up.connect_failed(shared.limits.refused_backoff);
            return Err("connect timed out".into());
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let addr = up.addr;
    if upgrades {
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%addr, %error, "upstream connection ended");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%addr, %error, "upstream connection ended");
            }
        });
    }
    Ok(sender)
}

/// Serves one request from a client at `peer`.
pub(crate) async fn handle(
    worker: Arc<Worker>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let closing = &worker.shared.closing;
    let mut resp = proxy(worker.clone(), peer, req).await?;
    if closing.load(Ordering::Relaxed) && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // This process is going away: the client reconnects (to its successor).
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

async fn proxy(
    worker: Arc<Worker>,
    peer: Peer,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let shared = &worker.shared;
    let checked = if peer.framing.next_request_has_both() {
        // RFC 9112 §6.1: a request smuggling tool; never forwarded, the connection closed.
        Err((
            StatusCode::BAD_REQUEST,
            "both `Content-Length` and `Transfer-Encoding`",
        ))
    } else {
        check_request(&mut req)
    };
    if let Err((status, why)) = checked {
        tracing::debug!(peer = %peer.addr, %status, why, "refused a malformed request (the client's fault)");
        let mut resp = Response::new(ProxyBody::text(format!("{why}\n")));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        return Ok(resp);
    }
    if let Some(resp) = crate::tls::on_plain_request(shared, &req) {
        return Ok(resp);
    }
    // An ACME token another host of the same names holds (see `tls::relay_challenge`).
    if let Some(resp) = Box::pin(crate::tls::relay_challenge(shared, &req)).await {
        return Ok(resp);
    }
    let host = host_of(&req);
    let method = crate::stats::method_index(req.method());
    let websocket = is_websocket(&req);
    let guarded = with_table(shared, |t| {
        t.lookup(&host, req.uri().path())
            .filter(|r| r.guards.active())
            .cloned()
    });
    let mut route_trusted = false;
    if let Some(route) = &guarded {
        if let Some(resp) = Box::pin(guard(route, &req, &peer)).await {
            return Ok(resp);
        }
        route_trusted = route.guards.is_trusted(peer.addr.ip());
    }
    let request_id = prepare_request(&mut req, &peer, shared, websocket, &host, route_trusted);
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        // The upstream gets the origin form of an absolute-form target.
        let origin = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = origin.parse() {
            *req.uri_mut() = uri;
        }
    }
    // Upstream connections are HTTP/1.1 keep-alive whatever the client speaks.
    *req.version_mut() = hyper::Version::HTTP_11;
    let path = req.uri().path().to_owned();
    let mut log = shared
        .access_log
        .as_ref()
        .map(|_| crate::access_log::Entry {
            route: String::new(),
            release: String::new(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
            status: 0,
            started,
            upstream: None,
            request_id: request_id.to_str().unwrap_or_default().to_owned(),
            bytes: 0,
        });
    let client_upgrade = if websocket {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    let body_state = Arc::new(BodyState::default());
    let mut req =
        req.map(|body| ClientBody::new(body, shared.limits.body_timeout, body_state.clone()));
    if let Some(max) = guarded.as_ref().and_then(|r| r.guards.max_body) {
        // A body of unknown length is read whole (up to the limit) before anything is
        // sent, so the upstream never sees a byte of one that is too large.
        if !req.body().is_end_stream() && req.body().size_hint().exact().is_none() {
            let route = guarded.as_ref().expect("checked");
            if let Err(resp) = Box::pin(buffer_body(&mut req, max, route, &body_state)).await {
                return Ok(resp);
            }
        }
    }

    let mut req = Some(req);
    let mut tried: u64 = 0;
    let mut replays = 0;
    let mut last_route: Option<Arc<RouteEntry>> = None;
    let mut error = String::from("no healthy upstream");
    let mut sticky = crate::canary::Sticky::for_request(req.as_ref());
    for _ in 0..MAX_ATTEMPTS {
        // The claim is taken inside the lookup: one reference count per request on
        // shared state instead of two (they bounce between cores).
        let picked = with_table(shared, |table| {
            let route = table.lookup(&host, &path)?;
            // A route with a canary sends a share of clients to its canary side.
            let route = sticky
                .side(route, req.as_ref().map(|r| r.headers()), peer.addr.ip())
                .clone();
            let claim = route.pick(tried, now_ms()).map(|(i, u)| (i, u.claim()));
            Some((route, claim))
        });
        let Some((route, claim)) = picked else {
            return Ok(finish_error(
                shared,
                method,
                log,
                StatusCode::NOT_FOUND,
                format!("no route for host `{host}`\n"),
                None,
            ));
        };
        let route: &Arc<RouteEntry> = last_route.insert(route);
        let Some((index, claim)) = claim else {
            break;
        };
        let Some(claim) = claim else {
            // It started draining after this worker read the table: the table that made
            // it drain is already published, so the next lookup sees the new set. (The
            // yield lets a control change in progress finish; it costs nothing otherwise.)
            tokio::task::yield_now().await;
            continue;
        };
        let upstream = &claim.0;
        let pooled = pool_checkout(upstream.addr).filter(|_| !websocket);
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => Ok(c),
            // Boxed: a fresh connection is the rare path, and its future would make
            // every request's future (moved several times per request) larger.
            None => Box::pin(connect(shared, upstream, websocket)).await,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(addr = %upstream.addr, error = %e, "upstream not reached, trying another");
                tried |= 1u64.checked_shl(index as u32).unwrap_or(0);
                error = e;
                continue;
            }
        };
        let outgoing = req.take().expect("request present until sent");
        // A kept connection may die under the request (its instance was killed, or it
        // closed it as idle at that moment). A bodiless idempotent request is then sent
        // again elsewhere (as nginx does); anything else is not retried.
        let replay = (reused
            && replays < MAX_REPLAYS
            && body_state.done_at().is_some()
            && idempotent(outgoing.method()))
        .then(|| {
            (
                outgoing.method().clone(),
                outgoing.uri().clone(),
                outgoing.headers().clone(),
            )
        });
        let sent = await_response(
            conn.try_send_request(outgoing),
            &body_state,
            shared.limits.response_timeout,
        )
        .await;
        let result = match sent {
            Err(()) => Err(SendError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => Err(SendError::NotSent(back)),
                None => Err(SendError::Failed(e.into_error().to_string())),
            },
        };
        match result {
            Ok(mut resp) => {
                upstream.answered();
                let counters = &route.counters;
                let latency = started.elapsed();
                counters.response(method, resp.status().as_u16(), latency);
                if let Some(entry) = log.as_mut() {
                    entry.route.clone_from(&route.id);
                    entry.release.clone_from(&counters.release);
                    entry.status = resp.status().as_u16();
                    entry.upstream = Some(upstream.addr);
                }
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    let Some(client_upgrade) = client_upgrade else {
                        // Only WebSocket upgrades are tunnelled (no h2c, no others).
                        counters.upstream_error();
                        return Ok(finish_error(
                            shared,
                            method,
                            log,
                            StatusCode::BAD_GATEWAY,
                            "upstream switched protocols unasked\n".into(),
                            None,
                        ));
                    };
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    crate::websocket::spawn_tunnel(
                        &worker,
                        claim,
                        client_upgrade,
                        upstream_upgrade,
                    );
                    if let (Some(entry), Some(access)) = (log, shared.access_log.as_ref()) {
                        access.write(&entry);
                    }
                    let (parts, _) = resp.into_parts();
                    return Ok(Response::from_parts(parts, ProxyBody::empty()));
                }
                strip_hop_by_hop(resp.headers_mut());
                if let Some(cookie) = sticky.cookie() {
                    resp.headers_mut().append(header::SET_COOKIE, cookie);
                }
                counters.start();
                let (parts, body) = resp.into_parts();
                let exchange = Exchange {
                    claim,
                    conn: (!websocket).then_some(conn),
                    route: last_route.take().expect("set above"),
                    bytes: 0,
                    complete: false,
                    log,
                    worker: worker.clone(),
                };
                let body = ProxyBody::Upstream(UpstreamBody {
                    body,
                    guard: exchange,
                });
                return Ok(Response::from_parts(parts, body));
            }
            Err(SendError::NotSent(back)) => {
                // A pooled connection that closed before the request went out: the
                // same member may still be fine on a fresh connection.
                req = Some(back);
                error = "upstream connection closed".into();
            }
            Err(SendError::Failed(_)) if body_state.has(BodyState::MALFORMED) => {
                // The client's body broke its own framing (a bad chunk size, a bare LF):
                // a bad request, never an upstream error counted against the release.
                tracing::info!(peer = %peer.addr, route = %route.id, "malformed request body from the client; answered 400");
                let mut resp = finish_error(
                    shared,
                    method,
                    log,
                    StatusCode::BAD_REQUEST,
                    "malformed request body\n".into(),
                    Some(route),
                );
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(resp);
            }
            Err(SendError::Failed(_)) if body_state.has(BodyState::STALLED) => {
                tracing::info!(peer = %peer.addr, route = %route.id, "the client stopped sending its body; answered 408");
                let mut resp = finish_error(
                    shared,
                    method,
                    log,
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stalled\n".into(),
                    Some(route),
                );
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(resp);
            }
            Err(SendError::Failed(e)) if replay.is_some() => {
                let (method, uri, headers) = replay.expect("checked");
                tracing::debug!(addr = %upstream.addr, error = %e, "a kept upstream connection failed under a bodiless idempotent request; sending it again");
                replays += 1;
                let mut again = Request::new(ClientBody {
                    inner: None,
                    buffered: None,
                    timeout: shared.limits.body_timeout,
                    timer: None,
                    state: body_state.clone(),
                });
                *again.method_mut() = method;
                *again.uri_mut() = uri;
                *again.headers_mut() = headers;
                req = Some(again);
                error = e;
            }
            Err(SendError::Failed(e)) => {
                route.counters.upstream_error();
                tracing::debug!(addr = %upstream.addr, error = %e, "upstream failed mid-request; not retried");
                return Ok(finish_error(
                    shared,
                    method,
                    log,
                    StatusCode::BAD_GATEWAY,
                    "upstream failed\n".into(),
                    Some(route),
                ));
            }
            Err(SendError::Timeout) => {
                route.counters.upstream_error();
                return Ok(finish_error(
                    shared,
                    method,
                    log,
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out\n".into(),
                    Some(route),
                ));
            }
        }
    }
    let (status, msg) = match &last_route {
        Some(r) if r.upstreams.is_empty() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no upstream for this route\n".to_string(),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            format!("no upstream answered: {error}\n"),
        ),
    };
    if let Some(r) = &last_route {
        r.counters.upstream_error();
    }
    Ok(finish_error(
        shared,
        method,
        log,
        status,
        msg,
        last_route.as_ref(),
    ))
}

/// A guard's own answer: closes the connection when the client may still be sending a
/// body nobody will read.
fn guard_answer(status: StatusCode, body: Bytes, close: bool) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Full(Some(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The route's guards, in order: maintenance, rate limit, basic auth, a declared body
/// length over the limit. `None` lets the request through.
async fn guard(
    route: &Arc<RouteEntry>,
    req: &Request<Incoming>,
    peer: &Peer,
) -> Option<Response<ProxyBody>> {
    use crate::stats::Guard;
    let g = &route.guards;
    let path = req.uri().path();
    let has_body = !req.body().is_end_stream();
    if !path.starts_with(crate::guards::ACME_PREFIX) {
        if let Some((page, retry_after)) = &g.maintenance {
            route.counters.guarded(Guard::Maintenance);
            let mut resp = guard_answer(StatusCode::SERVICE_UNAVAILABLE, page.clone(), has_body);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, retry_after.clone());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return Some(resp);
        }
        if let Some(rate) = &g.rate {
            let key = rate.key(req.headers(), peer.addr.ip());
            if let Err(wait) = rate.take(key, Instant::now()) {
                route.counters.guarded(Guard::RateLimited);
                let mut resp = guard_answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    Bytes::from_static(b"too many requests\n"),
                    has_body,
                );
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                return Some(resp);
            }
        }
        if let Some(auth) = &g.auth {
            let exempt = auth
                .config
                .exempt
                .iter()
                .any(|p| !p.is_empty() && path.starts_with(p.as_str()));
            if !exempt && !auth.check(req.headers().get(header::AUTHORIZATION)).await {
                route.counters.guarded(Guard::Unauthorized);
                let mut resp = guard_answer(
                    StatusCode::UNAUTHORIZED,
                    Bytes::from_static(b"authentication required\n"),
                    has_body,
                );
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, auth.challenge.clone());
                return Some(resp);
            }
        }
    }
    if let Some(max) = g.max_body {
        if req.body().size_hint().exact().is_some_and(|n| n > max) {
            route.counters.guarded(Guard::TooLarge);
            return Some(guard_answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                Bytes::from(format!("the request body is larger than {max} bytes\n")),
                true,
            ));
        }
    }
    None
}

/// Reads a body of unknown length whole, up to `max` bytes: 413 past it (the rest is
/// never read; the connection closes), 400/408 when the client breaks or stalls it.
async fn buffer_body(
    req: &mut Request<ClientBody>,
    max: u64,
    route: &Arc<RouteEntry>,
    state: &BodyState,
) -> Result<(), Response<ProxyBody>> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        match req.body_mut().frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if (buf.len() + data.len()) as u64 > max {
                        route.counters.guarded(crate::stats::Guard::TooLarge);
                        return Err(guard_answer(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            Bytes::from(format!("the request body is larger than {max} bytes\n")),
                            true,
                        ));
                    }
                    buf.extend_from_slice(data);
                }
            }
            Some(Err(_)) => {
                let (status, why) = if state.has(BodyState::STALLED) {
                    (StatusCode::REQUEST_TIMEOUT, "the request body stalled\n")
                } else {
                    (StatusCode::BAD_REQUEST, "malformed request body\n")
                };
                return Err(guard_answer(
                    status,
                    Bytes::from_static(why.as_bytes()),
                    true,
                ));
            }
        }
    }
    let body = req.body_mut();
    body.inner = None;
    body.buffered = (!buf.is_empty()).then(|| buf.freeze());
    Ok(())
}

/// Methods that may be sent twice (RFC 9110 §9.2.2), minus those that usually carry a
/// body worth keeping.
fn idempotent(m: &hyper::Method) -> bool {
    matches!(
        *m,
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
    )
}

/// Waits for the upstream's response head. The response timeout runs from the moment
/// the whole request body was passed on: a slow but steady upload is not the upstream's
/// delay (a stalled one is cut by the body-idle timeout in [`ClientBody`]).
async fn await_response<F, T>(
    send: F,
    body: &BodyState,
    timeout: std::time::Duration,
) -> Result<T, ()>
where
    F: Future<Output = T>,
{
    tokio::pin!(send);
    loop {
        let wait = match body.done_at() {
            Some(at) => timeout.saturating_sub(std::time::Duration::from_millis(
                now_ms().saturating_sub(at),
            )),
            None => timeout,
        };
        match tokio::time::timeout(wait, send.as_mut()).await {
            Ok(out) => return Ok(out),
            Err(_) => {
                if let Some(at) = body.done_at() {
                    if now_ms().saturating_sub(at) >= timeout.as_millis() as u64 {
                        return Err(());
                    }
                }
            }
        }
    }
}

/// Refuses what no upstream should see (RFC 9112): CONNECT (405), a request target that
/// is neither origin- nor absolute-form, HTTP/1.1 without one valid Host, a Host that is
/// not a host name (both framings at once are caught by `framing`, since hyper drops
/// the length before the head gets here).
/// An absolute-form target replaces Host (§3.2.2).
fn check_request(req: &mut Request<Incoming>) -> Result<(), (StatusCode, &'static str)> {
    let bad = |why| Err((StatusCode::BAD_REQUEST, why));
    if req.method() == hyper::Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served here"));
    }
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        // RFC 9112 §3.2: more than one Host is a bad request (and a smuggling tool).
        return bad("more than one `Host` header");
    }
    if let Some(h) = host {
        if !valid_host(h.as_bytes()) {
            return bad("the `Host` header is not a host name");
        }
    } else if req.version() == hyper::Version::HTTP_11 {
        return bad("an HTTP/1.1 request without `Host`");
    }
    let uri = req.uri();
    match (uri.scheme_str(), uri.authority()) {
        (None, None) if uri.path().starts_with('/') => Ok(()),
        (Some(scheme), Some(authority))
            if (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && valid_host(authority.as_str().as_bytes()) =>
        {
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| (StatusCode::BAD_REQUEST, "the request target is malformed"))?;
            req.headers_mut().insert(header::HOST, value);
            Ok(())
        }
        _ => bad("the request target is neither origin- nor absolute-form"),
    }
}

/// A host name or address with an optional port: no spaces, slashes, userinfo or
/// anything else a router or a log could misread.
fn valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(b))
}

fn finish_error(
    shared: &Shared,
    method: u8,
    log: Option<crate::access_log::Entry>,
    status: StatusCode,
    body: String,
    route: Option<&Arc<RouteEntry>>,
) -> Response<ProxyBody> {
    if let Some(route) = route {
        route
            .counters
            .response(method, status.as_u16(), std::time::Duration::ZERO);
    }
    if let (Some(mut entry), Some(access)) = (log, shared.access_log.as_ref()) {
        entry.status = status.as_u16();
        if let Some(route) = route {
            entry.route.clone_from(&route.id);
            entry.release.clone_from(&route.counters.release);
        }
        entry.bytes = body.len() as u64;
        access.write(&entry);
    }
    let mut resp = Response::new(ProxyBody::text(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The request's host, lowercase, without a port.
pub(crate) fn host_of(req: &Request<Incoming>) -> String {
    // An absolute-form target names the host; it wins over the Host header (RFC 9112 §3.2.2).
    let raw = req
        .uri()
        .host()
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let host = if raw.starts_with('[') {
        raw.split_once(']')
            .map_or(raw, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    // `example.com.` is the same name as `example.com` (a fully qualified form).
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A WebSocket handshake: the only upgrade the proxy tunnels.
fn is_websocket(req: &Request<Incoming>) -> bool {
    req.method() == hyper::Method::GET
        && req.version() == hyper::Version::HTTP_11
        && header_has_token(req.headers(), &header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Which of `names` are present, as a bit set, found in one pass over the header
/// names without hashing (most messages carry none of them, and hashing each name to
/// remove it was a visible share of the request path).
fn present(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    let mut found = 0u32;
    for key in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == key) {
            found |= 1 << i;
        }
    }
    found
}

/// Removes the hop-by-hop headers and every header that `Connection` names, except
/// those that frame or route the message (hyper frames it again on the next hop).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = present(headers, &HOP_BY_HOP);
    if found == 0 {
        return;
    }
    if found & 1 != 0 && connection_names_others(headers) {
        // HOP_BY_HOP[0] is Connection: the headers it names go too.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| n != header::HOST && n != header::CONTENT_LENGTH)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Whether `Connection` names anything beyond `keep-alive` and `close` (the usual
/// values, which name no header left to remove): only then is it parsed into names.
fn connection_names_others(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|t| {
            let t = t.trim_ascii();
            !(t.is_empty()
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"close"))
        })
    })
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// What only a trusted peer may send.
static SPOOFABLE: [HeaderName; 4] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-for"),
];

/// Rewrites the client's headers for the upstream and returns the request id.
fn prepare_request(
    req: &mut Request<Incoming>,
    peer: &Peer,
    shared: &Shared,
    websocket: bool,
    host: &str,
    route_trusted: bool,
) -> HeaderValue {
    let https = req.extensions().get::<crate::tls::Https>().is_some();
    let headers = req.headers_mut();
    let upgrade = if websocket {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
    let trusted = route_trusted || shared.trusted_proxies.contains(&peer.addr.ip());
    let xff = if trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let prev: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let joined = format!("{}, {}", prev.join(", "), peer.addr.ip());
        HeaderValue::from_str(&joined).unwrap_or_else(|_| peer.ip_header.clone())
    } else {
        peer.ip_header.clone()
    };
    if trusted {
        // A trusted peer may send several lines; they were folded into `xff` above.
        headers.remove(&X_FORWARDED_FOR);
    } else {
        let found = present(headers, &SPOOFABLE);
        for (i, name) in SPOOFABLE.iter().enumerate() {
            if found & (1 << i) != 0 {
                headers.remove(name);
            }
        }
    }
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    if !trusted || !headers.contains_key(&X_REAL_IP) {
        // A client's own X-Real-IP would pass for one the proxy set.
        headers.insert(X_REAL_IP.clone(), peer.ip_header.clone());
    }
    // (From an untrusted peer these were removed above: no lookup needed.)
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if https { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if (!trusted || !headers.contains_key(&X_FORWARDED_HOST)) && !host.is_empty() {
        if let Some(v) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
    match headers
        .get(&X_REQUEST_ID)
        .filter(|v| valid_request_id(v.as_bytes()))
    {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id(&shared.request_id_prefix);
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    }
}

/// A client's request id is kept when it is short and plain (it ends up in logs).
fn valid_request_id(v: &[u8]) -> bool {
    (8..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// `<process prefix>-<thread>-<sequence>`: unique within a run, without a lock or an
/// allocation beyond the header itself.
fn new_request_id(prefix: &str) -> HeaderValue {
    static THREADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (thread, seq) = REQUEST_SEQ.with(|c| {
        let (mut thread, mut seq) = c.get();
        if thread == 0 {
            thread = THREADS.fetch_add(1, Ordering::Relaxed) + 1;
        }
        seq += 1;
        c.set((thread, seq));
        (thread, seq)
    });
    // Written by hand: `format_args!` was a visible share of the request path.
    let mut buf = [0u8; 80];
    let p = prefix.as_bytes();
    let mut len = p.len().min(40);
    buf[..len].copy_from_slice(&p[..len]);
    for n in [thread, seq] {
        buf[len] = b'-';
        len += 1;
        len += write_hex(&mut buf[len..], n);
    }
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `n` in lowercase hex without leading zeros, at the start of `out` (17 bytes are
/// enough); returns the length.
fn write_hex(out: &mut [u8], n: u64) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = DIGITS[((n >> (4 * i)) & 0xf) as usize];
    }
    digits
}

/// The client end of a connection, with its address already rendered for
/// X-Forwarded-For (once per connection, not per request).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    pub ip_header: HeaderValue,
    pub framing: Arc<crate::framing::ConnFraming>,
}

impl Peer {
    pub fn new(addr: SocketAddr, framing: Arc<crate::framing::ConnFraming>) -> Peer {
        let ip_header = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            ip_header,
            framing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, host"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn connection_keep_alive_or_close_names_no_other_header() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(!connection_names_others(&h));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-kept"),
        );
        assert!(connection_names_others(&h));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn generated_request_ids_are_prefix_thread_and_sequence_in_hex() {
        let a = new_request_id("0a1b2c3d");
        let b = new_request_id("0a1b2c3d");
        let parts: Vec<_> = a.to_str().unwrap().split('-').collect();
        assert_eq!(parts.len(), 3, "{a:?}");
        assert_eq!(parts[0], "0a1b2c3d");
        let seq = |v: &HeaderValue| {
            u64::from_str_radix(v.to_str().unwrap().rsplit('-').next().unwrap(), 16).unwrap()
        };
        assert_eq!(seq(&b), seq(&a) + 1);
        assert!(valid_request_id(a.as_bytes()));
        let mut buf = [0u8; 17];
        for n in [0u64, 1, 15, 16, 255, 0xdead_beef, u64::MAX] {
            let len = write_hex(&mut buf, n);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), format!("{n:x}"));
        }
    }

    #[test]
    fn request_ids_from_clients_are_kept_only_when_plain() {
        assert!(valid_request_id(b"abc-123-def"));
        assert!(!valid_request_id(b"short"));
        assert!(!valid_request_id(b"has space in it"));
        assert!(!valid_request_id("x".repeat(200).as_bytes()));
    }
}
