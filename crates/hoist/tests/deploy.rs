//! Deploys through the real CLI, agent, proxy, shims and test app: a good release takes
//! traffic; every kind of broken release is refused with its reason while the old one
//! keeps serving; rollback; the agent's death is not the app's.

mod common;

use std::time::Duration;

use common::{release_of, text, Host, Load};
use hoist_testkit::{testapp_bin, wait_until};

#[test]
fn a_good_release_takes_traffic_and_rollback_is_a_switch() {
    let host = Host::new();
    let v1 = host.project("v1", "", "");
    let out = host.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = release_of(&out);
    assert_eq!(text(&out.stdout).trim(), format!("http://{}/", host.proxy));
    assert_eq!(host.serving().as_deref(), Some(r1.as_str()));

    let load = Load::start(host.proxy);
    let v2 = host.project("v2", "", "");
    let out = host.deploy(&v2);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r2 = release_of(&out);
    assert_ne!(r1, r2);
    assert_eq!(host.serving().as_deref(), Some(r2.as_str()));

    let out = host.hoist(&["rollback", "-c", v2.join("hoist.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host.serving().as_deref(), Some(r1.as_str()));
    let (ok, failed, errors) = load.finish();
    assert!(ok > 0);
    assert_eq!(
        failed, 0,
        "failed requests during deploy and rollback: {errors:?}"
    );

    let out = host.hoist(&["history", "--json"]);
    let hist: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<(&str, &str)> = hist
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["kind"].as_str().unwrap(), h["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("deploy", "succeeded"),
            ("deploy", "succeeded"),
            ("rollback", "succeeded")
        ]
    );
    let out = host.hoist(&["history", "--verify"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Each broken release: exit 1, the reason named, the old release still serving, and
/// nothing of the new release left running.
#[test]
fn broken_releases_never_take_traffic() {
    let host = Host::new();
    let good = host.project("good", "", "");
    let out = host.deploy(&good);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = release_of(&out);

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "missing-dep",
            "TESTAPP_FAIL_CHECK = \"1\"",
            "",
            "the check command",
        ),
        (
            "health-500",
            "TESTAPP_FAIL_HEALTH = \"1\"",
            "",
            "did not become healthy within",
        ),
        (
            "crash",
            "TESTAPP_CRASH_AT_START = \"1\"",
            "",
            "exited with status 1 before it became healthy",
        ),
        (
            "slow",
            "TESTAPP_SLOW_START = \"30\"",
            "",
            "did not become healthy within",
        ),
        (
            "flapping",
            "TESTAPP_HEALTH_PASS_THEN_FAIL = \"1\"",
            "",
            "did not become healthy within",
        ),
    ];
    for (name, env, extra, reason) in cases {
        let p = host.project(name, env, extra);
        let out = host.deploy(&p);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(reason),
            "{name}: expected `{reason}` in:\n{err}"
        );
        assert!(
            err.contains(&format!("`{r1}` still serves")),
            "{name}: {err}"
        );
        assert_eq!(host.serving().as_deref(), Some(r1.as_str()), "{name}");
        let st = host.status();
        let releases: Vec<&str> = st["apps"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["release"].as_str().unwrap())
            .collect();
        assert!(
            releases.iter().all(|r| *r == r1),
            "{name}: instances of the broken release remain: {releases:?}"
        );
    }
    // The crash at start shows the app's own last words.
    let p = host.project("crash2", "TESTAPP_CRASH_AT_START = \"1\"", "");
    let err = text(&host.deploy(&p).stderr);
    assert!(
        err.contains("ModuleNotFoundError: No module named 'missing_dep'"),
        "{err}"
    );
}

#[test]
fn a_failing_smoke_hook_switches_traffic_back() {
    let host = Host::new();
    let good = host.project("good", "", "");
    let r1 = release_of(&host.deploy(&good));
    let bad = host.project("smoke", "", "");
    let toml = std::fs::read_to_string(bad.join("hoist.toml")).unwrap();
    std::fs::write(
        bad.join("hoist.toml"),
        toml.replace(
            "[deploy]",
            "[hooks]\nsmoke = \"echo smoke says no; exit 3\"\n\n[deploy]",
        ),
    )
    .unwrap();
    let out = host.deploy(&bad);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("smoke | smoke says no"), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    assert_eq!(host.serving().as_deref(), Some(r1.as_str()));
}

#[test]
fn instances_survive_the_agent_and_are_adopted_not_restarted() {
    let mut host = Host::new();
    let p = host.project("v1", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let before = host.pids();
    assert_eq!(before.len(), 2);

    let load = Load::start(host.proxy);
    for _ in 0..3 {
        host.kill_agent();
        // Nothing serves traffic differently while the agent is gone.
        assert!(
            host.serving().is_some(),
            "the proxy stopped serving with the agent"
        );
        host.start_agent();
        assert_eq!(
            host.pids(),
            before,
            "instances were restarted instead of adopted"
        );
    }
    let (ok, failed, errors) = load.finish();
    assert!(ok > 0);
    assert_eq!(failed, 0, "{errors:?}");
    let st = host.status();
    for i in st["apps"][0]["instances"].as_array().unwrap() {
        assert_eq!(i["restarts"], 0, "{i}");
    }
}

#[test]
fn a_killed_instance_is_restarted_alone() {
    let host = Host::new();
    let good = host.project("good", "", "");
    assert!(host.deploy(&good).status.success());
    let pids = host.pids();
    // Kill one instance's app process: the agent notices and starts it again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0].1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(20), || {
        let now = host.pids();
        now.len() == 2 && now[0].1 != 0 && now[0].1 != pids[0].1 && now[1] == pids[1]
    })
    .expect("the killed instance is restarted, the other untouched");
    let out = host.hoist(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &st["apps"][0]["instances"][0];
    assert_eq!(first["restarts"], 1, "{first}");
    assert_eq!(first["last_exit"], "killed by SIGKILL", "{first}");
}

#[test]
fn jobs_never_overlap_and_are_killed_at_their_timeout() {
    let host = Host::new();
    let app = testapp_bin();
    let jobs = format!(
        "[jobs.tick]\ncommand = \"{app} job --sleep 1.5 --name tick\"\nevery = \"1s\"\ntimeout = \"10s\"\n\n\
         [jobs.stuck]\ncommand = \"{app} job --sleep 60 --spawn-child --name stuck\"\nevery = \"1h\"\ntimeout = \"1s\"\n\n[deploy]",
        app = app.display()
    );
    let p = host.project("jobs", "", "");
    let toml = std::fs::read_to_string(p.join("hoist.toml"))
        .unwrap()
        .replacen("[deploy]", &jobs, 1);
    std::fs::write(
        p.join("hoist.toml"),
        toml.replace("roles = [\"web\"]", "roles = [\"web\"]\n"),
    )
    .unwrap();
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cfg = p.join("hoist.toml");
    let cfg = cfg.to_str().unwrap();

    let out = host.hoist(&["jobs", "run", "stuck", "-c", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = |h: &Host| -> Vec<serde_json::Value> {
        serde_json::from_slice(&h.hoist(&["jobs", "--json", "-c", cfg]).stdout).unwrap()
    };
    wait_until(Duration::from_secs(30), || {
        let r = runs(&host);
        let tick_done = r
            .iter()
            .filter(|r| r["job"] == "tick" && r["status"] == "succeeded")
            .count();
        let skipped = r
            .iter()
            .filter(|r| r["job"] == "tick" && r["status"] == "skipped")
            .count();
        let stuck = r
            .iter()
            .any(|r| r["job"] == "stuck" && r["status"] == "timeout");
        tick_done >= 2 && skipped >= 1 && stuck
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", runs(&host)));

    // Runs of `tick` never overlapped: each start comes after the previous end.
    let log = std::fs::read_to_string(host.root.join("data/demo/job-tick.log")).unwrap();
    let mut open = false;
    for line in log.lines() {
        if line.starts_with("start") {
            assert!(!open, "a run started before the previous ended:\n{log}");
            open = true;
        } else if line.starts_with("end") {
            open = false;
        }
    }
    // The stuck run's whole process group is gone.
    let stuck_log = std::fs::read_to_string(host.root.join("data/demo/job-stuck.log")).unwrap();
    let pid: i32 = stuck_log
        .lines()
        .next()
        .unwrap()
        .split(' ')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), None).is_err()
    })
    .expect("the timed-out job's process group is gone");
}

/// The project `name` with the job `[jobs.NAME]` given by `job` (its TOML body).
fn with_job(host: &Host, name: &str, job: &str, deploy: &str) -> std::path::PathBuf {
    let p = host.project(name, "", deploy);
    let toml = std::fs::read_to_string(p.join("hoist.toml"))
        .unwrap()
        .replacen("[deploy]", &format!("{job}\n\n[deploy]"), 1);
    std::fs::write(p.join("hoist.toml"), toml).unwrap();
    p
}

/// Soak finding: a release was pruned while a job run lived in it. A run holds its
/// release: deploys that would prune it keep its tree until the run ends.
#[test]
fn a_job_run_keeps_its_release_until_it_ends() {
    let host = Host::new();
    let app = testapp_bin();
    let job = format!(
        "[jobs.long]\ncommand = \"{} job --sleep 10 --name long\"\nevery = \"1h\"\ntimeout = \"60s\"",
        app.display()
    );
    let v0 = with_job(&host, "v0", &job, "keep_releases = 1");
    let out = host.deploy(&v0);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r0 = release_of(&out);
    let cfg = v0.join("hoist.toml");
    let cfg = cfg.to_str().unwrap();
    let out = host.hoist(&["jobs", "run", "long", "-c", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let runs = || -> Vec<serde_json::Value> {
        serde_json::from_slice(&host.hoist(&["jobs", "--json", "-c", cfg]).stdout).unwrap()
    };
    // Two deploys: r0 is neither current nor standby any more, and keep_releases = 1.
    for v in ["v1", "v2"] {
        let out = host.deploy(&with_job(&host, v, &job, "keep_releases = 1"));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let tree = host.root.join("releases/demo").join(&r0);
    let still_running = runs()
        .iter()
        .any(|r| r["job"] == "long" && r["status"] == "running");
    assert!(
        still_running,
        "the run ended too soon for this test: {:#?}",
        runs()
    );
    assert!(tree.is_dir(), "release {r0} was pruned under its live run");
    wait_until(Duration::from_secs(60), || {
        runs()
            .iter()
            .any(|r| r["job"] == "long" && r["status"] == "succeeded")
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", runs()));
    // Once the run has ended, the next deploy prunes it.
    let out = host.deploy(&with_job(&host, "v3", &job, "keep_releases = 1"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!tree.exists(), "release {r0} is kept after its run ended");
}

/// Soak finding: the scheduler started due runs one by one inside the supervision loop,
/// so slow spawns stalled supervision. With a job start that never returns (a
/// failpoint), a killed instance is still restarted.
#[test]
fn a_stuck_job_start_does_not_stall_supervision() {
    let mut host = Host::new();
    let mark = host.dir.join("failpoint");
    host.kill_agent();
    host.agent_env = vec![
        ("HOIST_FAILPOINT".into(), "job_spawn:before".into()),
        ("HOIST_FAILPOINT_MARK".into(), mark.display().to_string()),
    ];
    host.start_agent();
    let job = "[jobs.tick]\ncommand = \"true\"\nevery = \"1s\"";
    let out = host.deploy(&with_job(&host, "v0", job, ""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(30), || mark.exists()).expect("a job start is stuck");
    let pids = host.pids();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0].1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(30), || {
        let now = host.pids();
        now.len() == 2 && now[0].1 != 0 && now[0].1 != pids[0].1
    })
    .expect("the killed instance is restarted while a job start hangs");
}

#[test]
fn old_releases_are_pruned_but_never_the_current_or_standby_one() {
    let host = Host::new();
    let mut released = Vec::new();
    for (i, env) in [
        "",
        "",
        "TESTAPP_FAIL_CHECK = \"1\"",
        "",
        "TESTAPP_FAIL_CHECK = \"1\"",
        "",
    ]
    .iter()
    .enumerate()
    {
        let p = host.project(&format!("v{i}"), env, "keep_releases = 2");
        let out = host.deploy(&p);
        if env.is_empty() {
            assert!(out.status.success(), "{}", text(&out.stderr));
            released.push(release_of(&out));
        } else {
            assert_eq!(out.status.code(), Some(1));
        }
    }
    let current = released.last().unwrap().clone();
    let standby = released[released.len() - 2].clone();
    let out = host.hoist(&[
        "releases",
        "--json",
        "-c",
        host.dir.join("v0/hoist.toml").to_str().unwrap(),
    ]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kept: Vec<(&str, &str)> = list
        .iter()
        .map(|r| (r["release"].as_str().unwrap(), r["role"].as_str().unwrap()))
        .collect();
    assert!(kept.contains(&(current.as_str(), "current")), "{kept:?}");
    assert!(kept.contains(&(standby.as_str(), "standby")), "{kept:?}");
    assert_eq!(kept.len(), 2, "{kept:?}");
    let mut dirs: Vec<String> = std::fs::read_dir(host.root.join("releases/demo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    dirs.sort();
    let mut want = vec![current, standby];
    want.sort();
    assert_eq!(dirs, want);
    assert_eq!(
        host.serving().as_deref(),
        Some(released.last().unwrap().as_str())
    );
}

#[test]
fn a_second_deploy_of_the_same_app_is_refused_naming_the_holder() {
    let host = Host::new();
    let p = host.project("v1", "", "");
    assert!(host.deploy(&p).status.success());
    // The first deploy holds the lock while its pre_activate hook runs.
    let slow = host.project("slow", "", "");
    let marker = host.dir.join("in-hook");
    let toml = std::fs::read_to_string(slow.join("hoist.toml")).unwrap();
    let hook = format!(
        "[hooks]\npre_activate = \"touch {} && sleep 3\"\n\n[deploy]",
        marker.display()
    );
    std::fs::write(slow.join("hoist.toml"), toml.replacen("[deploy]", &hook, 1)).unwrap();
    let mut first = std::process::Command::new(hoist_testkit::hoist_bin())
        .args(["deploy", "-c", slow.join("hoist.toml").to_str().unwrap()])
        .env("HOIST_SOCKET", &host.socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), || marker.exists())
        .expect("the first deploy reaches its hook");
    let out = host.deploy(&host.project("v2", "", ""));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // One host takes the same road as a fleet: the second deploy is refused at the lease.
    assert!(
        err.contains("the deploy lease of `demo` is held by"),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
}

#[test]
fn an_instance_past_its_memory_limit_is_restarted_and_the_event_recorded() {
    let host = Host::new();
    let p = host.project("leaky", "TESTAPP_LEAK_MIB_PER_SEC = \"40\"", "");
    let toml = std::fs::read_to_string(p.join("hoist.toml")).unwrap();
    std::fs::write(
        p.join("hoist.toml"),
        toml.replace(
            "stop_timeout = \"5s\"",
            "stop_timeout = \"5s\"\nmemory_limit = \"160MiB\"",
        ),
    )
    .unwrap();
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(Duration::from_secs(30), || {
        let out = host.hoist(&["events", "--json"]);
        text(&out.stdout)
            .lines()
            .any(|l| l.contains("instance.memory_limit"))
    })
    .expect("a memory_limit event");
    wait_until(Duration::from_secs(30), || {
        let st = host.status();
        st["apps"][0]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["restarts"].as_u64() >= Some(1))
    })
    .expect("the leaking instance was restarted");
}

#[test]
fn logs_are_kept_filtered_and_followed_and_restart_keeps_serving() {
    let host = Host::new();
    let p = host.project("v1", "", "");
    assert!(host.deploy(&p).status.success());
    let cfg = p.join("hoist.toml");
    let cfg = cfg.to_str().unwrap();
    let out = host.hoist(&["logs", "web", "--grep", "]: listening", "-c", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    assert_eq!(
        lines.lines().count(),
        2,
        "one `listening` line per instance:\n{lines}"
    );

    let follow = std::process::Command::new(hoist_testkit::hoist_bin())
        .args([
            "logs",
            "web",
            "-f",
            "--grep",
            "]: listening",
            "-n",
            "0",
            "-c",
            cfg,
        ])
        .env("HOIST_SOCKET", &host.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let follow = hoist_testkit::ChildGuard { child: follow };
    let load = Load::start(host.proxy);
    let out = host.hoist(&["restart", "web", "-c", cfg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (ok, failed, errors) = load.finish();
    assert!(ok > 0);
    assert_eq!(failed, 0, "a rolling restart dropped requests: {errors:?}");
    // The followed stream shows both restarted instances coming up.
    let mut guard = follow;
    let mut stdout = guard.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(&mut stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("followed only {seen:?}"),
        }
    }
    drop(guard);
}

#[test]
fn a_hostile_artifact_is_refused_and_the_old_release_keeps_serving() {
    let host = Host::new();
    let good = host.project("good", "", "");
    let out = host.deploy(&good);
    let r1 = release_of(&out);
    // A hand-made archive whose manifest is not a valid one: refused on upload, before
    // anything is unpacked (the artifact crate tests every hostile entry kind).
    let evil = host.dir.join("evil.tar.zst");
    let mut tar = Vec::new();
    let manifest = br#"{"format":1}"#;
    let mut header = [0u8; 512];
    let name = b"hoist-release.json";
    header[..name.len()].copy_from_slice(name);
    header[100..108].copy_from_slice(b"0000644\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", manifest.len()).as_bytes());
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&header);
    tar.extend_from_slice(manifest);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&evil, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    let out = host.hoist(&[
        "deploy",
        "--artifact",
        evil.to_str().unwrap(),
        "-c",
        good.join("hoist.toml").to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("artifact refused"), "{err}");
    assert_eq!(host.serving().as_deref(), Some(r1.as_str()));
}

#[test]
fn plan_shows_what_would_change_and_changes_nothing() {
    let host = Host::new();
    let v1 = host.project("v1", "", "");
    let r1 = release_of(&host.deploy(&v1));
    let v2 = host.project("v2", "GREETING = \"hi\"", "");
    let toml = std::fs::read_to_string(v2.join("hoist.toml")).unwrap();
    std::fs::write(
        v2.join("hoist.toml"),
        format!("{toml}\n[secrets]\nrequired = [\"API_KEY\"]\n"),
    )
    .unwrap();
    let out = host.hoist(&[
        "plan",
        "--json",
        "-c",
        v2.join("hoist.toml").to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing secret fails the plan: {}",
        text(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["current"], r1.as_str());
    assert_eq!(plan["env"]["added"], serde_json::json!(["GREETING"]));
    assert_eq!(plan["secrets"]["added"], serde_json::json!(["API_KEY"]));
    assert_eq!(plan["files"]["changed"], serde_json::json!(["VERSION"]));
    assert_eq!(
        plan["upload_bytes"], 2,
        "only the changed file's bytes are new"
    );
    let secrets = plan["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "secrets")
        .unwrap()
        .clone();
    assert_eq!(secrets["ok"], false, "{secrets}");
    assert!(secrets["detail"].as_str().unwrap().contains("`API_KEY`"));
    // Nothing changed on the host.
    assert_eq!(host.serving().as_deref(), Some(r1.as_str()));
    let out = host.hoist(&["history", "--json"]);
    let hist: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hist.as_array().unwrap().len(), 1);
}

#[test]
fn a_release_that_fails_during_the_bake_is_switched_back() {
    let host = Host::new();
    let good = host.project(
        "good",
        "",
        "bake = { duration = \"4s\", max_5xx_percent = 1 }",
    );
    let out = host.deploy(&good);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = release_of(&out);
    let load = Load::start(host.proxy);
    // Healthy long enough to be admitted and switched to, then it dies.
    let bad = host.project(
        "bad",
        "TESTAPP_CRASH_AFTER = \"1.5\"",
        "bake = { duration = \"4s\", max_5xx_percent = 1 }",
    );
    let out = host.deploy(&bad);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the bake failed"), "{err}");
    assert!(err.contains(&format!("`{r1}` still serves")), "{err}");
    assert_eq!(host.serving().as_deref(), Some(r1.as_str()));
    let (ok, _failed, _) = load.finish();
    assert!(ok > 0);
}

/// A single host is a fleet of one: deploying the release it already runs is `unchanged`,
/// exit 0, nothing touched (no new instance, no history record), as on a fleet.
#[test]
fn redeploying_the_current_release_is_unchanged_and_touches_nothing() {
    let host = Host::new();
    let v1 = host.project("v1", "", "");
    let out = host.deploy(&v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r1 = release_of(&out);
    let pids = host.pids();
    let out = host.deploy(&v1);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "release `{r1}` is already current; nothing was touched"
        )),
        "{err}"
    );
    assert_eq!(host.pids(), pids);
    let cfg = v1.join("hoist.toml");
    let out = host.hoist(&["history", "--json", "-c", cfg.to_str().unwrap()]);
    let hist: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hist.len(), 1, "{hist:?}");
    // `events` takes `-c` like every command.
    let out = host.hoist(&["events", "--json", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deploy"),
        "{}",
        text(&out.stdout)
    );
}

/// An agent frozen with SIGSTOP: the CLI does not hang; it names the agent's pid and
/// state. A short silence (HOIST_CLIENT_TIMEOUT_MS) keeps the test quick.
#[test]
fn a_frozen_agent_is_named_not_waited_for() {
    let host = Host::new();
    let v1 = host.project("v1", "", "");
    assert!(host.deploy(&v1).status.success());
    let pid = host.agent.as_ref().unwrap().pid() as i32;
    let agent = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let run = |args: &[&str]| {
        let mut guard = hoist_testkit::ChildGuard::spawn(
            std::process::Command::new(hoist_testkit::hoist_bin())
                .args(args)
                .env("HOIST_SOCKET", &host.socket)
                .env("HOIST_CLIENT_TIMEOUT_MS", "500")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped()),
        )
        .unwrap();
        let mut status = None;
        let waited = wait_until(Duration::from_secs(60), || {
            status = guard.child.try_wait().unwrap();
            status.is_some()
        });
        let mut err = String::new();
        if waited.is_ok() {
            use std::io::Read;
            guard
                .child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
        }
        (waited, status, err)
    };
    let cfg = v1.join("hoist.toml");
    let status = run(&["status"]);
    let deploy = run(&["deploy", "-c", cfg.to_str().unwrap()]);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    for (what, (waited, code, err)) in [("status", status), ("deploy", deploy)] {
        waited.unwrap_or_else(|e| panic!("`hoist {what}` hangs on a stopped agent: {e}"));
        assert_eq!(code.unwrap().code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(&format!(
                "the agent does not answer (pid {pid}, state T: stopped)"
            )),
            "{what}: {err}"
        );
        assert!(err.contains("kill -CONT"), "{what}: {err}");
    }
    // Resumed, it answers again.
    assert!(host.hoist(&["status"]).status.success());
}

/// Ctrl-C during a deploy gives the deploy lease back at once (one host takes the fleet's
/// road, and a lease left behind would refuse the next deploy until it expired); the
/// agent finishes the activation it had begun.
#[test]
fn an_interrupted_deploy_gives_its_lease_back() {
    let host = Host::new();
    let slow = host.project("slow", "", "");
    let marker = host.dir.join("in-hook");
    let toml = std::fs::read_to_string(slow.join("hoist.toml")).unwrap();
    let hook = format!(
        "[hooks]\npre_activate = \"touch {} && sleep 2\"\n\n[deploy]",
        marker.display()
    );
    std::fs::write(slow.join("hoist.toml"), toml.replacen("[deploy]", &hook, 1)).unwrap();
    let cfg = slow.join("hoist.toml").display().to_string();
    let mut cli = hoist_testkit::ChildGuard::spawn(
        std::process::Command::new(hoist_testkit::hoist_bin())
            .args(["deploy", "-c", &cfg])
            .env("HOIST_SOCKET", &host.socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    )
    .unwrap();
    wait_until(Duration::from_secs(20), || marker.exists()).expect("the deploy reaches its hook");
    let live = |host: &Host| {
        let out = host.hoist(&["lock", "status", "--json", "-c", &cfg]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["lease"]["live"] == true
    };
    assert!(live(&host), "the running deploy holds the lease");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.pid() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = cli.child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut cli.child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("interrupted: the deploy lease is released"),
        "{err}"
    );
    assert!(!live(&host), "the lease was given back");
    // The agent finished the activation on its own: the slow release serves.
    let mut served = None;
    wait_until(Duration::from_secs(30), || {
        served = host.serving();
        host.status()["apps"][0]["release"].as_str() == served.as_deref() && served.is_some()
    })
    .unwrap_or_else(|_| panic!("serving {served:?}"));
    let out = host.deploy(&slow);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
