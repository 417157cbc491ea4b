//! Prints the supervisor's figures: how long `spawn` takes to return (the app exists), a
//! graceful stop, re-adopting 20 instances, the memory one shim costs, and log throughput
//! through the shim against the same output written straight to a file.
//!
//! `cargo run -p hoist-supervisor --example shim_bench [-- PATH/TO/hoist]` (default: the
//! `hoist` next to this example's target dir; build it first, in the same profile).
#![allow(clippy::print_stdout)] // a benchmark's output is its figures

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hoist_supervisor::{Adopted, InstanceSpec, Signal, Supervisor, SupervisorConfig};

fn main() {
    let exe = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let me = std::env::current_exe().expect("current exe");
            me.parent()
                .and_then(|p| p.parent())
                .expect("target dir")
                .join("hoist")
        });
    assert!(
        exe.exists(),
        "{} not found: build `hoist` first",
        exe.display()
    );
    let root = tempfile::tempdir().expect("tempdir");
    let sup = Supervisor::new(SupervisorConfig {
        shim_exe: exe.clone(),
        run_dir: root.path().join("run"),
        handshake_timeout: hoist_supervisor::HANDSHAKE_TIMEOUT,
    })
    .expect("supervisor");
    let spec = |id: &str, cmd: &str| InstanceSpec {
        instance: id.into(),
        app: "bench".into(),
        service: "svc".into(),
        release: "r".into(),
        command: cmd.into(),
        cwd: root.path().into(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
        user: None,
        log_dir: root.path().join("logs"),
        log_max_bytes: 64 << 20,
        log_keep: 2,
    };

    println!("shim: {}", exe.display());
    let n = 20;
    let mut spawn = Vec::new();
    let mut instances = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        instances.push(
            sup.spawn(&spec(&format!("i{i}"), "sleep 1000; true"))
                .expect("spawn"),
        );
        spawn.push(t.elapsed());
    }
    report("spawn (returns when the app exists)", &mut spawn);

    let rss: Vec<u64> = instances
        .iter()
        .map(|i| status_kib(i.shim_pid(), "VmRSS"))
        .collect();
    let anon: Vec<u64> = instances
        .iter()
        .map(|i| status_kib(i.shim_pid(), "RssAnon"))
        .collect();
    println!(
        "shim RSS: mean {} KiB, of which private (RssAnon) {} KiB; the rest is the shared binary",
        rss.iter().sum::<u64>() / n as u64,
        anon.iter().sum::<u64>() / n as u64
    );

    let mut adopt = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let found = sup.adopt().expect("adopt");
        adopt.push(t.elapsed());
        assert_eq!(
            found
                .iter()
                .filter(|a| matches!(a, Adopted::Running(_)))
                .count(),
            n
        );
    }
    report(&format!("adopt {n} running instances"), &mut adopt);

    let mut stop = Vec::new();
    for inst in &instances {
        let t = Instant::now();
        inst.stop().expect("stop");
        assert!(inst.wait_stopped(Duration::from_secs(30)));
        stop.push(t.elapsed());
    }
    report("graceful stop (SIGTERM honoured)", &mut stop);

    // B3: an app that ignores SIGTERM is killed at stop_timeout, not before, not much after.
    let mut stubborn = Vec::new();
    for i in 0..3 {
        let mut s = spec(&format!("stubborn{i}"), "trap '' TERM; sleep 1000");
        s.stop_timeout = Duration::from_secs(1);
        let inst = sup.spawn(&s).expect("spawn");
        let t = Instant::now();
        inst.stop().expect("stop");
        assert!(inst.wait_stopped(Duration::from_secs(30)));
        stubborn.push(t.elapsed());
    }
    report(
        "stop of a SIGTERM-ignoring app, stop_timeout 1000 ms",
        &mut stubborn,
    );

    let lines = 500_000;
    let cmd =
        format!("yes 'a log line of a typical length, say sixty bytes or so' | head -n {lines}");
    let t = Instant::now();
    let inst = sup.spawn(&spec("chatty", &cmd)).expect("spawn");
    assert!(inst.wait_stopped(Duration::from_secs(300)));
    let through_shim = t.elapsed();
    let direct_file = root.path().join("direct.log");
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} > '{}'", direct_file.display()))
        .status();
    let direct = t.elapsed();
    assert!(status.is_ok_and(|s| s.success()));
    println!(
        "log throughput: {:.0} lines/s through the shim (JSON, timestamped), {:.0} lines/s straight to a file",
        lines as f64 / through_shim.as_secs_f64(),
        lines as f64 / direct.as_secs_f64()
    );
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (n = {})",
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(pick(1.0)),
        samples.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)?
                    .strip_prefix(':')
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
