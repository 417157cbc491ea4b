//! Reading `/proc`: a process's identity (pid + start time), its parent and group, the
//! tree below a process, and resource use. It only reads; it never signals anything.

use std::fs;

use serde::{Deserialize, Serialize};

/// A process as identified beyond its pid: the pid plus its start time in clock ticks
/// since boot (`/proc/PID/stat` field 22). A reused pid has another start time, so a
/// matching pair is the same process.
///
/// The kernel shows start times shifted by the *reader's* time namespace boot-time offset,
/// so an agent restarted under another offset (`unshare -T --boottime`) would see every
/// recorded process as a different one. Start times are therefore kept in the initial
/// namespace's terms: the reader's own offset is taken off as they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of the live process `pid`, if it exists.
    pub fn of(pid: i32) -> Option<ProcessId> {
        let stat = Stat::read(pid)?;
        Some(ProcessId {
            pid,
            start_time: stat.start_time,
        })
    }

    /// Whether this very process is alive: same pid, same start time, not a zombie.
    pub fn is_alive(&self) -> bool {
        Stat::read(self.pid).is_some_and(|s| self.same_start(s.start_time) && s.state != 'Z')
    }

    /// Whether `start_time` (as read by [`Stat::read`]) is this process's. Exact, except
    /// when this process's boot-time offset is not a whole number of ticks: then the
    /// kernel's rounding may differ by one tick, and one tick is all that is allowed.
    pub fn same_start(&self, start_time: u64) -> bool {
        start_time == self.start_time
            || (boottime_offset().1 && start_time.abs_diff(self.start_time) <= 1)
    }
}

/// This process's time-namespace boot-time offset in clock ticks, and whether it had a
/// fraction of a tick. Read once: a process never changes time namespace.
fn boottime_offset() -> (i64, bool) {
    static OFFSET: std::sync::OnceLock<(i64, bool)> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        let text = fs::read_to_string("/proc/self/timens_offsets").unwrap_or_default();
        parse_boottime_offset(&text, clock_ticks())
    })
}

/// The `boottime` line of `/proc/self/timens_offsets` (`boottime SECS NANOS`) in ticks.
fn parse_boottime_offset(text: &str, ticks_per_s: u64) -> (i64, bool) {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let ["boottime", secs, nanos] = f.as_slice() {
            let (Ok(secs), Ok(nanos)) = (secs.parse::<i64>(), nanos.parse::<i64>()) else {
                break;
            };
            let tick_ns = 1_000_000_000 / ticks_per_s.max(1) as i64;
            let ticks = secs * ticks_per_s as i64 + nanos.div_euclid(tick_ns);
            return (ticks, nanos.rem_euclid(tick_ns) != 0);
        }
    }
    (0, false)
}

/// The fields of `/proc/PID/stat` the supervisor uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub session: i32,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    pub start_time: u64,
    /// Resident set, in pages.
    pub rss_pages: u64,
}

impl Stat {
    /// Reads `/proc/PID/stat`; `None` when the process does not exist (or vanished). The
    /// start time is in the initial time namespace's terms (see [`ProcessId`]).
    pub fn read(pid: i32) -> Option<Stat> {
        let path = format!("/proc/{pid}/stat");
        // A line fits 512 bytes but for huge field values: zeroing a 4 KB array for every
        // read was most of an idle agent's instructions (and a per-thread heap buffer
        // grew each shim by a page), so the 4 KB one is only for a line that did not fit.
        let mut small = [0u8; 512];
        let mut stat = match read_small(&path, &mut small) {
            Ok(text) => Stat::parse(pid, text)?,
            Err(Unread::TooLong) => {
                let mut big = [0u8; 4096];
                Stat::parse(pid, read_small(&path, &mut big).ok()?)?
            }
            Err(Unread::Failed) => return None,
        };
        stat.start_time = (stat.start_time as i64 - boottime_offset().0).max(0) as u64;
        Some(stat)
    }

    /// Parses a stat line. The command name (field 2) may hold spaces and parentheses,
    /// so fields are counted from the last `)`. No allocation: the agent parses every
    /// process's line each second.
    pub fn parse(pid: i32, text: &str) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        // `rest` starts at field 3 (state): field N is at index N - 3, up to field 24.
        let mut f = [""; 22];
        let mut words = rest.split_ascii_whitespace();
        for slot in &mut f {
            *slot = words.next()?;
        }
        let num = |n: usize| f[n - 3].parse::<i64>().ok();
        Some(Stat {
            pid,
            state: f[0].chars().next()?,
            ppid: num(4)? as i32,
            pgid: num(5)? as i32,
            session: num(6)? as i32,
            cpu_ticks: (num(14)? + num(15)?) as u64,
            start_time: num(22)? as u64,
            rss_pages: num(24)?.max(0) as u64,
        })
    }
}

/// A short /proc file (a stat line is a few hundred bytes) read into `buf`: one read and
/// its end-of-file read, where `read_to_string` grows a heap buffer over several reads
/// (/proc files report size 0). Fails if the file is missing, unreadable or not UTF-8
/// (`Failed`), or does not fit `buf` (`TooLong`: a stat line of 52 fields, each at most
/// 20 digits, and a 64-byte name fits 4 KB with room).
fn read_small<'a>(path: &str, buf: &'a mut [u8]) -> Result<&'a str, Unread> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|_| Unread::Failed)?;
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Err(Unread::TooLong);
        }
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Unread::Failed),
        }
    }
    std::str::from_utf8(&buf[..n]).map_err(|_| Unread::Failed)
}

