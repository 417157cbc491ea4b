//! One module per command: its clap arguments and a `run` that calls a library operation.

pub mod agent;
pub mod common;
pub mod secrets;
