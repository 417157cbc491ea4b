//! Backups and restores through a real agent and the real CLI: SQLite under continuous
//! writes (a `sqlite3` process committing in a loop), a real PostgreSQL server started
//! by the test, a directory round trip, a corrupted file refused before anything stops,
//! a failing `before_deploy` backup stopping a deploy before `pre_activate`, a first
//! deploy without a source, a backup killed mid-way, and a secret URL that never leaks.
//! Retention over a simulated year is unit-tested in `hoist-backup` (a pure function).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::{free_port, hoist_bin, tempdir, wait_until, ChildGuard};

fn sql(db: &Path, query: &str) -> String {
    let out = Command::new("sqlite3")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(query)
        .output()
        .expect("sqlite3 runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "sqlite3 {query}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

fn count(db: &Path, query: &str) -> i64 {
    sql(db, query).parse().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn cfg(project: &Path) -> String {
    project.join("hoist.toml").display().to_string()
}

/// A writer like an app's: one `sqlite3` process committing a row and a counter bump per
/// transaction, as fast as it can, until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(db: &Path) -> Writer {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(b".timeout 5000\nPRAGMA journal_mode=WAL;\nPRAGMA synchronous=NORMAL;\n")
                .unwrap();
            let tx = b"BEGIN; INSERT INTO t (v) VALUES (hex(randomblob(32))); UPDATE c SET n = n + 1; COMMIT;\n";
            while !flag.load(Ordering::Relaxed) {
                if stdin.write_all(tx).is_err() {
                    break;
                }
            }
            drop(stdin);
            let _ = child.wait();
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn backups(h: &Host, project: &Path) -> Vec<serde_json::Value> {
    let v = json(&h.hoist(&["backups", "--json", "-c", &cfg(project)]));
    v.as_array().unwrap().clone()
}

#[test]
fn sqlite_under_writes_and_a_directory_round_trip_with_verify_and_refusals() {
    let h = Host::new();
    let project = h.project(
        "v1",
        "",
        "[backups.db]\nsqlite = \"app.db\"\n\n[backups.files]\ndirectory = \"uploads\"\n",
    );
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let data = h.root.join("data/demo");
    let db = data.join("app.db");
    sql(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); \
         CREATE TABLE c (n INTEGER NOT NULL); INSERT INTO c VALUES (0);",
    );
    std::fs::create_dir_all(data.join("uploads/img")).unwrap();
    std::fs::write(data.join("uploads/img/a.txt"), "original").unwrap();

    // E1: a backup while the writer commits.
    let writer = Writer::start(&db);
    wait_until(Duration::from_secs(10), || {
        count(&db, "SELECT n FROM c") > 2000
    })
    .unwrap();
    let before = count(&db, "SELECT n FROM c");
    let out = h.hoist(&["backup", "db", "--json", "-c", &cfg(&project)]);
    let after = count(&db, "SELECT n FROM c");
    let taken = json(&out);
    assert_eq!(taken[0]["status"], "ok", "{taken}");
    assert!(
        after > before,
        "the writer kept committing during the backup"
    );
    // The writer goes on past the snapshot, then stops.
    wait_until(Duration::from_secs(10), || {
        count(&db, "SELECT n FROM c") > after + 1000
    })
    .unwrap();
    writer.finish();
    let total = count(&db, "SELECT count(*) FROM t");
    let file = PathBuf::from(taken[0]["file"].as_str().unwrap());
    assert!(file.starts_with(h.root.join("backups/demo/db")));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A restore without --force in a script refuses and changes nothing.
    let out = h.hoist(&["restore", "db", "-c", &cfg(&project)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(count(&db, "SELECT count(*) FROM t"), total);

    // verify: a restore into a scratch place, recorded.
    let v = json(&h.hoist(&["backup", "verify", "db", "--json", "-c", &cfg(&project)]));
    assert_eq!(v[0]["status"], "ok", "{v}");
    assert_eq!(v[0]["trigger"], "verify");
    assert!(
        v[0]["checked"].as_str().unwrap().contains("integrity ok"),
        "{v}"
    );

    // E2: a flipped byte is refused before anything stops.
    let pids = h.pids();
    let pristine = std::fs::read(&file).unwrap();
    let mut bytes = pristine.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let out = h.hoist(&["restore", "db", "--force", "-c", &cfg(&project)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(h.pids(), pids, "no instance was stopped");
    assert_eq!(count(&db, "SELECT count(*) FROM t"), total);
    std::fs::write(&file, &pristine).unwrap();

    // Destroy, restore, compare: the restored rows are the count at the snapshot.
    std::fs::write(&db, b"destroyed").unwrap();
    let res = json(&h.hoist(&["restore", "db", "--force", "--json", "-c", &cfg(&project)]));
    let rows = count(&db, "SELECT count(*) FROM t");
    let at_snapshot = count(&db, "SELECT n FROM c");
    assert_eq!(
        rows, at_snapshot,
        "rows match the counter in the same snapshot"
    );
    assert!(
        (before..=after).contains(&at_snapshot),
        "{before} <= {at_snapshot} <= {after}"
    );
    assert!(at_snapshot < total);
    assert_eq!(sql(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(res["tables"]["t"].as_i64(), Some(rows), "{res}");
    assert_eq!(res["services"], serde_json::json!(["web"]));
    // The app runs again, on new instances.
    wait_until(Duration::from_secs(10), || h.serving().is_some()).unwrap();
    assert_ne!(h.pids(), pids);
    let hist = h.hoist(&["history", "-c", &cfg(&project)]);
    assert!(
        text(&hist.stdout).contains("restore"),
        "{}",
        text(&hist.stdout)
    );

    // A directory: back up, change, restore.
    let files = json(&h.hoist(&["backup", "files", "--json", "-c", &cfg(&project)]));
    assert_eq!(files[0]["status"], "ok", "{files}");
    std::fs::write(data.join("uploads/img/a.txt"), "changed").unwrap();
    std::fs::write(data.join("uploads/new.txt"), "new").unwrap();
    json(&h.hoist(&[
        "restore",
        "files",
        "--force",
        "--json",
        "-c",
        &cfg(&project),
    ]));
    assert_eq!(
        std::fs::read_to_string(data.join("uploads/img/a.txt")).unwrap(),
        "original"
    );
    assert!(!data.join("uploads/new.txt").exists());

    let all = backups(&h, &project);
    assert!(all
        .iter()
        .all(|b| b["status"] == "ok" && b["error"].is_null()));
}

#[test]
fn before_deploy_backups_first_deploy_failure_and_a_killed_backup() {
    let mut h = Host::new();
    let marks = h.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let extra = |v: &str| {
        format!(
            "[hooks]\npre_activate = \"touch {}\"\n\n[backups.db]\nsqlite = \"app.db\"\nbefore_deploy = true\n",
            marks.join(v).display()
        )
    };
    // A first deploy: no database yet, so the backup is skipped with a note.
    let v1 = h.project("v1", "", &extra("v1"));
    let out = h.hoist(&["deploy", "--json", "-c", &cfg(&v1)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let notes: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["step"] == "backup" && v["phase"] == "note")
        .collect();
    assert_eq!(notes.len(), 1, "{}", text(&out.stdout));
    assert!(notes[0]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist yet"));
    assert!(marks.join("v1").exists());
    let v1_release = h.serving();
    assert!(v1_release.is_some());

    // E5: the backup fails (the file is not a database): the deploy stops before
    // pre_activate, and v1 keeps serving.
    let db = h.root.join("data/demo/app.db");
    std::fs::write(&db, vec![0x5au8; 4096]).unwrap();
    let v2 = h.project("v2", "", &extra("v2"));
    let out = h.deploy(&v2);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("backup"),
        "{}",
        text(&out.stderr)
    );
    assert!(!marks.join("v2").exists(), "pre_activate must not have run");
    assert_eq!(h.serving(), v1_release);
    let failed = backups(&h, &v1);
    assert_eq!(failed.last().unwrap()["status"], "failed");
    assert_eq!(failed.last().unwrap()["trigger"], "before_deploy");

    // With a real database the same deploy goes through, backup first.
    std::fs::remove_file(&db).unwrap();
    sql(&db, "CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    let out = h.deploy(&v2);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(marks.join("v2").exists());
    let good: Vec<_> = backups(&h, &v1)
        .into_iter()
        .filter(|b| b["status"] == "ok")
        .collect();
    assert_eq!(good.len(), 1);
    // Taken under the release that served before the deploy.
    assert_eq!(good[0]["release"].as_str(), v1_release.as_deref());

    // E3: an agent killed mid-backup leaves no backup recorded as good.
    let mark = h.dir.join("failpoint");
    h.kill_agent();
    h.agent_env = vec![
        ("HOIST_FAILPOINT".into(), "backup:running".into()),
        ("HOIST_FAILPOINT_MARK".into(), mark.display().to_string()),
    ];
    h.start_agent();
    let _cli = ChildGuard::spawn(
        Command::new(hoist_bin())
            .args(["backup", "db", "-c", &cfg(&v2)])
            .env("HOIST_SOCKET", &h.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_until(Duration::from_secs(20), || mark.exists()).unwrap();
    h.kill_agent();
    h.agent_env.clear();
    h.start_agent();
    let all = backups(&h, &v1);
    let last = all.last().unwrap();
    assert_eq!(last["status"], "failed", "{last}");
    assert!(last["error"].as_str().unwrap().contains("interrupted"));
    assert_eq!(all.iter().filter(|b| b["status"] == "ok").count(), 1);
    let files: Vec<_> = std::fs::read_dir(h.root.join("backups/demo/db"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        Some(files[0].as_str()),
        good[0]["file"].as_str().and_then(|f| f.rsplit('/').next())
    );
}

/// A PostgreSQL server of the test's own, run as the `postgres` user (it refuses root)
/// in a temp dir, on 127.0.0.1 and a free port, with password authentication.
struct Postgres {
    _dir: tempfile::TempDir,
    port: u16,
    password: String,
    _server: ChildGuard,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "the PostgreSQL server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): \
             install the `postgresql` package (scripts/test.sh does)"
        )
    })
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bin();
        let user = nix::unistd::User::from_name("postgres")
            .unwrap()
            .expect("the `postgres` user exists (the postgresql package creates it)");
        let dir = tempdir();
        nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
        let mut raw = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut raw)
            .unwrap();
        let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        nix::unistd::chown(&pwfile, Some(user.uid), Some(user.gid)).unwrap();
        let data = dir.path().join("data");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("initdb"))
            .args(["-U", "postgres", "--auth=scram-sha-256", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", text(&out.stderr));
        let port = free_port();
        let server = ChildGuard::spawn(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-p"])
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        let pg = Postgres {
            _dir: dir,
            port,
            password,
            _server: server,
        };
        wait_until(Duration::from_secs(30), || {
            pg.psql_in("postgres", "SELECT 1").is_ok()
        })
        .expect("postgres answers");
        pg
    }

    fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.password, self.port
        )
    }

    fn psql_in(&self, db: &str, query: &str) -> Result<String, String> {
        let out = Command::new(pg_bin().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                query,
            ])
            .env("PGPASSWORD", &self.password)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(text(&out.stdout).trim().to_string())
        } else {
            Err(text(&out.stderr))
        }
    }

    fn psql(&self, query: &str) -> String {
        self.psql_in("app", query).unwrap()
    }
}

/// Reads every process's command line every 10 ms (what `ps -eo args` shows) and counts
/// the samples that contain `needle`.
struct ArgvWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl ArgvWatch {
    fn start(needle: String) -> ArgvWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut hits = 0;
            while !flag.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if let Ok(args) = std::fs::read(e.path().join("cmdline")) {
                        if args.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                            hits += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            hits
        });
        ArgvWatch { stop, thread }
    }

    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn set_secret(h: &Host, project: &Path, name: &str, value: &str) {
    let mut child = Command::new(hoist_bin())
        .args(["secrets", "set", name, "-c", &cfg(project)])
        .env("HOIST_SOCKET", &h.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Every file under `dir`, searched as bytes.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p);
                    }
                }
            }
        }
    }
    hits
}

