//! The request path: pick a route and an upstream, rewrite the headers at the edge
//! (hop-by-hop out, X-Forwarded-* and a request id in), send the request with the
//! proxy's own upstream client (`upstream`) on this request's task, and stream the
//! response back while counting it.
//!
//! Retries happen only when nothing of the request reached an upstream (connect refused
//! or timed out), or once, on a fresh connection, when a kept connection died before
//! answering and the request is safe to send again. It must not block the worker thread,
//! and it never answers a request that raced a swap with an error: a claim on a draining
//! upstream is dropped and the route looked up again.

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
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::table::{now_ms, InFlight, RouteEntry, Table, Upstream};
use crate::upstream::{self, Failure, ReqBody, ResponseBody};
use crate::worker::Worker;
use crate::Shared;

/// How many upstream attempts one request may make (claims on draining members, refused
/// connects, a kept connection that died under a request that is safe to send again).
const MAX_ATTEMPTS: usize = 8;

thread_local! {
    /// This worker thread's view of the published table: re-read only when the version
    /// moves, so the request path takes no lock.
    static TABLE: RefCell<Option<(u64, Arc<Table>)>> = const { RefCell::new(None) };
    static REQUEST_SEQ: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
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
    body: ResponseBody,
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
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
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
                    // Cut mid-body (closed, broken framing, stalled past the body-idle
                    // timeout): the upstream's fault.
                    Poll::Ready(Some(Err(_))) => up.guard.route.counters.upstream_error(),
                    Poll::Pending => {}
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
/// the in-flight claim (what draining waits for) until the body is done.
struct Exchange {
    #[allow(dead_code)] // held for its drop
    claim: InFlight,
    route: Arc<RouteEntry>,
    bytes: u64,
    complete: bool,
    // Boxed: it rides in every response body and the request's future, moved several
    // times per request, and is there only when the access log is on.
    log: Option<Box<crate::access_log::Entry>>,
    /// This worker (not the process-wide state): its reference count stays on this core.
    worker: Arc<Worker>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.route.counters.finish(self.bytes);
        if let (Some(mut entry), Some(log)) =
            (self.log.take(), self.worker.shared.access_log.as_ref())
        {
            entry.bytes = self.bytes;
            log.write(&entry);
        }
    }
}

/// Connects to an upstream; a failure ejects it for a while (passive health).
async fn connect(shared: &Shared, up: &Upstream) -> Result<upstream::Conn, String> {
    match upstream::connect(up.addr, shared.limits.connect_timeout).await {
        Ok(c) => Ok(c),
        Err(e) => {
            // Passive health: skip a member that cannot be reached, longer each time.
            up.connect_failed(shared.limits.refused_backoff);
            Err(format!("connect: {e}"))
        }
    }
}

