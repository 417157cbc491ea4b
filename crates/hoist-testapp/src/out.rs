//! The test app's only output: data lines on stdout (`listening on ADDR`, `seq <n>`,
//! `worker tick N`) and lifecycle lines on stderr. It must never panic: `println!` panics
//! when the reader of a pipe has gone, and an app whose supervisor died should keep going.

use std::io::Write;

/// Writes whole lines to stdout in one call, so concurrent writers never interleave
/// inside a line; errors (a closed pipe) are ignored on purpose.
pub fn stdout(lines: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(lines.as_bytes());
    if !lines.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Writes one lifecycle line to stderr, prefixed with the program name and pid.
pub fn log(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "hoist-testapp[{}]: {line}", std::process::id());
}

/// What a Python web app prints when a dependency is missing: the failure incident 1 of
/// the design describes, which checks and crash tests look for in the last log lines.
pub fn import_error() {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(
        b"Traceback (most recent call last):\n  File \"/app/app.py\", line 3, in <module>\n    import missing_dep\nModuleNotFoundError: No module named 'missing_dep'\n",
    );
}
