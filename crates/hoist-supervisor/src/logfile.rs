//! The writing side of instance logs, used by the shim: one JSON object per line
//! (`{"t","stream","instance","line"}`), appended to `<service>/<instance>.log`, rotated by
//! size into `.1` … `.N`. A write that fails (disk full) drops the line, counts it, and is
//! retried with the next one: the shim must keep draining the app's pipes whatever happens,
//! so nothing here blocks or gives up. It does not read logs back (see `logs`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// The longest line kept in full; longer ones are cut (and marked) so that one record
/// always fits a file and a runaway line cannot hold the shim's memory.
const MAX_LINE: usize = 16 * 1024;

/// The stream name of lines the shim itself adds (dropped-line notices).
pub const HOIST_STREAM: &str = "hoist";

/// One log line as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the shim read the line, in RFC 3339 with milliseconds.
    #[serde(with = "crate::rfc3339")]
    pub t: DateTime<Utc>,
    /// `stdout`, `stderr`, or `hoist` for the shim's own notices.
    pub stream: String,
    pub instance: String,
    pub line: String,
}

#[derive(Serialize)]
struct Record<'a> {
    t: &'a str,
    stream: &'a str,
    instance: &'a str,
    line: &'a str,
}

/// Appends timestamped lines to one instance's log file, rotating by size.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    instance: String,
    max_bytes: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    dropped: u64,
    /// Drops not yet announced in the log itself.
    unannounced: u64,
    last_error: Option<String>,
    /// Whether the last write failed: failures are reported once, not once per line.
    failing: bool,
    /// The drop counter file, kept open (see [`LogWriter::with_drop_counter`]).
    counter: Option<File>,
    counted: u64,
}

impl LogWriter {
    /// A writer for `path`; the file and its directory are created on the first write.
    pub fn new(path: PathBuf, instance: &str, max_bytes: u64, keep: u32) -> LogWriter {
        LogWriter {
            path,
            instance: instance.to_string(),
            max_bytes: max_bytes.max(1024),
            keep,
            file: None,
            size: 0,
            dropped: 0,
            unannounced: 0,
            last_error: None,
            failing: false,
            counter: None,
            counted: 0,
        }
    }

    /// Also keeps the number of dropped lines in `path`, for the agent to read. The file
    /// is written whole now (while there is space), then only rewritten in place with a
    /// number of the same width, which needs no new space on a full disk.
    pub fn with_drop_counter(mut self, path: &Path) -> LogWriter {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| {
                f.write_all(&counter_bytes(0))?;
                Ok(f)
            });
        match file {
            Ok(f) => self.counter = Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot create the drop counter")
            }
        }
        self
    }

    /// Counts lines lost without a write attempt (the writer itself failed).
    pub fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
        self.unannounced += n;
        self.publish_drops();
    }

    fn publish_drops(&mut self) {
        if self.counted == self.dropped {
            return;
        }
        if let Some(f) = &self.counter {
            use std::os::unix::fs::FileExt;
            if f.write_all_at(&counter_bytes(self.dropped), 0).is_ok() {
                self.counted = self.dropped;
            }
        }
    }

    /// Lines dropped so far because they could not be written.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes `lines` (without their newlines) read from `stream` at `now`.
    pub fn write_lines(&mut self, stream: &str, lines: &[&[u8]], now: DateTime<Utc>) {
        let t = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        if self.unannounced > 0 {
            let notice = format!(
                "dropped {} log lines: {}",
                self.unannounced,
                self.last_error.as_deref().unwrap_or("write failed")
            );
            let rec = self.format(&t, HOIST_STREAM, notice.as_bytes());
            if self.append(&rec) {
                self.unannounced = 0;
            }
        }
        for line in lines {
            let rec = self.format(&t, stream, line);
            if !self.append(&rec) {
                self.dropped += 1;
                self.unannounced += 1;
            }
        }
        self.publish_drops();
    }

    fn format(&self, t: &str, stream: &str, line: &[u8]) -> Vec<u8> {
        let cap = MAX_LINE.min((self.max_bytes / 4) as usize);
        let text = if line.len() > cap {
            format!(
                "{}…[cut {} bytes]",
                String::from_utf8_lossy(&line[..cap]),
                line.len() - cap
            )
        } else {
            String::from_utf8_lossy(line).into_owned()
        };
        let rec = Record {
            t,
            stream,
            instance: &self.instance,
            line: &text,
        };
        let mut out = serde_json::to_vec(&rec).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Appends one record with a single write; false if it could not be written.
    fn append(&mut self, rec: &[u8]) -> bool {
        if self.size > 0 && self.size + rec.len() as u64 > self.max_bytes {
            if let Err(e) = self.rotate() {
                self.fail(e);
            }
        }
        if self.file.is_none() {
            if let Err(e) = self.open() {
                self.fail(e);
                return false;
            }
        }
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        match file.write_all(rec) {
            Ok(()) => {
                self.size += rec.len() as u64;
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %self.path.display(), dropped = self.dropped, "log writes resumed");
                }
                true
            }
            Err(e) => {
                // A short write may have left part of a record: cut it off (which frees
                // space rather than needing it), or at least end it, so the file stays
                // one JSON object per line and a dropped line never half-appears.
                if file.set_len(self.size).is_err() {
                    let _ = file.write_all(b"\n");
                }
                self.fail(e);
                false
            }
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        // Once per failing spell: a full disk fails every line, and the shim's own log is
        // usually on the same disk.
        if !self.failing {
            tracing::warn!(path = %self.path.display(), error = %e, "log write failed; dropping and counting lines until it works again");
        }
        self.failing = true;
        self.last_error = Some(e.to_string());
        self.file = None;
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        self.size = 0;
        let _ = fs::remove_file(rotated(&self.path, self.keep + 1));
        if self.keep == 0 {
            return remove_missing_ok(&self.path);
        }
        for i in (1..self.keep).rev() {
            rename_missing_ok(&rotated(&self.path, i), &rotated(&self.path, i + 1))?;
        }
        rename_missing_ok(&self.path, &rotated(&self.path, 1))
    }
}

