//! The proxy's HTTP/1.1 client for upstreams, run on the request's own task: the
//! request head is written from one reused buffer, the response head parsed with
//! `httparse`, and the response body read straight from the socket while the client
//! side polls it. (hyper's client handed each request to the connection's task and
//! back, and that hand-off, its header maps and its timers were most of the proxy's
//! cost per request; see design §6.)
//!
//! Idle keep-alive connections wait in a pool per worker thread: each worker runs one
//! current-thread runtime, so the pool is a thread-local list without a lock. A
//! connection goes back only when its response was read to the end, the upstream did
//! not ask to close, and nothing is left over.
//!
//! It knows nothing of routes, counters or health: it says which side failed (the
//! client's body, the upstream) and whether the request may safely be sent again.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Idle connections kept per upstream address and worker thread.
const POOL_MAX_IDLE: usize = 512;
/// The longest response head (or trailer block) accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// The most header lines in a response head.
const MAX_HEADERS: usize = 128;
/// How much room each read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// A request body below this is copied into one write with its head or chunk frame.
const SMALL_WRITE: usize = 16 * 1024;

thread_local! {
    /// Idle connections of this worker thread, by upstream address.
    // A list, not a hash map: a worker talks to a handful of upstreams, and a scan of a
    // few addresses costs less than hashing one.
    static POOL: RefCell<Vec<(SocketAddr, Vec<Conn>)>> = const { RefCell::new(Vec::new()) };
    static POOL_RETURNS: Cell<u64> = const { Cell::new(0) };
    /// The buffer request heads are written into (taken while in use).
    static HEAD_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// One connection to an upstream.
pub(crate) struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    /// Bytes read and not yet used.
    buf: BytesMut,
    /// One timer for the connection's life (a new timer per request was a visible
    /// share of the request path).
    timer: Timer,
    /// Requests this connection carried before the current one.
    used: u64,
}

impl Conn {
    /// Whether the connection came from the pool (it may have died while idle).
    pub fn reused(&self) -> bool {
        self.used > 0
    }

    /// Whether an idle connection may carry a request: the upstream has neither
    /// closed it nor sent anything unasked. Costs a system call only when the socket
    /// was reported readable.
    fn idle_usable(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: end of stream or stray bytes, unless the report is stale.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Waits for `f` or `deadline` (`None`), on the connection's one timer.
    async fn until<F: Future>(timer: &mut Timer, deadline: Instant, f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            timer.poll_until(deadline, cx).map(|()| None)
        })
        .await
    }
}

/// A connection's timer. Each wait's deadline lies further ahead than the last (now
/// plus a timeout), so the registered deadline is moved only when a wait's is earlier,
/// or when it goes off before the wait's: an early wake-up now and then instead of a
/// timer moved (and re-registered) for every request.
struct Timer(Pin<Box<Sleep>>);

impl Timer {
    fn new() -> Timer {
        Timer(Box::pin(tokio::time::sleep_until(far_future())))
    }

    /// Ready once `deadline` has passed.
    fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.deadline() > deadline {
            self.0.as_mut().reset(deadline);
        }
        loop {
            if self.0.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.0.deadline() >= deadline {
                return Poll::Ready(());
            }
            // An earlier wait's deadline: on to this one's.
            self.0.as_mut().reset(deadline);
        }
    }
}

/// Connects to `addr` within `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        addr,
        buf: BytesMut::new(),
        timer: Timer::new(),
        used: 0,
    })
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

/// An idle connection to `addr` from this worker's pool, if one is usable.
pub(crate) fn checkout(addr: SocketAddr) -> Option<Conn> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (_, idle) = pool.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some(conn) = idle.pop() {
            if conn.idle_usable() {
                return Some(conn);
            }
        }
        None
    })
}

/// Puts a connection whose exchange ended cleanly back in the pool.
fn checkin(mut conn: Conn) {
    conn.used += 1;
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        // Now and then forget connections that closed while idle (each deploy brings
        // new addresses; the old ones are never checked out again).
        let n = POOL_RETURNS.with(|c| {
            c.set(c.get().wrapping_add(1));
            c.get()
        });
        if n % 4096 == 0 {
            sweep(&mut pool);
        }
        let idle = match pool.iter().position(|(a, _)| *a == conn.addr) {
            Some(i) => &mut pool[i].1,
            None => {
                pool.push((conn.addr, Vec::new()));
                &mut pool.last_mut().expect("just pushed").1
            }
        };
        if idle.len() < POOL_MAX_IDLE {
            idle.push(conn);
        }
    })
}

fn sweep(pool: &mut Vec<(SocketAddr, Vec<Conn>)>) {
    pool.retain_mut(|(_, idle)| {
        idle.retain(Conn::idle_usable);
        !idle.is_empty()
    });
}

/// Closes this worker's idle connections that their upstream closed (called now and
/// then by the worker, so a quiet proxy does not keep dead sockets).
pub(crate) fn sweep_pool() {
    POOL.with(|pool| sweep(&mut pool.borrow_mut()));
}

/// Idle connections in this worker's pool (for tests).
#[cfg(test)]
fn pooled(addr: SocketAddr) -> usize {
    POOL.with(|p| {
        p.borrow()
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(0, |(_, v)| v.len())
    })
}

