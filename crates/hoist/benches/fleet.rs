//! Fleet deploy figures (design §6: a deploy to 10 hosts takes at most 1.5× a deploy to
//! one), printed, never asserted. Ten network-namespace hosts, each a real sshd with its
//! own state (the tests' `netns` harness), prepared once by `hoist setup`; then, for 1, 3
//! and 10 hosts, the same kind of deploy through the real CLI over OpenSSH with
//! `batch = "100%"`: a first deploy (every blob, ~8 MiB, travels to every host) and
//! redeploys where one file changed (ROUNDS of them, default 3; the median is printed).
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

fn run(file: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "hoist {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn build(file: &Path) -> PathBuf {
    let out = file.with_file_name("release.hoist");
    run(file, &["build", "-o", out.to_str().unwrap()]);
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
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
    let took = run(&all, &["setup"]);
    eprintln!("hoist setup of {max} hosts: {:.2}s", took.as_secs_f64());

    let mut rows = Vec::new();
    for n in [1usize, 3, 10] {
        // The first deploy of this size moves every blob (~8 MiB per host); the next
        // ones change one file.
        let a = project(&fleet, n, "first");
        let artifact = build(&a);
        let first = run(&a, &["deploy", "--artifact", artifact.to_str().unwrap()]);
        let mut again = Vec::new();
        for round in 0..rounds {
            let b = project(&fleet, n, &format!("r{round}"));
            let artifact = build(&b);
            again.push(run(
                &b,
                &["deploy", "--artifact", artifact.to_str().unwrap()],
            ));
        }
        eprintln!(
            "{n:>2} host(s): first deploy {} ms, redeploys {:?} ms",
            first.as_millis(),
            again.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
        rows.push((n, first, median(again)));
    }
    println!("\nfleet deploy over OpenSSH, batch = 100% (ms; redeploy: median of {rounds}):");
    println!("{:>6} {:>14} {:>10}", "hosts", "first deploy", "redeploy");
    for (n, d, r) in &rows {
        println!("{n:>6} {:>14} {:>10}", d.as_millis(), r.as_millis());
    }
    let (_, d1, r1) = rows[0];
    let (_, d10, r10) = rows[2];
    println!(
        "10/1 ratio: deploy {:.2}, redeploy {:.2} (goal: at most 1.5)",
        d10.as_secs_f64() / d1.as_secs_f64(),
        r10.as_secs_f64() / r1.as_secs_f64()
    );
}
