//! `hoist doctor` and `hoist review` against a real agent: every host-local finding is
//! produced for real on a test host — a full tmpfs root, its inodes exhausted, an
//! instance port taken by another process (which crash-loops the instance), a failing
//! health check, a leftover process no release owns, a short-lived certificate made
//! with openssl in the last third of its lifetime, pages of the state database overwritten (an index: found;
//! a table: the agent refuses to start; the runbook's commands rebuild it), a scheduled
//! backup whose every run fails — and each goes back to clean. (A failed ACME renewal
//! is in `tls.rs`, beside its Pebble.) A host that does not answer
//! is found by the CLI. Clock skew and agent versions cannot differ on one kernel and one
//! build; they are tested over faked answers in `hoist-fleet::doctor`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::{free_port, testapp_bin, wait_until, ChildGuard};

fn cfg(project: &Path) -> String {
    project.join("hoist.toml").display().to_string()
}

/// `hoist doctor --json`: (exit code, findings).
fn doctor(h: &Host, project: &Path) -> (i32, Vec<serde_json::Value>) {
    let out = h.hoist(&["doctor", "--json", "-c", &cfg(project)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap(), v.as_array().unwrap().clone())
}

fn finding<'a>(all: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no `{id}` in {all:#?}"))
}

fn status_of(all: &[serde_json::Value], id: &str) -> String {
    finding(all, id)["status"].as_str().unwrap().to_string()
}

