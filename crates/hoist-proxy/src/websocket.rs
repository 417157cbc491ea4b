//! WebSocket tunnels: after the upstream answers 101, bytes flow both ways untouched
//! until one side closes, the upstream's drain timeout passes, or the proxy shuts down.
//! Then the client gets a close frame 1001 ("going away") written between two frames of
//! the upstream's stream (the server→client direction is parsed only for frame
//! boundaries, never changed), and both connections are closed.
//!
//! It must not inspect or buffer payloads, and it counts each tunnel on its upstream so
//! that draining waits for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::table::{InFlight, Upstream};
use crate::worker::Worker;

/// A close frame with status 1001 and reason "going away", unmasked (server to client).
const CLOSE_1001_TO_CLIENT: [u8; 14] = [
    0x88, 0x0c, 0x03, 0xe9, b'g', b'o', b'i', b'n', b'g', b' ', b'a', b'w', b'a', b'y',
];
/// How long a close waits for the upstream to finish a frame it is in the middle of.
const FRAME_GRACE: Duration = Duration::from_secs(2);

/// Counts an open tunnel on its upstream; released on drop.
struct TunnelCount(Arc<Upstream>);

impl Drop for TunnelCount {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Turns a claimed request into a tunnel and runs it on this worker.
pub(crate) fn spawn_tunnel(
    worker: &Arc<Worker>,
    claim: InFlight,
    client: OnUpgrade,
    upstream: crate::upstream::Upgraded,
) {
    let up = claim.0.clone();
    // Counted as a tunnel before the request claim goes, so a drain never sees zero
    // in between.
    up.tunnels.fetch_add(1, Ordering::SeqCst);
    drop(claim);
    let count = TunnelCount(up.clone());
    let mut upstream_close = up.close_tunnels.subscribe();
    let mut shutdown_close = worker.shared.close_all_tunnels.subscribe();
    let token = worker.token.clone();
    tokio::spawn(async move {
        let _count = count;
        let _token = token;
        let client = match client.await {
            Ok(c) => c,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        let close = async {
            tokio::select! {
                _ = upstream_close.changed() => {}
                _ = shutdown_close.changed() => {}
            }
        };
        run(TokioIo::new(client), upstream, close).await;
    });
}

/// Copies both ways until either side ends or `close` fires.
async fn run<C, U>(client: C, upstream: U, close: impl std::future::Future<Output = ()>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let to_upstream = async {
        let _ = tokio::io::copy(&mut client_rd, &mut up_wr).await;
        let _ = up_wr.shutdown().await;
        up_wr
    };
    let mut frames = FrameTracker::default();
    let mut closing: Option<tokio::time::Instant> = None;
    let mut buf = vec![0u8; 16 * 1024];
    tokio::pin!(to_upstream);
    tokio::pin!(close);
    let mut close_fired = false;
    loop {
        if closing.is_some() && frames.at_boundary() {
            let _ = client_wr.write_all(&CLOSE_1001_TO_CLIENT).await;
            let _ = client_wr.shutdown().await;
            break;
        }
        let deadline =
            closing.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400));
        tokio::select! {
            n = up_rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    let _ = client_wr.shutdown().await;
                    // The upstream ended: let the client side finish on its own.
                    let _ = tokio::time::timeout(FRAME_GRACE, &mut to_upstream).await;
                    return;
                }
                Ok(n) => {
                    frames.feed(&buf[..n]);
                    if client_wr.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            mut wr = &mut to_upstream => {
                // The client closed its side; the upstream may still answer its close.
                let _ = tokio::time::timeout(FRAME_GRACE, tokio::io::copy(&mut up_rd, &mut client_wr)).await;
                let _ = wr.shutdown().await;
                return;
            }
            _ = &mut close, if !close_fired => {
                close_fired = true;
                closing = Some(tokio::time::Instant::now() + FRAME_GRACE);
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_some() => {
                // The upstream never finished its frame: close without a close frame.
                let _ = client_wr.shutdown().await;
                break;
            }
        }
    }
    // A client answers the close with its own, which the copy forwards to the upstream
    // (so it sees an orderly close); then both sides are let go. The wait is short: a
    // drain must not hang on a client that never answers.
    let _ = tokio::time::timeout(Duration::from_millis(250), &mut to_upstream).await;
}

/// Follows WebSocket framing in one direction, only to know where frames end.
#[derive(Debug, Default)]
struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    remaining: u64,
}

impl FrameTracker {
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let ext = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (data.len() as u64).min(self.remaining);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header[self.header_len] = data[0];
            self.header_len += 1;
            data = &data[1..];
            if self.header_len >= 2 && self.header_len == self.header_needed() {
                let len = match self.header[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
                    127 => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
                    n => u64::from(n),
                };
                self.remaining = len;
                self.header_len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_found_across_chunks() {
        let mut t = FrameTracker::default();
        assert!(t.at_boundary());
        // A 5-byte text frame, fed one byte at a time.
        let frame = [0x81, 0x05, b'h', b'e', b'l', b'l', b'o'];
        for (i, b) in frame.iter().enumerate() {
            t.feed(&[*b]);
            assert_eq!(t.at_boundary(), i == frame.len() - 1, "after byte {i}");
        }
        // A 300-byte frame (16-bit length) then an empty ping, in one chunk but one byte short.
        let mut big = vec![0x82, 126, 0x01, 0x2c];
        big.extend(std::iter::repeat_n(7u8, 300));
        big.extend([0x89, 0x00]);
        t.feed(&big[..big.len() - 1]);
        assert!(!t.at_boundary());
        t.feed(&big[big.len() - 1..]);
        assert!(t.at_boundary());
        // A masked frame (client style) with a 64-bit length.
        let mut masked = vec![0x82, 0x80 | 127];
        masked.extend(3u64.to_be_bytes());
        masked.extend([1, 2, 3, 4, 9, 9, 9]);
        t.feed(&masked);
        assert!(t.at_boundary());
    }
}
