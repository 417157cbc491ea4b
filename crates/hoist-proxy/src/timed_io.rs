//! The client socket with a write timeout: a client that stops reading (or reads a byte
//! a second) cannot hold a connection, an upstream connection and a drain open for
//! ever. On a plain connection reads also time the wait for each request head
//! (slowloris, idle keep-alive), but only while no request is in flight: a read that waits while an upstream answers slowly is not
//! timed (the body has its own idle timeout in `upstream`). hyper's own head timer did
//! this with a timer made, registered and dropped per request; this one is made once
//! per connection and moved only when it goes off early.

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
    /// What the connection's handler counts (requests and answers): `None` under TLS,
    /// where hyper times heads.
    framing: Option<std::sync::Arc<crate::framing::ConnFraming>>,
    head: Option<HeadTimer>,
}

/// The wait for a request head, timed from the first read that found nothing while no
/// request was in flight.
struct HeadTimer {
    timeout: Duration,
    /// The wait in progress: the responses sent before it (naming it) and its start.
    wait: Option<(u64, Instant)>,
    /// Made on the first wait; its deadline may be an earlier wait's (moved on when it
    /// goes off), never a later one.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HeadTimer {
    /// A read found nothing: fails once the connection has waited `timeout` for a head.
    fn waited(
        &mut self,
        framing: &crate::framing::ConnFraming,
        cx: &mut Context<'_>,
    ) -> Poll<io::Error> {
        let Some(answered) = framing.idle() else {
            // A request is in flight: the wait is the upstream's, not the client's.
            return Poll::Pending;
        };
        let since = match self.wait {
            Some((n, since)) if n == answered => since,
            _ => self.start(answered),
        };
        match self.poll_deadline(since + self.timeout, cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no request head within {:?}", self.timeout),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A flush: when it is the answer's last, the wait for the next head starts now.
    /// hyper may not read again until the client sends something (the last read was
    /// while the request was in flight, untimed), so the timer is set (and polled,
    /// for this task's waker) here.
    fn flushed(&mut self, framing: &crate::framing::ConnFraming, cx: &mut Context<'_>) {
        let Some(answered) = framing.idle() else {
            return;
        };
        if matches!(self.wait, Some((n, _)) if n == answered) {
            return;
        }
        let since = self.start(answered);
        // Ready only past a deadline: not this new one; the read reports it.
        let _ = self.poll_deadline(since + self.timeout, cx);
    }

    fn start(&mut self, answered: u64) -> Instant {
        let now = Instant::now();
        self.wait = Some((answered, now));
        now
    }

    /// Ready once `deadline` has passed.
    fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // An earlier wait's deadline: on to this one's.
            sleep.as_mut().reset(deadline);
        }
    }
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
            framing,
            head: None,
        }
    }

    /// Times the wait for each request head (a plain connection only: its handler
    /// counts requests and responses in `framing`).
    pub fn with_head_timeout(mut self, timeout: Duration) -> TimedStream {
        if self.framing.is_some() {
            self.head = Some(HeadTimer {
                timeout,
                wait: None,
                sleep: None,
            });
        }
        self
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
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Pending, Some(framing), Some(head)) = (&polled, &this.framing, &mut this.head)
        {
            if let Poll::Ready(e) = head.waited(framing, cx) {
                return Poll::Ready(Err(e));
            }
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
        let this = self.get_mut();
        if let (Some(framing), Some(head)) = (&this.framing, &mut this.head) {
            head.flushed(framing, cx);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::ConnFraming;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A timed server side and its client, on a real socket.
    async fn pair(timeout: Duration) -> (TimedStream, TcpStream, Arc<ConnFraming>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let framing = Arc::new(ConnFraming::default());
        let stream = TimedStream::new(server, Duration::from_secs(60), Some(framing.clone()))
            .with_head_timeout(timeout);
        (stream, client, framing)
    }

    fn timed_out(r: io::Result<usize>) -> bool {
        matches!(r, Err(e) if e.kind() == io::ErrorKind::TimedOut)
    }

    #[tokio::test]
    async fn half_a_head_is_cut_at_the_head_timeout() {
        let t = Duration::from_millis(200);
        let (mut s, mut c, _) = pair(t).await;
        let started = Instant::now();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        assert!(timed_out(s.read(&mut buf).await));
        assert!(started.elapsed() >= t, "cut before the head timeout");
    }

    #[tokio::test]
    async fn a_read_while_a_request_is_in_flight_is_not_timed_and_the_next_wait_is() {
        let t = Duration::from_millis(100);
        let (mut s, mut c, framing) = pair(t).await;
        let mut buf = [0u8; 256];
        // The first head comes late but within the timeout (the timer is made then).
        let reading = tokio::spawn(async move {
            let n = s.read(&mut buf).await;
            (s, n)
        });
        tokio::time::sleep(t / 2).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (mut s, n) = reading.await.unwrap();
        assert!(n.unwrap() > 0);
        // The handler takes the request; its upstream is slow: many head timeouts pass
        // while the socket is read (hyper watches for the client leaving) untimed.
        framing.next_request_has_both();
        let waited = tokio::time::timeout(t * 8, s.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "the read ended while in flight: {waited:?}"
        );
        // Answered: the wait for the next head is timed from now (not from the first
        // wait, whose deadline the timer still held).
        framing.answered();
        let started = Instant::now();
        assert!(timed_out(s.read(&mut buf).await));
        assert!(started.elapsed() >= t, "cut before the head timeout");
    }

    #[tokio::test]
    async fn the_answers_last_flush_starts_the_wait_and_its_timer_wakes_the_reader() {
        // hyper's last read before going idle was while the request was in flight; it
        // reads again only when woken: the flush must set the timer that wakes it.
        let t = Duration::from_millis(100);
        let (mut s, mut c, framing) = pair(t).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(s.read(&mut buf).await.unwrap() > 0);
        framing.next_request_has_both();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = {
            struct Flag(Arc<std::sync::atomic::AtomicBool>);
            impl std::task::Wake for Flag {
                fn wake(self: Arc<Self>) {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            std::task::Waker::from(Arc::new(Flag(woken.clone())))
        };
        let mut cx = Context::from_waker(&waker);
        // In flight: a read waits untimed.
        let mut rb = ReadBuf::new(&mut buf);
        assert!(Pin::new(&mut s).poll_read(&mut cx, &mut rb).is_pending());
        framing.answered();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        assert!(Pin::new(&mut s).poll_flush(&mut cx).is_ready());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !woken.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                Instant::now() < deadline,
                "the idle connection was never woken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut s).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("not cut at the head timeout: {other:?}"),
        }
    }
}
