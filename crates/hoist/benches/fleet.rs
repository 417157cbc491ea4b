//! Fleet deploy figures (design §6: a deploy to 10 hosts takes at most 1.5× a deploy to
//! one), printed, never asserted. Ten network-namespace hosts, each a real sshd with its
//! own state (the tests' `netns` harness), prepared once by `hoist setup`; then, for 1, 3
//! and 10 hosts, the same kind of deploy through the real CLI over OpenSSH with
//! `batch = "100%"`: a first deploy (every blob, ~8 MiB, travels to every host) and
//! redeploys where one file changed (ROUNDS of them, default 3; the median is printed).
//!
//! SSH masters persist between commands (ControlPersist), so each redeploy is measured
//! twice: cold (every master closed first: the deploy pays the handshakes) and warm
//! (right after a `hoist plan` of the same release, as a user runs them: the handshakes
//! are paid by the plan).
//!
//! The anchor, in the same run: plain `ssh HOST true` to the same hosts at once, with new
//! connections; the table prints each deploy's time beyond it.
//!
//!   bash bench/fleet.sh        (builds release binaries, needs root and sshd)

// A benchmark's whole job is to print its figures.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/netns/mod.rs"]
mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hoist_testkit::{hoist_bin, testapp_bin};
use netns::Fleet;

