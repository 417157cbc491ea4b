//! One module per command: its clap arguments and a `run` that calls a library operation.

pub mod agent;
pub mod alerts;
pub mod backup;
pub mod build;
pub mod certs;
pub mod common;
pub mod config;
pub mod dashboard;
pub mod deploy;
pub mod docs;
pub mod files;
pub mod fleet;
pub mod init;
pub mod maintenance;
pub mod proxy;
pub mod readiness;
pub mod run;
pub mod secrets;
pub mod service;
pub mod setup;
pub mod shim;
pub mod slo;
pub mod status;
