//! Faults injected into a real host (agent, proxy, shims, apps): a full disk under the
//! root (a real tmpfs), shims and agents SIGKILLed, two agents on two roots running the
//! same release, and an agent restarted in another time namespace.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::{testapp_bin, wait_until};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

/// Every instance of `service` in `hoist status --json`.
fn instances(h: &Host, service: &str) -> Vec<serde_json::Value> {
    let st = h.status();
    st["apps"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["instances"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["service"] == service)
        .collect()
}

fn all_healthy(h: &Host, n: usize) -> bool {
    let web = instances(h, "web");
    web.len() == n && web.iter().all(|i| i["state"] == "healthy")
}

/// The pid of `instance`'s shim, from its identity record.
fn shim_pid(h: &Host, instance: &str) -> i32 {
    let rec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(h.root.join("run").join(format!("{instance}.json"))).unwrap(),
    )
    .unwrap();
    rec["shim"]["pid"].as_i64().unwrap() as i32
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
}

/// Live processes of `h`'s root whose environment holds `HOIST_INSTANCE=instance` (tests
/// running at once deploy the same release, so the same instance ids).
fn marked(h: &Host, instance: &str) -> Vec<i32> {
    let want = format!("HOIST_INSTANCE={instance}");
    let run_dir = std::fs::canonicalize(h.root.join("run")).unwrap();
    let root = format!("HOIST_RUN_DIR={}", run_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| alive(*pid as u64))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .filter(|kv| *kv == want.as_bytes() || *kv == root.as_bytes())
                .count()
                == 2
        })
        .collect()
}

fn deploy_ok(h: &Host, project: &Path) {
    let out = h.deploy(project);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A shim whose log write fails must keep draining the app's pipes: the app never blocks,
/// lines are dropped and counted while the disk is full, a notice says how many, logging
/// resumes once space is freed, and `status` reports the drops.
#[test]
fn a_full_disk_drops_and_counts_log_lines_without_blocking_the_app_and_logging_resumes() {
    let h = Host::on_tmpfs("8m");
    let progress = h.dir.join("progress");
    // ~1 KiB lines, so a pipe the shim stopped draining blocks the app within 64 lines;
    // the app also counts outside the full disk, to show it never stops.
    let command = format!(
        "i=0; pad=$(printf '%0900d' 0); while :; do echo \"seq $i $pad\"; echo $i >> {}; i=$((i+1)); sleep 0.005; done",
        progress.display()
    );
    let p = h.project(
        "v1",
        "",
        &format!("\n[services.logger]\ncommand = '''{command}'''\nroles = [\"web\"]\nstop_timeout = \"2s\"\n"),
    );
    deploy_ok(&h, &p);
    let count = || -> u64 {
        std::fs::read_to_string(&progress)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse::<u64>().ok())
            .next_back()
            .unwrap_or(0)
    };
    wait_until(LONG, || count() > 50).expect("the logger runs");

    // Fill the disk.
    let filler = h.root.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let full_at = count();
    wait_until(LONG, || count() > full_at + 400).expect("the app never blocks on its output");
    let dropped = || -> u64 {
        instances(&h, "logger")
            .first()
            .and_then(|i| i["dropped_lines"].as_u64())
            .unwrap_or(0)
    };
    wait_until(LONG, || dropped() > 100).expect("status reports the dropped lines");

    // Free it: logging resumes with a notice of what was lost.
    std::fs::remove_file(&filler).unwrap();
    let logs = h.root.join("logs/demo/logger");
    let lines = || -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_until(LONG, || {
        let ls = lines();
        let notice = ls.iter().position(|l| {
            l["stream"] == "hoist" && l["line"].as_str().unwrap().starts_with("dropped ")
        });
        notice.is_some_and(|n| ls[n..].iter().filter(|l| l["stream"] == "stdout").count() > 100)
    })
    .expect("logging resumes after a `dropped N log lines` notice");

    let ls = lines();
    let seqs: BTreeSet<u64> = ls
        .iter()
        .filter(|l| l["stream"] == "stdout")
        .filter_map(|l| l["line"].as_str()?.split(' ').nth(1)?.parse().ok())
        .collect();
    let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    let missing = (last - first + 1) - seqs.len() as u64;
    let noticed: u64 = ls
        .iter()
        .filter(|l| l["stream"] == "hoist")
        .filter_map(|l| l["line"].as_str()?.split(' ').nth(1)?.parse::<u64>().ok())
        .sum();
    assert!(
        missing > 100,
        "the disk was full for a while: {missing} missing"
    );
    assert_eq!(
        dropped(),
        missing,
        "status counts exactly the missing lines"
    );
    assert_eq!(
        noticed, missing,
        "the notices count exactly the missing lines"
    );
}