/// An app file for the first `n` hosts; `version` makes the release distinct.
fn project(fleet: &Fleet, n: usize, version: &str) -> PathBuf {
    let dir = fleet.dir.join(format!("bench-{n}-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), version).unwrap();
    // ~8 MiB of shipped files that do not change between versions.
    let assets = dir.join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    for i in 0..64 {
        // Distinct per fleet size, so each size's first deploy moves every blob.
        let body: Vec<u8> = (0..128 * 1024u32)
            .map(|b| (b * 31 + i + 7 * n as u32) as u8)
            .collect();
        std::fs::write(assets.join(format!("a{i}.bin")), body).unwrap();
    }
    let hosts: String = fleet.hosts[..n]
        .iter()
        .map(|h| {
            format!(
                "[[hosts]]\nname = \"{}\"\nssh = \"root@{}\"\nroles = [\"web\"]\n\n",
                h.name, h.addr
            )
        })
        .collect();
    let app = testapp_bin();
    let toml = format!(
        r#"app = "bench"

[build]
include = ["VERSION", "assets/**"]

[services.web]
command = "{app} serve"
replicas = 1
http = {{ domains = ["*"], health = {{ path = "/health", interval = "50ms", healthy_threshold = 2, min_healthy = "0s" }}, drain_timeout = "1s" }}

[deploy]
health_deadline = "20s"

[deploy.rollout]
batch = "100%"

{ssh}
{hosts}
"#,
        app = app.display(),
        ssh = fleet.ssh_toml(),
    );
    std::fs::write(dir.join("hoist.toml"), toml).unwrap();
    dir.join("hoist.toml")
}

/// Ends every ssh master of this fleet, so the next command connects anew.
fn close_masters(fleet: &Fleet) {
    hoist_fleet::ssh::close_masters(&fleet.dir.join("ctl"));
}

fn run(file: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hoist {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn build(file: &Path) -> PathBuf {
    let out = file.with_file_name("release.hoist");
    run(file, &["build", "-o", out.to_str().unwrap()]);
    out
}

/// CPU seconds the whole machine has spent (user + system, every core), from /proc/stat:
/// on this one box the "hosts" share two cores, so this tells contention from waiting.
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system (idle iowait skipped) irq softirq steal
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>();
    busy / 100.0
}

/// One timed deploy: wall time, the phases from its `--json` events (connect = every
/// host reached and leased; upload = blobs placed; activate = the batch), machine CPU.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    connect: u64,
    upload: u64,
    activate: u64,
    cpu: f64,
}

fn deploy(file: &Path, artifact: &Path) -> Sample {
    let cpu = machine_cpu();
    let started = Instant::now();
    let out = run(
        file,
        &["deploy", "--json", "--artifact", artifact.to_str().unwrap()],
    );
    let wall = started.elapsed();
    let cpu = machine_cpu() - cpu;
    let at = |event: &str| -> u64 {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == event)
            .filter_map(|v| v["elapsed_ms"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let (leased, batch, finished) = (at("leased"), at("batch"), at("finished"));
    Sample {
        wall,
        connect: leased,
        upload: batch.saturating_sub(leased),
        activate: finished.saturating_sub(batch),
        cpu,
    }
}

/// The anchor: plain OpenSSH, new connections to the first `n` hosts at once running
/// `true` (median of 3): the floor any deploy over SSH pays before it does anything.
fn bare_ssh(fleet: &Fleet, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..3)
        .map(|_| {
            let started = Instant::now();
            let kids: Vec<_> = fleet.hosts[..n]
                .iter()
                .map(|h| {
                    Command::new("ssh")
                        .arg("-F")
                        .arg(fleet.dir.join("ssh_config"))
                        .args(["-o", "BatchMode=yes", "-o", "ControlPath=none"])
                        .arg(format!("root@{}", h.addr))
                        .arg("true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            for mut k in kids {
                assert!(k.wait().unwrap().success(), "plain ssh failed");
            }
            started.elapsed()
        })
        .collect();
    times.sort();
    times[1]
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by_key(|s| s.wall);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let max = 10;
    eprintln!("starting {max} hosts (netns + sshd) …");
    let fleet = Fleet::start(max);
    let all = project(&fleet, max, "setup");
    let started = Instant::now();
    run(&all, &["setup"]);
    eprintln!(
        "hoist setup of {max} hosts: {:.2}s",
        started.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for n in [1usize, 3, 10] {
        // The first deploy of this size moves every blob (~8 MiB per host); the next
        // ones change one file.
        let a = project(&fleet, n, "first");
        let artifact = build(&a);
        close_masters(&fleet);
        let first = deploy(&a, &artifact);
        let mut cold = Vec::new();
        let mut warm = Vec::new();
        for round in 0..rounds {
            let b = project(&fleet, n, &format!("cold{round}"));
            let artifact = build(&b);
            close_masters(&fleet);
            cold.push(deploy(&b, &artifact));
            let c = project(&fleet, n, &format!("warm{round}"));
            let artifact = build(&c);
            close_masters(&fleet);
            run(&c, &["plan", "--artifact", artifact.to_str().unwrap()]);
            warm.push(deploy(&c, &artifact));
        }
        eprintln!(
            "{n:>2} host(s): first deploy {} ms, cold redeploys {:?} ms, warm redeploys (after plan) {:?} ms",
            first.wall.as_millis(),
            cold.iter().map(|d| d.wall.as_millis()).collect::<Vec<_>>(),
            warm.iter().map(|d| d.wall.as_millis()).collect::<Vec<_>>()
        );
        rows.push((n, first, median(cold), median(warm), bare_ssh(&fleet, n)));
    }
    println!(
        "\nfleet deploy over OpenSSH, batch = 100% (ms; redeploys: median of {rounds}; cold: masters closed first; warm: right after `hoist plan`, masters kept by ControlPersist)"
    );
    println!(
        "{:>6} {:>7} {:>6} {:>6} | {:>8} {:>7} {:>8} {:>8} | {:>8} {:>12} {:>12}",
        "hosts",
        "first",
        "cold",
        "warm",
        "connect",
        "upload",
        "activate",
        "cpu/wall",
        "ssh true",
        "cold-ssh",
        "warm-ssh"
    );
    for (n, f, c, w, ssh) in &rows {
        let beyond = |s: &Sample| s.wall.as_millis() as i64 - ssh.as_millis() as i64;
        println!(
            "{n:>6} {:>7} {:>6} {:>6} | {:>8} {:>7} {:>8} {:>8.2} | {:>8} {:>12} {:>12}",
            f.wall.as_millis(),
            c.wall.as_millis(),
            w.wall.as_millis(),
            w.connect,
            w.upload,
            w.activate,
            w.cpu / w.wall.as_secs_f64(),
            ssh.as_millis(),
            beyond(c),
            beyond(w)
        );
    }
    println!("(connect/upload/activate: phases of the warm redeploy; cold-ssh and warm-ssh: the redeploy's time beyond the plain `ssh true` fan-out to the same hosts)");
    let (_, f1, _, r1, s1) = rows[0];
    let (_, f10, _, r10, s10) = rows[2];
    println!(
        "10/1 ratio: first deploy {:.2}, warm redeploy {:.2} (goal: at most 1.5)",
        f10.wall.as_secs_f64() / f1.wall.as_secs_f64(),
        r10.wall.as_secs_f64() / r1.wall.as_secs_f64()
    );
    let own = |r: &Sample| (r.upload + r.activate) as f64;
    println!(
        "10/1 ratio of plain OpenSSH connecting (the anchor): {:.2}; of hoist's own work after connecting (upload + activate): {:.2}",
        s10.as_secs_f64() / s1.as_secs_f64(),
        own(&r10) / own(&r1)
    );
    println!(
        "(all hosts share this machine's {} cores: cpu/wall near the core count means the\n \
         10 simulated hosts' sshd, agents and apps are contending for CPU that separate hosts would not share)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
