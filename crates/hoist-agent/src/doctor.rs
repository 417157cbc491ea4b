//! `GET /v1/doctor`: the host diagnoses itself. Each finding is measured here, now: the
//! root's filesystem (space, inodes), instance ports held by a process that is not the
//! instance, crash-looping or unhealthy instances (with their last log lines),
//! certificates near expiry or failing to renew, backups stale or never verified, the
//! state database's integrity, and leftover processes that carry this root's marker but
//! belong to no instance or job run. Fleet-wide findings (clock skew, agent versions,
//! unreachable hosts) are made by the CLI from every host's answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use hoist_protocol::agent::{DoctorReport, Finding};

use crate::runtime::Phase;
use crate::Agent;

/// Free space or inodes under this share of the filesystem fail; under `WARN_SHARE` warn.
const FAIL_SHARE: f64 = 0.05;
const WARN_SHARE: f64 = 0.10;
/// A certificate is warned about at most this many days before it expires (see
/// [`cert_warn_from`]).
const CERT_WARN_DAYS: i64 = 14;
/// A backup not verified within this many days is a warning.
const VERIFY_DAYS: i64 = 30;

/// From when (Unix seconds) a certificate valid from `not_before` to `not_after` is
/// worth a warning, unless it is being renewed: in the last third of its lifetime (hoist
/// renews ACME certificates at two thirds, plus up to a thirtieth as jitter), and no
/// earlier than [`CERT_WARN_DAYS`] before it expires, so neither a 60 s nor a 7-day
/// certificate warns from birth and a year-long one not four months ahead. Without a
/// known start, the last [`CERT_WARN_DAYS`].
pub(crate) fn cert_warn_from(not_before: Option<i64>, not_after: i64, acme: bool) -> i64 {
    let window = CERT_WARN_DAYS * 86_400;
    match not_before {
        Some(from) if from < not_after => {
            let life = not_after - from;
            let at = not_after - (life / 3).min(window);
            if acme {
                at.max(from + life * 2 / 3 + life / 30)
            } else {
                at
            }
        }
        _ => not_after - window,
    }
}

fn share_status(free: f64) -> &'static str {
    if free < FAIL_SHARE {
        "fail"
    } else if free < WARN_SHARE {
        "warn"
    } else {
        "pass"
    }
}

/// The listening TCP sockets by local port: port → socket inodes.
fn listeners() -> HashMap<u16, Vec<u64>> {
    let mut out: HashMap<u16, Vec<u64>> = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                out.entry(port).or_default().push(inode);
            }
        }
    }
    out
}

