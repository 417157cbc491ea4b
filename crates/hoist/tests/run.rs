//! `hoist run` (issue 17 item 2): the notes example built, deployed to a private agent in a
//! scratch directory, seeded, tested with `HOIST_URL`, and everything stopped and removed
//! afterwards — when the tests pass, fail, or `hoist run` is interrupted. The scratch
//! directory is made under the test's own temp dir (`TMPDIR`), so "nothing left" is
//! checked over every process that names it.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hoist_testkit::{hoist_bin, processes_under, tempdir, wait_until, workspace_root, ChildGuard};

struct Project {
    _procs: hoist_testkit::RootGuard,
    _dir: tempfile::TempDir,
    dir: PathBuf,
    app: PathBuf,
}

/// A copy of `examples/notes` with a `[run]` section: the seed writes a note straight
/// into the fresh database (after the migration), the test asks the live web service for it.
fn project(run: &str) -> Project {
    let d = tempdir();
    let dir = d.path().to_path_buf();
    let app = dir.join("notes");
    std::fs::create_dir(&app).unwrap();
    let src = workspace_root().join("examples/notes");
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), app.join(e.file_name())).unwrap();
        }
    }
    std::fs::write(app.join("seed.py"), SEED).unwrap();
    std::fs::write(app.join("check_seeded.py"), CHECK).unwrap();
    let toml = std::fs::read_to_string(app.join("hoist.toml")).unwrap();
    // The example's own `[run]` (its last section) gives way to the test's.
    let toml = toml.split("\n[run]").next().unwrap().replace(
        "\"notes_db.py\"]",
        "\"notes_db.py\", \"seed.py\", \"check_seeded.py\"]",
    );
    std::fs::write(app.join("hoist.toml"), format!("{toml}\n{run}\n")).unwrap();
    Project {
        _procs: hoist_testkit::RootGuard::new(&dir),
        _dir: d,
        dir,
        app,
    }
}

const SEED: &str = r#"import os, sqlite3
db = sqlite3.connect(os.path.join(os.environ["HOIST_DATA_DIR"], "notes.db"))
db.execute("INSERT INTO notes (body, created_at) VALUES ('seeded by hoist run', 0)")
db.commit()
print("seeded")
"#;

const CHECK: &str = r#"import json, os, sys, urllib.request
notes = json.load(urllib.request.urlopen(os.environ["HOIST_URL"] + "/api/notes", timeout=10))
print("notes:", [n["body"] for n in notes])
# The test runs in the unpacked release, not in the project.
assert os.path.exists("check_seeded.py") and not os.path.exists("hoist.toml"), os.getcwd()
sys.exit(0 if any(n["body"] == "seeded by hoist run" for n in notes) else 1)
"#;

const RUN: &str = "[run]\nseed = \"python3 seed.py\"\ntest = \"python3 check_seeded.py\"";

impl Project {
    fn hoist(&self) -> Command {
        let mut c = Command::new(hoist_bin());
        c.current_dir(&self.app)
            .env("TMPDIR", &self.dir)
            .env_remove("HOIST_SOCKET")
            .env_remove("HOIST_ROOT");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.hoist()
            .arg("run")
            .args(args)
            .output()
            .expect("hoist run")
    }

    /// Nothing `hoist run` started is alive and its scratch directory is gone.
    fn assert_clean(&self) {
        let left = processes_under(&self.dir);
        assert!(left.is_empty(), "processes left running: {left:?}");
        let scratch: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("hoist-run-"))
            .collect();
        assert!(scratch.is_empty(), "scratch left: {scratch:?}");
    }
}

fn line_after<'a>(stdout: &'a str, word: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(word))
        .unwrap_or_else(|| panic!("no `{word}` line in:\n{stdout}"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn passing_tests_against_the_seeded_release_exit_0_with_the_deploy_release_id() {
    let p = project(RUN);
    let built = p.hoist().args(["build", "--json"]).output().unwrap();
    assert!(built.status.success(), "{:?}", text(&built));
    let built: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();

    let o = p.run(&[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    // The release `hoist deploy` of this tree ships.
    assert_eq!(
        line_after(&out, "release "),
        built["release"].as_str().unwrap()
    );
    assert!(out.contains("seeded by hoist run"), "{out}");
    assert!(err.contains("seeded"), "the seed ran: {err}");

    let results = PathBuf::from(line_after(&out, "results "));
    assert!(
        results.starts_with(p.app.join(".hoist/runs")),
        "{results:?}"
    );
    let log = std::fs::read_to_string(results.join("test.log")).unwrap();
    assert!(log.contains("seeded by hoist run"), "{log}");
    assert!(std::fs::metadata(results.join("agent.log")).is_ok());
    let web_logs = std::fs::read_dir(results.join("logs/web")).unwrap().count();
    assert!(web_logs >= 2, "one log per web replica: {web_logs}");
    p.assert_clean();
}

#[test]
fn failing_tests_pass_on_their_status_and_skip_build_reuses_the_artifact() {
    let p = project(RUN);
    // Nothing built yet: --skip-build has nothing to take.
    let o = p.run(&["--skip-build"]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("hoist build"), "{:?}", text(&o));

    let built = p.hoist().args(["build", "--json"]).output().unwrap();
    let built: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let artifact = PathBuf::from(built["path"].as_str().unwrap());
    // A change in the tree after the build: --skip-build must not rebuild it in.
    std::fs::write(
        p.app.join("check.py"),
        "raise SystemExit('not this tree')\n",
    )
    .unwrap();
    let before = std::fs::metadata(&artifact).unwrap().modified().unwrap();

    let o = p.run(&[
        "--skip-build",
        "--",
        "sh",
        "-c",
        "echo about to fail; exit 7",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}\n{err}");
    assert!(!err.contains("Built"), "--skip-build built: {err}");
    assert_eq!(
        line_after(&out, "release "),
        built["release"].as_str().unwrap()
    );
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        before
    );
    let results = PathBuf::from(line_after(&out, "results "));
    let log = std::fs::read_to_string(results.join("test.log")).unwrap();
    assert!(log.contains("about to fail"), "{log}");
    p.assert_clean();
}

/// Starts `hoist run` whose test writes its pid to a marker and sleeps, then sends `sig`.
fn interrupted(sig: nix::sys::signal::Signal) {
    let p = project(RUN);
    let marker = p.dir.join("test-pid");
    let mut child = ChildGuard::spawn(
        p.hoist()
            .arg("run")
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}; exec sleep 600", marker.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_until(Duration::from_secs(120), || {
        std::fs::read_to_string(&marker).is_ok_and(|s| s.ends_with('\n'))
    })
    .expect("the test command started");
    let test_pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The private agent, its proxy and the app are running now.
    assert!(
        processes_under(&p.dir).len() >= 4,
        "{:?}",
        processes_under(&p.dir)
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.pid() as i32), sig).unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(60), || {
        status = child.child.try_wait().unwrap();
        status.is_some()
    })
    .expect("hoist run ended");
    assert_eq!(status.unwrap().code(), Some(128 + sig as i32));
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rfind(')')
                .is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z'))
        })
    };
    assert!(!alive(test_pid), "the test command is still running");
    p.assert_clean();
}