/// Waits until doctor's `id` has `want`; returns the findings then.
fn until(h: &Host, project: &Path, id: &str, want: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let last = doctor(h, project).1;
        if status_of(&last, id) == want {
            return last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{id}` never became {want}: {last:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn each_host_finding_is_produced_for_real_and_then_clean() {
    let h = Host::on_tmpfs("48m");
    let project = h.project("v1", "", "[backups.db]\nsqlite = \"app.db\"\n");
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = h.root.join("data/demo/app.db");
    sh(&format!(
        "sqlite3 {} 'CREATE TABLE t (x); INSERT INTO t VALUES (1);'",
        db.display()
    ));

    // A backup never verified is a warning (exit 0); verified, every finding passes.
    let out = h.hoist(&["backup", "db", "-c", &cfg(&project)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, all) = doctor(&h, &project);
    assert_eq!(status_of(&all, "backups.stale"), "warn", "{all:#?}");
    assert_eq!(code, 0, "warnings alone exit 0");
    let out = h.hoist(&["backup", "verify", "db", "-c", &cfg(&project)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, all) = doctor(&h, &project);
    let not: Vec<&serde_json::Value> = all.iter().filter(|f| f["status"] != "pass").collect();
    assert!(not.is_empty(), "the clean host: {not:#?}");
    assert_eq!(code, 0);
    for id in [
        "disk.space",
        "disk.inodes",
        "ports.taken",
        "services.crash_loop",
        "services.health",
        "certs.expiry",
        "backups.stale",
        "state.integrity",
        "processes.stray",
        "hosts.unreachable",
        "clock.skew",
        "agents.versions",
    ] {
        let f = finding(&all, id);
        let page = f["runbook"].as_str().unwrap();
        assert_eq!(page, format!("docs/runbook/{id}.md"));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        assert!(root.join(page).is_file(), "runbook page {page} exists");
    }

    // A leftover process carrying this root's marker that no release owns.
    let stray = ChildGuard::spawn(
        Command::new("sleep")
            .arg("600")
            .env("HOIST_RUN_DIR", h.root.join("run"))
            .env("HOIST_INSTANCE", "demo-web-00000000-9"),
    )
    .unwrap();
    let (code, all) = doctor(&h, &project);
    let f = finding(&all, "processes.stray");
    assert_eq!(f["status"], "fail", "{f}");
    assert!(
        f["evidence"][0]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", stray.pid())),
        "{f}"
    );
    assert_eq!(code, 1);
    drop(stray);
    until(&h, &project, "processes.stray", "pass");

    // The tmpfs root nearly full.
    let filler = h.root.join("filler");
    let free_kib: u64 = sh(&format!(
        "df -k --output=avail {} | tail -1",
        h.root.display()
    ))
    .parse()
    .unwrap();
    sh(&format!(
        "head -c {}K /dev/zero > {}",
        free_kib.saturating_sub(512),
        filler.display()
    ));
    let (code, all) = doctor(&h, &project);
    let f = finding(&all, "disk.space");
    assert_eq!(f["status"], "fail", "{f}");
    assert_eq!(code, 1);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(status_of(&doctor(&h, &project).1, "disk.space"), "pass");

    // Its inodes exhausted: the tmpfs is remounted with room for a few more, then filled.
    let inodes: Vec<u64> = sh(&format!("stat -f -c '%c %d' {}", h.root.display()))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let used = inodes[0] - inodes[1];
    sh(&format!(
        "mount -o remount,nr_inodes={} {}",
        used + 300,
        h.root.display()
    ));
    let many = h.root.join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0.. {
        if std::fs::write(many.join(i.to_string()), b"").is_err() {
            break;
        }
    }
    let (_, all) = doctor(&h, &project);
    let f = finding(&all, "disk.inodes");
    assert_eq!(f["status"], "fail", "{f}");
    std::fs::remove_dir_all(&many).unwrap();
    sh(&format!(
        "mount -o remount,nr_inodes=1000000 {}",
        h.root.display()
    ));
    assert_eq!(status_of(&doctor(&h, &project).1, "disk.inodes"), "pass");

    // An instance's port taken by another process while its app was down: the agent is
    // frozen (SIGSTOP) so the port is taken before it restarts the instance there.
    let st = h.status();
    let inst = st["apps"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["service"] == "web")
        .unwrap()
        .clone();
    let port = inst["port"].as_u64().unwrap() as u16;
    let app_pid = inst["pid"].as_u64().unwrap() as i32;
    let agent_pid = nix::unistd::Pid::from_raw(h.agent.as_ref().unwrap().pid() as i32);
    use nix::sys::signal::{kill, Signal};
    kill(agent_pid, Signal::SIGSTOP).unwrap();
    kill(nix::unistd::Pid::from_raw(app_pid), Signal::SIGKILL).unwrap();
    let mut taken = None;
    let bound = wait_until(Duration::from_secs(10), || {
        taken = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
        taken.is_some()
    });
    kill(agent_pid, Signal::SIGCONT).unwrap();
    bound.expect("the port is free once its app is dead");
    let holder = taken.unwrap();
    let all = until(&h, &project, "services.crash_loop", "fail");
    let f = finding(&all, "ports.taken");
    assert_eq!(f["status"], "fail", "{f}");
    let me = std::process::id();
    assert!(
        f["evidence"][0]
            .as_str()
            .unwrap()
            .contains(&format!("port {port}"))
            && f["evidence"][0]
                .as_str()
                .unwrap()
                .contains(&format!("pid {me}")),
        "{f}"
    );
    let looping = finding(&all, "services.crash_loop");
    let evidence: Vec<&str> = looping["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        evidence
            .iter()
            .any(|e| e.contains(inst["instance"].as_str().unwrap())),
        "{looping}"
    );
    assert!(evidence.len() > 1, "with its last log lines: {looping}");
    // The text output links the runbook page.
    let out = h.hoist(&["doctor", "-c", &cfg(&project)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("docs/runbook/ports.taken.md"),
        "{}",
        text(&out.stdout)
    );
    drop(holder);
    until(&h, &project, "services.crash_loop", "pass");
    assert_eq!(status_of(&doctor(&h, &project).1, "ports.taken"), "pass");

    // A health check that starts failing after the deploy.
    let sick = h.project("v2", "", "[backups.db]\nsqlite = \"app.db\"\n");
    let toml = std::fs::read_to_string(sick.join("hoist.toml"))
        .unwrap()
        .replace(" serve\"", " serve --health-pass-then-fail 30\"");
    std::fs::write(sick.join("hoist.toml"), toml).unwrap();
    let out = h.deploy(&sick);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = until(&h, &sick, "services.health", "fail");
    assert!(!finding(&all, "services.health")["evidence"]
        .as_array()
        .unwrap()
        .is_empty());

    // The agent gone: the host does not answer.
    let mut h = h;
    h.kill_agent();
    let (code, all) = doctor(&h, &project);
    assert_eq!(status_of(&all, "hosts.unreachable"), "fail", "{all:#?}");
    assert_eq!(code, 1);
}

/// A 3-day certificate for doc.test made by openssl, as if made at `when` (faketime's
/// words; `None`: now).
fn openssl_cert(cert: &Path, key: &Path, when: Option<&str>) {
    let mut cmd = match when {
        Some(t) => {
            let mut c = Command::new("faketime");
            c.args([t, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    let out = cmd
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-subj",
            "/CN=doc.test",
            "-addext",
            "subjectAltName=DNS:doc.test",
            "-days",
            "3",
        ])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl and faketime run (scripts/test.sh installs them)");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Issue 14: a certificate that lives less than 14 days is warned about in the last
/// third of its lifetime, not from birth (doctor warned on every one of them).
#[test]
fn a_short_lived_certificate_warns_in_its_last_third_then_fails_once_expired() {
    let https = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let h = Host::with_agent_args(&["--https", &https.to_string()]);
    let dir = h.dir.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("doc.crt"), dir.join("doc.key"));
    openssl_cert(&cert, &key, None);
    let project = h.dir.join("tls");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("VERSION"), "tls").unwrap();
    std::fs::write(
        project.join("hoist.toml"),
        format!(
            r#"app = "doc"

[build]
include = ["VERSION"]

[services.web]
command = "{bin} serve"
stop_timeout = "5s"
http = {{ domains = ["doc.test"], health = {{ path = "/health", interval = "100ms", healthy_threshold = 2, min_healthy = "200ms" }}, drain_timeout = "2s", tls = {{ cert = "{cert}", key = "{key}" }} }}

[[hosts]]
name = "local"
roles = ["web"]
"#,
            bin = testapp_bin().display(),
            cert = cert.display(),
            key = key.display()
        ),
    )
    .unwrap();
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Made now, valid 3 days: nothing to say.
    let (_, all) = doctor(&h, &project);
    let f = finding(&all, "certs.expiry");
    assert_eq!(f["status"], "pass", "{f}");
    // The same certificate made 60 hours ago: in its last day.
    openssl_cert(&cert, &key, Some("60 hours ago"));
    let (code, all) = doctor(&h, &project);
    let f = finding(&all, "certs.expiry");
    assert_eq!(f["status"], "warn", "{f}");
    assert!(
        f["evidence"][0].as_str().unwrap().contains("doc.test"),
        "{f}"
    );
    // A warning alone exits 0 (this root is on the machine's disk, whose free space the
    // test does not control: a failing `disk.space` there would rightly exit 1).
    let failing: Vec<&serde_json::Value> = all.iter().filter(|f| f["status"] == "fail").collect();
    assert_eq!(code, i32::from(!failing.is_empty()), "{failing:#?}");
    assert!(
        failing.iter().all(|f| f["id"] == "disk.space"),
        "{failing:#?}"
    );
    // The file replaced by one that has expired (made by openssl under faketime): the
    // proxy keeps serving its copy, and doctor fails on the file on disk.
    let out = Command::new("faketime")
        .arg("2020-01-01 00:00:00")
        .args([
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-subj",
            "/CN=doc.test",
            "-addext",
            "subjectAltName=DNS:doc.test",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("faketime runs (scripts/test.sh installs it)");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, all) = doctor(&h, &project);
    let f = finding(&all, "certs.expiry");
    assert_eq!(f["status"], "fail", "{f}");
    assert!(
        f["evidence"][0].as_str().unwrap().contains("2020-01-02"),
        "{f}"
    );
    assert_eq!(code, 1);
    // review sees the same host: the scorecard's live part answers.
    let out = h.hoist(&["review", "--json", "-c", &cfg(&project)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tls = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "security.tls")
        .unwrap();
    assert_eq!(tls["status"], "pass", "{tls}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "alerts routed nowhere fail: {v}"
    );
}

#[test]
fn bad_usage_exits_2() {
    let h = Host::new();
    let project = h.project("v1", "", "");
    // An invalid app file: review and doctor refuse it with exit 2 and a diagnostic.
    let bad = h.dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("hoist.toml"),
        "app = \"x\"\n[services.web]\nreplicas = 2\n",
    )
    .unwrap();
    for cmd in ["review", "doctor"] {
        let out = h.hoist(&[cmd, "-c", &cfg(&bad)]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("command"),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
    // A host the app file does not name.
    let out = h.hoist(&["doctor", "--host", "nosuch", "-c", &cfg(&project)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // An unknown flag.
    let out = h.hoist(&["review", "--nosuch", "-c", &cfg(&project)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// Stops the host's agent the way the runbook says (`hoist agent stop`) and waits for it.
fn stop_agent(h: &mut Host) {
    let out = h.hoist(&["agent", "stop", "--socket", h.socket.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut agent = h.agent.take().unwrap();
    agent.child.wait().unwrap();
}

/// Overwrites the b-tree page of the table or index `name` in the state database with
/// a byte pattern (the agent is stopped: its WAL is checkpointed into the file).
fn damage_page(h: &Host, name: &str) -> i64 {
    let db = h.root.join("state.db");
    let q = |sql: &str| sh(&format!("sqlite3 {} \"{sql}\"", db.display()));
    let page: i64 = q(&format!(
        "SELECT rootpage FROM sqlite_master WHERE name = '{name}'"
    ))
    .parse()
    .unwrap();
    let size: u64 = q("PRAGMA page_size").parse().unwrap();
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.seek(std::io::SeekFrom::Start((page as u64 - 1) * size))
        .unwrap();
    f.write_all(&vec![0xA5; size as usize]).unwrap();
    f.sync_all().unwrap();
    page
}

/// The shell block of the runbook page `docs/runbook/<id>.md`.
fn runbook_block(id: &str) -> String {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../docs/runbook/{id}.md"));
    let text = std::fs::read_to_string(page).unwrap();
    let start = text.find("```sh\n").expect("a ```sh block") + 6;
    let len = text[start..].find("```").unwrap();
    text[start..start + len]
        .lines()
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_damaged_state_database_is_found_refused_at_start_and_rebuilt_by_the_runbook() {
    let mut h = Host::new();
    let project = h.project("v1", "", "");
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        status_of(&doctor(&h, &project).1, "state.integrity"),
        "pass"
    );

    // An index page overwritten while the agent was stopped: it starts (nothing it reads
    // at start goes through that index), serves, and doctor names the damaged index.
    stop_agent(&mut h);
    damage_page(&h, "history_by_at");
    h.start_agent();
    let (code, all) = doctor(&h, &project);
    let f = finding(&all, "state.integrity");
    assert_eq!(f["status"], "fail", "{f}");
    assert!(
        f["why"].as_str().unwrap().contains("index `history_by_at`"),
        "{f}"
    );
    assert!(
        f["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("malformed")),
        "SQLite's own words are the evidence: {f}"
    );
    assert!(
        f["fix"].as_str().unwrap().contains("hoist agent stop"),
        "{f}"
    );
    assert_eq!(code, 1);
    assert!(h.serving().is_some(), "the app serves throughout");

    // A page of a table the agent reads at start: it refuses, naming the file and the
    // runbook; the app keeps serving without it.
    stop_agent(&mut h);
    damage_page(&h, "instances");
    let out = Command::new(hoist_testkit::hoist_bin())
        .args(["agent", "--root"])
        .arg(&h.root)
        .arg("--socket")
        .arg(&h.socket)
        .arg("--proxy")
        .arg(h.proxy.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "`{}` is damaged",
            h.root.join("state.db").display()
        )) && err.contains("docs/runbook/state.integrity.md")
            && err.contains("malformed"),
        "{err}"
    );
    assert!(h.serving().is_some(), "the app serves without its agent");
    let (code, all) = doctor(&h, &project);
    assert_eq!(status_of(&all, "hosts.unreachable"), "fail", "{all:#?}");
    assert_eq!(code, 1);

    // The runbook's commands, as written, rebuild it: the agent starts, the app serves,
    // and doctor finds the state clean.
    let out = Command::new("sh")
        .arg("-c")
        .arg(runbook_block("state.integrity"))
        .env("ROOT", &h.root)
        .output()
        .unwrap();
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{:?}: {said}", out.status);
    assert!(text(&out.stdout).ends_with("ok\n"), "{said}");
    assert!(
        said.contains("table instances could not be read"),
        "the one table lost is named: {said}"
    );
    assert!(
        !said.contains("table history "),
        "a damaged index loses no row of its table: {said}"
    );
    assert!(
        h.root.join("damaged/state.db").is_file(),
        "the damaged copy is kept"
    );
    h.start_agent();
    let (_, all) = doctor(&h, &project);
    assert_eq!(status_of(&all, "state.integrity"), "pass", "{all:#?}");
    wait_until(Duration::from_secs(30), || h.serving().is_some())
        .expect("the app serves under the rebuilt state");
    let st = h.status();
    assert!(
        st["apps"][0]["instances"]
            .as_array()
            .is_some_and(|i| !i.is_empty()),
        "the agent knows its instances again: {st}"
    );
}