#[test]
fn postgres_backup_destroy_restore_compare_and_the_url_never_leaks() {
    let pg = Postgres::start();
    pg.psql_in("postgres", "CREATE DATABASE app").unwrap();
    pg.psql(
        "CREATE TABLE items (id serial PRIMARY KEY, v text); \
         INSERT INTO items (v) SELECT md5(g::text) FROM generate_series(1, 5000) g; \
         CREATE TABLE other (x int); INSERT INTO other SELECT generate_series(1, 77);",
    );
    let h = Host::new();
    let project = h.project(
        "v1",
        "",
        "[secrets]\nrequired = [\"DATABASE_URL\", \"BAD_URL\"]\n\n\
         [backups.pg]\npostgres = \"DATABASE_URL\"\n\n[backups.bad]\npostgres = \"BAD_URL\"\n",
    );
    set_secret(&h, &project, "DATABASE_URL", &pg.url("app"));
    // A server that does not answer: the error path must not leak the password either.
    set_secret(
        &h,
        &project,
        "BAD_URL",
        &format!(
            "postgres://postgres:{}@127.0.0.1:{}/app",
            pg.password,
            free_port()
        ),
    );
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut outputs: Vec<Output> = Vec::new();
    let argv = ArgvWatch::start(pg.password.clone());

    let out = h.hoist(&["backup", "pg", "--json", "-c", &cfg(&project)]);
    let taken = json(&out);
    outputs.push(out);
    assert_eq!(taken[0]["status"], "ok", "{taken}");
    assert_eq!(taken[0]["kind"], "postgres");
    let before = (
        pg.psql("SELECT count(*) FROM items"),
        pg.psql("SELECT count(*) FROM other"),
    );
    assert_eq!(before, ("5000".to_string(), "77".to_string()));

    let out = h.hoist(&["backup", "bad", "--json", "-c", &cfg(&project)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let bad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(bad[0]["status"], "failed");
    assert!(
        bad[0]["error"].as_str().unwrap().contains("postgres:***@"),
        "{bad}"
    );
    outputs.push(out);

    // Destroy, restore, compare.
    pg.psql("DROP TABLE items; DELETE FROM other; CREATE TABLE stray (y int);");
    let out = h.hoist(&["restore", "pg", "--force", "--json", "-c", &cfg(&project)]);
    let res = json(&out);
    outputs.push(out);
    let after = (
        pg.psql("SELECT count(*) FROM items"),
        pg.psql("SELECT count(*) FROM other"),
    );
    assert_eq!(after, before);
    assert_eq!(res["tables"]["public.items"], 5000, "{res}");
    assert_eq!(res["tables"]["public.other"], 77, "{res}");

    let out = h.hoist(&["backup", "verify", "pg", "--json", "-c", &cfg(&project)]);
    let v = json(&out);
    outputs.push(out);
    assert_eq!(v[0]["status"], "ok", "{v}");
    assert!(
        v[0]["checked"].as_str().unwrap().contains("5077 rows"),
        "{v}"
    );
    // The scratch database is gone again.
    assert_eq!(
        pg.psql_in(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'hoist_verify_%'"
        )
        .unwrap(),
        "0"
    );
    outputs.push(h.hoist(&["backups", "--json", "-c", &cfg(&project)]));
    outputs.push(h.hoist(&["history", "--json", "-c", &cfg(&project)]));

    assert_eq!(
        argv.finish(),
        0,
        "the password appeared in a process's command line"
    );
    // G1: the password appears in no output, no log and no file of the agent's root
    // except the secrets file, which exists to hold it.
    let needle = pg.password.as_bytes();
    for o in &outputs {
        assert!(
            !o.stdout.windows(needle.len()).any(|w| w == needle)
                && !o.stderr.windows(needle.len()).any(|w| w == needle),
            "the password leaked into an output"
        );
    }
    let log = std::fs::read(h.dir.join("agent.log")).unwrap();
    assert!(!log.windows(needle.len()).any(|w| w == needle));
    let hits: Vec<PathBuf> = files_containing(&h.root, needle)
        .into_iter()
        .filter(|p| !p.starts_with(h.root.join("secrets")))
        .collect();
    assert!(hits.is_empty(), "the password is in {hits:?}");
}

#[test]
fn scheduled_backups_are_copied_and_pruned_by_retention() {
    let h = Host::new();
    let copies = h.dir.join("volume");
    let project = h.project(
        "v1",
        "",
        &format!(
            "[backups.files]\ndirectory = \"uploads\"\nevery = \"1s\"\n\
             keep = {{ last = 1, daily = 1, weekly = 0, monthly = 0 }}\ncopy_to = \"{}\"\n",
            copies.display()
        ),
    );
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::create_dir_all(h.root.join("data/demo/uploads")).unwrap();
    std::fs::write(h.root.join("data/demo/uploads/a.txt"), "a").unwrap();
    // Three scheduled backups have run; retention (one a day) left only the newest.
    let mut last = serde_json::Value::Null;
    wait_until(Duration::from_secs(30), || {
        let all = backups(&h, &project);
        let ok: Vec<_> = all.iter().filter(|b| b["status"] == "ok").collect();
        let scheduled = all.iter().filter(|b| b["trigger"] == "schedule").count();
        if ok.len() == 1 && scheduled == 1 && ok[0]["id"].as_i64().unwrap_or(0) >= 3 {
            last = ok[0].clone();
            true
        } else {
            false
        }
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", backups(&h, &project)));
    assert_eq!(last["trigger"], "schedule");
    let file = PathBuf::from(last["file"].as_str().unwrap());
    let copy = PathBuf::from(last["copy"].as_str().unwrap());
    assert!(copy.starts_with(copies.join("demo/files")), "{copy:?}");
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(&copy).unwrap());
    // Pruned backups leave no file behind, here or on the copy's volume. (A newer
    // backup may have landed since the listing: allow for one in flight.)
    let n = |d: &Path| std::fs::read_dir(d).unwrap().count();
    assert!(n(&h.root.join("backups/demo/files")) <= 2);
    assert!(n(&copies.join("demo/files")) <= 2);
}

/// Issue 14: a manual `hoist backup` taken minutes before a deploy survives that
/// deploy's `before_deploy` backup (the same day; GFS alone keeps one per day): the
/// newest `last` (default 3) always stay.
#[test]
fn a_manual_backup_survives_the_next_deploys_own_backup() {
    let h = Host::new();
    let extra = "[backups.db]\nsqlite = \"app.db\"\nbefore_deploy = true\n";
    let v1 = h.project("v1", "", extra);
    let out = h.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    sql(
        &h.root.join("data/demo/app.db"),
        "CREATE TABLE t (x); INSERT INTO t VALUES (1);",
    );
    let manual = json(&h.hoist(&["backup", "db", "--json", "-c", &cfg(&v1)]));
    let manual_id = manual[0]["id"].as_i64().or(manual["id"].as_i64()).unwrap();
    let v2 = h.project("v2", "", extra);
    let out = h.deploy(&v2);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = backups(&h, &v2);
    let ok: Vec<_> = all.iter().filter(|b| b["status"] == "ok").collect();
    assert!(
        ok.iter().any(|b| b["id"].as_i64() == Some(manual_id)),
        "the manual backup was pruned: {all:?}"
    );
    assert!(
        ok.iter().any(|b| b["trigger"] == "before_deploy"),
        "{all:?}"
    );
}

/// A root agent with an apps' user reads an app's data as that user, and runs exec
/// health probes as it: a probe records `id -u` (not 0: the apps' uid); a SQLite backup
/// of a database only the apps' user may open (0600, its own) is taken, and restored
/// with its owner and mode; a directory backup of a tree holding a root-only file (what
/// an app could plant with a hard link to a root file) fails naming that file, where a
/// backup read as root would have archived it for the app to restore.
#[test]
fn backups_and_exec_probes_run_as_the_apps_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut h = Host::new();
    let apps_uid = h.restart_with_apps_user();
    let app = hoist_testkit::testapp_bin();
    let extra = format!(
        "[services.worker]\ncommand = \"{} worker\"\nroles = [\"web\"]\n\
         health = {{ command = \"id -u > $HOIST_DATA_DIR/probe-uid\", interval = \"100ms\" }}\n\n\
         [backups.db]\nsqlite = \"app.db\"\n\n[backups.files]\ndirectory = \"uploads\"\n",
        app.display()
    );
    let project = h.project("v1", "", &extra);
    let out = h.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let data = h.root.join("data/demo");
    let probe = data.join("probe-uid");
    wait_until(Duration::from_secs(20), || probe.exists()).expect("the exec probe ran");
    let read_uid = || -> Option<u32> { std::fs::read_to_string(&probe).ok()?.trim().parse().ok() };
    wait_until(Duration::from_secs(20), || read_uid().is_some()).expect("a whole uid");
    let probed = read_uid().unwrap();
    assert_eq!(probed, apps_uid, "the exec probe ran as the apps' user");
    assert_eq!(std::fs::metadata(&probe).unwrap().uid(), apps_uid);

    // The app's own database, 0600.
    let db = data.join("app.db");
    sql(
        &db,
        "CREATE TABLE t (v); INSERT INTO t VALUES (1), (2), (3);",
    );
    std::os::unix::fs::chown(&db, Some(apps_uid), Some(apps_uid)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let taken = json(&h.hoist(&["backup", "db", "--json", "-c", &cfg(&project)]));
    assert_eq!(taken[0]["status"], "ok", "{taken}");
    let file = PathBuf::from(taken[0]["file"].as_str().unwrap());
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777),
        (0, 0o600),
        "the archive is the agent's"
    );
    sql(&db, "DELETE FROM t;");
    let out = h.hoist(&["restore", "db", "--force", "-c", &cfg(&project)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(count(&db, "SELECT count(*) FROM t"), 3);
    let m = std::fs::metadata(&db).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (apps_uid, 0o600));
    // No reader left its scratch place behind.
    let left: Vec<_> = std::fs::read_dir(h.root.join("data"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".backup-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A tree the app may read is archived; one holding a root-only file is not.
    let uploads = data.join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    std::fs::write(uploads.join("a.txt"), "a").unwrap();
    for p in [&uploads, &uploads.join("a.txt")] {
        std::os::unix::fs::chown(p, Some(apps_uid), Some(apps_uid)).unwrap();
    }
    let taken = json(&h.hoist(&["backup", "files", "--json", "-c", &cfg(&project)]));
    assert_eq!(taken[0]["status"], "ok", "{taken}");
    let secret = uploads.join("shadow-link");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = h.hoist(&["backup", "files", "--json", "-c", &cfg(&project)]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "a root-only file was read: {said}");
    assert!(
        said.contains("shadow-link") && said.contains("ermission denied"),
        "{said}"
    );
}
