//! `hoist-shim shim --spec FILE`: the per-instance shim as a small binary of its own. The
//! agent prefers it (beside its own executable) to `hoist shim`: each shim keeps its own
//! copy of its executable's relocated data (RELRO) for life, about 0.5 MB for the whole
//! `hoist` binary against a few pages for this one. Nothing else lives here.

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.len() == 2 && argv[1] == "--version" {
        // The agent uses this binary only if it is of its own version.
        let line = format!("hoist-shim {}\n", env!("CARGO_PKG_VERSION"));
        let _ = std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes());
        return ExitCode::SUCCESS;
    }
    hoist_supervisor::shim::main(&argv);
    // Not a shim's argv (the call above never returns otherwise).
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"usage: hoist-shim shim --spec FILE (started by the hoist agent)\n",
    );
    ExitCode::from(2)
}
