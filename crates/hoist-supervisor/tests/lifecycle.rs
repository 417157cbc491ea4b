//! Spawning and stopping real instances under the real shim: environment, process group,
//! session and descriptors as promised; graceful stop; SIGKILL after `stop_timeout`; whole
//! trees and escaped descendants killed; zombies reaped; exit records; privilege drop.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use common::{seqs, spec, status_field, supervisor, Guard, LONG};
use hoist_supervisor::procfs::{self, ProcessId, Stat};
use hoist_testkit::{tempdir, wait_until};

fn environ(pid: i32) -> BTreeMap<String, String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let s = String::from_utf8_lossy(kv);
            let (k, v) = s.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn app_gets_exactly_its_env_its_own_group_and_session_and_only_fds_0_1_2() {
    let root = tempdir();
    let sup = supervisor(root.path());
    // `sleep; true` keeps sh itself alive (no exec), so its environ is what the shim passed.
    let inst = sup
        .spawn(&spec(
            root.path(),
            "web-1",
            "echo out; echo err >&2; sleep 1000; true",
        ))
        .unwrap();
    let _g = Guard(inst.clone());
    let pid = inst.app_pid();
    // Once the shell waits for `sleep`: while it starts a command, dash blocks every signal
    // around its vfork, which would show in SigBlk below.
    wait_until(LONG, || {
        procfs::descendants(pid, &procfs::all_processes())
            .iter()
            .any(|p| {
                std::fs::read_to_string(format!("/proc/{}/comm", p.pid))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
    })
    .unwrap();

    let env = environ(pid);
    let want: BTreeMap<String, String> = [
        ("PATH", "/usr/bin:/bin"),
        ("GREETING", "hello world"),
        ("HOIST_INSTANCE", "web-1"),
        ("HOIST_RUN_DIR", sup.run_dir().to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(
        env, want,
        "the app's environment is exactly the declared one"
    );

    // No signal blocked or ignored: the app can be stopped gracefully.
    assert_eq!(status_field(pid, "SigBlk").unwrap(), "0000000000000000");
    // (glibc's internal real-time signals 32 and 33 may show as ignored; apps never see them.)
    let ignored = u64::from_str_radix(&status_field(pid, "SigIgn").unwrap(), 16).unwrap();
    assert_eq!(
        ignored & 0x7fff_ffff,
        0,
        "standard signals ignored: {ignored:#x}"
    );

    let stat = Stat::read(pid).unwrap();
    assert_eq!(stat.pgid, pid, "the app leads its own process group");
    assert_eq!(
        stat.session,
        inst.shim_pid(),
        "the app is in the shim's own session"
    );
    let ours = Stat::read(std::process::id() as i32).unwrap();
    assert_ne!(
        stat.session, ours.session,
        "not in the agent's session (Ctrl-C never reaches it)"
    );
    assert_eq!(
        Stat::read(inst.shim_pid()).unwrap().ppid,
        std::process::id() as i32
    );

    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, vec![0, 1, 2]);

    wait_until(LONG, || {
        let lines =
            hoist_supervisor::logs::read(&root.path().join("logs"), "web", &Default::default())
                .unwrap();
        lines
            .iter()
            .any(|l| l.stream == "stdout" && l.line == "out")
            && lines
                .iter()
                .any(|l| l.stream == "stderr" && l.line == "err" && l.instance == "web-1")
    })
    .unwrap();

    // Graceful stop: SIGTERM ends sh at once, no SIGKILL needed.
    inst.stop().unwrap();
    assert!(inst.wait_stopped(LONG));
    let exit = inst.exit_status().unwrap().unwrap();
    assert_eq!(exit.signal.as_deref(), Some("SIGTERM"), "{exit:?}");
    assert!(
        exit.stop_requested && !exit.killed && !exit.is_failure(),
        "{exit:?}"
    );
    assert!(!ProcessId {
        pid,
        start_time: inst.identity.process.start_time
    }
    .is_alive());
    // The shim was reaped by the supervisor: no zombie left under this process.
    wait_until(LONG, || {
        Stat::read(inst.shim_pid()).is_none_or(|s| s.ppid != std::process::id() as i32)
    })
    .unwrap();
}

#[test]
fn sigterm_ignored_means_sigkill_to_the_group_after_stop_timeout() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let mut s = spec(
        root.path(),
        "stubborn",
        "trap '' TERM; sleep 1000 & sleep 1000 & wait",
    );
    s.stop_timeout = Duration::from_millis(700);
    let inst = sup.spawn(&s).unwrap();
    let _g = Guard(inst.clone());
    wait_until(LONG, || {
        procfs::group_members(inst.app_pid(), &procfs::all_processes()).len() == 3
    })
    .unwrap();

    let asked = Instant::now();
    inst.stop().unwrap();
    assert!(inst.wait_stopped(LONG));
    assert!(
        asked.elapsed() >= s.stop_timeout,
        "killed before the stop timeout"
    );
    let exit = inst.exit_status().unwrap().unwrap();
    assert!(exit.killed && exit.stop_requested, "{exit:?}");
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
    assert!(
        procfs::group_members(inst.app_pid(), &procfs::all_processes()).is_empty(),
        "survivors in the group"
    );
}

#[test]
fn a_whole_tree_and_a_double_forked_setsid_escapee_are_stopped() {
    let root = tempdir();
    let sup = supervisor(root.path());
    // Two children in the group, and a grandchild that leaves: its parent subshell exits
    // (re-parenting it to the shim, the subreaper) and it starts its own session.
    let cmd = "sleep 1000 & sleep 1000 & (setsid sleep 1000 &); wait";
    let inst = sup.spawn(&spec(root.path(), "tree", cmd)).unwrap();
    let _g = Guard(inst.clone());
    let mut tree = Vec::new();
    wait_until(LONG, || {
        tree = procfs::descendants(inst.shim_pid(), &procfs::all_processes());
        tree.len() == 4
            && tree
                .iter()
                .any(|p| p.session == p.pid && p.ppid == inst.shim_pid())
    })
    .unwrap();
    let escapee = tree.iter().find(|p| p.session == p.pid).unwrap();
    assert_ne!(
        escapee.pgid,
        inst.app_pid(),
        "the escapee left the app's group"
    );
    let ids: Vec<ProcessId> = tree
        .iter()
        .map(|p| ProcessId {
            pid: p.pid,
            start_time: p.start_time,
        })
        .collect();
    assert_eq!(inst.stats().processes, 4);

    inst.stop().unwrap();
    assert!(inst.wait_stopped(LONG));
    let survivors: Vec<_> = ids.iter().filter(|p| p.is_alive()).collect();
    assert!(survivors.is_empty(), "survivors: {survivors:?}");
    let exit = inst.exit_status().unwrap().unwrap();
    assert!(
        !exit.killed,
        "the escapee got the stop signal too, no SIGKILL needed: {exit:?}"
    );
}

#[test]
fn orphaned_short_lived_descendants_are_reaped_not_left_as_zombies() {
    let root = tempdir();
    let sup = supervisor(root.path());
    // 300 grandchildren whose parents exit first: each is re-parented to the shim.
    let cmd = "i=0; while [ $i -lt 300 ]; do (true &); i=$((i+1)); done; echo done; sleep 1000";
    let inst = sup.spawn(&spec(root.path(), "forky", cmd)).unwrap();
    let _g = Guard(inst.clone());
    wait_until(LONG, || {
        hoist_supervisor::logs::read(&root.path().join("logs"), "web", &Default::default())
            .unwrap()
            .iter()
            .any(|l| l.line == "done")
    })
    .unwrap();
    let zombies = || {
        procfs::all_processes()
            .into_iter()
            .filter(|p| p.ppid == inst.shim_pid() && p.state == 'Z')
            .count()
    };
    wait_until(LONG, || zombies() == 0).unwrap();
}

#[test]
fn the_app_exiting_on_its_own_is_recorded_and_its_leftovers_killed() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let inst = sup
        .spawn(&spec(root.path(), "crash", "sleep 1000 & echo bye; exit 3"))
        .unwrap();
    let _g = Guard(inst.clone());
    assert!(inst.wait_stopped(LONG));
    let exit = inst.exit_status().unwrap().unwrap();
    assert_eq!(exit.code, Some(3));
    assert!(exit.is_failure() && !exit.stop_requested, "{exit:?}");
    assert!(procfs::group_members(inst.app_pid(), &procfs::all_processes()).is_empty());
    let lines = hoist_supervisor::logs::read(&root.path().join("logs"), "web", &Default::default())
        .unwrap();
    assert!(
        lines.iter().any(|l| l.line == "bye"),
        "the last words are logged"
    );

    // Its records can be forgotten and the id reused.
    sup.forget("crash").unwrap();
    let again = sup.spawn(&spec(root.path(), "crash", "exit 0")).unwrap();
    assert!(again.wait_stopped(LONG));
    assert_eq!(again.exit_status().unwrap().unwrap().code, Some(0));
}

#[test]
fn a_running_instance_id_cannot_be_spawned_twice_and_kill_now_is_immediate() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let mut s = spec(root.path(), "once", "trap '' TERM; sleep 1000");
    s.stop_timeout = Duration::from_secs(3600);
    let inst = sup.spawn(&s).unwrap();
    let _g = Guard(inst.clone());
    let err = sup.spawn(&s).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    assert!(
        sup.forget("once").is_err(),
        "records of a live instance are kept"
    );

    inst.stop().unwrap();
    inst.kill_now().unwrap();
    assert!(
        inst.wait_stopped(LONG),
        "kill_now does not wait for the hour-long stop timeout"
    );
    assert!(inst.exit_status().unwrap().unwrap().killed);
}

