//! The plain-HTTP/1 connection loop. Most requests a public site gets are a head with no
//! body: HTTP/1.1, origin-form, no upgrade, no `Expect`. Those are read, forwarded and
//! answered here, without hyper's server, whose per-request machinery (the request
//! handed to a service and back, a body channel, a state machine for keep-alive and
//! dates, the head encoded through a second header map) was what kept the proxy behind
//! nginx (design §6). Any other request (a body, an upgrade, HTTP/1.0, a head too large
//! or malformed, ...) hands the connection, with the bytes read so far, to hyper's
//! server for the rest of its life, so every rule hyper enforces still holds there.
//!
//! The answer is written as hyper writes it: the same framing headers, `Date` when the
//! response has none, `Connection: close` when the connection ends after it.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, Request, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::forward::{Answer, Bodiless, Peer};
use crate::timed_io::TimedStream;
use crate::worker::{Gated, Worker, CLOSE_LINGER};

/// Header lines one parse can hold; a head with more goes to hyper (which answers 431
/// past the configured limit).
const MAX_HEADERS: usize = 128;

/// Room made in the read buffer when it runs low (hyper's first read is this size too).
const READ_CHUNK: usize = 8 * 1024;

/// Bytes of the next (pipelined) request read while one is in flight before the client
/// is left unread until the answer is out.
const MAX_READ_AHEAD: usize = 64 * 1024;

/// A body piece up to this size is copied beside the head (one write); a larger one is
/// written on its own.
const COALESCE: usize = 16 * 1024;

/// Serves one plain client connection.
pub(crate) async fn serve(
    worker: Arc<Worker>,
    mut io: TimedStream,
    peer: Peer,
    builder: Arc<http1::Builder>,
    mut graceful: watch::Receiver<bool>,
) {
    let shared = worker.shared.clone();
    let mut buf = BytesMut::new();
    // `closing` is set before `graceful` turns true: the signal is polled only then.
    // (A receiver of its own: `graceful` goes to hyper with a connection handed off.)
    let mut watching = graceful.clone();
    let signal = pin!(crate::until_true(&mut watching));
    let mut stop = Gated::new(signal, &shared.closing);
    // Once the worker stops: how long an idle connection may still bring a request.
    let mut linger: Option<tokio::time::Instant> = None;
    let mut out = Vec::new();
    loop {
        let (req, close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &shared.limits) {
                    Parsed::Request { req, close } => break (req, close),
                    Parsed::Partial => {}
                    Parsed::Other => {
                        let hand_off = hand_off(&worker, io, buf, peer, &builder, &mut graceful);
                        return Box::pin(hand_off).await;
                    }
                    Parsed::Bad => {
                        // What hyper answers a head it cannot take apart.
                        out.clear();
                        out.extend_from_slice(
                            b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n",
                        );
                        write_date(&mut out);
                        out.extend_from_slice(b"\r\n");
                        let _ = io.write_all(&out).await;
                        let _ = io.shutdown().await;
                        return;
                    }
                }
            }
            make_room(&mut buf);
            let read = match linger {
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
                        Ok(read) => read,
                        Err(_) => return,
                    }
                }
                None => tokio::select! {
                    biased;
                    read = io.read_buf(&mut buf) => read,
                    _ = &mut stop => {
                        // A request that arrives in the next moment is still answered
                        // (with `Connection: close`), as hyper's connections do.
                        linger = Some(tokio::time::Instant::now() + CLOSE_LINGER);
                        continue;
                    }
                },
            };
            match read {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(peer = %peer.addr, %error, "client connection ended");
                    return;
                }
            }
        };
        let head_request = req.method() == Method::HEAD;
        let answer = crate::forward::handle_plain(worker.clone(), peer.clone(), req);
        let resp = {
            let mut answer = pin!(answer);
            loop {
                if buf.len() >= MAX_READ_AHEAD {
                    break answer.await;
                }
                make_room(&mut buf);
                // The client is read while the upstream answers: a hang-up drops the
                // request (its upstream connection is not reused); the bytes of a
                // pipelined request wait in the buffer.
                tokio::select! {
                    biased;
                    resp = answer.as_mut() => break resp,
                    read = io.read_buf(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                }
            }
        };
        let Ok(resp) = resp;
        let (mut parts, body) = resp.into_parts();
        let framing = write_head(&mut out, &mut parts, &body, head_request, close);
        // The map's allocation makes the next head's map (`upstream::recycle_headers`).
        crate::upstream::recycle_headers(std::mem::take(&mut parts.headers));
        let last = framing.last;
        if let Err(error) = write_body(&mut io, &mut out, body, framing).await {
            tracing::debug!(peer = %peer.addr, %error, "client connection ended mid-answer");
            return;
        }
        // After the answer is done with (the body was dropped above): the wait for the
        // next head starts here (`timed_io`).
        if io.flush().await.is_err() {
            return;
        }
        if last {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// Room for the next read, made when the buffer runs low.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 8 {
        buf.reserve(READ_CHUNK);
    }
}

