//! The command line of the test app: one clap struct per mode, and the fault flags shared
//! by the long-running modes. Parsing only; nothing here starts or prints anything.
//!
//! Every flag can also come from `TESTAPP_<FLAG>` because hoist passes an app's `[env]` to
//! its processes; a flag on the command line wins over the variable. Boolean variables
//! accept `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

/// A small HTTP server, worker and job that can be told to misbehave in every way a
/// release can.
#[derive(Debug, Parser)]
#[command(name = "hoist-testapp", args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Option<Mode>,
    /// `serve`'s flags, so that the bare command serves.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Serve HTTP (the default).
    Serve(ServeArgs),
    /// A preflight check: passes, or fails like a Python app missing a dependency.
    Check(CheckArgs),
    /// A background worker without HTTP that prints a tick periodically.
    Worker(WorkerArgs),
    /// One run of a periodic job, recorded in `$HOIST_DATA_DIR/job-<name>.log`.
    Job(JobArgs),
}

/// Faults shared by `serve` and `worker`.
#[derive(Debug, Clone, Args)]
pub struct Faults {
    /// Print a Python-like import error to stderr and exit 1 before doing anything.
    #[arg(long, env = "TESTAPP_CRASH_AT_START", value_parser = BoolishValueParser::new())]
    pub crash_at_start: bool,
    /// Exit with `--exit-code` this many seconds after starting.
    #[arg(long, env = "TESTAPP_CRASH_AFTER", value_name = "SECS")]
    pub crash_after: Option<f64>,
    /// The exit code of `--crash-after`.
    #[arg(long, env = "TESTAPP_EXIT_CODE", default_value_t = 1)]
    pub exit_code: i32,
    /// Sleep this long before binding (or before the first tick).
    #[arg(long, env = "TESTAPP_SLOW_START", value_name = "SECS")]
    pub slow_start: Option<f64>,
    /// Log SIGTERM and carry on (only SIGKILL stops the process).
    #[arg(long, env = "TESTAPP_IGNORE_SIGTERM", value_parser = BoolishValueParser::new())]
    pub ignore_sigterm: bool,
    /// Allocate and touch this many MiB every second, never freeing them.
    #[arg(long, env = "TESTAPP_LEAK_MIB_PER_SEC", value_name = "MIB")]
    pub leak_mib_per_sec: Option<f64>,
    /// Print `seq <n>` lines on stdout at this many lines per second.
    #[arg(long, env = "TESTAPP_LOG_RATE", value_name = "LINES")]
    pub log_rate: Option<f64>,
    /// Start `sleep 3600` as a child in the app's own process group.
    #[arg(long, env = "TESTAPP_SPAWN_CHILD", value_parser = BoolishValueParser::new())]
    pub spawn_child: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The port to listen on; 0 picks a free one (printed in `listening on ADDR`).
    #[arg(long, env = "PORT", default_value_t = 0)]
    pub port: u16,
    /// The address to listen on.
    #[arg(long, env = "TESTAPP_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Answer `/health` with 500.
    #[arg(long, env = "TESTAPP_FAIL_HEALTH", value_parser = BoolishValueParser::new())]
    pub fail_health: bool,
    /// Pass this many health checks, then answer 500 forever (a flapping instance).
    #[arg(long, env = "TESTAPP_HEALTH_PASS_THEN_FAIL", value_name = "N")]
    pub health_pass_then_fail: Option<u64>,
    /// Answer `/health` with 500 from this many seconds after starting.
    #[arg(long, env = "TESTAPP_UNHEALTHY_AFTER", value_name = "SECS")]
    pub unhealthy_after: Option<f64>,
    /// Answer this share (percent, 0-100) of `GET /` with 500, spread evenly over the
    /// requests (a bad release that fails some of its traffic; `/health` stays fine).
    #[arg(long, env = "TESTAPP_FAIL_PERCENT", value_name = "PERCENT", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=100))]
    pub fail_percent: u64,
    #[command(flatten)]
    pub faults: Faults,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Fail the check.
    #[arg(long, env = "TESTAPP_FAIL_CHECK", value_parser = BoolishValueParser::new())]
    pub fail: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Milliseconds between ticks.
    #[arg(long, env = "TESTAPP_TICK_MS", default_value_t = 1000)]
    pub tick_ms: u64,
    #[command(flatten)]
    pub faults: Faults,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// How long the job works, in seconds.
    #[arg(
        long,
        env = "TESTAPP_SLEEP",
        value_name = "SECS",
        default_value_t = 0.0
    )]
    pub sleep: f64,
    /// The job's exit code.
    #[arg(
        long = "exit",
        env = "TESTAPP_EXIT",
        value_name = "CODE",
        default_value_t = 0
    )]
    pub exit_code: i32,
    /// The job's name when `HOIST_SERVICE` is unset.
    #[arg(long, env = "HOIST_SERVICE", default_value = "job")]
    pub name: String,
    /// Where the run log goes (default `$HOIST_DATA_DIR`).
    #[arg(long, env = "HOIST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start `sleep 3600` as a child in the job's process group.
    #[arg(long, env = "TESTAPP_SPAWN_CHILD", value_parser = BoolishValueParser::new())]
    pub spawn_child: bool,
}
