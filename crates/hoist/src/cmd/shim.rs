//! `hoist shim --spec FILE` (hidden): the per-instance process the agent starts for every
//! app instance, when the small `hoist-shim` binary is not installed beside `hoist`. It
//! prints nothing for users (its stdout is a one-line report read by the agent); the
//! whole program is `hoist_supervisor::shim::main`.

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
    let argv = [
        "hoist".into(),
        "shim".into(),
        "--spec".into(),
        args.spec.into_os_string(),
    ];
    hoist_supervisor::shim::main(&argv);
    unreachable!("the argv is a shim's")
}
