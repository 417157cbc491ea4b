//! The non-HTTP modes of the test app on the real binary: the preflight `check`, the
//! `worker` and the periodic `job` with its run log.

mod common;

use common::App;
use nix::sys::signal::Signal;

#[test]
fn check_passes_or_fails_like_a_missing_python_dependency() {
    let mut app = App::run(&["check"]);
    assert!(app.wait_exit().success());
    assert_eq!(app.stdout_lines(), ["check ok"]);

    let mut app = App::run(&["check", "--fail"]);
    assert_eq!(app.wait_exit().code(), Some(1));
    assert!(app
        .stderr_text()
        .contains("ModuleNotFoundError: No module named 'missing_dep'"));

    for (value, code) in [("1", 1), ("0", 0)] {
        let mut cmd = common::command();
        cmd.arg("check").env("TESTAPP_FAIL_CHECK", value);
        let mut app = App::start(cmd);
        assert_eq!(
            app.wait_exit().code(),
            Some(code),
            "TESTAPP_FAIL_CHECK={value}"
        );
    }
}

#[test]
fn worker_ticks_until_sigterm_then_exits_0() {
    let mut app = App::run(&["worker", "--tick-ms", "20"]);
    app.wait_stdout(|l| l == "worker tick 3");
    let ticks = app.stdout_lines();
    assert_eq!(
        ticks[..3],
        ["worker tick 1", "worker tick 2", "worker tick 3"]
    );
    app.signal(Signal::SIGTERM);
    assert!(app.wait_exit().success());
    assert!(app.stderr_text().contains("exiting"));
}

#[test]
fn worker_honours_ignore_sigterm() {
    let mut app = App::run(&["worker", "--tick-ms", "20", "--ignore-sigterm"]);
    app.wait_stdout(|l| l == "worker tick 1");
    app.signal(Signal::SIGTERM);
    app.wait_stderr(|l| l.contains("sigterm received, ignored"));
    let ticks = app.stdout_lines().len();
    app.wait_stdout(|l| l == format!("worker tick {}", ticks + 1));
    app.signal(Signal::SIGKILL);
    assert!(!app.wait_exit().success());
}

fn job_log(dir: &std::path::Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("job-{name}.log")))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn job_records_start_and_end_and_exits_with_its_code() {
    let dir = hoist_testkit::tempdir();
    for code in ["0", "3"] {
        let mut cmd = common::command();
        cmd.args(["job", "--sleep", "0.05", "--exit", code])
            .env("HOIST_DATA_DIR", dir.path())
            .env("HOIST_SERVICE", "cleanup");
        let mut app = App::start(cmd);
        let pid = app.pid();
        assert_eq!(app.wait_exit().code(), Some(code.parse().unwrap()));
        assert!(app
            .stdout_lines()
            .iter()
            .any(|l| l.contains("job `cleanup` started")));
        let log = job_log(dir.path(), "cleanup");
        let start: Vec<&str> = log[log.len() - 2].split(' ').collect();
        let end: Vec<&str> = log[log.len() - 1].split(' ').collect();
        assert_eq!((start[0], start[2]), ("start", pid.to_string().as_str()));
        assert_eq!(end[0], "end");
        let (started, ended): (u128, u128) = (start[1].parse().unwrap(), end[1].parse().unwrap());
        assert!(
            ended >= started + 50,
            "a run of 50 ms took {} ms",
            ended - started
        );
    }
    assert_eq!(job_log(dir.path(), "cleanup").len(), 4);
}

#[test]
fn a_killed_job_leaves_a_start_without_an_end() {
    let dir = hoist_testkit::tempdir();
    let mut cmd = common::command();
    cmd.args(["job", "--name", "slow", "--sleep", "3600"])
        .env("HOIST_DATA_DIR", dir.path());
    let mut app = App::start(cmd);
    app.wait_stdout(|l| l.contains("started"));
    app.signal(Signal::SIGTERM);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&app.wait_exit()),
        Some(Signal::SIGTERM as i32)
    );
    let log = job_log(dir.path(), "slow");
    assert_eq!(log.len(), 1);
    assert!(log[0].starts_with("start "));
}

#[test]
fn job_without_a_data_dir_fails_with_a_hint() {
    let mut app = App::run(&["job"]);
    assert_eq!(app.wait_exit().code(), Some(1));
    let stderr = app.stderr_text();
    assert!(
        stderr.contains("`HOIST_DATA_DIR` is not set") && stderr.contains("hint:"),
        "{stderr}"
    );
}
