//! The data plane: listeners, routes, atomic switching, draining.