/// A SIGKILLed shim takes its app with it (nothing is left under pid 1 holding the port),
/// and the instance is healthy again on its own.
/// Waits for one snapshot of the status with both instances healthy and `id` running
/// under a pid other than `old_pid`; returns that pid.
fn healed(h: &Host, id: &str, old_pid: u64) -> u64 {
    let mut new_pid = 0;
    wait_until(LONG, || {
        let web = instances(h, "web");
        web.len() == 2
            && web.iter().all(|i| i["state"] == "healthy")
            && web.iter().any(|i| {
                i["instance"] == id
                    && i["pid"].as_u64().is_some_and(|p| {
                        new_pid = p;
                        p != old_pid
                    })
            })
    })
    .expect("the instance is healthy again under a new pid");
    new_pid
}

#[test]
fn a_sigkilled_shim_leaves_no_orphan_and_its_instance_heals() {
    let h = Host::new();
    let p = h.project("v1", "", "");
    deploy_ok(&h, &p);
    wait_until(LONG, || all_healthy(&h, 2)).unwrap();
    let web = instances(&h, "web");
    let id = web[0]["instance"].as_str().unwrap().to_string();
    let old_pid = web[0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(shim_pid(&h, &id)), Signal::SIGKILL).unwrap();

    wait_until(LONG, || !alive(old_pid)).expect("the app died with its shim");
    let new_pid = healed(&h, &id, old_pid);
    let procs = marked(&h, &id);
    assert_eq!(procs, vec![new_pid as i32], "only the new app runs");
}

/// A shim the agent adopted (it was spawned by the agent's previous life, so it is not
/// the agent's child and its end comes through its pidfd) is SIGKILLed: the agent notices,
/// ends what is left and starts the instance again. `status` shows the memory of
/// instances that declare no memory limit (read when asked, not every second).
#[test]
fn a_sigkilled_adopted_shim_is_noticed_and_its_instance_heals() {
    let mut h = Host::new();
    let p = h.project("v1", "", "");
    deploy_ok(&h, &p);
    wait_until(LONG, || all_healthy(&h, 2)).unwrap();
    let before = h.pids();
    h.kill_agent();
    h.start_agent();
    wait_until(LONG, || all_healthy(&h, 2)).expect("the instances were re-adopted");
    assert_eq!(
        h.pids(),
        before,
        "the instances were restarted, not adopted"
    );
    wait_until(LONG, || {
        instances(&h, "web")
            .iter()
            .all(|i| i["rss_bytes"].as_u64().is_some_and(|b| b > 0))
    })
    .expect("status shows each instance's memory");

    let web = instances(&h, "web");
    let id = web[0]["instance"].as_str().unwrap().to_string();
    let old_pid = web[0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(shim_pid(&h, &id)), Signal::SIGKILL).unwrap();
    let new_pid = healed(&h, &id, old_pid);
    assert!(!alive(old_pid), "the old app outlived its adopted shim");
    assert_eq!(
        marked(&h, &id),
        vec![new_pid as i32],
        "only the new app runs"
    );
}

