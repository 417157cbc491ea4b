//! Driving hosts, one or many: which hosts a command reaches and asking them all at once
//! ([`hosts`]), this machine's agent started on demand ([`local`]), hosts reached through
//! the system's OpenSSH ([`ssh::Remote`]), the rollout of deploys and rollbacks
//! ([`rollout`]), preparing a fresh host ([`setup`]) and the agent's keeper on hosts
//! without systemd ([`keeper`]). It never opens a port of its own on a host, never weakens
//! OpenSSH's host-key checking, and never prints.

pub mod doctor;
pub mod files;
pub mod hosts;
pub mod keeper;
pub mod local;
pub mod rollout;
pub mod setup;
pub mod ssh;

pub use setup::{setup_host, Action, ActionState, SetupError, SetupOptions, SetupReport};
pub use ssh::{HostKeys, Remote, SshError, REMOTE_BIN};
