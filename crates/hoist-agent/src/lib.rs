//! The control plane of one host: composes state, artifacts, supervisor and proxy.
