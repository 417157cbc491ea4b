//! Crash consistency (design §6, reliability C1): the agent is stopped dead at every
//! journaled step of a deploy and of a rollback (a failpoint pauses it exactly there),
//! SIGKILLed, and started again. Then, against what really runs: one release serves the
//! route and the agent agrees, every instance belongs to the current or standby release,
//! no process carrying an instance marker is unknown to the agent, the interrupted
//! operation is closed in the history, and the next deploy succeeds.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{release_of, text, Host};
use hoist_testkit::wait_until;

const DEPLOY_STEPS: &[&str] = &[
    "materialise",
    "preflight",
    "backup",
    "pre_activate",
    "start",
    "healthy",
    "switch",
    "smoke",
    "drain",
    "retire",
    "prune",
];
const ROLLBACK_STEPS: &[&str] = &[
    "materialise",
    "start",
    "healthy",
    "switch",
    "drain",
    "retire",
    "prune",
];

fn with_hooks(host: &Host, name: &str) -> std::path::PathBuf {
    let p = host.project(name, "", "");
    let toml = std::fs::read_to_string(p.join("hoist.toml")).unwrap();
    let hooks = "[hooks]\npre_activate = \"true\"\nsmoke = \"true\"\n\n[deploy]";
    std::fs::write(p.join("hoist.toml"), toml.replacen("[deploy]", hooks, 1)).unwrap();
    p
}

/// Processes on this machine whose environment names an instance under `root`.
fn marked_processes(root: &std::path::Path) -> Vec<(i32, String)> {
    let data = format!("HOIST_DATA_DIR={}", root.join("data").display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if !vars.iter().any(|v| v.starts_with(&data)) {
            continue;
        }
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            continue;
        }
        if let Some(id) = vars.iter().find_map(|v| v.strip_prefix("HOIST_INSTANCE=")) {
            out.push((pid, id.to_string()));
        }
    }
    out
}

/// The invariants, checked once the restarted agent has settled.
fn check_consistent(host: &Host, point: &str) {
    wait_until(Duration::from_secs(30), || {
        let st = host.status();
        let app = &st["apps"][0];
        let cur = app["release"].as_str().unwrap_or_default().to_string();
        let inst = app["instances"].as_array().cloned().unwrap_or_default();
        let web_ok = inst
            .iter()
            .filter(|i| i["release"] == cur.as_str() && i["state"] == "healthy")
            .count()
            == 2;
        web_ok && host.serving().as_deref() == Some(cur.as_str())
    })
    .unwrap_or_else(|e| panic!("{point}: did not settle: {e}\n{:#}", host.status()));
    let st = host.status();
    let app = &st["apps"][0];
    let cur = app["release"].as_str().unwrap().to_string();
    let standby = app["standby"].as_str().map(str::to_string);
    let known: HashSet<String> = app["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let r = i["release"].as_str().unwrap();
            assert!(
                r == cur || standby.as_deref() == Some(r),
                "{point}: instance of release {r} (current {cur}, standby {standby:?})"
            );
            i["instance"].as_str().unwrap().to_string()
        })
        .collect();
    // Let stops still in flight finish before looking for strays.
    wait_until(Duration::from_secs(20), || {
        marked_processes(&host.root)
            .iter()
            .all(|(_, id)| known.contains(id))
    })
    .unwrap_or_else(|_| {
        panic!(
            "{point}: orphans {:?} (known {known:?})",
            marked_processes(&host.root)
        )
    });
    // One process group per instance (its `sh -c` and the app share it): two groups with
    // the same marker would be a duplicate.
    let mut groups: std::collections::HashMap<String, HashSet<i32>> = Default::default();
    for (pid, id) in marked_processes(&host.root) {
        let pgid =
            nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).map_or(0, |p| p.as_raw());
        groups.entry(id).or_default().insert(pgid);
    }
    for (id, g) in groups {
        assert_eq!(
            g.len(),
            1,
            "{point}: instance {id} runs in several process groups {g:?}"
        );
    }
    let out = host.hoist(&["history", "--json"]);
    let hist: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = hist.as_array().unwrap().last().unwrap().clone();
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the agent stopped during"),
        "{point}: last record {last}"
    );
    let out = host.hoist(&["history", "--verify"]);
    assert!(out.status.success(), "{point}: {}", text(&out.stderr));
}

fn kill_at(host: &mut Host, point: &str, run: impl FnOnce(&Host) -> std::process::Child) {
    let mark = host.dir.join("failpoint.reached");
    let _ = std::fs::remove_file(&mark);
    host.kill_agent();
    host.agent_env = vec![
        ("HOIST_FAILPOINT".into(), point.into()),
        ("HOIST_FAILPOINT_MARK".into(), mark.display().to_string()),
    ];
    host.start_agent();
    let mut cli = run(host);
    wait_until(Duration::from_secs(30), || mark.exists())
        .unwrap_or_else(|_| panic!("{point}: failpoint never reached"));
    host.kill_agent();
    let _ = cli.kill();
    let _ = cli.wait();
    host.agent_env.clear();
    host.start_agent();
}

