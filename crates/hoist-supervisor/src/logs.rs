//! The reading side of instance logs: `read` merges every instance file of a service
//! (rotated ones included) by time, filtered by `since` and a substring; `Follower` then
//! yields the lines written after that, surviving rotation by tracking each file's inode
//! and offset. It only reads: the shim's `logfile` writes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::error::{Result, SupervisorError};
use crate::logfile::rotated;
pub use crate::logfile::LogLine;

/// Which lines to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only lines containing this text (plain substring, case-sensitive).
    pub grep: Option<String>,
    /// Only the last N matching lines.
    pub tail: Option<usize>,
}

impl LogQuery {
    fn matches(&self, l: &LogLine) -> bool {
        self.since.is_none_or(|s| l.t >= s)
            && self.grep.as_deref().is_none_or(|g| l.line.contains(g))
    }
}

/// Rotated files looked at beyond the live one (`.1` … `.64`), far above any sane `log_keep`.
const MAX_ROTATED: u32 = 64;

/// Where reading the live file of one instance stopped.
#[derive(Debug, Clone)]
struct Cursor {
    inode: u64,
    offset: u64,
}

/// Every stored line of `service` matching `query`, oldest first, merged across instances.
pub fn read(log_dir: &Path, service: &str, query: &LogQuery) -> Result<Vec<LogLine>> {
    Ok(start(log_dir, service, query)?.0)
}

/// Follows a service's logs: `start` returns the stored lines and a follower that yields
/// each later line exactly once.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    query: LogQuery,
    cursors: BTreeMap<String, Cursor>,
}

impl Follower {
    /// The lines stored now (as [`read`]) and a follower positioned right after them.
    pub fn start(
        log_dir: &Path,
        service: &str,
        query: &LogQuery,
    ) -> Result<(Vec<LogLine>, Follower)> {
        start(log_dir, service, query)
    }

    /// The lines written since the last call, oldest first. Call it periodically.
    pub fn poll(&mut self) -> Result<Vec<LogLine>> {
        let mut lines = Vec::new();
        for (instance, live) in instance_files(&self.dir)? {
            let meta = match fs::metadata(&live) {
                Ok(m) => m,
                Err(_) => continue,
            };
            match self.cursors.get(&instance).cloned() {
                Some(c) if c.inode == meta.ino() => {
                    let (new, offset) = read_from(&live, c.offset)?;
                    lines.extend(new);
                    self.cursors.insert(
                        instance,
                        Cursor {
                            inode: c.inode,
                            offset,
                        },
                    );
                }
                Some(c) => {
                    // Rotated since the last poll: finish the old file where it now lives.
                    if let Some(old) = (1..=64)
                        .map(|n| rotated(&live, n))
                        .find(|p| inode_of(p) == Some(c.inode))
                    {
                        lines.extend(read_from(&old, c.offset)?.0);
                    }
                    let (new, offset) = read_from(&live, 0)?;
                    lines.extend(new);
                    self.cursors.insert(
                        instance,
                        Cursor {
                            inode: meta.ino(),
                            offset,
                        },
                    );
                }
                None => {
                    let (new, cursor) = read_instance(&live)?;
                    lines.extend(new);
                    if let Some(c) = cursor {
                        self.cursors.insert(instance, c);
                    }
                }
            }
        }
        lines.retain(|l| self.query.matches(l));
        lines.sort_by_key(|l| l.t);
        Ok(lines)
    }
}

/// Retention across instances: deletes the log files (live and rotated) of every instance
/// of `service` that `keep` does not hold and whose newest file was last written before
/// `older_than`. Returns the instances removed. Rotation bounds one instance's files;
/// this bounds how many instances' files accumulate as instances come and go.
pub fn prune(
    log_dir: &Path,
    service: &str,
    keep: impl Fn(&str) -> bool,
    older_than: SystemTime,
) -> Result<Vec<String>> {
    let dir = log_dir.join(service);
    let mut removed = Vec::new();
    for (instance, live) in instance_files(&dir)? {
        if keep(&instance) {
            continue;
        }
        let files: Vec<PathBuf> = std::iter::once(live.clone())
            .chain((1..=MAX_ROTATED).map(|n| rotated(&live, n)))
            .filter(|p| p.exists())
            .collect();
        let newest = files
            .iter()
            .filter_map(|p| fs::metadata(p).ok()?.modified().ok())
            .max();
        if newest.is_some_and(|t| t >= older_than) {
            continue;
        }
        for f in &files {
            crate::record::remove_if_exists(f)?;
        }
        removed.push(instance);
    }
    Ok(removed)
}

