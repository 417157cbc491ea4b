//! Prints how fast the test app starts: from spawn to its `listening on` line (`serve`)
//! and a whole `check` run. Suites start the app hundreds of times, and deploy-speed
//! figures subtract the app's own start-up, so it must stay negligible. A figure, not a
//! pass/fail test: run with `cargo bench -p hoist-testapp --bench startup`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 30;
const BIN: &str = env!("CARGO_BIN_EXE_hoist-testapp");

fn serve_once() -> Duration {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hoist-testapp");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let took = started.elapsed();
    assert!(
        line.starts_with("listening on "),
        "unexpected first line {line:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    took
}

fn check_once() -> Duration {
    let started = Instant::now();
    let status = Command::new(BIN)
        .arg("check")
        .stdout(Stdio::null())
        .status()
        .expect("run check");
    assert!(status.success());
    started.elapsed()
}

#[allow(clippy::print_stdout)] // a benchmark's output is its figures
fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms over {RUNS} runs",
        ms(samples[RUNS / 2]),
        ms(samples[RUNS * 9 / 10]),
        ms(samples[RUNS - 1])
    );
}

fn main() {
    report(
        "serve: spawn to `listening on`",
        (0..RUNS).map(|_| serve_once()).collect(),
    );
    report(
        "check: whole run",
        (0..RUNS).map(|_| check_once()).collect(),
    );
}
