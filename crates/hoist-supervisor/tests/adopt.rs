//! The agent's death is not the app's: instances spawned by a process that is then
//! SIGKILLed keep running and logging, are re-adopted by identity (pid + start time), and
//! lose no log line across repeated "agent" kills. Records that point at unrelated live
//! processes are never adopted nor signalled; apps whose shim died are killed only when
//! they carry their identity marker.
//!
//! The "agent" is this test binary re-run as the ignored `helper_agent` test, so it can be
//! killed with SIGKILL like the real one.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;
use common::{seqs, spec, supervisor, RunDirGuard, LONG};
use hoist_supervisor::procfs::{self, ProcessId};
use hoist_supervisor::{record, Adopted, IdentityRecord, InstanceSpec};
use hoist_testkit::{tempdir, wait_until, ChildGuard};
use nix::sys::signal::Signal;

const HELPER_ROOT: &str = "HOIST_SUPERVISOR_HELPER_ROOT";
const HELPER_MODE: &str = "HOIST_SUPERVISOR_HELPER_MODE";

/// Not a test: the sacrificial agent. `spawn` starts `<root>/spec.json` and writes the
/// identity to `<root>/spawned.json`; `adopt:N` adopts and writes `<root>/adopted-N.json`.
/// Then it waits to be killed.
#[test]
#[ignore = "helper process for the other tests"]
fn helper_agent() {
    let (Ok(root), Ok(mode)) = (std::env::var(HELPER_ROOT), std::env::var(HELPER_MODE)) else {
        return;
    };
    let root = PathBuf::from(root);
    let sup = supervisor(&root);
    if mode == "spawn" {
        let spec: InstanceSpec = record::read(&root.join("spec.json"), "spec")
            .unwrap()
            .unwrap();
        let inst = sup.spawn(&spec).unwrap();
        record::write_atomic(&root.join("spawned.json"), &inst.identity).unwrap();
    } else if let Some(n) = mode.strip_prefix("adopt:") {
        let running: Vec<IdentityRecord> = sup
            .adopt()
            .unwrap()
            .into_iter()
            .filter_map(|a| match a {
                Adopted::Running(i) => Some(i.identity),
                Adopted::Exited { .. } => None,
            })
            .collect();
        record::write_atomic(&root.join(format!("adopted-{n}.json")), &running).unwrap();
    }
    loop {
        std::thread::park();
    }
}

/// Runs the helper agent in `mode` and waits for the file it writes.
fn helper(root: &Path, mode: &str, output: &str) -> ChildGuard {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "helper_agent",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(HELPER_ROOT, root)
    .env(HELPER_MODE, mode)
    .stdout(std::process::Stdio::null());
    let guard = ChildGuard::spawn(&mut cmd).unwrap();
    wait_until(LONG, || root.join(output).exists()).unwrap();
    guard
}

fn kill9(mut g: ChildGuard) {
    g.signal_group(Signal::SIGKILL);
    let _ = g.child.wait();
}

/// Instance `web-1` running `command` under `root`, spawned by a helper agent that is
/// then SIGKILLed: its identity record, for a new supervisor to adopt.
fn spawned_by_a_killed_agent(root: &Path, command: &str) -> IdentityRecord {
    record::write_atomic(&root.join("spec.json"), &spec(root, "web-1", command)).unwrap();
    let agent = helper(root, "spawn", "spawned.json");
    let id = record::read(&root.join("spawned.json"), "identity")
        .unwrap()
        .unwrap();
    kill9(agent);
    id
}

