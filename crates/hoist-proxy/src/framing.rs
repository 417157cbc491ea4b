//! A watch on the framing of the requests a client sends, beside hyper's own parser.
//!
//! hyper accepts a request that carries both `Content-Length` and `Transfer-Encoding`
//! (it drops the length, reads the body chunked and closes the connection after), and it
//! removes the length before the handler sees the head, so the handler cannot tell. RFC
//! 9112 §6.1 calls such a message a smuggling attempt: the proxy answers it 400 and
//! never forwards it. This scanner follows the message boundaries in the bytes hyper
//! reads (heads, Content-Length bodies, chunked bodies) and records which head, counted
//! from 1 on the connection, had both; the handler counts requests the same way. (On a
//! plain connection it watches only from the first request hyper reads: the proxy's own
//! loop before that takes no request with a body, `plain`.)
//! Where the bytes stop making sense the scanner turns itself off: hyper refuses such a
//! stream anyway. An upgrade (WebSocket) also turns it off: the tunnel is not HTTP.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the scanner and the request handler share for one connection.
#[derive(Debug, Default)]
pub(crate) struct ConnFraming {
    /// The number (from 1) of the last head that carried both framings (0: none).
    both: AtomicU64,
    /// Requests the handler has started on this connection.
    requests: AtomicU64,
    /// Responses of those whose body hyper is done with (a tunnel's 101 never counts:
    /// its connection is no longer HTTP). Equal to `requests` while the connection waits
    /// for the next head, which is when the plain socket times it (`timed_io`).
    answered: AtomicU64,
}

impl ConnFraming {
    /// Called once per request by the handler, in order: true when this request's head
    /// carried both `Content-Length` and `Transfer-Encoding`.
    pub fn next_request_has_both(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        self.both.load(Ordering::Relaxed) == n
    }

    /// Requests the handler has started so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Called when a response's body is done with (or dropped).
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    /// `Some(responses so far)` while no request is in flight: the connection waits
    /// for (or reads) the next head.
    pub fn idle(&self) -> Option<u64> {
        let answered = self.answered.load(Ordering::Relaxed);
        (self.requests.load(Ordering::Relaxed) == answered).then_some(answered)
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Head,
    Skip(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailer,
    Off,
}

/// The longest part of a line the scanner keeps (a header name and a length fit).
const LINE_CAP: usize = 64;

pub(crate) struct Scanner {
    state: State,
    line: [u8; LINE_CAP],
    line_len: usize,
    heads: u64,
    started: bool,
    content_length: Option<u64>,
    chunked: bool,
    upgrade: bool,
    shared: std::sync::Arc<ConnFraming>,
}

impl Scanner {
    pub fn new(shared: std::sync::Arc<ConnFraming>) -> Scanner {
        Scanner {
            state: State::Head,
            line: [0; LINE_CAP],
            line_len: 0,
            heads: 0,
            started: false,
            content_length: None,
            chunked: false,
            upgrade: false,
            shared,
        }
    }

    /// Follows `data`, the next bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Skip(n) | State::ChunkData(n) => {
                    let k = (n.min(data.len() as u64)) as usize;
                    data = &data[k..];
                    let left = n - k as u64;
                    self.state = match (self.state, left) {
                        (State::Skip(_), 0) => State::Head,
                        (State::Skip(_), l) => State::Skip(l),
                        (_, 0) => State::ChunkDataEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                _ => {
                    let newline = data.iter().position(|b| *b == b'\n');
                    if let (Some(i), 0) = (newline, self.line_len) {
                        // A whole line in this read (the usual case): read in place,
                        // cut as a copied one is.
                        self.line_done(&data[..i.min(LINE_CAP)]);
                        data = &data[i + 1..];
                        continue;
                    }
                    let (part, rest, ended) = match newline {
                        Some(i) => (&data[..i], &data[i + 1..], true),
                        None => (data, &data[data.len()..], false),
                    };
                    let room = LINE_CAP - self.line_len;
                    let take = part.len().min(room);
                    self.line[self.line_len..self.line_len + take].copy_from_slice(&part[..take]);
                    self.line_len += take;
                    data = rest;
                    if ended {
                        let line = self.line;
                        self.line_done(&line[..self.line_len]);
                        self.line_len = 0;
                    }
                }
            }
        }
    }

    /// `line` is the start of a line (up to [`LINE_CAP`] bytes kept), without its LF.
    fn line_done(&mut self, mut line: &[u8]) {
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        match self.state {
            State::Head => {
                if line.is_empty() {
                    if !self.started {
                        return; // empty lines before a request line are allowed
                    }
                    self.heads += 1;
                    if self.chunked && self.content_length.is_some() {
                        self.shared.both.store(self.heads, Ordering::Relaxed);
                    }
                    self.state = if self.upgrade {
                        State::Off
                    } else if self.chunked {
                        State::ChunkSize
                    } else {
                        match self.content_length {
                            Some(n) if n > 0 => State::Skip(n),
                            _ => State::Head,
                        }
                    };
                    self.started = false;
                    self.content_length = None;
                    self.chunked = false;
                    return;
                }
                if !self.started {
                    self.started = true; // the request line
                    return;
                }
                if let Some(v) = strip_name(line, b"content-length:") {
                    match std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                    {
                        Some(n) => self.content_length = Some(n),
                        None => self.state = State::Off,
                    }
                } else if strip_name(line, b"transfer-encoding:").is_some() {
                    self.chunked = true;
                } else if strip_name(line, b"upgrade:").is_some() {
                    self.upgrade = true;
                }
            }
            State::ChunkSize => {
                let size = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                self.state = match size {
                    Some(0) => State::Trailer,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                };
            }
            State::ChunkDataEnd => self.state = State::ChunkSize,
            State::Trailer if line.is_empty() => self.state = State::Head,
            _ => {}
        }
    }
}

fn strip_name<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    (line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
        .then(|| &line[name.len()..])
}

/// A decrypted stream (HTTP/1.1 over TLS) watched by a [`Scanner`], as `timed_io` watches
/// a plain socket.
pub(crate) struct Scanned<S> {
    inner: S,
    scanner: Scanner,
}

impl<S> Scanned<S> {
    pub fn new(inner: S, shared: std::sync::Arc<ConnFraming>) -> Scanned<S> {
        Scanned {
            inner,
            scanner: Scanner::new(shared),
        }
    }

    /// Watches a stream from the start of a head, after `heads` requests were read off
    /// the connection by other means (the plain loop, `plain`).
    pub fn after(inner: S, shared: std::sync::Arc<ConnFraming>, heads: u64) -> Scanned<S> {
        let mut scanner = Scanner::new(shared);
        scanner.heads = heads;
        Scanned { inner, scanner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Scanned<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            this.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Scanned<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn heads_with_both(stream: &[u8], split: usize) -> (u64, u64) {
        let shared = Arc::new(ConnFraming::default());
        let mut s = Scanner::new(shared.clone());
        for part in stream.chunks(split) {
            s.feed(part);
        }
        (s.heads, shared.both.load(Ordering::Relaxed))
    }

    #[test]
    fn message_boundaries_are_followed_across_reads() {
        let stream = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n\
GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /last HTTP/1.1\r\nHost: x\r\n\r\n";
        for split in [1, 3, 7, 1000] {
            assert_eq!(heads_with_both(stream, split), (4, 3), "split {split}");
        }
    }
}
