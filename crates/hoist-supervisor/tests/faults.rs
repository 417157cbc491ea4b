//! Faults around the shim: a shim that never reports is not waited on forever; a shim
//! SIGKILLed takes its app with it (no app outlives its shim unsupervised); a command
//! without shell syntax is executed directly, so the recorded pid is the app's.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{spec, supervisor, Guard, LONG};
use hoist_supervisor::procfs;
use hoist_supervisor::{Supervisor, SupervisorConfig};
use hoist_testkit::{tempdir, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn a_shim_that_never_reports_is_killed_at_the_handshake_timeout() {
    let root = tempdir();
    // A shim that hangs before its report (as on a stuck disk): it ignores its arguments.
    let hung = root.path().join("hung-shim");
    std::fs::write(&hung, "#!/bin/sh\necho $$ > \"$0.pid\"\nexec sleep 1000\n").unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&hung)
        .status()
        .unwrap();
    let sup = Supervisor::new(SupervisorConfig {
        shim_exe: hung.clone(),
        run_dir: root.path().join("run"),
        handshake_timeout: Duration::from_secs(1),
    })
    .unwrap();
    let spec = spec(root.path(), "hung", "sleep 1000");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(sup.spawn(&spec).map(|_| ()));
    });
    let result = rx
        .recv_timeout(LONG)
        .expect("spawn returned (the handshake has a timeout)");
    let err = result.expect_err("a shim that never reports is a failed start");
    assert!(err.to_string().contains("did not report"), "{err}");
    let pid: i32 = std::fs::read_to_string(root.path().join("hung-shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(LONG, || {
        procfs::Stat::read(pid).is_none_or(|s| s.state == 'Z')
    })
    .expect("the hung shim was killed");
}

#[test]
fn a_sigkilled_shim_takes_its_app_with_it() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let inst = sup
        .spawn(&spec(root.path(), "web-1", "sleep 1000"))
        .unwrap();
    let _g = Guard(inst.clone());
    let app = inst.identity.process;
    assert!(app.is_alive());
    // Our own child: the reaper's pidfd (or its waiting thread) signals its end.
    assert!(inst.end_is_signalled());
    assert!(inst.is_running());
    kill(Pid::from_raw(inst.shim_pid()), Signal::SIGKILL).unwrap();
    wait_until(LONG, || !inst.is_running()).expect("the shim's death was noticed");
    wait_until(LONG, || !app.is_alive()).expect("the app died with its shim");
    // Its record is kept until the agent has dealt with it; nothing is left to end.
    assert!(inst.end_orphan());
}

#[test]
fn a_simple_command_is_executed_directly_and_shell_syntax_still_works() {
    let root = tempdir();
    let sup = supervisor(root.path());
    let inst = sup
        .spawn(&spec(root.path(), "direct", "sleep '1000'"))
        .unwrap();
    let _g = Guard(inst.clone());
    let exe = std::fs::read_link(format!("/proc/{}/exe", inst.app_pid())).unwrap();
    let sleep = std::fs::canonicalize(
        String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v sleep"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim(),
    )
    .unwrap();
    assert_eq!(
        exe, sleep,
        "the recorded pid is the app itself, not a shell"
    );
    let tree = procfs::descendants(inst.shim_pid(), &procfs::all_processes());
    assert_eq!(tree.len(), 1, "one process: {tree:?}");

    // Shell syntax still runs through the shell.
    let shell = sup
        .spawn(&spec(
            root.path(),
            "shell",
            "echo \"$GREETING\" > greeting.txt; exec sleep 1000",
        ))
        .unwrap();
    let _g2 = Guard(shell.clone());
    wait_until(LONG, || {
        std::fs::read_to_string(root.path().join("greeting.txt"))
            .ok()
            .as_deref()
            == Some("hello world\n")
    })
    .unwrap();
}
