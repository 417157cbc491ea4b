//! One module per command: its clap arguments and a `run` that calls a library operation.