/// A request's body on its way up.
pub(crate) enum ReqBody {
    Empty,
    /// Read whole before sending (a route's body limit); can be sent again.
    Full(Bytes),
    /// Streamed from the client; `touched` once a frame was taken (then it cannot be
    /// sent again).
    Stream {
        body: Incoming,
        touched: bool,
    },
}

impl ReqBody {
    pub fn new(body: Incoming) -> ReqBody {
        if body.is_end_stream() {
            ReqBody::Empty
        } else {
            ReqBody::Stream {
                body,
                touched: false,
            }
        }
    }

    /// Whether the whole body can still be sent on another connection.
    fn replayable(&self) -> bool {
        !matches!(self, ReqBody::Stream { touched: true, .. })
    }
}

/// How long an exchange may wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// For the response head, counted from the end of the request body.
    pub response: Duration,
    /// For each piece of an upload: the client sending it, the upstream taking it.
    pub body_idle: Duration,
}

/// Why an exchange gave no response head.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The client's body broke its own framing (a bad chunk size, a bare LF).
    ClientBody,
    /// The client sent no body data for the body-idle timeout.
    ClientStalled,
    /// No response head within the response timeout (or the upstream stopped taking
    /// the body).
    Timeout,
    /// The upstream failed or closed. `retry_safe`: it failed before any byte of a
    /// response and the request can be sent again whole and without harm: its body is
    /// still at hand, and it is idempotent, or (on a connection from the pool) nothing
    /// of it was written. On a kept connection that is the usual race with an upstream
    /// closing an idle connection; on a fresh one, an instance that died with the
    /// connection still in its listen queue.
    Upstream { error: String, retry_safe: bool },
}

/// The request line and headers to send; the headers are already rewritten.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    /// Origin form: `/path?query`.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// What the proxy adds, written after `headers`.
    pub added: &'a crate::forward::Added<'a>,
}

/// A response head and how its body is framed.
#[derive(Debug)]
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Eof,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Sends `req` with `body` on `conn` and reads the response head. On success the
/// connection is ready to read the body ([`ResponseBody`]).
pub(crate) async fn exchange(
    conn: &mut Conn,
    req: &Outgoing<'_>,
    body: &mut ReqBody,
    timeouts: Timeouts,
) -> Result<Head, Failure> {
    let reused = conn.reused();
    let idempotent = matches!(*req.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let upstream = |error: String, written: bool, body: &ReqBody| Failure::Upstream {
        error,
        retry_safe: body.replayable() && (idempotent || (reused && !written)),
    };
    conn.buf.clear();
    let mut head = HEAD_BUF.with(Cell::take);
    head.clear();
    write_request_head(&mut head, req, body);
    let mut finished = true;
    let mut trailers = None;
    match body {
        ReqBody::Full(b) if b.len() <= SMALL_WRITE => head.extend_from_slice(b),
        ReqBody::Stream {
            body: incoming,
            touched,
        } => {
            // What the client already sent goes with the head, in one write; and a body
            // that is malformed from its first byte never lets the head go up (as
            // hyper's client did not).
            let chunked = incoming.size_hint().exact().is_none();
            let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut *incoming).poll_frame(cx))).await;
            finished = false;
            match polled {
                Poll::Ready(Some(Err(_))) => {
                    HEAD_BUF.with(|c| c.set(head));
                    return Err(Failure::ClientBody);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    *touched = true;
                    match frame.into_data() {
                        Ok(data) => push_data(&mut head, &data, chunked),
                        // Trailers come last: the body ends with them.
                        Err(frame) => trailers = frame.into_trailers().ok(),
                    }
                    finished = incoming.is_end_stream() || trailers.is_some();
                }
                Poll::Ready(None) => {
                    *touched = true;
                    finished = true;
                }
                Poll::Pending => {}
            }
            if finished && chunked {
                push_last_chunk(&mut head, trailers.as_ref());
            }
        }
        _ => {}
    }
    let deadline = Instant::now() + timeouts.response;
    let wrote = Conn::until(
        &mut conn.timer,
        deadline,
        tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &head),
    )
    .await;
    let big_full = matches!(body, ReqBody::Full(b) if b.len() > SMALL_WRITE);
    if head.capacity() > 4 * SMALL_WRITE {
        // A large first piece of a body: the buffer is not kept that large.
        head = Vec::new();
    }
    HEAD_BUF.with(|c| c.set(head));
    match wrote {
        None => return Err(Failure::Timeout),
        Some(Err(e)) => return Err(upstream(format!("write: {e}"), false, body)),
        Some(Ok(())) => {}
    }
    let mut early = false;
    if big_full {
        let ReqBody::Full(b) = &*body else {
            unreachable!()
        };
        // Boxed, as the streamed body's sending below: the request path without a body
        // (most requests) moves a smaller future.
        match Box::pin(write_watching(conn, b, timeouts.body_idle)).await {
            Ok(e) => early = e,
            Err(f) => return Err(f),
        }
    } else if !finished {
        early = Box::pin(send_stream(conn, body, timeouts.body_idle)).await?;
    }
    // The response timeout counts from the end of the upload: its time is the client's.
    // (A request that went up in one write keeps the deadline it had.)
    let deadline = if early || (finished && !big_full) {
        deadline
    } else {
        Instant::now() + timeouts.response
    };
    loop {
        let head = read_head(conn, req.method == Method::HEAD, deadline).await;
        let head = match head {
            Ok(h) => h,
            Err(HeadError::Timeout) => return Err(Failure::Timeout),
            Err(HeadError::Closed(e)) => return Err(upstream(e, true, body)),
            Err(HeadError::Bad(e)) => {
                return Err(Failure::Upstream {
                    error: e,
                    retry_safe: false,
                })
            }
        };
        // 1xx (but 101) are interim: the real head follows (RFC 9110 §15.2).
        if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        let mut head = head;
        // A response that came before the whole body was sent leaves the connection
        // in the middle of a request: it is not reused.
        head.keep_alive &= !early;
        return Ok(head);
    }
}

