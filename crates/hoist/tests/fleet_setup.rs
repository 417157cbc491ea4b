//! `hoist setup` on a fleet of network-namespace hosts, each a real sshd (tests/netns),
//! driven by the real CLI; and the ssh transport's safety rules (reliability H1–H3):
//! a changed host key stops everything before a command runs, an unknown host is refused
//! outside setup, agent forwarding never happens. Needs root and sshd (but the last
//! test, the API over a bridging command without ssh).

mod common;
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hoist_fleet::{HostKeys, Remote, SshError};
use hoist_protocol::agent::Hello;
use hoist_testkit::{hoist_bin, wait_until, ChildGuard};
use netns::Fleet;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An app file for the fleet; returns its path.
fn app_file(fleet: &Fleet) -> PathBuf {
    let path = fleet.dir.join("hoist.toml");
    std::fs::write(
        &path,
        format!(
            "app = \"demo\"\n\n[services.web]\ncommand = \"sleep 1000\"\n\n{}\n{}",
            fleet.ssh_toml(),
            fleet.hosts_toml(&["web"])
        ),
    )
    .unwrap();
    path
}

/// `hoist setup --json` with `bin`, its ssh found through a shim that records every argv.
fn setup(fleet: &Fleet, bin: &Path, extra: &[&str]) -> (Output, serde_json::Value) {
    let shim = ssh_shim(fleet);
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let file = app_file(fleet);
    let out = Command::new(bin)
        .args(["setup", "--json", "-c"])
        .arg(&file)
        .args(extra)
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

/// A directory whose `ssh` appends its argv (one line per run) to `ssh-argv.log`, then
/// runs the real ssh.
fn ssh_shim(fleet: &Fleet) -> PathBuf {
    let dir = fleet.dir.join("shim");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/bin/sh\n# One write per line: setups of several hosts log at once.\nprintf '%s\\n' \"$*\" >> {log}\nexec /usr/bin/ssh \"$@\"\n",
        log = fleet.dir.join("ssh-argv.log").display()
    );
    let path = dir.join("ssh");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

/// The options of a logged ssh argv: what comes before `--` (the remote command after it
/// is the caller's and may well redirect to /dev/null).
fn ssh_options(line: &str) -> &str {
    line.split(" -- ").next().unwrap_or(line)
}

fn ssh_argv_log(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.dir.join("ssh-argv.log")).unwrap_or_default()
}

