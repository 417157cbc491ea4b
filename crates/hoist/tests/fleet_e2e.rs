//! Fleet deploys end to end: three hosts, each a network namespace with its own real
//! sshd and private /var/lib/hoist, /run/hoist, /etc/hoist (tests/netns), prepared by
//! `hoist setup` and driven by the real CLI over OpenSSH. Covers the deploy, a redeploy
//! that moves only the changed blob, a release that fails on the first batch, a host cut
//! off mid-deploy (partial failure, every host wholly old or new), a singleton on exactly
//! one host, and status, history and logs merged across hosts. Needs root and sshd.

mod common;
mod netns;

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use common::text;
use hoist_testkit::{hoist_bin, wait_until, ChildGuard};
use netns::Fleet;

/// The fleet app file of `version` on every host, in rolling batches of one.
fn project(fleet: &Fleet, version: &str, extra_env: &str) -> PathBuf {
    let tail = format!(
        "batch = 1\n\n{}\n{}",
        fleet.ssh_toml(),
        fleet.hosts_toml(&["web", "worker"])
    );
    common::fleet_project(
        &fleet.dir.join(format!("app-{version}")),
        version,
        extra_env,
        &tail,
    )
}

fn hoist(file: &Path, args: &[&str]) -> Output {
    Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        // A deploy cut off from a host leaves its lease there; keep that wait short.
        .env("HOIST_LEASE_TTL_MS", "6000")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `hoist ARGS -c FILE` in the background, for reading its stdout while it runs.
fn spawn(file: &Path, args: &[&str]) -> (ChildGuard, Lines<BufReader<ChildStdout>>) {
    let mut guard = ChildGuard::spawn(
        Command::new(hoist_bin())
            .args(args)
            .arg("-c")
            .arg(file)
            .env("HOIST_LEASE_TTL_MS", "6000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let stdout = guard.child.stdout.take().unwrap();
    (guard, BufReader::new(stdout).lines())
}

/// The JSON lines of a `--json` run.
fn events(out: &Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn report(out: &Output) -> serde_json::Value {
    events(out)
        .into_iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no report: {}\n{}", text(&out.stdout), text(&out.stderr)))
        ["report"]
        .clone()
}

/// The release host `i`'s proxy serves on port 80.
fn serving(fleet: &Fleet, i: usize) -> Option<String> {
    let (status, body) = fleet.http_get(i, 80, "/")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["release"].as_str().map(str::to_string)
}

fn host_states(report: &serde_json::Value) -> Vec<String> {
    report["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_fleet_is_set_up_deployed_rolled_and_survives_a_lost_host() {
    let fleet = Fleet::start(3);
    let v1 = project(&fleet, "v1", "");
    let out = hoist(&v1, &["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out.stderr));

    // The first deploy: every host gets the whole release and serves it.
    let out = hoist(&v1, &["deploy", "--json"]);
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
    let r = report(&out);
    assert_eq!(r["result"], "succeeded");
    let r1 = r["release"].as_str().unwrap().to_string();
    for i in 0..3 {
        assert_eq!(serving(&fleet, i).as_deref(), Some(r1.as_str()), "host {i}");
    }
    let uploads: Vec<serde_json::Value> = events(&out)
        .into_iter()
        .filter(|e| e["event"] == "uploaded")
        .collect();
    assert_eq!(uploads.len(), 3);
    assert!(uploads.iter().all(|u| u["blobs"] == 2), "{uploads:?}");

    // Status across hosts: the singleton worker runs on h1 only.
    let out = hoist(&v1, &["status", "--json"]);
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let workers: Vec<&str> = docs
        .iter()
        .filter(|d| {
            d["status"]["apps"][0]["instances"]
                .as_array()
                .is_some_and(|is| is.iter().any(|i| i["service"] == "worker"))
        })
        .map(|d| d["host"].as_str().unwrap())
        .collect();
    assert_eq!(workers, vec!["h1"]);

    // Apps run as the user `hoist setup` made for them, not as the agent and the proxy
    // (root): #12. Each host has that user in its own /etc.
    for doc in &docs {
        let host = doc["host"].as_str().unwrap();
        let i = host[1..].parse::<usize>().unwrap() - 1;
        let apps_uid = text(&fleet.exec(i, "id -u hoist-apps").stdout)
            .trim()
            .to_string();
        assert!(
            !apps_uid.is_empty() && apps_uid != "0",
            "{host}: {apps_uid}"
        );
        for inst in doc["status"]["apps"][0]["instances"].as_array().unwrap() {
            let pid = inst["pid"].as_u64().unwrap();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .unwrap()
                .to_string();
            assert_eq!(uid, apps_uid, "{host}: {inst}");
        }
    }

    // History and logs merged across hosts, each line naming its host.
    let out = hoist(&v1, &["history", "--json"]);
    assert!(out.status.success(), "history: {}", text(&out.stderr));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut hosts: Vec<&str> = records
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts, vec!["h1", "h2", "h3"]);
    let out = hoist(&v1, &["logs", "web"]);
    assert!(out.status.success(), "logs: {}", text(&out.stderr));
    for h in ["h1 ", "h2 ", "h3 "] {
        assert!(
            text(&out.stdout).lines().any(|l| l.starts_with(h)),
            "{}",
            text(&out.stdout)
        );
    }

    // A redeploy with one changed file moves that blob only.
    let v2 = project(&fleet, "v2", "");
    // The plan asks every host, and changes nothing.
    let out = hoist(&v2, &["plan", "--json"]);
    assert!(out.status.success(), "plan: {}", text(&out.stderr));
    let plans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plans.len(), 3);
    assert!(
        plans.iter().all(|p| p["plan"]["current"] == r1.as_str()),
        "{plans:?}"
    );
    assert_eq!(serving(&fleet, 0).as_deref(), Some(r1.as_str()));
    let out = hoist(&v2, &["deploy", "--json"]);
    assert!(out.status.success(), "redeploy: {}", text(&out.stderr));
    let r2 = report(&out)["release"].as_str().unwrap().to_string();
    for u in events(&out).iter().filter(|e| e["event"] == "uploaded") {
        assert_eq!(u["blobs"], 1, "{u}");
        assert!(u["bytes"].as_u64().unwrap() < 64 * 1024, "{u}");
    }

    // A broken release fails on the first batch; the others are never touched.
    let bad = project(&fleet, "bad", "TESTAPP_FAIL_CHECK = \"1\"");
    let out = hoist(&bad, &["deploy", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        host_states(&report(&out)),
        vec!["failed", "not_started", "not_started"]
    );
    for i in 0..3 {
        assert_eq!(serving(&fleet, i).as_deref(), Some(r2.as_str()), "host {i}");
    }

    // `hoist logs -f` follows every host at once, each line naming its host.
    let (follow, lines) = spawn(&v2, &["logs", "web", "-f", "-n", "5"]);
    let mut seen = std::collections::BTreeSet::new();
    for line in lines {
        let line = line.unwrap();
        if let Some(host) = line.split_whitespace().next() {
            seen.insert(host.to_string());
        }
        if seen.len() == 3 {
            break;
        }
    }
    drop(follow);
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["h1", "h2", "h3"]);

    // A deploy killed with SIGKILL mid-rollout leaves its lease behind: it is shown as
    // held, refuses another deploy naming its holder, and expires by itself.
    let slow = project(&fleet, "slow", "TESTAPP_SLOW_START = \"2\"");
    let (killed, lines) = spawn(&slow, &["deploy", "--json"]);
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap_or_default();
        if v["event"] == "batch" {
            killed.signal_group(nix::sys::signal::Signal::SIGKILL);
            break;
        }
    }
    drop(killed);
    let out = hoist(&slow, &["lock", "status", "--json"]);
    let locks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        locks.iter().all(|l| l["lease"]["live"] == true),
        "{locks:?}"
    );
    let out = hoist(&v2, &["deploy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("held by"),
        "{}",
        text(&out.stderr)
    );
    wait_until(Duration::from_secs(20), || {
        let out = hoist(&slow, &["lock", "status", "--json"]);
        let locks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        locks.len() == 3 && locks.iter().all(|l| l["lease"]["live"] != true)
    })
    .expect("the abandoned lease expires");
    // h1's agent finished the killed deploy on its own; the fleet goes back to v2.
    let out = hoist(&v2, &["deploy", "--json"]);
    assert!(
        out.status.success(),
        "after expiry: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    for i in 0..3 {
        assert_eq!(serving(&fleet, i).as_deref(), Some(r2.as_str()), "host {i}");
    }

    // h2 is cut off while its batch runs: a partial failure, named; h1 on the new
    // release, h3 untouched, h2 wholly old or wholly new once it is back.
    let v3 = project(&fleet, "v3", "");
    let (mut guard, stdout) = spawn(&v3, &["deploy", "--json"]);
    let mut lines = Vec::new();
    let mut cut = false;
    for line in stdout {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if !cut && v["event"] == "batch" && v["index"] == 2 {
            fleet.link_down(1);
            cut = true;
        }
        lines.push(v);
    }
    let status = guard.child.wait().unwrap();
    fleet.link_up(1);
    assert!(cut, "the second batch never started: {lines:?}");
    assert_eq!(status.code(), Some(3), "{lines:?}");
    let r = lines.iter().find(|e| e["event"] == "done").unwrap()["report"].clone();
    let r3 = r["release"].as_str().unwrap().to_string();
    assert_eq!(r["result"], "partial");
    assert_eq!(host_states(&r), vec!["deployed", "lost", "not_started"]);
    assert_eq!(serving(&fleet, 0).as_deref(), Some(r3.as_str()));
    assert_eq!(serving(&fleet, 2).as_deref(), Some(r2.as_str()));
    // h2's agent went on alone: it ends on one release, whichever, and says so.
    let mut seen = None;
    wait_until(Duration::from_secs(30), || {
        seen = serving(&fleet, 1);
        seen.as_deref() == Some(r2.as_str()) || seen.as_deref() == Some(r3.as_str())
    })
    .unwrap_or_else(|_| panic!("h2 serves {seen:?}, neither {r2} nor {r3}"));
    wait_until(Duration::from_secs(30), || {
        let out = hoist(&v3, &["status", "--json"]);
        let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        docs.get(1).and_then(|d| {
            d["status"]["apps"][0]["release"]
                .as_str()
                .map(str::to_string)
        }) == seen
    })
    .expect("h2's agent agrees with what its proxy serves");
}

/// `hoist ARGS -c FILE` with `stdin` as its standard input.
fn hoist_with_stdin(file: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn json_docs(out: &Output) -> Vec<serde_json::Value> {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)))
}

/// The hosts named in host-tagged JSON documents, sorted and deduplicated.
fn hosts_of(docs: &[serde_json::Value]) -> Vec<String> {
    let mut hosts: Vec<String> = docs
        .iter()
        .filter_map(|d| d["host"].as_str().map(str::to_string))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The web instances' pids on each host, from `hoist status --json`.
fn web_pids(file: &Path) -> Vec<(String, Vec<u64>)> {
    let docs = json_docs(&hoist(file, &["status", "--json"]));
    docs.iter()
        .map(|d| {
            let pids = d["status"]["apps"][0]["instances"]
                .as_array()
                .map(|is| {
                    is.iter()
                        .filter(|i| i["service"] == "web" && i["state"] != "stopped")
                        .filter_map(|i| i["pid"].as_u64())
                        .collect()
                })
                .unwrap_or_default();
            (d["host"].as_str().unwrap_or("?").to_string(), pids)
        })
        .collect()
}

/// Every command reaches every host of the app file (`--host` picks some): a secret set
/// once (read from stdin once) is seen by the app on every host, after the deploy that
/// lacked it failed preflight; restart, stop/start, jobs run (a singleton on its one
/// host), releases and events act on and report every host; a host that cannot be
/// reached makes the command exit 3, naming it.
#[test]
fn every_command_reaches_every_host() {
    let fleet = Fleet::start(2);
    let app = hoist_testkit::testapp_bin();
    let file = project(&fleet, "v1", "");
    // The web service writes the secret it sees where the test app serves `/data/*`;
    // a per-host job and a singleton job.
    let toml = std::fs::read_to_string(&file).unwrap();
    let toml = toml
        .replacen(
            &format!("command = \"{} serve\"", app.display()),
            &format!(
                "command = \"sh -c 'printf %s \\\"$API_KEY\\\" > \\\"$HOIST_DATA_DIR/seen\\\"; exec {} serve'\"",
                app.display()
            ),
            1,
        )
        .replacen(
            "[deploy]",
            &format!(
                "[secrets]\nrequired = [\"API_KEY\"]\n\n\
                 [jobs.each]\ncommand = \"{app} job --name each\"\nevery = \"1h\"\nsingleton = false\n\n\
                 [jobs.once]\ncommand = \"{app} job --name once\"\nevery = \"1h\"\n\n[deploy]",
                app = app.display()
            ),
            1,
        );
    std::fs::write(&file, toml).unwrap();
    let out = hoist(&file, &["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out.stderr));

    // The new user's first deploy: preflight fails for want of the secret, everywhere.
    let out = hoist(&file, &["deploy"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("API_KEY"),
        "{}",
        text(&out.stderr)
    );

    // Set once, from stdin, on every host.
    let out = hoist_with_stdin(&file, &["secrets", "set", "API_KEY"], "s3cret-value\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    for h in ["h1", "h2"] {
        assert!(
            text(&out.stderr).contains(&format!("secret `API_KEY` of `demo` on `{h}`")),
            "{}",
            text(&out.stderr)
        );
    }
    let out = hoist_with_stdin(&file, &["secrets", "set", "ONLY_H2", "--host", "h2"], "x");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lists = json_docs(&hoist(&file, &["secrets", "list", "--json"]));
    let names = |host: &str| -> Vec<String> {
        lists
            .iter()
            .find(|d| d["host"] == host)
            .and_then(|d| d["names"].as_array())
            .map(|n| n.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("h1"), ["API_KEY"]);
    assert_eq!(names("h2"), ["API_KEY", "ONLY_H2"]);
    assert!(!text(&hoist(&file, &["secrets", "list", "--json"]).stdout).contains("s3cret"));

    // Now the deploy passes, and the app on every host sees the one value.
    let out = hoist(&file, &["deploy"]);
    assert!(out.status.success(), "deploy: {}", text(&out.stderr));
    for i in 0..2 {
        assert_eq!(
            fleet.http_get(i, 80, "/data/seen"),
            Some((200, "s3cret-value".to_string())),
            "host {i}"
        );
    }

    // restart: every host's web instances are new.
    let before = web_pids(&file);
    let out = hoist(&file, &["restart", "web"]);
    assert!(out.status.success(), "restart: {}", text(&out.stderr));
    for h in ["h1", "h2"] {
        assert!(
            text(&out.stderr).contains(&format!("`web` of `demo` on `{h}`")),
            "{}",
            text(&out.stderr)
        );
    }
    let after = web_pids(&file);
    for ((host, b), (_, a)) in before.iter().zip(&after) {
        assert!(!a.is_empty() && a != b, "{host}: {b:?} → {a:?}");
    }

    // stop on h1 only (a comma list names one host here), then start it again.
    let out = hoist(&file, &["stop", "web", "--host", "h1"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let stopped = web_pids(&file);
    assert!(stopped[0].1.is_empty(), "{stopped:?}");
    assert_eq!(stopped[1].1, after[1].1, "h2 untouched");
    assert_eq!(fleet.http_get(1, 80, "/data/seen").map(|r| r.0), Some(200));
    let out = hoist(&file, &["start", "web", "--host", "h1,h1"]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    wait_until(Duration::from_secs(20), || {
        web_pids(&file).iter().all(|(_, p)| !p.is_empty())
    })
    .expect("web runs again on h1");

    // jobs run: a per-host job runs on both hosts, the singleton on its one host.
    let out = hoist(&file, &["jobs", "run", "each"]);
    assert!(out.status.success(), "jobs run: {}", text(&out.stderr));
    let out = hoist(&file, &["jobs", "run", "once"]);
    assert!(out.status.success(), "jobs run: {}", text(&out.stderr));
    let mut runs = Vec::new();
    wait_until(Duration::from_secs(20), || {
        runs = json_docs(&hoist(&file, &["jobs", "--json"]));
        runs.iter().filter(|r| r["trigger"] == "manual").count() == 3
            && runs.iter().all(|r| r["status"] != "running")
    })
    .unwrap_or_else(|_| panic!("{runs:?}"));
    let ran_on = |job: &str| -> Vec<String> {
        hosts_of(
            &runs
                .iter()
                .filter(|r| r["job"] == job && r["trigger"] == "manual")
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(ran_on("each"), ["h1", "h2"]);
    assert_eq!(ran_on("once"), ["h1"]);
    let out = hoist(&file, &["jobs", "run", "once", "--host", "h2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // releases and events: from every host, tagged with it; `--host` narrows.
    let releases = json_docs(&hoist(&file, &["releases", "--json"]));
    assert_eq!(hosts_of(&releases), ["h1", "h2"]);
    let current: Vec<serde_json::Value> = releases
        .iter()
        .filter(|r| r["role"] == "current")
        .cloned()
        .collect();
    assert_eq!(hosts_of(&current), ["h1", "h2"], "{releases:?}");
    let out = hoist(&file, &["events", "--json"]);
    assert!(out.status.success(), "events: {}", text(&out.stderr));
    assert_eq!(hosts_of(&events(&out)), ["h1", "h2"]);
    let out = hoist(&file, &["events", "--json", "--host", "h2"]);
    assert_eq!(hosts_of(&events(&out)), ["h2"]);
    let out = hoist(&file, &["status", "--host", "h9"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // maintenance and alerts: every host answers, tagged with it.
    let out = hoist(&file, &["maintenance", "on", "--json"]);
    assert!(out.status.success(), "maintenance: {}", text(&out.stderr));
    let on = json_docs(&out);
    assert_eq!(hosts_of(&on), ["h1", "h2"], "{on:?}");
    assert!(on.iter().all(|d| d["on"] == true), "{on:?}");
    let out = hoist(&file, &["maintenance", "off", "--json"]);
    assert!(out.status.success(), "maintenance: {}", text(&out.stderr));
    assert!(json_docs(&out).iter().all(|d| d["on"] == false));
    let out = hoist(&file, &["alerts", "--json"]);
    assert!(out.status.success(), "alerts: {}", text(&out.stderr));
    assert_eq!(hosts_of(&json_docs(&out)), ["h1", "h2"]);

    // Redeploying the current release: unchanged on every host, exit 0.
    let out = hoist(&file, &["deploy", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host_states(&report(&out)), ["unchanged", "unchanged"]);

    // A host that cannot be reached: the others answer, it is named, exit 3.
    fleet.link_down(1);
    let out = hoist(&file, &["releases"]);
    fleet.link_up(1);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`h2`"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("h1"), "{}", text(&out.stdout));

    // down: the app stops on every host (its releases stay for the next deploy).
    let mut down = None;
    hoist_testkit::wait_until(std::time::Duration::from_secs(60), || {
        let out = hoist(&file, &["down", "--json"]);
        let ok = out.status.success();
        down = Some(out);
        ok
    })
    .unwrap_or_else(|e| panic!("{e}: down: {:?}", down.as_ref().map(|o| text(&o.stderr))));
    assert_eq!(hosts_of(&json_docs(down.as_ref().unwrap())), ["h1", "h2"]);
}