/// Writes the request line, the headers (without framing headers) and this hop's
/// framing for `body`.
fn write_request_head(out: &mut Vec<u8>, req: &Outgoing<'_>, body: &ReqBody) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in req.headers {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        push_header(out, name, value);
    }
    req.added.write(out, req.headers);
    let length = match body {
        ReqBody::Empty => (had_length
            || matches!(*req.method, Method::POST | Method::PUT | Method::PATCH))
        .then_some(0),
        ReqBody::Full(b) => Some(b.len() as u64),
        ReqBody::Stream { body, .. } => body.size_hint().exact(),
    };
    match (length, body) {
        (Some(n), _) => {
            out.extend_from_slice(b"content-length: ");
            let mut digits = [0u8; 20];
            out.extend_from_slice(decimal(&mut digits, n));
            out.extend_from_slice(b"\r\n");
        }
        (None, ReqBody::Stream { .. }) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (None, _) => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Streams the client's body up, chunk-framed when its length is unknown. Returns
/// true when the upstream answered before the body was all sent.
async fn send_stream(conn: &mut Conn, body: &mut ReqBody, idle: Duration) -> Result<bool, Failure> {
    let ReqBody::Stream { body, touched } = body else {
        return Ok(false);
    };
    let chunked = body.size_hint().exact().is_none();
    let mut scratch = Vec::new();
    let mut trailers = None;
    loop {
        *touched = true;
        let frame = Conn::until(
            &mut conn.timer,
            Instant::now() + idle,
            http_body_util::BodyExt::frame(body),
        )
        .await;
        let data = match frame {
            None => return Err(Failure::ClientStalled),
            Some(Some(Err(_))) => return Err(Failure::ClientBody),
            Some(None) => {
                if chunked {
                    scratch.clear();
                    push_last_chunk(&mut scratch, trailers.as_ref());
                    return write_watching(conn, &scratch, idle).await;
                }
                return Ok(false);
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) if !d.is_empty() => d,
                Ok(_) => continue,
                // Kept for the last chunk (a body with a length has nowhere to put them).
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            },
        };
        let early = if data.len() <= SMALL_WRITE {
            scratch.clear();
            push_data(&mut scratch, &data, chunked);
            write_watching(conn, &scratch, idle).await?
        } else if chunked {
            scratch.clear();
            scratch.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            write_watching(conn, &scratch, idle).await?
                || write_watching(conn, &data, idle).await?
                || write_watching(conn, b"\r\n", idle).await?
        } else {
            write_watching(conn, &data, idle).await?
        };
        if early {
            return Ok(true);
        }
    }
}

/// Appends the last chunk of a chunked request body with the client's trailer fields
/// (hyper parsed them as it parses header fields; those no trailer may carry are left
/// out, see `forward::trailer_allowed`).
fn push_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if crate::forward::trailer_allowed(name) {
            push_header(out, name, value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a piece of a request body, chunk-framed when `chunked`.
fn push_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        let mut hex = [0u8; 17];
        let n = crate::forward::write_hex(&mut hex, data.len() as u64);
        out.extend_from_slice(&hex[..n]);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Writes `data` up while watching for an early response (an upstream may answer, say
/// 413, without reading the body). Returns true when a response began first.
async fn write_watching(conn: &mut Conn, mut data: &[u8], idle: Duration) -> Result<bool, Failure> {
    let Conn {
        stream, buf, timer, ..
    } = conn;
    while !data.is_empty() {
        let deadline = Instant::now() + idle;
        let step = poll_fn(|cx| {
            match Pin::new(&mut *stream).poll_write(cx, data) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err("write: the upstream took nothing".into()))
                }
                Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Some(n))),
                Poll::Ready(Err(e)) => {
                    // Perhaps it answered and closed: a response in the socket wins.
                    if poll_fill(stream, buf, cx).is_ready() && !buf.is_empty() {
                        return Poll::Ready(Ok(None));
                    }
                    return Poll::Ready(Err(format!("write: {e}")));
                }
                Poll::Pending => {}
            }
            match poll_fill(stream, buf, cx) {
                Poll::Ready(Ok(n)) if n > 0 => return Poll::Ready(Ok(None)),
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(Err("the upstream closed the connection".into()))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read: {e}"))),
                Poll::Pending => {}
            }
            if timer.poll_until(deadline, cx).is_ready() {
                return Poll::Ready(Err(String::new()));
            }
            Poll::Pending
        })
        .await;
        match step {
            Ok(Some(n)) => data = &data[n..],
            Ok(None) => return Ok(true),
            Err(e) if e.is_empty() => return Err(Failure::Timeout),
            Err(error) => {
                return Err(Failure::Upstream {
                    error,
                    retry_safe: false,
                })
            }
        }
    }
    Ok(false)
}

