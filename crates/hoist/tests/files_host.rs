//! Files hosts (`mode = "files"`) end to end: a network-namespace host with its own sshd
//! and a real Apache 2 with mod_passenger serving a Python WSGI app (`passenger_wsgi.py`)
//! from the symlinked directory, reached as a non-root ssh user without sudo. One Apache
//! for every case: setup, a first deploy over a plain directory (moved aside), 10
//! redeploys under load with every request counted, a release whose health fails (the old
//! one serves, exit 1), rollback, pruning, a second deploy refused while the lock lives,
//! an ssh cut mid-switch (the served directory wholly old or wholly new, never dangling),
//! history, releases, status, backup and the refusal of agent-only commands.
//! Needs root, sshd, apache2 and libapache2-mod-passenger (scripts/test.sh installs them).

mod common;
mod netns;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_testkit::{hoist_bin, wait_until, ChildGuard};
use netns::Fleet;

const USER: &str = "hoist-files-t";
const PORT: u16 = 8080;
const APACHE: &str = "/usr/sbin/apache2";
const PASSENGER: &str = "/usr/lib/apache2/modules/mod_passenger.so";

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

/// The unprivileged ssh user the host's web space belongs to (no sudo: it is in no group
/// but its own).
fn ensure_user() -> (u32, u32) {
    if sh(&format!("id -u {USER}")).status.success() {
    } else {
        let o = sh(&format!(
            "useradd -M -d /nonexistent -s /bin/sh {USER} || id -u {USER}"
        ));
        assert!(o.status.success(), "useradd: {}", text(&o));
    }
    // `*`, not useradd's `!`: sshd without PAM refuses every key of a locked account.
    // Tests running at once may hold /etc/shadow's lock for a moment: try again.
    let mut o = sh(&format!("usermod -p '*' {USER}"));
    for _ in 0..20 {
        if o.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        o = sh(&format!("usermod -p '*' {USER}"));
    }
    assert!(o.status.success(), "usermod: {}", text(&o));
    let uid = String::from_utf8_lossy(&sh(&format!("id -u {USER}")).stdout)
        .trim()
        .parse()
        .unwrap();
    let gid = String::from_utf8_lossy(&sh(&format!("id -g {USER}")).stdout)
        .trim()
        .parse()
        .unwrap();
    (uid, gid)
}

/// The app: `/` answers its version, `/health` `ok VERSION` (500 for a `bad` version).
const WSGI: &str = r#"import os
HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = open(os.path.join(HERE, "version.txt")).read().strip()
def application(environ, start_response):
    if environ.get("PATH_INFO") == "/health":
        if VERSION.startswith("bad"):
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"broken\n"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [("ok " + VERSION + "\n").encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("version=" + VERSION + "\n").encode()]
"#;

struct Host {
    fleet: Fleet,
    www: PathBuf,
    project: PathBuf,
    _apache: ChildGuard,
}