/// The rest of the connection, from a request this loop does not take, is hyper's.
async fn hand_off(
    worker: &Arc<Worker>,
    io: TimedStream,
    read: BytesMut,
    peer: Peer,
    builder: &http1::Builder,
    graceful: &mut watch::Receiver<bool>,
) {
    let addr = peer.addr;
    // From here hyper reads: the framing scanner watches what it reads from the start of
    // this head on (the loop's own requests needed none: it takes no request with a
    // body, and none with `Transfer-Encoding`).
    let framing = peer.framing.clone();
    let heads = framing.requests();
    let w = worker.clone();
    let service = hyper::service::service_fn(move |req| {
        crate::forward::handle_plain(w.clone(), peer.clone(), req)
    });
    let io = Rewind {
        read: read.freeze(),
        inner: io,
    };
    let io = crate::framing::Scanned::after(io, framing, heads);
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    crate::worker::serve_http1(
        conn,
        graceful,
        &worker.shared.closing,
        addr,
        "client connection ended",
    )
    .await;
}

// The request is moved out once per request; boxing it would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request {
        req: Request<Bodiless>,
        /// The client asked for the connection to end after the answer.
        close: bool,
    },
    /// Not a whole head yet.
    Partial,
    /// Not a request this loop takes: hyper's.
    Other,
    /// A head that parsed but whose target or a name could not be kept (hyper answers
    /// these 400 too).
    Bad,
}

/// Takes a request head off the front of `buf` when it is whole and this loop's to serve.
fn parse(buf: &mut BytesMut, limits: &crate::Limits) -> Parsed {
    // Offsets, not slices: the slices borrow `buf`, which is split after the parse (as
    // `upstream::parse_head` does for responses).
    let mut spans = [const { MaybeUninit::<(u32, u32, u32, u32)>::uninit() }; MAX_HEADERS];
    let (len, count, method, target, close) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() <= limits.max_header_bytes => {
                return Parsed::Partial
            }
            // Too large, too many lines, malformed: hyper answers each as it does.
            Ok(httparse::Status::Partial) | Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Parsed::Other;
        };
        if len > limits.max_header_bytes
            || req.headers.len() > limits.max_headers
            || !path.starts_with('/')
            || method == "CONNECT"
        {
            return Parsed::Other;
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let mut close = false;
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            let name = h.name.as_bytes();
            match takes(name, h.value) {
                Take::Yes => {}
                Take::Close => close = true,
                Take::No => return Parsed::Other,
            }
            span.write((
                offset(name),
                name.len() as u32,
                offset(h.value),
                h.value.len() as u32,
            ));
        }
        let method = match Method::from_bytes(method.as_bytes()) {
            Ok(m) => m,
            Err(_) => return Parsed::Other,
        };
        let target = (offset(path.as_bytes()), path.len() as u32);
        (len, req.headers.len(), method, target, close)
    };
    let raw = buf.split_to(len).freeze();
    let Ok(uri) =
        Uri::from_maybe_shared(raw.slice(target.0 as usize..(target.0 + target.1) as usize))
    else {
        return Parsed::Bad;
    };
    let mut headers = crate::upstream::spare_headers();
    headers.reserve(count);
    // SAFETY: the first `count` spans were written above.
    let spans =
        unsafe { std::slice::from_raw_parts(spans.as_ptr().cast::<(u32, u32, u32, u32)>(), count) };
    for &(no, nl, vo, vl) in spans {
        let name_raw = &raw[no as usize..(no + nl) as usize];
        let name = match crate::upstream::common_name(name_raw) {
            Some(n) => n,
            None => match HeaderName::from_bytes(name_raw) {
                Ok(n) => n,
                Err(_) => return Parsed::Bad,
            },
        };
        // SAFETY: httparse accepted the value, and its rule for a field value is
        // `HeaderValue`'s (hyper builds its values the same way).
        let value = unsafe {
            HeaderValue::from_maybe_shared_unchecked(raw.slice(vo as usize..(vo + vl) as usize))
        };
        headers.append(name, value);
    }
    let mut req = Request::new(Bodiless::new());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request { req, close }
}

enum Take {
    Yes,
    /// `Connection: close`.
    Close,
    No,
}

/// Whether a request with this header is this loop's: not with a body (other than an
/// explicit `Content-Length: 0`), an upgrade, `Expect` or `TE` (trailers asked for).
fn takes(name: &[u8], value: &[u8]) -> Take {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if is("te") => Take::No,
        6 if is("expect") => Take::No,
        7 if is("upgrade") => Take::No,
        10 if is("connection") => {
            let mut close = false;
            for t in value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Take::No;
                }
            }
            if close {
                Take::Close
            } else {
                Take::Yes
            }
        }
        14 if is("content-length") && value.trim_ascii() != b"0" => Take::No,
        17 if is("transfer-encoding") => Take::No,
        _ => Take::Yes,
    }
}

