//! `hoist-testapp worker`: a background process without HTTP that prints `worker tick N`
//! on stdout every `--tick-ms`, until SIGTERM (or never, with `--ignore-sigterm`).
//! The shared faults (crash, leak, log rate, child) are started by `main`, not here.

use std::time::Duration;

use tokio::sync::watch;

use crate::cli::WorkerArgs;
use crate::{faults, out};

pub async fn run(args: WorkerArgs, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    if !faults::slow_start(&args.faults, &mut shutdown).await? {
        return Ok(());
    }
    out::log(&format!("working, one tick every {} ms", args.tick_ms));
    // The first tick is immediate, so a test sees the worker alive without waiting.
    let mut ticks = tokio::time::interval(Duration::from_millis(args.tick_ms.max(1)));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                n += 1;
                out::stdout(&format!("worker tick {n}"));
            }
            _ = faults::stopped(&mut shutdown) => return Ok(()),
        }
    }
}
