//! `hoist shim` as the agent runs it: its one-line report on stdout; its own session, so
//! that a Ctrl-C to the agent's terminal (SIGINT to the foreground process group) never
//! reaches an instance (reliability B14); descriptors the agent leaked stop at the shim.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use hoist_supervisor::procfs::ProcessId;
use hoist_supervisor::{record, InstanceSpec, Signal};
use hoist_testkit::{hoist_bin, tempdir, wait_until, ChildGuard};

const LONG: Duration = Duration::from_secs(30);

/// The shim runs in its own session, out of reach of ChildGuard: if the test fails, ask
/// it to kill its tree at once (SIGUSR2) so nothing outlives the test.
struct KillShimOnDrop(ProcessId);

impl Drop for KillShimOnDrop {
    fn drop(&mut self) {
        if self.0.is_alive() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.pid), Signal::SIGUSR2);
            let _ = wait_until(LONG, || !self.0.is_alive());
        }
    }
}

#[test]
fn a_missing_spec_is_reported_on_stdout_with_exit_1() {
    let dir = tempdir();
    let missing = dir.path().join("nope.spec.json");
    let out = Command::new(hoist_bin())
        .arg("shim")
        .arg("--spec")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("nope.spec.json"), "{error}");
    assert!(report["identity"].is_null());
}

#[test]
fn sigint_to_the_agents_foreground_group_never_reaches_the_instance() {
    let dir = tempdir();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let spec = InstanceSpec {
        instance: "fg".into(),
        app: "demo".into(),
        service: "web".into(),
        release: "r1".into(),
        command: "sleep 1000; true".into(),
        cwd: dir.path().to_path_buf(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(1),
        user: None,
        log_dir: dir.path().join("logs"),
        log_max_bytes: 1 << 20,
        log_keep: 1,
    };
    let spec_path = record::spec_path(&run, "fg");
    record::write_atomic(&spec_path, &spec).unwrap();

    // A foreground agent: `sh` leads the terminal's process group, starts the shim in it
    // (in the background, so that SIGINT ends the group at once instead of `sh` waiting
    // for its foreground child) and sits in the foreground.
    let mut agent = ChildGuard::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 7</dev/null; '{}' shim --spec '{}' & sleep 1000",
                hoist_bin().display(),
                spec_path.display()
            ))
            .stdout(Stdio::piped()),
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(agent.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&line).unwrap();
    let id = |who: &str| ProcessId {
        pid: report["identity"][who]["pid"].as_i64().unwrap() as i32,
        start_time: report["identity"][who]["start_time"].as_u64().unwrap(),
    };
    let (shim, app) = (id("shim"), id("process"));
    let _cleanup = KillShimOnDrop(shim);

    // The agent leaked descriptor 7 (no close-on-exec) into the shim; the app gets only
    // 0, 1 and 2 (reliability J3).
    let fds = |pid: i32| {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        fds.sort();
        fds
    };
    assert!(
        fds(shim.pid).contains(&7),
        "the test must leak a descriptor into the shim"
    );
    assert_eq!(fds(app.pid), vec![0, 1, 2]);

    // Ctrl-C: SIGINT to the whole foreground group. The agent dies; the shim had left the
    // group for its own session, so it and the app live on.
    agent.signal_group(Signal::SIGINT);
    agent.child.wait().unwrap();
    assert!(
        shim.is_alive() && app.is_alive(),
        "the instance died with the foreground group"
    );

    // A stop asked of the shim itself ends the instance and the shim.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim.pid), Signal::SIGTERM).unwrap();
    wait_until(LONG, || !app.is_alive() && !shim.is_alive()).unwrap();
    let exit: hoist_supervisor::ExitInfo = record::read(&record::exit_path(&run, "fg"), "exit")
        .unwrap()
        .unwrap();
    assert!(exit.stop_requested && !exit.killed, "{exit:?}");
}