/// The pids holding each of `inodes` open.
fn owners(inodes: &HashSet<u64>) -> HashMap<u64, Vec<i32>> {
    let mut out: HashMap<u64, Vec<i32>> = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(inode) = t
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok())
            {
                if inodes.contains(&inode) {
                    out.entry(inode).or_default().push(pid);
                }
            }
        }
    }
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `NAME=value` pairs of a process's environment.
fn environ(pid: i32) -> BTreeMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Agent {
    /// Every host-local finding, measured now.
    pub(crate) async fn doctor(self: &Arc<Self>) -> DoctorReport {
        let agent = self.clone();
        let findings = tokio::task::spawn_blocking(move || agent.doctor_findings())
            .await
            .unwrap_or_else(|_| {
                vec![Finding::new(
                    "agent.doctor",
                    "fail",
                    "the diagnosis stopped unexpectedly",
                    "see the agent's log",
                )]
            });
        DoctorReport {
            host: self.host_name(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            now_ms: hoist_state::now_ms(),
            findings,
        }
    }

    fn doctor_findings(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        self.doctor_disk(&mut out);
        self.doctor_ports(&mut out);
        self.doctor_instances(&mut out);
        self.doctor_certs(&mut out);
        self.doctor_backups(&mut out);
        self.doctor_state(&mut out);
        self.doctor_strays(&mut out);
        out
    }

    fn doctor_disk(&self, out: &mut Vec<Finding>) {
        let root = self.paths.root.display().to_string();
        match nix::sys::statvfs::statvfs(&self.paths.root) {
            Ok(fs) => {
                let blocks = fs.blocks() as f64;
                let free = fs.blocks_available() as f64 / blocks.max(1.0);
                let free_bytes = fs.blocks_available() * fs.fragment_size();
                let status = share_status(free);
                out.push(
                    Finding::new(
                        "disk.space",
                        status,
                        format!(
                            "{:.1}% free on the filesystem of `{root}` ({} MiB)",
                            free * 100.0,
                            free_bytes / (1024 * 1024)
                        ),
                        "free space: `hoist releases` and old backups, logs under <root>/logs; then grow the disk",
                    )
                    .with_evidence(vec![format!(
                        "statvfs {root}: {} of {} blocks of {} bytes available",
                        fs.blocks_available(),
                        fs.blocks(),
                        fs.fragment_size()
                    )]),
                );
                let files = fs.files() as f64;
                if files > 0.0 {
                    let ifree = fs.files_available() as f64 / files;
                    out.push(
                        Finding::new(
                            "disk.inodes",
                            share_status(ifree),
                            format!(
                                "{:.1}% of inodes free on the filesystem of `{root}` ({} left)",
                                ifree * 100.0,
                                fs.files_available()
                            ),
                            "find the directory with millions of small files (`du --inodes -x / | sort -n | tail`) and remove them",
                        )
                        .with_evidence(vec![format!(
                            "statvfs {root}: {} of {} inodes available",
                            fs.files_available(),
                            fs.files()
                        )]),
                    );
                }
            }
            Err(e) => out.push(Finding::new(
                "disk.space",
                "fail",
                format!("cannot measure the filesystem of `{root}`: {e}"),
                "check that the root exists and is mounted",
            )),
        }
    }

    /// Instance ports: each must be held by its instance, or by nobody while it is down.
    fn doctor_ports(&self, out: &mut Vec<Finding>) {
        let wanted: Vec<(String, u16, Option<i32>)> = {
            let rt = self.rt();
            rt.instances
                .values()
                .filter(|l| l.row.desired != "stop")
                .filter_map(|l| {
                    let port = l.row.port?;
                    let pid = l.handle.as_ref().map(|h| h.app_pid());
                    Some((l.row.instance.clone(), port, pid))
                })
                .collect()
        };
        let listening = listeners();
        let inodes: HashSet<u64> = wanted
            .iter()
            .filter_map(|(_, port, _)| listening.get(port))
            .flatten()
            .copied()
            .collect();
        let holders = if inodes.is_empty() {
            HashMap::new()
        } else {
            owners(&inodes)
        };
        let table = hoist_supervisor::procfs::all_processes();
        let mut taken = Vec::new();
        for (id, port, app_pid) in &wanted {
            let Some(socks) = listening.get(port) else {
                continue;
            };
            let ours: HashSet<i32> = match app_pid {
                Some(p) => {
                    let mut s: HashSet<i32> = hoist_supervisor::procfs::descendants(*p, &table)
                        .iter()
                        .map(|s| s.pid)
                        .collect();
                    s.insert(*p);
                    s
                }
                None => HashSet::new(),
            };
            for inode in socks {
                for pid in holders.get(inode).into_iter().flatten() {
                    if !ours.contains(pid) && *pid as u32 != std::process::id() {
                        taken.push(format!(
                            "port {port} of `{id}` is held by pid {pid} ({})",
                            comm(*pid)
                        ));
                    }
                }
            }
        }
        taken.sort();
        taken.dedup();
        if taken.is_empty() {
            out.push(Finding::new(
                "ports.taken",
                "pass",
                format!(
                    "{} instance ports, each free or held by its instance",
                    wanted.len()
                ),
                "",
            ));
        } else {
            out.push(
                Finding::new(
                    "ports.taken",
                    "fail",
                    format!("{} instance port(s) held by another process", taken.len()),
                    "stop the process holding the port (it is not hoist's), then `hoist restart SERVICE`",
                )
                .with_evidence(taken),
            );
        }
    }

    fn doctor_instances(&self, out: &mut Vec<Finding>) {
        let now = Instant::now();
        let (looping, unhealthy): (Vec<_>, Vec<_>) = {
            let rt = self.rt();
            let looping: Vec<(String, String, Option<String>, i64)> = rt
                .instances
                .values()
                .filter(|l| l.row.desired != "stop")
                .filter(|l| {
                    l.phase == Phase::CrashLoop
                        || (l.phase == Phase::Backoff && l.row.restarts >= 2)
                })
                .map(|l| {
                    (
                        l.row.instance.clone(),
                        l.row.service.clone(),
                        l.last_exit.clone(),
                        l.row.restarts,
                    )
                })
                .collect();
            // Failing now, or restarted for failing within the last 5 minutes (a restart
            // clears the unhealthy state within a supervision pass).
            let recent = std::time::Duration::from_secs(300);
            let unhealthy: Vec<String> = rt
                .instances
                .values()
                .filter_map(|l| {
                    if l.state_word(now) == "unhealthy" {
                        return Some(format!("`{}`: failing its health check", l.row.instance));
                    }
                    let at = l.unhealthy_at?;
                    let ago = now.saturating_duration_since(at);
                    (ago < recent).then(|| {
                        format!(
                            "`{}`: restarted for failing its health check {}s ago",
                            l.row.instance,
                            ago.as_secs()
                        )
                    })
                })
                .collect();
            (looping, unhealthy)
        };
        if looping.is_empty() {
            out.push(Finding::new(
                "services.crash_loop",
                "pass",
                "no instance is restarting in a loop",
                "",
            ));
        } else {
            let mut evidence = Vec::new();
            for (id, service, exit, restarts) in &looping {
                evidence.push(format!(
                    "`{id}`: {restarts} restarts, last exit: {}",
                    exit.as_deref().unwrap_or("unknown")
                ));
                for line in self.last_log_lines(id, service, 5) {
                    evidence.push(format!("  {line}"));
                }
            }
            out.push(
                Finding::new(
                    "services.crash_loop",
                    "fail",
                    format!(
                        "{} instance(s) keep exiting: {}",
                        looping.len(),
                        looping
                            .iter()
                            .map(|l| format!("`{}`", l.0))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "read the log lines below (`hoist logs SERVICE`); fix and deploy, or `hoist rollback`",
                )
                .with_evidence(evidence),
            );
        }
        if unhealthy.is_empty() {
            out.push(Finding::new(
                "services.health",
                "pass",
                "no running instance fails its health check",
                "",
            ));
        } else {
            out.push(
                Finding::new(
                    "services.health",
                    "fail",
                    format!("{} instance(s) fail their health check", unhealthy.len()),
                    "`hoist logs SERVICE` and the health path by hand (`curl 127.0.0.1:PORT/health`)",
                )
                .with_evidence(unhealthy),
            );
        }
    }

    fn doctor_certs(&self, out: &mut Vec<Finding>) {
        let now = chrono::Utc::now();
        let mut bad = Vec::new();
        let mut soon = Vec::new();
        let statuses = self.cert_statuses();
        let unix = |t: &Option<String>| {
            t.as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp())
        };
        for c in &statuses {
            let not_after = unix(&c.not_after);
            let left = not_after.map(|t| t - now.timestamp());
            let due = not_after.is_some_and(|to| {
                now.timestamp() >= cert_warn_from(unix(&c.not_before), to, c.source == "acme")
            });
            let failed_renewal = c.last.as_ref().is_some_and(|a| !a.ok);
            // The problem of an ACME certificate is its failed renewal, with the CA's
            // words; said once.
            let problem = c.problem.clone().or_else(|| {
                c.last
                    .as_ref()
                    .filter(|a| !a.ok)
                    .map(|a| format!("the last renewal failed: {}", a.message))
            });
            let line = format!(
                "`{}` ({}): not after {}{}{}",
                c.domain,
                c.source,
                c.not_after.as_deref().unwrap_or("unknown"),
                c.last
                    .as_ref()
                    .filter(|a| !a.ok)
                    .map(|a| format!(", last attempt at {}", a.at))
                    .unwrap_or_default(),
                problem.map(|p| format!("; {p}")).unwrap_or_default(),
            );
            // A failed renewal fails: hoist renews at two thirds of the lifetime, so the
            // last third is running out and only a fix of its cause (DNS, ports, the CA)
            // keeps HTTPS up; the old certificate serves meanwhile.
            // In its last third (or last days) it warns, unless its renewal is going on.
            match left {
                Some(l) if l <= 0 => bad.push(line),
                None => bad.push(line),
                Some(_) if failed_renewal => bad.push(line),
                Some(_) if due && !c.renewing => soon.push(line),
                Some(_) => {}
            }
        }
        let f = if !bad.is_empty() {
            Finding::new(
                "certs.expiry",
                "fail",
                format!(
                    "{} certificate(s) expired, unreadable or failing to renew",
                    bad.len()
                ),
                "ACME: fix what the CA's error names (DNS pointing elsewhere, port 80/443 closed, a rate limit); the agent retries with backoff. Files: renew and replace them; the agent reloads them within 15 s",
            )
            .with_evidence([bad, soon].concat())
        } else if !soon.is_empty() {
            Finding::new(
                "certs.expiry",
                "warn",
                format!(
                    "{} certificate(s) in the last third of their lifetime (at most {CERT_WARN_DAYS} days) and not being renewed",
                    soon.len()
                ),
                "renew before it expires (hoist renews ACME certificates at two thirds of their lifetime); `hoist certs` shows the last ACME attempt",
            )
            .with_evidence(soon)
        } else {
            Finding::new(
                "certs.expiry",
                "pass",
                format!("{} certificate(s), none near expiry", statuses.len()),
                "",
            )
        };
        out.push(f);
    }

    fn doctor_backups(&self, out: &mut Vec<Finding>) {
        let specs: Vec<Arc<hoist_core::spec::AppSpec>> =
            self.rt().specs.values().map(|(_, s)| s.clone()).collect();
        let now = hoist_state::now_ms();
        let day = 86_400_000i64;
        let mut stale = Vec::new();
        let mut unverified = Vec::new();
        let mut total = 0;
        for spec in specs {
            let rows = self
                .db(|s| s.backups(Some(&spec.app), 1000))
                .unwrap_or_default();
            // The app's last deploy, read once for all its backups (see `not_due`).
            let deployed_at = self
                .db(|s| s.history(Some(&spec.app), 1))
                .ok()
                .and_then(|h| h.first().map(|r| r.at_ms));
            for (name, bs) in &spec.backups {
                total += 1;
                let mine: Vec<_> = rows.iter().filter(|r| &r.name == name).collect();
                let last_ok = mine
                    .iter()
                    .filter(|r| r.status == "ok" && r.trigger != "verify")
                    .map(|r| r.started_at_ms)
                    .max();
                let last_verify = mine
                    .iter()
                    .filter(|r| r.status == "ok" && r.trigger == "verify")
                    .map(|r| r.started_at_ms)
                    .max();
                let who = format!("`{}`/`{name}`", spec.app);
                if let Some(sched) = &bs.schedule {
                    // Two periods without a good backup is stale.
                    let period = sched
                        .next_after(chrono::Utc::now())
                        .and_then(|n| sched.next_after(n).map(|m| (m - n).num_milliseconds()))
                        .unwrap_or(day);
                    // Why: the attempts that failed after the last good one.
                    let since: Vec<_> = mine
                        .iter()
                        .filter(|r| r.status == "failed" && r.trigger != "verify")
                        .filter(|r| last_ok.is_none_or(|ok| r.started_at_ms > ok))
                        .collect();
                    let failed = since
                        .iter()
                        .max_by_key(|r| r.started_at_ms)
                        .map(|r| {
                            format!(
                                "; {} attempt(s) failed since, the last at {}: {}",
                                since.len(),
                                when(r.started_at_ms),
                                r.error.as_deref().unwrap_or("no error recorded")
                            )
                        })
                        .unwrap_or_default();
                    // A schedule starts with the deploy that declared it: right after a
                    // deploy, "never taken" is not behind yet (unless attempts failed).
                    let not_due =
                        since.is_empty() && deployed_at.is_some_and(|at| now - at <= 2 * period);
                    match last_ok {
                        None if not_due => {}
                        None => stale.push(format!(
                            "{who}: scheduled every {}, never taken{failed}",
                            human_ms(period)
                        )),
                        Some(at) if now - at > 2 * period => stale.push(format!(
                            "{who}: last good backup at {} ({} ago), scheduled every {}{failed}",
                            when(at),
                            human_ms(now - at),
                            human_ms(period)
                        )),
                        _ => {}
                    }
                }
                match last_verify {
                    None => unverified.push(format!("{who}: never verified")),
                    Some(at) if now - at > VERIFY_DAYS * day => unverified.push(format!(
                        "{who}: last verified {} days ago",
                        (now - at) / day
                    )),
                    _ => {}
                }
            }
        }
        let f = if !stale.is_empty() {
            Finding::new(
                "backups.stale",
                "fail",
                format!("{} backup(s) behind their schedule", stale.len()),
                "`hoist backups` shows the last error; take one now with `hoist backup NAME`",
            )
            .with_evidence([stale, unverified].concat())
        } else if !unverified.is_empty() {
            Finding::new(
                "backups.stale",
                "warn",
                format!(
                    "{} backup(s) never verified, or not within {VERIFY_DAYS} days",
                    unverified.len()
                ),
                "`hoist backup verify` restores the latest into a scratch place and checks it",
            )
            .with_evidence(unverified)
        } else {
            Finding::new(
                "backups.stale",
                "pass",
                format!("{total} backup(s), each on schedule and verified"),
                "",
            )
        };
        out.push(f);
    }

    fn doctor_state(&self, out: &mut Vec<Finding>) {
        let db = self.paths.state_db().display().to_string();
        let fix = "stop the agent (`hoist agent stop`; the apps keep serving), keep a copy of <root>/state.db*, and rebuild it as the runbook shows";
        // The names of the damaged b-trees are a help, not the check: a schema that cannot
        // be read leaves them out. A check that stops at the first damaged b-tree (SQLite
        // answers SQLITE_CORRUPT instead of a report) is made again table by table.
        let checked = self.db(|s| {
            let roots = s.root_pages().unwrap_or_default();
            s.integrity_check()
                .map(|r| (r, roots.clone()))
                .or_else(|e| {
                    if !e.is_damaged() || roots.is_empty() {
                        return Err(e);
                    }
                    let mut report = Vec::new();
                    for (root, kind, name, _) in &roots {
                        if kind != "table" {
                            continue;
                        }
                        match s.integrity_check_table(name) {
                            Ok(r) if r == "ok" => {}
                            Ok(r) => report.extend(r.lines().map(str::to_string)),
                            // In `integrity_check`'s words ("Tree N: ..."), so the b-trees
                            // are named alike: the table itself when its own pages cannot
                            // be read, else its indexes.
                            Err(e) => {
                                let why = crate::chain(&e);
                                if s.table_readable(name).is_err() {
                                    report.push(format!("Tree {root}: {why}"));
                                } else {
                                    for (root, _, _, _) in roots
                                        .iter()
                                        .filter(|(_, k, _, t)| k == "index" && t == name)
                                    {
                                        report.push(format!("Tree {root}: {why}"));
                                    }
                                }
                            }
                        }
                    }
                    if report.is_empty() {
                        report.push(crate::chain(&e));
                    }
                    Ok((report.join("\n"), roots))
                })
        });
        match checked {
            Ok((r, _)) if r == "ok" => out.push(Finding::new(
                "state.integrity",
                "pass",
                format!("the state database `{db}` passes `PRAGMA integrity_check`"),
                "",
            )),
            Ok((r, roots)) => {
                let damaged = damaged_trees(&r, &roots);
                let why = if damaged.is_empty() {
                    format!("the state database `{db}` fails `PRAGMA integrity_check`")
                } else {
                    format!(
                        "the state database `{db}` fails `PRAGMA integrity_check`: damaged {}",
                        damaged.join(", ")
                    )
                };
                out.push(
                    Finding::new("state.integrity", "fail", why, fix)
                        .with_evidence(r.lines().take(10).map(str::to_string).collect()),
                )
            }
            Err(e) => out.push(Finding::new(
                "state.integrity",
                "fail",
                format!(
                    "the state database `{db}` cannot be checked: {}",
                    crate::chain(&e)
                ),
                if e.is_damaged() {
                    fix
                } else {
                    "see the agent's log and the runbook"
                },
            )),
        }
    }

    /// Processes carrying this root's run-dir marker whose instance is neither in the
    /// table nor a running job.
    fn doctor_strays(&self, out: &mut Vec<Finding>) {
        let run_dir = self.paths.run_dir().display().to_string();
        let known: HashSet<String> = self.rt().instances.keys().cloned().collect();
        let jobs: HashSet<String> = self
            .db(|s| s.job_runs(None, 1000))
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.status == "running")
            .map(|r| crate::jobs::run_instance(r.id))
            .collect();
        let me = std::process::id() as i32;
        let mut strays = Vec::new();
        for p in hoist_supervisor::procfs::all_processes() {
            if p.pid == me || p.state == 'Z' {
                continue;
            }
            let env = environ(p.pid);
            if env.get(hoist_supervisor::RUN_DIR_ENV) != Some(&run_dir) {
                continue;
            }
            let id = env
                .get(hoist_supervisor::INSTANCE_ENV)
                .cloned()
                .unwrap_or_default();
            if !known.contains(&id) && !jobs.contains(&id) {
                strays.push(format!(
                    "pid {} ({}) says it is `{id}`, which no release here owns",
                    p.pid,
                    comm(p.pid)
                ));
            }
        }
        if strays.is_empty() {
            out.push(Finding::new(
                "processes.stray",
                "pass",
                "every process with this root's marker belongs to an instance or a job run",
                "",
            ));
        } else {
            out.push(
                Finding::new(
                    "processes.stray",
                    "fail",
                    format!("{} leftover process(es) no release owns", strays.len()),
                    "check what it is (`ps -o pid,args -p PID`), then end it: `kill PID`",
                )
                .with_evidence(strays),
            );
        }
    }
}

