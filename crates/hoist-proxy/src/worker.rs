//! Worker threads: each runs one current-thread tokio runtime with its own duplicate of
//! the one listening socket (no SO_REUSEPORT: nobody else may join the port), caps open
//! connections, accepts connections and serves
//! them with hyper's HTTP/1 server. A calibration on this machine found this ~15 % faster
//! than one work-stealing runtime: a connection, its upstream connections and its pool
//! stay on one core, with no cross-thread wake-ups.
//!
//! Workers know nothing of the control socket: they read the published table and stop
//! when told, closing idle connections at once and waiting for busy ones.

use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::sync::watch;

use crate::Shared;

/// How long a stopping worker keeps idle keep-alive connections open, answering what
/// arrives with `Connection: close`, before it closes them.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_millis(1000);

/// Serves an HTTP/1 connection until it ends or `graceful` turns true. Then requests that
/// arrive in the next moment are answered with `Connection: close` (see `forward`), so
/// keep-alive clients move to a successor without a failed request; whatever is still
/// idle after that is closed. Plain and TLS workers both end their connections this way.
/// `closing` is set before `graceful` turns true (see [`Gated`]).
pub(crate) async fn serve_http1<I, S, B>(
    conn: http1::UpgradeableConnection<I, S>,
    graceful: &mut watch::Receiver<bool>,
    closing: &AtomicBool,
    peer: std::net::SocketAddr,
    ended: &str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let stop = std::pin::pin!(crate::until_true(graceful));
    tokio::select! {
        biased;
        res = conn.as_mut() => {
            if let Err(error) = res {
                tracing::debug!(%peer, %error, "{ended}");
            }
        }
        _ = Gated { inner: stop, armed: false, flag: closing } => {
            let linger = tokio::time::sleep(CLOSE_LINGER);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = linger => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Polls `inner` on its first poll, and after that only once `flag` is true. The
/// connection's task wakes three times per request, and polling its stop signal each
/// time (a watch receiver's wait) was a visible share of the request path; the signal
/// registered the task's waker on the first poll, and whoever sends it sets `flag` first.
pub(crate) struct Gated<'a, F> {
    inner: F,
    armed: bool,
    flag: &'a AtomicBool,
}

impl<'a, F> Gated<'a, F> {
    pub(crate) fn new(inner: F, flag: &'a AtomicBool) -> Gated<'a, F> {
        Gated {
            inner,
            armed: false,
            flag,
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for Gated<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        if this.armed && !this.flag.load(Ordering::Acquire) {
            return std::task::Poll::Pending;
        }
        this.armed = true;
        std::pin::Pin::new(&mut this.inner).poll(cx)
    }
}

/// How often a worker closes pooled upstream connections that their upstream closed.
const POOL_SWEEP: Duration = Duration::from_secs(5);

/// The answer to a connection over the cap.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 26\r\nretry-after: 1\r\nconnection: close\r\n\r\ntoo many open connections\n";

/// One open client connection, counted until it closes.
pub(crate) struct ConnSlot(pub(crate) Arc<Shared>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0
            .open_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What one worker thread holds; cloned per request, so only this thread touches its
/// reference count.
#[derive(Debug)]
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    /// Held by every connection and tunnel of this worker: the worker has finished when
    /// it is the last holder.
    pub token: Arc<()>,
}

/// Starts a worker thread serving `listener` until `stop` turns true; returns a handle
/// that finishes when its connections are done (or the grace period ran out).
pub(crate) fn spawn(
    index: usize,
    shared: Arc<Shared>,
    listener: StdListener,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name(format!("hoist-proxy-{index}"))
        .spawn(move || {
            crate::stats::set_shard(index);
            runtime.block_on(serve(shared, listener, stop));
            // Dropping the runtime cancels what outlived the grace period.
            drop(runtime);
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

async fn serve(shared: Arc<Shared>, listener: StdListener, mut stop: watch::Receiver<bool>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "worker cannot use its listener");
            return;
        }
    };
    let limits = &shared.limits;
    // For the connections the plain loop hands to hyper (`plain`).
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // The socket times the wait for each head (`timed_io`): hyper's own timer was
        // a timer made, registered and dropped per request.
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192) + 1024);
    let builder = Arc::new(builder);
    let worker = Arc::new(Worker {
        shared: shared.clone(),
        token: Arc::new(()),
    });
    let (graceful_tx, graceful_rx) = watch::channel(false);
    // Idle upstream connections their upstream closed are let go now and then, so a
    // quiet proxy keeps no dead sockets (one timer per worker, not per request).
    let sweeper = tokio::spawn(async {
        let mut every = tokio::time::interval(POOL_SWEEP);
        loop {
            every.tick().await;
            crate::upstream::sweep_pool();
        }
    });
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = crate::until_true(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = shared.open_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let slot = ConnSlot(shared.clone());
                    if open >= shared.max_connections() {
                        // Over the cap: a short answer instead of a queue that grows until
                        // the process runs out of files.
                        shared.over_capacity.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::spawn(async move {
                            let _slot = slot;
                            let mut stream = stream;
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                tokio::io::AsyncWriteExt::write_all(&mut stream, OVER_CAPACITY),
                            )
                            .await;
                        });
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let framing = std::sync::Arc::new(crate::framing::ConnFraming::default());
                    let client = crate::forward::Peer::new(peer, framing.clone());
                    let stream = crate::timed_io::TimedStream::new(stream, shared.limits.write_timeout, Some(framing))
                        .with_head_timeout(shared.limits.header_read_timeout);
                    let graceful = graceful_rx.clone();
                    let token = worker.token.clone();
                    let serve = crate::plain::serve(worker.clone(), stream, client, builder.clone(), graceful);
                    tokio::spawn(async move {
                        let _token = token;
                        let _slot = slot;
                        serve.await;
                    });
                }
                Err(error) => {
                    // Out of file descriptors (or similar): back off instead of spinning,
                    // and accept again once connections have closed.
                    let now = tokio::time::Instant::now();
                    if last_warning.is_none_or(|t| now - t >= Duration::from_secs(10)) {
                        tracing::warn!(%error, "accept failed; backing off (said at most every 10 s)");
                        last_warning = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // Stop accepting: the socket stays open while another process holds it (upgrade).
    drop(listener);
    sweeper.abort();
    shared
        .closing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = graceful_tx.send(true);
    let deadline = tokio::time::Instant::now() + shared.shutdown_grace;
    let finished = |w: &Arc<Worker>| Arc::strong_count(&w.token) == 1;
    while !finished(&worker) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !finished(&worker) {
        // What is left are tunnels (or stuck requests): say goodbye properly.
        shared.close_all_tunnels.send_modify(|n| *n += 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !finished(&worker) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
