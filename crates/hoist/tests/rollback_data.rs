//! A rollback across a migration (a deploy that ran `pre_activate`) through a real agent
//! and the real CLI: refused with exit 2 naming the release, the hook and the backup;
//! then `--keep-data` (the code goes back, the data stays, the history says so) and
//! `--with-backup` (the backup taken before the migration is restored in the rollback's
//! own operation: the data matches it and the old release serves).

mod common;

use std::path::Path;
use std::process::Command;

use common::{release_of, text, Host};

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

fn history(h: &Host, cfg: &str) -> Vec<serde_json::Value> {
    let out = h.hoist(&["history", "--json", "-c", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn a_rollback_across_a_migration_is_refused_then_done_keeping_or_restoring_the_data() {
    let h = Host::new();
    let db = h.root.join("data/demo/app.db");
    let extra = |migration: &str| {
        format!(
            "[hooks]\npre_activate = \"sqlite3 {} '{migration}'\"\n\n[backups.db]\nsqlite = \"app.db\"\nbefore_deploy = true\n",
            db.display()
        )
    };
    let v1 = h.project("v1", "", &extra("CREATE TABLE IF NOT EXISTS t (x)"));
    let out = h.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = release_of(&out);
    sql(&db, "INSERT INTO t VALUES (1);");

    // v2 migrates: a column and a row only the new code knows.
    let v2 = h.project(
        "v2",
        "",
        &extra("ALTER TABLE t ADD COLUMN y; INSERT INTO t VALUES (2, 2)"),
    );
    let cfg2 = v2.join("hoist.toml").display().to_string();
    let out = h.deploy(&v2);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r2 = release_of(&out);
    assert_eq!(h.serving().as_deref(), Some(r2.as_str()));
    let taken = history(&h, &cfg2);
    assert!(!taken.is_empty());
    let backups: serde_json::Value =
        serde_json::from_slice(&h.hoist(&["backups", "--json", "-c", &cfg2]).stdout).unwrap();
    let b2 = backups
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["trigger"] == "before_deploy" && b["status"] == "ok")
        .map(|b| b["id"].as_i64().unwrap())
        .max()
        .expect("a before_deploy backup of v2's deploy");

    // Refused: exit 2, naming the release, the hook and the backup; nothing changed.
    let out = h.hoist(&["rollback", "-c", &cfg2]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&r2), "names the release: {err}");
    assert!(
        err.contains("ALTER TABLE t ADD COLUMN y"),
        "names the hook: {err}"
    );
    assert!(
        err.contains(&format!("backup `db` {b2}")),
        "names the backup: {err}"
    );
    assert!(
        err.contains("--with-backup") && err.contains("--keep-data"),
        "{err}"
    );
    assert_eq!(h.serving().as_deref(), Some(r2.as_str()));
    // Both flags at once is bad usage.
    let out = h.hoist(&["rollback", "--with-backup", "--keep-data", "-c", &cfg2]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // --keep-data: v1 serves on the migrated data, and the history records it.
    let out = h.hoist(&["rollback", "--keep-data", "-c", &cfg2]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
    assert_eq!(sql(&db, "SELECT count(*) FROM t"), "2");
    let last = history(&h, &cfg2).last().cloned().unwrap();
    assert_eq!(last["kind"], "rollback", "{last}");
    assert_eq!(last["release"].as_str(), Some(r1.as_str()), "{last}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("--keep-data") && reason.contains(&r2),
        "{last}"
    );

    // v3 migrates again; its backup holds the data as v2 left it.
    let before = sql(&db, "SELECT * FROM t ORDER BY x");
    let v3 = h.project(
        "v3",
        "",
        &extra("ALTER TABLE t ADD COLUMN z; INSERT INTO t VALUES (3, 3, 3)"),
    );
    let cfg3 = v3.join("hoist.toml").display().to_string();
    let out = h.deploy(&v3);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r3 = release_of(&out);
    assert_eq!(h.serving().as_deref(), Some(r3.as_str()));
    sql(&db, "INSERT INTO t VALUES (4, 4, 4);");
    assert_ne!(sql(&db, "SELECT * FROM t ORDER BY x"), before);

    // --with-backup: one operation restores the data, then v1 serves.
    let out = h.hoist(&["rollback", "--with-backup", "--json", "-c", &cfg3]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    let steps: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["phase"] == "end")
        .filter_map(|v| v["step"].as_str().map(str::to_string))
        .collect();
    let at = |s: &str| {
        steps
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("{s} in {steps:?}"))
    };
    assert!(
        at("stop") < at("restore") && at("restore") < at("switch"),
        "{steps:?}"
    );
    assert_eq!(
        sql(&db, "SELECT * FROM t ORDER BY x"),
        before,
        "the data is the backup's"
    );
    assert_eq!(sql(&db, "PRAGMA integrity_check"), "ok");
    assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
    let last = history(&h, &cfg3).last().cloned().unwrap();
    assert_eq!(last["kind"], "rollback", "{last}");
    assert_eq!(last["result"], "succeeded", "{last}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("--with-backup") && reason.contains(&r3),
        "{last}"
    );
    // One operation: no separate restore record.
    let hist = history(&h, &cfg3);
    assert!(hist.iter().all(|r| r["kind"] != "restore"), "{hist:?}");

    // Going forward again (the default target is the standby, v3) would run v3's code on
    // the restored, older data: refused the same way.
    let out = h.hoist(&["rollback", "-c", &cfg3]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("restored data from before a migration"),
        "{err}"
    );
    assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
}

/// The agent SIGKILLed right after a rollback's restore (before the target started): the
/// data is the target's, so recovery makes the target current and starts it, instead of
/// the migrated release running on restored data.
#[test]
fn an_agent_killed_after_the_restore_recovers_to_the_old_release() {
    let mut h = Host::new();
    let db = h.root.join("data/demo/app.db");
    let extra = |migration: &str| {
        format!(
            "[hooks]\npre_activate = \"sqlite3 {} '{migration}'\"\n\n[backups.db]\nsqlite = \"app.db\"\nbefore_deploy = true\n",
            db.display()
        )
    };
    let v1 = h.project("v1", "", &extra("CREATE TABLE IF NOT EXISTS t (x)"));
    let out = h.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = release_of(&out);
    sql(&db, "INSERT INTO t VALUES (1);");
    let before = sql(&db, "SELECT * FROM t");
    let v2 = h.project(
        "v2",
        "",
        &extra("ALTER TABLE t ADD COLUMN y; INSERT INTO t VALUES (2, 2)"),
    );
    let cfg2 = v2.join("hoist.toml").display().to_string();
    let out = h.deploy(&v2);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mark = h.dir.join("failpoint.reached");
    h.kill_agent();
    h.agent_env = vec![
        ("HOIST_FAILPOINT".into(), "restore:after".into()),
        ("HOIST_FAILPOINT_MARK".into(), mark.display().to_string()),
    ];
    h.start_agent();
    let mut cli = Command::new(hoist_testkit::hoist_bin())
        .args(["rollback", "--with-backup", "-c", &cfg2])
        .env("HOIST_SOCKET", &h.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    hoist_testkit::wait_until(std::time::Duration::from_secs(30), || mark.exists())
        .expect("the failpoint after `restore` is reached");
    h.kill_agent();
    let _ = cli.kill();
    let _ = cli.wait();
    h.agent_env.clear();
    h.start_agent();

    hoist_testkit::wait_until(std::time::Duration::from_secs(30), || {
        h.serving().as_deref() == Some(r1.as_str())
    })
    .unwrap_or_else(|e| panic!("{e}: {:#}", h.status()));
    assert_eq!(
        sql(&db, "SELECT * FROM t"),
        before,
        "the data is the backup's"
    );
    let last = history(&h, &cfg2).last().cloned().unwrap();
    assert_eq!(last["kind"], "rollback", "{last}");
    assert_eq!(last["result"], "succeeded", "{last}");
    assert!(
        last["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("data restored"),
        "{last}"
    );
    let out = h.hoist(&["lock", "release", "-c", &cfg2]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