fn start(log_dir: &Path, service: &str, query: &LogQuery) -> Result<(Vec<LogLine>, Follower)> {
    let dir = log_dir.join(service);
    let mut per_instance = Vec::new();
    let mut cursors = BTreeMap::new();
    for (instance, live) in instance_files(&dir)? {
        let (lines, cursor) = read_instance(&live)?;
        per_instance.push(
            lines
                .into_iter()
                .filter(|l| query.matches(l))
                .collect::<Vec<_>>(),
        );
        if let Some(c) = cursor {
            cursors.insert(instance, c);
        }
    }
    let mut merged = merge_by_time(per_instance);
    if let Some(n) = query.tail {
        merged.drain(..merged.len().saturating_sub(n));
    }
    Ok((
        merged,
        Follower {
            dir,
            query: query.clone(),
            cursors,
        },
    ))
}

/// Merges per-instance sequences (each in write order) by time, keeping each one's order
/// even if the wall clock stepped back.
fn merge_by_time(seqs: Vec<Vec<LogLine>>) -> Vec<LogLine> {
    let mut iters: Vec<_> = seqs.into_iter().map(|s| s.into_iter().peekable()).collect();
    let mut heap = BinaryHeap::new();
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some(l) = it.peek() {
            heap.push(Reverse((l.t, i)));
        }
    }
    let mut out = Vec::new();
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(l) = iters[i].next() {
            out.push(l);
        }
        if let Some(l) = iters[i].peek() {
            heap.push(Reverse((l.t, i)));
        }
    }
    out
}

/// The live file of every instance of the service directory, by instance id. Instances
/// whose live file is gone but rotated files remain are listed too.
fn instance_files(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(SupervisorError::io("read directory", dir, e)),
    };
    let mut out = BTreeMap::new();
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        let stem = match name.rsplit_once(".log") {
            Some((stem, rest))
                if rest.is_empty() || rest[1..].parse::<u32>().is_ok() && rest.starts_with('.') =>
            {
                stem
            }
            _ => continue,
        };
        out.insert(stem.to_string(), dir.join(format!("{stem}.log")));
    }
    Ok(out)
}

/// All lines of one instance: rotated files oldest first, then the live file, and where
/// reading the live file stopped.
fn read_instance(live: &Path) -> Result<(Vec<LogLine>, Option<Cursor>)> {
    let mut rotated_files: Vec<(u32, PathBuf)> = Vec::new();
    for n in 1.. {
        let p = rotated(live, n);
        if !p.exists() {
            break;
        }
        rotated_files.push((n, p));
    }
    let mut lines = Vec::new();
    for (_, p) in rotated_files.iter().rev() {
        lines.extend(read_from(p, 0)?.0);
    }
    let cursor = match inode_of(live) {
        Some(inode) => {
            let (new, offset) = read_from(live, 0)?;
            lines.extend(new);
            Some(Cursor { inode, offset })
        }
        None => None,
    };
    Ok((lines, cursor))
}

fn inode_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