/// Reads once into `buf` (growing it); `Ok(0)` is the end of the stream.
fn poll_fill(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    let spare = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(spare);
    ready!(Pin::new(stream).poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

enum HeadError {
    Timeout,
    /// The connection ended (or broke) before a whole head; `Bad` for a head that
    /// makes no sense.
    Closed(String),
    Bad(String),
}

async fn read_head(
    conn: &mut Conn,
    head_request: bool,
    deadline: Instant,
) -> Result<Head, HeadError> {
    let Conn {
        stream, buf, timer, ..
    } = conn;
    poll_fn(|cx| loop {
        if !buf.is_empty() {
            match parse_head(buf, head_request) {
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) if buf.len() > MAX_HEAD => {
                    return Poll::Ready(Err(HeadError::Bad(
                        "the response head is too large".into(),
                    )))
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(HeadError::Bad(e))),
            }
        }
        match poll_fill(stream, buf, cx) {
            Poll::Ready(Ok(0)) if buf.is_empty() => {
                return Poll::Ready(Err(HeadError::Closed(
                    "the upstream closed the connection".into(),
                )))
            }
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(HeadError::Bad("the upstream closed mid-head".into())))
            }
            Poll::Ready(Ok(_)) => continue,
            Poll::Ready(Err(e)) if buf.is_empty() => {
                return Poll::Ready(Err(HeadError::Closed(format!("read: {e}"))))
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(HeadError::Bad(format!("read: {e}")))),
            Poll::Pending => {}
        }
        return match timer.poll_until(deadline, cx) {
            Poll::Ready(()) => Poll::Ready(Err(HeadError::Timeout)),
            Poll::Pending => Poll::Pending,
        };
    })
    .await
}

thread_local! {
    /// A request's header map, emptied, for the next response head of this thread
    /// ([`recycle_headers`]): hyper hands each response's map back as the next
    /// request's, so with this the two maps of an exchange are one allocation.
    static SPARE_HEADERS: std::cell::Cell<Option<HeaderMap>> = const { std::cell::Cell::new(None) };
}

/// Keeps `map` (a request's, done with) for the next response head parsed on this
/// thread.
pub(crate) fn recycle_headers(mut map: HeaderMap) {
    map.clear();
    SPARE_HEADERS.set(Some(map));
}

/// An empty header map: the one kept by [`recycle_headers`], or a new one.
pub(crate) fn spare_headers() -> HeaderMap {
    SPARE_HEADERS.take().unwrap_or_default()
}

/// Parses a response head from the start of `buf` and takes it off; `None` until it is
/// whole. Header values share the head's bytes (no copy). The hop-by-hop headers of a
/// final response are left out as they are read (RFC 9110 §7.6.1; a 101 keeps them,
/// its tunnel needs `Upgrade`), so the client side forwards `headers` as they are.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, String> {
    // Offsets, not slices: the slices borrow `buf`, which is split after the parse.
    // Neither array is initialised up front (together 6 KB of stores per response,
    // a visible share of the request path); only the first `count` are read.
    let mut spans = [const { MaybeUninit::<(u32, u32, u32, u32)>::uninit() }; MAX_HEADERS];
    let (len, count, code, minor) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("malformed response head: {e}")),
        };
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            span.write((
                offset(h.name.as_bytes()),
                h.name.len() as u32,
                offset(h.value),
                h.value.len() as u32,
            ));
        }
        (
            len,
            resp.headers.len(),
            resp.code.unwrap_or(0),
            resp.version.unwrap_or(0),
        )
    };
    let raw = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| format!("bad status {code}"))?;
    let keep_hop = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = spare_headers();
    headers.reserve(count);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut close = minor == 0;
    // A `Connection` naming other headers: they (and it) go after the loop.
    let mut names_others = false;
    // SAFETY: the first `count` spans were written above.
    let spans =
        unsafe { std::slice::from_raw_parts(spans.as_ptr().cast::<(u32, u32, u32, u32)>(), count) };
    for &(no, nl, vo, vl) in spans {
        let name_raw = &raw[no as usize..(no + nl) as usize];
        let value_raw = &raw[vo as usize..(vo + vl) as usize];
        // Named from the raw bytes (by length first): the hop-by-hop headers left out
        // never become a `HeaderName`.
        let kind = classify(name_raw);
        match kind {
            Field::ContentLength => {
                let n = std::str::from_utf8(value_raw)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or("a malformed Content-Length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length values".into());
                }
                length = Some(n);
            }
            Field::TransferEncoding => {
                encoded = true;
                // Chunked must be the last coding for the body to be chunk-framed.
                chunked = value_raw
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            Field::Connection => {
                for t in value_raw.split(|b| *b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        if minor == 0 {
                            close = false;
                        }
                    } else if !t.is_empty() {
                        names_others = true;
                    }
                }
            }
            Field::HopByHop | Field::Other => {}
        }
        // (Connection is kept while it may name others: the strip below reads it.)
        let left_out = match kind {
            Field::Connection => !names_others,
            Field::TransferEncoding | Field::HopByHop => true,
            Field::ContentLength | Field::Other => false,
        };
        if left_out && !keep_hop {
            continue;
        }
        let name = match common_name(name_raw) {
            Some(n) => n,
            None => HeaderName::from_bytes(name_raw)
                .map_err(|_| "a malformed header name".to_string())?,
        };
        // SAFETY (of the unchecked value): httparse accepted it, and its rule for a
        // field value (HTAB, SP, visible ASCII, obs-text) is `HeaderValue`'s; hyper's own
        // parser builds its values the same way.
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(raw.slice(vo as usize..(vo + vl) as usize))
        };
        headers.append(name, value);
    }
    if names_others && !keep_hop {
        crate::forward::strip_hop_by_hop(&mut headers);
    }
    let code = status.as_u16();
    let framing = if head_request || status.is_informational() || code == 204 || code == 304 {
        Framing::Done
    } else if encoded {
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Eof
        }
    } else {
        match length {
            Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
            None => Framing::Eof,
        }
    };
    Ok(Some(Head {
        status,
        headers,
        keep_alive: !close && framing != Framing::Eof,
        framing,
    }))
}

