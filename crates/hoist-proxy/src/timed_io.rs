//! The client socket with a write timeout: a client that stops reading (or reads a byte
//! a second) cannot hold a connection, an upstream connection and a drain open for
//! ever. Reads pass through (hyper times the request head itself; the body has its own
//! idle timeout in `upstream`), watched by `framing`'s scanner.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub(crate) struct TimedStream {
    inner: TcpStream,
    timeout: Duration,
    // Made on the first write that has to wait; most never do.
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    /// `None` under TLS: these bytes are ciphertext, scanned after decryption instead
    /// ([`crate::framing::Scanned`]).
    framing: Option<crate::framing::Scanner>,
}

impl TimedStream {
    pub fn new(
        inner: TcpStream,
        timeout: Duration,
        framing: Option<std::sync::Arc<crate::framing::ConnFraming>>,
    ) -> TimedStream {
        TimedStream {
            inner,
            timeout,
            timer: None,
            waiting: false,
            framing: framing.map(crate::framing::Scanner::new),
        }
    }

    /// Called when a write made no progress: fails once the client has not taken a
    /// byte for `timeout`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = Instant::now() + self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            timer.as_mut().reset(deadline);
            self.waiting = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {:?}", self.timeout),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => match self.stalled(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(framing)) = (&polled, &mut this.framing) {
            framing.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(result, cx)
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
