//! All user output. Data (tables, `--json`) goes to stdout; messages and progress to
//! stderr, lowercase, values in backticks, readable without colour (`NO_COLOR` honoured).
//!
//! Every text shown to a human passes through [`escape`] here: names, paths and log lines
//! come from app files, archives and apps, and a raw ESC or bidi override in them could
//! rewrite the terminal or disguise what is shown. JSON is data and is left as serde
//! writes it. A closed stdout ends the command quietly (see `exit::report`); a closed
//! stderr only loses the messages, never panics.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::borrow::Cow;
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

/// Characters that reorder the text around them (Unicode bidi embeddings, overrides,
/// isolates and marks): shown raw, `abc\u{202e}txt.exe` reads as `abcexe.txt`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text as it may reach a terminal: control characters (but newline and tab) and bidi
/// controls are written as escapes (`\x1b`, `\r`, `\u{202e}`); everything else as is.
pub fn escape(text: &str) -> Cow<'_, str> {
    let bad = |c: char| (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c);
    if !text.contains(bad) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if bad(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// One message on stderr. A closed or failing stderr loses the message: there is nowhere
/// left to report that, and a panic would hide the command's real result.
fn say(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
}

/// `error: …` on stderr.
pub fn error(msg: &str) {
    say(&format!("{} {}\n", paint("1;31", "error:"), escape(msg)));
}

/// `warning: …` on stderr.
pub fn warn(msg: &str) {
    say(&format!("{} {}\n", paint("1;33", "warning:"), escape(msg)));
}

/// `hint: …` on stderr, after an error the user can fix.
pub fn hint(msg: &str) {
    say(&format!("{} {}\n", paint("1;36", "hint:"), escape(msg)));
}

/// A status line on stderr: a right-aligned verb and a message, as cargo does.
pub fn status(verb: &str, msg: &str) {
    say(&format!(
        "{} {}\n",
        paint("1;32", &format!("{verb:>12}")),
        escape(msg)
    ));
}

/// Text already formatted for a human (a diagnostic), on stderr as is.
pub fn diagnostic(text: &str) {
    let text = escape(text);
    if text.ends_with('\n') {
        say(&text);
    } else {
        say(&format!("{text}\n"));
    }
}

/// A line of data on stdout.
pub fn data(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", escape(line))
}

/// One JSON document (or one line of a JSON stream) on stdout.
pub fn json(value: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)
}

/// A table on stdout: a header row and aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| escape(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
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
    for row in &rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn controls_and_bidi_are_escaped() {
        assert_eq!(escape("plain `x`\n\tok"), "plain `x`\n\tok");
        assert_eq!(
            escape("a\x1b[2Jb\r\u{202e}c\u{7f}\u{9b}\0"),
            "a\\x1b[2Jb\\r\\u{202e}c\\x7f\\x9b\\x00"
        );
        assert_eq!(escape("žluť 日本"), "žluť 日本");
    }
}