fn remote(fleet: &Fleet, i: usize, keys: HostKeys) -> Remote {
    let file = app_file(fleet);
    let loaded = hoist_config::load(&file, None).unwrap();
    let host = &loaded.spec.hosts[i];
    Remote::new(
        host,
        &loaded.spec.ssh,
        &fleet.dir,
        &fleet.dir.join("cm"),
        keys,
    )
    .unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The agent's hello through `ssh … hoist agent connect` (a fresh master, closed after).
fn hello(fleet: &Fleet, i: usize) -> Result<Hello, String> {
    let r = remote(fleet, i, HostKeys::Strict);
    block_on(async {
        let res = r.client().get::<Hello>("/v1/hello").await;
        r.close().await;
        res.map_err(|e| e.to_string())
    })
}

fn actions(report: &serde_json::Value) -> Vec<(String, String)> {
    report["report"]["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("no actions in {report}"))
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn setup_from_scratch_then_no_change_then_an_upgrade() {
    let fleet = Fleet::start(3);

    // From scratch: every step changes something on every host.
    let (out, json) = setup(&fleet, &hoist_bin(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{json}", text(&out.stderr));
    let hosts = json["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    let local_sha = sha256(&hoist_bin());
    let local_shim_sha = sha256(&hoist_bin().with_file_name("hoist-shim"));
    let machine_has_apps_user = Command::new("id")
        .args(["-u", "hoist-apps"])
        .output()
        .unwrap()
        .status
        .success();
    let mut first_pids = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["host"], format!("h{}", i + 1));
        assert_eq!(h["ok"], true, "{h}");
        for (name, state) in actions(h) {
            assert_eq!(state, "changed", "{name} on h{}: {h}", i + 1);
        }
        assert_eq!(h["report"]["supervisor"], "keeper");
        let installed = fleet.exec(
            i,
            "sha256sum /usr/local/bin/hoist; stat -c %a /var/lib/hoist; cat /etc/hoist/agent.toml; \
             ls /usr/local/share/man/man1/hoist-deploy.1 /usr/local/share/bash-completion/completions/hoist",
        );
        let installed = text(&installed.stdout);
        assert!(installed.starts_with(&local_sha), "{installed}");
        // The small shim beside it, the same build: the agent's instances use it.
        let shim = text(&fleet.exec(i, "sha256sum /usr/local/bin/hoist-shim").stdout);
        assert!(shim.starts_with(&local_shim_sha), "{shim}");
        // The apps' user exists on the host (its own /etc), not on this machine.
        assert!(fleet.exec(i, "id -u hoist-apps").status.success());
        assert!(
            // 0711: the agent lets the apps' user pass (#12).
            installed.contains("\n711\n")
                && installed.contains("proxy = \"0.0.0.0:80\"")
                && installed.contains("https = \"0.0.0.0:443\"")
                && installed.contains("man1/hoist-deploy.1")
                && installed.contains("completions/hoist"),
            "{installed}"
        );
        // The proxy listens on port 80 of the host's address, reachable from outside.
        wait_until(Duration::from_secs(20), || {
            fleet.http_get(i, 80, "/").is_some()
        })
        .unwrap_or_else(|e| panic!("no proxy on port 80 of h{}: {e}", i + 1));
        first_pids.push(h["report"]["agent_pid"].as_u64().unwrap());
    }
    let now_has = Command::new("id")
        .args(["-u", "hoist-apps"])
        .output()
        .unwrap()
        .status
        .success();
    assert_eq!(
        now_has, machine_has_apps_user,
        "setup of a host created a user on this machine"
    );

    // The agents outlive the ssh sessions that started them: setup closed its masters,
    // no sshd session is left, and each agent answers a new connection.
    for (i, first_pid) in first_pids.iter().enumerate() {
        let sessions: Vec<i32> = fleet
            .netns_pids(i)
            .into_iter()
            .filter(|p| netns::comm(*p).starts_with("sshd") && *p != fleet.sshd_pid(i))
            .collect();
        wait_until(Duration::from_secs(10), || {
            sessions
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        })
        .expect("setup's ssh sessions end");
        let h = hello(&fleet, i).unwrap_or_else(|e| panic!("h{}: {e}", i + 1));
        assert_eq!(u64::from(h.pid), *first_pid);
    }

    // The keeper starts a killed agent again.
    let killed = first_pids[0];
    fleet.exec(0, &format!("kill -9 {killed}"));
    wait_until(Duration::from_secs(30), || {
        hello(&fleet, 0).is_ok_and(|h| u64::from(h.pid) != killed)
    })
    .expect("the keeper restarts the agent");
    let restarted = hello(&fleet, 0).unwrap().pid;

    // A second run changes nothing and says so.
    let (out, json) = setup(&fleet, &hoist_bin(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for h in json["hosts"].as_array().unwrap() {
        for (name, state) in actions(h) {
            assert_eq!(state, "unchanged", "{name}: {h}");
        }
    }
    assert_eq!(hello(&fleet, 0).unwrap().pid, restarted);

    // A different binary (the same ELF with bytes appended) replaces the old one by
    // rename and the agent restarts on it.
    let copy = fleet.dir.join("hoist-next");
    let mut bytes = std::fs::read(hoist_bin()).unwrap();
    bytes.extend_from_slice(b"\nhoist-test-upgrade\n");
    std::fs::write(&copy, &bytes).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let new_sha = sha256(&copy);
    // Setup takes the shim beside the binary it installs: without one it refuses.
    let (out, json) = setup(&fleet, &copy, &[]);
    assert_eq!(out.status.code(), Some(1), "{}\n{json}", text(&out.stderr));
    assert!(
        json["hosts"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("hoist-shim")),
        "{json}"
    );
    std::fs::copy(
        hoist_bin().with_file_name("hoist-shim"),
        fleet.dir.join("hoist-shim"),
    )
    .unwrap();
    let before = fleet.exec(1, "stat -c %i /usr/local/bin/hoist");
    let (out, json) = setup(&fleet, &copy, &[]);
    assert_eq!(out.status.code(), Some(0), "{}\n{json}", text(&out.stderr));
    for (i, h) in json["hosts"].as_array().unwrap().iter().enumerate() {
        let acts = actions(h);
        assert!(acts.contains(&("binary".into(), "changed".into())), "{h}");
        assert!(acts.contains(&("agent".into(), "changed".into())), "{h}");
        assert!(
            acts.contains(&("directories".into(), "unchanged".into())),
            "{h}"
        );
        let on_host = text(
            &fleet
                .exec(i, "sha256sum /usr/local/bin/hoist; ls -a /usr/local/bin")
                .stdout,
        );
        assert!(on_host.starts_with(&new_sha), "{on_host}");
        // Nothing half-written is left beside it.
        assert!(!on_host.contains(".hoist."), "{on_host}");
        let pid = hello(&fleet, i).unwrap().pid;
        let exe = text(&fleet.exec(i, &format!("sha256sum /proc/{pid}/exe")).stdout);
        assert!(
            exe.starts_with(&new_sha),
            "the agent runs the new binary: {exe}"
        );
    }
    // A new inode: the file was renamed into place, not rewritten under the old agent.
    let after = fleet.exec(1, "stat -c %i /usr/local/bin/hoist");
    assert_ne!(text(&before.stdout), text(&after.stdout));

    // Never a weakened host-key check, never agent forwarding, in any argv.
    let argv = ssh_argv_log(&fleet);
    assert!(!argv.is_empty());
    for line in argv.lines().map(ssh_options) {
        assert!(
            line.contains("BatchMode=yes") || line.contains("-O exit"),
            "{line}"
        );
        assert!(line.contains("ForwardAgent=no"), "{line}");
        assert!(!line.contains("StrictHostKeyChecking=no"), "{line}");
        assert!(!line.contains("/dev/null"), "{line}");
    }
}

#[test]
fn host_keys_are_never_taken_on_trust_outside_setup_and_agents_never_forwarded() {
    let fleet = Fleet::start(3);

    // H2: a host never set up is refused before anything runs, outside setup.
    let log_before = fleet.sshd_log(1).len();
    let err = block_on(remote(&fleet, 1, HostKeys::Strict).open()).unwrap_err();
    assert!(
        matches!(err, SshError::UnknownHostKey { ref host } if host == "h2"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("hoist setup h2"));
    assert!(!fleet.sshd_log(1)[log_before..].contains("Starting session"));
    assert!(!std::fs::read_to_string(fleet.dir.join("known_hosts"))
        .unwrap_or_default()
        .contains(&fleet.hosts[1].addr.to_string()));

    // Setup of one host is where its key is accepted.
    let (out, json) = setup(&fleet, &hoist_bin(), &["h1"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{json}", text(&out.stderr));
    assert_eq!(json["hosts"].as_array().unwrap().len(), 1);
    hello(&fleet, 0).expect("h1 answers through ssh once set up");

    // H3: agent forwarding is off even with an agent running, `SSH_AUTH_SOCK` set and
    // the ssh_config asking for forwarding (the fleet's config says `ForwardAgent yes`).
    let agent_sock = fleet.dir.join("agent.sock");
    let _agent = ChildGuard::spawn(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent_sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || agent_sock.exists()).expect("ssh-agent listens");
    let r = remote(&fleet, 0, HostKeys::Strict);
    let out = block_on(async {
        let out = r
            .ssh_command(&["sh", "-c", "echo ${SSH_AUTH_SOCK:-unset}"])
            .env("SSH_AUTH_SOCK", &agent_sock)
            .output()
            .await
            .unwrap();
        r.close().await;
        out
    });
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "unset");

    // H1: a changed host key is refused before any command, naming host and fingerprint,
    // by strict commands and by setup alike.
    fleet.regenerate_host_key(0);
    let fingerprint = fleet.host_key_fingerprint(0);
    let log_before = fleet.sshd_log(0).len();
    let marker = fleet.dir.join("ran");
    let marker = marker.to_str().unwrap();
    let err =
        block_on(remote(&fleet, 0, HostKeys::Strict).run(&["touch", marker], None)).unwrap_err();
    match &err {
        SshError::HostKeyChanged {
            host,
            fingerprint: fp,
        } => {
            assert_eq!(host, "h1");
            assert_eq!(fp, &fingerprint);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.hint().unwrap().contains("ssh-keygen -R"));
    let (out, json) = setup(&fleet, &hoist_bin(), &["h1"]);
    assert_eq!(out.status.code(), Some(1), "{json}");
    let error = json["hosts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("`h1`") && error.contains(&fingerprint),
        "{error}"
    );
    let since = &fleet.sshd_log(0)[log_before..];
    assert!(!since.contains("Starting session"), "{since}");
    assert!(!since.contains("Accepted publickey"), "{since}");
    assert!(
        !Path::new(marker).exists(),
        "a command ran on a host with a changed key"
    );

    for line in ssh_argv_log(&fleet).lines().map(ssh_options) {
        assert!(!line.contains("StrictHostKeyChecking=no"), "{line}");
        assert!(!line.contains("/dev/null"), "{line}");
    }
}

/// The agent API over a bridging command (`hoist agent connect`, what ssh runs on a
/// host): a request, a large artifact upload streamed through the pipes, and a bridge
/// that fails with its stderr kept. No ssh and no root needed.
#[test]
fn the_agent_api_runs_over_a_bridging_command() {
    use hoist_client::{Client, ClientError};
    use hoist_protocol::agent::Uploaded;

    let mut host = common::Host::new();
    let project = host.project("bridged", "", "");
    // 24 MiB that do not compress, so the artifact is large.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..24 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(project.join("VERSION"), &big).unwrap();
    let artifact = project.join("big.tar.zst");
    let out = host.hoist(&[
        "build",
        "-c",
        project.join("hoist.toml").to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let bridge = |socket: &Path| {
        Client::over_command(
            hoist_bin(),
            vec![
                "agent".into(),
                "connect".into(),
                "--socket".into(),
                socket.as_os_str().to_owned(),
            ],
        )
    };
    let client = bridge(&host.socket);
    assert_eq!(client.describe(), "hoist");
    let (hello, uploaded) = block_on(async {
        let hello = client.get::<Hello>("/v1/hello").await.unwrap();
        let up: Uploaded = client.upload("/v1/releases", &artifact).await.unwrap();
        (hello, up)
    });
    assert_eq!(hello.pid, host.agent.as_ref().unwrap().pid());
    assert_eq!(uploaded.app, "demo");
    assert!(uploaded.bytes >= big.len() as u64, "{uploaded:?}");

    host.kill_agent();
    let err = block_on(bridge(&host.socket).get::<Hello>("/v1/hello")).unwrap_err();
    match &err {
        ClientError::Command { status, stderr, .. } => {
            assert_eq!(*status, Some(1));
            assert!(stderr.contains("cannot reach the agent"), "{stderr}");
        }
        other => panic!("{other:?}"),
    }
}
