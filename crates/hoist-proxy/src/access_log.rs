//! The access log: one JSON object per line per request (time, route, release, method,
//! path, status, duration_ms, upstream, request_id, bytes). It is data, not a tracing
//! log line; a failed write is reported through tracing once and never fails a request.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ProxyError;

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    File(std::path::PathBuf),
}

/// What one request leaves in the log.
#[derive(Debug)]
pub(crate) struct Entry {
    pub route: String,
    pub release: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub upstream: Option<SocketAddr>,
    pub request_id: String,
    pub bytes: u64,
}

#[derive(serde::Serialize)]
struct Line<'a> {
    time: String,
    route: &'a str,
    release: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    upstream: Option<SocketAddr>,
    request_id: &'a str,
    bytes: u64,
}

pub(crate) struct AccessLog {
    out: Mutex<Box<dyn Write + Send>>,
    failed: AtomicBool,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> Result<AccessLog, ProxyError> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(open_append(path)?),
        };
        Ok(AccessLog {
            out: Mutex::new(out),
            failed: AtomicBool::new(false),
        })
    }

    pub fn write(&self, e: &Entry) {
        let line = Line {
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            route: &e.route,
            release: &e.release,
            method: &e.method,
            path: &e.path,
            status: e.status,
            duration_ms: (e.started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            upstream: e.upstream,
            request_id: &e.request_id,
            bytes: e.bytes,
        };
        let mut buf = match serde_json::to_vec(&line) {
            Ok(b) => b,
            Err(_) => return,
        };
        buf.push(b'\n');
        // One write per line on an O_APPEND file keeps lines whole.
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = out.write_all(&buf).and_then(|_| out.flush()) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "cannot write the access log");
            }
        }
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, ProxyError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| ProxyError::AccessLog {
            path: path.to_path_buf(),
            error,
        })
}