/// What a response header line is to the parser.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    ContentLength,
    TransferEncoding,
    Connection,
    /// Another hop-by-hop header (RFC 9110 §7.6.1).
    HopByHop,
    Other,
}

/// Names a header from its raw name (any case), by its length first: most names are
/// of no length any of these has. The hop-by-hop names are [`crate::forward::hop_by_hop`]'s.
fn classify(name: &[u8]) -> Field {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        14 if is("content-length") => Field::ContentLength,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        10 if is("connection") => Field::Connection,
        len if crate::forward::edge_length(len)
            && crate::forward::hop_by_hop()
                .iter()
                .any(|h| h.as_str().len() == len && is(h.as_str())) =>
        {
            Field::HopByHop
        }
        _ => Field::Other,
    }
}

/// The `HeaderName` of a name most responses or requests carry (response heads here,
/// request heads in `plain`), found by its length first: a constant is a copy, where
/// `HeaderName::from_bytes` lowercases into a buffer and searches every standard name
/// (a visible share of a request's instructions).
pub(crate) fn common_name(name: &[u8]) -> Option<HeaderName> {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    Some(match name.len() {
        4 if is("date") => header::DATE,
        4 if is("etag") => header::ETAG,
        4 if is("vary") => header::VARY,
        4 if is("host") => header::HOST,
        6 if is("server") => header::SERVER,
        6 if is("accept") => header::ACCEPT,
        6 if is("cookie") => header::COOKIE,
        6 if is("origin") => header::ORIGIN,
        7 if is("expires") => header::EXPIRES,
        7 if is("referer") => header::REFERER,
        8 if is("location") => header::LOCATION,
        10 if is("set-cookie") => header::SET_COOKIE,
        10 if is("user-agent") => header::USER_AGENT,
        10 if is("connection") => header::CONNECTION,
        12 if is("content-type") => header::CONTENT_TYPE,
        13 if is("cache-control") => header::CACHE_CONTROL,
        13 if is("last-modified") => header::LAST_MODIFIED,
        13 if is("accept-ranges") => header::ACCEPT_RANGES,
        13 if is("authorization") => header::AUTHORIZATION,
        13 if is("if-none-match") => header::IF_NONE_MATCH,
        14 if is("content-length") => header::CONTENT_LENGTH,
        15 if is("accept-encoding") => header::ACCEPT_ENCODING,
        15 if is("accept-language") => header::ACCEPT_LANGUAGE,
        15 if is("x-forwarded-for") => HeaderName::from_static("x-forwarded-for"),
        16 if is("content-encoding") => header::CONTENT_ENCODING,
        17 if is("if-modified-since") => header::IF_MODIFIED_SINCE,
        _ => return None,
    })
}

/// A response body read from its connection as the client side asks for it; the
/// connection goes back to the pool when it is dropped after the last byte.
pub(crate) struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    /// The longest the upstream may send nothing of the body (an error after that).
    idle: Duration,
    /// When the current wait for body bytes fails (set on the first read that finds
    /// nothing after progress, so a body already in the buffer reads no clock).
    stall_deadline: Option<Instant>,
}

impl ResponseBody {
    pub fn new(conn: Conn, head: &Head, idle: Duration) -> ResponseBody {
        ResponseBody {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            idle,
            stall_deadline: None,
        }
    }

    /// The bytes and the socket after a 101 answer (for a tunnel).
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        let conn = self.conn.take()?;
        Some(Upgraded {
            prefix: conn.buf.freeze(),
            stream: conn.stream,
        })
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.framing == Framing::Done && self.keep_alive && conn.buf.is_empty() {
                checkin(conn);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let buf = &mut conn.buf;
            match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !buf.is_empty() {
                        let n = (*left).min(buf.len() as u64);
                        *left -= n;
                        let data = buf.split_to(n as usize).freeze();
                        if *left == 0 {
                            this.framing = Framing::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Eof => {
                    if !buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                    }
                }
                Framing::Chunked(state) => match decode_chunked(state, buf) {
                    Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                    Ok(Decoded::Trailers(t)) => {
                        this.framing = Framing::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::End) => {
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::More) => {}
                    Err(e) => {
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            e,
                        ))))
                    }
                },
            }
            let filled = match poll_fill(&mut conn.stream, &mut conn.buf, cx) {
                Poll::Ready(r) => {
                    this.stall_deadline = None;
                    r
                }
                Poll::Pending => {
                    let deadline = *this
                        .stall_deadline
                        .get_or_insert_with(|| Instant::now() + this.idle);
                    ready!(conn.timer.poll_until(deadline, cx));
                    // A stalled body: an error, so the client's response ends truncated
                    // (never passes for whole) and the connection is not pooled.
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the upstream sent nothing of the body for the body-idle timeout",
                    ))));
                }
            };
            match filled {
                Ok(0) if this.framing == Framing::Eof => {
                    this.framing = Framing::Done;
                    this.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed before the end of the body",
                    ))))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// Needs more bytes.
    More,
}

