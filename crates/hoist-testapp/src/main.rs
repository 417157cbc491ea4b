//! The test app every suite uses to play every kind of release: a small HTTP server
//! (`serve`, the default), a `worker`, a periodic `job` and a preflight `check`, each of
//! which can be told to fail in the ways real releases do (see `cli` for the flags).
//!
//! This file only dispatches and owns the process's exit code; it must stay free of
//! behaviour so that each mode reads on its own. Output goes through `out` only.

mod cli;
mod faults;
mod job;
mod out;
mod routes;
mod serve;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Faults, Mode};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.mode.unwrap_or(Mode::Serve(cli.serve)) {
        Mode::Check(args) => {
            if args.fail {
                out::import_error();
                return ExitCode::from(1);
            }
            out::stdout("check ok");
            ExitCode::SUCCESS
        }
        Mode::Job(args) => match job::run(&args) {
            // Exit codes outside 0..=255 wrap as the kernel would.
            Ok(code) => ExitCode::from(code as u8),
            Err(e) => fail(&e),
        },
        Mode::Serve(args) => {
            let faults = args.faults.clone();
            long_running("serve", &faults, |running, shutdown| {
                serve::run(args, running, shutdown)
            })
        }
        Mode::Worker(args) => {
            let faults = args.faults.clone();
            long_running("worker", &faults, |_running, shutdown| {
                worker::run(args, shutdown)
            })
        }
    }
}

/// The lifecycle shared by `serve` and `worker`: log `starting`, maybe crash at start,
/// install the signal handlers, start the background faults, run, log `exiting`.
fn long_running<F, Fut>(mode: &str, faults: &Faults, body: F) -> ExitCode
where
    F: FnOnce(faults::Running, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let release = std::env::var("HOIST_RELEASE").unwrap_or_else(|_| "-".to_owned());
    out::log(&format!("starting {mode} (release {release})"));
    faults::crash_at_start(faults);
    // One thread is plenty for a test double and starts fastest; the background faults
    // run on their own threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(async {
        let shutdown = faults::shutdown_signal(faults.ignore_sigterm)?;
        let running = faults::start(faults)?;
        body(running, shutdown).await
    });
    match result {
        Ok(()) => {
            out::log("exiting");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    out::log(&format!("error: {error:#}"));
    ExitCode::from(1)
}
