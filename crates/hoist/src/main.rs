//! The `hoist` binary: parses the command line and calls one library operation per
//! command. Nothing else lives here: each `cmd/*.rs` file declares its clap arguments
//! and a `run` that calls into a library crate; all user output goes through `output`.

mod cmd;
mod exit;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Ship web apps and their workers to your own Linux servers, without downtime.
#[derive(Debug, Parser)]
#[command(name = "hoist", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Each variant is one file under cmd/; keep this list in the order of `hoist --help`.
    /// Run the host agent in the foreground
    Agent(cmd::agent::Args),
    /// Set, unset and list an app's secrets on the agent (values never printed)
    #[command(subcommand)]
    Secrets(cmd::secrets::Command),
    /// Run one app instance under the supervisor (started by the agent)
    #[command(hide = true)]
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version on stdout and usage errors on stderr.
            let _ = err.print();
            return if err.use_stderr() { exit::Exit::Usage.into() } else { ExitCode::SUCCESS };
        }
    };
    let result = match cli.command {
        Command::Agent(args) => cmd::agent::run(args),
        Command::Secrets(command) => cmd::secrets::run(command),
    };
    exit::report(result)
}
