//! All user output. Data (tables, `--json`) goes to stdout; messages and progress to
//! stderr, lowercase, values in backticks, readable without colour (`NO_COLOR` honoured).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{IsTerminal, Write};

/// Whether stderr is a terminal that may get colour and progress bars.
pub fn fancy() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(code: &str, text: &str) -> String {
    if fancy() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// `error: …` on stderr.
pub fn error(msg: &str) {
    eprintln!("{} {msg}", paint("1;31", "error:"));
}

/// `warning: …` on stderr.
pub fn warn(msg: &str) {
    eprintln!("{} {msg}", paint("1;33", "warning:"));
}

/// `hint: …` on stderr, after an error the user can fix.
pub fn hint(msg: &str) {
    eprintln!("{} {msg}", paint("1;36", "hint:"));
}

/// A status line on stderr: a right-aligned verb and a message, as cargo does.
pub fn status(verb: &str, msg: &str) {
    eprintln!("{} {msg}", paint("1;32", &format!("{verb:>12}")));
}

/// Text already formatted for a human (a diagnostic), on stderr as is.
pub fn diagnostic(text: &str) {
    eprint!("{text}");
    if !text.ends_with('\n') {
        eprintln!();
    }
}

/// A line of data on stdout.
pub fn data(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
}

/// One JSON document (or one line of a JSON stream) on stdout.
pub fn json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)
}

/// A table on stdout: a header row and aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}