#[test]
fn a_missing_cwd_is_reported_as_a_spawn_error() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let mut s = spec(root.path(), "nowhere", "true");
    s.cwd = root.path().join("missing");
    let err = sup.spawn(&s).unwrap_err().to_string();
    assert!(err.contains("nowhere") && err.contains("missing"), "{err}");
    assert!(
        !hoist_supervisor::record::spec_path(&common::run_dir(root.path()), "nowhere").exists()
    );
}

#[test]
fn rss_of_a_growing_tree_is_summed_over_its_processes() {
    let root = tempdir();
    let sup = supervisor(root.path());
    // Two `tail`s each buffer 40 MB of a pipe whose writer stays open.
    let hold = "{ head -c 40000000 /dev/zero; sleep 1000; } | tail -c 40000000";
    let inst = sup
        .spawn(&spec(
            root.path(),
            "fat",
            &format!("{hold} & {hold} & wait"),
        ))
        .unwrap();
    let _g = Guard(inst.clone());
    let limit = 60 * 1024 * 1024;
    wait_until(LONG, || {
        hoist_supervisor::memory_exceeded(&inst.stats(), limit)
    })
    .unwrap();
    let stats = inst.stats();
    let biggest = procfs::descendants(inst.shim_pid(), &procfs::all_processes())
        .iter()
        .map(|p| procfs::sum_stats(std::slice::from_ref(p)).rss_bytes)
        .max()
        .unwrap();
    assert!(
        biggest < limit,
        "one process alone is under the limit: the sum is what crosses it"
    );
    // At least the shell and the two `tail`s (the rest come and go as the pipes fill).
    assert!(stats.processes >= 3, "{stats:?}");
    // What the agent does at the limit: a graceful stop, recorded.
    inst.stop().unwrap();
    assert!(inst.wait_stopped(LONG));
    assert!(inst.exit_status().unwrap().unwrap().stop_requested);
    assert_eq!(inst.stats().processes, 0);
}