/// A time as RFC 3339 (UTC, seconds).
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A duration in its largest whole unit: `40s`, `12m`, `5h`, `3d`.
fn human_ms(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// What the b-trees `integrity_check` names hold: "Tree 25 page 25: ..." (or, from
/// older SQLite, "Page 25: ...", a root page) → "index `history_by_at` (rebuilt from its
/// table)" or "table `instances` (rows on the damaged pages are lost)".
fn damaged_trees(report: &str, roots: &[(i64, String, String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for line in report.lines() {
        let page = line
            .strip_prefix("Tree ")
            .or_else(|| line.strip_prefix("Page "))
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<i64>().ok());
        let Some((_, kind, name, _)) = page.and_then(|p| roots.iter().find(|(r, _, _, _)| *r == p))
        else {
            continue;
        };
        let what = if kind == "index" {
            format!("index `{name}` (rebuilt from its table)")
        } else {
            format!("table `{name}` (rows on the damaged pages are lost)")
        };
        if !out.contains(&what) {
            out.push(what);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_warn_in_their_last_third_and_at_most_14_days_ahead() {
        const DAY: i64 = 86_400;
        // 60 s (Pebble's): from 40 s, ACME from its latest renewal point.
        assert_eq!(cert_warn_from(Some(0), 60, false), 40);
        assert_eq!(cert_warn_from(Some(0), 60, true), 42);
        // 3 days: the last day.
        assert_eq!(cert_warn_from(Some(0), 3 * DAY, false), 2 * DAY);
        // 90 days and a year: the last 14 days.
        assert_eq!(cert_warn_from(Some(0), 90 * DAY, true), 76 * DAY);
        assert_eq!(cert_warn_from(Some(0), 365 * DAY, false), 351 * DAY);
        // No start known: the last 14 days.
        assert_eq!(cert_warn_from(None, 100 * DAY, false), 86 * DAY);
    }

    #[test]
    fn damaged_trees_are_named_from_either_sqlite_wording() {
        let roots = vec![
            (9, "table".into(), "instances".into(), "instances".into()),
            (25, "index".into(), "history_by_at".into(), "history".into()),
        ];
        let report = "*** in database main ***\nTree 25 page 25: btreeInitPage() returns error code 11\nPage 9: btreeInitPage() returns error code 11\nTree 25 page 25 cell 3: bad\nrow 4 missing from index x";
        assert_eq!(
            damaged_trees(report, &roots),
            [
                "index `history_by_at` (rebuilt from its table)",
                "table `instances` (rows on the damaged pages are lost)"
            ]
        );
    }
}