/// A CLI killed mid-deploy leaves its deploy lease behind (one host takes the fleet's
/// road); it would expire by itself, the operator drops it at once.
fn release_lease(host: &Host, cfg: &str) {
    let out = host.hoist(&["lock", "release", "-c", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn spawn_cli(host: &Host, args: &[&str]) -> std::process::Child {
    std::process::Command::new(hoist_testkit::hoist_bin())
        .args(args)
        .env("HOIST_SOCKET", &host.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_every_deploy_step_recovers_to_a_consistent_state() {
    let mut host = Host::new();
    let base = with_hooks(&host, "base");
    assert!(host.deploy(&base).status.success());
    for (i, step) in DEPLOY_STEPS.iter().enumerate() {
        for phase in ["before", "after"] {
            let point = format!("{step}:{phase}");
            let p = with_hooks(&host, &format!("d{i}{phase}"));
            let cfg = p.join("hoist.toml").display().to_string();
            kill_at(&mut host, &point, |h| spawn_cli(h, &["deploy", "-c", &cfg]));
            check_consistent(&host, &point);
            release_lease(&host, &cfg);
        }
    }
    let last = with_hooks(&host, "after-all");
    let out = host.deploy(&last);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host.serving().as_deref(), Some(release_of(&out).as_str()));
}

#[test]
fn sigkill_at_every_rollback_step_recovers_to_a_consistent_state() {
    let mut host = Host::new();
    for (i, step) in ROLLBACK_STEPS.iter().enumerate() {
        for phase in ["before", "after"] {
            let point = format!("{step}:{phase}");
            // Two releases, so that there is one to go back to.
            for n in 0..2 {
                let p = with_hooks(&host, &format!("r{i}{phase}{n}"));
                let out = host.deploy(&p);
                assert!(out.status.success(), "{point}: {}", text(&out.stderr));
            }
            let cfg = host
                .dir
                .join(format!("r{i}{phase}1/hoist.toml"))
                .display()
                .to_string();
            kill_at(&mut host, &point, |h| {
                spawn_cli(h, &["rollback", "--keep-data", "-c", &cfg])
            });
            check_consistent(&host, &point);
            release_lease(&host, &cfg);
        }
    }
}

/// Issue 14: killed around the switch (before it, between the durable commit and the
/// proxy's update, after it), the agent's recovery closes the deploy with what is true:
/// the history's last record and the last deploy event agree with the release that is
/// current and serving. With a smoke hook that never ran, a committed switch is undone
/// (failed, switched back); without one, a committed switch is a finished deploy. The CLI
/// that saw its agent die says the outcome is unknown (exit 3), never "unchanged" (1).
#[test]
fn sigkill_around_the_switch_never_leaves_history_contradicting_the_current_release() {
    let mut host = Host::new();
    let base = host.project("s-base", "", "");
    assert!(host.deploy(&base).status.success());
    for smoke in [true, false] {
        for point in ["switch:before", "switch_commit:after", "switch:after"] {
            let name = format!("s-{}-{}", smoke, point.replace(':', "-"));
            let p = if smoke {
                with_hooks(&host, &name)
            } else {
                host.project(&name, "", "")
            };
            let cfg = p.join("hoist.toml").display().to_string();
            let mark = host.dir.join("failpoint.reached");
            let _ = std::fs::remove_file(&mark);
            host.kill_agent();
            host.agent_env = vec![
                ("HOIST_FAILPOINT".into(), point.into()),
                ("HOIST_FAILPOINT_MARK".into(), mark.display().to_string()),
            ];
            host.start_agent();
            let mut cli = hoist_testkit::ChildGuard::spawn(
                std::process::Command::new(hoist_testkit::hoist_bin())
                    .args(["deploy", "-c", &cfg])
                    .env("HOIST_SOCKET", &host.socket)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped()),
            )
            .unwrap();
            wait_until(Duration::from_secs(30), || mark.exists())
                .unwrap_or_else(|_| panic!("{point}: failpoint never reached"));
            host.kill_agent();
            let status = cli.child.wait().unwrap();
            let mut stderr = Vec::new();
            std::io::Read::read_to_end(&mut cli.child.stderr.take().unwrap(), &mut stderr).unwrap();
            let out = std::process::Output {
                status,
                stdout: Vec::new(),
                stderr,
            };
            assert_eq!(
                out.status.code(),
                Some(3),
                "{point}: the CLI lost its agent mid-deploy: {}",
                text(&out.stderr)
            );
            // The one deploy road names a host whose agent was lost mid-activation.
            assert!(
                text(&out.stderr).contains("LOST mid-deploy (old or new"),
                "{point}: {}",
                text(&out.stderr)
            );
            host.agent_env.clear();
            host.start_agent();
            check_consistent(&host, point);
            // The deploy's lease outlives the lost CLI (it would expire by itself).
            let out = host.hoist(&["lock", "release", "-c", &cfg]);
            assert!(out.status.success(), "{point}: {}", text(&out.stderr));

            let st = host.status();
            let current = st["apps"][0]["release"].as_str().unwrap().to_string();
            let hist: serde_json::Value =
                serde_json::from_slice(&host.hoist(&["history", "--json"]).stdout).unwrap();
            let last = hist.as_array().unwrap().last().unwrap().clone();
            let (result, release, previous) = (
                last["result"].as_str().unwrap(),
                last["release"].as_str().unwrap(),
                last["previous"].as_str().unwrap(),
            );
            match result {
                "succeeded" => assert_eq!(current, release, "{point}: {last}"),
                _ => assert_eq!(current, previous, "{point}: {last}"),
            }
            // The committed switch with nothing left to verify is a finished deploy.
            if !smoke && point != "switch:before" {
                assert_eq!(result, "succeeded", "{point}: {last}");
            }
            if smoke && point != "switch:before" {
                assert!(
                    last["reason"].as_str().unwrap().contains("switched back"),
                    "{point}: {last}"
                );
            }
            let ev = host.hoist(&["events", "--json"]);
            let kinds: Vec<String> = text(&ev.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .filter(|k| k.starts_with("deploy."))
                .collect();
            assert_eq!(
                kinds.last().map(String::as_str),
                Some(format!("deploy.{result}").as_str()),
                "{point}: events {kinds:?}"
            );
        }
    }
}

/// A journal recovery cannot read is not "nothing was done": the agent refuses to
/// start (saying why) and leaves the operation open; once the state reads again, the
/// operation is closed with what is true (here the committed switch: succeeded).
#[test]
fn an_unreadable_journal_stops_recovery_instead_of_closing_the_operation_blind() {
    let mut host = Host::new();
    let base = host.project("u-base", "", "");
    assert!(host.deploy(&base).status.success());
    let p = host.project("u-next", "", "");
    let cfg = p.join("hoist.toml").display().to_string();
    kill_at_without_restart(&mut host, "switch:after", |h| {
        spawn_cli(h, &["deploy", "-c", &cfg])
    });
    let db = rusqlite::Connection::open(host.root.join("state.db")).unwrap();
    db.execute_batch("ALTER TABLE journal RENAME TO journal_away")
        .unwrap();
    let log = host.dir.join("refused-agent.log");
    let mut agent = hoist_testkit::ChildGuard::spawn(
        std::process::Command::new(hoist_testkit::hoist_bin())
            .args(["agent", "--root"])
            .arg(&host.root)
            .arg("--socket")
            .arg(&host.socket)
            .arg("--proxy")
            .arg(host.proxy.to_string())
            .stderr(std::fs::File::create(&log).unwrap()),
    )
    .unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(30), || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    })
    .unwrap_or_else(|_| panic!("the agent started on an unreadable journal"));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(!status.unwrap().success(), "{stderr}");
    assert!(stderr.contains("state database"), "{stderr}");
    let open: i64 = db
        .query_row(
            "SELECT count(*) FROM operations WHERE result = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 1, "the operation was closed without its journal");
    db.execute_batch("ALTER TABLE journal_away RENAME TO journal")
        .unwrap();
    drop(db);
    host.start_agent();
    check_consistent(&host, "switch:after");
    let hist: serde_json::Value =
        serde_json::from_slice(&host.hoist(&["history", "--json"]).stdout).unwrap();
    let last = hist.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["result"], "succeeded", "{last}");
}

fn kill_at_without_restart(
    host: &mut Host,
    point: &str,
    run: impl FnOnce(&Host) -> std::process::Child,
) {
    let mark = host.dir.join("failpoint.reached");
    let _ = std::fs::remove_file(&mark);
    host.kill_agent();
    host.agent_env = vec![
        ("HOIST_FAILPOINT".into(), point.into()),
        ("HOIST_FAILPOINT_MARK".into(), mark.display().to_string()),
    ];
    host.start_agent();
    let mut cli = run(host);
    wait_until(Duration::from_secs(30), || mark.exists())
        .unwrap_or_else(|_| panic!("{point}: failpoint never reached"));
    host.kill_agent();
    let _ = cli.kill();
    let _ = cli.wait();
    host.agent_env.clear();
}