/// Serves one request from a client at `peer` (over TLS: hyper times its heads).
pub(crate) fn handle(
    worker: Arc<Worker>,
    peer: Peer,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Answer>, Infallible>> {
    handle_with(worker, peer, req, false)
}

/// [`handle`] for a plain connection (a request hyper read, or one the plain loop read
/// itself, `plain`), whose socket times the wait for each head itself (`timed_io`): the
/// response's body says when it is done, so the socket knows the connection waits for a
/// head again.
pub(crate) fn handle_plain<B: ClientBody>(
    worker: Arc<Worker>,
    peer: Peer,
    req: Request<B>,
) -> impl Future<Output = Result<Response<Answer>, Infallible>> {
    handle_with(worker, peer, req, true)
}

fn handle_with<B: ClientBody>(
    worker: Arc<Worker>,
    peer: Peer,
    req: Request<B>,
    count_answer: bool,
) -> Handled<impl Future<Output = Result<Response<ProxyBody>, Infallible>>> {
    // Counted here, as hyper hands the request over, not when the future first runs:
    // from this moment the connection is not waiting for a head (`timed_io`).
    let both = peer.framing.next_request_has_both();
    let framing = count_answer.then(|| peer.framing.clone());
    Handled {
        inner: proxy(worker.clone(), peer, req, both),
        worker,
        framing,
    }
}

/// [`proxy`]'s answer, with `Connection: close` while this process is going away. A
/// plain future rather than an `async fn` around `proxy`: that kept a second copy of the
/// request's arguments and made every move of the request's future larger.
struct Handled<F> {
    inner: F,
    worker: Arc<Worker>,
    /// Told when the answer's body is done with (plain connections).
    framing: Option<Arc<crate::framing::ConnFraming>>,
}

impl<F: Future<Output = Result<Response<ProxyBody>, Infallible>>> Future for Handled<F> {
    type Output = Result<Response<Answer>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `inner` is pinned with `self` and never moved out; `worker` and
        // `framing` are not structurally pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let Poll::Ready(Ok(mut resp)) = inner.poll(cx) else {
            return Poll::Pending;
        };
        let tunnel = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if this.worker.shared.closing.load(Ordering::Relaxed) && !tunnel {
            // This process is going away: the client reconnects (to its successor).
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // A tunnel's connection never waits for a head again: its answer is not counted.
        let ended = if tunnel {
            None
        } else {
            this.framing.take().map(Ended)
        };
        Poll::Ready(Ok(resp.map(|body| Answer {
            body,
            _ended: ended,
        })))
    }
}

/// A plain connection's response body: [`ProxyBody`], counted as answered when hyper
/// drops it (after its last frame).
pub(crate) struct Answer {
    body: ProxyBody,
    _ended: Option<Ended>,
}

struct Ended(Arc<crate::framing::ConnFraming>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.answered();
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body as the client side hands it over: hyper's, or none (`plain`).
pub(crate) trait ClientBody: Body<Data = Bytes> + Send + Sized + 'static {
    fn into_req_body(self) -> ReqBody;
    /// The upgrade a WebSocket handshake's tunnel is made from.
    fn on_upgrade(req: &mut Request<Self>) -> Option<hyper::upgrade::OnUpgrade>;
}

impl ClientBody for Incoming {
    fn into_req_body(self) -> ReqBody {
        ReqBody::new(self)
    }
    fn on_upgrade(req: &mut Request<Self>) -> Option<hyper::upgrade::OnUpgrade> {
        Some(hyper::upgrade::on(req))
    }
}

/// The body of a request read without hyper: there is none.
pub(crate) type Bodiless = http_body_util::Empty<Bytes>;

impl ClientBody for Bodiless {
    fn into_req_body(self) -> ReqBody {
        ReqBody::Empty
    }
    fn on_upgrade(_: &mut Request<Self>) -> Option<hyper::upgrade::OnUpgrade> {
        None
    }
}