/// Two agents on two roots run the same release (so the same instance ids). One agent
/// is killed with one of its shims and restarted: the other root's processes receive
/// nothing (same pids, all alive).
#[test]
fn recovery_never_signals_another_roots_instances_of_the_same_release() {
    let mut a = Host::new();
    let b = Host::new();
    let p = a.project("v1", "", "");
    let artifact = a.dir.join("v1.hoist");
    let out = a.hoist(&[
        "build",
        "-c",
        p.join("hoist.toml").to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for h in [&a, &b] {
        let out = h.hoist(&[
            "deploy",
            "-c",
            p.join("hoist.toml").to_str().unwrap(),
            "--artifact",
            artifact.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        wait_until(LONG, || all_healthy(h, 2)).unwrap();
    }
    let ids_a: Vec<String> = instances(&a, "web")
        .iter()
        .map(|i| i["instance"].as_str().unwrap().to_string())
        .collect();
    let ids_b: Vec<String> = instances(&b, "web")
        .iter()
        .map(|i| i["instance"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids_a, ids_b, "the same release runs the same instance ids");
    let b_pids = b.pids();
    let b_marked: Vec<Vec<i32>> = ids_b.iter().map(|id| marked(&b, id)).collect();

    let a_shim = shim_pid(&a, &ids_a[0]);
    a.kill_agent();
    kill(Pid::from_raw(a_shim), Signal::SIGKILL).unwrap();
    a.start_agent();
    wait_until(LONG, || all_healthy(&a, 2)).expect("the agent restored its instances");

    assert_eq!(
        b.pids(),
        b_pids,
        "the other root's instances were restarted"
    );
    for (id, pids) in ids_b.iter().zip(&b_marked) {
        for pid in pids {
            assert!(
                alive(*pid as u64),
                "{id}: pid {pid} of the other root was killed"
            );
        }
    }
    assert!(all_healthy(&b, 2));
}

/// An agent restarted under another boot-time offset (a time namespace) sees other start
/// times in /proc: it must still recognise its shims and adopt them, not kill them.
#[test]
fn an_agent_restarted_in_a_time_namespace_readopts_its_instances() {
    let probe = std::process::Command::new("unshare")
        .args(["-T", "--boottime", "1000", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) && !Path::new("/proc/self/timens_offsets").exists() {
        // Time namespaces need Linux 5.6+ and util-linux's unshare -T: nothing to test.
        return;
    }
    let mut h = Host::new();
    let p = h.project("v1", "", "");
    deploy_ok(&h, &p);
    wait_until(LONG, || all_healthy(&h, 2)).unwrap();
    let before = h.pids();
    h.kill_agent();
    h.agent_wrapper = ["unshare", "-T", "--boottime", "1000"]
        .map(String::from)
        .to_vec();
    h.start_agent();
    // Adopted instances keep their pids; give the agent time to have acted on them.
    wait_until(LONG, || {
        let st = h.status();
        st["apps"][0]["instances"]
            .as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|i| i["state"] == "healthy"))
    })
    .unwrap();
    assert_eq!(h.pids(), before, "the instances were killed and restarted");
    for (_, pid) in &before {
        assert!(alive(*pid));
    }
}

/// `status` shows the app's own pid: a simple command is executed directly, not under a
/// shell that would be a second process.
#[test]
fn status_pid_is_the_app_process_itself() {
    let h = Host::new();
    let p = h.project("v1", "", "");
    deploy_ok(&h, &p);
    wait_until(LONG, || all_healthy(&h, 2)).unwrap();
    let app = std::fs::canonicalize(testapp_bin()).unwrap();
    for (id, pid) in h.pids() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert_eq!(exe, app, "{id}: pid {pid} is not the app");
        assert_eq!(marked(&h, &id), vec![pid as i32], "{id}: one process");
        // And its shim is the small binary, not the whole `hoist` (memory per instance).
        let shim = std::fs::read_link(format!("/proc/{}/exe", shim_pid(&h, &id))).unwrap();
        assert_eq!(shim.file_name().unwrap(), "hoist-shim", "{id}");
    }
}

/// Two `hoist deploy` at once, ten times over, each of another release: every upload is
/// stored whole (no false "truncated or corrupt"), exactly one deploy wins, and the other
/// is refused naming the holder.
#[test]
fn two_deploys_at_once_never_corrupt_each_other_and_exactly_one_wins() {
    let h = Host::new();
    let mut artifacts = Vec::new();
    for n in 0..20 {
        let p = h.project(&format!("r{n}"), "", "");
        // Each deploy holds the app's lock a while, so the two always overlap.
        let toml = std::fs::read_to_string(p.join("hoist.toml")).unwrap();
        let toml = toml.replacen(
            "[deploy]",
            "[hooks]\npre_activate = \"sleep 1\"\n\n[deploy]",
            1,
        );
        std::fs::write(p.join("hoist.toml"), toml).unwrap();
        let artifact = h.dir.join(format!("r{n}.hoist"));
        let out = h.hoist(&[
            "build",
            "-c",
            p.join("hoist.toml").to_str().unwrap(),
            "-o",
            artifact.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        artifacts.push((p, artifact));
    }
    let mut corrupt = Vec::new();
    for round in 0..10 {
        let children: Vec<_> = artifacts[round * 2..round * 2 + 2]
            .iter()
            .map(|(p, artifact)| {
                std::process::Command::new(hoist_testkit::hoist_bin())
                    .args(["deploy", "-c"])
                    .arg(p.join("hoist.toml"))
                    .arg("--artifact")
                    .arg(artifact)
                    .env("HOIST_SOCKET", &h.socket)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let errs: Vec<String> = outs.iter().map(|o| text(&o.stderr)).collect();
        for e in &errs {
            if e.contains("corrupt") || e.contains("truncated") {
                corrupt.push(format!("round {round}: {e}"));
            }
        }
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {errs:#?}");
        let lost = outs.iter().position(|o| !o.status.success()).unwrap();
        assert!(
            errs[lost].contains("a deploy of `demo` is already running: held by")
                || errs[lost].contains("the deploy lease of `demo` is held by"),
            "round {round}: {}",
            errs[lost]
        );
    }
    assert!(corrupt.is_empty(), "false corrupt artifacts: {corrupt:#?}");
}

/// Hook output is bounded as app logs are: a 10 MiB line is cut, and output past the
/// total bound is drained but not shown; the deploy itself is unaffected.
#[test]
fn a_hook_printing_a_10_mib_line_is_cut_and_its_output_bounded() {
    let h = Host::new();
    let p = h.project("v1", "", "");
    let toml = std::fs::read_to_string(p.join("hoist.toml")).unwrap();
    let hook = r#"[hooks]
pre_activate = '''head -c 10485760 /dev/zero | tr '\0' x; echo; yes hello | head -c 3000000; echo done'''

[deploy]"#;
    std::fs::write(p.join("hoist.toml"), toml.replacen("[deploy]", hook, 1)).unwrap();
    let out = h.deploy(&p);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{}", &err[..err.len().min(4000)]);
    assert!(
        err.len() < 4 * 1024 * 1024,
        "the hook's output reached the CLI unbounded: {} bytes",
        err.len()
    );
    assert!(
        err.contains("…[cut 10469376 bytes]"),
        "the long line is cut"
    );
    assert!(
        err.contains("more bytes of output not shown"),
        "the total is bounded"
    );
}

/// A service's `logs = { max_size, keep }` reaches its shim: 1 MB of output leaves the live
/// file and `keep` rotated ones, each within `max_size`, and nothing older.
#[test]
fn a_services_log_retention_bounds_what_its_instances_keep() {
    let h = Host::new();
    let p = h.project("v1", "", "");
    let toml = std::fs::read_to_string(p.join("hoist.toml")).unwrap();
    let chatty = r#"[services.chatty]
command = "sh -c 'yes 0123456789abcdef | head -c 1000000; exec sleep 1000'"
roles = ["web"]
logs = { max_size = "64KiB", keep = 2 }

[deploy]"#;
    std::fs::write(p.join("hoist.toml"), toml.replacen("[deploy]", chatty, 1)).unwrap();
    let out = h.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = h.root.join("logs/demo/chatty");
    let files = || -> BTreeSet<String> {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    // 1 MB is about 16 rotations of 64 KiB: wait until the oldest kept one exists.
    wait_until(LONG, || files().iter().any(|f| f.ends_with(".log.2")))
        .unwrap_or_else(|e| panic!("{e}: {:?}", files()));
    std::thread::sleep(Duration::from_millis(300));
    let names = files();
    assert!(
        names.iter().all(|f| !f.ends_with(".log.3")),
        "more than `keep` rotated files: {names:?}"
    );
    for f in &names {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 64 * 1024, "{f} is {len} bytes, over max_size");
    }
}

/// Fills the filesystem holding `path` with one file, which is returned.
fn fill_disk(path: &Path) -> PathBuf {
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    filler
}

/// Runs the CLI with a deadline: a command that hangs is killed and reported as such.
fn hoist_within(h: &Host, args: &[&str], deadline: Duration) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(hoist_testkit::hoist_bin())
        .args(args)
        .env("HOIST_SOCKET", &h.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let done = wait_until(deadline, || child.try_wait().ok().flatten().is_some());
    if done.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return (None, format!("`hoist {}` hung", args.join(" ")));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), text(&out.stderr))
}

/// On a full disk, commands end and say why: `restart` does not hang, `rollback` says the
/// disk is full and where, and a deploy that fails for want of space is in the history.
#[test]
fn on_a_full_disk_commands_end_and_say_the_disk_is_full() {
    let h = Host::on_tmpfs("16m");
    let v1 = h.project("v1", "", "");
    deploy_ok(&h, &v1);
    let v2 = h.project("v2", "", "");
    deploy_ok(&h, &v2);
    let filler = fill_disk(&h.root);

    let (code, err) = hoist_within(
        &h,
        &[
            "restart",
            "web",
            "-c",
            v2.join("hoist.toml").to_str().unwrap(),
        ],
        LONG,
    );
    assert!(code.is_some(), "{err}");
    let (code, err) = hoist_within(
        &h,
        &["rollback", "-c", v2.join("hoist.toml").to_str().unwrap()],
        LONG,
    );
    assert!(code.is_some_and(|c| c != 0), "{err}");
    assert!(
        err.contains("disk is full") || err.contains("No space left"),
        "{err}"
    );
    let v3 = h.project("v3", "", "");
    let (code, err) = hoist_within(
        &h,
        &["deploy", "-c", v3.join("hoist.toml").to_str().unwrap()],
        LONG,
    );
    assert!(code.is_some_and(|c| c != 0), "{err}");
    assert!(
        err.contains("disk is full") || err.contains("No space left"),
        "{err}"
    );
    std::fs::remove_file(&filler).unwrap();
    // Recorded once the state can be written again.
    let mut hist = String::new();
    wait_until(LONG, || {
        let out = h.hoist(&[
            "history",
            "--json",
            "-c",
            v3.join("hoist.toml").to_str().unwrap(),
        ]);
        hist = text(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&hist).unwrap_or_default();
        v.as_array().is_some_and(|ops| {
            ops.iter().any(|op| {
                op["result"] == "failed"
                    && op["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("disk is full"))
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e}: the failed deploy is not in the history: {hist}"));
}

/// Test hygiene: a host dropped by a test ends everything it started, even a proxy that
/// no longer answers its control socket (here: stopped).
#[test]
fn a_dropped_host_leaves_no_process_behind() {
    let h = Host::new();
    let p = h.project("v1", "", "");
    deploy_ok(&h, &p);
    let pids = hoist_testkit::processes_under(&h.dir);
    let proxy = common::proxy_pid(&h.root).unwrap();
    assert!(pids.contains(&proxy), "{pids:?} lacks the proxy {proxy}");
    assert!(pids.len() >= 4, "agent, proxy, shims and apps: {pids:?}");
    kill(Pid::from_raw(proxy), Signal::SIGSTOP).unwrap();
    drop(h);
    wait_until(LONG, || pids.iter().all(|p| !alive(*p as u64))).unwrap_or_else(|e| {
        let left: Vec<_> = pids.iter().filter(|p| alive(**p as u64)).collect();
        panic!("{e}: left running: {left:?}")
    });
}

/// An unhealthy instance's restart waits out its stop timeout on its own: a frozen app
/// (SIGSTOP, so its SIGTERM stays pending) must not hold up the supervision of the others.
/// While the frozen one is still stopping, another instance that is killed is restarted.
#[test]
fn a_frozen_instance_stopping_never_holds_up_the_restart_of_another() {
    let h = Host::new();
    let p = h.project("v1", "", "");
    let file = p.join("hoist.toml");
    let toml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        toml.replace("stop_timeout = \"5s\"", "stop_timeout = \"120s\""),
    )
    .unwrap();
    deploy_ok(&h, &p);
    wait_until(LONG, || all_healthy(&h, 2)).unwrap();
    let web = instances(&h, "web");
    let frozen = web[0]["pid"].as_u64().unwrap();
    let (other_id, other_pid) = (
        web[1]["instance"].as_str().unwrap().to_string(),
        web[1]["pid"].as_u64().unwrap(),
    );
    kill(Pid::from_raw(frozen as i32), Signal::SIGSTOP).unwrap();
    // Unhealthy past its threshold, the frozen instance is being stopped (for up to 120 s).
    wait_until(LONG, || {
        instances(&h, "web")
            .iter()
            .any(|i| i["state"] == "stopping")
    })
    .expect("the frozen instance is restarted");
    kill(Pid::from_raw(other_pid as i32), Signal::SIGKILL).unwrap();
    let restarted = wait_until(LONG, || {
        instances(&h, "web").iter().any(|i| {
            i["instance"] == other_id.as_str()
                && i["state"] == "healthy"
                && i["pid"].as_u64().is_some_and(|p| p != other_pid)
        })
    });
    let still_frozen = alive(frozen);
    // Let the frozen app take its pending SIGTERM, so the host ends quickly either way.
    let _ = kill(Pid::from_raw(frozen as i32), Signal::SIGCONT);
    restarted.expect("the killed instance is healthy again with a new pid");
    assert!(
        still_frozen,
        "the killed instance came back only after the frozen one's stop ended"
    );
}

/// Instances come and go with every deploy, each with its own log files: the logs of a
/// release pruned from the disk go once no one has written them for a while (here made
/// old by hand, then the agent restarted so that its retention pass runs at once); the
/// kept releases' logs stay.
#[test]
fn the_logs_of_a_pruned_releases_instances_go_with_it() {
    let mut h = Host::new();
    let mut releases = Vec::new();
    for v in ["v1", "v2", "v3"] {
        let out = h.deploy(&h.project(v, "", "keep_releases = 1"));
        assert!(out.status.success(), "{}", text(&out.stderr));
        releases.push(common::release_of(&out));
    }
    let dir = h.root.join("logs/demo/web");
    let logs_of = |release: &str| -> Vec<PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("demo-web-{}-", &release[..8]))
            })
            .collect()
    };
    // v1 is neither current nor standby, and keep_releases = 1: its tree is pruned.
    wait_until(LONG, || {
        !h.root.join("releases/demo").join(&releases[0]).exists()
    })
    .expect("v1 is pruned");
    let old = logs_of(&releases[0]);
    assert!(!old.is_empty(), "v1's instances wrote logs");
    for p in old.iter().chain(logs_of(&releases[1]).iter()) {
        let status = std::process::Command::new("touch")
            .args(["-m", "-d", "2 hours ago"])
            .arg(p)
            .status()
            .unwrap();
        assert!(status.success());
    }
    h.kill_agent();
    h.start_agent();
    wait_until(LONG, || logs_of(&releases[0]).is_empty())
        .unwrap_or_else(|e| panic!("{e}: v1's logs stay: {:?}", logs_of(&releases[0])));
    assert!(!logs_of(&releases[1]).is_empty(), "the standby's logs stay");
    assert!(
        !logs_of(&releases[2]).is_empty(),
        "the current release's logs stay"
    );
}