impl Host {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.fleet.hosts[0].addr, PORT))
    }

    fn served(&self) -> PathBuf {
        self.www.join("app")
    }

    fn write_version(&self, version: &str) {
        std::fs::write(self.project.join("version.txt"), format!("{version}\n")).unwrap();
    }

    fn hoist(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(hoist_bin())
            .args(args)
            .arg("-c")
            .arg(self.project.join("hoist.toml"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        hoist_testkit::http_get(self.addr(), "app.test", path)
            .ok()
            .map(|r| (r.status, r.body))
    }

    /// The version the served link points at, read from the file system (the link is
    /// relative to `www`): `None` when it is not a symlink to a whole release.
    fn served_version(&self) -> Option<String> {
        let meta = std::fs::symlink_metadata(self.served()).ok()?;
        if !meta.file_type().is_symlink() {
            return None;
        }
        let wsgi = std::fs::read_to_string(self.served().join("passenger_wsgi.py")).ok()?;
        assert_eq!(wsgi, WSGI, "a whole release serves");
        std::fs::read_to_string(self.served().join("version.txt"))
            .ok()
            .map(|v| v.trim().to_string())
    }

    fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.www.join("app.hoist/releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn start() -> Host {
    assert!(
        Path::new(APACHE).exists() && Path::new(PASSENGER).exists(),
        "{APACHE} or {PASSENGER} is missing: install apache2 and libapache2-mod-passenger (scripts/test.sh does it)"
    );
    let fleet = Fleet::start(1);
    let (uid, gid) = ensure_user();
    // The user (and Apache's workers, which run as it) must reach the web space.
    std::fs::set_permissions(&fleet.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = fleet.dir.join("www");
    let project = fleet.dir.join("project");
    let apache_dir = fleet.dir.join("apache");
    for d in [&www, &project, &apache_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // What the host served before hoist: a plain directory with its own app.
    let plain = www.join("app");
    std::fs::create_dir_all(plain.join("public")).unwrap();
    std::fs::create_dir_all(plain.join("tmp")).unwrap();
    std::fs::write(plain.join("passenger_wsgi.py"), WSGI).unwrap();
    std::fs::write(plain.join("version.txt"), "handmade\n").unwrap();
    std::os::unix::fs::chown(&www, Some(uid), Some(gid)).unwrap();
    let o = sh(&format!("chown -R {uid}:{gid} {}", www.display()));
    assert!(o.status.success());
    // The project: the app, an empty `public/` (Passenger's document root) and the app file.
    std::fs::create_dir_all(project.join("public")).unwrap();
    std::fs::write(project.join("public/.keep"), "").unwrap();
    std::fs::write(project.join("passenger_wsgi.py"), WSGI).unwrap();
    std::fs::write(project.join("version.txt"), "v1\n").unwrap();
    let addr = fleet.hosts[0].addr;
    std::fs::write(
        project.join("hoist.toml"),
        format!(
            "app = \"wsgi\"\n\n[deploy]\nkeep_releases = 3\nhealth_deadline = \"5s\"\n\n\
             [backups.db]\nsqlite = \"app.db\"\nbefore_deploy = true\nkeep = {{ last = 2, daily = 0, weekly = 0, monthly = 0 }}\n\n{}\n\
             [[hosts]]\nname = \"shared\"\nssh = \"{USER}@{addr}\"\nmode = \"files\"\n\
             path = \"{}\"\nhealth = \"http://{addr}:{PORT}/health\"\nexpect = \"ok\"\n",
            fleet.ssh_toml(),
            plain.display()
        ),
    )
    .unwrap();
    // Apache 2 with Passenger, in the host's namespaces, serving the symlinked path.
    std::fs::write(
        apache_dir.join("httpd.conf"),
        format!(
            "ServerRoot /etc/apache2\nListen {addr}:{PORT}\nPidFile {a}/httpd.pid\n\
             ErrorLog {a}/error.log\nLogLevel warn\nServerName app.test\nUser {USER}\nGroup {USER}\n\
             DefaultRuntimeDir {a}\nMutex file:{a}\n\
             LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so\n\
             LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so\n\
             LoadModule passenger_module {PASSENGER}\n\
             PassengerRoot /usr/lib/ruby/vendor_ruby/phusion_passenger/locations.ini\n\
             PassengerDefaultRuby /usr/bin/ruby\nPassengerPython /usr/bin/python3\n\
             PassengerInstanceRegistryDir {a}\nPassengerDisableSecurityUpdateCheck on\n\
             PassengerDisableAnonymousTelemetry on\n\
             PassengerStatThrottleRate 0\n\
             <VirtualHost {addr}:{PORT}>\n  DocumentRoot {w}/app/public\n  PassengerAppRoot {w}/app\n\
               PassengerAppType wsgi\n  PassengerStartupFile passenger_wsgi.py\n\
               <Directory {w}/app/public>\n    Require all granted\n  </Directory>\n</VirtualHost>\n",
            a = apache_dir.display(),
            w = www.display(),
        ),
    )
    .unwrap();
    let apache = ChildGuard::spawn(
        Command::new("nsenter")
            .args([
                "-t",
                &fleet.sshd_pid(0).to_string(),
                "-n",
                "-m",
                APACHE,
                "-f",
            ])
            .arg(apache_dir.join("httpd.conf"))
            .arg("-DFOREGROUND")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let host = Host {
        fleet,
        www,
        project,
        _apache: apache,
    };
    wait_until(Duration::from_secs(60), || {
        host.get("/")
            .is_some_and(|(s, b)| s == 200 && b.contains("version=handmade"))
    })
    .unwrap_or_else(|e| {
        panic!(
            "Apache with Passenger does not serve the plain directory: {e}\n{}",
            std::fs::read_to_string(apache_dir.join("error.log")).unwrap_or_default()
        )
    });
    host
}

/// Requests in a loop from `clients` threads until stopped: (answered 200, failed).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match hoist_testkit::http_get(addr, "app.test", "/") {
                            Ok(r) if r.status == 200 && r.body.starts_with("version=") => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{} {}", r.status, r.body));
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(e.to_string());
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.threads {
            errors.extend(t.join().unwrap());
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

#[test]
#[allow(clippy::print_stderr)] // prints its figures (failed requests, deploy time)
fn a_passenger_host_is_deployed_without_an_agent() {
    let h = start();

    // setup: the state directory, the tools; no agent, nothing installed.
    let o = h.hoist(&["setup"], &[]);
    assert!(o.status.success(), "setup: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("files host (no agent)"), "{out}");
    assert!(out.contains("plain directory"), "{out}");
    assert!(h.www.join("app.hoist/releases").is_dir());
    assert!(
        h.fleet.exec(0, "ls /usr/local/bin").stdout.is_empty(),
        "no hoist binary was put on the host"
    );

    // A first deploy over the plain directory: moved aside, never deleted.
    let o = h.hoist(&["deploy"], &[]);
    assert!(o.status.success(), "first deploy: {}", text(&o));
    assert_eq!(h.served_version().as_deref(), Some("v1"));
    assert_eq!(h.get("/").unwrap().1.trim(), "version=v1");
    let aside: Vec<PathBuf> = std::fs::read_dir(h.www.join("app.hoist"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("before-hoist-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the plain directory is kept aside");
    assert_eq!(
        std::fs::read_to_string(aside[0].join("version.txt")).unwrap(),
        "handmade\n"
    );
    // The release belongs to the ssh user, its files are read-only hardlinks to blobs.
    let o = h.fleet.exec(
        0,
        &format!(
            "stat -c '%U %a %h' {}/app/passenger_wsgi.py",
            h.www.display()
        ),
    );
    let st = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(st, format!("{USER} 444 2"), "owner, mode, links");

    // A secret reaches a 0600 file that each release links.
    let o = Command::new(hoist_bin())
        .args(["secrets", "set", "API_TOKEN", "-c"])
        .arg(h.project.join("hoist.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"s3cret\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success(), "secrets set: {}", text(&o));
    let secrets = h.www.join("app.hoist/secrets.json");
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let via_release: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(h.served().join("hoist-secrets.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(via_release["API_TOKEN"], "s3cret");

    // SQLite data beside the releases, backed up before each deploy with the host's tools.
    let db = h.www.join("app.hoist/data/app.db");
    let o = sh(&format!(
        "python3 -c \"import sqlite3; c=sqlite3.connect('{}'); c.execute('create table t(x)'); c.execute('insert into t values (42)'); c.commit()\" && chown {USER} {}",
        db.display(),
        db.display()
    ));
    assert!(o.status.success(), "{}", text(&o));

    // 10 redeploys under load: every request answered, each release served after its deploy.
    let load = Load::start(h.addr(), 2);
    let started = Instant::now();
    let mut files_ms = Vec::new();
    for i in 2..=11 {
        let v = format!("v{i}");
        h.write_version(&v);
        let t = Instant::now();
        let o = h.hoist(&["deploy"], &[]);
        files_ms.push(t.elapsed().as_millis());
        assert!(o.status.success(), "redeploy {v}: {}", text(&o));
        assert_eq!(h.served_version().as_deref(), Some(v.as_str()));
        assert_eq!(h.get("/").unwrap().1.trim(), format!("version={v}"));
    }
    let (ok, failed, errors) = load.finish();
    eprintln!(
        "FIGURE files host: 10 redeploys under load on Apache+Passenger in {:.1}s: {ok} requests answered, {failed} failed",
        started.elapsed().as_secs_f64()
    );
    files_ms.sort();
    eprintln!(
        "FIGURE files host deploy time (one changed file): median {} ms, min {} ms, max {} ms",
        files_ms[files_ms.len() / 2],
        files_ms[0],
        files_ms[files_ms.len() - 1]
    );
    assert!(ok > 0, "the load reached the app");
    assert_eq!(failed, 0, "failed requests during redeploys: {errors:?}");

    // Pruning: the newest 3 releases are kept, and no blob is left that no release uses.
    assert_eq!(h.releases().len(), 3, "{:?}", h.releases());
    let o = h.fleet.exec(
        0,
        &format!("find {}/app.hoist/blobs -type f -links 1", h.www.display()),
    );
    assert!(o.stdout.is_empty(), "unused blobs: {}", text(&o));
    // Backups were taken before the deploys, 0600, and only `keep` of them are kept.
    let o = h.hoist(&["backups"], &[]);
    assert!(o.status.success(), "backups: {}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed.contains("db") && listed.contains(".sqlite"),
        "{}",
        text(&o)
    );
    let kept = std::fs::read_dir(h.www.join("app.hoist/backups/db"))
        .unwrap()
        .count();
    assert_eq!(kept, 2, "backups are pruned to `keep`");

    // A release whose health check fails: switched back, the old one serves, exit 1.
    h.write_version("bad1");
    let o = h.hoist(&["deploy"], &[]);
    assert_eq!(o.status.code(), Some(1), "failed health: {}", text(&o));
    assert_eq!(h.served_version().as_deref(), Some("v11"));
    wait_until(Duration::from_secs(20), || {
        h.get("/").is_some_and(|(_, b)| b.trim() == "version=v11")
    })
    .expect("the old release serves again after the failed deploy");

    // Rollback to the previous release.
    let o = h.hoist(&["rollback"], &[]);
    assert!(o.status.success(), "rollback: {}", text(&o));
    assert_eq!(h.served_version().as_deref(), Some("v10"));
    assert_eq!(h.get("/").unwrap().1.trim(), "version=v10");

    // History: JSON lines on the host, hash-chained and intact.
    let o = h.hoist(&["history", "--json"], &[]);
    assert!(o.status.success(), "history: {}", text(&o));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(kinds.len(), 13, "{kinds:?}");
    assert_eq!(kinds[11], ("deploy".into(), "failed".into()));
    assert_eq!(kinds[12], ("rollback".into(), "succeeded".into()));
    let o = h.hoist(&["history", "--verify"], &[]);
    assert!(o.status.success(), "verify: {}", text(&o));
    // An altered line is found.
    let hist = h.www.join("app.hoist/history.jsonl");
    let original = std::fs::read_to_string(&hist).unwrap();
    let tampered = original.replacen(
        "\\\"result\\\":\\\"succeeded\\\"",
        "\\\"result\\\":\\\"failed\\\"",
        1,
    );
    assert_ne!(tampered, original);
    std::fs::write(&hist, tampered).unwrap();
    let o = h.hoist(&["history", "--verify"], &[]);
    assert_eq!(o.status.code(), Some(1), "tampered: {}", text(&o));
    std::fs::write(&hist, original).unwrap();

    let o = h.hoist(&["releases"], &[]);
    assert!(o.status.success(), "releases: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("current"));
    let o = h.hoist(&["status"], &[]);
    assert!(o.status.success(), "status: {}", text(&o));

    // Commands that need an agent say so (exit 2).
    for args in [
        &["logs", "-f", "web"][..],
        &["jobs"][..],
        &["start", "web"][..],
        &["stop", "web"][..],
    ] {
        let o = h.hoist(args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("files host"),
            "{args:?}: {}",
            text(&o)
        );
    }

    // A deploy held mid-switch: a second deploy is refused while its lock lives; then its
    // ssh is cut. The served directory is at every moment a whole release, old or new.
    h.write_version("v12");
    let mut first = ChildGuard::spawn(
        Command::new(hoist_bin())
            .args(["deploy", "-c"])
            .arg(h.project.join("hoist.toml"))
            .env("HOIST_FAILPOINT", "files-switch")
            .env("HOIST_LEASE_TTL_MS", "12000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let pending_link = || {
        std::fs::read_dir(&h.www).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".app.hoist-link.")
        })
    };
    wait_until(Duration::from_secs(60), pending_link).expect("the deploy reaches its switch");
    let o = h.hoist(&["deploy"], &[]);
    assert_eq!(o.status.code(), Some(1), "second deploy: {}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("lock is held"),
        "{}",
        text(&o)
    );
    // Cut: the CLI killed, its ssh master closed.
    first.signal_group(nix::sys::signal::Signal::SIGKILL);
    let _ = first.child.wait();
    hoist_fleet::ssh::close_masters(&h.fleet.dir.join("ctl"));
    let mut seen = std::collections::BTreeSet::new();
    wait_until(Duration::from_secs(60), || {
        let v = h
            .served_version()
            .expect("the served path is never dangling");
        seen.insert(v);
        !pending_link()
    })
    .expect("the cut switch ends");
    let v = h.served_version().unwrap();
    assert!(
        v == "v10" || v == "v12",
        "wholly old or wholly new: {v} ({seen:?})"
    );
    // The dead deploy's lock expires; the next deploy takes it over and converges.
    let mut o = h.hoist(&["deploy"], &[]);
    wait_until(Duration::from_secs(60), || {
        let locked = o.status.code() == Some(1)
            && String::from_utf8_lossy(&o.stderr).contains("lock is held");
        if locked {
            std::thread::sleep(Duration::from_secs(1));
            o = h.hoist(&["deploy"], &[]);
        }
        !locked
    })
    .expect("the dead deploy's lock expires");
    assert!(o.status.success(), "deploy after the cut: {}", text(&o));
    assert_eq!(h.served_version().as_deref(), Some("v12"));
    wait_until(Duration::from_secs(20), || {
        h.get("/").is_some_and(|(_, b)| b.trim() == "version=v12")
    })
    .expect("v12 serves");

    // Ctrl-C mid-switch: the lock goes back at once (the next deploy is not refused), and
    // the switch still pending on the host never renames.
    h.write_version("v13");
    let first = ChildGuard::spawn(
        Command::new(hoist_bin())
            .args(["deploy", "-c"])
            .arg(h.project.join("hoist.toml"))
            .env("HOIST_FAILPOINT", "files-switch")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_until(Duration::from_secs(60), pending_link).expect("the deploy reaches its switch");
    first.signal_group(nix::sys::signal::Signal::SIGINT);
    let mut first = first;
    let status = first.child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "an interrupted deploy exits 3");
    assert!(!pending_link(), "the pending link went with the lock");
    assert_eq!(h.served_version().as_deref(), Some("v12"), "wholly old");
    h.write_version("v14");
    let o = h.hoist(&["deploy"], &[]);
    assert!(o.status.success(), "deploy after Ctrl-C: {}", text(&o));
    assert_eq!(h.served_version().as_deref(), Some("v14"));

    // A backup on demand, and its restore.
    let o = h.hoist(&["backup", "db"], &[]);
    assert!(o.status.success(), "backup: {}", text(&o));
    std::fs::write(&db, b"not a database").unwrap();
    let o = h.hoist(&["restore", "db", "--force"], &[]);
    assert!(o.status.success(), "restore: {}", text(&o));
    let o = sh(&format!(
        "python3 -c \"import sqlite3; print(sqlite3.connect('{}').execute('select x from t').fetchone()[0])\"",
        db.display()
    ));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "42",
        "{}",
        text(&o)
    );
    // The switch the Ctrl-C left pending on the host ended without renaming.
    wait_until(Duration::from_secs(60), || {
        !sh(&format!("pgrep -u {USER} -x sleep")).status.success()
    })
    .expect("the interrupted switch's wait ends");
    assert_eq!(h.served_version().as_deref(), Some("v14"));
}

/// `[[hosts]]` of a files host reached as the unprivileged user, without a web server:
/// the default restart (`touch tmp/restart.txt`) and no health URL.
fn files_host_toml(name: &str, addr: std::net::Ipv4Addr, path: &Path) -> String {
    format!(
        "[[hosts]]\nname = \"{name}\"\nssh = \"{USER}@{addr}\"\nmode = \"files\"\npath = \"{}\"\n",
        path.display()
    )
}

fn agent_host_toml(name: &str, addr: std::net::Ipv4Addr) -> String {
    format!("[[hosts]]\nname = \"{name}\"\nssh = \"root@{addr}\"\nroles = [\"web\", \"worker\"]\n")
}

fn run(file: &Path, args: &[&str]) -> Output {
    Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// One app file with an agent host and a files host: setup, deploy, status and history
/// reach both; and the time of a files-host deploy beside an agent host's, each deployed
/// alone from its own app file with the same artifact.
#[test]
#[allow(clippy::print_stderr)] // prints its figure (deploy times)
fn a_fleet_mixes_an_agent_host_and_a_files_host() {
    let fleet = Fleet::start(2);
    let (uid, gid) = ensure_user();
    std::fs::set_permissions(&fleet.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = fleet.dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::os::unix::fs::chown(&www, Some(uid), Some(gid)).unwrap();
    let served = www.join("app");
    let (a1, a2) = (fleet.hosts[0].addr, fleet.hosts[1].addr);
    let tail = |hosts: &str| format!("batch = 1\n\n{}\n{hosts}", fleet.ssh_toml());
    let both = format!(
        "{}\n{}",
        agent_host_toml("h1", a1),
        files_host_toml("h2", a2, &served)
    );
    let dir = fleet.dir.join("project");
    let file = hoist_testkit_project(&dir, "v1", &tail(&both));
    let o = run(&file, &["setup"]);
    assert!(o.status.success(), "setup: {}", text(&o));
    // The plan reaches both kinds, and changes nothing.
    let o = run(&file, &["plan"]);
    assert!(o.status.success(), "plan: {}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(plan.contains("host `h2` (files host)"), "{plan}");
    assert!(plan.contains("does not exist yet"), "{plan}");
    assert!(plan.contains("host `h1`"), "{plan}");
    assert!(!served.exists(), "a plan changes nothing");
    let o = run(&file, &["deploy"]);
    assert!(o.status.success(), "mixed deploy: {}", text(&o));
    // A second setup changes nothing on the files host.
    let o = run(&file, &["setup", "h2"]);
    assert!(o.status.success(), "setup again: {}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("Created"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read_to_string(served.join("VERSION")).unwrap(),
        "v1"
    );
    let o = run(&file, &["status"]);
    assert!(o.status.success(), "status: {}", text(&o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("`h2`") && all.contains("h1"), "{all}");
    let o = run(&file, &["history"]);
    assert!(o.status.success(), "history: {}", text(&o));
    // `logs` reaches agent hosts only: with a files host selected it is refused.
    let o = run(&file, &["logs", "web", "--host", "h2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&file, &["logs", "web", "--host", "h1"]);
    assert!(o.status.success(), "logs on the agent host: {}", text(&o));

    // The same artifact to each kind alone: the time of each deploy.
    let agent_only = dir.join("agent.toml");
    let files_only = dir.join("files.toml");
    let text_of = |hosts: &str| {
        std::fs::read_to_string(&file)
            .unwrap()
            .replace(&both, hosts)
    };
    std::fs::write(&agent_only, text_of(&agent_host_toml("h1", a1))).unwrap();
    std::fs::write(&files_only, text_of(&files_host_toml("h2", a2, &served))).unwrap();
    let (mut agent_ms, mut files_ms) = (Vec::new(), Vec::new());
    for v in ["v2", "v3", "v4"] {
        std::fs::write(dir.join("VERSION"), v).unwrap();
        let o = run(&file, &["build"]);
        assert!(o.status.success(), "build: {}", text(&o));
        let artifact = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .map(|id| dir.join(format!(".hoist/demo-{}.tar.zst", id.trim())))
            .unwrap();
        assert!(artifact.exists(), "{}", artifact.display());
        let a = artifact.to_str().unwrap();
        for (f, times) in [(&agent_only, &mut agent_ms), (&files_only, &mut files_ms)] {
            let t = Instant::now();
            let o = run(f, &["deploy", "--artifact", a]);
            times.push(t.elapsed().as_millis());
            assert!(
                o.status.success(),
                "deploy {v} with {}: {}",
                f.display(),
                text(&o)
            );
        }
        assert_eq!(std::fs::read_to_string(served.join("VERSION")).unwrap(), v);
    }
    agent_ms.sort();
    files_ms.sort();
    eprintln!(
        "FIGURE deploy of one changed file (median of 3): files host {} ms, agent host {} ms",
        files_ms[1], agent_ms[1]
    );
}

/// The fleet test app (services `web` and `worker`) with `tail` after `[deploy.rollout]`.
fn hoist_testkit_project(dir: &Path, version: &str, tail: &str) -> PathBuf {
    common::fleet_project(dir, version, "", tail)
}
