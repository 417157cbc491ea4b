//! Running instances: spawn under a shim, stop, restart with backoff, capture logs.
