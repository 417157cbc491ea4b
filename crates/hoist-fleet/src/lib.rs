//! Fleets: reaching hosts through the system's OpenSSH ([`ssh::Remote`]) and preparing a
//! fresh host for hoist ([`setup`]). It never opens a port of its own on a host and never
//! weakens OpenSSH's host-key checking; deploy logic lives elsewhere and builds on these.

pub mod hosts;
pub mod local;
pub mod rollout;
pub mod setup;
pub mod ssh;

pub use setup::{setup_host, Action, ActionState, SetupError, SetupOptions, SetupReport};
pub use ssh::{HostKeys, Remote, SshError, REMOTE_BIN};
