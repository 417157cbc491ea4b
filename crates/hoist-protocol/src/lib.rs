//! Wire types between the CLI, the agent and the proxy. Only serialisable boundary types
//! live here, so the wire format never pins the internals of the crates that use it.
pub mod agent;
pub mod backup;
pub mod fleet;
pub mod proxy;