/// A schedule starts with the deploy that declared it: right after that deploy, a backup
/// not taken yet is not behind (only not verified: a warning).
#[test]
fn a_scheduled_backup_not_yet_due_is_not_stale_right_after_its_deploy() {
    let h = Host::new();
    let project = h.project(
        "v1",
        "",
        "[backups.db]\nsqlite = \"app.db\"\nevery = \"1h\"\n",
    );
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, all) = doctor(&h, &project);
    assert_eq!(status_of(&all, "backups.stale"), "warn", "{all:#?}");
    assert_eq!(code, 0, "{all:#?}");
}

#[test]
fn a_scheduled_backup_that_keeps_failing_goes_stale_in_doctor_and_alerts_then_recovers() {
    let receiver = common::Receiver::start();
    let h = Host::new();
    let project = h.project(
        "v1",
        "",
        &format!(
            "[backups.db]\nsqlite = \"app.db\"\nevery = \"1s\"\n\n[alerts]\nwebhook = \"http://{}/hook\"\n",
            receiver.addr
        ),
    );
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = h.root.join("data/demo/app.db");
    let make_db = || {
        let _ = std::fs::remove_file(&db);
        sh(&format!(
            "sqlite3 {} 'CREATE TABLE t (x); INSERT INTO t VALUES (1);'",
            db.display()
        ));
    };
    make_db();
    // On schedule and verified: clean.
    let out = h.hoist(&["backup", "db", "-c", &cfg(&project)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = h.hoist(&["backup", "verify", "db", "-c", &cfg(&project)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    until(&h, &project, "backups.stale", "pass");

    // The app's database file is overwritten with something that is not a database:
    // every scheduled backup now runs and fails, and the last good one ages.
    std::fs::write(&db, vec![b'x'; 8192]).unwrap();
    // Stale may be seen a moment before the first failed attempt is recorded (a run late
    // on a busy machine): wait for the finding that names the failure.
    let mut all = until(&h, &project, "backups.stale", "fail");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !finding(&all, "backups.stale")["evidence"][0]
        .as_str()
        .is_some_and(|l| l.contains("not a database"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
        all = until(&h, &project, "backups.stale", "fail");
    }
    let f = finding(&all, "backups.stale");
    let line = f["evidence"][0].as_str().unwrap();
    assert!(
        line.contains("`demo`/`db`: last good backup at 20")
            && line.contains("scheduled every 1s")
            && line.contains("not a database"),
        "the last good time and the last error: {f}"
    );
    assert_eq!(doctor(&h, &project).0, 1);
    wait_until(Duration::from_secs(60), || {
        receiver.find("firing", "backup_stale").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.got.lock().unwrap()));
    let fired = receiver.find("firing", "backup_stale").unwrap();
    assert_eq!(fired["alerts"][0]["labels"]["backup"], "db", "{fired}");

    // A good database again: the next scheduled backup is good, doctor is clean and the
    // alert resolves.
    make_db();
    until(&h, &project, "backups.stale", "pass");
    wait_until(Duration::from_secs(60), || {
        receiver.find("resolved", "backup_stale").is_some()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.got.lock().unwrap()));
}
