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
    /// Write a commented starter hoist.toml for the project in this directory
    Init(cmd::init::Args),
    /// Print the resolved, validated app file
    Config(cmd::config::Args),
    /// Build the release artifact and print its release id
    Build(cmd::build::BuildArgs),
    /// Check an artifact and every file in it against its manifest
    Verify(cmd::build::VerifyArgs),
    /// Show an artifact's build info and a summary of its files
    Inspect(cmd::build::VerifyArgs),
    /// Build (or take) a release and make it current, without downtime
    Deploy(cmd::deploy::DeployArgs),
    /// Test the release as it will run: build, start it under a private agent, run the tests
    Run(cmd::run::RunArgs),
    /// What a deploy would change on the host, and whether the host is ready; changes nothing
    Plan(cmd::deploy::DeployArgs),
    /// Go back to the previous release (instant while it is warm)
    Rollback(cmd::deploy::RollbackArgs),
    /// The app's fleet-wide deploy lease: who holds it, or drop it
    Lock(cmd::fleet::LockArgs),
    /// Apps, services and instances on the host
    Status(cmd::status::StatusArgs),
    /// Every deploy and rollback: who, when, what, result
    History(cmd::status::HistoryArgs),
    /// The releases kept on the host
    Releases(cmd::status::StatusArgs),
    /// A service's logs
    Logs(cmd::status::LogsArgs),
    /// What happened on the host: exits, health changes, crash loops, deploys
    Events(cmd::status::EventsArgs),
    /// Grade the app file (and its hosts) for production readiness: pass, warn or fail
    Review(cmd::readiness::ReviewArgs),
    /// Diagnose live hosts: disk, ports, crash loops, certificates, backups, clocks
    Doctor(cmd::readiness::DoctorArgs),
    /// Every domain served over HTTPS: issuer, expiry, source and last renewal
    Certs(cmd::certs::CertsArgs),
    /// The URL that logs a browser into a host's dashboard (`--rotate`: a new token)
    Dashboard(cmd::dashboard::Args),
    /// Firing alerts and recent deliveries; `alerts test` sends a test notification,
    /// `alerts export` prints the rules for Prometheus
    Alerts(cmd::alerts::Args),
    /// SLOs: objective, error budget left and burn rates (`[slo.NAME]` in the app file)
    Slo(cmd::slo::Args),
    /// Start a stopped service of the current release
    Start(cmd::service::ServiceArgs),
    /// Stop a service (it stays stopped until `start` or the next deploy)
    Stop(cmd::service::ServiceArgs),
    /// Restart a service one instance at a time, each healthy before the next
    Restart(cmd::service::ServiceArgs),
    /// Stop every instance of the app and remove its routes (recorded in the history)
    Down(cmd::service::DownArgs),
    /// Recent job runs, or `jobs run NAME` to run one now
    Jobs(cmd::service::JobsArgs),
    /// Prepare hosts over ssh: the hoist binary, directories and a running agent
    Setup(cmd::setup::SetupArgs),
    /// Run the host agent in the foreground
    Agent(cmd::agent::Args),
    /// Run the reverse proxy in the foreground, or switch, upgrade and inspect a running one
    Proxy(cmd::proxy::Args),
    /// Take a backup now (all of the app's, or NAME), or `backup verify` to test a restore
    Backup(cmd::backup::BackupArgs),
    /// The backups kept on the host, with their checksums, sizes and results
    Backups(cmd::backup::BackupsArgs),
    /// Stop the app, restore a backup, check it and start the app again
    Restore(cmd::backup::RestoreArgs),
    /// Serve a 503 maintenance page for an app (`on [--message TEXT]`) or the app again (`off`)
    Maintenance(cmd::maintenance::Args),
    /// Set, unset and list an app's secrets on the agent (values never printed)
    #[command(subcommand)]
    Secrets(cmd::secrets::Command),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    Completions(cmd::docs::CompletionsArgs),
    /// Generate or check the reference docs, man pages and completions (for developers)
    #[command(hide = true)]
    Docs(cmd::docs::DocsArgs),
    /// Run one app instance under the supervisor (started by the agent)
    #[command(hide = true)]
    Shim(cmd::shim::Args),
}

fn main() -> ExitCode {
    // A shim (one long-lived process per instance) skips clap, whose command tree it would
    // keep in memory for nothing.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    hoist_supervisor::shim::main(&argv);
    // A backup reader, run by the agent as an app's user (see `hoist_backup::reader`).
    hoist_backup::reader::main(&argv);
    drop(argv);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version on stdout and usage errors on stderr.
            let _ = err.print();
            return if err.use_stderr() {
                exit::Exit::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Init(args) => cmd::init::run(args),
        Command::Config(args) => cmd::config::run(args),
        Command::Build(args) => cmd::build::run_build(args),
        Command::Verify(args) => cmd::build::run_verify(args),
        Command::Inspect(args) => cmd::build::run_inspect(args),
        Command::Deploy(args) => cmd::deploy::run_deploy(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Plan(args) => cmd::deploy::run_plan(args),
        Command::Rollback(args) => cmd::deploy::run_rollback(args),
        Command::Lock(args) => cmd::fleet::run_lock(args),
        Command::Status(args) => cmd::status::run_status(args),
        Command::History(args) => cmd::status::run_history(args),
        Command::Releases(args) => cmd::status::run_releases(args),
        Command::Logs(args) => cmd::status::run_logs(args),
        Command::Events(args) => cmd::status::run_events(args),
        Command::Review(args) => cmd::readiness::run_review(args),
        Command::Doctor(args) => cmd::readiness::run_doctor(args),
        Command::Certs(args) => cmd::certs::run(args),
        Command::Dashboard(args) => cmd::dashboard::run(args),
        Command::Alerts(args) => cmd::alerts::run(args),
        Command::Slo(args) => cmd::slo::run(args),
        Command::Start(args) => cmd::service::run_service("start", args),
        Command::Stop(args) => cmd::service::run_service("stop", args),
        Command::Restart(args) => cmd::service::run_service("restart", args),
        Command::Down(args) => cmd::service::run_down(args),
        Command::Jobs(args) => cmd::service::run_jobs(args),
        Command::Setup(args) => cmd::setup::run(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Proxy(args) => cmd::proxy::run(args),
        Command::Backup(args) => cmd::backup::run_backup(args),
        Command::Backups(args) => cmd::backup::run_backups(args),
        Command::Restore(args) => cmd::backup::run_restore(args),
        Command::Secrets(command) => cmd::secrets::run(command),
        Command::Maintenance(args) => cmd::maintenance::run(args),
        Command::Completions(args) => cmd::docs::run_completions(args),
        Command::Docs(args) => cmd::docs::run(args),
        Command::Shim(args) => cmd::shim::run(args),
    };
    // ssh masters stay up for a minute (ControlPersist), for the next command.
    exit::report(result)
}