#[test]
fn sigterm_mid_test_stops_everything_and_removes_the_scratch() {
    interrupted(nix::sys::signal::Signal::SIGTERM);
}

#[test]
fn ctrl_c_mid_test_stops_everything_and_removes_the_scratch() {
    interrupted(nix::sys::signal::Signal::SIGINT);
}

/// Issue 17 item 3: `examples/greeter` vendors Flask (from PyPI) into `vendor/` at build
/// time; `hoist inspect` lists the vendored packages; `hoist run` serves the release, whose
/// Flask is imported from its own `vendor/` (the system's Flask is not used).
#[test]
fn the_vendored_flask_example_is_inspected_and_passes_hoist_run() {
    let d = tempdir();
    let dir = d.path().to_path_buf();
    let _procs = hoist_testkit::RootGuard::new(&dir);
    let app = dir.join("greeter");
    std::fs::create_dir(&app).unwrap();
    for e in std::fs::read_dir(workspace_root().join("examples/greeter")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), app.join(e.file_name())).unwrap();
        }
    }
    let o = Command::new(hoist_bin())
        .arg("run")
        .current_dir(&app)
        .env("TMPDIR", &dir)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    assert!(out.contains("/vendor/flask/"), "{out}");
    let release = line_after(&out, "release ");

    let artifact = app.join(format!(".hoist/greeter-{release}.tar.zst"));
    let o = Command::new(hoist_bin())
        .args(["inspect", "--json"])
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(o.status.success(), "{:?}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["vendored"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["dir"] == "vendor")
        .filter_map(|p| p["name"].as_str())
        .collect();
    for dep in ["flask", "werkzeug", "jinja2"] {
        assert!(names.contains(&dep), "{dep} not listed: {names:?}");
    }
    let o = Command::new(hoist_bin())
        .arg("inspect")
        .arg(&artifact)
        .output()
        .unwrap();
    assert!(text(&o).0.contains("vendored"), "{:?}", text(&o));
    assert!(processes_under(&dir).is_empty());
}

/// A seed that fails stops the run before the tests: exit 1 naming the step, the results
/// folder still printed with the agent's log, nothing left behind.
#[test]
fn a_failing_seed_stops_before_the_tests_and_cleans_up() {
    let p = project("[run]\nseed = \"python3 -c 'raise SystemExit(\\\"no seed today\\\")'\"\ntest = \"touch $HOIST_RESULTS/tests-ran\"");
    let o = p.run(&[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("pre_activate failed"), "{err}");
    assert!(err.contains("no seed today"), "{err}");
    let results = PathBuf::from(line_after(&out, "results "));
    assert!(results.join("agent.log").exists());
    assert!(
        !results.join("tests-ran").exists(),
        "the tests ran after a failed seed"
    );
    p.assert_clean();
}

/// `[secrets] required`: refused (exit 2, naming it) when the environment lacks one;
/// given to the private agent from the environment otherwise (the seed, a hook, sees it).
#[test]
fn required_secrets_come_from_the_environment() {
    let p = project(
        "[secrets]\nrequired = [\"NOTES_TOKEN\"]\n[run]\nseed = \"python3 -c 'import os; assert os.environ[\\\"NOTES_TOKEN\\\"] == \\\"s3cret\\\", \\\"wrong secret\\\"'\"\ntest = \"true\"",
    );
    let o = p.run(&[]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    assert!(text(&o).1.contains("NOTES_TOKEN"), "{:?}", text(&o));

    let o = p
        .hoist()
        .arg("run")
        .env("NOTES_TOKEN", "s3cret")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{err}");
    let results = PathBuf::from(line_after(&out, "results "));
    let mut leaked = Vec::new();
    for f in walk(&results) {
        if std::fs::read(&f).is_ok_and(|b| b.windows(6).any(|w| w == b"s3cret")) {
            leaked.push(f);
        }
    }
    assert!(leaked.is_empty(), "the secret's value is in {leaked:?}");
    p.assert_clean();
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
