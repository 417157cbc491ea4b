//! `hoist shim --spec FILE` (hidden): the per-instance process the agent starts for every
//! app instance. It only sets up its diagnostics and calls `hoist_supervisor::shim::run`;
//! it prints nothing for users (its stdout is a one-line report read by the agent).

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The instance spec written by the agent's supervisor
    #[arg(long)]
    spec: PathBuf,
}

/// Runs the shim; exits with its code (it never returns to the command dispatcher, so the
/// agent's error rendering never runs inside a shim).
pub fn run(args: Args) -> anyhow::Result<()> {
    // stderr is `<run_dir>/<instance>.shim.log`, opened by the supervisor, often on the
    // disk the app's logs fill: a failed diagnostic is dropped, never a panic (tracing's
    // own error report would `eprintln!`, which panics when stderr cannot be written, and
    // took the log pumps down with it).
    let _ = tracing_subscriber::fmt()
        .with_writer(|| Diagnostics)
        .log_internal_errors(false)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let code = hoist_supervisor::shim::run(&args.spec, std::io::stdout());
    std::process::exit(code)
}

/// The shim's stderr, with write errors ignored.
struct Diagnostics;

impl std::io::Write for Diagnostics {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