/// Parses the complete lines of `path` after `offset`; returns them and the offset just
/// past the last complete line (a line still being written is left for the next read).
fn read_from(path: &Path, offset: u64) -> Result<(Vec<LogLine>, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(SupervisorError::io("open", path, e)),
    };
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_to_end(&mut buf))
        .map_err(|e| SupervisorError::io("read", path, e))?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_slice::<LogLine>(l) {
            Ok(line) => Some(line),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "skipping a malformed log line");
                None
            }
        })
        .collect();
    Ok((lines, offset + complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logfile::LogWriter;
    use chrono::TimeDelta;

    fn seqs(lines: &[LogLine]) -> Vec<String> {
        lines
            .iter()
            .map(|l| format!("{}:{}", l.instance, l.line))
            .collect()
    }

    #[test]
    fn merges_instances_and_rotated_files_by_time_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Utc::now();
        let at = |s: i64| t0 + TimeDelta::seconds(s);
        let mut a = LogWriter::new(dir.path().join("web/a.log"), "a", 1024, 5);
        let mut b = LogWriter::new(dir.path().join("web/b.log"), "b", 1024, 5);
        for i in 0..40 {
            let w = if i % 2 == 0 { &mut a } else { &mut b };
            w.write_lines(
                "stdout",
                &[format!("line {i:02} {}", "x".repeat(40)).as_bytes()],
                at(i),
            );
        }
        assert!(
            rotated(&dir.path().join("web/a.log"), 1).exists(),
            "the test must rotate"
        );
        let all = read(dir.path(), "web", &LogQuery::default()).unwrap();
        let nums: Vec<u32> = all.iter().map(|l| l.line[5..7].parse().unwrap()).collect();
        assert_eq!(nums, (0..40).collect::<Vec<_>>());

        let q = LogQuery {
            since: Some(at(30)),
            grep: Some("line 3".into()),
            tail: Some(3),
        };
        let got = read(dir.path(), "web", &q).unwrap();
        assert_eq!(
            seqs(&got).iter().map(|s| &s[..9]).collect::<Vec<_>>(),
            vec!["b:line 37", "a:line 38", "b:line 39"]
        );
        assert!(read(dir.path(), "nope", &LogQuery::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn follower_yields_each_later_line_once_across_rotation_and_new_instances() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = LogWriter::new(dir.path().join("w/a.log"), "a", 2048, 3);
        a.write_lines("stdout", &[b"before"], Utc::now());
        let (first, mut f) = Follower::start(dir.path(), "w", &LogQuery::default()).unwrap();
        assert_eq!(seqs(&first), vec!["a:before"]);
        assert!(f.poll().unwrap().is_empty());

        let mut seen = Vec::new();
        for i in 0..200 {
            a.write_lines("stdout", &[format!("n {i}").as_bytes()], Utc::now());
            if i % 7 == 0 {
                seen.extend(f.poll().unwrap());
            }
        }
        let mut b = LogWriter::new(dir.path().join("w/b.log"), "b", 2048, 3);
        b.write_lines("stderr", &[b"hello"], Utc::now());
        seen.extend(f.poll().unwrap());
        let a_lines: Vec<String> = seen
            .iter()
            .filter(|l| l.instance == "a")
            .map(|l| l.line.clone())
            .collect();
        assert_eq!(
            a_lines,
            (0..200).map(|i| format!("n {i}")).collect::<Vec<_>>()
        );
        assert!(seen.iter().any(|l| l.instance == "b" && l.line == "hello"));
    }

    #[test]
    fn prune_removes_old_instances_but_never_kept_or_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["old", "live", "recent"] {
            let mut w = LogWriter::new(dir.path().join(format!("w/{id}.log")), id, 1024, 2);
            for i in 0..50 {
                w.write_lines(
                    "stdout",
                    &[format!("line {i} of {id}").as_bytes()],
                    Utc::now(),
                );
            }
        }
        assert!(rotated(&dir.path().join("w/old.log"), 1).exists());
        let cutoff = SystemTime::now() + std::time::Duration::from_secs(60);
        // `recent` is written after the cutoff is taken: bump it past the cutoff.
        let recent = fs::File::options()
            .append(true)
            .open(dir.path().join("w/recent.log"))
            .unwrap();
        recent
            .set_modified(cutoff + std::time::Duration::from_secs(1))
            .unwrap();
        let removed = prune(dir.path(), "w", |i| i == "live", cutoff).unwrap();
        assert_eq!(removed, vec!["old".to_string()]);
        let left: Vec<String> = read(dir.path(), "w", &LogQuery::default())
            .unwrap()
            .into_iter()
            .map(|l| l.instance)
            .collect();
        assert!(
            !left.contains(&"old".to_string())
                && left.contains(&"live".to_string())
                && left.contains(&"recent".to_string())
        );
        assert!(!rotated(&dir.path().join("w/old.log"), 1).exists());
    }

    #[test]
    fn partial_and_malformed_lines_are_not_returned() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("s")).unwrap();
        let good =
            r#"{"t":"2026-01-01T00:00:00.000Z","stream":"stdout","instance":"i","line":"ok"}"#;
        fs::write(
            dir.path().join("s/i.log"),
            format!("garbage\n{good}\n{{\"t\":"),
        )
        .unwrap();
        let (lines, mut f) = Follower::start(dir.path(), "s", &LogQuery::default()).unwrap();
        assert_eq!(seqs(&lines), vec!["i:ok"]);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("s/i.log"))
            .unwrap();
        std::io::Write::write_all(&mut file, &good.as_bytes()[5..]).unwrap();
        std::io::Write::write_all(&mut file, b"\n").unwrap();
        assert_eq!(
            seqs(&f.poll().unwrap()),
            vec!["i:ok"],
            "the completed partial line is read once"
        );
    }
}