#[test]
fn instances_outlive_a_killed_agent_are_readopted_and_lose_no_log_line() {
    let root = tempdir();
    let _cleanup = RunDirGuard(root.path().to_path_buf());
    // A few thousand `seq N` lines a second, each flushed as written.
    let printer = "awk 'BEGIN { for (i = 0; ; i++) { print \"seq \" i; fflush(); if (i % 20 == 0) system(\"sleep 0.005\") } }'";
    let id = spawned_by_a_killed_agent(root.path(), printer);

    let logs = root.path().join("logs");
    let mut seen = 0;
    for round in 0..10 {
        assert!(
            id.shim.is_alive() && id.process.is_alive(),
            "round {round}: the instance died with its agent"
        );
        // The app keeps writing while no agent runs.
        wait_until(LONG, || seqs(&logs, "web").len() > seen + 500).unwrap();
        seen = seqs(&logs, "web").len();
        let again = helper(
            root.path(),
            &format!("adopt:{round}"),
            &format!("adopted-{round}.json"),
        );
        let adopted: Vec<IdentityRecord> = record::read(
            &root.path().join(format!("adopted-{round}.json")),
            "adopted",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            adopted,
            vec![id.clone()],
            "round {round}: adopted by identity, same pids"
        );
        kill9(again);
    }

    let found = supervisor(root.path()).adopt().unwrap();
    let [Adopted::Running(inst)] = found.as_slice() else {
        panic!("expected one running instance: {found:?}")
    };
    assert_eq!(inst.identity, id);
    inst.stop().unwrap();
    assert!(inst.wait_stopped(LONG));

    let got = seqs(&logs, "web");
    let expected: Vec<u64> = (0..got.len() as u64).collect();
    assert!(got.len() > 5000, "{} lines", got.len());
    assert!(
        got == expected,
        "lost or doubled lines: first mismatch at {:?}",
        got.iter().zip(&expected).position(|(a, b)| a != b)
    );
    // No orphan: nothing of the instance is left.
    assert!(!id.shim.is_alive() && !id.process.is_alive());
}

fn fake_record(run_dir: &Path, instance: &str, shim: ProcessId, process: ProcessId) {
    let rec = IdentityRecord {
        instance: instance.into(),
        app: "demo".into(),
        service: "web".into(),
        release: "r1".into(),
        shim,
        process,
        started_at: Utc::now(),
    };
    record::write_atomic(&record::identity_path(run_dir, instance), &rec).unwrap();
}

#[test]
fn records_pointing_at_unrelated_processes_are_neither_adopted_nor_signalled() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let run = common::run_dir(root.path());
    let mut stranger = ChildGuard::spawn(Command::new("sleep").arg("1000")).unwrap();
    let real = ProcessId::of(stranger.pid() as i32).unwrap();
    let reused = ProcessId {
        start_time: real.start_time + 1,
        ..real
    };
    // Its pid, as if recycled after our shim and app died (B7).
    fake_record(&run, "reused", reused, reused);
    // Its exact identity as the app, but it carries no HOIST_INSTANCE marker.
    fake_record(&run, "unmarked", reused, real);
    fs::write(record::identity_path(&run, "garbage"), b"{ not json").unwrap();

    let found = sup.adopt().unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    for a in &found {
        match a {
            Adopted::Exited {
                orphan_killed,
                exit,
                ..
            } => assert!(!orphan_killed && exit.is_none(), "{a:?}"),
            Adopted::Running(_) => panic!("adopted a stranger: {a:?}"),
        }
    }
    assert!(real.is_alive(), "the stranger was signalled");
    assert_eq!(stranger.child.try_wait().unwrap(), None);
}

