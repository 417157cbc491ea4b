//! The process-level faults of the test app, checked on the real binary: crash at start
//! and after a delay, slow start, ignoring SIGTERM, leaking memory, logging at a rate,
//! and a child in the app's process group. Flags win over their `TESTAPP_*` variables.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{get, get_json, rss_kib, App, DEADLINE};
use hoist_testkit::wait_until;
use nix::sys::signal::Signal;

#[test]
fn crash_at_start_prints_an_import_error_and_exits_1_before_binding() {
    for mode in ["serve", "worker"] {
        let mut app = App::run(&[mode, "--crash-at-start"]);
        assert_eq!(app.wait_exit().code(), Some(1), "{mode}");
        let stderr = app.stderr_text();
        assert!(
            stderr.contains("ModuleNotFoundError: No module named 'missing_dep'"),
            "{mode}: {stderr}"
        );
        assert!(
            !stderr.contains("listening"),
            "{mode} must not bind: {stderr}"
        );
        assert!(
            app.stdout_lines().is_empty(),
            "{mode} printed {:?}",
            app.stdout_lines()
        );
    }
    let mut cmd = common::command();
    cmd.env("TESTAPP_CRASH_AT_START", "true");
    let mut app = App::start(cmd);
    assert_eq!(app.wait_exit().code(), Some(1));
}

#[test]
fn crash_after_exits_with_the_requested_code_and_the_flag_wins_over_env() {
    let mut cmd = common::command();
    cmd.args([
        "serve",
        "--port",
        "0",
        "--crash-after",
        "1",
        "--exit-code",
        "7",
    ])
    .env("TESTAPP_EXIT_CODE", "3");
    let mut app = App::start(cmd);
    // Whether a request lands before the crash depends on the machine's load, so only
    // the order is checked: it bound, then it crashed with the flag's code.
    assert_eq!(
        app.wait_exit().code(),
        Some(7),
        "stderr:\n{}",
        app.stderr_text()
    );
    assert!(app
        .stdout_lines()
        .iter()
        .any(|l| l.starts_with("listening on ")));

    let mut cmd = common::command();
    cmd.args(["worker", "--tick-ms", "50"])
        .env("TESTAPP_CRASH_AFTER", "0.2")
        .env("TESTAPP_EXIT_CODE", "3");
    let mut app = App::start(cmd);
    assert_eq!(app.wait_exit().code(), Some(3));
    assert!(app
        .stderr_text()
        .contains("crashing after 0.2s with exit code 3"));
}

#[test]
fn slow_start_binds_no_sooner_than_asked() {
    let started = Instant::now();
    let app = App::run(&["serve", "--port", "0", "--slow-start", "0.8"]);
    app.wait_stderr(|l| l.contains("slow start"));
    let addr = app.listening();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "bound after {:?}",
        started.elapsed()
    );
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn sigterm_during_a_slow_start_exits_0_without_binding() {
    let mut app = App::run(&["serve", "--port", "0", "--slow-start", "3600"]);
    app.wait_stderr(|l| l.contains("slow start"));
    app.signal(Signal::SIGTERM);
    assert!(app.wait_exit().success());
    assert!(!app.stderr_text().contains("listening"));
}

#[test]
fn ignore_sigterm_keeps_serving_until_sigkill() {
    let (mut app, addr) = App::serve(&["--ignore-sigterm"]);
    app.signal(Signal::SIGTERM);
    app.wait_stderr(|l| l.contains("sigterm received, ignored"));
    // Answering after the signal was handled proves it survived it.
    assert_eq!(get(addr, "/health").status, 200);
    app.signal(Signal::SIGTERM);
    wait_until(DEADLINE, || {
        app.stderr_text().matches("ignored").count() == 2
    })
    .unwrap();
    assert_eq!(get(addr, "/health").status, 200);

    app.signal(Signal::SIGKILL);
    assert_eq!(app.wait_exit().signal(), Some(Signal::SIGKILL as i32));
}

#[test]
fn leak_grows_resident_memory() {
    let (app, addr) = App::serve(&["--leak-mib-per-sec", "64"]);
    assert_eq!(get(addr, "/health").status, 200);
    let before = rss_kib(app.pid());
    let grown = wait_until(DEADLINE, || rss_kib(app.pid()) > before + 96 * 1024);
    assert_eq!(
        grown,
        Ok(()),
        "RSS stayed near {before} KiB (now {} KiB)",
        rss_kib(app.pid())
    );
}

#[test]
fn log_rate_prints_consecutive_sequence_numbers() {
    let (app, addr) = App::serve(&["--log-rate", "2000"]);
    app.wait_stdout(|l| l == "seq 1000");
    let seq: Vec<u64> = app
        .stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("seq ").map(|n| n.parse().unwrap()))
        .collect();
    let expected: Vec<u64> = (1..=seq.len() as u64).collect();
    assert_eq!(seq, expected, "lines lost, doubled or out of order");
    assert!(get_json(addr, "/stats")["log_seq"].as_u64().unwrap() >= 1000);
}

#[test]
fn spawn_child_starts_sleep_in_the_apps_process_group() {
    let (app, addr) = App::serve(&["--spawn-child"]);
    let child = get_json(addr, "/stats")["child_pid"]
        .as_i64()
        .expect("child_pid") as i32;
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
    // Fields after the command name: state, ppid, pgrp.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[1].parse::<i32>().unwrap(), app.pid(), "parent");
    assert_eq!(
        fields[2].parse::<i32>().unwrap(),
        app.pid(),
        "process group"
    );
    assert!(std::fs::read_to_string(format!("/proc/{child}/cmdline"))
        .unwrap()
        .starts_with("sleep\x003600"));

    // A group kill ends both; the orphaned child is reaped by whoever adopts it.
    app.guard.signal_group(Signal::SIGKILL);
    let gone = wait_until(DEADLINE, || {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    });
    assert_eq!(gone, Ok(()), "the child survived a group kill");
}