/// The counter file's content: always 21 bytes, so a rewrite never grows the file.
fn counter_bytes(n: u64) -> [u8; 21] {
    let mut out = [b' '; 21];
    let digits = n.to_string();
    out[..digits.len()].copy_from_slice(digits.as_bytes());
    out[20] = b'\n';
    out
}

/// `<path>.<n>`: the n-th most recent rotated file.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rename_missing_ok(from: &Path, to: &Path) -> std::io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn remove_missing_ok(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(path: &Path) -> Vec<LogLine> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn rotation_keeps_at_most_keep_files_each_within_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web").join("web-1.log");
        let mut w = LogWriter::new(path.clone(), "web-1", 2048, 3);
        for n in 0..1000 {
            w.write_lines("stdout", &[format!("seq {n}").as_bytes()], Utc::now());
        }
        let mut files: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 4, "{files:?}");
        for f in &files {
            assert!(
                fs::metadata(f).unwrap().len() <= 2048,
                "{} too big",
                f.display()
            );
        }
        // The newest lines survive, in order, across the rotated files.
        let mut all = Vec::new();
        for n in (1..=3).rev() {
            all.extend(lines_of(&rotated(&path, n)));
        }
        all.extend(lines_of(&path));
        let seqs: Vec<u32> = all.iter().map(|l| l.line[4..].parse().unwrap()).collect();
        assert_eq!(*seqs.last().unwrap(), 999);
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "gap or reorder in {seqs:?}"
        );
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn long_lines_are_cut_to_fit_and_invalid_utf8_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut w = LogWriter::new(path.clone(), "w", 4096, 1);
        let long = vec![b'x'; 100_000];
        w.write_lines("stderr", &[&long, b"\xffok"], Utc::now());
        let lines = lines_of(&path);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].line.len() < 2048 && lines[0].line.contains("cut"),
            "{}",
            lines[0].line.len()
        );
        assert_eq!(lines[1].line, "\u{fffd}ok");
        assert_eq!(lines[1].stream, "stderr");
    }

    #[test]
    fn unwritable_log_counts_drops_then_announces_them() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the service directory should be: every open fails.
        let blocker = dir.path().join("svc");
        fs::write(&blocker, b"").unwrap();
        let path = blocker.join("i.log");
        let mut w = LogWriter::new(path.clone(), "i", 4096, 1);
        w.write_lines("stdout", &[b"a", b"b", b"c"], Utc::now());
        assert_eq!(w.dropped(), 3);
        fs::remove_file(&blocker).unwrap();
        w.write_lines("stdout", &[b"d"], Utc::now());
        let lines = lines_of(&path);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].stream, HOIST_STREAM);
        assert!(
            lines[0].line.starts_with("dropped 3 log lines"),
            "{}",
            lines[0].line
        );
        assert_eq!(lines[1].line, "d");
        assert_eq!(w.dropped(), 3);
    }
}
