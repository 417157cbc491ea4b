//! A fleet rollback across a migration, over the netns fleet (each host its own network
//! and mount namespace, sshd and agent; see tests/netns): refused with exit 2 naming the
//! release, the hook and the backup; then `--with-backup`: the one host holding the
//! database's backup restores it in its own rollback, before any other host switches,
//! and the others record where their data was restored. Needs root and sshd.

mod common;
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::text;
use hoist_testkit::hoist_bin;
use netns::Fleet;

const DB: &str = "/var/lib/hoist/data/demo/app.db";

fn project(fleet: &Fleet, version: &str, migration: Option<&str>) -> PathBuf {
    let tail = format!(
        "batch = 1\n\n{}\n{}",
        fleet.ssh_toml(),
        fleet.hosts_toml(&["web", "worker"])
    );
    let file = common::fleet_project(
        &fleet.dir.join(format!("app-{version}")),
        version,
        "",
        &tail,
    );
    if let Some(m) = migration {
        // Only the host with the database migrates it (the others have none).
        let hooks = format!(
            "[hooks]\npre_activate = '''sh -c \"if [ -f $HOIST_DATA_DIR/app.db ]; then sqlite3 $HOIST_DATA_DIR/app.db \\\"{m}\\\"; fi\"'''\n\n\
             [backups.db]\nsqlite = \"app.db\"\nbefore_deploy = true\n\n[deploy]"
        );
        let toml = std::fs::read_to_string(&file)
            .unwrap()
            .replacen("[deploy]", &hooks, 1);
        std::fs::write(&file, toml).unwrap();
    }
    file
}

fn hoist(file: &Path, args: &[&str]) -> Output {
    Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        .env("HOIST_LEASE_TTL_MS", "6000")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn serving(fleet: &Fleet, i: usize) -> Option<String> {
    let (status, body) = fleet.http_get(i, 80, "/")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["release"].as_str().map(str::to_string)
}

fn release(out: &Output) -> String {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "done")
        .and_then(|e| e["report"]["release"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no report: {}\n{}", text(&out.stdout), text(&out.stderr)))
}

fn sql(fleet: &Fleet, i: usize, q: &str) -> String {
    let out = fleet.exec(i, &format!("sqlite3 {DB} \"{q}\""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[test]
fn a_fleet_rollback_across_a_migration_restores_once_on_the_backups_host() {
    let fleet = Fleet::start(2);
    let v1 = project(&fleet, "v1", None);
    let out = hoist(&v1, &["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out.stderr));
    let out = hoist(&v1, &["deploy", "--json"]);
    assert!(
        out.status.success(),
        "deploy: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let r1 = release(&out);
    // The database lives on h1 only.
    sql(&fleet, 0, "CREATE TABLE t (x); INSERT INTO t VALUES (1);");
    // The app's hooks run as the apps' user `hoist setup` made: the database is theirs.
    let out = fleet.exec(0, &format!("chown hoist-apps:hoist-apps {DB}"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = sql(&fleet, 0, "SELECT * FROM t");

    let v2 = project(
        &fleet,
        "v2",
        Some("ALTER TABLE t ADD COLUMN y; INSERT INTO t VALUES (2, 2);"),
    );
    let out = hoist(&v2, &["deploy", "--json"]);
    assert!(
        out.status.success(),
        "deploy: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let r2 = release(&out);
    assert_ne!(sql(&fleet, 0, "SELECT * FROM t"), before, "migrated");
    for i in 0..2 {
        assert_eq!(serving(&fleet, i).as_deref(), Some(r2.as_str()));
    }

    // Refused before anything changed: exit 2 naming release, hook and backup.
    let out = hoist(&v2, &["rollback"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&r2) && err.contains("ALTER TABLE t ADD COLUMN y"),
        "{err}"
    );
    assert!(err.contains("backup `db`"), "{err}");
    for i in 0..2 {
        assert_eq!(serving(&fleet, i).as_deref(), Some(r2.as_str()));
    }

    // --with-backup: h1 (the backup's host) goes first and alone.
    let out = hoist(&v2, &["rollback", "--with-backup", "--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let batches: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "batch").collect();
    assert_eq!(
        batches[0]["hosts"],
        serde_json::json!(["h1"]),
        "{batches:?}"
    );
    let restored_at = events
        .iter()
        .position(|e| {
            e["host"] == "h1"
                && e["progress"]["step"] == "restore"
                && e["progress"]["phase"] == "end"
        })
        .expect("h1 restored");
    let h2_switch = events
        .iter()
        .position(|e| e["host"] == "h2" && e["progress"]["step"] == "switch")
        .expect("h2 switched");
    assert!(
        restored_at < h2_switch,
        "the restore precedes any other host's switch"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["host"] == "h2" && e["progress"]["step"] == "restore"),
        "restored once"
    );
    assert_eq!(
        sql(&fleet, 0, "SELECT * FROM t"),
        before,
        "the data is the backup's"
    );
    for i in 0..2 {
        assert_eq!(serving(&fleet, i).as_deref(), Some(r1.as_str()), "host {i}");
    }
    // The history says which data each host's app runs on.
    let out = hoist(&v2, &["history", "--json"]);
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let last = |h: &str| {
        docs.iter()
            .rfind(|d| d["host"] == h && d["kind"] == "rollback")
            .cloned()
            .unwrap_or_else(|| panic!("no rollback on {h}: {docs:#?}"))
    };
    assert!(last("h1")["reason"]
        .as_str()
        .unwrap()
        .contains("data restored (--with-backup)"));
    assert!(last("h2")["reason"]
        .as_str()
        .unwrap()
        .contains("data restored on host `h1`"));
}