/// Takes the next piece of a chunked body off `buf`.
fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                    return if buf.len() > 1024 {
                        Err("a chunk size line is too long")
                    } else {
                        Ok(Decoded::More)
                    };
                };
                let line = &buf[..end];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let size = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if size.is_empty() || size.len() > 15 {
                    return Err("a malformed chunk size");
                }
                let mut n: u64 = 0;
                for b in size {
                    let d = (*b as char).to_digit(16).ok_or("a malformed chunk size")?;
                    n = n * 16 + u64::from(d);
                }
                buf.advance(end + 1);
                *state = if n == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(n)
                };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = left.min(buf.len() as u64);
                *state = if n == left {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left - n)
                };
                return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
            }
            Chunk::DataEnd => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                } else if buf.starts_with(b"\n") {
                    buf.advance(1);
                } else if buf.is_empty() || buf[..] == b"\r"[..] {
                    return Ok(Decoded::More);
                } else {
                    return Err("a chunk without its line end");
                }
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Decoded::End);
                }
                if buf.starts_with(b"\n") {
                    buf.advance(1);
                    return Ok(Decoded::End);
                }
                if buf.is_empty() || buf[..] == b"\r"[..] {
                    return Ok(Decoded::More);
                }
                let mut lines = [httparse::EMPTY_HEADER; 32];
                return match httparse::parse_headers(buf, &mut lines) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            if let (Ok(n), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(n, v);
                            }
                        }
                        buf.advance(len);
                        Ok(Decoded::Trailers(trailers))
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        Err("the trailers are too large")
                    }
                    Ok(httparse::Status::Partial) => Ok(Decoded::More),
                    Err(_) => Err("malformed trailers"),
                };
            }
        }
    }
}