async fn proxy<B: ClientBody>(
    worker: Arc<Worker>,
    peer: Peer,
    mut req: Request<B>,
    both: bool,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let shared = &worker.shared;
    let checked = if both {
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
    // One lookup serves the guards and the first attempt below.
    let mut first = Some(with_table(shared, |t| {
        t.lookup(&host, req.uri().path()).cloned()
    }));
    let guarded = first
        .as_ref()
        .and_then(Option::as_ref)
        .filter(|r| r.guards.active());
    let mut route_trusted = false;
    if let Some(route) = guarded {
        if let Some(resp) = Box::pin(guard(route, &req, &peer)).await {
            return Ok(resp);
        }
        route_trusted = route.guards.is_trusted(peer.addr.ip());
    }
    let has_host = !host.is_empty();
    let added = prepare_request(&mut req, &peer, shared, websocket, has_host, route_trusted);
    let mut log = shared.access_log.as_ref().map(|_| {
        Box::new(crate::access_log::Entry {
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
            request_id: added.request_id(req.headers()).to_owned(),
            bytes: 0,
        })
    });
    let client_upgrade = if websocket {
        B::on_upgrade(&mut req)
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    // The host again, from the parts (it borrowed the request, now taken apart): read
    // only where it is needed, a lookup after the first attempt or the 404.
    let host = || host_in(&parts.uri, &parts.headers);
    let mut body = body.into_req_body();
    if let Some(max) = guarded.and_then(|r| r.guards.max_body) {
        // A body of unknown length is read whole (up to the limit) before anything is
        // sent, so the upstream never sees a byte of one that is too large.
        if let ReqBody::Stream { body: incoming, .. } = &mut body {
            if incoming.size_hint().exact().is_none() {
                let route = guarded.expect("checked");
                let limits = &shared.limits;
                match Box::pin(buffer_body(incoming, max, route, limits.body_timeout)).await {
                    Ok(whole) => body = whole,
                    Err(resp) => return Ok(resp),
                }
            }
        }
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let outgoing = upstream::Outgoing {
        method: &parts.method,
        target,
        headers: &parts.headers,
        added: &added,
    };
    let timeouts = upstream::Timeouts {
        response: shared.limits.response_timeout,
        body_idle: shared.limits.body_timeout,
    };

    let mut tried: u64 = 0;
    // After a connection died under the request before an answer, it is sent once
    // more, on a fresh connection.
    let mut replayed = false;
    let mut last_route: Option<Arc<RouteEntry>> = None;
    let mut error = String::from("no healthy upstream");
    let mut sticky = crate::canary::Sticky::for_request(&parts.extensions);
    for _ in 0..MAX_ATTEMPTS {
        // The claim is taken inside the lookup: one reference count per request on
        // shared state instead of two (they bounce between cores).
        let looked = match first.take() {
            Some(looked) => looked,
            None => {
                let host = host();
                with_table(shared, |t| t.lookup(&host, parts.uri.path()).cloned())
            }
        };
        let picked = looked.map(|main| {
            // A route with a canary sends a share of clients to its canary side.
            let side = sticky.side(&main, Some(&parts.headers), peer.addr.ip());
            let route = if Arc::ptr_eq(side, &main) {
                main
            } else {
                side.clone()
            };
            let claim = route.pick(tried, now_ms).map(|(i, u)| (i, u.claim()));
            (route, claim)
        });
        let Some((route, claim)) = picked else {
            return Ok(finish_error(
                shared,
                method,
                log,
                StatusCode::NOT_FOUND,
                format!("no route for host `{}`\n", host()),
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
        // A tunnel takes its connection for good: always a fresh one.
        let pooled = if websocket || replayed {
            None
        } else {
            upstream::checkout(upstream.addr)
        };
        let conn = match pooled {
            Some(c) => Ok(c),
            // Boxed: a fresh connection is the rare path, and its future would make
            // every request's future larger.
            None => Box::pin(connect(shared, upstream)).await,
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
        match upstream::exchange(&mut conn, &outgoing, &mut body, timeouts).await {
            Ok(head) => {
                // The request's header map is done with (an answered request is never
                // sent again): its allocation makes a later response's map.
                upstream::recycle_headers(std::mem::take(&mut parts.headers));
                upstream.answered();
                let counters = &route.counters;
                let latency = started.elapsed();
                let status = head.status;
                counters.response(method, status.as_u16(), latency);
                if let Some(entry) = log.as_mut() {
                    entry.route.clone_from(&route.id);
                    entry.release.clone_from(&counters.release);
                    entry.status = status.as_u16();
                    entry.upstream = Some(upstream.addr);
                }
                let reader = ResponseBody::new(conn, &head, timeouts.body_idle);
                let mut resp = Response::new(ProxyBody::empty());
                *resp.status_mut() = status;
                *resp.headers_mut() = head.headers;
                if status == StatusCode::SWITCHING_PROTOCOLS {
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
                    if let Some(up) = reader.into_upgraded() {
                        crate::websocket::spawn_tunnel(&worker, claim, client_upgrade, up);
                    }
                    if let (Some(entry), Some(access)) = (log, shared.access_log.as_ref()) {
                        access.write(&entry);
                    }
                    return Ok(resp);
                }
                // `upstream::parse_head` left the hop-by-hop headers out.
                if let Some(cookie) = sticky.cookie() {
                    resp.headers_mut().append(header::SET_COOKIE, cookie);
                }
                counters.start();
                let exchange = Exchange {
                    claim,
                    route: last_route.take().expect("set above"),
                    bytes: 0,
                    complete: false,
                    log,
                    worker: worker.clone(),
                };
                *resp.body_mut() = ProxyBody::Upstream(UpstreamBody {
                    body: reader,
                    guard: exchange,
                });
                return Ok(resp);
            }
            Err(Failure::ClientBody) => {
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
            Err(Failure::ClientStalled) => {
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
            Err(Failure::Upstream {
                error: e,
                retry_safe: true,
            }) if !replayed => {
                // The connection died under the request before any answer: a kept one
                // (its instance was killed, or closed it as idle at that moment) or a
                // fresh one (the instance died with it in its listen queue). Sent
                // again, as nginx does; after a fresh one, to another member, and this
                // one is skipped for a while as if it had refused.
                tracing::debug!(addr = %upstream.addr, error = %e, "an upstream connection failed before answering; sending the request again");
                if !conn.reused() {
                    upstream.connect_failed(shared.limits.refused_backoff);
                    tried |= 1u64.checked_shl(index as u32).unwrap_or(0);
                }
                replayed = true;
                error = e;
            }
            Err(Failure::Upstream { error: e, .. }) => {
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
            Err(Failure::Timeout) => {
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
async fn guard<B: Body>(
    route: &Arc<RouteEntry>,
    req: &Request<B>,
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
    body: &mut Incoming,
    max: u64,
    route: &Arc<RouteEntry>,
    idle: std::time::Duration,
) -> Result<ReqBody, Response<ProxyBody>> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => {
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
            failed => {
                let (status, why) = if failed.is_err() {
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
    Ok(if buf.is_empty() {
        ReqBody::Empty
    } else {
        ReqBody::Full(buf.freeze())
    })
}

/// Refuses what no upstream should see (RFC 9112): CONNECT (405), a request target that
/// is neither origin- nor absolute-form, HTTP/1.1 without one valid Host, a Host that is
/// not a host name (both framings at once are caught by `framing`, since hyper drops
/// the length before the head gets here).
/// An absolute-form target replaces Host (§3.2.2).
fn check_request<B>(req: &mut Request<B>) -> Result<(), (StatusCode, &'static str)> {
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
    log: Option<Box<crate::access_log::Entry>>,
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

/// The request's host, lowercase, without a port (borrowed unless it had capitals).
pub(crate) fn host_of<B>(req: &Request<B>) -> std::borrow::Cow<'_, str> {
    host_in(req.uri(), req.headers())
}

/// [`host_of`] from a request's target and headers.
fn host_in<'a>(uri: &'a hyper::Uri, headers: &'a HeaderMap) -> std::borrow::Cow<'a, str> {
    // An absolute-form target names the host; it wins over the Host header (RFC 9112 §3.2.2).
    let raw: &[u8] = match uri.host() {
        Some(h) => h.as_bytes(),
        None => headers.get(header::HOST).map_or(&[], |h| h.as_bytes()),
    };
    // What `HeaderValue::to_str` accepts (else no host); and whether a letter is
    // upper-case. Folds without an early exit, so the compiler checks many bytes at once.
    let (bad, upper) = raw.iter().fold((false, false), |(bad, upper), &b| {
        (
            bad | !(b == b'\t' || (32..127).contains(&b)),
            upper | b.is_ascii_uppercase(),
        )
    });
    if bad {
        return "".into();
    }
    let colon = raw.iter().rposition(|b| *b == b':');
    let host = if raw.first() == Some(&b'[') {
        let inside = raw
            .iter()
            .position(|b| *b == b']')
            .map_or(raw, |end| &raw[..end]);
        let start = inside.iter().take_while(|b| **b == b'[').count();
        &inside[start..]
    } else {
        colon.map_or(raw, |i| &raw[..i])
    };
    // `example.com.` is the same name as `example.com` (a fully qualified form).
    let host = host.strip_suffix(b".").unwrap_or(host);
    // SAFETY: every byte was checked to be ASCII above.
    let host = unsafe { std::str::from_utf8_unchecked(host) };
    if upper {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    }
}

fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A WebSocket handshake: the only upgrade the proxy tunnels.
fn is_websocket<B>(req: &Request<B>) -> bool {
    req.method() == hyper::Method::GET
        && req.version() == hyper::Version::HTTP_11
        && header_has_token(req.headers(), &header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1): the first nine of
/// [`EDGE`], so that one pass over a request's names finds them with the rest.
pub(crate) fn hop_by_hop() -> &'static [HeaderName] {
    &EDGE[..9]
}

/// Which of `names` are present, as a bit set, found in one pass over the header
/// names without hashing (most messages carry none of them, and hashing each name to
/// remove it was a visible share of the request path).
fn present(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    let mut found = 0u32;
    for key in headers.keys() {
        // Most names have a length none of [`EDGE`] has: no comparison for them.
        if !edge_length(key.as_str().len()) {
            continue;
        }
        if let Some(i) = names.iter().position(|n| n == key) {
            found |= 1 << i;
        }
    }
    found
}

/// Removes the hop-by-hop headers and every header that `Connection` names, except
/// those that frame or route the message (they are framed again on the next hop).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let found = present(headers, hop_by_hop());
    if found != 0 {
        strip_found(headers, found);
    }
}

/// [`strip_hop_by_hop`] once [`present`] found them (bits as in [`hop_by_hop`]).
fn strip_found(headers: &mut HeaderMap, found: u32) {
    if found & 1 != 0 && connection_names_others(headers) {
        // hop_by_hop()[0] is Connection: the headers it names go too.
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
    for (i, name) in hop_by_hop().iter().enumerate() {
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

/// What the edge looks for in a client's headers, found in one pass (see [`present`]):
/// the hop-by-hop headers (bits 0..9), then these.
static EDGE: [HeaderName; 15] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-request-id"),
];
/// Whether a client's trailer field is passed up: not one of [`EDGE`] (hop-by-hop, or
/// what the proxy sets), nor one a trailer may not carry because it frames, routes or
/// describes the message (RFC 9110 §6.5.1).
pub(crate) fn trailer_allowed(name: &HeaderName) -> bool {
    !EDGE.contains(name)
        && ![
            header::CONTENT_LENGTH,
            header::HOST,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::CONTENT_RANGE,
            header::AUTHORIZATION,
            header::COOKIE,
            header::EXPECT,
        ]
        .contains(name)
}

/// The lengths of the [`EDGE`] names, as a bit set (checked by a test).
const EDGE_LENGTHS: u32 =
    1 << 2 | 1 << 7 | 1 << 9 | 1 << 10 | 1 << 12 | 1 << 15 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 19;
/// Whether a name of `len` bytes can be one of [`EDGE`]'s: most names cannot, and then
/// no comparison is needed.
pub(crate) fn edge_length(len: usize) -> bool {
    len < 32 && EDGE_LENGTHS & (1 << len) != 0
}
/// The bits of [`hop_by_hop`] (the first nine of `EDGE`).
const HOP_BITS: u32 = (1 << 9) - 1;
/// `forwarded` and the X-Forwarded-* headers: what only a trusted peer may send.
const SPOOFABLE_BITS: u32 = 0b1111 << 9;
const XFP_BIT: u32 = 1 << 10;
const XFH_BIT: u32 = 1 << 11;
const XFF_BIT: u32 = 1 << 12;
const REAL_IP_BIT: u32 = 1 << 13;
const REQUEST_ID_BIT: u32 = 1 << 14;
static CONNECTION: HeaderName = header::CONNECTION;
static UPGRADE: HeaderName = header::UPGRADE;

/// Rewrites the client's headers for the upstream: what must not go up is removed from
/// the map (most requests carry none of it), and what the proxy adds is returned to be
/// written after them (no map insert per request). Returns the request id too.
fn prepare_request<'p, B>(
    req: &mut Request<B>,
    peer: &'p Peer,
    shared: &Shared,
    websocket: bool,
    has_host: bool,
    route_trusted: bool,
) -> Added<'p> {
    let https = req.extensions().get::<crate::tls::Https>().is_some();
    let headers = req.headers_mut();
    let mut added = Added::default();
    let found = present(headers, &EDGE);
    if websocket {
        added.upgrade = headers.get(header::UPGRADE).cloned();
    }
    if found & HOP_BITS != 0 {
        strip_found(headers, found);
    }
    let trusted = route_trusted || shared.trusted_proxies.contains(&peer.addr.ip());
    if trusted && found & XFF_BIT != 0 {
        // A trusted peer may send several lines: folded into one, the peer added. (Kept
        // in the map: a canary's stickiness may key on it.)
        let prev: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let joined = format!("{}, {}", prev.join(", "), peer.addr.ip());
        let xff = HeaderValue::from_str(&joined).unwrap_or_else(|_| peer.ip_header.clone());
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    } else {
        if !trusted && found & SPOOFABLE_BITS != 0 {
            for (i, name) in EDGE.iter().enumerate() {
                if found & SPOOFABLE_BITS & (1 << i) != 0 {
                    headers.remove(name);
                }
            }
        }
        added.forwarded_for = Some(&peer.ip_header);
    }
    if !trusted || found & REAL_IP_BIT == 0 {
        // A client's own X-Real-IP would pass for one the proxy set.
        if found & REAL_IP_BIT != 0 {
            headers.remove(&X_REAL_IP);
        }
        added.real_ip = Some(&peer.ip_header);
    }
    // (From an untrusted peer these were removed above.)
    if !trusted || found & XFP_BIT == 0 {
        added.proto = Some(if https { "https" } else { "http" });
    }
    added.forwarded_host = (!trusted || found & XFH_BIT == 0) && has_host;
    let kept = found & REQUEST_ID_BIT != 0
        && headers
            .get(&X_REQUEST_ID)
            .is_some_and(|v| valid_request_id(v.as_bytes()));
    if !kept {
        if found & REQUEST_ID_BIT != 0 {
            headers.remove(&X_REQUEST_ID);
        }
        added.request_id = Some(new_request_id(&shared.request_id_prefix));
    }
    added
}

/// Headers the proxy adds on the way up, written after the client's own: borrowed or
/// written in place, so a request makes no header value (and no allocation) for them.
#[derive(Default)]
pub(crate) struct Added<'p> {
    /// A WebSocket handshake: `Connection: upgrade` and this `Upgrade`.
    upgrade: Option<HeaderValue>,
    forwarded_for: Option<&'p HeaderValue>,
    real_ip: Option<&'p HeaderValue>,
    proto: Option<&'static str>,
    /// `X-Forwarded-Host`: a copy of the request's `Host`.
    forwarded_host: bool,
    /// A new `X-Request-Id` (none when the client's own is kept).
    request_id: Option<RequestId>,
}

impl Added<'_> {
    /// Writes the added headers as lines of a request head; `headers` are the request's.
    pub fn write(&self, out: &mut Vec<u8>, headers: &HeaderMap) {
        let mut line = |name: &HeaderName, value: &[u8]| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        if let Some(upgrade) = &self.upgrade {
            line(&CONNECTION, b"upgrade");
            line(&UPGRADE, upgrade.as_bytes());
        }
        if let Some(v) = self.forwarded_for {
            line(&X_FORWARDED_FOR, v.as_bytes());
        }
        if let Some(v) = self.real_ip {
            line(&X_REAL_IP, v.as_bytes());
        }
        if let Some(proto) = self.proto {
            line(&X_FORWARDED_PROTO, proto.as_bytes());
        }
        if self.forwarded_host {
            if let Some(v) = headers.get(header::HOST) {
                line(&X_FORWARDED_HOST, v.as_bytes());
            }
        }
        if let Some(id) = &self.request_id {
            line(&X_REQUEST_ID, id.as_bytes());
        }
    }

    /// This request's id: the new one, or the client's it kept.
    fn request_id<'a>(&'a self, headers: &'a HeaderMap) -> &'a str {
        match &self.request_id {
            Some(id) => id.as_str(),
            None => headers
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        }
    }
}

/// A request id made by the proxy, in place (see [`new_request_id`]).
pub(crate) struct RequestId {
    buf: [u8; 80],
    len: u8,
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written (see `new_request_id`).
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
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
fn new_request_id(prefix: &str) -> RequestId {
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
    RequestId {
        buf,
        len: len as u8,
    }
}

/// `n` in lowercase hex without leading zeros, at the start of `out` (17 bytes are
/// enough); returns the length.
pub(crate) fn write_hex(out: &mut [u8], n: u64) -> usize {
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
    fn the_edge_names_start_with_the_hop_by_hop_ones() {
        let hop_by_hop: Vec<&str> = hop_by_hop().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            hop_by_hop,
            [
                "connection",
                "keep-alive",
                "proxy-connection",
                "proxy-authenticate",
                "proxy-authorization",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade"
            ]
        );
        let lengths = EDGE.iter().fold(0u32, |m, n| m | 1 << n.as_str().len());
        assert_eq!(
            lengths, EDGE_LENGTHS,
            "EDGE_LENGTHS must name every EDGE length"
        );
        assert_eq!(EDGE[12], X_FORWARDED_FOR);
        assert_eq!(EDGE[13], X_REAL_IP);
        assert_eq!(EDGE[14], X_REQUEST_ID);
        assert_eq!(
            (EDGE[10].as_str(), EDGE[11].as_str()),
            ("x-forwarded-proto", "x-forwarded-host")
        );
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
    fn the_host_is_lowercase_without_port_or_trailing_dot_and_the_target_wins() {
        let host = |target: &str, header: Option<&[u8]>| {
            let uri: hyper::Uri = target.parse().unwrap();
            let mut h = HeaderMap::new();
            if let Some(v) = header {
                h.insert(header::HOST, HeaderValue::from_bytes(v).unwrap());
            }
            host_in(&uri, &h).into_owned()
        };
        assert_eq!(host("/", Some(b"Example.COM:8080")), "example.com");
        assert_eq!(host("/", Some(b"example.com.")), "example.com");
        assert_eq!(host("/", Some(b"example.com")), "example.com");
        assert_eq!(host("/", Some(b"[::1]:80")), "::1");
        assert_eq!(host("/", Some(b"[::1]")), "::1");
        assert_eq!(host("/", None), "");
        // Not visible ASCII: no host (as `HeaderValue::to_str` refuses it).
        assert_eq!(host("/", Some(b"caf\xc3\xa9.example")), "");
        assert_eq!(
            host("http://Other.example:81/x", Some(b"a.example")),
            "other.example"
        );
    }

    #[test]
    fn generated_request_ids_are_prefix_thread_and_sequence_in_hex() {
        let a = new_request_id("0a1b2c3d");
        let b = new_request_id("0a1b2c3d");
        let parts: Vec<_> = a.as_str().split('-').collect();
        assert_eq!(parts.len(), 3, "{}", a.as_str());
        assert_eq!(parts[0], "0a1b2c3d");
        let seq = |v: &RequestId| {
            u64::from_str_radix(v.as_str().rsplit('-').next().unwrap(), 16).unwrap()
        };
        assert_eq!(seq(&b), seq(&a) + 1);
        assert!(valid_request_id(a.as_str().as_bytes()));
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
