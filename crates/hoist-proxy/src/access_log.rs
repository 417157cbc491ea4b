//! The access log: one JSON object per line per request (time, route, release, method,
//! path, status, duration_ms, upstream, request_id, bytes). It is data, not a tracing
//! log line; a failed write is reported through tracing once and never fails a request.
//!
//! A file log is rotated by size like the instance logs: past [`MAX_BYTES`] it becomes
//! `access.log.1` (older ones shift up to `.KEEP`, the oldest is removed), so months of
//! traffic hold at most `(KEEP + 1) × MAX_BYTES` on disk.

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

/// The size at which the access log file is rotated.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How many rotated access log files are kept.
pub const KEEP: u32 = 5;

pub(crate) struct AccessLog {
    out: Mutex<Out>,
    failed: AtomicBool,
}

struct Out {
    w: Box<dyn Write + Send>,
    /// For a file: where, its size now, and the rotation limits.
    file: Option<(std::path::PathBuf, u64, u64, u32)>,
}

impl Out {
    fn write_line(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some((path, size, max, keep)) = &mut self.file {
            if *size > 0 && *size + buf.len() as u64 > *max {
                rotate(path, *keep)?;
                self.w = Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&*path)?,
                );
                *size = 0;
            }
            *size += buf.len() as u64;
        }
        self.w.write_all(buf)?;
        self.w.flush()
    }
}

/// `path` → `path.1`, `path.1` → `path.2`, …; beyond `keep` removed.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let nth = |n: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        std::path::PathBuf::from(s)
    };
    let gone_ok = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    gone_ok(std::fs::remove_file(nth(keep.max(1))))?;
    for i in (1..keep.max(1)).rev() {
        gone_ok(std::fs::rename(nth(i), nth(i + 1)))?;
    }
    if keep == 0 {
        return gone_ok(std::fs::remove_file(path));
    }
    gone_ok(std::fs::rename(path, nth(1)))
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> Result<AccessLog, ProxyError> {
        Self::open_with(target, MAX_BYTES, KEEP)
    }

    pub(crate) fn open_with(
        target: &AccessLogTarget,
        max_bytes: u64,
        keep: u32,
    ) -> Result<AccessLog, ProxyError> {
        let out = match target {
            AccessLogTarget::Stdout => Out {
                w: Box::new(std::io::stdout()),
                file: None,
            },
            AccessLogTarget::File(path) => {
                let f = open_append(path)?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                Out {
                    w: Box::new(f),
                    file: Some((path.clone(), size, max_bytes.max(1024), keep)),
                }
            }
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
        if let Err(error) = out.write_line(&buf) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Entry {
        Entry {
            route: "demo/web".into(),
            release: "r1".into(),
            method: "GET".into(),
            path: format!("/item/{i}"),
            status: 200,
            started: Instant::now(),
            upstream: None,
            request_id: format!("req-{i}"),
            bytes: 10,
        }
    }

    /// Written past its size many times over: at most `keep` rotated files beside the
    /// live one, each within the limit, and the newest lines are all there in order.
    #[test]
    fn the_file_is_rotated_by_size_and_keeps_at_most_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::open_with(&AccessLogTarget::File(path.clone()), 4096, 3).unwrap();
        for i in 0..2000 {
            log.write(&entry(i));
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["access.log", "access.log.1", "access.log.2", "access.log.3"]
        );
        let mut lines = Vec::new();
        for n in ["access.log.3", "access.log.2", "access.log.1", "access.log"] {
            let text = std::fs::read_to_string(dir.path().join(n)).unwrap();
            assert!(text.len() <= 4096, "{n}: {}", text.len());
            lines.extend(text.lines().map(str::to_string));
        }
        let ids: Vec<usize> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["request_id"].as_str().unwrap()[4..].parse().unwrap()
            })
            .collect();
        assert_eq!(*ids.last().unwrap(), 1999);
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "lines lost or reordered"
        );
    }
}
