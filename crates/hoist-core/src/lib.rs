//! Domain types and decisions of hoist, with no I/O: the validated app spec, human
//! durations and sizes, schedules. Everything here is pure so that it can be tested in
//! milliseconds; crates that touch disks, processes or sockets build on it.
//!
//! Must not: read files, the environment or the clock, spawn processes, or log. Parsing
//! the app file and reporting diagnostics belongs to `hoist-config`.

pub mod names;
pub mod schedule;
pub mod spec;
pub mod text;
pub mod units;

pub use schedule::{CronExpr, Schedule};
pub use spec::AppSpec;
pub use units::{format_duration, parse_duration, ByteSize};

pub use names::is_env_name;
