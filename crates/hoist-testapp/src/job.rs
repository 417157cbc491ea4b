//! `hoist-testapp job`: one run of a periodic job. It appends `start <unix_ms> <pid>`
//! and, if it gets that far, `end <unix_ms>` to `$HOIST_DATA_DIR/job-<name>.log`, so a
//! test can tell overlapping runs (a start before the previous end) and killed runs (a
//! start without an end). Synchronous on purpose: a job is a plain short-lived process.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::cli::JobArgs;
use crate::{faults, out};

/// Runs the job and returns the exit code it was told to end with.
pub fn run(args: &JobArgs) -> anyhow::Result<i32> {
    let dir = args.data_dir.as_deref().context(
        "`HOIST_DATA_DIR` is not set\nhint: run the job under hoist, or pass `--data-dir DIR`",
    )?;
    anyhow::ensure!(
        !args.name.is_empty() && !args.name.contains('/'),
        "`{}` cannot name a log file\nhint: pass `--name` without `/`",
        args.name
    );
    let log = dir.join(format!("job-{}.log", args.name));
    let pid = std::process::id();
    append(&log, &format!("start {} {pid}\n", unix_ms()))?;
    out::stdout(&format!("job `{}` started (pid {pid})", args.name));
    if args.spawn_child {
        faults::spawn_child()?;
    }
    // The sleep is the job's work, not a wait for something.
    std::thread::sleep(faults::seconds(args.sleep)?);
    append(&log, &format!("end {}\n", unix_ms()))?;
    out::stdout(&format!(
        "job `{}` finished with exit code {}",
        args.name, args.exit_code
    ));
    Ok(args.exit_code)
}

fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    // One write to an O_APPEND file: lines of concurrent runs never interleave.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    file.write_all(line.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