/// How an answer's body is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    /// No body (HEAD, 204, 304, or an empty one).
    None,
    Length,
    Chunked,
}

struct Framing {
    encoding: Encoding,
    /// The connection ends after this answer.
    last: bool,
}

/// Writes the status line and headers of `parts` into `out` (emptied first), framed for
/// `body` as hyper frames a response to an HTTP/1.1 request.
fn write_head(
    out: &mut Vec<u8>,
    parts: &mut hyper::http::response::Parts,
    body: &Answer,
    head_request: bool,
    close: bool,
) -> Framing {
    let status = parts.status;
    let code = status.as_u16();
    // RFC 9110 §6.4.1: none of these has a body, whatever its headers say.
    let bodiless_status = status.is_informational() || code == 204 || code == 304;
    let can_body = !head_request && !bodiless_status;
    let length = if body.is_end_stream() {
        Some(0)
    } else {
        body.size_hint().exact()
    };
    out.clear();
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut last = close;
    let mut said_close = false;
    let mut wrote_length = false;
    let mut wrote_date = false;
    for (name, value) in parts.headers.iter() {
        if *name == header::CONTENT_LENGTH {
            // The body's own length is written below; a HEAD answer keeps the length
            // its GET would have.
            if !head_request || bodiless_status || wrote_length {
                continue;
            }
            wrote_length = true;
        } else if *name == header::TRANSFER_ENCODING {
            // Never in an answer (hop-by-hop, left out upstream): the framing is ours.
            continue;
        } else if *name == header::CONNECTION {
            if value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                last = true;
                said_close = true;
            }
        } else if *name == header::DATE {
            wrote_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if last && !said_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let encoding = match length {
        _ if !can_body => {
            // A HEAD answer says the length its GET would have had.
            if let (true, false, false, Some(n @ 1..)) =
                (head_request, bodiless_status, wrote_length, length)
            {
                push_length(out, n);
            }
            Encoding::None
        }
        Some(0) => {
            out.extend_from_slice(b"content-length: 0\r\n");
            Encoding::None
        }
        Some(n) => {
            push_length(out, n);
            Encoding::Length
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Encoding::Chunked
        }
    };
    if !wrote_date {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
    Framing { encoding, last }
}

/// Sends `out` (the head) and the body after it. The body is dropped before this
/// returns, so the answer counts as done (`framing`) before the caller's flush.
async fn write_body(
    io: &mut TimedStream,
    out: &mut Vec<u8>,
    mut body: Answer,
    framing: Framing,
) -> io::Result<()> {
    if framing.encoding == Encoding::None {
        drop(body);
        return io.write_all(out).await;
    }
    let chunked = framing.encoding == Encoding::Chunked;
    loop {
        // What is at hand goes with the head; before a wait, what is buffered goes out.
        let polled = std::future::poll_fn(|cx| Poll::Ready(poll_frame(&mut body, cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| poll_frame(&mut body, cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                // Trailers are sent only to a client that asked for them (`TE`), and
                // such requests are hyper's.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    push_hex(out, data.len());
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() + data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                } else {
                    io.write_all(out).await?;
                    out.clear();
                    io.write_all(&data).await?;
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    drop(body);
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    Ok(())
}

fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(crate::upstream::decimal(&mut [0; 20], n));
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in lowercase hex (a chunk size line's number).
fn push_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

fn poll_frame(body: &mut Answer, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
    Pin::new(body).poll_frame(cx)
}

thread_local! {
    /// The `Date` value of the current second: formatted once a second, not per answer.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Appends `date: <IMF-fixdate>\r\n`.
fn write_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&d.1);
        out.extend_from_slice(b"\r\n");
    });
}

/// The client stream with what was already read from it in front, for hyper.
struct Rewind {
    read: Bytes,
    inner: TimedStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex() {
        for n in [0usize, 1, 15, 16, 255, 4096, 0xdead_beef] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:x}"));
        }
    }

    #[test]
    fn only_bodiless_requests_without_upgrade_expect_or_te_are_taken() {
        assert!(matches!(takes(b"Host", b"x"), Take::Yes));
        assert!(matches!(takes(b"Content-Length", b" 0 "), Take::Yes));
        assert!(matches!(takes(b"connection", b"keep-alive"), Take::Yes));
        assert!(matches!(
            takes(b"Connection", b"keep-alive, Close"),
            Take::Close
        ));
        for (name, value) in [
            (&b"Content-Length"[..], &b"1"[..]),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Expect", b"100-continue"),
            (b"TE", b"trailers"),
        ] {
            assert!(matches!(takes(name, value), Take::No), "{name:?}");
        }
    }
}