/// An upstream connection after a 101 answer: what the upstream sent after its head
/// (already the tunnel's bytes), then the socket.
pub(crate) struct Upgraded {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_map_carries_nothing_of_its_request_into_the_response() {
        let mut old = HeaderMap::new();
        for i in 0..20 {
            old.append(
                HeaderName::from_bytes(format!("x-old-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        old.append(header::SERVER, HeaderValue::from_static("client"));
        recycle_headers(old);
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: up\r\nX-New: 2\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let head = parse_head(&mut buf, false).unwrap().unwrap();
        let got: Vec<_> = head
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [("server", "up"), ("x-new", "2"), ("content-length", "0")]
        );
    }

    #[test]
    fn common_names_are_the_names_from_bytes_makes() {
        for name in [
            "date",
            "ETag",
            "Vary",
            "Server",
            "expires",
            "Location",
            "Set-Cookie",
            "Content-Type",
            "cache-control",
            "Last-Modified",
            "accept-ranges",
            "Content-Length",
            "content-encoding",
            "Host",
            "accept",
            "Cookie",
            "origin",
            "Referer",
            "User-Agent",
            "connection",
            "authorization",
            "If-None-Match",
            "accept-encoding",
            "Accept-Language",
            "X-Forwarded-For",
            "if-modified-since",
        ] {
            assert_eq!(
                common_name(name.as_bytes()),
                Some(HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        for other in [
            "x-date",
            "dat",
            "servers",
            "content-typo",
            "",
            "x-request-id",
        ] {
            assert_eq!(common_name(other.as_bytes()), None, "{other}");
        }
    }
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const TIMEOUTS: Timeouts = Timeouts {
        response: Duration::from_secs(20),
        body_idle: Duration::from_secs(20),
    };

    fn head_of(raw: &[u8], head_request: bool) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let head = parse_head(&mut buf, head_request)
            .expect("parses")
            .expect("whole");
        (head, buf)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (h, rest) = head_of(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
            false,
        );
        assert_eq!(
            (h.status, h.framing, h.keep_alive),
            (StatusCode::OK, Framing::Length(5), true)
        );
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(&rest[..], b"hello");
        // HEAD, 204 and 304 have no body whatever their headers say.
        let (h, _) = head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(h.framing, Framing::Done);
        assert_eq!(h.headers["content-length"], "5");
        for code in [204, 304] {
            let raw = format!("HTTP/1.1 {code} X\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert_eq!(
                head_of(raw.as_bytes(), false).0.framing,
                Framing::Done,
                "{code}"
            );
        }
        // Chunked wins over a length; another last coding means close-delimited.
        let (h, _) = head_of(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        let (h, _) = head_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        let (h, _) = head_of(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((h.framing, h.keep_alive), (Framing::Eof, false));
        // Keep-alive: HTTP/1.1 unless `close`; HTTP/1.0 only with `keep-alive`.
        let (h, _) = head_of(
            b"HTTP/1.1 200 OK\r\nConnection: foo, Close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!h.keep_alive);
        let (h, _) = head_of(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!h.keep_alive);
        let (h, _) = head_of(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(h.keep_alive);
        // Incomplete, conflicting or malformed heads.
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
        assert_eq!(
            partial.len(),
            27,
            "nothing is taken until the head is whole"
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                parse_head(&mut BytesMut::from(bad), false).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_raw_name_classes_agree_with_the_hop_by_hop_list() {
        for name in crate::forward::hop_by_hop() {
            let lower = name.as_str();
            for spelled in [lower.to_string(), lower.to_ascii_uppercase()] {
                assert_ne!(classify(spelled.as_bytes()), Field::Other, "{spelled}");
            }
        }
        assert!(classify(b"Content-Length") == Field::ContentLength);
        assert!(classify(b"TRANSFER-ENCODING") == Field::TransferEncoding);
        assert!(classify(b"Connection") == Field::Connection);
        for other in [
            "content-type",
            "date",
            "x-upgrade",
            "tes",
            "keep-alivex",
            "",
        ] {
            assert!(classify(other.as_bytes()) == Field::Other, "{other}");
        }
    }

    #[test]
    fn a_final_response_head_leaves_out_hop_by_hop_headers_as_it_is_parsed() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
            Transfer-Encoding: chunked\r\nTrailer: x-t\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n\
            X-A: b\r\nDate: now\r\n\r\n";
        let (h, _) = head_of(raw, false);
        let mut names: Vec<_> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["date", "x-a"]);
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        assert!(h.keep_alive);
        // What `Connection` names goes too (and it), but never the framing.
        let (h, _) = head_of(
            b"HTTP/1.1 200 OK\r\nConnection: X-Secret, close, content-length\r\nX-Secret: 1\r\nContent-Length: 0\r\nX-A: b\r\n\r\n",
            false,
        );
        let mut names: Vec<_> = h.headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-length", "x-a"]);
        assert!(!h.keep_alive);
        // A 101 keeps them: its tunnel needs `Connection` and `Upgrade`.
        let (h, _) = head_of(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            false,
        );
        assert_eq!(h.headers["upgrade"], "websocket");
        assert_eq!(h.headers["connection"], "Upgrade");
    }

    fn decode_all(
        stream: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), &'static str> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        for part in stream.chunks(split) {
            buf.extend_from_slice(part);
            loop {
                match decode_chunked(&mut state, &mut buf)? {
                    Decoded::Data(d) => data.extend_from_slice(&d),
                    Decoded::Trailers(t) => {
                        trailers = Some(t);
                        return Ok((data, trailers, buf.len()));
                    }
                    Decoded::End => return Ok((data, trailers, buf.len())),
                    Decoded::More => break,
                }
            }
        }
        Err("unfinished")
    }

    #[test]
    fn chunked_bodies_decode_across_reads_with_trailers() {
        let body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Sum: 12\r\nX-B: c\r\n\r\nNEXT";
        for split in [1, 2, 5, 1000] {
            let (data, trailers, left) = decode_all(body, split).unwrap();
            assert_eq!(data, b"hello, world", "split {split}");
            let t = trailers.expect("trailers");
            assert_eq!(
                (t["x-sum"].as_bytes(), t["x-b"].as_bytes()),
                (&b"12"[..], &b"c"[..])
            );
            if split == 1000 {
                assert_eq!(left, 4, "bytes after the body stay");
            }
        }
        let (data, t, left) = decode_all(b"3\nabc\n0\n\n", 1).unwrap();
        assert_eq!((data, t.is_none(), left), (b"abc".to_vec(), true, 0));
        for bad in [
            &b"ZZZ\r\n"[..],
            b"-1\r\n",
            b"1234567890abcdef0\r\n",
            b"3\r\nabcX",
        ] {
            assert!(decode_all(bad, 1000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_heads_carry_this_hops_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.test"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let head = |method: &Method, body: &ReqBody, headers: &HeaderMap| {
            let mut out = Vec::new();
            let req = Outgoing {
                method,
                target: "/p?q=1",
                headers,
                added: &crate::forward::Added::default(),
            };
            write_request_head(&mut out, &req, body);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            head(
                &Method::PUT,
                &ReqBody::Full(Bytes::from_static(b"abc")),
                &headers
            ),
            "PUT /p?q=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 3\r\n\r\n"
        );
        // An empty body: a length only where one was sent or the method expects a body.
        assert_eq!(
            head(&Method::GET, &ReqBody::Empty, &HeaderMap::new()),
            "GET /p?q=1 HTTP/1.1\r\n\r\n"
        );
        assert!(head(&Method::POST, &ReqBody::Empty, &HeaderMap::new())
            .contains("content-length: 0\r\n"));
        assert!(head(&Method::GET, &ReqBody::Empty, &headers).contains("content-length: 0\r\n"));
        let mut d = [0u8; 20];
        assert_eq!(decimal(&mut d, 0), b"0");
        assert_eq!(decimal(&mut d, u64::MAX), u64::MAX.to_string().as_bytes());
    }

    /// A raw upstream: answers each request (read up to its blank line) with the next
    /// canned response; closes once `close` is sent or dropped.
    async fn upstream(
        answers: Vec<&'static [u8]>,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Vec<String>>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = Vec::new();
            for answer in answers {
                loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        buf.drain(..end + 4);
                        break;
                    }
                    let mut chunk = [0u8; 4096];
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the proxy closed early");
                    buf.extend_from_slice(&chunk[..n]);
                }
                s.write_all(answer).await.unwrap();
            }
            let _ = closed.await;
            seen
        });
        (addr, task, close)
    }

    fn get<'a>(method: &'a Method, headers: &'a HeaderMap) -> Outgoing<'a> {
        Outgoing {
            method,
            target: "/",
            headers,
            added: Box::leak(Box::default()),
        }
    }

    async fn fetch(
        addr: SocketAddr,
        method: &Method,
    ) -> Result<(StatusCode, Vec<u8>, Option<HeaderMap>), Failure> {
        let mut conn = match checkout(addr) {
            Some(c) => c,
            None => connect(addr, Duration::from_secs(5)).await.unwrap(),
        };
        let headers = HeaderMap::new();
        let head = exchange(
            &mut conn,
            &get(method, &headers),
            &mut ReqBody::Empty,
            TIMEOUTS,
        )
        .await?;
        let status = head.status;
        let collected = ResponseBody::new(conn, &head, TIMEOUTS.body_idle)
            .collect()
            .await
            .unwrap();
        let trailers = collected.trailers().cloned();
        Ok((status, collected.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn kept_connections_are_reused_only_after_a_whole_clean_response() {
        let (addr, task, close) = upstream(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nblue",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
        ])
        .await;
        // A 100 Continue is skipped; the connection goes back to the pool.
        let (status, body, _) = fetch(addr, &Method::GET).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
        assert_eq!(pooled(addr), 1);
        let (_, body, trailers) = fetch(addr, &Method::GET).await.unwrap();
        assert_eq!(
            (&body[..], trailers.unwrap()["x-t"].as_bytes()),
            (&b"ab"[..], &b"1"[..])
        );
        assert_eq!(pooled(addr), 1, "the same connection, back again");
        // HEAD: a length but no body; 204: no body.
        let (_, body, _) = fetch(addr, &Method::HEAD).await.unwrap();
        assert!(body.is_empty());
        let (status, body, _) = fetch(addr, &Method::GET).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        assert_eq!(pooled(addr), 1);
        // Close-delimited: read to the end, never pooled.
        drop(close);
        let (_, body, _) = fetch(addr, &Method::GET).await.unwrap();
        assert_eq!(&body[..], b"until the end");
        assert_eq!(pooled(addr), 0);
        let seen = task.await.unwrap();
        assert_eq!(seen.len(), 5);
        assert!(seen[2].starts_with("HEAD / HTTP/1.1"), "{seen:?}");
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_not_used_or_is_safe_to_retry() {
        let (addr, task, close) =
            upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]).await;
        fetch(addr, &Method::GET).await.unwrap();
        assert_eq!(pooled(addr), 1);
        drop(close);
        task.await.unwrap(); // the upstream closed its end
                             // Dropped at checkout once the close was reported; until then the request
                             // fails before any response byte, and a bodiless GET on a kept connection is
                             // safe to send again.
        if let Some(mut conn) = checkout(addr) {
            let headers = HeaderMap::new();
            let req = get(&Method::GET, &headers);
            match exchange(&mut conn, &req, &mut ReqBody::Empty, TIMEOUTS).await {
                Err(Failure::Upstream { retry_safe, .. }) => assert!(retry_safe),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pooled(addr), 0);
        // A POST with a body already sent is not safe to send again.
        let (addr, task, close) =
            upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        fetch(addr, &Method::GET).await.unwrap();
        let mut conn = checkout(addr).expect("pooled");
        drop(close);
        task.await.unwrap();
        let headers = HeaderMap::new();
        let mut body = ReqBody::Full(Bytes::from_static(b"x"));
        match exchange(
            &mut conn,
            &get(&Method::POST, &headers),
            &mut body,
            TIMEOUTS,
        )
        .await
        {
            Err(Failure::Upstream { retry_safe, .. }) => assert!(!retry_safe),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn an_upstream_that_stops_mid_body_is_an_error_and_not_pooled() {
        let (addr, task, close) =
            upstream(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"]).await;
        drop(close);
        let mut conn = connect(addr, Duration::from_secs(5)).await.unwrap();
        let headers = HeaderMap::new();
        let head = exchange(
            &mut conn,
            &get(&Method::GET, &headers),
            &mut ReqBody::Empty,
            TIMEOUTS,
        )
        .await
        .unwrap();
        task.await.unwrap();
        let Err(err) = ResponseBody::new(conn, &head, TIMEOUTS.body_idle)
            .collect()
            .await
        else {
            panic!("a truncated body must fail");
        };
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(pooled(addr), 0);
    }

    #[tokio::test]
    async fn the_response_timeout_is_answered_as_a_timeout() {
        let short = Timeouts {
            response: Duration::from_millis(200),
            ..TIMEOUTS
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conn = connect(addr, Duration::from_secs(5)).await.unwrap();
        let (_silent, _) = listener.accept().await.unwrap();
        let headers = HeaderMap::new();
        let got = exchange(
            &mut conn,
            &get(&Method::GET, &headers),
            &mut ReqBody::Empty,
            short,
        )
        .await;
        assert!(matches!(got, Err(Failure::Timeout)), "{got:?}");
    }
}
