//! Keeps the example app under `examples/notes` working as part of `cargo test`: runs its
//! Python test suite (real `app.py`, worker, job and migration processes) and checks that
//! its `hoist.toml` is valid TOML whose commands name files the release ships.
//!
//! It does not judge the app file's semantics; that is `hoist-config`'s job.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use hoist_testkit::{wait_until, ChildGuard};

fn notes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/notes")
}

#[test]
#[allow(clippy::print_stderr)] // a skipped test says why, and a failure shows the output
fn the_notes_python_test_suite_passes() {
    let python = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !python.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `python3` is not installed, so the notes example cannot run");
        return;
    }
    let output = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "unittest", "-v", "test_app"])
        .current_dir(notes_dir())
        // Keep the source tree clean of __pycache__ directories.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("HOIST_DATA_DIR")
        .env_remove("PORT")
        .stdin(Stdio::null())
        .stdout(output.reopen().unwrap())
        .stderr(output.reopen().unwrap());
    // The guard's process group holds every app.py the suite starts.
    let mut suite = ChildGuard::spawn(&mut cmd).unwrap();
    let mut status = None;
    let finished = wait_until(Duration::from_secs(90), || {
        status = suite.child.try_wait().unwrap();
        status.is_some()
    });
    let log = std::fs::read_to_string(output.path()).unwrap();
    assert_eq!(finished, Ok(()), "the notes test suite hung:\n{log}");
    if !status.is_some_and(|s| s.success()) {
        eprintln!("{log}");
        panic!("the notes test suite failed: {status:?}");
    }
    assert!(log.contains("OK"), "{log}");
}

#[test]
fn the_notes_app_file_names_files_that_ship() {
    let text = std::fs::read_to_string(notes_dir().join("hoist.toml")).unwrap();
    let file: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(file["app"].as_str(), Some("notes"));
    let include: Vec<&str> = file["build"]["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();

    let mut commands = vec![file["check"]["command"].as_str().unwrap()];
    for section in ["services", "jobs"] {
        for (_, entry) in file[section].as_table().unwrap() {
            commands.push(entry["command"].as_str().unwrap());
        }
    }
    for (_, hook) in file["hooks"].as_table().unwrap() {
        commands.push(hook.as_str().unwrap());
    }
    for command in commands {
        let script = command.split_whitespace().nth(1).unwrap();
        assert!(
            include.contains(&script),
            "`{command}` runs `{script}`, which `[build] include` leaves out"
        );
        assert!(
            notes_dir().join(script).is_file(),
            "`{command}` runs `{script}`, which does not exist"
        );
    }
    for shipped in &include {
        assert!(
            notes_dir().join(shipped).is_file(),
            "`{shipped}` is included but does not exist"
        );
    }
    // Every module the app imports must ship too; only the test stays behind.
    for entry in std::fs::read_dir(notes_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".py") && name != "test_app.py" {
            assert!(
                include.contains(&name.as_str()),
                "`{name}` is not in `[build] include`"
            );
        }
    }
}