/// Why [`read_small`] read nothing.
enum Unread {
    Failed,
    TooLong,
}

/// Every process on the host, read once. Processes that vanish while reading are skipped.
pub fn all_processes() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Stat::read)
        .collect()
}

/// The processes below `root` (not `root` itself), from one snapshot of the table.
pub fn descendants(root: i32, table: &[Stat]) -> Vec<Stat> {
    // One pass over the table per process of the tree (an instance's tree is a few
    // processes; the table is the whole host): no map of the host's processes built for
    // each instance, each second.
    let mut out: Vec<Stat> = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for child in table.iter().filter(|s| s.ppid == pid) {
            // A pid is its own parent only in a corrupt snapshot; never loop on it.
            if child.pid != root && !out.iter().any(|s| s.pid == child.pid) {
                out.push(child.clone());
                stack.push(child.pid);
            }
        }
    }
    out
}

/// The live members of process group `pgid`.
pub fn group_members(pgid: i32, table: &[Stat]) -> Vec<Stat> {
    table
        .iter()
        .filter(|s| s.pgid == pgid && s.state != 'Z')
        .cloned()
        .collect()
}

/// Whether `/proc/PID/environ` holds `NAME=value`: the second identity marker.
pub fn environ_has(pid: i32, name: &str, value: &str) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let want = format!("{name}={value}");
    raw.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// Resource use of a process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Resident memory summed over every process of the tree.
    pub rss_bytes: u64,
    /// User plus system CPU time summed over the live processes of the tree.
    pub cpu_seconds: f64,
    /// How many processes the tree holds.
    pub processes: u32,
}

/// Sums the resource use of `procs`.
pub fn sum_stats(procs: &[Stat]) -> ProcessStats {
    let page = page_size();
    let ticks = clock_ticks() as f64;
    let mut out = ProcessStats::default();
    for p in procs.iter().filter(|p| p.state != 'Z') {
        out.rss_bytes += p.rss_pages * page;
        out.cpu_seconds += p.cpu_ticks as f64 / ticks;
        out.processes += 1;
    }
    out
}

fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u64)
}

fn clock_ticks() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    // Linux exports USER_HZ (100) in /proc whatever the kernel's own tick rate.
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|v| *v > 0)
        .map_or(100, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 1 0 0 0 7 3 0 0 20 0 1 0 123456 1000 55 18446744073709551615";
        let s = Stat::parse(42, line).unwrap();
        assert_eq!((s.state, s.ppid, s.pgid, s.session), ('S', 1, 42, 42));
        assert_eq!((s.cpu_ticks, s.start_time, s.rss_pages), (10, 123456, 55));
        // Cut before the rss field (24): not a stat line.
        let short = "42 (a) S 1 42 42 0 -1 4194560 1 0 0 0 7 3 0 0 20 0 1 0 123456 1000";
        assert_eq!(Stat::parse(42, short), None);
    }

    #[test]
    fn a_line_longer_than_the_small_buffer_is_read_from_the_big_one() {
        // A stat line with a 600-byte name: not a real one, but the same read path.
        let dir = std::env::temp_dir().join(format!("hoist-procfs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stat");
        let line = format!(
            "42 ({}) S 1 42 42 0 -1 4194560 1 0 0 0 7 3 0 0 20 0 1 0 123456 1000 55 0",
            "x".repeat(600)
        );
        fs::write(&path, &line).unwrap();
        let path = path.to_str().unwrap();
        assert!(matches!(
            read_small(path, &mut [0u8; 512]),
            Err(Unread::TooLong)
        ));
        assert_eq!(read_small(path, &mut [0u8; 4096]).ok(), Some(line.as_str()));
        assert!(matches!(
            read_small("/nonexistent/stat", &mut [0u8; 512]),
            Err(Unread::Failed)
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn own_stat_is_read_whole() {
        let me = Stat::read(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(me.rss_pages > 0);
    }

    #[test]
    fn own_identity_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(!ProcessId {
            start_time: me.start_time + 1,
            ..me
        }
        .is_alive());
    }

    #[test]
    fn boottime_offsets_are_read_in_ticks() {
        let text = "monotonic 5 0\nboottime 1000 0\n";
        assert_eq!(parse_boottime_offset(text, 100), (100_000, false));
        assert_eq!(
            parse_boottime_offset("boottime -2 500000000\n", 100),
            (-150, false)
        );
        assert_eq!(parse_boottime_offset("boottime 0 1\n", 100), (0, true));
        assert_eq!(parse_boottime_offset("", 100), (0, false));
    }

    #[test]
    fn descendants_walks_the_tree_only() {
        let mk = |pid, ppid| Stat {
            pid,
            state: 'S',
            ppid,
            pgid: pid,
            session: pid,
            cpu_ticks: 0,
            start_time: 0,
            rss_pages: 1,
        };
        let table = vec![
            mk(1, 0),
            mk(10, 1),
            mk(11, 10),
            mk(12, 11),
            mk(20, 1),
            mk(13, 10),
        ];
        let mut got: Vec<i32> = descendants(10, &table).iter().map(|s| s.pid).collect();
        got.sort();
        assert_eq!(got, vec![11, 12, 13]);
    }
}
