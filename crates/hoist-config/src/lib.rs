//! The app file: `hoist.toml` (and destination overlays) read into a validated
//! [`hoist_core::spec::AppSpec`], with diagnostics that name file:line:column.