#[test]
fn an_app_whose_shim_died_is_killed_when_it_carries_its_marker() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let run = common::run_dir(root.path());
    // The app and a descendant that escaped its group (and this test's ChildGuard).
    let orphan = ChildGuard::spawn(
        Command::new("sh")
            .args(["-c", "(setsid sleep 1000 &); sleep 1000; true"])
            .env_clear()
            .env("HOIST_INSTANCE", "orphan")
            .env("HOIST_RUN_DIR", sup.run_dir()),
    )
    .unwrap();
    let app = ProcessId::of(orphan.pid() as i32).unwrap();
    let dead_shim = ProcessId {
        pid: app.pid,
        start_time: app.start_time + 1,
    };
    fake_record(&run, "orphan", dead_shim, app);
    let mut escapee = None;
    wait_until(LONG, || {
        escapee = procfs::all_processes()
            .into_iter()
            .find(|p| {
                p.session == p.pid
                    && p.pid != app.pid
                    && procfs::environ_has(p.pid, "HOIST_INSTANCE", "orphan")
            })
            .map(|p| ProcessId {
                pid: p.pid,
                start_time: p.start_time,
            });
        escapee.is_some()
    })
    .unwrap();
    let escapee = KillOnDrop(escapee.unwrap());

    let found = sup.adopt().unwrap();
    assert!(
        matches!(
            found.as_slice(),
            [Adopted::Exited {
                orphan_killed: true,
                ..
            }]
        ),
        "{found:?}"
    );
    wait_until(LONG, || !app.is_alive() && !escapee.0.is_alive()).unwrap();
}

/// Two agents on two roots may run the same release, so the same instance ids: an
/// orphan found under one root is killed only if it carries that root's run directory.
#[test]
fn an_orphan_of_the_same_id_under_another_root_is_never_signalled() {
    let root = tempdir();
    let other = tempdir();
    let sup = supervisor(root.path());
    let other_sup = supervisor(other.path());
    let run = common::run_dir(root.path());
    // Our app died with its shim; its record is all that is left.
    let mut gone = ChildGuard::spawn(&mut Command::new("true")).unwrap();
    let dead_app = ProcessId::of(gone.pid() as i32).unwrap();
    let _ = gone.child.wait();
    // The other root's instance of the same id, started later, marked with its root.
    let mut theirs = ChildGuard::spawn(
        Command::new("sleep")
            .arg("1000")
            .env_clear()
            .env("HOIST_INSTANCE", "same")
            .env("HOIST_RUN_DIR", other_sup.run_dir()),
    )
    .unwrap();
    let theirs_id = ProcessId::of(theirs.pid() as i32).unwrap();
    assert!(theirs_id.start_time >= dead_app.start_time);
    fake_record(&run, "same", dead_app, dead_app);

    let found = sup.adopt().unwrap();
    assert!(
        matches!(
            found.as_slice(),
            [Adopted::Exited {
                orphan_killed: false,
                ..
            }]
        ),
        "{found:?}"
    );
    assert!(theirs_id.is_alive(), "another root's instance was killed");
    assert_eq!(theirs.child.try_wait().unwrap(), None);
}

/// Kills a process this test started outside any ChildGuard, if it is still that process.
struct KillOnDrop(ProcessId);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.is_alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.pid), Signal::SIGKILL);
        }
    }
}

/// An adopted shim is not this process's child: its end is signalled through its pidfd,
/// and a SIGKILL is noticed by `is_running` (which then reads a flag, not `/proc`),
/// recorded without an exit, and leaves nothing of its app.
#[test]
fn an_adopted_shim_killed_with_sigkill_is_noticed_through_its_pidfd() {
    let root = tempdir();
    let _cleanup = RunDirGuard(root.path().to_path_buf());
    let id = spawned_by_a_killed_agent(root.path(), "sleep 1000");

    let found = supervisor(root.path()).adopt().unwrap();
    let [Adopted::Running(inst)] = found.as_slice() else {
        panic!("expected one running instance: {found:?}")
    };
    assert!(
        inst.end_is_signalled(),
        "no pidfd for the adopted shim (pidfd_open refused: Linux before 5.3, or seccomp?)"
    );
    assert!(inst.is_running());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(id.shim.pid), Signal::SIGKILL).unwrap();
    wait_until(LONG, || !inst.is_running()).expect("the adopted shim's death was noticed");
    assert!(!id.shim.is_alive());
    let exit = inst
        .exit_status()
        .unwrap()
        .expect("an ended instance has an exit");
    assert!(exit.code.is_none() && exit.signal.is_none(), "{exit:?}");
    assert!(inst.end_orphan(), "the app outlived its shim");
    assert!(!id.process.is_alive());
}