#[test]
fn rotation_keeps_at_most_keep_files_each_within_max_bytes() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let mut s = spec(
        root.path(),
        "chatty",
        "i=0; while [ $i -lt 3000 ]; do echo \"seq $i\"; i=$((i+1)); done",
    );
    s.log_max_bytes = 16 * 1024;
    s.log_keep = 2;
    let inst = sup.spawn(&s).unwrap();
    assert!(inst.wait_stopped(LONG));
    let files: Vec<_> = fs::read_dir(root.path().join("logs/web"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert!(
            fs::metadata(f).unwrap().len() <= 16 * 1024,
            "{} too big",
            f.display()
        );
    }
    let got = seqs(&root.path().join("logs"), "web");
    assert_eq!(*got.last().unwrap(), 2999);
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "the kept lines are contiguous"
    );
}

#[test]
#[allow(clippy::print_stderr)] // the skip notice when not root
fn user_drops_to_that_users_ids_and_groups_without_new_privileges() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to change user");
        return;
    }
    let root = tempdir();
    let sup = supervisor(root.path());
    let mut s = spec(root.path(), "dropped", "sleep 1000; true");
    s.user = Some("nobody".into());
    s.cwd = "/".into();
    let inst = sup.spawn(&s).unwrap();
    let _g = Guard(inst.clone());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let pid = inst.app_pid();
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    assert_eq!(
        status_field(pid, "Uid")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![uid.as_str(); 4]
    );
    assert_eq!(
        status_field(pid, "Gid")
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec![gid.as_str(); 4]
    );
    assert_eq!(status_field(pid, "Groups").unwrap(), gid);
    assert_eq!(status_field(pid, "NoNewPrivs").unwrap(), "1");
    assert_eq!(status_field(pid, "CapEff").unwrap(), "0000000000000000");

    let mut bad = spec(root.path(), "ghost", "true");
    bad.user = Some("no-such-user-hoist".into());
    let err = sup.spawn(&bad).unwrap_err().to_string();
    assert!(err.contains("no-such-user-hoist"), "{err}");
}

/// A small tmpfs mounted for one test, lazily unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
#[allow(clippy::print_stderr)] // the skip notice when tmpfs cannot be mounted
fn a_full_log_disk_never_blocks_the_app_and_every_dropped_line_is_counted() {
    let root = tempdir();
    let Some(_disk) = Tmpfs::mount(&root.path().join("logs"), "128k") else {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let sup = supervisor(root.path());
    let total = 5000;
    let cmd = format!("i=0; while [ $i -lt {total} ]; do echo \"seq $i\"; i=$((i+1)); done");
    let inst = sup.spawn(&spec(root.path(), "full", &cmd)).unwrap();
    // If the shim stopped draining the pipe, the app would block here forever.
    assert!(
        inst.wait_stopped(LONG),
        "the app blocked on a full log disk"
    );
    let exit = inst.exit_status().unwrap().unwrap();
    assert_eq!(exit.code, Some(0));
    let logged = seqs(&root.path().join("logs"), "web");
    assert!(exit.dropped_lines > 0, "the disk never filled");
    assert_eq!(
        logged.len() as u64 + exit.dropped_lines,
        total,
        "drops counted exactly"
    );
    assert_eq!(
        logged,
        (0..logged.len() as u64).collect::<Vec<_>>(),
        "what fits is kept in order"
    );
}
