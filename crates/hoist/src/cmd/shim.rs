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
    // stderr is `<run_dir>/<instance>.shim.log`, opened by the supervisor.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let code = hoist_supervisor::shim::run(&args.spec, std::io::stdout());
    std::process::exit(code)
}
